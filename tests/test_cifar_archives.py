"""CIFAR-10/100 from archives in the official binary layout, served by a local HTTP server.

The archives are small synthetic ones (a few records) with known bytes, laid out exactly as
cifar-10-binary.tar.gz and cifar-100-binary.tar.gz are; the parsed images are checked against
the bytes written with an indexing formula of their own.
"""

import hashlib
import os
import time

import numpy as np
import pytest

from kdjax import data
from kdjax.config import base_config
from kdjax.plan import validate
from kdjax.data import cifar
from kdjax.errors import KdjaxError
import archives
from fileserver import FileServer, closed_port_url


def _expected_images(records: np.ndarray, label_bytes: int) -> np.ndarray:
  """images[n, y, x, c] = record[n][label_bytes + c * 1024 + y * 32 + x]."""
  y, x, c = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), indexing='ij')
  return records[:, label_bytes + c * 1024 + y * 32 + x]


def _sha(content: bytes) -> str:
  return hashlib.sha256(content).hexdigest()


@pytest.fixture(name='server')
def _server():
  with FileServer() as server:
    yield server


@pytest.fixture(name='c100')
def _c100(server):
  archive, records = archives.cifar100()
  server.files['cifar-100-binary.tar.gz'] = archive
  return server.url('cifar-100-binary.tar.gz'), _sha(archive), records


def _one_line(error) -> str:
  assert '\n' not in str(error.value), str(error.value)
  return str(error.value)


def test_cifar100_images_are_channel_major_rows_and_the_label_is_the_fine_byte(c100, tmp_path):
  url, sha, records = c100
  for split, count in (('train', 50), ('test', 20)):
    ds = data.load_split('cifar100', split, data_dir=str(tmp_path), url=url, sha256=sha)
    assert ds.images.shape == (count, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32 and ds.num_classes == 100
    assert ds.mean == data.sources.CIFAR100_MEAN and ds.std == data.sources.CIFAR100_STD
    np.testing.assert_array_equal(ds.images, _expected_images(records[split], 2))
    np.testing.assert_array_equal(ds.labels, records[split][:, 1])  # fine, not coarse
    assert not np.array_equal(ds.labels, records[split][:, 0])
  train = data.load_split('cifar100', 'train', data_dir=str(tmp_path), url=url, sha256=sha)
  assert train.images[0, 1, 2].tolist() == [10, 20, 30]
  assert train.images[0, 2, 1].tolist() == [200, 201, 202]
  assert sorted(os.listdir(tmp_path / 'cifar')) == [
      'cifar-100-binary.tar.gz', 'cifar-100-binary.tar.gz.lock',
      'cifar-100-binary.tar.gz.sha256', 'cifar100.npz']


def test_cifar10_train_is_the_five_batches_in_order(server, tmp_path):
  archive, records = archives.cifar10()
  server.files['c10.tar.gz'] = archive
  kw = dict(data_dir=str(tmp_path), url=server.url('c10.tar.gz'), sha256=_sha(archive))
  train, test = data.load_split('cifar10', 'train', **kw), data.load_split('cifar10', 'test', **kw)
  assert train.num_classes == 10 and train.mean == data.sources.CIFAR10_MEAN
  assert train.images[:, 0, 0, 0].tolist() == [b for b in range(1, 6) for _ in range(4)]
  for split, ds in (('train', train), ('test', test)):
    np.testing.assert_array_equal(ds.images, _expected_images(records[split], 1))
    np.testing.assert_array_equal(ds.labels, records[split][:, 0])


def test_a_second_load_with_the_server_stopped_uses_the_cache(server, c100, tmp_path):
  url, sha, records = c100
  first = data.load_split('cifar100', 'test', data_dir=str(tmp_path), url=url, sha256=sha)
  server.stop()
  images, _ = cifar.load('cifar100', 'test', cache=str(tmp_path), url=url, sha256=sha)
  np.testing.assert_array_equal(images, first.images)
  os.remove(tmp_path / 'cifar' / 'cifar100.npz')  # parsed again from the cached archive
  _, labels = cifar.load('cifar100', 'train', cache=str(tmp_path), url=url, sha256=sha)
  np.testing.assert_array_equal(labels, records['train'][:, 1])
  assert len(server.requests) == 1


def test_another_archive_is_parsed_anew(c100, tmp_path):
  url, sha, records = c100
  cifar.load('cifar100', 'train', cache=str(tmp_path), url=url, sha256=sha)
  archive, new_records = archives.cifar100(seed=1)
  path = tmp_path / 'cifar' / 'cifar-100-binary.tar.gz'
  path.write_bytes(archive)  # another archive put there by hand, a while later
  later = path.stat().st_mtime_ns + 10**9
  os.utime(path, ns=(later, later))
  # The parsed cache is of the archive asked for: still used.
  _, labels = cifar.load('cifar100', 'train', cache=str(tmp_path), url=url, sha256=sha)
  np.testing.assert_array_equal(labels, records['train'][:, 1])
  _, labels = cifar.load('cifar100', 'train', cache=str(tmp_path), url=url,
                         sha256=_sha(archive))
  np.testing.assert_array_equal(labels, new_records['train'][:, 1])
  os.remove(tmp_path / 'cifar' / 'cifar100.npz')
  with pytest.raises(KdjaxError, match=f'has sha256 {_sha(archive)}, expected {sha}; delete'):
    cifar.load('cifar100', 'train', cache=str(tmp_path), url=url, sha256=sha)


def test_a_wrong_sha256_is_refused_naming_both(c100, tmp_path):
  url, sha, _ = c100
  wrong = 'ab' * 32
  with pytest.raises(KdjaxError) as error:
    data.load_split('cifar100', 'train', data_dir=str(tmp_path), url=url, sha256=wrong)
  line = _one_line(error)
  assert wrong in line and sha in line and url in line
  assert not os.path.exists(tmp_path / 'cifar' / 'cifar-100-binary.tar.gz')
  assert not os.path.exists(tmp_path / 'cifar' / 'cifar-100-binary.tar.gz.part')


def test_a_truncated_download_is_never_used_and_the_next_run_completes_it(server, c100,
                                                                         tmp_path):
  url, sha, records = c100
  server.cut_after = 5000
  with pytest.raises(KdjaxError, match='connection closed after 5,000 of'):
    cifar.load('cifar100', 'test', cache=str(tmp_path), url=url, sha256=sha)
  assert sorted(os.listdir(tmp_path / 'cifar')) == [
      'cifar-100-binary.tar.gz.lock', 'cifar-100-binary.tar.gz.part']
  server.cut_after = None
  _, labels = cifar.load('cifar100', 'test', cache=str(tmp_path), url=url, sha256=sha)
  np.testing.assert_array_equal(labels, records['test'][:, 1])
  assert server.requests[-1][1] == 'bytes=5000-'


def test_an_offline_url_fails_fast_with_one_line(tmp_path):
  url = closed_port_url('cifar-100-binary.tar.gz')
  start = time.monotonic()
  with pytest.raises(KdjaxError) as error:
    data.load_split('cifar100', 'train', data_dir=str(tmp_path), url=url, sha256='cd' * 32)
  assert time.monotonic() - start < 5
  line = _one_line(error)
  assert url in line and str(tmp_path / 'cifar' / 'cifar-100-binary.tar.gz') in line


def test_without_download_a_missing_archive_says_where_to_put_it(tmp_path):
  with pytest.raises(KdjaxError) as error:
    data.load_split('cifar10', 'test', data_dir=str(tmp_path), download=False)
  line = _one_line(error)
  assert f'put cifar-10-binary.tar.gz (from {cifar.ARCHIVES["cifar10"].url}) at ' in line
  assert str(tmp_path / 'cifar' / 'cifar-10-binary.tar.gz') in line


def test_an_archive_put_there_by_hand_is_used_without_download(c100, server, tmp_path):
  url, sha, records = c100
  (tmp_path / 'cifar').mkdir()
  (tmp_path / 'cifar' / 'cifar-100-binary.tar.gz').write_bytes(server.files[
      'cifar-100-binary.tar.gz'])
  _, labels = cifar.load('cifar100', 'test', cache=str(tmp_path), download=False, url=url,
                         sha256=sha)
  np.testing.assert_array_equal(labels, records['test'][:, 1])
  assert server.requests == []


def test_a_mirror_needs_a_sha256_and_the_official_url_its_own(tmp_path):
  with pytest.raises(KdjaxError, match='config.data.sha256 must name the file it serves'):
    data.load_split('cifar100', 'train', data_dir=str(tmp_path), url='http://mirror/c.tar.gz')
  with pytest.raises(KdjaxError, match='is not the sha256 of the official'):
    data.load_split('cifar100', 'train', data_dir=str(tmp_path), sha256='ef' * 32)
  with pytest.raises(KdjaxError, match='64 hexadecimal digits'):
    data.load_split('cifar10', 'train', data_dir=str(tmp_path), url='http://m/c', sha256='xyz')
  assert cifar.source('cifar10') == (cifar.ARCHIVES['cifar10'].url,
                                     cifar.ARCHIVES['cifar10'].sha256, 170052171)
  config = base_config()
  config.data.url = 'http://mirror/cifar-100-binary.tar.gz'
  with pytest.raises(KdjaxError, match='config.data.url .* config.data.sha256'):
    validate(config)
  config.data.sha256 = 'EF' * 32
  validate(config)


def test_an_unwritable_cache_folder_is_one_line(tmp_path):
  (tmp_path / 'file').write_text('a file')
  with pytest.raises(KdjaxError) as error:
    data.load_split('cifar100', 'train', data_dir=str(tmp_path / 'file' / 'sub'))
  line = _one_line(error)
  assert str(tmp_path / 'file' / 'sub') in line and 'KDJAX_CACHE' in line


def test_a_damaged_member_is_one_line(server, tmp_path):
  archive = archives.tar_gz({'cifar-100-binary/train.bin': b'\0' * 3075,
                     'cifar-100-binary/test.bin': b''})
  server.files['bad.tar.gz'] = archive
  with pytest.raises(KdjaxError, match='3,075 bytes, not a whole number of 3074-byte records'):
    cifar.load('cifar100', 'test', cache=str(tmp_path), url=server.url('bad.tar.gz'),
               sha256=_sha(archive))
  archive = archives.tar_gz({'cifar-100-binary/test.bin': b''})
  server.files['short.tar.gz'] = archive
  with pytest.raises(KdjaxError, match='has no member cifar-100-binary/train.bin'):
    cifar.load('cifar100', 'test', cache=str(tmp_path / 'other'),
               url=server.url('short.tar.gz'), sha256=_sha(archive))


def test_load_is_cached_however_the_defaults_are_spelled(c100, tmp_path):
  url, sha, _ = c100
  first = data.load_split('cifar100', 'test', data_dir=str(tmp_path), url=url, sha256=sha)
  again = data.load_split('cifar100', 'test', data_dir=str(tmp_path), download=True, url=url,
                    sha256=sha)
  assert again is first
  assert (data.load_split('digits', 'test', url=None, sha256=None)
          is data.load_split('digits', 'test'))


def test_digits_takes_no_url():
  with pytest.raises(KdjaxError, match='digits ships with scikit-learn'):
    data.load_split('digits', 'train', url='http://mirror/x')
