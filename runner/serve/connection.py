"""The HTTP connection: uvicorn's h11 protocol with a deadline for each request's headers.

uvicorn closes a kept-alive connection that stays idle, but a connection that has just opened, or
one that sends a request's headers a byte at a time, is never cut: a few hundred such clients hold
every socket the server has (slowloris). Here each request's head (request line and headers) must
arrive within `header_seconds` of the connection opening or the previous answer going out; a
client that misses it gets 408 and the connection is closed. The body has its own deadline in the
app (`upload.read_body`), and h11's incomplete-event limit bounds how much of a head is buffered.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.h11_impl import H11Protocol

from runner.serve.upload import HEADER_SECONDS

MAX_HEAD_BYTES = 64 * 1024  # h11's limit on a request line and headers not yet complete


def timeout_answer(seconds: float) -> bytes:
    """The raw HTTP/1.1 408 a connection gets when its request's headers are late."""
    body = json.dumps({"error": f"request headers did not arrive within {seconds:g} s", "status": 408}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class HeaderDeadline(H11Protocol):
    """uvicorn's `H11Protocol`, cutting a connection whose next request head is late (class attribute
    `header_seconds`; `protocol(seconds)` makes a subclass with another value)."""

    header_seconds = HEADER_SECONDS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's head was parsed: its body and answer have their own limits
            self._disarm()

    def handle_websocket_upgrade(self, event: object) -> None:
        self._disarm()  # the connection is a WebSocket's from here on: a 408 written into it would corrupt a frame
        super().handle_websocket_upgrade(event)  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # the next request on this connection gets its own deadline, unless it is already parsed (pipelined)
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.header_seconds, self._head_late)

    def _disarm(self) -> None:
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self \
                or (self.cycle is not None and not self.cycle.response_complete):
            return
        self.transport.write(timeout_answer(self.header_seconds))
        self.transport.close()


def protocol(header_seconds: float = HEADER_SECONDS) -> type[HeaderDeadline]:
    """The protocol class to give uvicorn (`http=`), with this head deadline."""
    if header_seconds == HEADER_SECONDS:
        return HeaderDeadline
    return type("HeaderDeadline", (HeaderDeadline,), {"header_seconds": float(header_seconds)})
