"""SLKD: the student learns from the teacher and from two self-learning teachers.

    python -m kdjax.main --config experiments/slkd.py:digits     # the README's first command
    python -m kdjax.main --config experiments/slkd.py --config.teacher.checkpoint=T.pth

Presets (``experiments/slkd.py:<preset>``; several joined with ``,``, e.g.
``:res32x4_res8x4,official``):

* pairs of the paper, 240 epochs, batch 64, SGD, wd 5e-4, x0.1 at 150/180/210:
  same family (lr 0.05) ``res32x4_res8x4`` (default), ``res56_res8``, ``wrn40_2_wrn40_1``,
  ``wrn40_2_wrn16_2``, ``vgg13_vgg11``, ``vgg13_vgg8``; cross family (lr 0.01)
  ``res32x4_shuv2``, ``res32x4_shuv1``, ``res50_mv2``, ``vgg13_mv2``, ``wrn40_2_shuv1``.
  The paper's SLKD top-1 on CIFAR-100 is in ``PAPER_TOP1`` (SLKD* in ``SEQUENTIAL_TOP1``;
  both in the README), and in ``config.reference_top1`` for ``python -m kdjax.report``.
* ``official``: the authors' code (``Tech_KD``): CE/KD 1/1 in L_SLTS, eta = 1, the fused
  target not detached. ``sequential``: SLKD* (see ``kdjax/methods/slkd.py``).
* ``digits``: the embedded data; trains a resnet20 teacher first (kept in
  ``<workdir>/teacher``), then SLKD with a resnet8 student, and prints a table.
* ImageNet ``r34_r18`` and ``r50_mv1``: the pairs and recipe of mdistiller's ImageNet KD
  (:func:`kdjax.config.imagenet_preset`; the torchvision teacher), with a = b = CE/KD 0.5/0.5
  at tau = 1 and the SL-teachers of the teacher's architecture, learning from scratch with
  the student's optimizer and schedule. The authors' repository (BrilliantCheng/SLKD) ships
  one ImageNet config, ``configs/imagenet/r34_r18/Tech_kd.yaml``: SL-teachers ResNet34
  (``CHILD1``/``CHILD2``, lines 14-15) built with ``pretrained=False`` (``TECH_TRAIN.py``
  lines 61-62), batch 512, 100 epochs, lr 0.2, momentum 0.9, weight decay 1e-4, x0.1 at
  30/60/90 (lines 17-23), T 1 and CE/KD 0.5/0.5 (lines 26-29); with its code defaults
  eta = ``PROCESS_WEIGHT`` 1 and b = ``CE_WEIGHT_CS``/``KD_WEIGHT_CS`` 1/1
  (``mdistiller/engine/cfg.py`` lines 179-181), rho 0.5 and the fused target not detached
  (``mdistiller/distillers/TECH_KD.py`` lines 51 and 70). ``r34_r18,official`` is exactly
  that recipe: the authors' ImageNet run. ``r34_r18`` alone keeps the paper's equations on it
  (eta 3, b = a, F detached). The authors have no ``r50_mv1`` config; ``r50_mv1`` and
  ``r50_mv1,official`` take the r34_r18 values on mdistiller's ResNet50 -> MobileNetV1 pair
  (SL-teachers ResNet50). No reference top-1 is set.
"""

from kdjax.config import IMAGENET_PAIRS, distillation_config

VARIANTS = ('official', 'sequential')

PAPER_TOP1 = {  # SLKD, CIFAR-100 top-1 (%), Liu, Li, Cheng 2023, Tables 2 and 3
    'res32x4_res8x4': 76.85, 'res56_res8': 62.05, 'wrn40_2_wrn40_1': 74.91,
    'wrn40_2_wrn16_2': 76.31, 'vgg13_vgg11': 75.46, 'vgg13_vgg8': 75.01,
    'res32x4_shuv2': 77.26, 'res32x4_shuv1': 76.17, 'res50_mv2': 70.28,
    'vgg13_mv2': 69.54, 'wrn40_2_shuv1': 76.72,
}
SEQUENTIAL_TOP1 = {  # SLKD* (the sequential preset), same paper, Tables 5 and 6
    'res32x4_res8x4': 75.61, 'res56_res8': 61.99, 'wrn40_2_wrn40_1': 74.60,
    'wrn40_2_wrn16_2': 75.78, 'vgg13_vgg11': 74.96, 'vgg13_vgg8': 74.41,
    'res32x4_shuv2': 76.12, 'res32x4_shuv1': 75.34, 'res50_mv2': 68.29,
    'vgg13_mv2': 69.36, 'wrn40_2_shuv1': 76.29,
}


def get_config(arg=None):
  config = distillation_config('slkd', arg, VARIANTS)
  variants = config.variant.split('+')
  published = SEQUENTIAL_TOP1 if 'sequential' in variants else PAPER_TOP1
  config.reference_top1 = published.get(config.preset)
  if config.preset in IMAGENET_PAIRS:  # mdistiller's ImageNet KD terms (see the docstring)
    c = config.slkd
    c.ce_weight, c.kd_weight, c.fused_ce_weight, c.fused_kd_weight = 0.5, 0.5, 0.5, 0.5
    c.temperature = 1.0
  if 'official' in variants:
    config.slkd.fused_ce_weight, config.slkd.fused_kd_weight = 1.0, 1.0
    config.slkd.eta = 1.0
    config.slkd.fused_target_grad = True
  if 'sequential' in variants:
    config.slkd.mode = 'sequential'
  return config
