"""What a request may send, and reading it: the body streamed under a byte limit, then decoded as audio."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from runner.audio import check_format, check_samples
from runner.errors import OptionError, RunnerError, first_line

MULTIPART_SLACK = 64 * 1024  # room for multipart framing around the file
DRAIN_SECONDS = 30.0  # how long an oversized upload is read and discarded so its client gets the 413
HEADER_SECONDS = 10.0  # default: a request's headers must arrive within this (`connection.HeaderDeadline`)
BODY_SECONDS = 60.0  # default: a request's body must arrive within this of its headers
SHUTDOWN_SECONDS = 30.0  # default: after SIGTERM, requests in flight get this long


@dataclass
class ServeLimits:
    """What one request may ask of the server, and how requests are batched.

    Attributes:
        max_upload_bytes: the largest body; enforced while it streams in.
        max_audio_seconds: the longest audio.
        max_queue: requests that may wait for the decoder; more get 503 with Retry-After.
        max_batch: requests for one model decoded in one batched search (1: one at a time).
        max_wait_ms: how long the first request of a batch waits for others to join it.
        max_decode_seconds: how long one decode may run before its search is stopped (503); None: 10 s
            plus twice the audio's length.
        header_seconds: a request's headers must arrive within this of the connection opening or the
            previous answer (else 408 and the connection is closed).
        body_seconds: a request's whole body must arrive within this of its headers (else 408).
        shutdown_seconds: after SIGTERM, requests in flight (stalled uploads too) get this long.

    The decoded audio is bounded too (`max_decoded_bytes`): the longest audio as 48 kHz stereo float32,
    so no upload under the byte limit makes the server hold more than that in samples.
    """

    max_upload_bytes: int = 20_000_000
    max_audio_seconds: float = 600.0
    max_queue: int = 32
    max_batch: int = 1
    max_wait_ms: float = 0.0

    max_decode_seconds: float | None = None
    header_seconds: float = HEADER_SECONDS
    body_seconds: float = BODY_SECONDS
    shutdown_seconds: float = SHUTDOWN_SECONDS

    def __post_init__(self) -> None:
        positive = ("max_upload_bytes", "max_audio_seconds", "max_batch", "header_seconds", "body_seconds")
        for name in positive + ("max_decode_seconds",):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise OptionError(name, f"must be positive, got {value}")
        for name in ("max_queue", "max_wait_ms", "shutdown_seconds"):
            if getattr(self, name) < 0:
                raise OptionError(name, f"must be 0 or more, got {getattr(self, name)}")

    @property
    def max_decoded_bytes(self) -> int:
        return int(self.max_audio_seconds * 48_000 * 2 * 4)

    def decode_seconds(self, audio_seconds: float) -> float:
        """How long one request's decode may run: `max_decode_seconds`, or 10 s plus twice its audio's length."""
        return self.max_decode_seconds if self.max_decode_seconds is not None else 10.0 + 2.0 * audio_seconds


class ApiError(Exception):
    """A request the server refuses: an HTTP status, a one-line reason for the client, extra headers, and a
    machine-readable `code` where a caller acts on the kind (a live session skips "audio_too_short")."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.code = code


OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 408: "timeout_error", 413: "invalid_request_error", 415: "invalid_request_error",
                421: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
                503: "server_error"}


def error_body(path: str, status: int, message: str) -> dict[str, Any]:
    """A refusal's JSON: OpenAI's error shape under /v1/ (what its clients parse), the server's own elsewhere."""
    if path.startswith("/v1/"):
        return {"error": {"message": message, "type": OPENAI_TYPES.get(status, "server_error"), "param": None,
                          "code": status}}
    return {"error": message, "status": status}


@dataclass
class Audio:
    waveform: np.ndarray  # (samples, channels) float32, as uploaded
    sample_rate: int
    seconds: float
    format: str


def read_upload(data: bytes, limits: ServeLimits) -> Audio:
    """Decode uploaded WAV/FLAC bytes, or an ApiError naming what is wrong with them."""
    if not data:
        raise ApiError(400, "empty request body: upload a WAV or FLAC file")
    try:
        info = soundfile.info(io.BytesIO(data))
    except Exception as error:  # libsndfile's own error types
        reason = re.sub(r"^Error opening <[^>]*>: ", "", first_line(error))  # libsndfile names the BytesIO
        raise ApiError(415, f"not a readable audio file (WAV or FLAC expected): {reason}") from error
    try:  # what the header claims, before a sample is decoded
        check_format("audio", int(info.samplerate), int(info.channels))
    except RunnerError as error:
        raise ApiError(422, str(error)) from error
    seconds = info.frames / info.samplerate
    if seconds > limits.max_audio_seconds:
        raise ApiError(413, f"audio is {seconds:.1f} s long; the limit is {limits.max_audio_seconds:g} s")
    decoded = info.frames * info.channels * 4
    if decoded > limits.max_decoded_bytes:
        raise ApiError(413, f"audio decodes to {decoded / 1e6:.1f} MB ({info.channels} channels at "
                            f"{info.samplerate:,} Hz); the limit is {limits.max_decoded_bytes / 1e6:g} MB")
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as error:
        raise ApiError(415, f"audio could not be decoded: {first_line(error)}") from error
    if samples.shape[0] == 0:
        raise ApiError(400, "audio has no samples")
    try:
        check_samples("audio", samples)
    except RunnerError as error:
        raise ApiError(422, str(error)) from error
    return Audio(samples, int(rate), samples.shape[0] / rate, info.format)


async def read_body(request: Request, limit: int, seconds: float = BODY_SECONDS) -> tuple[bytes, dict[str, str]]:
    """The uploaded file's bytes (raw body or multipart `file`) and the form's other text fields (`model`, ...).

    More than `limit` bytes is refused with 413 as soon as the declared length or the streamed
    bytes pass it, so an oversized body is never held in memory; the rest of it is read and
    discarded before the answer, so a client still sending gets the 413 instead of a reset connection.
    A body not complete within `seconds` is refused with 408.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + MULTIPART_SLACK:  # answered before reading it
        raise ApiError(413, f"upload is {int(declared) / 1e6:.1f} MB; the limit is {limit / 1e6:g} MB",
                       {"Connection": "close"})
    receive = _Bounded(request.receive, limit + MULTIPART_SLACK, time.monotonic() + seconds)
    bounded = Request(request.scope, receive)
    try:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await bounded.form()
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "multipart upload has no 'file' field")
            data = await upload.read()
            fields = {key: value for key, value in form.multi_items() if isinstance(value, str) and value}
        else:
            data, fields = await bounded.body(), {}
    except _TooLarge:
        if not receive.complete:
            await drain(request.receive)
        raise ApiError(413, f"upload exceeds the limit of {limit / 1e6:g} MB") from None
    except _TooSlow:
        raise ApiError(408, f"upload not complete within {seconds:g} s", {"Connection": "close"}) from None
    except ClientDisconnect:
        raise ApiError(400, "client disconnected during the upload") from None
    except HTTPException as error:  # starlette's multipart parser: no boundary, cut parts, ...
        raise ApiError(400, f"malformed multipart upload: {error.detail}") from error
    if len(data) > limit:
        raise ApiError(413, f"upload is {len(data) / 1e6:.1f} MB; the limit is {limit / 1e6:g} MB")
    return data, fields


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


class _Bounded:
    """An ASGI `receive` that raises _TooLarge past `limit` body bytes, _TooSlow past `deadline`
    (time.monotonic), and knows whether the body ended."""

    def __init__(self, receive: Callable[[], Awaitable[dict]], limit: int, deadline: float) -> None:
        self.receive, self.limit, self.deadline = receive, limit, deadline
        self.received = 0
        self.complete = False

    async def __call__(self) -> dict:
        try:
            message = await asyncio.wait_for(self.receive(), max(0.0, self.deadline - time.monotonic()))
        except TimeoutError:
            raise _TooSlow from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.complete = True
        self.received += len(message.get("body", b""))
        if self.received > self.limit:
            raise _TooLarge
        return message


async def drain(receive: Callable[[], Awaitable[Any]]) -> None:
    """Read and discard what is left of a request's body (for at most DRAIN_SECONDS, however it trickles)."""
    deadline = time.monotonic() + DRAIN_SECONDS
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            message = await asyncio.wait_for(receive(), remaining)
        except TimeoutError:
            return
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


class DeclaredSizeLimit:
    """ASGI middleware: a body whose Content-Length is over the limit gets its 413 at once, unread.

    The answer (headers and JSON body) is sent before any of the body is read; what the client still
    sends is then read and discarded for at most DRAIN_SECONDS before the response is closed, so a
    client that is mid-upload reads the 413 instead of a reset connection, and one that stalls is cut.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        declared = next((v for k, v in scope.get("headers", []) if k.lower() == b"content-length"), b"") \
            if scope["type"] == "http" else b""
        if not (declared.isdigit() and int(declared) > self.limit + MULTIPART_SLACK):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": f"upload is {int(declared) / 1e6:.1f} MB; the limit is {self.limit / 1e6:g} MB",
                           "status": 413}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body, "more_body": True})
        await drain(receive)
        await send({"type": "http.response.body", "body": b""})
