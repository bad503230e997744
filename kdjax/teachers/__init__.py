"""Frozen teachers: everything a distillation run reads from its teacher.

* :mod:`kdjax.teachers.loading`: a teacher's variables from a kdjax workdir, a teacher folder
  or a PyTorch ``.pth`` (:func:`load_variables`, :func:`save`), checked to fit the model;
* :mod:`kdjax.teachers.torch_import`: RepDistiller / mdistiller / torchvision state dicts ->
  kdjax variables;
* :mod:`kdjax.teachers.zoo`: the published teachers (``mdistiller:<model>``,
  ``torchvision:<name>``), downloaded, verified and converted once;
* :mod:`kdjax.teachers.trajectory`: a teacher's variables recorded at the end of each
  training stage (SKD's snapshots);
* :mod:`kdjax.teachers.logit_cache`: the teacher's logits on every crop and flip of every
  training image, computed once and gathered by each step instead of running the teacher.

The command ``python -m kdjax.convert`` (:mod:`kdjax.convert`) stands above this package.
"""

from kdjax import methods, models
from kdjax.errors import KdjaxError
from kdjax.teachers import logit_cache, zoo
from kdjax.teachers.loading import TEACHER_JSON, check_fits, load, load_variables, save


def check_config(config) -> None:
  """Raises :class:`KdjaxError` for a mistake in ``config.teacher`` of a method that distils
  from a teacher: a model outside the run's zoo, no checkpoint and none to train, a published
  teacher of another model; and in its logit cache (:func:`logit_cache.check_config`)."""
  if methods.info(config.method).uses_teacher:
    t = config.teacher
    models.check(t.model, config.zoo, 'config.teacher.model')
    if t.checkpoint is None and not t.train_if_missing:
      raise KdjaxError(f'method {config.method} needs a trained teacher: set '
                       f'--config.teacher.checkpoint to a kdjax workdir, a teacher folder from '
                       f'`python -m kdjax.convert`, a RepDistiller/mdistiller .pth, or a '
                       f'published teacher mdistiller:<model>')
    if zoo.is_zoo_spec(t.checkpoint):
      zoo.check_spec(t.checkpoint, t.model)
  logit_cache.check_config(config)


__all__ = ['TEACHER_JSON', 'check_config', 'check_fits', 'load', 'load_variables', 'save']
