"""Files in the exact upstream formats, written by the tests: the official CIFAR binary
archives and mdistiller's ``cifar_teachers.tar`` (a real torch state dict inside), for the
local HTTP server of :mod:`fileserver`."""

import io
import tarfile

import flax
import jax
import jax.numpy as jnp
import numpy as np

from kdjax import models
from kdjax.teachers import zoo as teacher_zoo
from kdjax.teachers.torch_import import torch_key


def tar_gz(members: dict[str, bytes]) -> bytes:
  """A .tar.gz with ``members`` (name -> bytes), their folders first, as ``tar czf`` makes."""
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode='w:gz') as tar:
    for folder in sorted({name.split('/')[0] for name in members}):
      info = tarfile.TarInfo(folder)
      info.type = tarfile.DIRTYPE
      tar.addfile(info)
    for name, content in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))
  return buffer.getvalue()


def cifar_records(rng, count: int, labels: list[np.ndarray]) -> np.ndarray:
  """``count`` records: the label bytes ``labels`` (one array per byte), then random pixels."""
  pixels = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
  return np.concatenate([np.stack(labels, axis=1).astype(np.uint8), pixels], axis=1)


def cifar100(seed=0, train=50, test=20):
  """(archive bytes, {split: records}) in the layout of cifar-100-binary.tar.gz."""
  rng = np.random.default_rng(seed)
  records = {split: cifar_records(rng, n, [rng.integers(0, 20, n), rng.integers(0, 100, n)])
             for split, n in (('train', train), ('test', test))}
  # Record 0 of train: pixel (row 1, column 2) is (R, G, B) = (10, 20, 30); (2, 1) is not.
  for channel, value in enumerate((10, 20, 30)):
    records['train'][0, 2 + channel * 1024 + 1 * 32 + 2] = value
    records['train'][0, 2 + channel * 1024 + 2 * 32 + 1] = 200 + channel
  archive = tar_gz({
      'cifar-100-binary/coarse_label_names.txt': b'aquatic_mammals\nfish\n',
      'cifar-100-binary/fine_label_names.txt': b'apple\naquarium_fish\n',
      'cifar-100-binary/train.bin': records['train'].tobytes(),
      'cifar-100-binary/test.bin': records['test'].tobytes(),
  })
  return archive, records


def cifar10(seed=0, per_batch=4, test=6):
  """(archive bytes, {split: records}) in the layout of cifar-10-binary.tar.gz."""
  rng = np.random.default_rng(seed)
  batches = [cifar_records(rng, per_batch, [rng.integers(0, 10, per_batch)]) for _ in range(5)]
  for number, batch in enumerate(batches, 1):
    batch[:, 1] = number  # the first red pixel says which batch a record came from
  test_records = cifar_records(rng, test, [rng.integers(0, 10, test)])
  archive = tar_gz({
      'cifar-10-batches-bin/batches.meta.txt': b'airplane\nautomobile\n',
      **{f'cifar-10-batches-bin/data_batch_{i}.bin': b.tobytes() for i, b in enumerate(batches, 1)},
      'cifar-10-batches-bin/readme.html': b'<html></html>',
      'cifar-10-batches-bin/test_batch.bin': test_records.tobytes(),
  })
  return archive, {'train': np.concatenate(batches), 'test': test_records}


def tar(members: dict[str, bytes], links: dict[str, str] = ()) -> bytes:
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode='w') as tar:
    for name, content in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))
    for name, target in dict(links).items():
      info = tarfile.TarInfo(name)
      info.type, info.linkname = tarfile.SYMTYPE, target
      tar.addfile(info)
  return buffer.getvalue()


def teacher_pth(torch, model: str, num_classes: int = 100) -> bytes:
  """The bytes of a RepDistiller/mdistiller ``ckpt_epoch_240.pth`` of ``model`` (random
  weights and BatchNorm statistics, PyTorch's layout, saved as train_teacher.py saves)."""
  shapes = jax.eval_shape(lambda: models.create(model, num_classes).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  rng = np.random.default_rng(0)
  state = {}
  for collection, tree in shapes.items():
    for path, like in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items():
      shape = like.shape
      if len(shape) == 4:  # HWIO -> OIHW
        shape = (shape[3], shape[2], shape[0], shape[1])
      elif len(shape) == 2:  # (in, out) -> (out, in)
        shape = shape[::-1]
      fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
      if path[-1] == 'var':
        value = rng.uniform(0.5, 1.5, shape)
      else:  # small weights (std 1/(4 sqrt(fan in))); BatchNorm scale about 1
        value = rng.normal(1.0 if path[-1] == 'scale' else 0.0, fan_in ** -0.5 / 4, shape)
      key = torch_key(collection, path)
      state[key] = torch.from_numpy(value.astype(np.float32))
      if path[-1] == 'var':
        state[key.replace('running_var', 'num_batches_tracked')] = torch.tensor(1000)
  buffer = io.BytesIO()
  torch.save({'epoch': 240, 'model': state, 'accuracy': torch.tensor(72.34)}, buffer)
  return buffer.getvalue()


def zoo_tar(pths: dict) -> bytes:
  """``cifar_teachers.tar`` in mdistiller's layout with ``{model: pth bytes}``."""
  return tar({teacher_zoo.member(model): pth for model, pth in pths.items()})
