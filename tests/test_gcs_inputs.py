"""The inputs and caches of a run read from and written to a bucket (issue 25): a teacher
checkpoint at ``gs://``, the CIFAR cache and the teacher-logit cache under
``KDJAX_CACHE=gs://...``, against the real GCS emulator (:mod:`gcs_emulator`). The runs are
subprocesses (the emulator's variables must be set before gcsfs is imported); the bucket is
inspected through the emulator's own JSON API, not through kdjax."""

import hashlib
import json
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest

import archives
import gcs_emulator
from conftest import ROOT, run_cli, write_tfds
from fileserver import FileServer

BUCKET = 'kdjax-test'

# A teacher folder for CIFAR-100 (resnet8, random weights: the run's values depend on them,
# not its correctness), written by kdjax.teachers.save to every folder named in argv.
MAKE_TEACHER = """
import sys, jax, jax.numpy as jnp
from kdjax import models, teachers
net = models.create('resnet8', 100)
variables = jax.device_get(net.init(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)), train=False))
for folder in sys.argv[1:]:
  teachers.save(folder, 'resnet8', 100, variables, dataset='cifar100')
"""

# The train split through kdjax.data.load_split (argv: url, sha256): its SHA-256 and size.
LOAD_CIFAR = """
import hashlib, sys
from kdjax import data
train = data.load_split('cifar100', 'train', url=sys.argv[1], sha256=sys.argv[2])
print(hashlib.sha256(train.images.tobytes() + train.labels.tobytes()).hexdigest(), len(train))
"""


# Your own data (argv: data_dir, a folder of images; tfds_dir, a prepared TFDS beans): the
# folder decoded (kdjax.data.custom.load) and both read as encoded sources, digested.
LOAD_CUSTOM = """
import hashlib, json, sys
from kdjax.config import base_config
from kdjax.data import custom, image_sources
config = base_config()
config.data.name, config.data.data_dir, config.data.image_size = 'folder', sys.argv[1], 16
train, test = custom.load(config, 'train'), custom.load(config, 'test')
folder = image_sources.ImageFolder(sys.argv[1] + '/train')
beans = image_sources.TfdsImages('beans', 'train', sys.argv[2])
digest = lambda *parts: hashlib.sha256(b''.join(parts)).hexdigest()
print(json.dumps({
    'decoded': digest(train.images.tobytes(), train.labels.tobytes(), test.images.tobytes()),
    'classes': train.classes,
    'folder': [[folder.describe(i).rsplit('/train/', 1)[1], digest(folder[i][0]), folder[i][1]]
               for i in range(len(folder))],
    'tfds': [[digest(beans[i][0]), beans[i][1]] for i in range(len(beans))],
    'tfds_files': [f[:2] for f in beans.fingerprint()[:-1]]}))
"""


# A published teacher (argv: the zoo's URL) resolved into the cache: its folder, and the
# SHA-256 of its variables as kdjax.teachers.load_variables reads them.
RESOLVE_ZOO = """
import hashlib, sys, jax, numpy as np
from kdjax import teachers
from kdjax.teachers import zoo
folder = zoo.resolve('mdistiller:resnet56', zoo_url=sys.argv[1])
leaves = jax.tree.leaves(teachers.load_variables(folder, 'resnet56', 100))
print(folder, hashlib.sha256(b''.join(np.asarray(x).tobytes() for x in leaves)).hexdigest())
"""


def _upload(url: str, folder, prefix: str) -> None:
  """Every file under the local ``folder`` as an object ``prefix/<relative path>``."""
  for path in sorted(p for p in folder.rglob('*') if p.is_file()):
    gcs_emulator.write_object(url, BUCKET, f'{prefix}/{path.relative_to(folder).as_posix()}',
                              path.read_bytes())


def _generations(url: str, prefix: str) -> dict:
  """``{name: generation}`` of the objects under ``prefix``: a rewritten object has another."""
  query = urllib.parse.urlencode({'prefix': prefix})
  with urllib.request.urlopen(f'{url}/storage/v1/b/{BUCKET}/o?{query}', timeout=10) as r:
    return {o['name']: o['generation'] for o in json.load(r).get('items', [])}


def _names(url: str, prefix: str) -> list:
  return gcs_emulator.list_objects(url, BUCKET, prefix)


def _read(url: str, name: str) -> bytes:
  return gcs_emulator.read_object(url, BUCKET, name)


def _delete(url: str, name: str) -> None:
  quoted = urllib.parse.quote(name, safe='')
  urllib.request.urlopen(urllib.request.Request(
      f'{url}/storage/v1/b/{BUCKET}/o/{quoted}', method='DELETE'), timeout=10).close()


def _python(code: str, *args, env: dict) -> str:
  proc = subprocess.run([sys.executable, '-c', code, *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def _train(workdir, teacher: str, cache: str, archive_url: str, sha256: str, env: dict):
  """A 3-step KD run (resnet8 -> resnet8) on a 50-image CIFAR-100 from ``archive_url``, with
  its teacher at ``teacher`` and the logit cache in ``cache``; returns its stderr."""
  proc = run_cli(['--config', 'experiments/kd.py', '--workdir', str(workdir),
                  '--config.model=resnet8', '--config.teacher.model=resnet8',
                  f'--config.teacher.checkpoint={teacher}', '--config.teacher.cache=True',
                  f'--config.data.url={archive_url}', f'--config.data.sha256={sha256}',
                  '--config.data.crop_padding=1', '--config.num_epochs=1',
                  '--config.batch_size=16', '--config.eval_batch_size=32',
                  '--config.optimizer.warmup_epochs=0'],
                 env={**env, 'KDJAX_CACHE': cache}, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stderr


def _accuracy(workdir) -> dict:
  """The teacher's and the student's test accuracy (and loss) in the run's results."""
  results = json.loads((workdir / 'results.json').read_text())
  return {k: results[k] for k in ('teacher_top1', 'last_top1', 'last_top5', 'last_epoch')}


@pytest.mark.slow
def test_teacher_cifar_cache_and_logit_cache_are_read_from_the_bucket(tmp_path):
  archive, _ = archives.cifar100(train=50, test=20)
  sha256 = hashlib.sha256(archive).hexdigest()
  with FileServer() as server, gcs_emulator.running_emulator(buckets=(BUCKET,)) as url:
    server.files['cifar-100-binary.tar.gz'] = archive
    archive_url = server.url('cifar-100-binary.tar.gz')
    env = {**gcs_emulator.client_env(url), 'KDJAX_CACHE': f'gs://{BUCKET}/cache'}
    _python(MAKE_TEACHER, tmp_path / 'teacher', f'gs://{BUCKET}/teacher', env=env)
    assert 'teacher/teacher.json' in _names(url, 'teacher/')

    local = _train(tmp_path / 'local', tmp_path / 'teacher', str(tmp_path / 'cache'),
                   archive_url, sha256, env)
    first = _train(tmp_path / 'gs1', f'gs://{BUCKET}/teacher', f'gs://{BUCKET}/cache',
                   archive_url, sha256, env)
    assert len(server.requests) == 2  # one download each: the local cache, the bucket's
    cached = _generations(url, 'cache/')
    assert {'cache/cifar/cifar-100-binary.tar.gz', 'cache/cifar/cifar-100-binary.tar.gz.sha256',
            'cache/cifar/cifar100.npz'} <= set(cached)
    assert _read(url, 'cache/cifar/cifar-100-binary.tar.gz') == archive
    (manifest,) = [n for n in cached if n.startswith('cache/teacher_logits/')
                   and n.endswith('/manifest.json')]
    key = manifest.split('/')[2]
    local_manifest = tmp_path / 'cache' / 'teacher_logits' / key / 'manifest.json'
    chunks = json.loads(_read(url, manifest))['chunks']
    assert chunks and chunks == json.loads(local_manifest.read_text())['chunks']  # same bytes
    assert 'chunks of' in first and 'chunks of' in local  # each built its cache

    second = _train(tmp_path / 'gs2', f'gs://{BUCKET}/teacher', f'gs://{BUCKET}/cache',
                    archive_url, sha256, env)
    assert len(server.requests) == 2  # the CIFAR cache in the bucket: no download
    assert 'chunks of' not in second  # the logit cache was read, not computed
    assert _generations(url, 'cache/') == cached  # and nothing in the bucket was rewritten
    assert _accuracy(tmp_path / 'gs1') == _accuracy(tmp_path / 'gs2') == _accuracy(
        tmp_path / 'local') != {}

    # Without its parsed .npz, the archive is read from the bucket (verified by its sidecar),
    # not downloaded, and gives the same images.
    _delete(url, 'cache/cifar/cifar100.npz')
    server.stop()
    from_bucket = _python(LOAD_CIFAR, archive_url, sha256, env=env)
    from_local = _python(LOAD_CIFAR, archive_url, sha256,
                         env={**env, 'KDJAX_CACHE': str(tmp_path / 'cache')})
    assert from_bucket == from_local and from_bucket.split()[1] == '50'
    assert 'cache/cifar/cifar100.npz' in _names(url, 'cache/cifar/')


def _image_folder(root) -> None:
  """``root/{train,val}/<class>/...``: 3 classes of 8x8 PNGs, some in sub-folders (the order
  is folder by folder, files sorted, as torchvision walks it)."""
  from PIL import Image
  for split, count in (('train', 4), ('val', 2)):
    for label, name in enumerate(('blue', 'green', 'red')):
      for i in range(count):
        path = root / split / name / ('deep' if i % 2 else '') / f'{i}.png'
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new('RGB', (8, 8), (40 * label + i, 60, 90)).save(path)


@pytest.mark.slow
def test_a_folder_of_images_and_a_tfds_data_dir_are_read_from_the_bucket(tmp_path):
  _image_folder(tmp_path / 'images')
  examples = [(p.read_bytes(), 0) for p in sorted((tmp_path / 'images').rglob('*.png'))]
  write_tfds('beans', tmp_path / 'tfds', {'train': examples})
  with gcs_emulator.running_emulator(buckets=(BUCKET,)) as url:
    _upload(url, tmp_path / 'images', 'images')
    _upload(url, tmp_path / 'tfds', 'tfds')
    env = {**gcs_emulator.client_env(url), 'KDJAX_CACHE': f'gs://{BUCKET}/cache'}
    remote = json.loads(_python(LOAD_CUSTOM, f'gs://{BUCKET}/images', f'gs://{BUCKET}/tfds',
                                env=env))
    local = json.loads(_python(LOAD_CUSTOM, tmp_path / 'images', tmp_path / 'tfds',
                               env={**env, 'KDJAX_CACHE': str(tmp_path / 'cache')}))
    assert remote == local
    assert [f[0].split('/')[0] for f in local['folder']] == ['blue'] * 4 + ['green'] * 4 + [
        'red'] * 4 and local['folder'][1][0] == 'blue/2.png'  # top folder first, then deep/
    assert len(local['tfds']) == 18 and local['tfds_files']
    assert len([n for n in _names(url, 'cache/decoded/') if n.endswith('.npz')]) == 2


@pytest.mark.slow
def test_a_published_teacher_is_downloaded_and_converted_into_the_bucket_once(tmp_path):
  torch = pytest.importorskip('torch')
  tar = archives.zoo_tar({'resnet56': archives.teacher_pth(torch, 'resnet56')})
  with FileServer() as server, gcs_emulator.running_emulator(buckets=(BUCKET,)) as url:
    server.files['cifar_teachers.tar'] = tar
    zoo_url = server.url('cifar_teachers.tar')
    env = {**gcs_emulator.client_env(url), 'KDJAX_CACHE': f'gs://{BUCKET}/cache'}
    folder, digest = _python(RESOLVE_ZOO, zoo_url, env=env).split()
    root = folder.removeprefix(f'gs://{BUCKET}/').rsplit('/', 1)[0]
    assert folder.startswith(f'gs://{BUCKET}/cache/teachers/mdistiller/')
    objects = _generations(url, root + '/')
    assert _read(url, f'{root}/cifar_teachers.tar') == tar
    assert json.loads(_read(url, f'{root}/cifar_teachers.tar.json'))['sha256'] == (
        hashlib.sha256(tar).hexdigest())
    assert f'{root}/resnet56/teacher.json' in objects
    server.stop()  # converted once: the second run reads the teacher from the bucket
    assert _python(RESOLVE_ZOO, zoo_url, env=env).split() == [folder, digest]
    assert server.requests == [('cifar_teachers.tar', None)]
    assert _generations(url, root + '/') == objects  # nothing written again
  local = _python(RESOLVE_ZOO, 'file://' + str(_write(tmp_path / 'mirror.tar', tar)),
                  env={'KDJAX_CACHE': str(tmp_path / 'cache')}).split()
  assert local[1] == digest  # the same variables as converted locally


def _write(path, content: bytes):
  path.write_bytes(content)
  return path
