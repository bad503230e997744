"""SIGINT and SIGTERM at any moment of a command (kdjax/interrupts.py): real signals to a real
``python -m kdjax.main``; one line, exit 130 / 143, no traceback, nothing half-written."""

import hashlib
import os
import pathlib
import signal
import subprocess
import sys
import time

import archives
from fileserver import FileServer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _start(tmp_path, *args):
  env = {**os.environ, 'KDJAX_CACHE': os.fspath(tmp_path / 'cache')}
  return subprocess.Popen([sys.executable, '-m', 'kdjax.main', *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc, what: str, timeout: float = 120):
  deadline = time.monotonic() + timeout
  while not condition():
    assert proc.poll() is None, f'exited before {what}: {proc.communicate()}'
    assert time.monotonic() < deadline, f'no {what} within {timeout} s'
    time.sleep(0.05)


def _importing_jax(pid: int) -> bool:
  """Whether the process has loaded jaxlib: it is past its first line, in its imports."""
  with open(f'/proc/{pid}/maps') as f:
    return 'jaxlib' in f.read()


def test_sigterm_during_the_imports_or_setup_is_one_line(tmp_path):
  workdir = tmp_path / 'run'
  proc = _start(tmp_path, '--config', 'vanilla:digits', '--workdir', os.fspath(workdir))
  _wait_for(lambda: _importing_jax(proc.pid), proc, 'import of jax')
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err
  assert 'Traceback' not in err and not out
  lines = err.splitlines()
  assert len(lines) == 1 and lines[0].startswith('kdjax: interrupted by SIGTERM while '), err
  assert lines[0] in ('kdjax: interrupted by SIGTERM while starting; nothing was written',
                      f'kdjax: interrupted by SIGTERM while setting up the run in {workdir}; '
                      f'its workdir was not touched'), err
  assert not workdir.exists()


def test_sigint_during_a_download_keeps_the_part_for_the_next_run(tmp_path):
  archive, _ = archives.cifar10()
  with FileServer() as server:
    server.files['cifar-10-binary.tar.gz'] = archive
    server.trickle = 0.2  # about 16 s for the whole archive
    url = server.url('cifar-10-binary.tar.gz')
    proc = _start(tmp_path, '--config', 'vanilla:resnet8', '--workdir', os.fspath(tmp_path / 'r'),
                  '--config.data.name=cifar10', f'--config.data.url={url}',
                  f'--config.data.sha256={hashlib.sha256(archive).hexdigest()}')
    part = tmp_path / 'cache' / 'cifar' / 'cifar-10-binary.tar.gz.part'
    _wait_for(lambda: server.requests and part.exists(), proc, 'download')
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err
  assert 'Traceback' not in err
  assert err.splitlines()[-1] == (
      f'kdjax: interrupted by SIGINT while downloading cifar-10-binary.tar.gz from {url}; the '
      f'bytes so far are kept in {part} and the next run resumes from them')
  assert [line for line in err.splitlines() if 'interrupted' in line] == [err.splitlines()[-1]]
  assert part.stat().st_size < len(archive) and archive.startswith(part.read_bytes())
  assert not (tmp_path / 'cache' / 'cifar' / 'cifar-10-binary.tar.gz').exists()
  assert not (tmp_path / 'r').exists()


def test_sigint_while_a_run_is_set_up_removes_its_workdir_and_says_so(tmp_path):
  workdir = tmp_path / 'run'
  proc = _start(tmp_path, '--config', 'vanilla:digits', '--workdir', os.fspath(workdir))
  assert proc.stderr.readline() == f'kdjax: workdir {workdir}\n'  # the plan is made: setup
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err
  assert 'Traceback' not in err
  assert err.splitlines()[-1] in (  # the run's setup, or just before or after it
      f'kdjax: interrupted by SIGINT while setting up the run in {workdir}; its workdir was not '
      f'touched',
      f'kdjax: interrupted by SIGINT while running the plan in {workdir}; its finished runs are '
      f'kept; the same command continues it',
      f'kdjax: interrupted by SIGINT while starting or ending the run in {workdir}; its saved '
      f'checkpoints are kept'), err
  assert not workdir.exists()  # nothing was saved in it, so nothing is left


def test_the_console_scripts_run_their_commands():
  """pyproject.toml's scripts go through kdjax.interrupts.script (handlers first)."""
  code = ('import sys; from kdjax import interrupts; sys.argv[1:] = ["--config", "kd:digitz"]; '
          'interrupts.kdjax_main()')
  done = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                        timeout=120, check=False)
  assert done.returncode == 2
  assert done.stderr.startswith("kdjax: error: unknown preset 'digitz' for kd; did you mean "
                                "'digits'?")
  for script in ('kdjax_main', 'kdjax_cache', 'kdjax_convert', 'kdjax_report', 'kdjax_eval',
                 'kdjax_export'):
    assert f'kdjax.interrupts:{script}' in (ROOT / 'pyproject.toml').read_text()
