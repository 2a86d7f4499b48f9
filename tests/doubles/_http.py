"""A small threaded HTTP server with scripted faults, shared by the service doubles."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Fault:
    """What to do instead of (or to) the normal answer, the next ``times`` matching requests.

    ``kind``: ``status`` (answer ``status`` with ``body``), ``hang`` (wait ``seconds``, then answer
    normally), ``truncate`` (announce the full length, send only half, close), ``html``
    (a 200 HTML page, as some services send for a bad login), ``unavailable`` (ARM's
    "not available" text).
    """

    method: str
    path: str  # regular expression searched in the request path
    kind: str = "status"
    status: int = 500
    times: int = 1
    seconds: float = 0.0
    body: bytes = b'{"title": "internal error"}'
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and method == self.method and re.search(self.path, path) is not None


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    status: int = 0
    fault: str = ""


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> Reply:
        return cls(status, json.dumps(obj).encode(), "application/json")


class DoubleServer:
    """Subclasses implement ``route(method, path, query, headers, body) -> Reply``."""

    def __init__(self) -> None:
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests it was answering at once
        self._lock = threading.Lock()
        self._release = threading.Event()
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet (URLs carry tokens)
                pass

            def _handle(self, method: str) -> None:
                # A request is "in flight" from its arrival until its answer starts to go out: a
                # client that got the answer may start its next request before this thread gets
                # to run again, and must not be counted as overlapping with it.
                with double._lock:
                    double.in_flight += 1
                    double.max_in_flight = max(double.max_in_flight, double.in_flight)
                self._counted = True
                try:
                    self._answer(method)
                finally:
                    self._answered()

            def _answered(self) -> None:
                if getattr(self, "_counted", False):
                    self._counted = False
                    with double._lock:
                        double.in_flight -= 1

            def _answer(self, method: str) -> None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query, keep_blank_values=True)
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                seen = Seen(method, parts.path, query, {k.lower(): v for k, v in self.headers.items()})
                with double._lock:
                    double.seen.append(seen)
                    fault = next((f for f in double.faults if f.matches(method, parts.path)), None)
                    if fault:
                        fault.times -= 1
                        fault.hits += 1
                        seen.fault = fault.kind
                if fault and fault.kind == "hang":
                    double._release.wait(fault.seconds)
                    fault = None
                if fault and fault.kind == "status":
                    reply = Reply(fault.status, fault.body, "application/json")
                elif fault and fault.kind == "html":
                    reply = Reply(200, b"<!DOCTYPE html><html><body>Login failed</body></html>", "text/html")
                else:
                    reply = double.route(method, parts.path, query, seen.headers, body)
                seen.status = reply.status
                self._answered()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(reply.body)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    if method == "HEAD":
                        return
                    if fault and fault.kind == "truncate":
                        self.wfile.write(reply.body[: len(reply.body) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self) -> None:
                self._handle("GET")

            def do_HEAD(self) -> None:
                self._handle("HEAD")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def origin(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add_fault(self, method: str, path: str, kind: str = "status", **kw: Any) -> Fault:
        f = Fault(method, path, kind, **kw)
        with self._lock:
            self.faults.append(f)
        return f

    def requests_to(self, path_regex: str, method: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen
                    if re.search(path_regex, s.path) and (method is None or s.method == method)]

    def route(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
              body: bytes) -> Reply:
        raise NotImplementedError

    def start(self) -> DoubleServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> DoubleServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
