"""Build the synthetic English-German demo corpus in the MuST-C release layout.

Sentences come from `grammar.Grammar`, speech from Debian's espeak-ng (run once per
sentence, which is byte-reproducible), resampled 22.05 kHz -> 16 kHz (polyphase 320/441)
and stored as 16-bit mono. About 20 utterances with short silences make one talk with one
speaker, so offsets in the YAML are real. Test speakers are voice variants training never
hears. Segment boundaries fall on 10 ms, so the six-decimal YAML offsets are sample-exact.
"""

from __future__ import annotations

import hashlib
import io
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import resample_poly

from runner.demo.grammar import Grammar
from runner.errors import RunnerError

SAMPLE_RATE = 16000
STEP = 160  # 10 ms: offsets and durations are multiples of it
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc")
# Disjoint voice variants per split: test and dev speakers are never heard in training.
VARIANTS = {
    "train": ("m1", "m2", "m3", "m4", "f1", "f2", "f3"),
    "dev": ("m5", "f4"),
    "tst-COMMON": ("m6", "m7", "f5"),
}
TALK_ID_BASE = {"train": 1000, "dev": 2000, "tst-COMMON": 3000}
SPLIT_SEEDS = {"tst-COMMON": 11, "dev": 22, "train": 33}
DEFAULT_SIZES = {"train": 2000, "dev": 200, "tst-COMMON": 100}
UTTERANCES_PER_TALK = 20


@dataclass(frozen=True)
class Voice:
    accent: str
    variant: str
    speed: int  # words per minute
    pitch: int

    @property
    def speaker_id(self) -> str:
        return f"spk.{self.accent}+{self.variant}"


def require_espeak() -> str:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RunnerError("espeak-ng: not installed; install Debian's package with `apt-get install espeak-ng`")
    return binary


def speak(text: str, voice: Voice, binary: str) -> np.ndarray:
    """One sentence from espeak-ng as int16 samples at 16 kHz."""
    command = [binary, "-v", f"{voice.accent}+{voice.variant}", "-s", str(voice.speed), "-p", str(voice.pitch),
               "--stdout", text]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        raise RunnerError(f"espeak-ng: failed on {text!r} ({result.stderr.decode(errors='replace').strip()})")
    samples, rate = soundfile.read(io.BytesIO(result.stdout), dtype="float64")
    return pcm16(samples, rate)


def pcm16(samples: np.ndarray, rate: int) -> np.ndarray:
    """Float samples at `rate` as 16-bit samples at 16 kHz (polyphase resampling: 22.05 kHz is 320/441)."""
    resampled = resample_poly(samples, SAMPLE_RATE, rate) if rate != SAMPLE_RATE else samples
    return np.clip(np.round(resampled * 32767), -32768, 32767).astype(np.int16)


def _pad_to_step(samples: np.ndarray) -> np.ndarray:
    return np.concatenate([samples, np.zeros((-len(samples)) % STEP, dtype=np.int16)])


def assemble_talk(speeches: list[np.ndarray], talk: str, speaker_id: str, lead: int,
                  gaps: list[int]) -> tuple[np.ndarray, list[str]]:
    """One talk's audio and the YAML row of each utterance in it.

    Args:
        speeches: the utterances' 16 kHz samples, in order; each is padded to a 10 ms step.
        talk: the talk's audio file name, as the rows name it.
        speaker_id: the rows' speaker.
        lead: 10 ms steps of silence before the first utterance.
        gaps: 10 ms steps of silence after each utterance.
    """
    pieces = [np.zeros(STEP * lead, dtype=np.int16)]
    cursor, rows = len(pieces[0]), []
    for speech, gap in zip(speeches, gaps):
        speech = _pad_to_step(speech)
        rows.append(f"- {{duration: {len(speech) / SAMPLE_RATE:.6f}, offset: {cursor / SAMPLE_RATE:.6f}, "
                    f"speaker_id: {speaker_id}, wav: {talk}}}")
        silence = np.zeros(STEP * gap, dtype=np.int16)
        pieces += [speech, silence]
        cursor += len(speech) + len(silence)
    return np.concatenate(pieces), rows


def write_split(root: Path, split: str, pairs: list[tuple[str, str]], audio_format: str = "flac") -> None:
    """Write `<root>/en-de/data/<split>/{wav,txt}` for `pairs`, grouped into talks."""
    binary = require_espeak()
    rng = random.Random(f"voices-{split}")
    split_dir = root / "en-de" / "data" / split
    (split_dir / "wav").mkdir(parents=True, exist_ok=True)
    (split_dir / "txt").mkdir(parents=True, exist_ok=True)
    yaml_lines, english, german = [], [], []
    for talk_index, first in enumerate(range(0, len(pairs), UTTERANCES_PER_TALK)):
        voice = Voice(rng.choice(ACCENTS), rng.choice(VARIANTS[split]), rng.randrange(140, 191, 5), rng.randrange(25, 76, 5))
        talk_name = f"ted_{TALK_ID_BASE[split] + talk_index}.{audio_format}"
        talk = pairs[first : first + UTTERANCES_PER_TALK]
        lead = rng.randrange(30, 60)
        speeches = [speak(en, voice, binary) for en, _ in talk]
        audio, rows = assemble_talk(speeches, talk_name, voice.speaker_id, lead,
                                    [rng.randrange(20, 60) for _ in talk])
        yaml_lines += rows
        english += [en for en, _ in talk]
        german += [de for _, de in talk]
        soundfile.write(str(split_dir / "wav" / talk_name), audio, SAMPLE_RATE, subtype="PCM_16",
                        format=audio_format.upper())
    for name, lines in ((f"{split}.yaml", yaml_lines), (f"{split}.en", english), (f"{split}.de", german)):
        (split_dir / "txt" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def sentence_pairs(sizes: dict[str, int]) -> dict[str, list[tuple[str, str]]]:
    """Disjoint sentences per split: test first, then dev, then train, each excluding the earlier ones."""
    taken: set[str] = set()
    pairs: dict[str, list[tuple[str, str]]] = {}
    for split in ("tst-COMMON", "dev", "train"):
        pairs[split] = Grammar(SPLIT_SEEDS[split]).unique_pairs(sizes.get(split, 0), exclude=taken)
        taken.update(en for en, _ in pairs[split])
    return pairs


def build(root: str | Path, sizes: dict[str, int] | None = None, splits: tuple[str, ...] = ("train", "dev", "tst-COMMON"),
          audio_format: str = "flac") -> Path:
    """Build the corpus under `root`; the same arguments always give byte-identical files."""
    root = Path(root)
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    pairs = sentence_pairs(sizes)
    for split in splits:
        target = root / "en-de" / "data" / split
        if target.exists():
            shutil.rmtree(target)
        write_split(root, split, pairs[split], audio_format)
    return root


def checksums(root: str | Path) -> dict[str, str]:
    """sha256 of every committed file under `root` (training audio is rebuilt, never committed)."""
    root = Path(root)
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "MANIFEST.sha256" and "train" not in p.relative_to(root).parts
    }


def write_manifest(root: str | Path) -> Path:
    root = Path(root)
    manifest = root / "MANIFEST.sha256"
    manifest.write_text("".join(f"{digest}  {name}\n" for name, digest in checksums(root).items()), encoding="utf-8")
    return manifest


def read_manifest(path: str | Path) -> dict[str, str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return {name: digest for digest, name in (line.split("  ", 1) for line in lines if line.strip())}
