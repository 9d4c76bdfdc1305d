"""The demo model voice by voice: the demo tst-COMMON sentences spoken by every installed Festival and flite voice.

    python -m benchmarks.other_voices                       # every installed voice, 100 sentences each
    python -m benchmarks.other_voices --limit 30 --voices festival:kal_diphone,flite:awb
    python -m benchmarks.other_voices --model /tmp/old-model --doc /tmp/old.md   # another model, same audio

Each voice speaks the same English sentences (same German references) into a MuST-C-layout directory,
one talk per voice (cached by its inputs), and the model translates them and the committed tst-COMMON
and tst-HE audio in one run: BLEU, chrF and source WER per voice, with whether the demo corpus trains
on that voice. Results go to docs/other-voices.md (or --doc).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import soundfile

from benchmarks.common import environment_block, publish
from runner import defaults
from runner.demo.corpus import SAMPLE_RATE, assemble_talk, split_speakers
from runner.demo.voices import FESTIVAL_VOICE_ROOT, Voice, require, synthesize
from runner.environment import manifest
from runner.errors import RunnerError
from runner.metrics.bleu import corpus_bleu, corpus_chrf
from runner.metrics.wer import source_wer
from runner.model import cache_dir
from runner.runner import Runner

SPLIT = "tst-COMMON"


def installed_voices() -> list[str]:
    """Every installed Festival and flite English voice, as `engine:name` (e.g. festival:kal_diphone, flite:awb)."""
    found = [f"festival:{p.name}" for family in ("english", "us") for p in sorted((FESTIVAL_VOICE_ROOT / family).glob("*"))
             if p.is_dir()]
    try:
        listed = subprocess.run([require("flite"), "-lv"], capture_output=True, text=True, check=False).stdout
    except RunnerError:  # flite is not installed: Festival's voices alone
        listed = ""
    names = listed.split(":", 1)[1].split() if ":" in listed else []
    return found + [f"flite:{name}" for name in names if not name.endswith("_time")]


def build(voices: list[str], limit: int | None) -> Path:
    """A MuST-C layout root with SPLIT spoken by each voice, one talk per voice (cached by its inputs)."""
    txt = defaults.data_path() / "en-de" / "data" / SPLIT / "txt"
    english = (txt / f"{SPLIT}.en").read_text(encoding="utf-8").splitlines()[:limit]
    german = (txt / f"{SPLIT}.de").read_text(encoding="utf-8").splitlines()[:limit]
    key = hashlib.sha256("\n".join(["v2", *voices, *english, *german]).encode()).hexdigest()[:12]
    root = cache_dir() / "other-voices" / key
    split_dir = root / "en-de" / "data" / SPLIT
    if (split_dir / "txt" / f"{SPLIT}.yaml").is_file():
        return root
    (split_dir / "wav").mkdir(parents=True, exist_ok=True)
    (split_dir / "txt").mkdir(parents=True, exist_ok=True)
    rows: list[str] = []
    for index, name in enumerate(voices):
        engine, voice_name = name.split(":", 1)
        voice = Voice(engine, voice_name, rate=100)
        talk = f"voice_{index}.wav"
        audio, talk_rows = assemble_talk(synthesize(english, voice), talk, voice.speaker_id,
                                         lead=30, gaps=[40] * len(english))
        soundfile.write(str(split_dir / "wav" / talk), audio, SAMPLE_RATE, subtype="PCM_16")
        rows += talk_rows
    sources, targets = english * len(voices), german * len(voices)
    for name, lines in ((f"{SPLIT}.en", sources), (f"{SPLIT}.de", targets), (f"{SPLIT}.yaml", rows)):
        (split_dir / "txt" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")  # the YAML last: complete
    return root


def scores(utterances: list[dict[str, Any]]) -> str:
    """utterances | BLEU | chrF | source WER, as table cells."""
    hypotheses, references = [u["hypothesis"] for u in utterances], [u["reference"] for u in utterances]
    wer = source_wer([u["source_hypothesis"] for u in utterances], [u["source_reference"] for u in utterances])
    wer_text = f"{wer:.1f} %" if wer is not None else "n/a"
    return (f"{len(utterances)} | {corpus_bleu(hypotheses, references).score:.1f} | "
            f"{corpus_chrf(hypotheses, references).score:.1f} | {wer_text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voices", default=None, help="comma-separated engine:voice [default: every installed one]")
    parser.add_argument("--limit", type=int, default=None, help="the first N test sentences [default: all 100]")
    parser.add_argument("--model", default=None, help="model to measure [default: the embedded demo model]")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--doc", type=Path, default=defaults.REPO_ROOT / "docs" / "other-voices.md")
    args = parser.parse_args(argv)
    voices = args.voices.split(",") if args.voices else installed_voices()
    if not voices:
        parser.error("no Festival or flite voice installed: apt-get install festival festvox-kallpc16k flite")
    root = build(voices, args.limit)
    runner = Runner(args.model, threads=args.threads, search="lean")  # fp32: ESPnet's translations
    committed = {split: runner.evaluate(split=split, limit=args.limit) for split in ("tst-COMMON", "tst-HE")}
    spoken = runner.evaluate(root).utterances
    per_voice = len(spoken) // len(voices)
    trained = split_speakers("train")
    command = f"python -m benchmarks.other_voices {' '.join(sys.argv[1:])}".strip()
    model = args.model or "the embedded demo model"
    lines = ["# The demo model voice by voice", "",
             f"Generated by `{command}`: {model} (fp32, lean engine, beam 5, {args.threads} threads) on the "
             f"committed test splits and on the first {per_voice} sentences of the embedded {SPLIT} (same German "
             "references) spoken by each installed Festival and flite voice at its default rate, in one run. "
             "\"In training\" says whether the demo corpus's training split is spoken by that voice (other sentences, "
             "augmented).", "",
             "| speech | in training | utterances | BLEU | chrF | source WER |", "|---|---|---|---|---|---|",
             f"| committed tst-COMMON (espeak-ng m6, f5; Festival ked) | no | {scores(committed['tst-COMMON'].utterances)} |",
             f"| committed tst-HE (flite awb, rms) | no | {scores(committed['tst-HE'].utterances)} |"]
    for index, name in enumerate(voices):
        heard = "yes" if name in trained else "no"  # split_speakers names voices as engine:name too
        lines.append(f"| {name} | {heard} | {scores(spoken[index * per_voice:(index + 1) * per_voice])} |")
    env = manifest(args.threads, "none", runner.device)
    lines += ["", *environment_block(env)]
    text = "\n".join(lines)
    publish(args.doc, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
