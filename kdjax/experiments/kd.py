"""KD (Hinton et al., 2015) with mdistiller's defaults: CE 0.1 + KD 0.9 at T = 4.

Presets: the standard CIFAR-100 pairs (``res32x4_res8x4`` (default), ``res56_res20``,
``res110_res32``, ``wrn40_2_wrn16_2``, ``wrn40_2_wrn40_1``, ``vgg13_vgg8``,
``res32x4_shuv1``, ``res32x4_shuv2``, ``wrn40_2_shuv1``, ``vgg13_mv2``, ``res50_mv2``; lr 0.01
for ShuffleNet/MobileNetV2 students), each needing ``--config.teacher.checkpoint``; and
``digits``, which trains its resnet20 teacher first (kept in ``<workdir>/teacher``).

ImageNet presets ``r34_r18`` (ResNet34 -> ResNet18) and ``r50_mv1`` (ResNet50 -> MobileNetV1):
mdistiller's ``configs/imagenet/<preset>/kd.yaml`` on the recipe of
:func:`kdjax.config.imagenet_preset` and KD at T = 1 with CE/KD 0.5/0.5; the teacher is
torchvision's, ``torchvision:resnet34`` / ``torchvision:resnet50`` (downloaded, verified,
converted once), the data ``--config.data.data_dir``.

    python -m kdjax.main --config experiments/kd.py:r34_r18 \
        --config.data.data_dir=/data/imagenet --workdir runs/kd_r34_r18

    python -m kdjax.main --config experiments/kd.py:digits --workdir runs/kd_digits
"""

from kdjax.config import IMAGENET_PAIRS, distillation_config

# KD's CIFAR-100 top-1 (%) in mdistiller's README (its DKD and DOT tables), by preset:
# config.reference_top1 for `python -m kdjax.report`.
MDISTILLER_TOP1 = {
    'res56_res20': 70.66, 'res110_res32': 73.08, 'res32x4_res8x4': 73.33,
    'wrn40_2_wrn16_2': 74.92, 'wrn40_2_wrn40_1': 73.54, 'vgg13_vgg8': 72.98,
    'res32x4_shuv1': 74.07, 'res32x4_shuv2': 74.45, 'wrn40_2_shuv1': 74.83,
    'vgg13_mv2': 67.37, 'res50_mv2': 67.35,
}


# KD's ImageNet top-1 (%) in mdistiller's README (its DKD table).
MDISTILLER_IMAGENET_TOP1 = {'r34_r18': 71.03, 'r50_mv1': 70.50}


def get_config(arg=None):
  config = distillation_config('kd', arg)
  config.reference_top1 = MDISTILLER_TOP1.get(config.preset)
  if config.preset in IMAGENET_PAIRS:  # KD.TEMPERATURE and KD.LOSS of the ImageNet yaml
    config.kd.temperature, config.kd.ce_weight, config.kd.kd_weight = 1.0, 0.5, 0.5
    config.reference_top1 = MDISTILLER_IMAGENET_TOP1[config.preset]
  return config
