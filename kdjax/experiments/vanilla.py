"""Train one zoo model with cross-entropy: a teacher, or a student baseline.

Defaults are mdistiller's CIFAR-100 recipe (SGD 0.9, lr 0.05, wd 5e-4, batch 64, 240 epochs,
lr x0.1 at 150/180/210). Presets (``experiments/vanilla.py:<preset>``):

* a model name, e.g. ``:resnet32x4``, ``:wrn_40_2``: that model on CIFAR-100; models whose
  mdistiller recipe uses lr 0.01 (ShuffleNet, MobileNetV2) get it.
* ``digits``: resnet20 (the digits teacher of every distillation preset) on the embedded
  digits data, 8 epochs; about two minutes on 2 CPU cores.

    python -m kdjax.main --config experiments/vanilla.py:digits --workdir runs/vanilla_digits
"""

from kdjax import models
from kdjax.config import DIGITS_TEACHER, base_config, digits_preset
from kdjax.presets import parse

SMALL_LR_MODELS = ('MobileNetV2', 'ShuffleV1', 'ShuffleV2')


def get_config(arg=None):
  arg = parse(arg, 'vanilla', ('digits', *models.names('cifar')))[0]
  config = base_config()
  config.method = 'vanilla'
  config.model = 'resnet32x4'
  if arg == 'digits':
    config.model = DIGITS_TEACHER
    digits_preset(config)
  elif arg:
    config.model = arg
    if arg in SMALL_LR_MODELS:
      config.optimizer.lr = 0.01
  return config
