"""AT (attention transfer) with mdistiller's defaults: CE 1 + 1000 * AT_2 on the stage outputs
after the stem (``kdjax/methods/at.py``).

Presets: the standard CIFAR-100 pairs of :data:`kdjax.config.PAIRS` (``res32x4_res8x4``
(default), ``res56_res20``, ``res110_res32``, ``wrn40_2_wrn16_2``, ``vgg13_vgg8``,
``res32x4_shuv1``, ``vgg13_mv2``, ...; lr 0.01 for ShuffleNet/MobileNetV2 students), each
needing ``--config.teacher.checkpoint``; and ``digits``, which trains its resnet20 teacher
first (kept in ``<workdir>/teacher``).

ImageNet presets ``r34_r18`` (ResNet34 -> ResNet18) and ``r50_mv1`` (ResNet50 -> MobileNetV1):
mdistiller's ``configs/imagenet/<preset>/at.yaml`` on the recipe of
:func:`kdjax.config.imagenet_preset` (AT's defaults); the teacher is torchvision's,
``torchvision:resnet34`` / ``torchvision:resnet50`` (downloaded, verified, converted once),
the data ``--config.data.data_dir``.

    python -m kdjax.main --config experiments/at.py:digits --workdir runs/at_digits
"""

from kdjax.config import distillation_config


def get_config(arg=None):
  return distillation_config('at', arg)
