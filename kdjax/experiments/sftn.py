"""SFTN: train a student-friendly teacher (the teacher learns with student branches).

    python -m kdjax.main --config experiments/sftn.py:digits     # teacher, then students
    python -m kdjax.main --config experiments/sftn.py:res32x4_res8x4 --workdir runs/sftn_r32x4
    python -m kdjax.main --config experiments/kd.py:res32x4_res8x4 \\
        --config.teacher.checkpoint=runs/sftn_r32x4                 # distil from it

``config.model`` is the teacher being trained, ``config.sftn.student`` the architecture of
its student branches (see ``kdjax/methods/sftn.py`` and ``docs/sftn.md``). The finished
workdir is a teacher checkpoint for any distillation method (its ``teacher`` net; the
branches are left out).

Presets (``experiments/sftn.py:<preset>``):

* ``res32x4_res8x4`` (default), ``wrn40_2_wrn16_2``, ``vgg13_vgg8``, ``res32x4_shuv2``,
  ``wrn40_2_shuv1`` (and the other pairs of ``kdjax.config.PAIRS`` whose teacher and
  student have as many stages): CIFAR-100, the teacher's vanilla recipe (SGD 0.9, lr 0.05,
  wd 5e-4, batch 64, 240 epochs, x0.1 at 150/180/210). Only the teacher is trained; set
  ``--config.sftn.distill=kd`` to distil the student from it afterwards (into
  ``<workdir>/student``, with the pair's student lr, ``config.sftn.student_lr``).
* ``r34_r18``: ImageNet, a ResNet34 teacher with ResNet18 branches on the recipe of
  :func:`kdjax.config.imagenet_preset` (mdistiller's ImageNet recipe; the SFTN paper's
  ImageNet setup trains the teacher the same way). ``r50_mv1`` is refused: ResNet50 has five
  stages and MobileNetV1 four, and SFTN's branches need as many. Set
  ``--config.sftn.distill=kd`` to distil the student afterwards (lr 0.2).
* ``digits``: the embedded data (:func:`kdjax.config.digits_preset`), the KL weight warmed up
  linearly over 2 epochs: an SFTN resnet20 teacher with resnet8 branches, then a resnet8
  student distilled from it with ``kd``, next to the same pipeline with a standard (vanilla)
  resnet20 teacher; prints one table.
"""

from kdjax.config import (DIGITS_STUDENT, DIGITS_TEACHER, IMAGENET_PAIRS, PAIRS, base_config,
                          digits_preset, imagenet_preset)
from kdjax.errors import KdjaxError
from kdjax.presets import parse

DIGITS_KL_WARMUP = 2  # epochs


def get_config(arg=None):
  config = base_config()
  config.method = 'sftn'
  preset = parse(arg, 'sftn', ('digits', *PAIRS, *IMAGENET_PAIRS))[0] or 'res32x4_res8x4'
  if preset == 'digits':
    digits_preset(config)
    config.model, config.sftn.student = DIGITS_TEACHER, DIGITS_STUDENT
    config.sftn.student_lr = config.optimizer.lr
    config.sftn.distill = 'kd'
    config.sftn.compare_standard = True
    # Without a warm-up the KL term (weight 3) pulls the teacher towards the branches'
    # near-uniform early outputs and the run collapses (docs/sftn.md).
    config.sftn.kl_warmup_epochs = DIGITS_KL_WARMUP
  elif preset in PAIRS:
    # The teacher learns with its vanilla recipe (lr 0.05 for every teacher of PAIRS); the
    # pair's lr is the student's, used when the student is distilled afterwards.
    config.model, config.sftn.student, config.sftn.student_lr = PAIRS[preset]
  elif preset == 'r34_r18':
    imagenet_preset(config)
    config.model, config.sftn.student = IMAGENET_PAIRS[preset]
    config.sftn.student_lr = config.optimizer.lr
  else:
    raise KdjaxError(f'SFTN needs a teacher and student with as many stages; '
                     f'{" and ".join(IMAGENET_PAIRS[preset])} differ: use r34_r18')
  config.teacher.model = config.model  # for reference; an SFTN run has no frozen teacher
  config.preset = preset
  return config
