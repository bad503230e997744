"""KD (Hinton et al., 2015) with mdistiller's defaults: CE 0.1 + KD 0.9 at T = 4.

Presets: the standard CIFAR-100 pairs (``res32x4_res8x4`` (default), ``res56_res20``,
``res110_res32``, ``wrn40_2_wrn16_2``, ``wrn40_2_wrn40_1``, ``vgg13_vgg8``,
``res32x4_shuv1``, ``res32x4_shuv2``, ``wrn40_2_shuv1``, ``vgg13_mv2``, ``res50_mv2``; lr 0.01
for ShuffleNet/MobileNetV2 students), each needing ``--config.teacher.checkpoint``; and
``digits``, which trains its resnet20 teacher first (kept in ``<workdir>/teacher``).

    python -m kdjax.main --config experiments/kd.py:digits --workdir runs/kd_digits
"""

from kdjax.config import distillation_config

# KD's CIFAR-100 top-1 (%) in mdistiller's README (its DKD and DOT tables), by preset:
# config.reference_top1 for `python -m kdjax.report`.
MDISTILLER_TOP1 = {
    'res56_res20': 70.66, 'res110_res32': 73.08, 'res32x4_res8x4': 73.33,
    'wrn40_2_wrn16_2': 74.92, 'wrn40_2_wrn40_1': 73.54, 'vgg13_vgg8': 72.98,
    'res32x4_shuv1': 74.07, 'res32x4_shuv2': 74.45, 'wrn40_2_shuv1': 74.83,
    'vgg13_mv2': 67.37, 'res50_mv2': 67.35,
}


def get_config(arg=None):
  config = distillation_config('kd', arg)
  config.reference_top1 = MDISTILLER_TOP1.get(config.preset)
  return config
