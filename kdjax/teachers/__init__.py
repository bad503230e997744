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

from kdjax.teachers.loading import TEACHER_JSON, check_fits, load_variables, save

__all__ = ['TEACHER_JSON', 'check_fits', 'load_variables', 'save']
