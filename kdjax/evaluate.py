"""Command line: ``kdjax-eval CHECKPOINT`` (also ``python -m kdjax.evaluate``) prints the
top-1 / top-5 accuracy of a net on a dataset's test split.

    python -m kdjax.evaluate runs/kd                         # a kdjax workdir, on its data
    python -m kdjax.evaluate student.msgpack                 # from kdjax-export --format flax
    python -m kdjax.evaluate mdistiller:resnet32x4           # the published teacher, CIFAR-100
    python -m kdjax.evaluate teachers/resnet32x4 --dataset cifar100
    python -m kdjax.evaluate ckpt_epoch_240.pth --model resnet32x4 --dataset cifar100

CHECKPOINT is what ``config.teacher.checkpoint`` takes (:mod:`kdjax.teachers`, read by the same
code): a kdjax workdir (the trained net of its newest checkpoint), a teacher folder
(``kdjax-convert``), a RepDistiller / mdistiller ``.pth`` (``--model`` names its architecture),
``mdistiller:<name>`` / ``torchvision:<name>`` (:mod:`kdjax.teachers.zoo`), and also the
msgpack file (or its JSON) of ``kdjax-export --format flax``. The dataset is the workdir's or
the exported file's unless ``--dataset`` names one (``mdistiller:*``: cifar100,
``torchvision:*``: imagenet); CIFAR comes from ``--data-dir`` or the cache, ImageNet's
validation set from ``--data-dir``. CHECKPOINT and ``--data-dir`` may be ``gs://`` URLs
(:mod:`kdjax.paths`). Images are normalised as the net was trained (with the
mean and std of the workdir's data or of the exported file; else the dataset's) and
evaluated by the training loop's own jitted eval step (:func:`kdjax.train.step.make_eval_step`).

Mistakes print one line ``kdjax: error: ...`` and exit with status 2.
"""

from __future__ import annotations

if __name__ == '__main__':  # run as a command: a signal from here on is one line (interrupts)
  from kdjax import interrupts
  interrupts.install()

import dataclasses
import os
import sys
from typing import Optional

import jax.numpy as jnp

from kdjax import cli, data, jsonio, models, paths, sharding, teachers
from kdjax.teachers import zoo as teacher_zoo
from kdjax.errors import KdjaxError, OneLineParser, run_command
from kdjax.export import Net, dataset_facts, load_flax, load_options, load_workdir
from kdjax.train import step as step_lib


def _dataset_settings(dataset: Optional[str], data_dir: Optional[str]) -> dict:
  return {'name': dataset, **({'data_dir': data_dir} if data_dir else {})}


def _load_teacher(path: str, model: Optional[str], dataset: Optional[str],
                  data_dir: Optional[str]) -> Net:
  """A teacher folder or a ``.pth`` of ``model`` (what ``config.teacher.checkpoint`` takes)."""
  folder_meta = jsonio.read_json(os.fspath(paths.path(path) / teachers.TEACHER_JSON)) or {}
  if folder_meta.get('model') and model and folder_meta['model'] != model:
    raise KdjaxError(f'{path!r} is a {folder_meta["model"]}, not a {model} (--model)')
  model = model or folder_meta.get('model')
  if not model:
    raise KdjaxError(f'--model must name the architecture of {path!r}, e.g. resnet32x4')
  if not dataset:
    raise KdjaxError(f'--dataset must name the data to evaluate {path!r} on; expected one '
                     f'of: {", ".join(data.DATASETS + data.HOST_DATASETS)}')
  zoo = 'imagenet' if dataset in data.HOST_DATASETS else 'cifar'
  settings = _dataset_settings(dataset, data_dir)
  num_classes, mean, std = dataset_facts(dataset, settings)
  variables = teachers.load_variables(path, model, num_classes, models.IMAGE_SHAPES[zoo], zoo)
  return Net(variables, model, zoo, num_classes, dataset, mean, std, source=path,
             data=settings)


def resolve(checkpoint: str, *, model: Optional[str] = None, dataset: Optional[str] = None,
            data_dir: Optional[str] = None, zoo_url: Optional[str] = None) -> Net:
  """The :class:`~kdjax.export.Net` of ``checkpoint`` (see the module docstring), to be
  evaluated on ``dataset`` (None: the checkpoint's own) from ``data_dir``."""
  if teacher_zoo.is_zoo_spec(checkpoint):  # CIFAR-100's mdistiller teachers, ImageNet's
    imagenet = checkpoint.startswith(teacher_zoo.TORCHVISION_PREFIX)
    folder = teacher_zoo.resolve(checkpoint, zoo_url=zoo_url, num_classes=1000 if imagenet
                                 else 100)
    return dataclasses.replace(_load_teacher(folder, model, dataset or (
        'imagenet' if imagenet else 'cifar100'), data_dir), source=checkpoint)
  where = paths.path(checkpoint, 'CHECKPOINT')
  if not where.exists():
    raise KdjaxError(f'checkpoint {checkpoint!r} does not exist')
  if checkpoint.endswith(('.msgpack', '.json')):
    net = load_flax(checkpoint)
  elif (where / 'config.json').is_file():
    net = load_workdir(checkpoint)
  else:
    return _load_teacher(checkpoint, model, dataset, data_dir)
  if model and model != net.model:
    raise KdjaxError(f'{checkpoint!r} holds a {net.model}, not a {model} (--model)')
  if dataset and dataset != net.dataset:
    classes = dataset_facts(dataset, _dataset_settings(dataset, data_dir))[0]
    if classes != net.num_classes:
      raise KdjaxError(f'{checkpoint!r} has {net.num_classes} classes ({net.dataset}); '
                       f'{dataset} has {classes}')
  own = net.data if dataset in (None, net.dataset) else {}  # e.g. the run's CIFAR mirror
  settings = {**own, **_dataset_settings(dataset or net.dataset, data_dir)}
  return dataclasses.replace(net, dataset=settings['name'], data=settings)


def evaluate(net: Net, batch_size: Optional[int] = None) -> tuple[dict, int]:
  """``({'top1', 'top5', 'loss'}, number of test images)`` of ``net`` on its dataset's test
  split, by the training loop's eval step (``batch_size``, None: ``net.eval_batch_size``,
  rounded up to a multiple of the devices)."""
  batch_size = batch_size or net.eval_batch_size
  model = models.create(net.model, net.num_classes, zoo=net.zoo, dtype=jnp.dtype(net.dtype))
  mesh = sharding.make_mesh()
  batch = -(-batch_size // mesh.size) * mesh.size
  host = net.dataset in data.HOST_DATASETS
  eval_step = step_lib.make_eval_step(None, mesh, mean=net.mean, std=net.std,
                                      dtype=jnp.dtype(net.dtype), nets={'net': model},
                                      host_batches=host)
  variables = sharding.put_replicated({'net': net.variables}, mesh)
  if not host:
    test = data.load_split(net.dataset, 'test', **load_options(net.data))
    images, labels = sharding.put_replicated((test.images, test.labels), mesh)
    return step_lib.evaluate(eval_step, variables, images, labels, batch_size=batch,
                             size=len(test), mesh=mesh)['net'], len(test)
  # pylint: disable=import-outside-toplevel  # grain's workers: only for ImageNet
  from kdjax.data import host_pipeline, image_sources
  test = image_sources.open_split(net.dataset, 'test', net.data.get('data_dir'))
  batches = host_pipeline.eval_pipeline(
      test, batch_size=batch, worker_count=net.data.get('workers'),
      **{k: net.data[k] for k in ('image_size', 'resize_size') if net.data.get(k)})
  with host_pipeline.DevicePrefetch(batches, sharding.data_sharded(mesh)) as prefetched:
    return step_lib.evaluate_batches(eval_step, variables, prefetched,
                                     size=len(test))['net'], len(test)


def _report(args) -> str:
  net = resolve(args.checkpoint, model=args.model, dataset=args.dataset,
                data_dir=args.data_dir, zoo_url=args.zoo_url)
  result, size = evaluate(net, args.batch_size)
  return (f'{net.model} ({net.source}) on the {size} test images of {net.dataset}: '
          f'top-1 {result["top1"]:.2f}%, top-5 {result["top5"]:.2f}%, '
          f'loss {result["loss"]:.4f}')


def main(argv: Optional[list[str]] = None) -> int:
  """``kdjax-eval`` / ``python -m kdjax.evaluate``."""
  parser = OneLineParser(prog=cli.invoked_as('kdjax.evaluate'), description=(
      'Print the top-1 / top-5 accuracy of a checkpoint on a test split.'))
  parser.add_argument('checkpoint', help='a kdjax workdir, a teacher folder, a .pth, '
                      'mdistiller:<name>, torchvision:<name>, or a kdjax-export --format '
                      'flax .msgpack')
  parser.add_argument('--dataset', help='digits, cifar10, cifar100 or imagenet (default: the '
                      "checkpoint's own; mdistiller:* cifar100, torchvision:* imagenet)")
  parser.add_argument('--data-dir', help='config.data.data_dir: the CIFAR cache or a TFDS '
                      'data dir; the ImageNet folder')
  parser.add_argument('--model', help='the architecture of a .pth (e.g. resnet32x4)')
  parser.add_argument('--batch-size', type=int,
                      help="images per eval batch (default: a workdir's eval_batch_size, "
                      'else 256)')
  parser.add_argument('--zoo-url', help='config.teacher.zoo_url: a mirror of the published '
                      'teachers')
  args = parser.parse_args(argv)
  if args.batch_size is not None and args.batch_size < 1:
    parser.error(f'--batch-size must be positive, got {args.batch_size}')
  return run_command(lambda: _report(args))


if __name__ == '__main__':
  sys.exit(main())
