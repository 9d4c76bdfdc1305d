"""The OpenAI audio API over the served models, so the official `openai` client works against `runner serve`.

    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=KEY)   # KEY: --api-key, or any string without one
    client.audio.translations.create(model="fp32", file=open("talk.wav", "rb"), response_format="srt")

- `POST /v1/audio/translations`: the ST output; `POST /v1/audio/transcriptions`: a multi-decoder model's ASR
  output (404 for a model without one). Multipart fields as OpenAI's: `file`, `model` (a served model's name),
  `response_format` (json, text, srt, vtt, verbose_json; default json). `prompt`, `temperature`,
  `language` and `timestamp_granularities[]` are accepted and ignored: the beam search has no prompt or
  sampling temperature, and the model's languages are fixed.
- `GET /v1/models`: the served models.
- Errors in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`); the API key is the bearer key.

Audio longer than one segment is cut by Silero VAD (`runner.serve.segments`); `verbose_json` lists the
segments with their times.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from runner.longform.recording import LongForm
from runner.runner import Runner
from runner.serve.batching import Batcher
from runner.serve.metrics import ServeMetrics
from runner.serve.segments import decode
from runner.serve.upload import ApiError, ServeLimits, read_body, read_upload

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
CREATED = int(time.time())  # when this server process started: /v1/models' `created`


def add_routes(app: FastAPI, models: dict[str, Runner], batcher: Batcher, limits: ServeLimits,
               metrics: ServeMetrics) -> None:
    """Add the OpenAI audio routes to `app`, decoding through `batcher`."""

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": CREATED,
                                            "owned_by": "st-runner"} for name in models]}

    @app.post("/v1/audio/translations")
    async def translations(request: Request) -> Response:
        return await _answer(request, "translate", models, batcher, limits, metrics)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        return await _answer(request, "transcribe", models, batcher, limits, metrics)


async def _answer(request: Request, task: str, models: dict[str, Runner], batcher: Batcher, limits: ServeLimits,
                  metrics: ServeMetrics) -> Response:
    data, form = await read_body(request, limits.max_upload_bytes, limits.body_seconds)
    fmt = form.get("response_format", "json")
    if fmt not in RESPONSE_FORMATS:
        raise ApiError(400, f"response_format '{fmt}' is not one of {', '.join(RESPONSE_FORMATS)}")
    name = form.get("model")
    if not name:
        raise ApiError(400, f"the 'model' field is required; this server has {list(models)}")
    if name not in models:
        raise ApiError(404, f"model '{name}' is not served here; this server has {list(models)}")
    if task == "transcribe" and not models[name].bundle.is_multidecoder:
        raise ApiError(404, f"model '{name}' has no ASR decoder to transcribe with (a multi-decoder model has)")
    audio = read_upload(data, limits)
    decodes = await decode(batcher, name, audio, request.is_disconnected, metrics)
    return _response(decodes.long_form(audio.seconds), task, fmt, language(models[name], task))


def language(runner: Runner, task: str) -> str:
    """The language of the output: the code in the name of the model's BPE model (ESPnet's recipes name them
    `bpe_de.model`, `..._en.model`), else "unknown"."""
    args = runner.bundle.speech2text.st_train_args
    found = re.search(r"[_.-]([a-z]{2,3})(?:[_.-]|$)", Path(str(getattr(
        args, "src_bpemodel" if task == "transcribe" else "bpemodel", None) or "")).stem + ".")
    return found.group(1) if found else "unknown"


def _response(result: LongForm, task: str, fmt: str, lang: str) -> Response:
    source = task == "transcribe"
    text = " ".join(t for t in ((s.source_text or "") if source else s.text for s in result.segments) if t)
    if fmt == "json":
        return JSONResponse({"text": text})
    if fmt == "text":
        return PlainTextResponse(text + "\n")
    if fmt in ("srt", "vtt"):
        return PlainTextResponse(result.subtitles(fmt, source=source),
                                 media_type="text/vtt" if fmt == "vtt" else "text/plain")
    segments = [{"id": s.id, "seek": 0, "start": s.start, "end": s.end,
                 "text": (s.source_text or "") if source else s.text} for s in result.segments]
    body = {"task": task, "language": lang, "duration": round(result.duration, 3),
            "text": text, "segments": segments}
    return Response(json.dumps(body, ensure_ascii=False), media_type="application/json")
