"""`wait_healthy`, the one "poll until the app answers" loop, against a local HTTP server (no Ray)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from loraplex.bench.cluster import port_free, wait_healthy


@pytest.fixture
def server():
    """A loopback server whose /health fails the first `fails` times, and /ready is always 503; yields (url, state)."""
    state = {"fails": 2, "hits": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            state["hits"] += 1
            ok = self.path == "/health" and state["hits"] > state["fails"]
            self.send_response(200 if ok else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    httpd.shutdown()
    httpd.server_close()


def test_waits_through_failures_until_healthy(server):
    url, state = server
    wait_healthy(url, timeout_s=10, poll_s=0.01)
    assert state["hits"] == 3


def test_timeout_names_the_url_the_wait_and_the_last_answer(server):
    url, _ = server
    with pytest.raises(RuntimeError, match=rf"{url}/ready not healthy after waiting \d+\.\d s \(last: HTTP 503\)"):
        wait_healthy(url, ["/health", "/ready"], timeout_s=0.3, poll_s=0.01)


def test_timeout_when_nothing_listens():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert not port_free(port)
    with pytest.raises(RuntimeError, match=rf"127\.0\.0\.1:{port}/health not healthy .*ConnectError"):
        wait_healthy(f"http://127.0.0.1:{port}", timeout_s=0.2, poll_s=0.05)
