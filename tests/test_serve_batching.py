"""`runner serve` at scale: dynamic batching, /metrics, readiness, API key, CORS, streamed upload limits."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import threading
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
from starlette.testclient import TestClient

from conftest import Utterance, live_server
from runner.serve import ServeLimits, create_app, load_models

pytestmark = pytest.mark.slow  # the fast tier (-m 'not slow') leaves this module out


def wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def prometheus(text: str) -> dict[str, float]:
    """Sample name with labels -> value, checking every line is a comment or a sample."""
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"# (HELP|TYPE) st_runner_\w+ ", line), line
            continue
        name, value = line.rsplit(" ", 1)
        assert re.fullmatch(r'st_runner_\w+(\{(\w+="[^"]*",?)+\})?', name), line
        samples[name] = float(value)
    return samples


async def post_all(url: str, bodies: list[bytes], **kwargs: object) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=300) as client:
        return await asyncio.gather(*[client.post(f"{url}/translate", content=body, **kwargs) for body in bodies])


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The demo model on the lean engine, batching up to 4 requests that arrive within 300 ms."""
    log = tmp_path_factory.mktemp("batching") / "serve.log"
    with live_server(log, "--search", "lean", "--max-batch", "4", "--max-wait-ms", "300", "--threads", "2") as url:
        yield url


def test_concurrent_requests_ride_in_batches_and_get_their_own_answers(
        batching_server: str, served_utterances: dict[str, list[Utterance]]) -> None:
    utterances = served_utterances["fp32"] * 2  # the demo model's lean translations are ESPnet's
    responses = asyncio.run(post_all(batching_server, [u.path.read_bytes() for u in utterances]))
    assert [r.status_code for r in responses] == [200] * len(utterances)
    for utterance, response in zip(utterances, responses):
        body = response.json()
        assert (body["translation"], body["transcript"]) == (utterance.translation, utterance.transcript)
        assert body["config"]["search"] == "lean"
    batches = Counter(r.json()["latency"]["batch"]["id"] for r in responses)
    sizes = {r.json()["latency"]["batch"]["id"]: r.json()["latency"]["batch"]["size"] for r in responses}
    assert batches == Counter(sizes)  # each response names the batch it rode in, and its true size
    assert max(sizes.values()) > 1 and all(size <= 4 for size in sizes.values())
    metrics = prometheus(httpx.get(f"{batching_server}/metrics").text)
    assert metrics['st_runner_requests_total{path="/translate",status="200"}'] >= len(utterances)
    assert metrics['st_runner_batch_size_sum{model="fp32"}'] >= len(utterances)
    assert metrics['st_runner_decode_seconds_count{model="fp32"}'] >= len(utterances)
    assert metrics["st_runner_queue_depth"] == 0
    info = httpx.get(f"{batching_server}/info").json()
    assert info["limits"]["max_batch"] == 4 and "batched search" in info["decoding"]


def test_a_bad_request_in_a_batch_fails_alone(batching_server: str,
                                              served_utterances: dict[str, list[Utterance]]) -> None:
    good = served_utterances["fp32"][0]
    bodies = [good.path.read_bytes(), wav_bytes(np.zeros(300, dtype=np.float32)), good.path.read_bytes()]
    responses = asyncio.run(post_all(batching_server, bodies))
    assert [r.status_code for r in responses] == [200, 422, 200]
    assert "too short" in responses[1].json()["error"]
    assert responses[0].json()["translation"] == responses[2].json()["translation"] == good.translation
    metrics = prometheus(httpx.get(f"{batching_server}/metrics").text)
    assert metrics['st_runner_request_errors_total{status="422"}'] >= 1


def test_full_queue_answers_503_with_retry_after(tmp_path: Path, tiny_exp: Path) -> None:
    long_audio = wav_bytes(np.random.default_rng(0).normal(0, 0.1, 16000 * 6).astype(np.float32))  # decodes for seconds: the other five arrive meanwhile
    with live_server(tmp_path / "serve.log", "--model", str(tiny_exp), "--max-queue", "1", "--threads", "1") as url:
        responses = asyncio.run(post_all(url, [long_audio] * 6))
        codes = [r.status_code for r in responses]
        assert codes.count(200) >= 2 and codes.count(503) >= 1, codes
        for response in responses:
            if response.status_code == 503:
                assert int(response.headers["retry-after"]) >= 1
                assert "server busy" in response.json()["error"]
        assert prometheus(httpx.get(f"{url}/metrics").text)['st_runner_requests_total{path="/translate",status="503"}'] \
            == codes.count(503)


def test_readiness_waits_for_the_warm_up_and_liveness_does_not(tiny_exp: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import runner.serve.app as serve_app

    release, warming = threading.Event(), threading.Event()
    real_warm_up = serve_app.warm_up

    def slow_warm_up(runner: object, batch: int = 1) -> None:
        warming.set()
        release.wait(60)
        real_warm_up(runner, batch)

    monkeypatch.setattr(serve_app, "warm_up", slow_warm_up)
    app = create_app(load_models(tiny_exp, threads=1))
    with TestClient(app) as client:
        assert warming.wait(30)
        assert client.get("/health").status_code == 200
        response = client.get("/ready")
        assert response.status_code == 503 and response.json()["reasons"] == ["warming up"]
        release.set()
        for _ in range(600):
            if client.get("/ready").status_code == 200:
                break
            threading.Event().wait(0.05)
        assert client.get("/ready").json() == {"ready": True, "reasons": [], "waiting": 0}
        assert any(t.name.startswith("runner-decode") for t in threading.enumerate())
    # the app's shutdown lets the decoder thread exit, and its OpenMP team with it (the host's torch keeps its speed)
    assert not any(t.name.startswith("runner-decode") for t in threading.enumerate())


def test_api_key_guards_every_route_but_the_page_and_probes(tmp_path: Path, tiny_exp: Path) -> None:
    audio = wav_bytes(np.random.default_rng(1).normal(0, 0.1, 16000).astype(np.float32))
    with live_server(tmp_path / "serve.log", "--model", str(tiny_exp), "--threads", "1",
                     env={"ST_RUNNER_API_KEY": "s3cret-key"}) as url:
        for path in ("/", "/health", "/ready"):
            assert httpx.get(f"{url}{path}").status_code == 200, path
        for path in ("/info", "/metrics"):
            assert httpx.get(f"{url}{path}").status_code == 401, path
        missing = httpx.post(f"{url}/translate", content=audio)
        assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
        assert "API key" in missing.json()["error"]
        wrong = httpx.post(f"{url}/translate", content=audio, headers={"Authorization": "Bearer s3cret-kez"})
        assert wrong.status_code == 401
        right = httpx.post(f"{url}/translate", content=audio, headers={"Authorization": "Bearer s3cret-key"},
                           timeout=120)
        assert right.status_code == 200 and right.json()["translation"] is not None
        assert httpx.get(f"{url}/info", headers={"Authorization": "Bearer s3cret-key"}).json()["auth"] == \
            "bearer API key"
        # The key came from the environment: it is not in the server's command line.
        listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
        assert "s3cret-key" not in listing


def test_cross_origin_requests_are_refused_unless_allowed(tmp_path: Path, tiny_exp: Path) -> None:
    audio = wav_bytes(np.random.default_rng(2).normal(0, 0.1, 16000).astype(np.float32))
    with live_server(tmp_path / "serve.log", "--model", str(tiny_exp), "--threads", "1",
                     "--cors-origin", "https://demo.example.org") as url:
        evil = httpx.post(f"{url}/translate", content=audio, headers={"Origin": "https://evil.example.com"})
        assert evil.status_code == 403 and "--cors-origin https://evil.example.com" in evil.json()["error"]
        assert "access-control-allow-origin" not in evil.headers
        preflight = httpx.options(f"{url}/translate", headers={"Origin": "https://demo.example.org",
                                                               "Access-Control-Request-Method": "POST",
                                                               "Access-Control-Request-Headers": "authorization"})
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "https://demo.example.org"
        assert "Authorization" in preflight.headers["access-control-allow-headers"]
        allowed = httpx.post(f"{url}/translate", content=audio, headers={"Origin": "https://demo.example.org"},
                             timeout=120)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://demo.example.org"
        same = httpx.post(f"{url}/translate", content=audio, headers={"Origin": url}, timeout=120)
        assert same.status_code == 200  # the server's own page


def test_oversized_uploads_get_413_under_concurrency(tmp_path: Path, tiny_exp: Path) -> None:
    """25 MB bodies from 6 clients at once, declared and chunked: each gets its 413, none a reset connection."""
    body = b"\0" * 25_000_000

    async def chunked():  # no Content-Length: the limit can only be enforced as the bytes arrive
        for start in range(0, len(body), 1 << 20):
            yield body[start:start + (1 << 20)]

    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            declared = [client.post(f"{url}/translate", content=body) for _ in range(3)]
            streamed = [client.post(f"{url}/translate", content=chunked()) for _ in range(3)]
            return await asyncio.gather(*declared, *streamed)

    with live_server(tmp_path / "serve.log", "--model", str(tiny_exp), "--threads", "1") as url:
        responses = asyncio.run(send())
        assert [r.status_code for r in responses] == [413] * 6
        assert all("limit" in r.json()["error"] for r in responses)
        assert httpx.get(f"{url}/health").status_code == 200


def test_serving_refuses_batches_on_espnets_engine(tiny_exp: Path) -> None:
    from runner.errors import RunnerError

    with pytest.raises(RunnerError, match=r"^--max-batch 4: model fp32: .*use the lean engine"):
        create_app(load_models(tiny_exp, threads=1), ServeLimits(max_batch=4))


def test_serve_rejects_bad_scaling_options_in_one_line() -> None:
    from conftest import run_cli

    for args, message in ((["--replicas", "2"], "--address and --replicas apply to --ray"),
                          (["--max-batch", "0"], "--max-batch"), (["--max-wait-ms", "-1"], "--max-wait-ms")):
        done = run_cli("serve", *args)
        assert done.returncode == 2, args
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
