"""OFD (overhaul of feature distillation) with mdistiller's defaults: CE 1 + 1e-3 * margin-based
partial L2 between connected student and teacher pre-ReLU features
(``kdjax/methods/ofd.py``). OFD needs pre-ReLU features and a ResNet/WRN/VGG teacher, so the
MobileNetV2 pairs are refused.

Presets: the standard CIFAR-100 pairs of :data:`kdjax.config.PAIRS` (``res32x4_res8x4``
(default), ``res56_res20``, ``res110_res32``, ``wrn40_2_wrn16_2``, ``vgg13_vgg8``,
``res32x4_shuv1``, ``vgg13_mv2``, ...; lr 0.01 for ShuffleNet/MobileNetV2 students), each
needing ``--config.teacher.checkpoint``; and ``digits``, which trains its resnet20 teacher
first (kept in ``<workdir>/teacher``).

    python -m kdjax.main --config experiments/ofd.py:digits --workdir runs/ofd_digits
"""

from kdjax.config import distillation_config


def get_config(arg=None):
  return distillation_config('ofd', arg)
