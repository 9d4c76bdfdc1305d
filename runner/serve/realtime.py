"""`/v1/realtime/translations`: OpenAI's Realtime Translation API over the offline model, so `openai` client code
written for it works against `runner serve` by changing its base URL.

    client = AsyncOpenAI(api_key=KEY, websocket_base_url="ws://127.0.0.1:8000/v1")
    async with client.realtime.translations.connect(model="fp32") as connection:
        await connection.send({"type": "session.input_audio_buffer.append", "audio": base64_pcm16_24khz})
        async for event in connection: ...   # session.output_transcript.delta, ...

Client events: `session.update` (`audio.input.transcription` turns the source transcript on or off,
`audio.output.language` must be the model's, `noise_reduction` is accepted and not applied),
`session.input_audio_buffer.append` (base64 24 kHz PCM16 mono, any length up to `LiveLimits.max_append_bytes`)
and `session.close` (what was received is decoded and committed, then `session.closed`). Server events:
`session.created`, `session.updated`, `session.output_transcript.delta` and `session.input_transcript.delta`
(append-only; their concatenation is the text; `elapsed_ms` the stream time, in 200 ms frames, the decode saw),
`session.closed` and `error` (OpenAI's shape; the session stays open unless the error says it closed).
With `?unstable=1` on the URL the server also sends `runner.output_transcript.unstable` (the latest hypothesis
beyond the committed words, which may change: what a live display shows apart).

Each connection is a `runner.live.StreamSession` whose decodes go through the server's `Batcher` (sessions share
the decoder and batch together); its voice-activity checks run on the decoder thread. Audio that arrives while
a decode runs waits for the next one, which takes all of it: a slow decoder skips updates, it never queues them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from runner.errors import AudioTooShortError, RunnerError
from runner.live.session import StreamOptions, StreamSession, StreamUpdate, speech_bounds
from runner.runner import Runner
from runner.serve.batching import AUDIO_TOO_SHORT, Batcher, decoder_thread
from runner.serve.upload import OPENAI_TYPES, ApiError, Audio

logger = logging.getLogger("runner.serve")
PATH = "/v1/realtime/translations"
INPUT_RATE = 24_000  # OpenAI's: 24 kHz PCM16 mono, little-endian
FRAME_MS = 200  # `elapsed_ms` advances in frames of this length
SUBPROTOCOL = "realtime"  # what a browser offers besides its key (`security.key_from_subprotocols`)


@dataclass(frozen=True)
class LiveLimits:
    """What one live session may ask of the server.

    Attributes:
        max_sessions: live sessions at once; one more is refused (503 on the upgrade).
        idle_seconds: a session that sends nothing for this long is closed (an `error` event says why).
        max_session_seconds: a session is closed after this long, however busy.
        max_append_bytes: the most PCM16 bytes one append may carry (default: 10 s at 24 kHz).
        max_backlog_seconds: audio waiting for the decoder beyond this is dropped, oldest first, with an
            `error` event: a decoder slower than real time must not make the server hold the talk.
        stream: the sessions' chunking, agreement and segmentation.
    """

    max_sessions: int = 4
    idle_seconds: float = 30.0
    max_session_seconds: float = 3600.0
    max_append_bytes: int = 10 * INPUT_RATE * 2
    max_backlog_seconds: float = 30.0
    stream: StreamOptions = field(default_factory=StreamOptions)

    def __post_init__(self) -> None:
        from runner.errors import OptionError

        for name in ("max_sessions", "idle_seconds", "max_session_seconds", "max_append_bytes", "max_backlog_seconds"):
            if not getattr(self, name) > 0:
                raise OptionError(name, f"must be positive, got {getattr(self, name)}")


class LiveSessions:
    """The live sessions of one app: how many are open, and the threads their session steps run on."""

    def __init__(self, models: dict[str, Runner], batcher: Batcher, limits: LiveLimits) -> None:
        self.models, self.batcher, self.limits = models, batcher, limits
        self.open = 0
        self.opened = 0
        # A session step is numpy work between waits for the decoder thread; no torch runs on these threads.
        self.pool = ThreadPoolExecutor(max_workers=limits.max_sessions, thread_name_prefix="runner-live")

    async def handle(self, websocket: WebSocket) -> None:
        """One connection, from its upgrade to its close."""
        name = websocket.query_params.get("model")
        refusal = self._refusal(name)
        if refusal is not None:
            await websocket.send_denial_response(refusal)
            return
        self.open += 1
        self.opened += 1
        try:
            await _Connection(self, websocket, name).run()
        finally:
            self.open -= 1

    def _refusal(self, name: str | None) -> Any:
        from fastapi.responses import JSONResponse

        from runner.serve.upload import error_body

        if not name:
            status, message, headers = 400, f"the 'model' query parameter is required; this server has {list(self.models)}", {}
        elif name not in self.models:
            status, message, headers = 404, f"model '{name}' is not served here; this server has {list(self.models)}", {}
        elif self.open >= self.limits.max_sessions:
            status, message = 503, f"server busy: {self.open} live session(s) open (--max-live-sessions {self.limits.max_sessions})"
            headers = {"Retry-After": "5"}
        else:
            return None
        return JSONResponse(error_body(PATH, status, message), status_code=status, headers=headers)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class _Connection:
    """One live session on the wire: receives client events, decodes in the background, sends server events."""

    def __init__(self, sessions: LiveSessions, websocket: WebSocket, name: str) -> None:
        self.sessions, self.websocket, self.name = sessions, websocket, name
        self.runner = sessions.models[name]
        self.limits = sessions.limits
        self.loop = asyncio.get_running_loop()
        self.stream = StreamSession(self._translate, self.runner.sample_rate, self.limits.stream, self._speech_bounds)
        self.id = f"sess_{uuid.uuid4().hex[:16]}"
        self.started = time.time()
        self.transcription = False
        self.unstable = websocket.query_params.get("unstable") in ("1", "true")
        self.pending: list[np.ndarray] = []  # audio received, not yet given to the session
        self.wake = asyncio.Event()
        self.sending = asyncio.Lock()  # the receive and decode loops both send: one frame at a time
        self.closing = False
        self.gone = False

    async def run(self) -> None:
        offered = self.websocket.scope.get("subprotocols", [])
        await self.websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        await self.send({"type": "session.created", "session": self.session()})
        decoding = asyncio.create_task(self.decode_loop())
        try:
            reason = await self.receive_loop()
            if reason is not None:
                await self.error(reason[1], "session_expired" if reason[0] == "expired" else "idle_timeout",
                                 kind="timeout_error")
            self.closing = True
            self.wake.set()
            await decoding
            await self.send({"type": "session.closed"})
            await self.websocket.close(1000)
        except (WebSocketDisconnect, RuntimeError):  # the client vanished: `gone` drops its queued decodes
            pass
        finally:
            self.gone = True
            decoding.cancel()

    async def receive_loop(self) -> tuple[str, str] | None:
        """Client events until `session.close` (None), or the (kind, reason) a limit closed the session for."""
        while True:
            left = self.started + self.limits.max_session_seconds - time.time()
            if left <= 0:
                return "expired", f"session closed after {self.limits.max_session_seconds:g} s (its longest)"
            try:
                message = await asyncio.wait_for(self.websocket.receive(), min(left, self.limits.idle_seconds))
            except TimeoutError:
                if time.time() - self.started >= self.limits.max_session_seconds:
                    continue
                return "idle", f"session closed: nothing received for {self.limits.idle_seconds:g} s"
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            if message.get("text") is None:
                await self.error("send client events as JSON text frames, not binary")
                continue
            try:
                if await self.handle(message["text"]):
                    return None
            except Exception as error:  # noqa: BLE001 - a fault of the server's: this event is lost, not the session
                logger.exception("a live session's client event failed")
                await self.error(f"internal error handling the event ({type(error).__name__}); the server logged it",
                                 kind="server_error")

    async def handle(self, text: str) -> bool:
        """Act on one client event; True for `session.close`."""
        try:
            event = json.loads(text)
        except ValueError:
            await self.error("client event is not JSON")
            return False
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            await self.error("client event must be a JSON object with a string 'type'", param="type")
            return False
        kind, event_id = event["type"], event.get("event_id")
        if kind == "session.input_audio_buffer.append":
            await self.append(event.get("audio"), event_id)
        elif kind == "session.update":
            await self.update(event.get("session"), event_id)
        elif kind == "session.close":
            return True
        else:
            await self.error(f"unknown client event type '{kind[:60]}'", param="type", event_id=event_id)
        return False

    async def append(self, audio: Any, event_id: Any) -> None:
        """Validate an append's audio and queue it for the decoder."""
        limit = self.limits.max_append_bytes
        if not isinstance(audio, str):
            await self.error("'audio' must be a base64 string of 24 kHz PCM16 mono", param="audio", event_id=event_id)
            return
        if len(audio) > (limit + 2) // 3 * 4:
            await self.error(f"one append may carry at most {limit} bytes of PCM16 ({limit / 2 / INPUT_RATE:g} s); "
                             f"send 200 ms frames", param="audio", event_id=event_id)
            return
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            await self.error("'audio' is not valid base64", param="audio", event_id=event_id)
            return
        if len(data) % 2:
            await self.error(f"PCM16 audio has an even number of bytes; this append has {len(data)}", param="audio",
                             event_id=event_id)
            return
        self.pending.append(np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0)
        await self.trim_backlog()
        self.wake.set()

    async def trim_backlog(self) -> None:
        waiting = sum(len(a) for a in self.pending) / INPUT_RATE
        excess = waiting - self.limits.max_backlog_seconds
        if excess <= 0:
            return
        audio = np.concatenate(self.pending)
        self.pending = [audio[int(excess * INPUT_RATE):]]
        await self.error(f"the decoder is behind real time: {excess:.1f} s of the oldest waiting audio dropped",
                         code="audio_dropped", kind="server_error")

    async def update(self, changes: Any, event_id: Any) -> None:
        """`session.update`: the transcript on or off; the output language checked; noise reduction accepted."""
        if not isinstance(changes, dict):
            await self.error("'session' must be an object", param="session", event_id=event_id)
            return
        if changes.get("model", self.name) != self.name or changes.get("type", "translation") != "translation":
            await self.error("a session's model and type are set when it is created", param="session.model",
                             event_id=event_id)
            return
        audio = changes.get("audio") or {}
        output = audio.get("output") if isinstance(audio, dict) else None
        given = output.get("language") if isinstance(output, dict) else None
        if given is not None and given != self.language():
            await self.error(f"model '{self.name}' translates into '{self.language()}', not '{str(given)[:20]}'",
                             param="session.audio.output.language", event_id=event_id)
            return
        inputs = audio.get("input") if isinstance(audio, dict) else None
        if isinstance(inputs, dict) and "transcription" in inputs:
            if inputs["transcription"] and not self.runner.bundle.is_multidecoder:
                await self.error(f"model '{self.name}' has no ASR decoder to transcribe with",
                                 param="session.audio.input.transcription", event_id=event_id)
                return
            self.transcription = bool(inputs["transcription"])
        await self.send({"type": "session.updated", "session": self.session()})

    async def decode_loop(self) -> None:
        """Give the session the audio received so far, one step at a time, and send what it commits."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.pending:
                audio, self.pending = np.concatenate(self.pending), []
                await self.step(self.stream.push, audio, INPUT_RATE)
            if self.closing and not self.pending:
                await self.step(self.stream.finish)
                return

    async def step(self, *call: Any) -> None:
        try:
            updates = await self.loop.run_in_executor(self.sessions.pool, *call)
        except ApiError as error:  # the decoder queue refused (busy) or failed: this update is lost, not the session
            await self.error(error.message, code=error.code or f"http_{error.status}",
                             kind=OPENAI_TYPES.get(error.status, "server_error"))
            return
        except RunnerError as error:
            await self.error(str(error))
            return
        for update in updates:
            await self.emit(update)

    async def emit(self, update: StreamUpdate) -> None:
        elapsed = int(update.audio_seconds * 1000) // FRAME_MS * FRAME_MS
        if self.transcription and update.transcript:
            await self.send({"type": "session.input_transcript.delta", "delta": update.transcript,
                             "elapsed_ms": elapsed})
        if update.translation:
            await self.send({"type": "session.output_transcript.delta", "delta": update.translation,
                             "elapsed_ms": elapsed})
        if self.unstable:
            await self.send({"type": "runner.output_transcript.unstable", "text": update.unstable_translation,
                             "transcript": update.unstable_transcript if self.transcription else "",
                             "final": update.final, "elapsed_ms": elapsed})

    def _translate(self, waveform: np.ndarray, rate: int) -> Any:
        """A session's decode (on a session thread): through the server's decoder queue, like any request."""
        audio = Audio(waveform[:, None], rate, len(waveform) / rate, "pcm16")
        future = asyncio.run_coroutine_threadsafe(
            self.sessions.batcher.submit(self.name, audio, self._gone), self.loop)
        try:
            return future.result().translation
        except ApiError as error:
            if error.code == AUDIO_TOO_SHORT:
                raise AudioTooShortError(error.message) from error
            raise

    async def _gone(self) -> bool:
        return self.gone

    @staticmethod
    def _speech_bounds(buffer: np.ndarray, rate: int, pause_ms: int) -> tuple[float, float] | None:
        """Voice activity on the decoder thread: every torch call of a serving process runs there."""
        return decoder_thread().submit(speech_bounds, buffer, rate, pause_ms).result()

    def language(self) -> str:
        from runner.serve.openai_api import language

        return language(self.runner, "translate")

    def session(self) -> dict[str, Any]:
        """The session's configuration, as OpenAI's `RealtimeTranslationSession`."""
        return {"id": self.id, "type": "translation", "model": self.name,
                "expires_at": int(self.started + self.limits.max_session_seconds),
                "audio": {"input": {"transcription": {"model": self.name} if self.transcription else None,
                                    "noise_reduction": None},
                          "output": {"language": self.language()}}}

    async def send(self, event: dict[str, Any]) -> None:
        async with self.sending:
            if self.websocket.application_state == WebSocketState.CONNECTED and not self.gone:
                await self.websocket.send_text(json.dumps({"event_id": f"event_{uuid.uuid4().hex[:20]}", **event},
                                                          ensure_ascii=False))

    async def error(self, message: str, code: str | None = None, param: str | None = None,
                    event_id: Any = None, kind: str = "invalid_request_error") -> None:
        """An `error` event in OpenAI's shape (`RealtimeErrorEvent`): `kind` is its `error.type`; `event_id` the
        client event it answers."""
        await self.send({"type": "error", "error": {
            "type": kind, "code": code, "message": message, "param": param,
            "event_id": event_id if isinstance(event_id, str) else None}})
