"""`runner serve`: an HTTP API and a web page over loaded `Runner`s.

One decode runs at a time, across all models the server holds: they share the CPU, and a
latency figure measured while another decode runs would not be the model's. Requests wait in
one FIFO queue of bounded length; a request that finds it full gets 503 at once.
"""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from runner import defaults
from runner.decode import DecodeOptions, Translation
from runner.environment import manifest
from runner.errors import AudioTooShortError, RunnerError, first_line
from runner.runner import Runner

WARMUP_SECONDS = 2.0
FP32 = "fp32"


@dataclass
class ServeLimits:
    """What one request may ask of the server."""

    max_upload_bytes: int = 20_000_000
    max_audio_seconds: float = 60.0
    max_queue: int = 32  # requests waiting behind the one being decoded


class ApiError(Exception):
    """A request the server refuses: an HTTP status and a one-line reason for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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
    seconds = info.frames / info.samplerate if info.samplerate else 0.0
    if seconds > limits.max_audio_seconds:
        raise ApiError(413, f"audio is {seconds:.1f} s long; the limit is {limits.max_audio_seconds:g} s")
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as error:
        raise ApiError(415, f"audio could not be decoded: {first_line(error)}") from error
    if samples.shape[0] == 0:
        raise ApiError(400, "audio has no samples")
    return Audio(samples, int(rate), samples.shape[0] / rate, info.format)


class DecodeQueue:
    """Runs translations one at a time in arrival order; refuses work beyond `max_queue` waiting."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runner-decode")
        self.pending = 0  # touched only on the event loop's thread

    async def run(self, job: Callable[[], Translation]) -> tuple[Translation, float]:
        """The job's result and the seconds it waited for the decoder."""
        if self.pending > self.max_queue:
            raise ApiError(503, f"server busy: {self.pending - 1} request(s) already waiting "
                                f"(--max-queue {self.max_queue}); retry later")
        self.pending += 1
        queued = time.perf_counter()
        started: list[float] = []

        def timed() -> Translation:
            started.append(time.perf_counter())
            return job()

        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, timed)
        finally:
            self.pending -= 1
        return result, started[0] - queued

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def model_config(runner: Runner) -> dict[str, Any]:
    """What a figure served by `runner` was measured under."""
    summary = runner.summary
    return {
        "plugins": [p.describe() for p in runner.plugins],
        "hop_length": (summary["frontend"] or {}).get("hop_length"),
        "size_mb": summary["state_dict_bytes"] / 1e6,
        "model_file_bytes": summary["model_file_bytes"],
        "parameters": summary["parameters"],
        "threads": runner.threads,
        "quantized_engine": runner.engine or "none",
        "search": runner.bundle.search_engine,
        "decode": runner.decode.speech2text_kwargs(),
        "model": str(runner.bundle.files.origin),
        "model_content_hash": runner.bundle.files.content_hash,
    }


def warm_up(runner: Runner) -> None:
    """One decode of silence, so the first user's latency is not the first call's."""
    runner.translate(np.zeros(int(WARMUP_SECONDS * runner.sample_rate), dtype=np.float32), runner.sample_rate)


def create_app(models: dict[str, Runner], limits: ServeLimits | None = None) -> FastAPI:
    """A FastAPI app serving `models` (name -> loaded Runner); the first is the default."""
    if not models:
        raise RunnerError("serve: no model to serve")
    limits = limits or ServeLimits()
    configs = {name: model_config(runner) for name, runner in models.items()}
    environment = manifest()
    queue = DecodeQueue(limits.max_queue)
    page = resources.files("runner").joinpath("web/index.html").read_text(encoding="utf-8")

    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        queue.close()

    app = FastAPI(title="st-runner", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse({"error": error.message, "status": error.status}, status_code=error.status)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(models), "queue": {"pending": queue.pending,
                                                                   "max_queue": limits.max_queue}}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return {"models": configs, "default_model": next(iter(models)), "limits": asdict(limits),
                "warmup": f"one {WARMUP_SECONDS:g} s decode of silence per model at start-up",
                "decoding": "one request at a time across all models, in arrival order",
                "environment": environment}

    @app.post("/translate")
    async def translate(request: Request, model: str | None = None) -> dict[str, Any]:
        """Body: the audio file itself, or multipart form data with a `file` field (and optional `model`)."""
        data, form_model = await _read_body(request, limits.max_upload_bytes)
        name = model or form_model or next(iter(models))
        if name not in models:
            raise ApiError(404, f"unknown model '{name}'; this server has {list(models)}")
        audio = read_upload(data, limits)
        runner = models[name]
        translation, waited = await queue.run(lambda: _translate(runner, audio))
        return {
            "model": name,
            "translation": translation.text,
            "transcript": translation.source_text,
            "latency": {"seconds": translation.seconds, "stages": translation.stages, "queue_seconds": waited,
                        "search_steps": translation.steps},
            "audio": {"seconds": audio.seconds, "sample_rate": audio.sample_rate,
                      "channels": int(audio.waveform.shape[1]), "format": audio.format},
            "config": configs[name],
        }

    return app


def _translate(runner: Runner, audio: Audio) -> Translation:
    try:
        return runner.translate(audio.waveform, audio.sample_rate)
    except AudioTooShortError as error:  # shorter than the STFT window, or too few frames to subsample
        raise ApiError(422, f"{error} ({audio.seconds:.3f} s of audio)") from error
    except RunnerError as error:
        raise ApiError(422, str(error)) from error


async def _read_body(request: Request, limit: int) -> tuple[bytes, str | None]:
    """The uploaded file's bytes (raw body or multipart `file`), refusing more than `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:  # room for multipart framing
        raise ApiError(413, f"upload is {int(declared) / 1e6:.1f} MB; the limit is {limit / 1e6:g} MB")
    bounded = Request(request.scope, _bounded(request.receive, limit + 64 * 1024))
    try:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await bounded.form()
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "multipart upload has no 'file' field")
            data = await upload.read()
            model = form.get("model")
            model = model if isinstance(model, str) and model else None
        else:
            data, model = await bounded.body(), None
    except _TooLarge:
        raise ApiError(413, f"upload exceeds the limit of {limit / 1e6:g} MB") from None
    except ClientDisconnect:
        raise ApiError(400, "client disconnected during the upload") from None
    except HTTPException as error:  # starlette's multipart parser: no boundary, cut parts, ...
        raise ApiError(400, f"malformed multipart upload: {error.detail}") from error
    if len(data) > limit:
        raise ApiError(413, f"upload is {len(data) / 1e6:.1f} MB; the limit is {limit / 1e6:g} MB")
    return data, model


class _TooLarge(Exception):
    pass


def _bounded(receive: Callable[[], Awaitable[dict]], limit: int) -> Callable[[], Awaitable[dict]]:
    received = 0

    async def bounded_receive() -> dict:
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise _TooLarge
        return message

    return bounded_receive


def load_models(model: str | Path | None = None, quants: Sequence[str] = (), hop: int | None = None,
                decode: DecodeOptions | None = None, threads: int | None = None,
                model_file: str | Path | None = None, plugins: Sequence[str] = (),
                calibration_data: str | Path | None = None, search: str | None = None) -> dict[str, Runner]:
    """One Runner per quantization scheme ("none" is fp32), over one model loaded once, named by scheme.

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
        search: the beam-search engine of every scheme, "espnet" or "lean" (default: ESPnet's).

    Returns:
        Scheme name -> a Runner, in the order given.
    """
    from runner.config import FLOAT, compose_plugins
    from runner.model import load

    names = [FP32 if q in FLOAT else q for q in (quants or [FP32])]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise RunnerError(f"--quant: {repeated} given more than once")
    if model is None:
        model = defaults.model_path()
    specs = {name: compose_plugins(quant=name, hop=hop, search=search, extra=plugins) for name in names}  # before loading
    bundle = load(model, decode or DecodeOptions(), model_file)
    if len(names) == 1:  # no copy needed
        return {names[0]: Runner(bundle, threads=threads, plugins=specs[names[0]], calibration_data=calibration_data)}
    return {name: Runner.from_bundle(bundle, threads=threads, plugins=specs[name], calibration_data=calibration_data)
            for name in names}


def serve(models: dict[str, Runner], host: str = "127.0.0.1", port: int = 8000,
          limits: ServeLimits | None = None, log_level: str = "info") -> None:
    """Warm every model up, then serve until interrupted."""
    import uvicorn

    for runner in models.values():
        warm_up(runner)
    uvicorn.run(create_app(models, limits), host=host, port=port, log_level=log_level)

