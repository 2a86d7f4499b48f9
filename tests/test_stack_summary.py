"""infra/stack_summary.py: REST calls retried like Prefect's own client (503 from a busy server)."""

from __future__ import annotations

import importlib.util
import json
import threading
import urllib.error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "stack_summary", Path(__file__).resolve().parents[1] / "infra" / "stack_summary.py")
summary = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(summary)  # type: ignore[union-attr]


class _Server:
    """Answers POSTs with the next status code of ``codes`` (then 200 and a JSON list)."""

    def __init__(self, codes: list[int]):
        self.codes = list(codes)
        self.seen = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.seen += 1
                code = outer.codes.pop(0) if outer.codes else 200
                body = json.dumps([{"ok": True}] if code == 200 else {"exception_message": "x"}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def no_sleep(monkeypatch):
    monkeypatch.setattr(summary.time, "sleep", lambda s: None)


def test_a_busy_server_is_retried(no_sleep):
    srv = _Server([503, 502])
    try:
        assert summary.post(srv.url, "/flows/filter") == [{"ok": True}]
        assert srv.seen == 3
    finally:
        srv.close()


def test_other_errors_are_not_retried_and_retries_end(no_sleep):
    srv = _Server([404])
    try:
        with pytest.raises(urllib.error.HTTPError, match="404"):
            summary.post(srv.url, "/flows/filter")
        assert srv.seen == 1
    finally:
        srv.close()
    srv = _Server([503] * 10)
    try:
        with pytest.raises(urllib.error.HTTPError, match="503"):
            summary.post(srv.url, "/flows/filter", tries=3)
        assert srv.seen == 3
    finally:
        srv.close()
