"""OFD (overhaul of feature distillation) with mdistiller's defaults: CE 1 + 1e-3 * margin-based
partial L2 between connected student and teacher pre-ReLU features
(``kdjax/methods/ofd.py``). OFD needs pre-ReLU features and a ResNet/WRN/VGG teacher, so the
MobileNetV2 pairs are refused.

Presets: the standard CIFAR-100 pairs of :data:`kdjax.config.PAIRS` (``res32x4_res8x4``
(default), ``res56_res20``, ``res110_res32``, ``wrn40_2_wrn16_2``, ``vgg13_vgg8``,
``res32x4_shuv1``, ``vgg13_mv2``, ...; lr 0.01 for ShuffleNet/MobileNetV2 students), each
needing ``--config.teacher.checkpoint``; and ``digits``, which trains its resnet20 teacher
first (kept in ``<workdir>/teacher``).

ImageNet preset ``r50_mv1`` (ResNet50 -> MobileNetV1; mdistiller has no OFD recipe for
``r34_r18``): ``configs/imagenet/r50_mv1/ofd.yaml`` on the recipe of
:func:`kdjax.config.imagenet_preset` except its solver, batch 128 and lr 0.05, with feature
weight 1e-4; the teacher is torchvision's ``torchvision:resnet50``, the data
``--config.data.data_dir``.

    python -m kdjax.main --config experiments/ofd.py:digits --workdir runs/ofd_digits
"""

from kdjax.config import distillation_config


# mdistiller's configs/imagenet/r50_mv1/ofd.yaml: SOLVER (batch, lr) and OFD.LOSS.FEAT_WEIGHT.
IMAGENET_SOLVER, IMAGENET_FEAT_WEIGHT = (128, 0.05), 1e-4


def get_config(arg=None):
  config = distillation_config('ofd', arg, imagenet=('r50_mv1',))
  if config.preset == 'r50_mv1':
    config.batch_size, config.optimizer.lr = IMAGENET_SOLVER
    config.ofd.feat_weight = IMAGENET_FEAT_WEIGHT
  return config
