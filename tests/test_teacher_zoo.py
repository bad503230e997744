"""kdjax.teachers.zoo: mdistiller's cifar_teachers.tar, downloaded and converted on demand.

The tar is a small one in mdistiller's layout, served by a local HTTP server; its resnet56
checkpoint is a real torch state dict (of a kdjax-initialised resnet56 with random BatchNorm
statistics, laid out as PyTorch's), saved as RepDistiller's train_teacher.py saves them.
"""

import hashlib
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import convert, downloads, models, teachers
from kdjax.teachers import zoo as teacher_zoo
from kdjax.errors import KdjaxError
import archives
from fileserver import FileServer

MODEL = 'resnet56'


@pytest.fixture(name='torch', scope='module')
def _torch():
  return pytest.importorskip('torch')


@pytest.fixture(name='pth', scope='module')
def _pth(torch):
  """The bytes of ``resnet56_vanilla/ckpt_epoch_240.pth`` (100 classes, random weights)."""
  return archives.teacher_pth(torch, MODEL)


def _zoo_tar(pth: bytes) -> bytes:
  """cifar_teachers.tar in mdistiller's layout (the other teachers' files are stand-ins)."""
  return archives.tar({'cifar_teachers/vgg13_vanilla/ckpt_epoch_240.pth': b'another teacher',
               teacher_zoo.member(MODEL): pth,
               'cifar_teachers/resnet56_vanilla/resnet56_best.pth': b'not this one'})


@pytest.fixture(name='server')
def _server(pth):
  with FileServer() as server:
    server.files['cifar_teachers.tar'] = _zoo_tar(pth)
    yield server


@jax.jit
def _logits(variables, images):
  return models.create(MODEL, 100).apply(variables, images, train=False).logits


def _root(cache, server) -> str:
  return teacher_zoo.source_root('mdistiller', server.url('cifar_teachers.tar'), cache)


def test_resolve_converts_the_teacher_once_and_then_works_offline(server, pth, tmp_path):
  url, cache = server.url('cifar_teachers.tar'), str(tmp_path / 'cache')
  folder = teacher_zoo.resolve('mdistiller:resnet56', zoo_url=url, cache=cache)
  assert folder == os.path.join(_root(cache, server), MODEL)
  direct = tmp_path / 'direct.pth'
  direct.write_bytes(pth)
  expected = convert.variables_from_torch(MODEL, convert.load_pth(direct), 100)
  images = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)
  logits = _logits(teachers.load_variables(folder, MODEL, 100), images)
  assert np.all(np.isfinite(logits)) and np.ptp(logits) > 0
  np.testing.assert_array_equal(logits, _logits(expected, images))
  archive = server.files['cifar_teachers.tar']
  root = pathlib.Path(_root(cache, server))
  pin = json.loads((root / 'cifar_teachers.tar.json').read_text())
  assert pin == {'url': url, 'size': len(archive), 'sha256': hashlib.sha256(archive).hexdigest()}
  meta = json.loads((root / MODEL / teachers.TEACHER_JSON).read_text())
  assert meta['model'] == MODEL and teacher_zoo.member(MODEL) in meta['source']
  assert pin['sha256'] in meta['source']
  assert not [e for e in os.listdir(root) if e.startswith('.')]  # no temporary folders
  server.stop()
  assert teacher_zoo.resolve('mdistiller:resnet56', zoo_url=url, cache=cache) == folder
  assert server.requests == [('cifar_teachers.tar', None)]


def test_a_changed_archive_is_refused(server, pth, tmp_path):
  url, cache = server.url('cifar_teachers.tar'), str(tmp_path / 'cache')
  folder = teacher_zoo.resolve('mdistiller:resnet56', zoo_url=url, cache=cache)
  first = server.files['cifar_teachers.tar']
  changed = archives.tar({teacher_zoo.member(MODEL): pth, 'cifar_teachers/extra.txt': b'new'})
  server.files['cifar_teachers.tar'] = changed
  os.remove(os.path.join(_root(cache, server), 'cifar_teachers.tar'))  # the big file, cleaned up
  os.rename(folder, folder + '.old')
  with pytest.raises(downloads.ChecksumError) as error:
    teacher_zoo.resolve('mdistiller:resnet56', zoo_url=url, cache=cache)
  line = str(error.value)
  assert '\n' not in line and url in line
  assert hashlib.sha256(changed).hexdigest() in line
  assert hashlib.sha256(first).hexdigest() in line
  assert 'cifar_teachers.tar.json' in line
  assert not os.path.exists(os.path.join(_root(cache, server), 'cifar_teachers.tar'))
  assert not os.path.exists(folder)


def test_a_failed_conversion_leaves_no_teacher_folder(server, tmp_path):
  url, cache = server.url('cifar_teachers.tar'), str(tmp_path / 'cache')
  with pytest.raises(KdjaxError, match='the checkpoint has 100 classes'):
    teacher_zoo.resolve('mdistiller:resnet56', zoo_url=url, cache=cache, num_classes=10)
  assert sorted(os.listdir(_root(cache, server))) == [
      'cifar_teachers.tar', 'cifar_teachers.tar.json', 'cifar_teachers.tar.lock',
      'cifar_teachers.tar.sha256']


def test_only_a_regular_file_member_is_read(torch, tmp_path):
  with FileServer() as server:
    server.files['cifar_teachers.tar'] = archives.tar(
        {'cifar_teachers/resnet56_vanilla/notes.txt': b'x'},
        links={teacher_zoo.member(MODEL): '/etc/passwd'})
    with pytest.raises(KdjaxError, match=f'has no file {teacher_zoo.member(MODEL)}'):
      teacher_zoo.resolve('mdistiller:resnet56', zoo_url=server.url('cifar_teachers.tar'),
                          cache=str(tmp_path))
    assert not [e for e in os.listdir(_root(str(tmp_path), server)) if e.startswith('.')]


def test_another_zoo_url_is_another_download_and_teacher(server, pth, tmp_path):
  cache = str(tmp_path / 'cache')
  server.files['mirror.tar'] = archives.tar({teacher_zoo.member(MODEL): pth})
  first = teacher_zoo.resolve('mdistiller:resnet56', zoo_url=server.url('cifar_teachers.tar'),
                              cache=cache)
  second = teacher_zoo.resolve('mdistiller:resnet56', zoo_url=server.url('mirror.tar'),
                               cache=cache)
  assert first != second
  assert [path for path, _ in server.requests] == ['cifar_teachers.tar', 'mirror.tar']
  meta = json.loads(pathlib.Path(second, teachers.TEACHER_JSON).read_text())
  digest = hashlib.sha256(server.files['mirror.tar']).hexdigest()
  assert server.url('mirror.tar') in meta['source'] and digest in meta['source']
  assert meta['dataset'] == 'cifar100'


def test_a_tar_cut_short_without_content_length_is_never_recorded(server, tmp_path):
  url, cache = server.url('cifar_teachers.tar'), str(tmp_path / 'cache')
  whole = server.files['cifar_teachers.tar']
  server.send_length, server.cut_after = False, len(whole) // 2
  with pytest.raises(KdjaxError) as error:
    teacher_zoo.resolve('mdistiller:resnet56', zoo_url=url, cache=cache)
  assert str(error.value) == (
      f'cifar_teachers.tar downloaded from {url} is not a whole tar: its {len(whole) // 2:,} '
      f'bytes stop before the end of the archive (a download cut short); it was deleted, not '
      f'recorded: run again to download it anew, or check config.teacher.zoo_url')
  root = _root(cache, server)
  assert not {'cifar_teachers.tar', 'cifar_teachers.tar.json'} & set(os.listdir(root))
  server.cut_after = None  # the next try gets the whole file, and records it
  teacher_zoo.resolve('mdistiller:resnet56', zoo_url=url, cache=cache)
  assert json.loads(pathlib.Path(root, 'cifar_teachers.tar.json').read_text())['size'] == len(
      whole)


def test_a_recorded_tar_that_is_not_whole_is_asked_for_again(server, tmp_path):
  """A cache from before tars were checked: a half tar, recorded as if it were the file."""
  url, cache = server.url('cifar_teachers.tar'), str(tmp_path / 'cache')
  whole = server.files['cifar_teachers.tar']
  root = pathlib.Path(_root(cache, server))
  root.mkdir(parents=True)
  (root / 'cifar_teachers.tar').write_bytes(whole[:len(whole) // 2])
  (root / 'cifar_teachers.tar.json').write_text(json.dumps(
      {'url': url, 'size': len(whole) // 2,
       'sha256': hashlib.sha256(whole[:len(whole) // 2]).hexdigest()}))
  teacher_zoo.resolve('mdistiller:resnet56', zoo_url=url, cache=cache)
  assert (root / 'cifar_teachers.tar').read_bytes() == whole
  assert json.loads((root / 'cifar_teachers.tar.json').read_text())['size'] == len(whole)


def test_an_unknown_teacher_lists_the_published_ones(tmp_path):
  with pytest.raises(KdjaxError) as error:
    teacher_zoo.resolve('mdistiller:resnet1000', zoo_url='http://127.0.0.1:9/x',
                        cache=str(tmp_path))
  line = str(error.value)
  assert "unknown published teacher 'mdistiller:resnet1000'" in line and '\n' not in line
  for name in ('resnet56', 'resnet110', 'resnet32x4', 'ResNet50', 'wrn_40_2', 'vgg13'):
    assert f'mdistiller:{name}' in line


def test_specs_and_published_numbers():
  assert teacher_zoo.is_zoo_spec('mdistiller:resnet32x4')
  assert not teacher_zoo.is_zoo_spec('/runs/teacher') and not teacher_zoo.is_zoo_spec(None)
  assert set(teacher_zoo.PUBLISHED_TOP1) == set(teacher_zoo.TEACHERS)
  assert set(teacher_zoo.TEACHERS) <= set(models.names())
  assert teacher_zoo.PUBLISHED_TOP1['resnet32x4'] == 79.42
  assert teacher_zoo.member('wrn_40_2') == 'cifar_teachers/wrn_40_2_vanilla/ckpt_epoch_240.pth'


def test_a_teacher_far_below_its_published_figure_is_warned_about():
  assert teacher_zoo.shortfall_warning('mdistiller:resnet56', 'cifar100', 67.5) is None
  line = teacher_zoo.shortfall_warning('mdistiller:resnet56', 'cifar100', 60.0)
  assert line.startswith('warning: teacher mdistiller:resnet56 measures 60.00% top-1, 12.3 '
                         'points below its published 72.34%') and '\n' not in line
  assert 'normalisation' in line and 'converted' in line
  assert teacher_zoo.shortfall_warning('/my/teacher', 'cifar100', 1.0) is None  # no figure
