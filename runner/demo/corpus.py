"""Build the synthetic English-German demo corpus in the MuST-C release layout.

Sentences come from `grammar.Grammar`; speech from three offline synthesizers (`voices`):
espeak-ng (8 English accents, many voice variants), Festival (diphone and HTS voices) and flite,
stored as 16-bit mono at 16 kHz. About 20 utterances with short silences make one talk with one
speaker, so offsets in the YAML are real; segment boundaries fall on 10 ms, so the six-decimal YAML
offsets are sample-exact. Splits and who speaks them:

- train: espeak-ng variants and Festival's kal and slt voices, every utterance augmented
  (`augment`: speed, pitch, volume, reverberation, noise; each utterance's draw is listed in
  `txt/train.augment.tsv`);
- dev: other espeak-ng variants, Festival kal and slt, clean;
- tst-COMMON: espeak-ng variants and a Festival voice (ked) never heard in training, clean;
- tst-HE ("held-out engine"): the tst-COMMON sentences spoken by flite's awb and rms voices; no
  flite voice and neither speaker is heard in training.

Every talk draws from its own seeded generator, so talks build in parallel and the same arguments
always give byte-identical files.
"""

from __future__ import annotations

import hashlib
import random
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from runner.demo import augment
from runner.demo.grammar import Grammar
from runner.demo.voices import SAMPLE_RATE, Voice, require, synthesize

__all__ = ["SAMPLE_RATE", "Voice", "assemble_talk", "build", "checksums", "read_manifest",
           "sentence_pairs", "speaker_of", "split_speakers", "split_voices", "talk_voice", "write_manifest"]

STEP = 160  # 10 ms: offsets and durations are multiples of it
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc")
# Disjoint espeak-ng voice variants per split: test and dev speakers are never heard in training.
VARIANTS = {
    "train": ("m1", "m2", "m3", "m4", "f1", "f2", "f3", "klatt", "klatt3", "Andy", "Annie", "Alex", "edward",
              "steph", "belinda", "robert", "Gene", "Jacky"),
    "dev": ("m5", "f4"),
    "tst-COMMON": ("m6", "m7", "f5"),
}
FESTIVAL_VOICES = {
    "train": ("kal_diphone", "cmu_us_slt_arctic_hts"),
    "dev": ("kal_diphone", "cmu_us_slt_arctic_hts"),
    "tst-COMMON": ("ked_diphone",),
}
FLITE_VOICES = {"tst-HE": ("awb", "rms")}
# The engine of each talk, in turn.
TALK_ENGINES = {
    "train": ("espeak-ng", "festival"),
    "dev": ("espeak-ng", "festival"),
    "tst-COMMON": ("espeak-ng", "festival", "espeak-ng", "festival", "espeak-ng"),
    "tst-HE": ("flite",),
}
AUGMENTED_SPLITS = ("train",)
SPLITS = ("train", "dev", "tst-COMMON", "tst-HE")
TALK_ID_BASE = {"train": 1000, "dev": 2000, "tst-COMMON": 3000, "tst-HE": 4000}
SPLIT_SEEDS = {"tst-COMMON": 11, "dev": 22, "train": 33}
DEFAULT_SIZES = {"train": 4000, "dev": 200, "tst-COMMON": 100, "tst-HE": 100}
UTTERANCES_PER_TALK = 20


def split_voices(split: str) -> dict[str, tuple[str, ...]]:
    """Each engine's voices in `split`: espeak-ng variants, Festival and flite voice names."""
    return {"espeak-ng": VARIANTS.get(split, ()), "festival": FESTIVAL_VOICES.get(split, ()),
            "flite": FLITE_VOICES.get(split, ())}


def speaker_of(speaker_id: str) -> str:
    """The voice behind a MuST-C speaker id: `m6` for `spk.en-us+m6`, `festival:ked_diphone`, `flite:awb`."""
    engine, _, name = speaker_id.removeprefix("spk.").partition("+")
    return f"{engine}:{name}" if engine in ("festival", "flite") else name


def split_speakers(split: str) -> set[str]:
    """Every voice `split` may be spoken by, in `speaker_of`'s form."""
    return {name if engine == "espeak-ng" else f"{engine}:{name}"
            for engine, names in split_voices(split).items() for name in names}


def talk_voice(split: str, talk_index: int, rng: random.Random) -> Voice:
    """The speaker of one talk: the split's engine for this talk, a voice of it, and its rate and pitch."""
    engines = TALK_ENGINES[split]
    engine = engines[talk_index % len(engines)]
    names = split_voices(split)[engine]
    turn = sum(1 for index in range(talk_index) if engines[index % len(engines)] == engine)
    if engine == "espeak-ng":
        return Voice(engine, f"{rng.choice(ACCENTS)}+{rng.choice(names)}", rng.randrange(140, 191, 5),
                     rng.randrange(25, 76, 5))
    return Voice(engine, names[turn % len(names)], rng.randrange(90, 116, 5))


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

    Returns:
        The talk's int16 samples and one MuST-C v1 YAML row per utterance.
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


@dataclass(frozen=True)
class _Talk:
    split: str
    index: int
    pairs: tuple[tuple[str, str], ...]
    wav_dir: Path
    audio_format: str


def _write_talk(talk: _Talk) -> tuple[list[str], list[str]]:
    """Speak, augment (training only) and write one talk; returns its YAML rows and augmentation rows."""
    rng = random.Random(f"{talk.split}-{talk.index}")
    voice = talk_voice(talk.split, talk.index, rng)
    name = f"ted_{TALK_ID_BASE[talk.split] + talk.index}.{talk.audio_format}"
    lead = rng.randrange(30, 60)
    gaps = [rng.randrange(20, 60) for _ in talk.pairs]
    speeches = synthesize([en for en, _ in talk.pairs], voice)
    described = []
    if talk.split in AUGMENTED_SPLITS:
        draws = [augment.draw(rng) for _ in speeches]
        speeches = [augment.apply(speech, draw) for speech, draw in zip(speeches, draws)]
        described = [f"{name}\t{position}\t{voice.speaker_id}\t{draw.describe()}"
                     for position, draw in enumerate(draws)]
    audio, rows = assemble_talk(speeches, name, voice.speaker_id, lead, gaps)
    soundfile.write(str(talk.wav_dir / name), audio, SAMPLE_RATE, subtype="PCM_16", format=talk.audio_format.upper())
    return rows, described


def write_split(root: Path, split: str, pairs: list[tuple[str, str]], audio_format: str = "flac",
                jobs: int = 1) -> None:
    """Write `<root>/en-de/data/<split>/{wav,txt}` for `pairs`, grouped into talks.

    Args:
        root: the corpus root (it holds `en-de/`).
        split: one of SPLITS.
        pairs: (English, German) sentences, in order.
        audio_format: flac or wav.
        jobs: talks synthesized at once (processes); the files do not depend on it.
    """
    for engine, names in split_voices(split).items():
        if names:
            require(engine)
    split_dir = root / "en-de" / "data" / split
    (split_dir / "wav").mkdir(parents=True, exist_ok=True)
    (split_dir / "txt").mkdir(parents=True, exist_ok=True)
    talks = [_Talk(split, index, tuple(pairs[first:first + UTTERANCES_PER_TALK]), split_dir / "wav", audio_format)
             for index, first in enumerate(range(0, len(pairs), UTTERANCES_PER_TALK))]
    if jobs > 1 and len(talks) > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            written = list(pool.map(_write_talk, talks))
    else:
        written = [_write_talk(talk) for talk in talks]
    yaml_lines = [row for rows, _ in written for row in rows]
    augmentations = [row for _, rows in written for row in rows]
    files = [(f"{split}.en", [en for en, _ in pairs]), (f"{split}.de", [de for _, de in pairs])]
    if augmentations:
        files.append((f"{split}.augment.tsv", ["talk\tposition\tspeaker\taugmentation", *augmentations]))
    files.append((f"{split}.yaml", yaml_lines))  # the YAML last: a split with a YAML is complete
    for name, lines in files:
        (split_dir / "txt" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def sentence_pairs(sizes: dict[str, int]) -> dict[str, list[tuple[str, str]]]:
    """Disjoint sentences per split: test first, then dev, then train, each excluding the earlier ones.

    tst-HE speaks the first sentences of tst-COMMON, so the two test splits differ only in their speech.
    """
    taken: set[str] = set()
    pairs: dict[str, list[tuple[str, str]]] = {}
    count = max(sizes.get("tst-COMMON", 0), sizes.get("tst-HE", 0))
    for split in ("tst-COMMON", "dev", "train"):
        pairs[split] = Grammar(SPLIT_SEEDS[split]).unique_pairs(count if split == "tst-COMMON" else sizes.get(split, 0),
                                                                exclude=taken)
        taken.update(en for en, _ in pairs[split])
    pairs["tst-HE"] = pairs["tst-COMMON"][: sizes.get("tst-HE", 0)]
    pairs["tst-COMMON"] = pairs["tst-COMMON"][: sizes.get("tst-COMMON", 0)]
    return pairs


def build(root: str | Path, sizes: dict[str, int] | None = None, splits: tuple[str, ...] = SPLITS,
          audio_format: str = "flac", jobs: int = 1) -> Path:
    """Build the corpus under `root`; the same arguments always give byte-identical files.

    Args:
        root: where `en-de/data/<split>` is written (existing splits named in `splits` are replaced).
        sizes: utterances per split, over DEFAULT_SIZES.
        splits: the splits to write.
        audio_format: flac or wav.
        jobs: processes synthesizing talks at once.

    Returns:
        `root`.
    """
    root = Path(root)
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    pairs = sentence_pairs(sizes)
    for split in splits:
        target = root / "en-de" / "data" / split
        if target.exists():
            shutil.rmtree(target)
        write_split(root, split, pairs[split], audio_format, jobs)
    return root


def checksums(root: str | Path, include_train: bool = False) -> dict[str, str]:
    """sha256 of every committed file under `root`; training files only with `include_train` (never committed)."""
    root = Path(root)
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "MANIFEST.sha256" and (include_train or "train" not in p.relative_to(root).parts)
    }


def write_manifest(root: str | Path) -> Path:
    """Write `root/MANIFEST.sha256` (sha256sum format) for the committed splits; returns its path."""
    root = Path(root)
    manifest = root / "MANIFEST.sha256"
    manifest.write_text("".join(f"{digest}  {name}\n" for name, digest in checksums(root).items()), encoding="utf-8")
    return manifest


def read_manifest(path: str | Path) -> dict[str, str]:
    """{relative path: sha256} from a MANIFEST.sha256 file."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return {name: digest for digest, name in (line.split("  ", 1) for line in lines if line.strip())}
