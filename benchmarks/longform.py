"""Whole recordings: BLEU with VAD segmentation against the given one, and a 10-minute recording served.

    python -m benchmarks.longform [--doc docs/longform.md] [--threads 2] [--search lean] [--batch 8]

1. On each demo test split: BLEU of the given (YAML) segments, batched, and BLEU of the whole talks cut by
   Silero VAD and re-aligned to the references by mweralign (`runner translate --segmenter vad`).
2. A recording of about 10 minutes (the demo talks of every split back to back, 1 s of silence between
   them) posted to `runner serve`'s `/translate`: wall time, the server's resident set before and after
   (VmRSS) and its peak (VmHWM), against the same recording's segments decoded in-process in batches
   (`Runner.translate_long`, whose VAD time is reported apart).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import soundfile

from benchmarks.common import environment_block, rss
from benchmarks.live_server import live_server
from runner import defaults
from runner.data import load_test_set
from runner.environment import manifest
from runner.longform.iwslt import evaluate_talks
from runner.runner import Runner
from runner.longform.segment import SegmentOptions

SPLITS = ("tst-COMMON", "tst-HE")


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def recording(path: Path, seconds: float = 600.0) -> float:
    """Write demo talks (dev, then the test splits) back to back with 1 s of silence between them, up to about
    `seconds`, as FLAC (a 10-minute 16-bit WAV would pass the server's 20 MB upload limit); its length."""
    pieces: list[np.ndarray] = []
    talks = [t for split in ("dev", *SPLITS) for t in sorted((defaults.data_path() / "en-de/data" / split / "wav").iterdir())]
    for talk in talks:
        samples, rate = soundfile.read(str(talk), dtype="float32")
        assert rate == 16000, talk
        if (sum(len(p) for p in pieces) + len(samples)) / 16000 > seconds:  # the server's default limit
            break
        pieces += [samples, np.zeros(16000, dtype=np.float32)]
    audio = np.concatenate(pieces)
    soundfile.write(str(path), audio, 16000, format="FLAC")
    return len(audio) / 16000


def bleu_rows(runner: Runner, batch: int) -> list[str]:
    rows = []
    for split in SPLITS:
        given = runner.evaluate(split=split, batch_size=batch, progress=False)
        talks = evaluate_talks(runner, load_test_set(defaults.data_path(), split), SegmentOptions(), batch)
        rows.append(f"| {split} | {given.bleu.score:.2f} | {talks.bleu.score:.2f} | "
                    f"{talks.bleu.score - given.bleu.score:+.2f} | {talks.segments} / {talks.references} | "
                    f"{talks.segment_seconds:.2f} s for {talks.audio_seconds:.0f} s |")
    return rows


def served(path: Path, seconds: float, args: argparse.Namespace, log: Path) -> dict[str, float]:
    processes: list = []
    with live_server(log, "--search", args.search, "--max-batch", str(args.batch), "--threads", str(args.threads),
                     processes=processes) as url:
        pid = processes[0].pid
        before = rss(pid)
        started = time.perf_counter()
        request = urllib.request.Request(f"{url}/translate", data=path.read_bytes(), method="POST")
        urllib.request.urlopen(request, timeout=3600).read()
        wall = time.perf_counter() - started
        return {"wall": wall, "before": before, "after": rss(pid), "peak": peak_rss(pid), "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doc", type=Path, default=Path("docs/longform.md"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--search", default="lean")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    runner = Runner(threads=args.threads, search=args.search)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "recording.flac"
        seconds = recording(path)
        long = runner.translate_long(soundfile.read(str(path), dtype="float32")[0], 16000, batch_size=args.batch)
        server = served(path, seconds, args, Path(scratch) / "serve.log")
    print(server, flush=True)
    rows = bleu_rows(runner, args.batch)
    args.doc.write_text(render(rows, long, server, args), encoding="utf-8")
    print(f"wrote {args.doc}")
    return 0


def render(rows: list[str], long: object, server: dict[str, float], args: argparse.Namespace) -> str:
    command = "python -m benchmarks.longform " + " ".join(sys.argv[1:])
    env = manifest(args.threads)
    in_process = long.duration / long.decode_seconds
    return "\n".join([
        "# Whole recordings: VAD segmentation and a 10-minute recording", "",
        f"Generated by `{command.strip()}` at commit {env['runner_commit']} on the 2-core {env['cpu']} (cpu kind "
        f"`{env['cpu_kind']}`): {args.threads} threads, search {args.search}, batch {args.batch}, no warm-up "
        "(BLEU only, and the server warms itself up). Segmenter: Silero VAD, max 20 s, min silence 300 ms, "
        "padding 200 ms (chosen on demo dev).", "",
        "## BLEU: given segmentation against VAD on whole talks", "",
        "Given: the YAML's segments, decoded in batches. VAD: each talk's whole audio cut by Silero VAD, the talk's "
        "translations joined and re-aligned to the reference segments by mweralign (the IWSLT convention), then "
        "sacrebleu. Target: VAD within 3 BLEU of given.", "",
        "| split | BLEU given | BLEU VAD (mweralign) | difference | VAD segments / references | VAD time |",
        "|---|---|---|---|---|---|", *rows, "",
        f"## A {server['seconds'] / 60:.1f}-minute recording", "",
        "Demo talks (dev first, then the test splits) back to back with 1 s of silence between talks, as FLAC, posted whole to `runner serve "
        f"--search {args.search} --max-batch {args.batch}`'s `/translate`, against the same recording decoded "
        "in-process by `Runner.translate_long` (segments in batches of the same size).", "",
        "| | figure |", "|---|---|",
        f"| segments (in-process) | {len(long.segments)} |",
        f"| VAD, in-process | {long.segment_seconds:.2f} s |",
        f"| decoding, in-process | {long.decode_seconds:.1f} s ({in_process:.1f} s of audio per s) |",
        f"| server, whole request | {server['wall']:.1f} s ({server['seconds'] / server['wall']:.1f} s of audio per s; "
        f"{server['wall'] / (long.decode_seconds + long.segment_seconds):.2f}x in-process VAD + decoding) |",
        f"| server resident set before / after / peak | {server['before'] / 1e6:.0f} / {server['after'] / 1e6:.0f} / "
        f"{server['peak'] / 1e6:.0f} MB (growth to peak {(server['peak'] - server['before']) / 1e6:.0f} MB; "
        "target < 300 MB) |", "",
        *environment_block(env)])


if __name__ == "__main__":
    raise SystemExit(main())
