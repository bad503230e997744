"""CRD (contrastive representation distillation) with mdistiller's defaults: CE 1 + 0.8 * NCE
against memory banks of 128-d embeddings, 16384 negatives from other classes
(``kdjax/methods/crd.py``).

Presets: the standard CIFAR-100 pairs of :data:`kdjax.config.PAIRS` (``res32x4_res8x4``
(default), ``res56_res20``, ``res110_res32``, ``wrn40_2_wrn16_2``, ``vgg13_vgg8``,
``res32x4_shuv1``, ``vgg13_mv2``, ...; lr 0.01 for ShuffleNet/MobileNetV2 students), each
needing ``--config.teacher.checkpoint``; and ``digits``, which trains its resnet20 teacher
first (kept in ``<workdir>/teacher``).

The ``digits`` preset draws 4096 negatives instead (its training set has 1,437 images; 16384
negatives cost about 1 s per step on a CPU); set ``--config.crd.nce_k`` to change it.

ImageNet presets ``r34_r18`` (ResNet34 -> ResNet18) and ``r50_mv1`` (ResNet50 -> MobileNetV1):
mdistiller's ``configs/imagenet/<preset>/crd.yaml`` on the recipe of
:func:`kdjax.config.imagenet_preset` except its solver, batch 256 and lr 0.1 (CRD's defaults;
the yaml's FEAT dimensions are those of the nets' embeddings, derived), the 16384 negatives
drawn with replacement as mdistiller's ImageNet sampler draws them
(``mdistiller/dataset/imagenet.py`` line 62, ``replace=True``); the teacher is
torchvision's, ``torchvision:resnet34`` / ``torchvision:resnet50`` (downloaded, verified,
converted once), the data ``--config.data.data_dir``.

    python -m kdjax.main --config experiments/crd.py:digits --workdir runs/crd_digits
"""

from kdjax.config import IMAGENET_PAIRS, distillation_config


# Negatives per example for the digits preset (mdistiller's 16384 are sized for CIFAR's 50k).
DIGITS_NCE_K = 4096


def get_config(arg=None):
  config = distillation_config('crd', arg)
  if config.preset == 'digits':
    config.crd.nce_k = DIGITS_NCE_K
  if config.preset in IMAGENET_PAIRS:  # SOLVER of configs/imagenet/<preset>/crd.yaml
    config.batch_size, config.optimizer.lr = IMAGENET_SOLVER
    config.crd.with_replacement = True  # mdistiller's ImageNetInstanceSample
  return config


# mdistiller's configs/imagenet/<preset>/crd.yaml: SOLVER (batch, lr).
IMAGENET_SOLVER = (256, 0.1)
