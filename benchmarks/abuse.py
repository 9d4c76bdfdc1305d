"""Abuse and soak: crafted inputs against the CLI and a live server, mixed with valid requests.

    python -m benchmarks.abuse                          # demo model, 500-request soak -> docs/abuse.md
    python -m benchmarks.abuse --soak 50 --doc /tmp/abuse.md

The server part starts `runner serve --search lean --max-batch 4` on the embedded demo model (or
`--model`), sends every crafted upload concurrently with valid ones (so they share batches), then
slow and vanishing clients (`abuse_clients`), then a soak of valid requests. It reports each input's status code and time, the 5xx count, whether
every valid request got 200 with the translation it gets alone, and the server's resident memory:
idle, peak (sampled every 50 ms) and over the soak. The CLI part runs `runner translate`/`info` on
crafted model files, archives, YAML, data and results files (`abuse_files`) and records each one's
exit code and last line.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile

from benchmarks.common import environment_block, publish, rss
from benchmarks.abuse_clients import client_pass
from benchmarks.abuse_files import cli_pass
from benchmarks.live_server import live_server
from runner import defaults
from runner.environment import manifest

DOC = defaults.REPO_ROOT / "docs" / "abuse.md"
SERVER_ARGS = ["--search", "lean", "--max-batch", "4", "--max-wait-ms", "200", "--threads", "2", "--max-queue", "64",
               "--header-seconds", "2", "--body-seconds", "4"]


def _wav(samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16", claim: int | None = None,
         fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    data = bytearray(buffer.getvalue())
    if claim is not None:
        channels = samples.shape[1] if samples.ndim == 2 else 1
        struct.pack_into("<II", data, 24, claim, claim * channels * (4 if subtype == "FLOAT" else 2))
    return bytes(data)


def crafted_uploads() -> dict[str, bytes]:
    """Name -> body of every malformed upload (each must get a 4xx, or 200 where it is valid audio)."""
    rng = np.random.default_rng(0)
    noise = (rng.normal(scale=0.1, size=16000)).astype(np.float32)
    cut = _wav(noise)
    return {
        "header claims 100,000,001 Hz": _wav(noise, claim=100_000_001),
        "1 s at 16,001 Hz (valid)": _wav(noise, 16001),
        "NaN samples": _wav(np.full(16000, np.nan, np.float32), subtype="FLOAT"),
        "Inf samples": _wav(np.full(16000, np.inf, np.float32), subtype="FLOAT"),
        "1e30 samples": _wav(np.full(16000, 1e30, np.float32), subtype="FLOAT"),
        "9 channels": _wav(np.zeros((16000, 9), np.float32)),
        "8-channel FLAC at 96 kHz, 59 s": _wav(np.zeros((96000 * 59, 8), np.int16), 96000, "PCM_16", fmt="FLAC"),
        "header says more frames than sent": cut[:len(cut) // 2],
        "80 samples": _wav(noise[:80]),
        "empty body": b"",
        "random bytes": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "WAV header only": cut[:44],
    }


def _post_all(url: str, bodies: list[bytes]) -> list[tuple[int, float, dict[str, Any]]]:
    async def one(client: httpx.AsyncClient, body: bytes) -> tuple[int, float, dict[str, Any]]:
        started = time.perf_counter()
        response = await client.post(f"{url}/translate", content=body)
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": response.text[:80]}
        return response.status_code, time.perf_counter() - started, payload

    async def run() -> list[tuple[int, float, dict[str, Any]]]:
        async with httpx.AsyncClient(timeout=300) as client:
            return await asyncio.gather(*[one(client, b) for b in bodies])

    return asyncio.run(run())


class PeakMemory:
    """The largest VmRSS of a process, sampled every 50 ms while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, rss(pid), threading.Event()

    def __enter__(self) -> PeakMemory:
        def sample() -> None:
            while not self._stop.wait(0.05):
                self.peak = max(self.peak, rss(self.pid))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def server_pass(model: Path | None, soak: int, work: Path) -> dict[str, Any]:
    """Crafted uploads among valid ones, then a soak; statuses, times and memory."""
    from runner.data import load_test_set, preload

    test = preload(load_test_set(defaults.data_path(), "tst-COMMON"), 16000, limit=4)
    valid = [_wav(u.waveform) for u in test.utterances]  # demo utterances, cut from their talks
    crafted = crafted_uploads()
    processes: list[Any] = []
    args = SERVER_ARGS
    with live_server(work / "serve.log", *args, *(["--model", str(model)] if model else []),
                     processes=processes) as url:
        pid = processes[0].pid
        alone = [r[2].get("translation") for r in _post_all(url, valid)]
        idle = rss(pid)
        with PeakMemory(pid) as peak:
            mixed = _post_all(url, [*valid, *crafted.values(), *valid])
        crafted_results = dict(zip(crafted, mixed[len(valid):len(valid) + len(crafted)]))
        valid_results = mixed[:len(valid)] + mixed[len(valid) + len(crafted):]
        long_noise = _wav(np.random.default_rng(1).normal(scale=0.1, size=16000 * 19).astype(np.float32))  # under 20 s: decoded whole, not cut by VAD
        with PeakMemory(pid) as client_peak:
            clients = client_pass(url, long_noise, valid[0])
        soak_before = rss(pid)
        with PeakMemory(pid) as soak_peak:
            soaked = [r for start in range(0, soak, 16)
                      for r in _post_all(url, [valid[i % len(valid)] for i in range(start, min(soak, start + 16))])]
        soak_after = rss(pid)
    return {"idle": idle, "peak": max(peak.peak, client_peak.peak, soak_peak.peak), "crafted": crafted_results,
            "clients": clients,
            "valid_ok": all(s == 200 and p.get("translation") == alone[i % len(valid)]
                            for i, (s, _, p) in enumerate(valid_results)),
            "valid": len(valid_results), "soak": soaked, "soak_before": soak_before, "soak_after": soak_after}


def render(server: dict[str, Any], cli: list[tuple[str, int, str]], command: str) -> str:
    statuses = [s for s, _, _ in server["crafted"].values()] + [s for s, _, _ in server["soak"]] + [
        int(s) for _, status, _, _ in server["clients"] for s in status.split() if s.isdigit()]
    fives = sum(1 for s in statuses if s >= 500)
    soak_times = sorted(t for _, t, _ in server["soak"])
    lines = ["# Abuse and soak", "", f"Generated by `{command}`. The server: `runner serve {' '.join(SERVER_ARGS)}` "
             "on the embedded demo model, on loopback.", "",
             "| crafted upload | status | seconds | answer |", "|---|---|---|---|"]
    for name, (status, seconds, payload) in server["crafted"].items():
        lines.append(f"| {name} | {status} | {seconds:.2f} | {str(payload.get('error', payload.get('translation')))[:90]} |")
    lines += ["", "| slow or vanishing client | status | seconds | outcome |", "|---|---|---|---|"]
    lines += [f"| {what} | {status} | {seconds:.2f} | {outcome} |" for what, status, seconds, outcome in server["clients"]]
    growth = (server["soak_after"] - server["soak_before"]) / server["soak_before"]
    lines += ["", f"5xx answers: {fives}. Valid requests mixed among them ({server['valid']}): "
              f"{'all 200 with the translation each gets alone' if server['valid_ok'] else 'NOT all answered alike'}.",
              f"Server memory (VmRSS): idle {server['idle'] / 1e6:.0f} MB, peak {server['peak'] / 1e6:.0f} MB "
              f"({server['peak'] / server['idle']:.2f}x idle); soak of {len(server['soak'])} valid requests: "
              f"{server['soak_before'] / 1e6:.0f} -> {server['soak_after'] / 1e6:.0f} MB ({growth:+.1%}), "
              f"{sum(s == 200 for s, _, _ in server['soak'])} answered 200, median "
              f"{soak_times[len(soak_times) // 2] if soak_times else 0:.3f} s per request.", "",
              "| crafted file (CLI) | exit code | last line |", "|---|---|---|"]
    lines += [f"| {what} | {code} | `{last}` |" for what, code, last in cli]
    env = manifest(2)
    lines += ["", *environment_block(env)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model to serve [default: the embedded demo]")
    parser.add_argument("--soak", type=int, default=500, help="valid requests in the soak")
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        work = Path(root) / "work"
        work.mkdir()
        cli = cli_pass(work)
        server = server_pass(args.model, args.soak, work)
    text = render(server, cli, "python -m benchmarks.abuse " + " ".join(sys.argv[1:] if argv is None else argv))
    publish(args.doc, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
