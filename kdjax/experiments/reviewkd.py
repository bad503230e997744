"""ReviewKD with mdistiller's values: CE 1 + weight * min(epoch / 20, 1) * HCL(ABF-fused
student features, teacher features) (``kdjax/methods/reviewkd.py``); weight 5 for
``res32x4_res8x4`` (mdistiller's ``configs/cifar100/reviewkd.yaml``), else the default 1.

Presets: the standard CIFAR-100 pairs of :data:`kdjax.config.PAIRS` (``res32x4_res8x4``
(default), ``res56_res20``, ``res110_res32``, ``wrn40_2_wrn16_2``, ``vgg13_vgg8``,
``res32x4_shuv1``, ``vgg13_mv2``, ...; lr 0.01 for ShuffleNet/MobileNetV2 students), each
needing ``--config.teacher.checkpoint``; and ``digits``, which trains its resnet20 teacher
first (kept in ``<workdir>/teacher``).

ImageNet presets ``r34_r18`` (ResNet34 -> ResNet18) and ``r50_mv1`` (ResNet50 -> MobileNetV1):
mdistiller's ``configs/imagenet/<preset>/reviewkd.yaml`` on the recipe of
:func:`kdjax.config.imagenet_preset` except its solver, batch 256 and lr 0.1; warm-up 1 epoch,
the student's pre-ReLU features, weight 1 (r34_r18) or 8 with at most 256 mid channels
(r50_mv1). The per-level shapes and channels of the yaml are derived from the nets
(``kdjax/methods/reviewkd.py``); the teacher is torchvision's, ``torchvision:resnet34`` /
``torchvision:resnet50`` (downloaded, verified, converted once), the data
``--config.data.data_dir``.

    python -m kdjax.main --config experiments/reviewkd.py:digits --workdir runs/reviewkd_digits
"""

from kdjax.config import IMAGENET_PAIRS, distillation_config

# REVIEWKD.REVIEWKD_WEIGHT of mdistiller's CIFAR-100 configs where it is not the default 1.
WEIGHT = {'res32x4_res8x4': 5.0}


# mdistiller's configs/imagenet/<preset>/reviewkd.yaml: SOLVER (batch, lr) and REVIEWKD
# (weight, max mid channels; the others are the same for both).
IMAGENET_SOLVER = (256, 0.1)
IMAGENET = {'r34_r18': (1.0, 512), 'r50_mv1': (8.0, 256)}


def get_config(arg=None):
  config = distillation_config('reviewkd', arg)
  config.reviewkd.reviewkd_weight = WEIGHT.get(config.preset, config.reviewkd.reviewkd_weight)
  if config.preset in IMAGENET_PAIRS:
    config.batch_size, config.optimizer.lr = IMAGENET_SOLVER
    c = config.reviewkd
    c.reviewkd_weight, c.max_mid_channel = IMAGENET[config.preset]
    c.ce_weight, c.warmup_epochs, c.stu_preact = 1.0, 1, True
  return config
