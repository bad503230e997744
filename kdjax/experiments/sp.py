"""SP (similarity-preserving KD) with mdistiller's defaults: CE 1 + 3000 * SP on the last stage's
output (``kdjax/methods/sp.py``).

Presets: the standard CIFAR-100 pairs of :data:`kdjax.config.PAIRS` (``res32x4_res8x4``
(default), ``res56_res20``, ``res110_res32``, ``wrn40_2_wrn16_2``, ``vgg13_vgg8``,
``res32x4_shuv1``, ``vgg13_mv2``, ...; lr 0.01 for ShuffleNet/MobileNetV2 students), each
needing ``--config.teacher.checkpoint``; and ``digits``, which trains its resnet20 teacher
first (kept in ``<workdir>/teacher``). The ImageNet pairs (``r34_r18``, ``r50_mv1``) are
refused: mdistiller's ``configs/imagenet/`` holds no sp.yaml, so there is no recipe to run.

    python -m kdjax.main --config experiments/sp.py:digits --workdir runs/sp_digits
"""

from kdjax.config import distillation_config


def get_config(arg=None):
  return distillation_config('sp', arg, imagenet=())  # mdistiller has no ImageNet yaml
