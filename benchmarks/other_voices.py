"""The demo model on voices it never heard: the demo tst-COMMON sentences spoken by Festival's voices.

    python -m benchmarks.other_voices                  # 100 sentences, Festival's installed English voices
    python -m benchmarks.other_voices --limit 30 --voices kal_diphone

The embedded corpus is spoken by espeak-ng only. This speaks the same English sentences (same
German references) with each Debian Festival voice (`apt-get install festival festvox-kallpc16k
festvox-kdlpc16k festvox-us-slt-hts`) into a MuST-C-layout directory, one talk per voice, and
evaluates the embedded model on it and on the original espeak-ng audio in the same run: BLEU, chrF
and source WER overall and per voice. Results go to docs/other-voices.md (or --doc).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile

from runner import defaults
from runner.demo.corpus import SAMPLE_RATE, assemble_talk, pcm16
from runner.environment import manifest
from runner.errors import RunnerError
from runner.metrics.bleu import corpus_bleu, corpus_chrf
from runner.metrics.wer import source_wer
from runner.model import cache_dir
from runner.runner import Runner

VOICE_ROOT = Path("/usr/share/festival/voices")
SPLIT = "tst-COMMON"


def installed_voices() -> list[str]:
    """Festival's installed English voices (e.g. kal_diphone, ked_diphone, cmu_us_slt_arctic_hts)."""
    return sorted(p.name for family in ("english", "us") for p in (VOICE_ROOT / family).glob("*") if p.is_dir())


def speak(text: str, voice: str) -> np.ndarray:
    """One sentence from Festival's `text2wave` as int16 samples at 16 kHz (byte-reproducible)."""
    binary = shutil.which("text2wave")
    if binary is None:
        raise RunnerError("text2wave: Festival is not installed; apt-get install festival festvox-kallpc16k")
    with tempfile.TemporaryDirectory() as work:
        source, target = Path(work) / "text.txt", Path(work) / "speech.wav"
        source.write_text(text + "\n", encoding="utf-8")
        done = subprocess.run([binary, "-eval", f"(voice_{voice})", "-o", str(target), str(source)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0 or not target.is_file():
            raise RunnerError(f"text2wave: voice {voice} failed on {text!r} ({done.stderr.strip()})")
        samples, rate = soundfile.read(target, dtype="float64")
    if not samples.size:
        raise RunnerError(f"text2wave: voice {voice} gave no audio for {text!r}")
    return pcm16(samples, rate)


def build(voices: list[str], limit: int | None) -> Path:
    """A MuST-C layout root with SPLIT spoken by each voice, one talk per voice (cached by its inputs)."""
    txt = defaults.data_path() / "en-de" / "data" / SPLIT / "txt"
    english = (txt / f"{SPLIT}.en").read_text(encoding="utf-8").splitlines()[:limit]
    german = (txt / f"{SPLIT}.de").read_text(encoding="utf-8").splitlines()[:limit]
    key = hashlib.sha256("\n".join([*voices, *english, *german]).encode()).hexdigest()[:12]
    root = cache_dir() / "other-voices" / key
    split_dir = root / "en-de" / "data" / SPLIT
    if (split_dir / "txt" / f"{SPLIT}.yaml").is_file():
        return root
    (split_dir / "wav").mkdir(parents=True, exist_ok=True)
    (split_dir / "txt").mkdir(parents=True, exist_ok=True)
    rows: list[str] = []
    for index, voice in enumerate(voices):
        talk = f"festival_{index}.wav"
        audio, talk_rows = assemble_talk([speak(en, voice) for en in english], talk, f"spk.festival+{voice}",
                                         lead=30, gaps=[40] * len(english))
        soundfile.write(str(split_dir / "wav" / talk), audio, SAMPLE_RATE, subtype="PCM_16")
        rows += talk_rows
    sources, targets = english * len(voices), german * len(voices)
    for name, lines in ((f"{SPLIT}.en", sources), (f"{SPLIT}.de", targets), (f"{SPLIT}.yaml", rows)):
        (split_dir / "txt" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")  # the YAML last: complete
    return root


def scores(hypotheses: list[str], references: list[str], transcripts: list[str | None],
           sources: list[str]) -> str:
    """BLEU | chrF | source WER, as table cells."""
    wer = source_wer(transcripts, sources)
    wer_text = f"{wer:.1f} %" if wer is not None else "n/a"
    return f"{corpus_bleu(hypotheses, references).score:.1f} | {corpus_chrf(hypotheses, references).score:.1f} | {wer_text}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voices", default=None, help="comma-separated Festival voices [default: every installed one]")
    parser.add_argument("--limit", type=int, default=None, help="the first N test sentences [default: all 100]")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--doc", type=Path, default=defaults.REPO_ROOT / "docs" / "other-voices.md")
    args = parser.parse_args(argv)
    voices = args.voices.split(",") if args.voices else installed_voices()
    if not voices:
        parser.error("no Festival voice installed: apt-get install festival festvox-kallpc16k festvox-kdlpc16k "
                     "festvox-us-slt-hts")
    root = build(voices, args.limit)
    runner = Runner(threads=args.threads, plugins=["lean"])  # fp32: the same translations as ESPnet's engine
    espeak = runner.evaluate(limit=args.limit)
    festival = runner.evaluate(root)
    per_voice = len(espeak.utterances)
    command = f"python -m benchmarks.other_voices {' '.join(sys.argv[1:])}".strip()
    lines = ["# The demo model on voices it never heard", "",
             f"Generated by `{command}`: the first {per_voice} sentences of the embedded {SPLIT} (same German references), spoken by espeak-ng (the "
             f"embedded audio) and by each Festival voice, translated by the embedded model (fp32, lean engine, "
             f"beam 5, {args.threads} threads) in one run.", "",
             "| speech | utterances | BLEU | chrF | source WER |", "|---|---|---|---|---|"]
    for label, report in (("espeak-ng (embedded tst-COMMON)", espeak), ("Festival, all voices", festival)):
        utterances = report.utterances
        lines.append(f"| {label} | {len(utterances)} | " + scores(
            [u["hypothesis"] for u in utterances], [u["reference"] for u in utterances],
            [u["source_hypothesis"] for u in utterances], [u["source_reference"] for u in utterances]) + " |")
    for index, voice in enumerate(voices):
        utterances = festival.utterances[index * per_voice:(index + 1) * per_voice]
        lines.append(f"| Festival `{voice}` | {len(utterances)} | " + scores(
            [u["hypothesis"] for u in utterances], [u["reference"] for u in utterances],
            [u["source_hypothesis"] for u in utterances], [u["source_reference"] for u in utterances]) + " |")
    env = manifest(args.threads, "none", runner.device)
    lines += ["", "## Environment", "", "```", *(f"{k}: {v}" for k, v in env.items()), "```", ""]
    text = "\n".join(lines)
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
