"""A local HTTP file server for download tests: 127.0.0.1, a thread, no internet.

It serves ``files`` (name -> bytes) at ``url(name)``, honours ``Range: bytes=N-`` with
``206 Partial Content`` (unless ``ranges`` is False: then the whole file, 200), and can cut
the connection after ``cut_after`` body bytes while announcing the full length, as a
dropped download does (with ``send_length`` False it announces none, so the client cannot
tell the cut from the end), or send the body in 1 KiB pieces ``trickle`` seconds apart (a
slow link). ``requests`` logs ``(path, Range header or None)`` of each request.
"""

from __future__ import annotations

import http.server
import re
import socket
import threading
import time


class FileServer:
  """``with FileServer() as server: server.files['a.tar'] = b'...'; server.url('a.tar')``."""

  def __init__(self):
    self.files: dict[str, bytes] = {}
    self.ranges = True
    self.cut_after: int | None = None
    self.send_length = True
    self.trickle: float | None = None
    self.requests: list[tuple[str, str | None]] = []
    self._httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), self._handler())
    self._httpd.daemon_threads = True
    self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
    self._thread.start()
    self._running = True

  def url(self, name: str) -> str:
    return f'http://127.0.0.1:{self._httpd.server_address[1]}/{name}'

  def stop(self) -> None:
    """Shuts the server down: its URLs then refuse connections."""
    if self._running:
      self._httpd.shutdown()
      self._httpd.server_close()
      self._running = False

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.stop()

  def _handler(self):
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      """GET with ranges and cuts, as configured on the server."""

      def log_message(self, *args):  # quiet
        pass

      def do_GET(self):  # pylint: disable=invalid-name
        name = self.path.lstrip('/')
        requested = self.headers.get('Range')
        server.requests.append((name, requested))
        if name not in server.files:
          self.send_error(404)
          return
        body = server.files[name]
        found = re.fullmatch(r'bytes=(\d+)-', requested or '')
        start = int(found.group(1)) if found and server.ranges else 0
        if start >= len(body) > 0:
          self.send_response(416)
          self.send_header('Content-Range', f'bytes */{len(body)}')
          self.send_header('Content-Length', '0')
          self.end_headers()
          return
        self.send_response(206 if start else 200)
        if start:
          self.send_header('Content-Range', f'bytes {start}-{len(body) - 1}/{len(body)}')
        if server.send_length:
          self.send_header('Content-Length', str(len(body) - start))
        self.end_headers()
        rest = body[start:]
        while server.trickle is not None and rest:
          try:
            self.wfile.write(rest[:1024])
            self.wfile.flush()
          except (BrokenPipeError, ConnectionResetError):  # the client went away
            return
          rest = rest[1024:]
          time.sleep(server.trickle)
        if server.cut_after is not None and server.cut_after < len(rest):
          self.wfile.write(rest[:server.cut_after])
          self.wfile.flush()
          self.connection.shutdown(socket.SHUT_RDWR)  # the peer sees the connection end
          self.close_connection = True
          return
        self.wfile.write(rest)

    return Handler


def closed_port_url(name: str = 'file') -> str:
  """A URL on 127.0.0.1 where nothing listens: connecting is refused at once."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  return f'http://127.0.0.1:{port}/{name}'
