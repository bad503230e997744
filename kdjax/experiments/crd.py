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

    python -m kdjax.main --config experiments/crd.py:digits --workdir runs/crd_digits
"""

from kdjax.config import distillation_config


# Negatives per example for the digits preset (mdistiller's 16384 are sized for CIFAR's 50k).
DIGITS_NCE_K = 4096


def get_config(arg=None):
  config = distillation_config('crd', arg)
  if config.preset == 'digits':
    config.crd.nce_k = DIGITS_NCE_K
  return config
