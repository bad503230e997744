"""``python -m kdjax.convert``: a RepDistiller / mdistiller ``.pth`` -> a kdjax teacher folder.

    python -m kdjax.convert --model resnet32x4 --num-classes 100 \\
        cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth teachers/resnet32x4

The folder (``teacher.json`` + Orbax variables, :func:`kdjax.teachers.save`) is what
``--config.teacher.checkpoint`` takes. The ``.pth`` is read with
``torch.load(weights_only=True)`` (needs ``pip install 'kdjax[torch]'``). Mistakes print one
line ``kdjax: error: ...`` and exit with status 2; nothing is written unless the whole
checkpoint converts. Either path may be a ``gs://`` URL (:mod:`kdjax.paths`).
"""

from __future__ import annotations

if __name__ == '__main__':  # run as a command: a signal from here on is one line (interrupts)
  from kdjax import interrupts
  interrupts.install()

import argparse
import sys

from kdjax import cli, paths
from kdjax.errors import KdjaxError, OneLineParser, run_command


def _parser() -> argparse.ArgumentParser:
  parser = OneLineParser(prog=cli.invoked_as('kdjax.convert'), description=(
      'Convert a RepDistiller / mdistiller PyTorch checkpoint into a kdjax teacher folder for '
      '--config.teacher.checkpoint.'))
  parser.add_argument('--model', required=True,
                      help='kdjax zoo name of the architecture, e.g. resnet32x4, wrn_40_2, '
                      'vgg13, resnet56, resnet110, ResNet50')
  parser.add_argument('--num-classes', type=int, default=100,
                      help='classes of the checkpoint (default: 100, CIFAR-100)')
  parser.add_argument('--overwrite', action='store_true',
                      help='replace the teacher in an existing teacher folder OUT_DIR')
  parser.add_argument('checkpoint', metavar='IN.pth', help='the PyTorch checkpoint')
  parser.add_argument('out_dir', metavar='OUT_DIR', help='the teacher folder to write')
  return parser


def _check_out_dir(out_dir: str, overwrite: bool) -> None:
  where = paths.path(out_dir, 'OUT_DIR')
  if not where.exists():
    return
  if not where.is_dir():
    raise KdjaxError(f'output {out_dir!r} exists and is not a folder')
  entries = [entry.name for entry in where.iterdir()]
  if not entries:
    return
  if not overwrite:
    raise KdjaxError(f'output folder {out_dir!r} is not empty; pass --overwrite to replace '
                     f'the teacher in it, or choose a new folder')
  # --overwrite replaces a teacher folder's own files only, never unrelated ones.
  from kdjax.teachers import TEACHER_JSON  # pylint: disable=import-outside-toplevel
  foreign = sorted(e for e in entries if e != TEACHER_JSON and not e.startswith('variables'))
  if foreign:
    raise KdjaxError(f'output folder {out_dir!r} holds {foreign[0]!r}, so it is not a '
                     f'teacher folder; --overwrite replaces only teacher folders')


def convert(checkpoint: str, out_dir: str, model: str, num_classes: int = 100, *,
            overwrite: bool = False) -> str:
  """Converts ``checkpoint`` into the teacher folder ``out_dir``; returns a summary line."""
  # pylint: disable=import-outside-toplevel
  import jax
  import numpy as np

  from kdjax import interrupts, models, teachers
  from kdjax.teachers.torch_import import load_pth, variables_from_torch

  if model not in models.names():
    raise KdjaxError(f'unknown model {model!r} (--model); expected one of: '
                     f'{", ".join(models.names())}')
  if num_classes < 1:
    raise KdjaxError(f'--num-classes must be positive, got {num_classes}')
  _check_out_dir(out_dir, overwrite)
  variables = variables_from_torch(model, load_pth(checkpoint), num_classes)
  try:
    with interrupts.doing(f'writing the teacher folder {out_dir}', 'it has no teacher.json, '
                          'so it is not taken for a teacher; convert again with --overwrite'):
      teachers.save(out_dir, model, num_classes, variables, source=paths.text(checkpoint))
  except OSError as e:
    raise KdjaxError(f'could not write the teacher folder {out_dir!r}: '
                     f'{e.strerror or e}') from e
  count = sum(int(np.prod(np.shape(v))) for v in jax.tree.leaves(variables['params']))
  return (f'converted {checkpoint} -> {out_dir}: {model}, {num_classes} classes, '
          f'{count:,} parameters; use --config.teacher.checkpoint={out_dir}')


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  return run_command(lambda: convert(args.checkpoint, args.out_dir, args.model,
                                     args.num_classes, overwrite=args.overwrite))


if __name__ == '__main__':
  sys.exit(main())
