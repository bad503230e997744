"""A local Google Cloud Storage server for the tests: the ``gcp-storage-emulator`` package run
as a subprocess on 127.0.0.1 (through tests/gcs_server.py, which closes two of its gaps to
Cloud Storage), and the standard variables that point every client at it.

The clients kdjax uses reach a bucket through three stacks, each told where the server is by
its own variable: gcsfs (``etils.epath``'s ``gs://`` backend) by ``STORAGE_EMULATOR_HOST``;
TensorStore (Orbax's checkpoints) by ``TENSORSTORE_GCS_HTTP_URL``, with
``GOOGLE_AUTH_TOKEN_FOR_TESTING`` as its credentials; and gcsfs' gRPC bucket-layout probe,
which the emulator does not serve, is turned off with ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import json
import pathlib
import time
import urllib.parse
import urllib.request

import pytest

SERVER = pathlib.Path(__file__).with_name('gcs_server.py')  # the emulator, two gaps closed


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def client_env(url: str) -> dict:
  """The variables that send gcsfs, TensorStore and google-auth to the server at ``url``.

  None of them then reaches a real Google endpoint: google-auth (which gcsfs asks first)
  finds no credentials to refresh (no key file, no gcloud configuration) and skips the
  Compute Engine metadata server (``NO_GCE_CHECK``), so gcsfs goes on anonymously.
  ArrayRecord's own GCS reader (TFDS data in a bucket) is sent by
  ``CLOUD_STORAGE_EMULATOR_ENDPOINT``."""
  return {'STORAGE_EMULATOR_HOST': url, 'TENSORSTORE_GCS_HTTP_URL': url,
          'CLOUD_STORAGE_EMULATOR_ENDPOINT': url,
          'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'kdjax-test-token',
          'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false', 'EPATH_USE_TF': 'false',
          'NO_GCE_CHECK': 'true', 'GOOGLE_APPLICATION_CREDENTIALS': '',
          'CLOUDSDK_CONFIG': os.path.join(os.devnull, 'gcloud')}


@contextlib.contextmanager
def running_emulator(buckets=('kdjax-test',)):
  """Starts the emulator (in-memory) with ``buckets``; yields its URL; stops it."""
  for module, what in (('gcp_storage_emulator', 'the GCS emulator'),
                       ('gcsfs', "gcsfs, kdjax's gs:// client")):
    if importlib.util.find_spec(module) is None:  # not imported: gcsfs reads its variables then
      pytest.skip(f'{what} is not installed (pip install -e .[test])')
  port = _free_port()
  url = f'http://127.0.0.1:{port}'
  server = subprocess.Popen(
      [sys.executable, str(SERVER), 'start', '--host', '127.0.0.1',
       '--port', str(port), '--in-memory', '--default-bucket', buckets[0]],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 30
    while True:
      try:
        urllib.request.urlopen(f'{url}/storage/v1/b/{buckets[0]}', timeout=1).close()
        break
      except OSError:
        if server.poll() is not None or time.monotonic() > deadline:
          raise RuntimeError(f'the GCS emulator did not start on {url}') from None
        time.sleep(0.1)
    for bucket in buckets[1:]:
      urllib.request.urlopen(urllib.request.Request(
          f'{url}/storage/v1/b', data=f'{{"name": "{bucket}"}}'.encode(),
          headers={'Content-Type': 'application/json'}), timeout=5).close()
    yield url
  finally:
    server.terminate()
    server.wait(timeout=10)


def list_objects(url: str, bucket: str, prefix: str = '') -> list:
  """The names of the objects under ``prefix`` in ``bucket``, read from the server's JSON API
  (no client library: what is in the bucket, whatever kdjax's clients believe)."""
  names, token = [], ''
  while True:
    query = urllib.parse.urlencode({'prefix': prefix, 'pageToken': token})
    with urllib.request.urlopen(f'{url}/storage/v1/b/{bucket}/o?{query}', timeout=10) as r:
      page = json.load(r)
    names += [item['name'] for item in page.get('items', [])]
    token = page.get('nextPageToken')
    if not token:
      return sorted(names)


def read_object(url: str, bucket: str, name: str) -> bytes:
  """The bytes of one object, read from the server's JSON API."""
  quoted = urllib.parse.quote(name, safe='')
  with urllib.request.urlopen(f'{url}/storage/v1/b/{bucket}/o/{quoted}?alt=media',
                              timeout=10) as r:
    return r.read()


def write_object(url: str, bucket: str, name: str, data: bytes) -> None:
  """Uploads one object (unconditionally) through the server's JSON API."""
  query = urllib.parse.urlencode({'uploadType': 'media', 'name': name})
  urllib.request.urlopen(urllib.request.Request(
      f'{url}/upload/storage/v1/b/{bucket}/o?{query}', data=data,
      headers={'Content-Type': 'application/octet-stream'}), timeout=10).close()
