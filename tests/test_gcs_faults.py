"""Storage faults on ``gs://`` (kdjax issue 25, item 6), against the GCS emulator behind a
fault-injecting proxy (:mod:`flaky_proxy`): transient failures (HTTP 503, a dropped
connection) are retried by the clients themselves (gcsfs for kdjax's JSON files, TensorStore
for Orbax's arrays); what stays refused (no bucket, no credentials, no permission, a write
that keeps failing) is one ``kdjax: error:`` line (:func:`kdjax.paths.storage_error`), and a
checkpoint that cannot be written leaves the previous one restorable.

Every client runs in a subprocess whose environment points it at the proxy
(``gcs_emulator.client_env``), so the retries and errors are the real clients'.
"""

import os
import subprocess
import sys
import textwrap

import pytest

import flaky_proxy
import gcs_emulator
from conftest import ROOT

BUCKET = 'kdjax-test'
# gcsfs (2026.10, retry.retry_request) tries a request 6 times, sleeping
# min(random() + 2 ** (try - 1), 32) s between tries: 1-2 s for one failure, 3-5 s for two.
GCSFS_TRIES = 6

# Saves a small pytree as checkpoint STEP of gs://kdjax-test/DIR (``save``) or restores the
# newest checkpoint there (``restore``), printing one result line.
CHECKPOINT = textwrap.dedent('''
    import sys
    import jax.numpy as jnp
    from kdjax import checkpoints
    directory, step, action = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    state = {'w': jnp.arange(6.0).reshape(2, 3) * step, 'step': jnp.int32(step)}
    saver = checkpoints.Checkpointer(f'gs://kdjax-test/{directory}', keep=3)
    if action == 'save':
      try:
        saver.save(step, state, {'epoch': step}, wait=True)
        print('saved', step)
      except checkpoints.CheckpointWriteError as e:
        print(f'error: {e}')
    else:
      restored, progress = saver.restore_latest(checkpoints.abstract_like(state))
      print('restored', int(restored['step']), restored['w'].tolist(), progress)
''')


@pytest.fixture(scope='module')
def emulator():
  with gcs_emulator.running_emulator(buckets=(BUCKET,)) as url:
    yield url


@pytest.fixture
def proxy(emulator):
  """A proxy in front of the emulator that forwards everything until a test sets its fault;
  no request may break it (``errors``)."""
  with flaky_proxy.running_proxy(emulator) as running:
    yield running
    assert not running.errors, running.errors


def _python(url, *args, timeout=120):
  """``python ARGS`` in the project root with the clients pointed at ``url``."""
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        env={**os.environ, **gcs_emulator.client_env(url)}, timeout=timeout)


def _dry_run(url, workdir, timeout=120):
  return _python(url, '-m', 'kdjax.main', '--config', 'vanilla:digits', '--workdir', workdir,
                 '--dry-run', timeout=timeout)


def _one_error_line(done) -> str:
  """The one line a refused command printed (and its status 2)."""
  assert done.returncode == 2, done.stderr[-3000:]
  lines = [l for l in done.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('kdjax: error: '), done.stderr[-3000:]
  return lines[0][len('kdjax: error: '):]


# ------------------------------------------------------------------ transient failures


@pytest.mark.parametrize('answer', [503, 'drop'])
def test_json_files_are_written_and_read_through_transient_failures(proxy, answer):
  proxy.fault = flaky_proxy.Fault(answer, first=2)
  done = _python(proxy.url, '-c', textwrap.dedent(f'''
      from kdjax import jsonio
      jsonio.write_json('gs://{BUCKET}/json_{answer}/results.json', {{'top1': 71.5}})
      print(jsonio.read_json('gs://{BUCKET}/json_{answer}/results.json'))'''))
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout == "{'top1': 71.5}\n"
  assert [a for _, _, a in proxy.injected] == [answer, answer]
  assert proxy.injected[0][1].startswith(f'/upload/storage/v1/b/{BUCKET}/o?')  # the write's


def test_a_failed_write_leaves_the_object_as_it_was(proxy):
  # A writer that fails mid-way (its own error, or an upload the store keeps refusing)
  # leaves the old object whole: nothing of the new content is committed.
  done = _python(proxy.url, '-c', textwrap.dedent(f'''
      from kdjax import jsonio, paths
      target = 'gs://{BUCKET}/whole/results.json'
      jsonio.write_json(target, {{'top1': 1.0}})
      try:
        with paths.writing(target) as f:
          f.write(b'{{"top1": 2')
          raise RuntimeError('the writer failed')
      except RuntimeError:
        pass
      print(jsonio.read_json(target))'''))
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout == "{'top1': 1.0}\n"


@pytest.mark.parametrize('answer', [503, 'drop'])
def test_checkpoints_are_saved_and_restored_through_transient_failures(proxy, answer):
  # TensorStore's uploads of the array data fail, not gcsfs' (Orbax's metadata files)
  proxy.fault = flaky_proxy.Fault(answer, first=2, match=flaky_proxy.tensorstore_uploads)
  directory = f'ckpt_{answer}'
  saved = _python(proxy.url, '-c', CHECKPOINT, directory, '3', 'save')
  assert saved.stdout == 'saved 3\n', saved.stderr[-3000:]
  assert len(proxy.injected) == 2
  assert all(f'name={directory}%2F3%2Fstate' in path for _, path, _ in proxy.injected)
  restored = _python(proxy.url, '-c', CHECKPOINT, directory, '3', 'restore')
  assert restored.stdout == ("restored 3 [[0.0, 3.0, 6.0], [9.0, 12.0, 15.0]] {'epoch': 3}\n"
                             ), restored.stderr[-3000:]


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_the_last_one_restores(proxy):
  assert _python(proxy.url, '-c', CHECKPOINT, 'ckpt_denied', '1', 'save').stdout == 'saved 1\n'
  proxy.fault = flaky_proxy.Fault(403, match=flaky_proxy.uploads, message='denied by the test')
  failed = _python(proxy.url, '-c', CHECKPOINT, 'ckpt_denied', '2', 'save')
  assert failed.stdout.startswith(
      f'error: the checkpoint of step 2 in gs://{BUCKET}/ckpt_denied: permission denied '
      f'(HTTP 403: denied by the test); '), failed
  assert 'the checkpoint of step 1 is kept' in failed.stdout and failed.stdout.count('\n') == 1
  assert proxy.injected
  proxy.fault = None  # healed
  restored = _python(proxy.url, '-c', CHECKPOINT, 'ckpt_denied', '2', 'restore')
  assert restored.stdout == "restored 1 [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]] {'epoch': 1}\n", (
      restored.stderr[-3000:])


# ------------------------------------------------------------------ refusals, one line


def test_a_missing_bucket_is_one_line_naming_it(emulator):
  line = _one_error_line(_dry_run(emulator, 'gs://nobucket/x'))
  assert line == ('the workdir gs://nobucket/x: bucket gs://nobucket does not exist; create it '
                  '(gcloud storage buckets create gs://nobucket) or name another')


def test_no_credentials_is_one_line_saying_how_to_provide_them(proxy):
  proxy.fault = flaky_proxy.Fault(401, message=flaky_proxy.ANONYMOUS)
  line = _one_error_line(_dry_run(proxy.url, f'gs://{BUCKET}/x'))
  assert line.startswith(f'the workdir gs://{BUCKET}/x: no valid Google Cloud credentials '
                         f'(HTTP 401: {flaky_proxy.ANONYMOUS}); ')
  assert 'gcloud auth application-default login' in line
  assert 'GOOGLE_APPLICATION_CREDENTIALS' in line
  assert len(proxy.injected) == 1  # gcsfs does not retry a caller without credentials


def test_no_permission_is_one_line_naming_the_path(proxy):
  proxy.fault = flaky_proxy.Fault(403, match=flaky_proxy.uploads,
                                  message='kdjax@p.iam.gserviceaccount.com does not have '
                                          'storage.objects.create access')
  line = _one_error_line(_dry_run(proxy.url, f'gs://{BUCKET}/x'))
  assert line.startswith(f'the workdir gs://{BUCKET}/x: permission denied (HTTP 403: '
                         f'kdjax@p.iam.gserviceaccount.com does not have storage.objects.create '
                         f'access); grant ')


def test_every_client_reports_missing_credentials_as_such(proxy):
  """TensorStore's 401, and google-auth finding no credentials at all (what gcsfs and
  TensorStore do without the emulator's variables), are the same line as gcsfs' 401."""
  proxy.fault = flaky_proxy.Fault(401, message=flaky_proxy.ANONYMOUS)
  done = _python(proxy.url, '-c', textwrap.dedent(f'''
      import google.auth
      import tensorstore as ts
      from kdjax import paths
      store = ts.KvStore.open({{'driver': 'gcs', 'bucket': '{BUCKET}'}}).result()
      for attempt in (lambda: store.write('x', b'1').result(), google.auth.default):
        try:
          attempt()
        except Exception as e:
          print(type(e).__name__, '|', paths.storage_error(e, 'gs://{BUCKET}/x'))'''))
  lines = done.stdout.splitlines()
  assert len(lines) == 2, done.stderr[-3000:]
  assert [l.split(' | ')[0] for l in lines] == ['ValueError', 'DefaultCredentialsError']
  for line in lines:
    assert f' | gs://{BUCKET}/x: no valid Google Cloud credentials (' in line
    assert line.endswith('; run `gcloud auth application-default login`, or set '
                         'GOOGLE_APPLICATION_CREDENTIALS to the key file of a service account')


@pytest.mark.slow
@pytest.mark.parametrize('answer, message, says', [
    (503, 'injected by flaky_proxy', 'the storage service answered HTTP 503: injected by '
     'flaky_proxy after the client retried it with backoff; try again later'),
    (401, 'Invalid Credentials', 'no valid Google Cloud credentials (HTTP 401: Invalid '
     'Credentials); run `gcloud auth application-default login`')])
def test_a_request_that_keeps_failing_is_one_line_after_gcsfs_retries(proxy, answer, message,
                                                                     says):
  """Persistent 503, and 401 'Invalid Credentials' (expired credentials, which gcsfs
  retries too), on every request: gcsfs gives up after its 6 tries (about 31-36 s)."""
  proxy.fault = flaky_proxy.Fault(answer, message=message)
  line = _one_error_line(_dry_run(proxy.url, f'gs://{BUCKET}/x', timeout=200))
  assert line.startswith(f'the workdir gs://{BUCKET}/x: {says}')
  assert len(proxy.injected) == GCSFS_TRIES
