"""SKD: behaviour- and experience-teaching meta-networks (kdjax's reading: docs/skd.md).

    python -m kdjax.main --config experiments/skd.py:digits            # a few minutes on CPU
    python -m kdjax.main --config experiments/skd.py:digits,slkd       # the full system
    python -m kdjax.main --config experiments/skd.py:res32x4_res8x4 --config.teacher.checkpoint=T

Presets (``experiments/skd.py:<preset>``; several joined with ``,``):

* a pair of ``kdjax.config.PAIRS`` (mdistiller's recipe, 240 epochs): ``res32x4_res8x4``
  (default), ``vgg13_vgg8``, ``wrn40_2_wrn16_2``, ``res32x4_shuv2``, ... 5,000 training
  images are held out as the quiz set. The ``snapshots`` trajectory needs a teacher trained
  by kdjax with ``trajectory.stages``: without ``--config.teacher.checkpoint`` one is trained
  first into ``<workdir>/teacher`` recording 4 snapshots; an imported PyTorch teacher has
  none -- use the ``slkd`` preset or ``--config.skd.trajectory=self_learning`` with it.
* ``tbt_only`` / ``tet_only``: the ablations (only behaviour / only experience teaching).
* ``slkd``: SKD on top of SLKD with the ``self_learning`` trajectory: student, two
  self-learning teachers, TBT and TET learn in one fused step.
* the ImageNet pairs are refused: the quiz set is held out of a training set held on the
  devices, which ImageNet's host pipeline is not.
* ``digits``: the embedded data: a resnet20 teacher trained first with 4 snapshots, then a
  KD student (the baseline, ``<workdir>/kd``) and the SKD student; prints both.
"""

from kdjax.config import distillation_config

VARIANTS = ('tbt_only', 'tet_only', 'slkd')


def get_config(arg=None):
  # No ImageNet preset: its quiz set is held out of data held on the devices.
  config = distillation_config('skd', arg, VARIANTS, imagenet=())
  variants = config.variant.split('+')
  config.teacher.train_if_missing = True  # a kdjax teacher that records its trajectory
  config.teacher.trajectory_stages = 4
  if config.preset == 'digits':
    config.data.holdout = 144  # 10% of the 1,437 training images
    config.baselines = ('kd',)
  else:
    config.data.holdout = 5000  # 10% of CIFAR's 50,000
  if 'tbt_only' in variants:
    config.skd.use_tet = False
  if 'tet_only' in variants:
    config.skd.use_tbt = False
  if 'slkd' in variants:
    config.skd.trajectory = 'self_learning'
    config.skd.slkd_terms = True
  else:  # the snapshot trajectory needs a teacher kdjax trained: a published one has none
    config.teacher.checkpoint = None
  return config
