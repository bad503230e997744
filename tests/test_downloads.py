"""kdjax.downloads: verified, resumable downloads into the cache, against a local HTTP server."""

import hashlib
import os
import socket
import stat
import threading
import time

import pytest

import archives
from kdjax import downloads
from kdjax.data import cifar
from kdjax.errors import KdjaxError
from fileserver import FileServer, closed_port_url

BODY = bytes(range(256)) * 4099  # about 1 MB, more than one read chunk
SHA = hashlib.sha256(BODY).hexdigest()
OTHER = hashlib.sha256(b'other').hexdigest()


@pytest.fixture(name='server')
def _server():
  with FileServer() as server:
    server.files['a.bin'] = BODY
    yield server


def _one_line(error) -> str:
  text = str(error.value)
  assert '\n' not in text, text
  return text


def test_fetch_downloads_verifies_and_then_needs_no_network(server, tmp_path):
  dest = tmp_path / 'a.bin'
  assert downloads.fetch(server.url('a.bin'), str(dest), sha256=SHA, size=len(BODY)) == str(dest)
  assert dest.read_bytes() == BODY
  assert (tmp_path / 'a.bin.sha256').read_text().split()[:2] == [SHA, str(len(BODY))]
  assert not (tmp_path / 'a.bin.part').exists()
  server.stop()
  assert downloads.fetch(server.url('a.bin'), str(dest), sha256=SHA, size=len(BODY)) == str(dest)
  assert server.requests == [('a.bin', None)]


def test_progress_bar_goes_to_stderr(server, tmp_path, capsys):
  downloads.fetch(server.url('a.bin'), str(tmp_path / 'a.bin'), sha256=SHA, what='the A file')
  err = capsys.readouterr().err
  assert 'the A file' in err and '100%' in err and '1.00M' in err


def test_a_wrong_sha256_is_refused_naming_both_and_nothing_is_kept(server, tmp_path):
  dest = tmp_path / 'a.bin'
  with pytest.raises(downloads.ChecksumError) as error:
    downloads.fetch(server.url('a.bin'), str(dest), sha256=OTHER)
  line = _one_line(error)
  assert OTHER in line and SHA in line and server.url('a.bin') in line
  assert sorted(os.listdir(tmp_path)) == ['a.bin.lock']


def test_a_truncated_download_is_never_used_and_the_next_run_resumes_it(server, tmp_path):
  dest = tmp_path / 'a.bin'
  server.cut_after = 300_000
  with pytest.raises(KdjaxError) as error:
    downloads.fetch(server.url('a.bin'), str(dest), sha256=SHA, size=len(BODY))
  line = _one_line(error)
  assert 'closed after 300,000 of 1,049,344 bytes' in line and str(dest) in line
  assert not dest.exists()
  assert (tmp_path / 'a.bin.part').stat().st_size == 300_000
  server.cut_after = None
  downloads.fetch(server.url('a.bin'), str(dest), sha256=SHA, size=len(BODY))
  assert dest.read_bytes() == BODY
  assert server.requests == [('a.bin', None), ('a.bin', 'bytes=300000-')]


def test_a_server_without_ranges_restarts_from_zero(server, tmp_path):
  (tmp_path / 'a.bin.part').write_bytes(BODY[:1000])
  server.ranges = False
  downloads.fetch(server.url('a.bin'), str(tmp_path / 'a.bin'), sha256=SHA)
  assert (tmp_path / 'a.bin').read_bytes() == BODY
  assert server.requests == [('a.bin', 'bytes=1000-')]


def test_a_stale_part_of_another_file_is_downloaded_again_from_zero(server, tmp_path):
  (tmp_path / 'a.bin.part').write_bytes(b'x' * 1000)  # resumes, and then does not verify
  downloads.fetch(server.url('a.bin'), str(tmp_path / 'a.bin'), sha256=SHA)
  assert (tmp_path / 'a.bin').read_bytes() == BODY
  assert server.requests == [('a.bin', 'bytes=1000-'), ('a.bin', None)]


def test_a_complete_part_left_by_a_killed_run_is_used_without_network(server, tmp_path):
  (tmp_path / 'a.bin.part').write_bytes(BODY)
  server.stop()
  downloads.fetch(server.url('a.bin'), str(tmp_path / 'a.bin'), sha256=SHA, size=len(BODY))
  assert (tmp_path / 'a.bin').read_bytes() == BODY


def test_a_part_longer_than_the_file_restarts_after_416(server, tmp_path):
  (tmp_path / 'a.bin.part').write_bytes(BODY + b'junk')
  downloads.fetch(server.url('a.bin'), str(tmp_path / 'a.bin'), sha256=SHA)
  assert (tmp_path / 'a.bin').read_bytes() == BODY
  assert server.requests == [('a.bin', f'bytes={len(BODY) + 4}-'), ('a.bin', None)]


def test_an_existing_file_that_differs_is_refused_not_replaced(server, tmp_path):
  dest = tmp_path / 'a.bin'
  dest.write_bytes(b'y' * len(BODY))
  with pytest.raises(downloads.ChecksumError) as error:
    downloads.fetch(server.url('a.bin'), str(dest), sha256=SHA, size=len(BODY))
  line = _one_line(error)
  assert str(dest) in line and SHA in line and 'delete it' in line
  assert dest.read_bytes() == b'y' * len(BODY) and server.requests == []


def _replace(path, content):
  """Writes ``content`` to ``path`` as a later edit would: with a later modification time."""
  before = path.stat().st_mtime_ns
  path.write_bytes(content)
  os.utime(path, ns=(before + 10**9, before + 10**9))


def test_a_file_that_changed_is_hashed_again(server, tmp_path):
  dest = tmp_path / 'a.bin'
  downloads.fetch(server.url('a.bin'), str(dest), sha256=SHA)
  _replace(dest, b'y' * len(BODY))  # the same size: the sidecar's time no longer matches
  with pytest.raises(downloads.ChecksumError, match=f'has sha256 .*, expected {SHA}'):
    downloads.fetch(server.url('a.bin'), str(dest), sha256=SHA)
  _replace(dest, BODY)  # the right bytes again: hashed, accepted, sidecar rewritten
  downloads.fetch(server.url('a.bin'), str(dest), sha256=SHA)
  assert (tmp_path / 'a.bin.sha256').read_text().split() == [
      SHA, str(len(BODY)), str(dest.stat().st_mtime_ns)]
  assert server.requests == [('a.bin', None)]


def test_trust_on_first_use_records_the_hash_for_the_caller(server, tmp_path):
  dest = tmp_path / 'a.bin'
  downloads.fetch(server.url('a.bin'), str(dest), sha256=None)
  assert downloads.file_sha256(str(dest)) == SHA
  (tmp_path / 'a.bin.sha256').unlink()
  assert downloads.file_sha256(str(dest)) == SHA  # hashed again


def test_an_unreachable_server_fails_fast_with_one_line(tmp_path):
  url = closed_port_url('a.bin')
  start = time.monotonic()
  with pytest.raises(KdjaxError) as error:
    downloads.fetch(url, str(tmp_path / 'a.bin'), sha256=SHA, what='the A file')
  assert time.monotonic() - start < 5
  line = _one_line(error)
  assert line.startswith(f'could not download the A file from {url} (')
  assert 'refused' in line and f'put the file at {tmp_path / "a.bin"} by hand' in line


def test_an_http_error_is_one_line(server, tmp_path):
  with pytest.raises(KdjaxError) as error:
    downloads.fetch(server.url('missing.bin'), str(tmp_path / 'm.bin'), sha256=SHA)
  assert 'HTTP 404' in _one_line(error)


def test_file_urls_and_local_paths_are_mirrors(tmp_path):
  mirror = tmp_path / 'mirror' / 'a.bin'
  mirror.parent.mkdir()
  mirror.write_bytes(BODY)
  downloads.fetch(mirror.as_uri(), str(tmp_path / 'one.bin'), sha256=SHA)
  downloads.fetch(str(mirror), str(tmp_path / 'two.bin'), sha256=SHA)
  assert (tmp_path / 'one.bin').read_bytes() == BODY == (tmp_path / 'two.bin').read_bytes()
  with pytest.raises(KdjaxError, match='No such file'):
    downloads.fetch(str(tmp_path / 'nope.bin'), str(tmp_path / 'three.bin'), sha256=SHA)


def test_concurrent_fetches_take_turns(server, tmp_path):
  dest = str(tmp_path / 'a.bin')
  errors = []

  def fetch():
    try:
      downloads.fetch(server.url('a.bin'), dest, sha256=SHA)
    except KdjaxError as e:
      errors.append(e)

  threads = [threading.Thread(target=fetch) for _ in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors and (tmp_path / 'a.bin').read_bytes() == BODY
  assert len(server.requests) == 1


def test_a_malformed_sha256_is_one_line(tmp_path):
  with pytest.raises(KdjaxError, match='64 hexadecimal digits'):
    downloads.fetch('http://127.0.0.1:9/a', str(tmp_path / 'a'), sha256='abc')


def test_cache_dir_override_env_and_default(tmp_path, monkeypatch):
  monkeypatch.setenv('KDJAX_CACHE', str(tmp_path / 'env'))
  assert downloads.cache_dir(str(tmp_path / 'given')) == str(tmp_path / 'given')
  assert downloads.cache_dir() == str(tmp_path / 'env')
  monkeypatch.delenv('KDJAX_CACHE')
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert downloads.cache_dir() == str(tmp_path / 'home' / '.cache' / 'kdjax')
  assert os.path.isdir(tmp_path / 'home' / '.cache' / 'kdjax')


def test_an_unwritable_cache_is_one_line(tmp_path):
  (tmp_path / 'file').write_text('a file, not a folder')  # even root cannot create under it
  with pytest.raises(KdjaxError) as error:
    downloads.cache_dir(str(tmp_path / 'file' / 'sub'))
  line = _one_line(error)
  assert str(tmp_path / 'file' / 'sub') in line
  assert 'KDJAX_CACHE' in line and 'config.data.data_dir' in line


def test_a_wait_for_a_lock_names_its_holder(tmp_path, capfd):
  lock = str(tmp_path / 'a.bin.lock')
  held, release = threading.Event(), threading.Event()

  def hold():
    with downloads.file_lock(lock):
      held.set()
      release.wait(30)

  holder = threading.Thread(target=hold)
  holder.start()
  assert held.wait(30)
  threading.Timer(0.3, release.set).start()
  with downloads.file_lock(lock):
    pass
  holder.join()
  assert capfd.readouterr().err == (f'kdjax: waiting for process {os.getpid()} on '
                                    f'{socket.gethostname()}, which holds {lock}\n')


def _snapshot(folder) -> dict:
  return {os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
          for root, _, names in os.walk(folder) for name in names}


def test_a_read_only_cache_that_holds_everything_is_only_read(tmp_path):
  archive, records = archives.cifar10()
  cache = tmp_path / 'shared'
  with FileServer() as server:
    server.files['c10.tar.gz'] = archive
    source = dict(url=server.url('c10.tar.gz'), sha256=hashlib.sha256(archive).hexdigest())
    cifar.load('cifar10', 'train', cache=str(cache), **source)  # the team prepares it once
  for root, folders, names in os.walk(cache):
    for name in folders + names:
      os.chmod(os.path.join(root, name), 0o555 if name in folders else 0o444)
  os.chmod(cache, 0o555)
  before = _snapshot(cache)
  try:
    for split in ('train', 'test'):  # the server is gone: no network, no write, no lock
      images, _ = cifar.load('cifar10', split, cache=str(cache), **source)
      assert len(images) == len(records[split])
    assert downloads.fetch(source['url'], str(cache / 'cifar' / 'cifar-10-binary.tar.gz'),
                           **{'sha256': source['sha256']}) == str(
                               cache / 'cifar' / 'cifar-10-binary.tar.gz')
    assert _snapshot(cache) == before
  finally:
    for root, folders, _ in os.walk(cache):
      for name in folders:
        os.chmod(os.path.join(root, name), 0o755)
    os.chmod(cache, 0o755)


def test_cache_files_are_created_with_the_users_umask(server, tmp_path):
  archive, _ = archives.cifar10()
  server.files['c10.tar.gz'] = archive
  old = os.umask(0o022)
  try:
    downloads.fetch(server.url('a.bin'), str(tmp_path / 'a.bin'), sha256=SHA)
    cifar.load('cifar10', 'train', cache=str(tmp_path), url=server.url('c10.tar.gz'),
               sha256=hashlib.sha256(archive).hexdigest())
  finally:
    os.umask(old)
  for path in (tmp_path / 'a.bin', tmp_path / 'a.bin.sha256', tmp_path / 'cifar' / 'cifar10.npz',
               tmp_path / 'cifar' / 'cifar-10-binary.tar.gz.sha256'):
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path
