"""DKD (decoupled KD) with mdistiller's values: CE 1 + min(epoch / 20, 1) * (TCKD + beta * NCKD)
at T = 4 (``kdjax/methods/dkd.py``); beta as in mdistiller's
``configs/cifar100/dkd/<pair>.yaml`` (8 unless listed in :data:`BETA`).

Presets: the standard CIFAR-100 pairs of :data:`kdjax.config.PAIRS` (``res32x4_res8x4``
(default), ``res56_res20``, ``res110_res32``, ``wrn40_2_wrn16_2``, ``vgg13_vgg8``,
``res32x4_shuv1``, ``vgg13_mv2``, ...; lr 0.01 for ShuffleNet/MobileNetV2 students), each
needing ``--config.teacher.checkpoint``; and ``digits``, which trains its resnet20 teacher
first (kept in ``<workdir>/teacher``).

ImageNet presets ``r34_r18`` (ResNet34 -> ResNet18) and ``r50_mv1`` (ResNet50 -> MobileNetV1):
mdistiller's ``configs/imagenet/<preset>/dkd.yaml`` on the recipe of
:func:`kdjax.config.imagenet_preset`: CE 1, T 1, a 1-epoch warm-up, beta 0.5 (r34_r18) or 2
(r50_mv1); the teacher is torchvision's, ``torchvision:resnet34`` / ``torchvision:resnet50``
(downloaded, verified, converted once), the data ``--config.data.data_dir``.

    python -m kdjax.main --config experiments/dkd.py:digits --workdir runs/dkd_digits
"""

from kdjax.config import IMAGENET_PAIRS, distillation_config

# DKD.BETA of mdistiller's configs/cifar100/dkd/*.yaml where it is not the default 8.
BETA = {
    'res56_res20': 2.0,
    'res110_res32': 2.0,
    'wrn40_2_wrn16_2': 6.0,
    'wrn40_2_wrn40_1': 6.0,
    'vgg13_vgg8': 6.0,
    'vgg13_mv2': 6.0,
}


# DKD's CIFAR-100 top-1 (%) in mdistiller's README table, by preset: config.reference_top1
# for `python -m kdjax.report`. The README's ResNet32x4 column headed "MobileNet-V2" (77.07)
# is ResNet32x4 -> ShuffleNet-V2: a typo there; the DKD paper (Zhao et al., CVPR 2022,
# Table 2) gives 77.07 for ResNet32x4 -> ShuffleNet-V2.
MDISTILLER_TOP1 = {
    'res56_res20': 71.97, 'res110_res32': 74.11, 'res32x4_res8x4': 76.32,
    'wrn40_2_wrn16_2': 76.23, 'wrn40_2_wrn40_1': 74.81, 'vgg13_vgg8': 74.68,
    'res32x4_shuv1': 76.45, 'res32x4_shuv2': 77.07, 'wrn40_2_shuv1': 76.70,
    'vgg13_mv2': 69.71, 'res50_mv2': 70.35,
}


# DKD.BETA of mdistiller's configs/imagenet/<preset>/dkd.yaml, and DKD's ImageNet top-1 (%)
# in mdistiller's README.
IMAGENET_BETA = {'r34_r18': 0.5, 'r50_mv1': 2.0}
MDISTILLER_IMAGENET_TOP1 = {'r34_r18': 71.70, 'r50_mv1': 72.05}


def get_config(arg=None):
  config = distillation_config('dkd', arg)
  config.dkd.beta = BETA.get(config.preset, config.dkd.beta)
  config.reference_top1 = MDISTILLER_TOP1.get(config.preset)
  if config.preset in IMAGENET_PAIRS:
    config.dkd.ce_weight, config.dkd.temperature, config.dkd.warmup = 1.0, 1.0, 1
    config.dkd.beta = IMAGENET_BETA[config.preset]
    config.reference_top1 = MDISTILLER_IMAGENET_TOP1[config.preset]
  return config
