"""`runner serve` over HTTP on 127.0.0.1, with the shipped demo model: answers, bad input, concurrency."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

from conftest import Utterance, live_server
from runner import defaults


def post(url: str, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{url}/translate", timeout=120, **kwargs)


def wav_bytes(samples: np.ndarray, rate: int, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


def test_translate_matches_runner_translate(server: str, served_utterances: dict[str, list[Utterance]]) -> None:
    info = httpx.get(f"{server}/info").json()
    for model, utterances in served_utterances.items():
        utterance = utterances[1]
        response = post(server, params={"model": model}, files={"file": (utterance.path.name, utterance.path.read_bytes())})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["translation"], body["transcript"]) == (utterance.translation, utterance.transcript)
        assert body["model"] == model
        assert body["config"] == info["models"][model]
        assert [p["name"] for p in body["config"]["plugins"]] == ([] if model == "fp32" else [model])
        assert body["config"]["hop_length"] == 160
        assert set(body["latency"]["stages"]) == {"frontend", "encoder", "asr_search", "md_encoder", "st_search"}
        assert 0 < sum(body["latency"]["stages"].values()) <= body["latency"]["seconds"]
        assert set(body["latency"]["search_steps"]) == {"asr_search", "st_search"}
        assert all(steps > 0 for steps in body["latency"]["search_steps"].values())
        assert body["audio"] == {"seconds": pytest.approx(soundfile.info(str(utterance.path)).duration),
                                 "sample_rate": 16000, "channels": 1, "format": "FLAC"}
    fp32, int8 = info["models"]["fp32"], info["models"]["dynamic-int8"]
    assert int8["size_mb"] < 0.5 * fp32["size_mb"]
    assert int8["parameters"] == fp32["parameters"]


def test_raw_body_stereo_and_other_rates(server: str, served_utterances: dict[str, list[Utterance]]) -> None:
    utterance = served_utterances["fp32"][0]
    raw = post(server, content=utterance.path.read_bytes())
    assert raw.json()["translation"] == utterance.translation
    # The same speech as 44.1 kHz stereo WAV: resampled and mixed down by the server.
    import torchaudio.functional

    import torch

    mono, rate = soundfile.read(str(utterance.path), dtype="float32")
    resampled = torchaudio.functional.resample(torch.from_numpy(mono), rate, 44100).numpy()
    stereo = np.stack([resampled, resampled], axis=1)
    response = post(server, files={"file": ("stereo.wav", wav_bytes(stereo, 44100), "audio/wav")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["audio"]["sample_rate"] == 44100 and body["audio"]["channels"] == 2
    assert body["translation"].split()[:3] == utterance.translation.split()[:3]


def test_health_and_info(server: str) -> None:
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["models"] == ["fp32", "dynamic-int8"]
    info = httpx.get(f"{server}/info").json()
    assert info["default_model"] == "fp32"
    assert info["limits"] == {"max_upload_bytes": 20_000_000, "max_audio_seconds": 600.0, "max_queue": 32,
                              "max_batch": 1, "max_wait_ms": 5.0, "max_decode_seconds": None, "header_seconds": 10.0,
                              "body_seconds": 60.0, "shutdown_seconds": 30.0}
    assert info["decoding"] == "one request at a time across all models, in arrival order"
    assert info["environment"]["threads"] >= 1 and info["environment"]["int8_backend"]
    assert info["environment"]["device"] == "cpu" and info["environment"]["gpu"] is None
    assert {config["device"] for config in info["models"].values()} == {"cpu"}


def chunks(data: bytes, size: int = 1 << 20):
    for start in range(0, len(data), size):
        yield data[start:start + size]


@pytest.mark.parametrize(("name", "request_kwargs", "status", "message"), [
    ("empty body", {"content": b""}, 400, "empty request body"),
    ("not audio", {"content": b"<html>hello</html>" * 50}, 415, "not a readable audio file"),
    ("not audio, multipart", {"files": {"file": ("x.wav", b"RIFF....WAVEjunk")}}, 415, "not a readable audio file"),
    ("malformed multipart", {"content": b"garbage", "headers": {"content-type": "multipart/form-data"}}, 400,
     "malformed multipart upload"),
    ("multipart without file", {"data": {"model": "fp32"}, "files": {"other": ("a", b"b")}}, 400, "no 'file' field"),
    ("over 20 MB", {"content": b"\0" * 20_100_000}, 413, "limit is 20 MB"),
    ("over 20 MB, chunked", {"content": chunks(b"\0" * 21_000_000)}, 413, "limit of 20 MB"),
    ("over 600 s", {"content": wav_bytes(np.zeros(8000 * 601, dtype=np.float32), 8000)}, 413, "601.0 s long"),
    ("too short", {"content": wav_bytes(np.zeros(300, dtype=np.float32), 16000)}, 422,
     "audio too short for the encoder's subsampling"),
    ("shorter than the STFT window", {"content": wav_bytes(np.zeros(80, dtype=np.float32), 16000)}, 422,
     "audio too short: 80 samples, the frontend's STFT window needs at least 257"),
    ("one sample, multipart", {"files": {"file": ("x.wav", wav_bytes(np.zeros(1, dtype=np.float32), 16000))}}, 422,
     "audio too short: 1 samples"),
    ("unknown model", {"params": {"model": "fp64"}, "content": b"x"}, 404, "unknown model 'fp64'"),
])
def test_bad_input_is_a_4xx_json_error(server: str, served_utterances: dict[str, list[Utterance]], name: str,
                                       request_kwargs: dict, status: int, message: str) -> None:
    response = post(server, **request_kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert response.json()["status"] == status
    # ...and the server keeps serving.
    utterance = served_utterances["fp32"][0]
    assert post(server, content=utterance.path.read_bytes()).json()["translation"] == utterance.translation


def test_twenty_concurrent_requests_get_their_own_answers(
        server: str, served_utterances: dict[str, list[Utterance]]) -> None:
    jobs = [(model, utterance) for model, utterances in served_utterances.items() for utterance in utterances] * 2
    assert len(jobs) == 20

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=300) as client:
            return await asyncio.gather(*[
                client.post(f"{server}/translate", params={"model": model},
                            files={"file": (u.path.name, u.path.read_bytes())}) for model, u in jobs])

    responses = asyncio.run(send_all())
    assert [r.status_code for r in responses] == [200] * 20
    for (model, utterance), response in zip(jobs, responses):
        body = response.json()
        assert (body["model"], body["translation"], body["transcript"]) == (
            model, utterance.translation, utterance.transcript), utterance.id
    waits = sorted(r.json()["latency"]["queue_seconds"] for r in responses)
    assert waits[-1] > waits[0]  # they queued: decoded one at a time, not side by side


@pytest.mark.slow
def test_full_queue_answers_503_and_recovers(tmp_path: Path,
                                             served_utterances: dict[str, list[Utterance]]) -> None:
    utterance = served_utterances["fp32"][0]
    # About 9 s of speech: each decode takes long enough that the burst below finds the decoder busy.
    long_audio = np.concatenate([soundfile.read(str(u.path), dtype="float32")[0] for u in served_utterances["fp32"]])
    long_wav = wav_bytes(long_audio, 16000)
    with live_server(tmp_path / "serve.log", "--max-queue", "1") as url:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=300) as client:
                return await asyncio.gather(*[client.post(f"{url}/translate", content=long_wav) for _ in range(6)])

        responses = asyncio.run(burst())
        codes = [r.status_code for r in responses]
        assert codes.count(200) >= 2 and codes.count(503) >= 1, codes
        assert all("server busy" in r.json()["error"] for r in responses if r.status_code == 503)
        assert json.loads(httpx.get(f"{url}/health").text)["queue"]["pending"] == 0
        assert post(url, content=utterance.path.read_bytes()).json()["translation"] == utterance.translation


def test_serve_rejects_bad_options() -> None:
    from conftest import run_cli

    done = run_cli("serve", "--quant", "int3")
    assert done.returncode == 2
    assert "int3" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    done = run_cli("serve", "--max-queue", "-1")
    assert done.returncode == 2 and "--max-queue" in done.stderr


def test_load_models_applies_extra_plugins_to_every_scheme(tiny_exp: Path) -> None:
    from runner.serve import load_models, model_config

    models = load_models(tiny_exp, ["none", "dynamic-int8"], threads=1, plugins=["self-kv-cache", "ctc-prefix-scan"])
    names = {scheme: [p["name"] for p in model_config(runner)["plugins"]] for scheme, runner in models.items()}
    # Applied in the plugins' own order (constraints, then name), whatever order they were given in.
    assert names == {"fp32": ["ctc-prefix-scan", "self-kv-cache"],
                     "dynamic-int8": ["ctc-prefix-scan", "dynamic-int8", "self-kv-cache"]}


def _segments_decoded(url: str) -> float:
    """Segments the server has decoded so far, every model's (the batch-size histogram's sum)."""
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith("st_runner_batch_size_sum"))


def test_a_client_leaving_translate_stream_stops_the_decoding_of_its_queued_segments(server: str) -> None:
    """Three demo talks (190 s, about 60 segments) posted to /translate/stream: the client reads the first segment
    line and leaves; what is queued is dropped, so the server decodes at most the batches already in flight
    instead of the whole recording."""
    import time

    from runner.longform.segment import segment

    split = defaults.data_path() / "en-de/data/tst-COMMON/wav"
    audio = np.concatenate([soundfile.read(str(p), dtype="float32")[0] for p in sorted(split.iterdir())[:3]])
    spans = len(segment(audio, 16000))
    before = _segments_decoded(server)
    with httpx.stream("POST", f"{server}/translate/stream", content=wav_bytes(audio, 16000, "FLAC"),
                      timeout=120) as response:
        assert response.status_code == 200
        first = json.loads(next(response.iter_lines()))
    assert first["event"] == "segment" and first["id"] == 0 and first["text"]
    seen, settled = -1.0, _segments_decoded(server)
    while settled != seen:  # until the decoder has stopped
        time.sleep(2.0)
        seen, settled = settled, _segments_decoded(server)
    limit = httpx.get(f"{server}/info").json()["limits"]["max_batch"]
    assert spans >= 50 and settled - before <= 2 * limit, (spans, settled - before, limit)
