"""A fault-injecting HTTP proxy for the storage tests: a :class:`ThreadingHTTPServer` on
127.0.0.1 that forwards every request to a server (the GCS emulator, :mod:`gcs_emulator`)
except those its :class:`Fault` picks, which it answers with an HTTP error (503, 429, 403,
401, a JSON body shaped as Google Cloud Storage's) or by closing the connection unanswered.

Clients are pointed at the proxy as at the emulator (``gcs_emulator.client_env(proxy.url)``),
so the retries, backoff and error handling under test are the real clients' own (gcsfs,
TensorStore), against real sockets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional, Union

# What Google Cloud Storage answers to a caller without credentials (HTTP 401).
ANONYMOUS = ('Anonymous caller does not have storage.objects.create access to the Google Cloud '
             'Storage object.')
_HOP_BY_HOP = {'connection', 'keep-alive', 'transfer-encoding', 'content-length', 'te',
               'trailer', 'upgrade', 'proxy-authorization', 'proxy-authenticate'}


def every_request(method: str, path: str) -> bool:  # pylint: disable=unused-argument
  return True


def uploads(method: str, path: str) -> bool:
  """The requests that write an object: GCS's ``/upload/`` endpoint (gcsfs and TensorStore
  both upload there)."""
  return method in ('POST', 'PUT') and path.startswith('/upload/')


def tensorstore_uploads(method: str, path: str) -> bool:
  """The uploads TensorStore makes (Orbax's array data): single-request ``uploadType=media``
  ones; gcsfs' writes are resumable uploads."""
  return uploads(method, path) and 'uploadType=media' in path


@dataclasses.dataclass
class Fault:
  """Which requests fail, and how.

  Of the requests ``match(method, path)`` picks, the first ``first`` fail (all of them when
  ``first`` is None), or, with ``every``, each ``every``-th. A failing request is answered
  with the HTTP status ``answer`` (and ``message`` in GCS's JSON error body), or, for
  ``answer='drop'``, its connection is closed without an answer.
  """
  answer: Union[int, str] = 503
  first: Optional[int] = None
  every: Optional[int] = None
  match: Callable[[str, str], bool] = every_request
  message: str = 'injected by flaky_proxy'
  seen: int = 0  # requests matched so far

  def hits(self, method: str, path: str) -> bool:
    """Whether this request fails (counts it among the matched ones)."""
    if not self.match(method, path):
      return False
    self.seen += 1
    if self.every:
      return self.seen % self.every == 0
    return self.first is None or self.seen <= self.first


class FlakyProxy(ThreadingHTTPServer):
  """The proxy. ``fault`` (None: forward everything) may be replaced while it runs, e.g.
  set to None to heal; ``injected`` lists ``(method, path, answer)`` of every request it
  failed, ``forwarded`` counts the others; ``errors`` holds the proxy's own failures."""

  daemon_threads = True

  def __init__(self, target: str, fault: Optional[Fault] = None):
    super().__init__(('127.0.0.1', 0), _Handler)
    parsed = urllib.parse.urlsplit(target)
    self.target = (parsed.hostname, parsed.port)
    self.fault = fault
    self.injected: list = []
    self.forwarded = 0
    self.errors: list = []
    self.lock = threading.Lock()

  def handle_error(self, request, client_address) -> None:
    """Quiet about a client that hung up before its answer was written (gcsfs sends two
    requests for an object's metadata and drops the slower); keeps anything else in
    ``errors`` (a test fails on them) and prints it."""
    if not isinstance(sys.exc_info()[1], ConnectionError):
      self.errors.append(repr(sys.exc_info()[1]))
      super().handle_error(request, client_address)

  @property
  def url(self) -> str:
    return f'http://127.0.0.1:{self.server_address[1]}'

  def decide(self, method: str, path: str):
    """The answer to inject for this request, or None to forward it."""
    with self.lock:
      fault = self.fault
      if fault is not None and fault.hits(method, path):
        self.injected.append((method, path, fault.answer))
        return fault
      self.forwarded += 1
      return None


class _Handler(BaseHTTPRequestHandler):
  protocol_version = 'HTTP/1.1'  # keep-alive, as the clients expect of GCS

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    pass  # quiet

  def _body(self) -> bytes:
    if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':
      chunks = []
      while True:
        size = int(self.rfile.readline().split(b';')[0], 16)
        chunks.append(self.rfile.read(size))
        self.rfile.readline()
        if not size:
          return b''.join(chunks)
    return self.rfile.read(int(self.headers.get('Content-Length') or 0))

  def _answer(self, status: int, headers: list, body: bytes) -> None:
    self.send_response(status)
    for name, value in headers:
      if name.lower() not in _HOP_BY_HOP:
        self.send_header(name, value)
    self.send_header('Content-Length', str(len(body)))
    self.end_headers()
    if self.command != 'HEAD':
      self.wfile.write(body)

  def _handle(self) -> None:
    body = self._body()
    fault = self.server.decide(self.command, self.path)
    if fault is not None and fault.answer == 'drop':
      self.close_connection = True
      self.connection.shutdown(2)
      return
    if fault is not None:
      error = {'error': {'code': fault.answer, 'message': fault.message,
                         'errors': [{'message': fault.message, 'reason': 'injected'}]}}
      self._answer(fault.answer, [('Content-Type', 'application/json')],
                   json.dumps(error).encode())
      return
    connection = http.client.HTTPConnection(*self.server.target, timeout=60)
    try:
      headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
      connection.request(self.command, self.path, body=body, headers=headers)
      response = connection.getresponse()
      self._answer(response.status, response.getheaders(), response.read())
    finally:
      connection.close()

  do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


@contextlib.contextmanager
def running_proxy(target: str, fault: Optional[Fault] = None):
  """Starts a :class:`FlakyProxy` in front of ``target`` (a URL); yields it; stops it."""
  proxy = FlakyProxy(target, fault)
  thread = threading.Thread(target=proxy.serve_forever, daemon=True)
  thread.start()
  try:
    yield proxy
  finally:
    proxy.shutdown()
    proxy.server_close()
    thread.join(timeout=10)
