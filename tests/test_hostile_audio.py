"""Crafted audio: headers are admitted before decoding, and one bad request never fails its batch-mates."""

from __future__ import annotations

import asyncio
import io
import shutil
import struct
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
from typer.testing import CliRunner

from benchmarks.live_server import live_server
from runner.cli import app
from runner.errors import RunnerError
from runner.runner import Runner
from runner.serve.batching import decode_batch
from runner.serve.upload import ApiError, Audio

pytestmark = pytest.mark.slow  # the fast tier (-m 'not slow') leaves this module out


def wav(samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16", claimed_rate: int | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    data = bytearray(buffer.getvalue())
    if claimed_rate is not None:  # the header's rate and byte rate, as a crafted file states them
        channels = samples.shape[1] if samples.ndim == 2 else 1
        width = {"PCM_16": 2, "FLOAT": 4}[subtype]
        struct.pack_into("<II", data, 24, claimed_rate, claimed_rate * channels * width)
    return bytes(data)


def speech(seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(scale=0.1, size=int(16000 * seconds))).astype(np.float32)


def test_the_library_admits_rates_channels_and_samples(tiny_exp: Path) -> None:
    runner = Runner(tiny_exp, threads=1)
    with pytest.raises(RunnerError, match=r"^waveform: sample rate 100,000,001 Hz is outside 1,000\.\.192,000 Hz$"):
        runner.translate(speech(), 100_000_001)
    for bad, message in ((np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (1e30, "out of range")):
        samples = speech()
        samples[100] = bad
        with pytest.raises(RunnerError, match=f"^waveform: audio .*{message}"):
            runner.translate(samples, 16000)
    with pytest.raises(RunnerError, match=r"^waveform 1 of the batch: audio holds NaN"):
        runner.translate_batch([speech(), np.full(16000, np.nan, dtype=np.float32)], 16000)


def test_an_odd_rate_resamples_in_bounded_time(tiny_exp: Path) -> None:
    """16,001 Hz: the exact ratio 16001/16000 would build 16,001 filters (4 GB, 13 s); its nearest small ratio is 1."""
    from runner.audio import resample

    samples = speech(1.0)
    started = time.perf_counter()
    assert resample(samples, 16001, 16000) is samples
    import torch
    import torchaudio

    exact = torchaudio.functional.resample(torch.from_numpy(samples), 44100, 16000).numpy()
    assert np.array_equal(resample(samples, 44100, 16000), exact)  # 441/160: the usual rates are exact
    assert len(resample(speech(2.0), 12345, 16000)) == pytest.approx(32000 * 16000 / 12345, abs=2)
    assert time.perf_counter() - started < 5
    assert Runner(tiny_exp, threads=1).translate(samples, 16001).seconds > 0


def test_data_with_a_crafted_rate_or_nan_samples_is_one_line(tiny_exp: Path, shared_corpus: Path,
                                                             tmp_path: Path) -> None:
    for case in ("rate", "nan"):
        data = shutil.copytree(shared_corpus, tmp_path / case)
        target = next(data.rglob("*.wav"))
        samples, rate = soundfile.read(str(target), dtype="float32")
        if case == "nan":
            samples[::1000] = np.nan  # inside every segment
            soundfile.write(str(target), samples, rate, subtype="FLOAT")
            expected = f"error: {target}: audio holds NaN or infinite samples"
        else:
            target.write_bytes(wav(samples, rate, claimed_rate=655_350))
            expected = f"error: {target}: sample rate 655,350 Hz is outside 1,000..192,000 Hz"
        result = CliRunner().invoke(app, ["translate", "--model", str(tiny_exp), "--data", str(data), "--no-progress"])
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines()[-1] == expected


def test_a_fault_in_one_request_is_its_own(tiny_exp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch that raises anything is decoded again one by one; a request whose decode faults gets a 500 alone."""
    runner = Runner(tiny_exp, threads=1, search="lean")
    audios = [Audio(speech(seed=i)[:, None], 16000, 1.5, "WAV") for i in range(3)]
    alone = [runner.translate(a.waveform, 16000).text for a in audios]
    original = runner.translate

    def faulty(waveform: np.ndarray, rate: int) -> object:
        if waveform is audios[1].waveform:
            raise IndexError("a fault no request should cause")
        return original(waveform, rate)

    monkeypatch.setattr(runner, "translate_batch", lambda *a, **k: (_ for _ in ()).throw(ValueError("batch fault")))
    monkeypatch.setattr(runner, "translate", faulty)
    results = decode_batch(runner, audios)
    assert [r.text for r in (results[0], results[2])] == [alone[0], alone[2]]
    assert isinstance(results[1], ApiError) and results[1].status == 500 and "IndexError" in results[1].message


def test_hostile_uploads_get_4xx_and_their_batch_mates_their_own_answers(tiny_exp: Path, tmp_path: Path) -> None:
    valid = [wav(speech(seed=i)) for i in range(3)]
    hostile = {
        "rate 100,000,001 Hz": wav(speech(), claimed_rate=100_000_001),
        "NaN samples": wav(np.full(16000, np.nan, dtype=np.float32), subtype="FLOAT"),
        "Inf samples": wav(np.full(16000, np.inf, dtype=np.float32), subtype="FLOAT"),
        "9 channels": wav(np.zeros((16000, 9), dtype=np.float32)),
        "1e30 samples": wav(np.full(16000, 1e30, dtype=np.float32), subtype="FLOAT"),
    }
    odd_rate = wav(speech(1.0), 16001)  # valid audio at an odd rate: answered, quickly

    async def send(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            bodies = [*valid, *hostile.values(), odd_rate]
            return await asyncio.gather(*[client.post(f"{url}/translate", content=b) for b in bodies])

    with live_server(tmp_path / "serve.log", "--model", str(tiny_exp), "--threads", "1", "--search", "lean",
                     "--max-batch", "4", "--max-wait-ms", "300") as url:
        alone = [httpx.post(f"{url}/translate", content=body, timeout=120).json()["translation"] for body in valid]
        responses = asyncio.run(send(url))
        statuses = [r.status_code for r in responses]
        assert statuses[:3] == [200] * 3 and [r.json()["translation"] for r in responses[:3]] == alone
        for (name, _), response in zip(hostile.items(), responses[3:-1]):
            assert response.status_code in (413, 422), (name, response.status_code, response.text)
            assert set(response.json()) == {"error", "status"}, name
        assert statuses[-1] == 200, responses[-1].text
        assert httpx.get(f"{url}/health").status_code == 200


def test_requests_whose_client_has_gone_are_not_decoded(tiny_exp: Path, tmp_path: Path) -> None:
    long_noise = wav(speech(20.0, seed=9))

    async def vanish(url: str) -> None:
        async with httpx.AsyncClient(timeout=0.6) as client:  # each gives up long before its turn
            results = await asyncio.gather(*[client.post(f"{url}/translate", content=wav(speech(seed=i)))
                                             for i in range(3)], return_exceptions=True)
        assert all(isinstance(r, httpx.TimeoutException) for r in results)

    with live_server(tmp_path / "serve.log", "--model", str(tiny_exp), "--threads", "1") as url:
        before = httpx.get(f"{url}/health").json()["queue"]["batches"]
        with httpx.Client(timeout=120) as client:
            import threading

            busy = threading.Thread(target=lambda: client.post(f"{url}/translate", content=long_noise))
            busy.start()
            time.sleep(0.3)
            asyncio.run(vanish(url))
            busy.join()
        time.sleep(0.5)
        queue = httpx.get(f"{url}/health").json()["queue"]
        assert queue["dropped_disconnected"] == 3 and queue["batches"] == before + 1  # only the long one decoded


def test_a_decode_past_its_deadline_is_stopped_with_503(tiny_exp: Path) -> None:
    from runner.decode import deadline
    from runner.errors import DecodeTimeoutError
    from runner.serve.upload import ServeLimits

    runner = Runner(tiny_exp, threads=1)
    noise = speech(30.0, seed=3)
    with deadline(0.0), pytest.raises(DecodeTimeoutError, match=r"^waveform: asr_search stopped after 1 steps"):
        runner.translate(noise, 16000)
    answer = decode_batch(runner, [Audio(noise[:, None], 16000, 30.0, "WAV")], ServeLimits(max_decode_seconds=0.01))
    assert isinstance(answer[0], ApiError) and answer[0].status == 503 and "--max-decode-seconds" in answer[0].message
    assert runner.translate(speech(), 16000).seconds > 0  # nothing left behind: the next decode runs whole
    assert ServeLimits().decode_seconds(59.0) == 128.0


def test_the_abuse_harness_reports_no_5xx_and_valid_answers_unchanged(tmp_path: Path) -> None:
    from benchmarks import abuse

    doc = tmp_path / "abuse.md"
    assert abuse.main(["--soak", "8", "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "5xx answers: 0." in text and "all 200 with the translation each gets alone" in text
    assert "| header claims 100,000,001 Hz | 422 |" in text and "| 1 s at 16,001 Hz (valid) | 200 |" in text
    assert "| nothing written outside, no payload ran | 0 |" in text and "cpu_kind: " in text
    for client in ("20 idle connections", "headers trickled, a byte per 0.2 s", "body trickled, 16 bytes per 0.2 s"):
        assert f"| {client} | 408 |" in text, client
    assert "| 3 of 3 dropped before decoding |" in text and "| /health then 200 |" in text
    assert "(2 whole rows, both in summary.md)" in text and "| packed model: tar symlink out" in text
    refused = [line for line in text.splitlines() if line.startswith(("| packed model", "| run config", "| data YAML"))]
    assert len(refused) == 8 and all(line.split(" | ")[1] == "2" and "`error: " in line for line in refused)
