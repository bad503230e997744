"""Command line: ``kdjax-export <workdir> --format torch|flax --out FILE`` (also
``python -m kdjax.export``) writes the trained net of a kdjax workdir for use outside kdjax.

    python -m kdjax.export runs/kd --format torch --out student.pth
    python -m kdjax.export runs/kd --format flax --out student.msgpack

The net is the one the run delivers (its method's ``INFO.trained_net``: the student; SFTN's
teacher) in the workdir's newest checkpoint.

* ``--format torch``: the state dict of RepDistiller's / mdistiller's model class of the same
  name (:mod:`kdjax.convert.torch_export`, the inverse of ``kdjax-convert``), saved with
  ``torch.save``; ``model.load_state_dict(torch.load('student.pth'), strict=True)``. Needs
  ``pip install 'kdjax[torch]'``.
* ``--format flax``: the variables (``{'params', 'batch_stats'}``) as msgpack
  (``flax.serialization``) in FILE (``*.msgpack``), and beside it FILE with ``.json`` for
  its suffix: the model, its zoo and classes, the dataset and the normalisation (per-channel
  mean and std of images scaled to [0, 1]) the net expects. ``kdjax-eval FILE`` reads both.

The workdir and FILE may be ``gs://`` URLs (:mod:`kdjax.paths`).

Mistakes (no checkpoint in the workdir, an unknown format, PyTorch missing) print one line
``kdjax: error: ...`` and exit with status 2; nothing is written then.
"""

from __future__ import annotations

if __name__ == '__main__':  # run as a command: a signal from here on is one line (interrupts)
  from kdjax import interrupts
  interrupts.install()

import dataclasses
import os
import sys
from typing import Optional

import flax.serialization
import jax
import numpy as np

from kdjax import cli, data, jsonio, models, paths, teachers
from kdjax.convert import torch_export
from kdjax.errors import KdjaxError, OneLineParser, run_command

FORMATS = ('torch', 'flax')
FLAX_FORMAT = 'kdjax-flax-variables'  # the JSON's 'format', to recognise it


@dataclasses.dataclass
class Net:
  """A trained net (``variables``: float32 ``{'params', 'batch_stats'}``) and what using it
  needs: ``zoo``'s ``model`` with ``num_classes`` classes, trained on ``dataset`` (whose
  ``config.data`` fields are ``data``, e.g. its ``data_dir``) after ``steps`` steps, on
  images normalised by ``mean`` and ``std``; ``dtype`` and ``eval_batch_size``: the run's."""
  variables: dict
  model: str
  zoo: str
  num_classes: int
  dataset: str
  mean: tuple
  std: tuple
  source: str
  steps: int = 0
  data: dict = dataclasses.field(default_factory=dict)
  dtype: str = 'float32'
  eval_batch_size: int = 256  # config.eval_batch_size's default


def load_options(settings: dict) -> dict:
  """The keyword arguments of :func:`kdjax.data.load_split` among ``config.data``'s fields
  ``settings``."""
  return {k: settings[k] for k in ('data_dir', 'download', 'url', 'sha256')
          if settings.get(k) is not None}


def dataset_facts(name: str, settings: Optional[dict] = None) -> tuple[int, tuple, tuple]:
  """``(num_classes, mean, std)`` of dataset ``name`` whose ``config.data`` fields are
  ``settings`` (``data_dir``, ...): from its test split, which a later evaluation reuses."""
  settings = settings or {}
  if name in data.HOST_DATASETS:
    # pylint: disable=import-outside-toplevel  # grain's workers: only for ImageNet
    from kdjax.data import host_pipeline, image_sources
    source = image_sources.open_split(name, 'test', settings.get('data_dir'))
    return source.num_classes, host_pipeline.IMAGENET_MEAN, host_pipeline.IMAGENET_STD
  test = data.load_split(name, 'test', **load_options(settings))
  return test.num_classes, tuple(test.mean), tuple(test.std)


def load_workdir(path: str) -> Net:
  """The :class:`Net` that the kdjax workdir ``path`` trained, from its newest checkpoint."""
  config = jsonio.read_json(os.fspath(paths.path(path) / 'config.json'))
  if not isinstance(config, dict) or 'model' not in config or 'data' not in config:
    raise KdjaxError(f'{path!r} is not a kdjax workdir (it has no readable config.json)')
  zoo, settings = config.get('zoo', 'cifar'), config['data']
  num_classes, mean, std = dataset_facts(settings['name'], settings)
  variables, meta = teachers.load(path, config['model'], num_classes, models.IMAGE_SHAPES[zoo],
                                  zoo)
  return Net(variables, config['model'], zoo, num_classes, settings['name'], mean, std,
             source=f'{path}, step {meta["step"]}', steps=meta['step'], data=settings,
             dtype=config.get('dtype', 'float32'),
             eval_batch_size=config.get('eval_batch_size', Net.eval_batch_size))


def flax_json_path(path: str) -> str:
  """The JSON that describes the msgpack file ``path`` of ``--format flax``."""
  return os.path.splitext(path)[0] + '.json'


def save_flax(path: str, net: Net) -> None:
  """Writes ``net``'s variables to ``path`` (msgpack) and its facts to the JSON beside it."""
  with paths.writing(path) as f:
    f.write(flax.serialization.msgpack_serialize(jax.device_get(net.variables)))
  jsonio.write_json(flax_json_path(path), {
      'format': FLAX_FORMAT, 'model': net.model, 'zoo': net.zoo,
      'num_classes': net.num_classes, 'dataset': net.dataset, 'mean': list(net.mean),
      'std': list(net.std), 'steps': net.steps, 'source': net.source})


def load_flax(path: str) -> Net:
  """The :class:`Net` that :func:`save_flax` wrote to ``path`` (the msgpack or its JSON)."""
  path = os.path.splitext(path)[0] + '.msgpack' if path.endswith('.json') else path
  meta, why = jsonio.read_json_or_why(flax_json_path(path))
  if not isinstance(meta, dict) or meta.get('format') != FLAX_FORMAT:
    raise KdjaxError(f'{flax_json_path(path)} does not describe kdjax variables '
                     f'({why or "it is another JSON"}); write it with kdjax-export --format flax')
  try:
    variables = flax.serialization.msgpack_restore(paths.path(path).read_bytes())
  except (OSError, ValueError) as e:
    raise KdjaxError(f'could not read the variables {path!r}: {e}') from e
  variables = teachers.check_fits(variables, meta['model'], meta['num_classes'], path,
                                  models.IMAGE_SHAPES[meta['zoo']], meta['zoo'])
  return Net(variables, meta['model'], meta['zoo'], meta['num_classes'], meta['dataset'],
             tuple(meta['mean']), tuple(meta['std']), source=path, steps=meta['steps'])


def export(workdir: str, fmt: str, out: str) -> str:
  """Writes the trained net of ``workdir`` to ``out`` in format ``fmt``; returns a line."""
  if fmt not in FORMATS:
    raise KdjaxError(f'unknown format {fmt!r}; expected one of: {", ".join(FORMATS)}')
  if fmt == 'torch':
    torch_export.require_torch()  # before reading anything
  elif not out.endswith('.msgpack'):
    raise KdjaxError(f'--format flax writes a .msgpack file and the .json beside it: --out '
                     f'must end with .msgpack, got {out!r}')
  if not paths.path(workdir, 'workdir').is_dir():
    raise KdjaxError(f'workdir {workdir!r} does not exist or is not a folder')
  net = load_workdir(workdir)
  try:
    if fmt == 'flax':
      save_flax(out, net)
      return (f'exported {net.model} ({net.num_classes} classes, {net.dataset}) from '
              f'{net.source} -> {out} and {flax_json_path(out)}; kdjax-eval {out} evaluates it')
    state_dict = torch_export.state_dict_from_variables(net.model, net.variables,
                                                        net.num_classes, net.zoo, net.steps)
    torch_export.save_pth(out, state_dict)
  except OSError as e:
    raise KdjaxError(f'could not write {out!r}: {e.strerror or e}') from e
  count = sum(int(np.prod(v.shape)) for k, v in state_dict.items()
              if not k.endswith(torch_export.NUM_BATCHES_TRACKED))
  return (f'exported {net.model} ({net.num_classes} classes, {net.dataset}) from {net.source} '
          f'-> {out}: {len(state_dict)} tensors ({count:,} values), the state dict of '
          f"RepDistiller's / mdistiller's {net.model} (load_state_dict(..., strict=True))")


def main(argv: Optional[list[str]] = None) -> int:
  """``kdjax-export`` / ``python -m kdjax.export``."""
  parser = OneLineParser(prog=cli.invoked_as('kdjax.export'), description=(
      'Write the trained net of a kdjax workdir as a PyTorch state dict or as Flax variables.'))
  parser.add_argument('workdir', help='the kdjax workdir (its newest checkpoint)')
  parser.add_argument('--format', required=True, choices=FORMATS,
                      help="torch: a state dict for RepDistiller's / mdistiller's model class; "
                      'flax: msgpack variables and a JSON of model, classes, normalisation')
  parser.add_argument('--out', required=True, help='the file to write (e.g. student.pth)')
  args = parser.parse_args(argv)
  return run_command(lambda: export(args.workdir, args.format, args.out))


if __name__ == '__main__':
  sys.exit(main())
