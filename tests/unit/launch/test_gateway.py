"""rws_hub.launch.gateway against a real upstream HTTP server (no TorchServe needed): what it
forwards unchanged, what it answers itself, and what it does when the upstream fails."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

requests = pytest.importorskip("requests")
pytest.importorskip("aiohttp")

from rws_hub.launch.gateway import MAX_HEADER_BYTES, Gateway, media_type, serve  # noqa: E402
from rws_hub.launch.torchserve import free_ports  # noqa: E402

LIMIT = 64 * 1024


class Upstream(ThreadingHTTPServer):
    """Echoes each request as JSON; ``/slow`` waits; ``/teapot`` answers 418 with a header."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.seen: list[dict] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client gone mid-answer (the 504 test's gateway gives up): nothing to report


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Upstream

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _handle(self) -> None:
        with self.server.lock:
            self.server.in_flight += 1
            self.server.most_in_flight = max(self.server.most_in_flight, self.server.in_flight)
        try:
            size = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(size) if size else b""
            seen = {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "size": len(body),
                "sha": hashlib.sha256(body).hexdigest(),
            }
            with self.server.lock:
                self.server.seen.append(seen)
            if self.path.startswith("/slow"):
                time.sleep(float(self.path.split("=", 1)[1]) if "=" in self.path else 0.3)
            status = 418 if self.path.startswith("/teapot") else 200
            out = json.dumps(seen).encode()
            self.send_response(status, "Short And Stout" if status == 418 else None)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Upstream", "yes")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
        finally:
            with self.server.lock:
                self.server.in_flight -= 1

    do_GET = do_POST = do_PUT = _handle


@pytest.fixture()
def upstream() -> Iterator[Upstream]:
    srv = Upstream()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _run_gateway(target: str, **kwargs: float) -> Iterator[str]:
    """The gateway on a free port, in a thread with its own event loop."""
    port = free_ports(1)[0]
    app = Gateway(target, max_body_bytes=LIMIT, **kwargs)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(
        target=loop.run_until_complete, args=(serve(app, "127.0.0.1", port, stop),), daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            break
        assert time.monotonic() < deadline and thread.is_alive(), "the gateway did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(stop.set)
    thread.join(timeout=10)
    loop.close()


@pytest.fixture()
def gateway(upstream: Upstream) -> Iterator[str]:
    host, port = upstream.server_address[:2]
    yield from _run_gateway(f"http://{host}:{port}")


def test_media_type() -> None:
    assert media_type(b"Multipart/Form-Data; boundary=x") == "multipart/form-data"
    assert media_type(" application/json ;charset=utf-8") == "application/json"
    assert media_type(None) == ""


def test_requests_and_answers_pass_through_unchanged(gateway: str, upstream: Upstream) -> None:
    body = bytes(range(256)) * 40
    r = requests.post(
        f"{gateway}/predictions/m?signatures=fog:1&top_k=3",
        data=body,
        headers={
            "Content-Type": "image/png",
            "Authorization": "Bearer k",
            "X-RWS-Signatures": "fog:0.5",
            "Connection": "keep-alive",
            "Keep-Alive": "timeout=5",
        },
        timeout=30,
    )
    assert r.status_code == 200 and r.headers["X-Upstream"] == "yes"
    seen = r.json()
    assert seen["method"] == "POST" and seen["path"] == "/predictions/m?signatures=fog:1&top_k=3"
    assert seen["size"] == len(body) and seen["sha"] == hashlib.sha256(body).hexdigest()
    assert seen["headers"]["authorization"] == "Bearer k"
    assert seen["headers"]["x-rws-signatures"] == "fog:0.5"
    assert "keep-alive" not in seen["headers"]  # hop-by-hop: not forwarded
    # a chunked body arrives whole, with its length; PUT and GET pass; statuses pass
    r = requests.put(f"{gateway}/predictions/m", data=iter([body[:100], body[100:]]), timeout=30)
    assert r.status_code == 200 and r.json()["size"] == len(body)
    assert r.json()["method"] == "PUT"
    assert requests.get(f"{gateway}/ping", timeout=30).json()["method"] == "GET"
    r = requests.post(f"{gateway}/teapot", json={"a": 1}, timeout=30)
    assert r.status_code == 418 and r.json()["headers"]["content-type"] == "application/json"
    assert r.reason == "Short And Stout"  # the handler puts its error in the reason phrase


@pytest.mark.parametrize(
    "ctype",
    [
        "application/x-www-form-urlencoded",
        "Application/X-WWW-Form-Urlencoded; charset=utf-8",
        "multipart/form-data; boundary=xyz",
        "multipart/mixed",
    ],
)
def test_form_bodies_are_answered_415_and_never_forwarded(
    gateway: str, upstream: Upstream, ctype: str
) -> None:
    """The bodies TorchServe's frontend would decode itself (and answer a bad %-escape or
    boundary with a 500) get a 415 naming the right Content-Type."""
    r = requests.post(
        f"{gateway}/predictions/m", data=b"\x89PNG %zz %", headers={"Content-Type": ctype}
    )
    assert r.status_code == 415 and r.headers["Content-Type"].startswith("application/json")
    out = r.json()
    assert out["status"] == 415 and "Content-Type: image/png" in out["error"]
    assert upstream.seen == []
    assert requests.get(f"{gateway}/ping", timeout=30).status_code == 200  # still serving


def test_bodies_over_the_limit_get_413(gateway: str, upstream: Upstream) -> None:
    big = b"\0" * (LIMIT + 1)
    r = requests.post(f"{gateway}/p", data=big, headers={"Content-Type": "image/png"})
    assert r.status_code == 413 and str(LIMIT) in r.json()["error"]
    chunks = iter([big[: LIMIT // 2], big[LIMIT // 2 :]])  # no Content-Length: counted
    r = requests.post(f"{gateway}/p", data=chunks, headers={"Content-Type": "image/png"})
    assert r.status_code == 413
    assert upstream.seen == []
    r = requests.post(f"{gateway}/p", data=big[:LIMIT], headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.json()["size"] == LIMIT


def test_a_client_that_hangs_up_forwards_nothing(gateway: str, upstream: Upstream) -> None:
    port = int(gateway.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 1000\r\n\r\nabc"
        )
    assert requests.get(f"{gateway}/ping", timeout=30).status_code == 200
    assert [s["path"] for s in upstream.seen] == ["/ping"]


def test_concurrent_requests_reach_the_upstream_concurrently(
    gateway: str, upstream: Upstream
) -> None:
    """TorchServe batches requests that arrive together: the gateway must not serialize them."""
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: requests.get(f"{gateway}/slow=0.5").status_code, range(8)))
    assert codes == [200] * 8
    assert upstream.most_in_flight > 1


def test_upstream_down_is_502_and_slow_is_504(upstream: Upstream) -> None:
    dead = free_ports(1)[0]
    for url in _run_gateway(f"http://127.0.0.1:{dead}"):
        r = requests.get(f"{url}/ping", timeout=30)
        assert r.status_code == 502 and "not reachable" in r.json()["error"]
    host, port = upstream.server_address[:2]
    for url in _run_gateway(f"http://{host}:{port}", timeout_s=0.2):
        r = requests.get(f"{url}/slow=2", timeout=30)
        assert r.status_code == 504 and "in time" in r.json()["error"]
        assert requests.get(f"{url}/ping", timeout=30).status_code == 200


def test_oversized_and_malformed_requests_get_json_errors(gateway: str, upstream: Upstream) -> None:
    """Headers over TorchServe's limit: 431 (also past the parser's buffer); malformed: 400; all
    JSON, none forwarded."""
    for headers in (
        {"Authorization": "Bearer " + "k" * MAX_HEADER_BYTES},
        {f"X-H{i}": "v" * 20 for i in range(300)},
    ):
        r = requests.get(f"{gateway}/ping", headers=headers, timeout=30)
        assert r.status_code == 431 and "headers" in r.json()["error"], r.text
    r = requests.get(f"{gateway}/ping", headers={"X-Big": "x" * (5 << 20)}, timeout=30)
    assert r.status_code == 431 and "headers" in r.json()["error"]
    status, body, headers = _raw(gateway, b"GARBAGE\r\n\r\n")
    assert status == 400 and "application/json" in headers["Content-Type"]
    assert json.loads(body)["status"] == 400
    assert upstream.seen == []


def _raw(gateway: str, request: bytes) -> tuple[int, bytes, http.client.HTTPMessage]:
    """Send ``request`` as is on a new connection; (status, body, headers) of the answer."""
    port = int(gateway.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        return answer.status, answer.read(), answer.headers


def test_targets_pass_as_sent_and_odd_forms_are_refused(gateway: str, upstream: Upstream) -> None:
    """Dot segments and bad %-escapes reach the upstream untouched; absolute, authority and
    asterisk forms and over-long targets get a JSON 4xx."""
    for target in (b"/x/../ping", b"/./ping", b"/predictions/m%zz", b"/p?signatures=fog:1&a=%20"):
        status, body, _ = _raw(gateway, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200 and json.loads(body)["path"] == target.decode(), (target, body)
    upstream.seen.clear()
    for line in (
        b"GET http://127.0.0.1:1/ping HTTP/1.1",
        b"OPTIONS * HTTP/1.1",
        b"CONNECT 127.0.0.1:1 HTTP/1.1",
    ):
        status, body, _ = _raw(gateway, line + b"\r\nHost: x\r\n\r\n")
        assert status == 400 and "must be a path" in json.loads(body)["error"], (line, body)
    r = requests.get(f"{gateway}/ping?signatures=" + "fog:1," * 1000, timeout=30)
    assert r.status_code == 414 and "X-RWS-Signatures" in r.json()["error"]
    assert upstream.seen == []


def test_bodies_and_header_bytes_pass_unchanged(gateway: str, upstream: Upstream) -> None:
    """No decompression, no guessed Content-Type; a header value that is not ASCII and an
    unknown Expect get a JSON 4xx."""
    import gzip

    packed = gzip.compress(b"\x89PNG not really")
    r = requests.post(
        f"{gateway}/p",
        data=packed,
        headers={"Content-Type": "image/png", "Content-Encoding": "gzip"},
        timeout=30,
    )
    seen = r.json()
    assert seen["sha"] == hashlib.sha256(packed).hexdigest()
    assert seen["headers"]["content-encoding"] == "gzip"
    r = requests.post(f"{gateway}/p", data=b'{"image": "x"}', timeout=30)
    assert "content-type" not in r.json()["headers"]  # the handler sniffs a body without one
    for value in ("føg:1".encode(), "føg:1".encode("latin-1"), b"\xff\xfe"):
        request = b"GET /ping HTTP/1.1\r\nHost: x\r\nX-RWS-Signatures: " + value + b"\r\n\r\n"
        status, body, _ = _raw(gateway, request)
        assert status == 400 and "'X-RWS-Signatures' holds non-ASCII" in json.loads(body)["error"]
    assert upstream.seen[-1]["path"] == "/p"  # none of them was forwarded
    status, body, _ = _raw(gateway, b"POST /p HTTP/1.1\r\nHost: x\r\nExpect: foo\r\n\r\n")
    assert status == 417
    big = f"POST /p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {LIMIT + 1}"
    status, body, _ = _raw(gateway, big.encode() + b"\r\n\r\n")
    assert status == 413  # refused before any 100 Continue: the client never sends the body


def test_expect_100_continue(gateway: str, upstream: Upstream) -> None:
    """curl sends ``Expect: 100-continue`` for large bodies: 100, then the answer; over the
    limit, the 413 comes first and the connection closes (the body never follows)."""
    port = int(gateway.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"hello")
        answer = sock.recv(65536)
    assert answer.split(b"\r\n")[0].split()[1] == b"200" and upstream.seen[-1]["size"] == 5
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            + f"Content-Length: {LIMIT + 1}\r\n\r\n".encode()
        )
        answer = b""
        while chunk := sock.recv(65536):  # read to the end: the gateway closes
            answer += chunk
    assert answer.split(b"\r\n")[0].split()[1] == b"413" and answer.count(b"HTTP/1.1") == 1


def test_the_gateway_script_runs_alone_and_stops_on_sigterm(
    upstream: Upstream, tmp_path: Path
) -> None:
    """As rws serve runs it: the file as a script (no rws_hub, no torch imported); SIGTERM
    ends it with status 0; a port already taken makes it exit with an error."""
    import subprocess
    import sys

    import rws_hub.launch.gateway as module

    host, up = upstream.server_address[:2]
    port = free_ports(1)[0]
    cmd = [
        sys.executable,
        module.__file__,
        "--port",
        str(port),
        "--upstream",
        f"http://{host}:{up}",
    ]
    cmd += ["--max-body-bytes", str(LIMIT)]
    probe = "import sys; sys.argv[1:] = []; import runpy; " + (
        f"runpy.run_path({module.__file__!r}, run_name='probe'); "
        "print('torch' in sys.modules or 'rws_hub' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()
        == "False"
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline and proc.poll() is None, "the gateway did not start"
            time.sleep(0.1)
        taken = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert taken.returncode != 0 and "address already in use" in taken.stderr.lower()
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
