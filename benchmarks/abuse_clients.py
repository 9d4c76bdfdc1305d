"""Slow and vanishing clients against a live server, for `benchmarks.abuse`: what each got and when.

Each case opens raw loopback connections and records the status line the server answered (or
"closed" when it closed without one) and the seconds until the connection closed. The server must
cut every slow client by its deadlines (`--header-seconds`, `--body-seconds`) with 408, drop
requests whose client left before their turn, and stay healthy for the valid requests after them.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable

import httpx

Row = tuple[str, str, float, str]  # (case, status, seconds, what it shows)


def _connect(url: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=60)


def _until_closed(raw: socket.socket, started: float) -> tuple[str, float]:
    """The status code the server sent ("closed" if none) and the seconds from `started` until it closed."""
    received = b""
    try:
        while chunk := raw.recv(4096):
            received += chunk
    except OSError:  # reset after the answer: what was read is the answer
        pass
    status = received.split(b" ", 2)[1].decode() if received.startswith(b"HTTP/1.1 ") else "closed"
    return status, time.perf_counter() - started


def idle_connections(url: str, count: int = 20) -> Row:
    """`count` connections that send nothing."""
    started = time.perf_counter()
    sockets = [_connect(url) for _ in range(count)]
    results = [_until_closed(s, started) for s in sockets]
    for s in sockets:
        s.close()
    statuses = sorted({status for status, _ in results})
    return (f"{count} idle connections", " ".join(statuses), max(t for _, t in results),
            f"all closed after {max(t for _, t in results):.1f} s")


def _trickle(url: str, head: bytes, pieces: Iterable[bytes]) -> tuple[str, float]:
    """Send `head`, then `pieces` 0.2 s apart until the server answers; its status and the seconds it took."""
    with _connect(url) as raw:
        raw.sendall(head)
        started = time.perf_counter()
        try:
            for piece in pieces:
                raw.sendall(piece)
                raw.settimeout(0.2)
                try:
                    if raw.recv(1, socket.MSG_PEEK):
                        break
                except (TimeoutError, socket.timeout):
                    continue
        except OSError:  # the server closed the connection: its answer is still readable
            pass
        raw.settimeout(30)
        return _until_closed(raw, started)


def trickled_headers(url: str) -> Row:
    """A request head sent a byte every 0.2 s, never finishing in time."""
    head = b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
    status, seconds = _trickle(url, b"", (bytes([byte]) for byte in head))
    return "headers trickled, a byte per 0.2 s", status, seconds, "cut by the header deadline"


def trickled_body(url: str) -> Row:
    """A complete head, then a 100 KB body at 16 bytes per 0.2 s."""
    head = b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n"
    status, seconds = _trickle(url, head, (b"\0" * 16 for _ in range(100000 // 16)))
    return "body trickled, 16 bytes per 0.2 s", status, seconds, "cut by the body deadline"


def half_body_then_gone(url: str) -> Row:
    """Half of a declared body, then the client closes its socket."""
    started = time.perf_counter()
    with _connect(url) as raw:
        raw.sendall(b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 50000\r\n\r\n" + b"\0" * 25000)
    health = httpx.get(f"{url}/health", timeout=30).status_code
    return "half a body, then the client leaves", "-", time.perf_counter() - started, f"/health then {health}"


def vanishing_clients(url: str, long_body: bytes, short_body: bytes, count: int = 3, holders: int = 8) -> Row:
    """`count` requests whose clients give up (after 0.5 s) while `holders` long decodes (19 s of noise each, under
    the 20 s the server decodes whole) hold the decoder: two batches at the harness's --max-batch 4, about 2.5 s
    on the lean engine, so the leavers are still queued when they go."""
    before = httpx.get(f"{url}/health", timeout=30).json()["queue"]["dropped_disconnected"]
    started = time.perf_counter()
    busy = [threading.Thread(target=lambda: httpx.post(f"{url}/translate", content=long_body, timeout=300))
            for _ in range(holders)]
    for thread in busy:
        thread.start()
    time.sleep(0.3)

    def give_up() -> None:
        try:
            httpx.post(f"{url}/translate", content=short_body, timeout=0.5)
        except httpx.TimeoutException:
            pass

    leavers = [threading.Thread(target=give_up) for _ in range(count)]
    for thread in leavers:
        thread.start()
    for thread in [*leavers, *busy]:
        thread.join()
    time.sleep(0.5)
    dropped = httpx.get(f"{url}/health", timeout=30).json()["queue"]["dropped_disconnected"] - before
    return (f"{count} clients leave while queued", "-", time.perf_counter() - started,
            f"{dropped} of {count} dropped before decoding")


def client_pass(url: str, long_body: bytes, short_body: bytes) -> list[Row]:
    """Every slow and vanishing client case, one after another."""
    return [idle_connections(url), trickled_headers(url), trickled_body(url), half_body_then_gone(url),
            vanishing_clients(url, long_body, short_body)]
