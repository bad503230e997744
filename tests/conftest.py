"""Shared test helpers: where the PyTorch reference fixtures live; the platform's XLA flags."""

import os
import pathlib

import numpy as np
import pytest

from kdjax import platform_tuning

# In-process tests compute with what `python -m kdjax.main` uses (config.platform's
# defaults); this must run before anything starts JAX's backend.
platform_tuning.apply()
# gcsfs asks a gRPC API, which no local GCS server serves, for a bucket's layout on every
# call; it reads this when imported, so it is set before any test imports it.
os.environ.setdefault('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', 'false')

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = pathlib.Path(os.environ.get('KDJAX_FIXTURES', ROOT.parent / 'shared' / 'fixtures'))


def fixture_path(name: str) -> pathlib.Path:
  """Path of a reference fixture; skips the test with the reason when it is absent."""
  path = FIXTURES / name
  if not path.exists():
    pytest.skip(f'reference fixture {path} not found (set KDJAX_FIXTURES to its folder)',
                allow_module_level=True)
  return path


def load_fixture(name: str):
  """``numpy.load`` of a reference fixture file (see ../shared/fixtures/README.md)."""
  return np.load(fixture_path(name))


def tiny_config(method: str = 'vanilla', **overrides):
  """A digits config small enough for tests: resnet8, batch 32, a few steps, and mdistiller's
  step schedule without a warm-up (lr 0.05 from the first step to epoch 150), the one the
  PyTorch reference steps use, instead of the digits preset's warm-up + cosine."""
  from kdjax.config import base_config, digits_preset
  config = digits_preset(base_config())
  config.optimizer.schedule, config.optimizer.warmup_epochs = 'step', 0
  config.method = method
  config.model = 'resnet8'
  config.batch_size = 32
  config.eval_batch_size = 128
  config.num_epochs = 2
  config.log_every_steps = 4
  config.checkpoint_every_steps = 4
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split('.')
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config


def write_tfds(name: str, data_dir, images: dict) -> None:
  """What `tfds build NAME --file_format=array_record` leaves in ``data_dir``, written without
  TensorFlow: tf.train.Example records (tfds' own protos) of ``images[split]``, a list of
  ``(encoded image bytes, label)``, in ArrayRecord files, and the dataset's metadata."""
  import tensorflow_datasets as tfds
  from array_record.python.array_record_module import ArrayRecordWriter
  from tensorflow_datasets.proto import tf_example_pb2, tf_feature_pb2
  builder = tfds.builder(name, data_dir=str(data_dir), file_format='array_record')
  os.makedirs(builder.data_dir)
  splits = []
  for split, examples in images.items():
    writer = ArrayRecordWriter(os.path.join(
        builder.data_dir, f'{name}-{split}.array_record-00000-of-00001'), 'group_size:1')
    for i, (encoded, label) in enumerate(examples):
      feature = {
          'image': tf_feature_pb2.Feature(bytes_list=tf_feature_pb2.BytesList(value=[encoded])),
          'label': tf_feature_pb2.Feature(int64_list=tf_feature_pb2.Int64List(value=[label])),
          'file_name': tf_feature_pb2.Feature(
              bytes_list=tf_feature_pb2.BytesList(value=[f'{i}.JPEG'.encode()]))}
      writer.write(tf_example_pb2.Example(
          features=tf_feature_pb2.Features(feature=feature)).SerializeToString())
    writer.close()
    splits.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[len(examples)], num_bytes=0,
        filename_template=tfds.core.ShardedFileTemplate(
            data_dir=builder.data_dir, dataset_name=name, split=split,
            filetype_suffix='array_record')))
  builder.info.set_splits(tfds.core.SplitDict(splits))
  builder.info.write_to_directory(builder.data_dir)


def run_cli(args, env=None, timeout=600):
  """Runs ``python -m kdjax.main ARGS`` in the project root; returns the CompletedProcess."""
  import subprocess
  import sys
  full_env = dict(os.environ)
  full_env.update(env or {})
  return subprocess.run([sys.executable, '-m', 'kdjax.main', *args], cwd=ROOT, env=full_env,
                        capture_output=True, text=True, timeout=timeout)


def kill_when(args, reached, what: str, timeout: float = 300) -> None:
  """Starts ``python -m kdjax.main ARGS``, SIGKILLs it as soon as ``reached()`` is true
  (polled every 2 ms) and waits for it; fails if it ends or times out before ``what``."""
  import signal
  import subprocess
  import sys
  import time
  proc = subprocess.Popen([sys.executable, '-m', 'kdjax.main', *args], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout
  while not reached():
    assert proc.poll() is None and time.time() < deadline, f'never got {what}'
    time.sleep(0.002)
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def restore_state(workdir):
  """The train state in ``workdir``'s newest checkpoint (written on any number of devices)."""
  from kdjax.checkpoints import restore_on_host
  return restore_on_host(os.path.join(os.fspath(workdir), 'checkpoints'))[1]


def build_method(config, num_classes: int, dtype=None, steps_per_epoch: int = 100, **inputs):
  """``methods.build(config, BuildInputs(...))`` with the config's SGD and 32x32x3 images;
  ``inputs`` sets other BuildInputs fields (``train_labels``, ``teacher_trajectory``)."""
  import jax.numpy as jnp
  from kdjax import methods
  from kdjax.train import optim
  return methods.build(config, methods.BuildInputs(
      num_classes=num_classes,
      optimizer=optim.sgd(config.optimizer, optim.lr_schedule(
          config.optimizer, steps_per_epoch, config.num_epochs)),
      dtype=jnp.float32 if dtype is None else dtype, **inputs))
