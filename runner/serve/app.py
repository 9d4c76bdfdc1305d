"""`runner serve`: an HTTP API and a web page over loaded `Runner`s.

Routes: `POST /translate` (audio over one segment's length is cut by VAD), `POST /translate/stream` (the same,
as NDJSON: each segment as it is decoded, then the result with SRT and WebVTT), the OpenAI audio API
(`runner.serve.openai_api`: `/v1/audio/translations`, `/v1/audio/transcriptions`, `/v1/models`), live translation
over a WebSocket as OpenAI's Realtime Translation API (`runner.serve.realtime`: `/v1/realtime/translations`),
`GET /health` (liveness: the process answers), `GET /ready`
(readiness: every model warmed up and the decoder queue not full), `GET /info`, `GET /metrics`
(Prometheus text) and the web page at `/`. Decoding goes through one `Batcher`: one batch at a
time across all models, requests for one model arriving within `max_wait_ms` decoded together.
`Security` guards the routes (optional API key, CORS); uploads are limited while they stream in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse

from runner import defaults
from runner.decode import DecodeOptions
from runner.environment import manifest
from runner.errors import RunnerError
from runner.plugin_set import PluginSet
from runner.runner import Runner
from runner.serve.batching import Batcher, decoder_thread, stop_decoder_thread
from runner.serve.metrics import CONTENT_TYPE, ServeMetrics
from runner.serve.security import Security
from runner.serve.openai_api import add_routes
from runner.serve.realtime import PATH as REALTIME_PATH
from runner.serve.realtime import LiveLimits, LiveSessions
from runner.serve.segments import Decodes, decode, segment_json
from runner.serve.upload import ApiError, DeclaredSizeLimit, ServeLimits, error_body, read_body, read_upload

logger = logging.getLogger("runner.serve")
KEEP_ALIVE_S = 10  # an idle kept-alive connection is closed after this
WS_FRAME_SLACK = 64 * 1024  # a WebSocket frame may hold one largest append's base64 and this much JSON around it

WARMUP_SECONDS = 2.0
FP32 = "fp32"


def model_config(runner: Runner) -> dict[str, Any]:
    """What a figure served by `runner` was measured under: its conditions, size and model."""
    conditions, summary = runner.conditions(), runner.summary
    return {
        **conditions.model_dict(),
        "size_mb": summary["size_bytes"] / 1e6,
        "model_file_bytes": summary["model_file_bytes"],
        "parameters": summary["parameters"],
        "decode": conditions.decode.speech2text_kwargs(),
        "model": str(runner.bundle.files.origin),
        "model_content_hash": conditions.model_hash,
    }


def warm_up(runner: Runner, batch: int = 1) -> None:
    """Decodes of silence, alone and (when batching) in batches of 2, 4, ... up to `batch`.

    So no user's latency is a first call's, and the weights packed for each batch-size bucket of
    the lean engine exist before the first request (memory then stays flat under load).
    """
    silence = np.zeros(int(WARMUP_SECONDS * runner.sample_rate), dtype=np.float32)
    runner.translate(silence, runner.sample_rate)
    size = 2
    while batch > 1 and size < 2 * batch:
        runner.translate_batch([silence] * min(size, batch), runner.sample_rate)
        size *= 2


def check_batching(models: dict[str, Runner], limits: ServeLimits) -> None:
    """Raise RunnerError when `max_batch` > 1 but a model's searches cannot run batched."""
    if limits.max_batch <= 1:
        return
    from runner.pipeline import batch_ready

    for name, runner in models.items():
        reason = batch_ready(runner.bundle.speech2text)
        if reason is not None:
            raise RunnerError(f"--max-batch {limits.max_batch}: model {name}: {reason}")


@dataclass
class _Server:
    """What the routes of one app share."""

    models: dict[str, Runner]
    limits: ServeLimits
    batcher: Batcher
    metrics: ServeMetrics
    configs: dict[str, dict[str, Any]]
    environment: dict[str, Any]
    warmed: asyncio.Event | None
    api_key: str | None
    live: LiveSessions


def create_app(models: dict[str, Runner], limits: ServeLimits | None = None, *, api_key: str | None = None,
               cors_origins: Sequence[str] = (), warm: bool = True, allowed_hosts: Sequence[str] | None = None,
               live: LiveLimits | None = None) -> Any:
    """The server's ASGI app over `models` (name -> loaded Runner); the first is the default.

    Args:
        models: the models to serve.
        limits: upload, queue and batching limits (default: `ServeLimits()`).
        api_key: the bearer key guarded routes need (None: open).
        cors_origins: origins allowed to call the API from a browser.
        warm: warm every model up at start-up (readiness waits for it); False: ready at once.
        allowed_hosts: the Host header names requests may carry (others get 421); None: any.
        live: the limits of live sessions (`/v1/realtime/translations`; default: `LiveLimits()`).

    Returns:
        The ASGI app (FastAPI behind the security and metrics middleware); `app.state` of the FastAPI
        app inside is reachable as `.fastapi`.
    """
    if not models:
        raise RunnerError("serve: no model to serve")
    limits = limits or ServeLimits()
    check_batching(models, limits)
    # On the decoder thread: a model's summary may calibrate it (see `decoder_thread`).
    configs = decoder_thread().submit(lambda: {name: model_config(runner) for name, runner in models.items()}).result()
    batcher = Batcher(models, limits)
    sessions = LiveSessions(models, batcher, live or LiveLimits())
    metrics = ServeMetrics(lambda: batcher.waiting, lambda: sessions.open)
    batcher.on_batch = metrics.batch
    server = _Server(models, limits, batcher, metrics, configs, manifest(device=next(iter(models.values())).device),
                     asyncio.Event() if warm else None, api_key, sessions)

    async def lifespan(_app: Any) -> AsyncIterator[None]:
        task = (asyncio.create_task(_warm_all(batcher, models, limits, server.warmed))
                if server.warmed is not None else None)
        yield
        if task is not None:
            task.cancel()
        await batcher.close()
        sessions.close()
        stop_decoder_thread()  # its OpenMP team would slow a host program's own torch calls

    app = FastAPI(title="st-runner", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error_body(request.url.path, error.status, error.message), status_code=error.status,
                            headers=error.headers)

    _add_status_routes(app, server)
    _add_translate_routes(app, server)
    add_routes(app, models, batcher, limits, metrics)
    app.add_api_websocket_route(REALTIME_PATH, sessions.handle)
    return _counted(app, Security(DeclaredSizeLimit(app, limits.max_upload_bytes), api_key, cors_origins,
                                  allowed_hosts), metrics)


def _add_status_routes(app: Any, server: _Server) -> None:
    """The page, /health, /ready, /metrics and /info."""
    page = resources.files("runner").joinpath("web/index.html").read_text(encoding="utf-8")
    models, limits, batcher = server.models, server.limits, server.batcher

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: the server answers (it may still be warming up)."""
        return {"status": "ok", "models": list(models),
                "queue": {"pending": batcher.waiting + batcher.decoding, "waiting": batcher.waiting,
                          "max_queue": limits.max_queue, "batches": batcher.batches,
                          "dropped_disconnected": batcher.dropped}}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """Readiness: 200 when every model is warmed up and the queue has room, else 503 saying why."""
        reasons = []
        if server.warmed is not None and not server.warmed.is_set():
            reasons.append("warming up")
        if batcher.waiting + batcher.decoding >= limits.max_queue + limits.max_batch:
            reasons.append("queue full")
        body = {"ready": not reasons, "reasons": reasons, "waiting": batcher.waiting}
        return JSONResponse(body, status_code=503 if reasons else 200)

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(server.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return {"models": server.configs, "default_model": next(iter(models)), "limits": asdict(limits),
                "live": {**asdict(server.live.limits), "path": REALTIME_PATH, "open_sessions": server.live.open},
                "warmup": f"one {WARMUP_SECONDS:g} s decode of silence per model at start-up"
                          + (f", and batches of 2, 4, ... up to {limits.max_batch}" if limits.max_batch > 1 else ""),
                "decoding": ("one request at a time across all models, in arrival order" if limits.max_batch <= 1
                             else f"one batch at a time across all models: requests for one model arriving within "
                                  f"{limits.max_wait_ms:g} ms of the oldest waiting one, up to {limits.max_batch}, "
                                  f"decoded in one batched search"),
                "auth": "bearer API key" if server.api_key else "none",
                "environment": server.environment}


def _add_translate_routes(app: Any, server: _Server) -> None:
    """POST /translate and /translate/stream."""
    models, limits, batcher, metrics = server.models, server.limits, server.batcher, server.metrics

    async def upload(request: Request, model: str | None) -> tuple[str, Any]:
        data, form = await read_body(request, limits.max_upload_bytes, limits.body_seconds)
        name = model or form.get("model") or next(iter(models))
        if name not in models:
            raise ApiError(404, f"unknown model '{name}'; this server has {list(models)}")
        return name, read_upload(data, limits)

    def answer(name: str, audio: Any, decodes: Decodes) -> dict[str, Any]:
        return {"model": name, "translation": decodes.text, "transcript": decodes.transcript,
                "segments": decodes.segments(), "latency": latency(decodes),
                "audio": {"seconds": audio.seconds, "sample_rate": audio.sample_rate,
                          "channels": int(audio.waveform.shape[1]), "format": audio.format},
                "config": server.configs[name]}

    @app.post("/translate")
    async def translate(request: Request, model: str | None = None) -> dict[str, Any]:
        """Body: the audio file itself, or multipart form data with a `file` field (and optional `model`)."""
        name, audio = await upload(request, model)
        return answer(name, audio, await decode(batcher, name, audio, request.is_disconnected, metrics))

    @app.post("/translate/stream")
    async def translate_stream(request: Request, model: str | None = None) -> StreamingResponse:
        """As /translate, answered as NDJSON: a `segment` line per segment as it is decoded, then a `result` line
        (/translate's answer with the whole recording's `srt` and `vtt`), or an `error` line."""
        name, audio = await upload(request, model)
        ready: asyncio.Queue = asyncio.Queue()

        async def run() -> Decodes:
            try:
                return await decode(batcher, name, audio, request.is_disconnected, metrics, ready.put_nowait)
            finally:
                ready.put_nowait(None)

        task = asyncio.create_task(run())
        first = await ready.get()  # a request refused before its first segment is decoded gets its 4xx, not a stream
        if first is None:
            await task
        return StreamingResponse(_stream(task, first, ready, lambda decodes: {
            **answer(name, audio, decodes), "srt": decodes.long_form(audio.seconds).subtitles("srt"),
            "vtt": decodes.long_form(audio.seconds).subtitles("vtt")}), media_type="application/x-ndjson")


def _counted(app: Any, guarded: Any, metrics: ServeMetrics) -> Any:
    """The outermost ASGI app: `guarded` (security and size limits around `app`), each answer counted by route
    and status."""

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await guarded(scope, receive, send)
            return

        async def record(message: Any) -> None:
            if message["type"] == "http.response.start":
                metrics.answered(scope["path"], message["status"])
            await send(message)

        await guarded(scope, receive, record)

    counted.fastapi = app  # type: ignore[attr-defined]
    return counted


async def _stream(task: asyncio.Task, first: Any, ready: asyncio.Queue, result: Any) -> AsyncIterator[str]:
    """The NDJSON lines of a streamed translation: its segments as they are ready (`first`, then the queue's), then
    its result or error."""
    count = 0
    parts = first
    try:
        while parts is not None:
            for span, decoded in parts:
                yield json.dumps({"event": "segment", **segment_json(count, span, decoded)}, ensure_ascii=False) + "\n"
                count += 1
            parts = await ready.get()
        try:
            decodes = await task
        except ApiError as error:
            yield json.dumps({"event": "error", "status": error.status, "error": error.message}) + "\n"
            return
        yield json.dumps({"event": "result", **result(decodes)}, ensure_ascii=False) + "\n"
    finally:
        task.cancel()  # the client left mid-stream: its remaining segments are not waited for


def latency(decodes: Decodes) -> dict[str, Any]:
    """A request's latency: its one decode's figures, or, for segmented audio, the segments' summed."""
    if not decodes.segmented:
        decoded = decodes.parts[0][1]
        translation = decoded.translation
        return {"seconds": translation.seconds, "stages": translation.stages, "queue_seconds": decoded.queue_seconds,
                "search_steps": translation.steps, "batch": {"id": decoded.batch_id, "size": decoded.batch_size}}
    stages: dict[str, float] = {}
    steps: dict[str, int] = {}
    for _, decoded in decodes.parts:
        for key, value in decoded.translation.stages.items():
            stages[key] = stages.get(key, 0.0) + value
        for key, count in decoded.translation.steps.items():
            steps[key] = steps.get(key, 0) + count
    return {"seconds": decodes.seconds, "stages": stages, "segment_seconds": decodes.segment_seconds,
            "queue_seconds": sum(d.queue_seconds for _, d in decodes.parts), "search_steps": steps,
            "batch": {"id": None, "size": max((d.batch_size for _, d in decodes.parts), default=0)},
            "segments": len(decodes.parts)}


async def _warm_all(batcher: Batcher, models: dict[str, Runner], limits: ServeLimits, warmed: asyncio.Event) -> None:
    for name, runner in models.items():
        started = time.perf_counter()
        await batcher.run_on_decoder(lambda runner=runner: warm_up(runner, limits.max_batch))
        logger.info("model %s warmed up in %.1f s", name, time.perf_counter() - started)
    warmed.set()


def load_models(model: str | Path | None = None, quants: Sequence[str] = (), hop: int | None = None,
                decode: DecodeOptions | None = None, threads: int | None = None,
                model_file: str | Path | None = None, plugins: Sequence[str] = (),
                calibration_data: str | Path | None = None, search: str | None = None,
                device: str = "cpu") -> dict[str, Runner]:
    """One Runner per quantization scheme ("none" is fp32), over one model loaded once, named by scheme.

    Loads on the server's decoder thread (`runner.serve.batching.decoder_thread`), where they will run.

    Args:
        model: experiment dir, config, .pth or packed archive (default: the embedded demo model).
        quants: schemes to serve, each a number-format plugin name or "none"/"fp32".
        hop: frontend hop length for every scheme.
        decode: decoding options (default: configs/decode.yaml's).
        threads: intra-op threads per decode (default: every core).
        model_file: the weights, when the experiment directory holds several.
        plugins: plugin names (e.g. cross-kv-cache) applied to every scheme with their defaults.
        calibration_data: data root whose calibration split static int8 calibrates on
            (default: the embedded demo corpus, logged as such).
        search: the beam-search engine of every scheme (`runner.engines`; default: ESPnet's).
        device: cpu, cuda, cuda:N or auto, for every scheme; a scheme that does not run there is refused.

    Returns:
        Scheme name -> a Runner, in the order given.
    """
    return decoder_thread().submit(_load_models, model, quants, hop, decode, threads, model_file, plugins,
                                   calibration_data, search, device).result()


def scheme_sets(quants: Sequence[str], hop: int | None = None, search: str | None = None,
                plugins: Sequence[str] = (), device: str | None = None) -> dict[str, PluginSet]:
    """The plugins of every served scheme, by name, resolved and checked (against `device`'s type, if given),
    and the search engine checked.

    Raises:
        RunnerError: a scheme given twice, an unknown plugin, option or engine, or a plugin that does not run
            on `device`.
    """
    from runner.config import FLOAT, compose_plugins
    from runner.device import spec_type
    from runner.engines import engine_class

    if search is not None:
        engine_class(search)
    names = [FP32 if q in FLOAT else q for q in (quants or [FP32])]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise RunnerError(f"--quant: {repeated} given more than once")
    device_type = None if device is None else spec_type(device)
    return {name: PluginSet.resolve(compose_plugins(quant=name, hop=hop, extra=plugins), device_type)
            for name in names}


def _load_models(model: str | Path | None, quants: Sequence[str], hop: int | None, decode: DecodeOptions | None,
                 threads: int | None, model_file: str | Path | None, plugins: Sequence[str],
                 calibration_data: str | Path | None, search: str | None, device: str) -> dict[str, Runner]:
    from runner.device import resolve
    from runner.engines import DEFAULT
    from runner.model import load

    if model is None:
        model = defaults.model_path()
    sets = scheme_sets(quants, hop, search, plugins, device)  # checked, on `device` too, before loading
    # `auto` takes the GPU only when every served scheme runs there; each Runner checks its own again.
    where = resolve(device, [plugin for scheme in sets.values() for plugin in scheme])
    bundle = load(model, decode or DecodeOptions(), model_file, where)
    names = list(sets)
    engine = search or DEFAULT
    if len(names) == 1:  # no copy needed
        return {names[0]: Runner(bundle, threads=threads, plugins=sets[names[0]], calibration_data=calibration_data,
                                 search=engine)}
    return {name: Runner.from_bundle(bundle, threads=threads, plugins=sets[name], calibration_data=calibration_data,
                                     search=engine) for name in names}


def serve(models: dict[str, Runner], host: str = "127.0.0.1", port: int = 8000, limits: ServeLimits | None = None,
          log_level: str = "info", *, api_key: str | None = None, cors_origins: Sequence[str] = (),
          host_names: Sequence[str] = (), live: LiveLimits | None = None) -> None:
    """Serve until interrupted; models warm up as the server starts (GET /ready says when they are done).

    Requests must name this server in their Host header (`security.allowed_hosts`: the bind address,
    loopback names on loopback, `host_names`, the CORS origins' hosts). A request's headers must
    arrive within `limits.header_seconds` (`connection.HeaderDeadline`) and its body within
    `limits.body_seconds`; after SIGTERM, requests still in flight get `limits.shutdown_seconds`
    before the server stops anyway.
    """
    import uvicorn

    from runner.serve.connection import MAX_HEAD_BYTES, protocol
    from runner.serve.security import WILDCARDS, allowed_hosts

    limits = limits or ServeLimits()

    if host in WILDCARDS and not api_key:
        logger.warning("serving on every interface (%s) without an API key: anyone who can reach this port can "
                       "use it; set ST_RUNNER_API_KEY", host or "*")
    live = live or LiveLimits()
    app = create_app(models, limits, api_key=api_key, cors_origins=cors_origins,
                     allowed_hosts=allowed_hosts(host, host_names, cors_origins), live=live)
    uvicorn.run(app, host=host, port=port, log_level=log_level, http=protocol(limits.header_seconds),
                ws_max_size=live.max_append_bytes * 4 // 3 + WS_FRAME_SLACK,
                ws_per_message_deflate=False,  # a compressed frame could inflate past ws_max_size's meaning
                timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=limits.shutdown_seconds,
                h11_max_incomplete_event_size=MAX_HEAD_BYTES)
