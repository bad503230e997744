"""ReviewKD with mdistiller's values: CE 1 + weight * min(epoch / 20, 1) * HCL(ABF-fused
student features, teacher features) (``kdjax/methods/reviewkd.py``); weight 5 for
``res32x4_res8x4`` (mdistiller's ``configs/cifar100/reviewkd.yaml``), else the default 1.

Presets: the standard CIFAR-100 pairs of :data:`kdjax.config.PAIRS` (``res32x4_res8x4``
(default), ``res56_res20``, ``res110_res32``, ``wrn40_2_wrn16_2``, ``vgg13_vgg8``,
``res32x4_shuv1``, ``vgg13_mv2``, ...; lr 0.01 for ShuffleNet/MobileNetV2 students), each
needing ``--config.teacher.checkpoint``; and ``digits``, which trains its resnet20 teacher
first (kept in ``<workdir>/teacher``).

    python -m kdjax.main --config experiments/reviewkd.py:digits --workdir runs/reviewkd_digits
"""

from kdjax.config import distillation_config

# REVIEWKD.REVIEWKD_WEIGHT of mdistiller's CIFAR-100 configs where it is not the default 1.
WEIGHT = {'res32x4_res8x4': 5.0}


def get_config(arg=None):
  config = distillation_config('reviewkd', arg)
  config.reviewkd.reviewkd_weight = WEIGHT.get(config.preset, config.reviewkd.reviewkd_weight)
  return config
