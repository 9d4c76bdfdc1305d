"""HTTP edges of `runner serve`: Host checked (DNS rebinding), slow and idle clients cut, a declared oversize
upload answered at once, and SIGTERM stopping the server even with an upload stalled mid-body."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

from benchmarks.live_server import live_server

HEADER_S, BODY_S = 2.0, 3.0


def wav(seconds: float = 1.0) -> bytes:
    buffer = io.BytesIO()
    samples = np.random.default_rng(0).normal(scale=0.1, size=int(16000 * seconds)).astype(np.float32)
    soundfile.write(buffer, samples, 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tiny_exp: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("http") / "serve.log"
    with live_server(log, "--model", str(tiny_exp), "--threads", "1", "--allowed-host", "st.example",
                     "--header-seconds", str(HEADER_S), "--body-seconds", str(BODY_S)) as url:
        yield url


def connect(url: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=30)


def answer_and_close(raw: socket.socket) -> tuple[str, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started, received = time.perf_counter(), b""
    while chunk := raw.recv(4096):
        received += chunk
    return received.decode(errors="replace"), time.perf_counter() - started


def one_response(raw: socket.socket) -> bytes:
    """One whole HTTP response (head and its Content-Length of body) from a kept-alive connection."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += raw.recv(4096)
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += raw.recv(4096)
    return head + b"\r\n\r\n" + body


def test_dns_rebinding_is_refused_by_host(server: str) -> None:
    from runner.serve.security import allowed_hosts

    assert allowed_hosts("127.0.0.1", [], []) == ["127.0.0.1", "localhost", "127.0.0.1", "::1"]
    assert allowed_hosts("0.0.0.0", [], []) is None  # every interface: any name, with a warning at start
    assert "st.example" in allowed_hosts("0.0.0.0", ["st.example"], ["https://app.example:8443"])
    assert "app.example" in allowed_hosts("10.0.0.5", [], ["https://app.example:8443"])
    port = server.rsplit(":", 1)[1]
    rebound = httpx.get(f"{server}/info", headers={"Host": "evil.example", "Origin": "http://evil.example"})
    assert rebound.status_code == 421 and "evil.example" in rebound.json()["error"]
    posted = httpx.post(f"{server}/translate", content=wav(), headers={"Host": f"evil.example:{port}"})
    assert posted.status_code == 421
    assert httpx.get(f"{server}/info", headers={"Host": f"localhost:{port}"}).status_code == 200
    assert httpx.get(f"{server}/info", headers={"Host": "st.example"}).status_code == 200


def test_a_declared_oversize_upload_gets_413_at_once(server: str) -> None:
    with connect(server) as raw:  # 1 GB declared, nothing sent
        raw.sendall(b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000000\r\n\r\n")
        started = time.perf_counter()
        answer = raw.recv(4096).decode(errors="replace")
        assert answer.startswith("HTTP/1.1 413") and time.perf_counter() - started < 5


def test_idle_and_header_trickling_connections_are_cut_with_408(server: str) -> None:
    idle = [connect(server) for _ in range(5)]
    trickling = connect(server)
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 40
    for byte in head[:6]:  # a byte every 0.25 s: the head is still incomplete at the deadline
        trickling.sendall(bytes([byte]))
        time.sleep(0.25)
    answer, _ = answer_and_close(trickling)
    assert answer.startswith("HTTP/1.1 408") and "request headers did not arrive within 2 s" in answer
    for raw in idle:
        answer, waited = answer_and_close(raw)
        assert answer.startswith("HTTP/1.1 408") and waited < HEADER_S + 3
        raw.close()
    trickling.close()
    with connect(server) as kept:  # a kept-alive connection: its next request's head has the same deadline
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert one_response(kept).startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET /health HTTP/1.1\r\n")
        answer, waited = answer_and_close(kept)
        assert answer.startswith("HTTP/1.1 408") and waited < HEADER_S + 3
    assert httpx.post(f"{server}/translate", content=wav(), timeout=60).status_code == 200


def test_a_trickling_body_gets_408_within_the_body_deadline(server: str) -> None:
    body = wav(2.0)
    with connect(server) as raw:
        raw.sendall(f"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        started = time.perf_counter()
        raw.settimeout(0.2)
        received = b""
        for start in range(0, len(body), 16):  # 16 bytes every 0.2 s, far slower than the deadline allows
            try:
                raw.sendall(body[start:start + 16])
                received += raw.recv(4096)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                break
            if received:
                break
        assert received.startswith(b"HTTP/1.1 408"), received[:200]
        assert BODY_S - 0.5 < time.perf_counter() - started < BODY_S + 3
        raw.settimeout(5)
        while b"}" not in received and (chunk := raw.recv(4096)):  # the JSON body may come in a second segment
            received += chunk
        assert b"upload not complete within 3 s" in received


@pytest.mark.slow
def test_sigterm_stops_the_server_with_an_upload_stalled_mid_body(tiny_exp: Path, tmp_path: Path) -> None:
    processes: list[subprocess.Popen] = []
    with live_server(tmp_path / "serve.log", "--model", str(tiny_exp), "--threads", "1", "--shutdown-seconds", "2",
                     processes=processes) as url:
        stalled = connect(url)
        stalled.sendall(b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\nRIFF")
        time.sleep(0.5)
        processes[0].send_signal(signal.SIGTERM)
        started = time.perf_counter()
        processes[0].wait(timeout=20)
        assert time.perf_counter() - started < 2 + 8
        stalled.close()
    assert "timeout graceful shutdown exceeded" in (tmp_path / "serve.log").read_text()
