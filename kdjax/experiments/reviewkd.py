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
the student's pre-ReLU features, weight 1 (r34_r18) or 8 (r50_mv1), 512 mid channels. The
r50_mv1 yaml says ``MAX_MID_CHANNEL: 256``, but mdistiller's ``ReviewKD.py`` only stores it
(line 42) and builds its fusion with ``mid_channel = min(512, in_channels[-1])`` (line 45),
so 512 is what mdistiller runs, and what this preset runs. ``r50_mv1,authors`` runs the
ReviewKD authors' ImageNet value instead, 256 (``build_review_kd('mobilenet')`` in
dvlab-research/ReviewKD ``ImageNet/models/reviewkd.py`` line 83). The per-level shapes and
channels of the yaml are derived from the nets (``kdjax/methods/reviewkd.py``); the teacher
is torchvision's, ``torchvision:resnet34`` / ``torchvision:resnet50`` (downloaded, verified,
converted once), the data ``--config.data.data_dir``.

    python -m kdjax.main --config experiments/reviewkd.py:digits --workdir runs/reviewkd_digits
"""

from kdjax.config import IMAGENET_PAIRS, distillation_config
from kdjax.errors import KdjaxError

# REVIEWKD.REVIEWKD_WEIGHT of mdistiller's CIFAR-100 configs where it is not the default 1.
WEIGHT = {'res32x4_res8x4': 5.0}


# mdistiller's configs/imagenet/<preset>/reviewkd.yaml: SOLVER (batch, lr) and
# REVIEWKD_WEIGHT (the other REVIEWKD values are the same for both).
IMAGENET_SOLVER = (256, 0.1)
IMAGENET_WEIGHT = {'r34_r18': 1.0, 'r50_mv1': 8.0}
# The mid channels of the ReviewKD authors' ImageNet code for the MobileNet student.
AUTHORS_MID_CHANNEL = 256


VARIANTS = ('authors',)


def get_config(arg=None):
  config = distillation_config('reviewkd', arg, VARIANTS)
  config.reviewkd.reviewkd_weight = WEIGHT.get(config.preset, config.reviewkd.reviewkd_weight)
  if config.preset in IMAGENET_PAIRS:
    config.batch_size, config.optimizer.lr = IMAGENET_SOLVER
    c = config.reviewkd
    c.reviewkd_weight = IMAGENET_WEIGHT[config.preset]
    c.ce_weight, c.warmup_epochs, c.stu_preact = 1.0, 1, True
  if config.variant == 'authors':
    if config.preset != 'r50_mv1':
      raise KdjaxError(f'the ReviewKD preset variant authors is for r50_mv1 (the authors\' '
                       f'MobileNet student), not {config.preset}')
    config.reviewkd.max_mid_channel = AUTHORS_MID_CHANNEL
  return config
