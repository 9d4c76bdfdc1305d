"""Test sets: MuST-C releases and ESPnet/Kaldi data directories, subset selection, preloading.

A `Segment` says where an utterance's audio lies and what its references are; an
`Utterance` is a segment whose samples are already in memory at the model's rate,
so that nothing but the model is timed.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml

from runner.audio import audio_info, read_audio, resample
from runner.errors import RunnerError
from runner.yamlio import read_utf8, read_yaml

_YamlLoader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)
_PAIR = re.compile(r"^([a-z]{2,3})-([a-z]{2,3})$")


@dataclass(frozen=True)
class Segment:
    id: str
    audio_path: Path
    start: int  # first sample, at the file's own rate
    frames: int  # number of samples, at the file's own rate; -1 for the whole file
    sample_rate: int
    reference: str
    source: str | None = None
    speaker: str | None = None


@dataclass
class TestSet:
    """The segments of one split, in corpus order, and where they came from."""

    path: Path
    split: str
    format: str  # "mustc" or "kaldi"
    segments: list[Segment]
    source_lang: str | None = None
    target_lang: str | None = None

    def for_task(self, task: str) -> TestSet:
        """The set as a model trained for `task` is measured on it: for "asr" (`runner.tasks`), its references
        are the source transcripts and its target language the source's; for "st", itself.

        Raises:
            RunnerError: an ASR model on a set without source transcripts.
        """
        if task != "asr":
            return self
        missing = [segment.id for segment in self.segments if segment.source is None]
        if missing:
            raise RunnerError(f"{self.path}: an ASR model is measured against source transcripts, and "
                              f"{len(missing)} segment(s) of {self.split} have none (first: {missing[0]})")
        segments = [replace(segment, reference=segment.source) for segment in self.segments]
        return replace(self, segments=segments, target_lang=self.source_lang)


@dataclass
class Utterance:
    segment: Segment
    waveform: np.ndarray  # mono float32 at `sample_rate`
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.waveform) / self.sample_rate


@dataclass
class PreloadedSet:
    test_set: TestSet
    utterances: list[Utterance]
    indices: list[int]  # positions of the selected segments in the split
    seed: int | None
    memory_bytes: int = 0
    content_hash: str = field(default="")

    @property
    def audio_seconds(self) -> float:
        return sum(u.seconds for u in self.utterances)

    def part(self, start: int, stop: int) -> PreloadedSet:
        """Utterances [start, stop) as a set of their own (a shard, or the finished part of a run)."""
        utterances = self.utterances[start:stop]
        return PreloadedSet(self.test_set, utterances, self.indices[start:stop], self.seed,
                            sum(u.waveform.nbytes for u in utterances), content_hash(utterances))


def content_hash(utterances: Sequence[Utterance]) -> str:
    """What a figure was measured on: ids, references and the exact samples decoded."""
    digest = hashlib.sha256()
    for utterance in utterances:
        digest.update(utterance.segment.id.encode() + b"\0" + utterance.segment.reference.encode() + b"\0")
        digest.update(utterance.waveform.tobytes())
    return digest.hexdigest()[:16]


def load_test_set(path: str | Path, split: str = "tst-COMMON", text: str | None = None) -> TestSet:
    """A MuST-C release (any of its roots) or an ESPnet/Kaldi data directory at `path`."""
    root = Path(path)
    if not root.exists():
        raise RunnerError(f"{root}: data path not found")
    if (root / "wav.scp").is_file():
        return read_kaldi_dir(root, text)
    return read_mustc(root, split)


def find_mustc_split(root: Path, split: str) -> tuple[Path, str | None, str | None]:
    """The `<pair>/data/<split>` directory under any MuST-C root the user may point at."""
    candidates = [root / split, root / "data" / split]
    candidates += sorted(p / "data" / split for p in root.glob("*-*") if _PAIR.match(p.name))
    found = [c for c in candidates if (c / "txt").is_dir()]
    if not found:
        raise RunnerError(
            f"{root}: no MuST-C split '{split}' (expected <pair>/data/{split}/txt and wav/) and no wav.scp"
        )
    if len(found) > 1:
        names = ", ".join(str(f) for f in found)
        raise RunnerError(f"{root}: several language pairs hold '{split}' ({names}); point --data at one")
    split_dir = found[0]
    pair = _PAIR.match(split_dir.parent.parent.name)
    return split_dir, (pair.group(1) if pair else None), (pair.group(2) if pair else None)


def read_mustc(root: Path, split: str) -> TestSet:
    split_dir, src, tgt = find_mustc_split(root, split)
    txt = split_dir / "txt"
    yaml_path = txt / f"{split}.yaml"
    if not yaml_path.is_file():
        raise RunnerError(f"{yaml_path}: segment list not found")
    if src is None or tgt is None:
        src, tgt = _languages_from_files(txt, split)
    entries = _read_segment_yaml(yaml_path)
    targets = _read_lines(txt / f"{split}.{tgt}")
    sources = _read_lines(txt / f"{split}.{src}")
    counts = {yaml_path.name: len(entries), f"{split}.{src}": len(sources), f"{split}.{tgt}": len(targets)}
    if len(set(counts.values())) != 1:
        listed = ", ".join(f"{name} {n}" for name, n in counts.items())
        raise RunnerError(f"{txt}: line counts differ ({listed})")
    if not entries:
        raise RunnerError(f"{yaml_path}: split '{split}' is empty")

    segments: list[Segment] = []
    infos: dict[str, tuple[int, int]] = {}
    for line, (entry, source, target) in enumerate(zip(entries, sources, targets), start=1):
        try:
            wav_name, offset, duration = entry["wav"], float(entry["offset"]), float(entry["duration"])
            if not (math.isfinite(offset) and math.isfinite(duration)):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise RunnerError(f"{yaml_path}:{line}: entry needs wav, and finite offset and duration (seconds), "
                              f"got {str(entry)[:200]}") from None
        wav_path = split_dir / "wav" / wav_name
        if wav_name not in infos:
            infos[wav_name] = audio_info(wav_path)
        rate, total = infos[wav_name]
        start, frames = round(offset * rate), round(duration * rate)
        if frames <= 0 or start < 0 or start + frames > total:
            raise RunnerError(
                f"{yaml_path}:{line}: segment {offset:.3f}s+{duration:.3f}s lies outside {wav_path} "
                f"({total / rate:.3f}s)"
            )
        end_ms = round((offset + duration) * 1000)
        segments.append(
            Segment(
                id=f"{Path(wav_name).stem}_{round(offset * 1000):07d}_{end_ms:07d}",
                audio_path=wav_path,
                start=start,
                frames=frames,
                sample_rate=rate,
                reference=target,
                source=source,
                speaker=entry.get("speaker_id"),
            )
        )
    return TestSet(root, split, "mustc", segments, src, tgt)


def _languages_from_files(txt: Path, split: str) -> tuple[str, str]:
    suffixes = sorted(p.suffix[1:] for p in txt.glob(f"{split}.*") if p.suffix != ".yaml")
    if len(suffixes) != 2:
        raise RunnerError(f"{txt}: cannot tell source and target text files apart ({suffixes})")
    src = "en" if "en" in suffixes else suffixes[0]
    return src, next(s for s in suffixes if s != src)


def _read_segment_yaml(path: Path) -> list[dict]:
    entries = read_yaml(path, "segment list", loader=_YamlLoader)  # all strings, as fairseq's prep reads it
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise RunnerError(f"{path}: expected a list of segments, got {type(entries).__name__}")
    return entries


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise RunnerError(f"{path}: text file not found")
    return read_utf8(path, "text file").rstrip("\n").split("\n") if path.stat().st_size else []


def _read_table(path: Path) -> dict[str, str]:
    """Kaldi `key value...` lines, keeping order."""
    table: dict[str, str] = {}
    for line in _read_lines(path):
        if line.strip():
            key, _, value = line.strip().partition(" ")
            table[key] = value.strip()
    return table


def _read_segments(path: Path) -> dict[str, tuple[str, float, float]]:
    """Kaldi `segments`: `utt recording start end` per line (seconds; end -1 means the recording's end)."""
    cuts: dict[str, tuple[str, float, float]] = {}
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 4:
                raise ValueError
            utt, rec, start, end = fields[0], fields[1], float(fields[2]), float(fields[3])
            if not (math.isfinite(start) and math.isfinite(end)):
                raise ValueError
        except ValueError:
            raise RunnerError(f"{path}:{number}: expected 'utterance recording start end' (seconds), "
                              f"got {line.strip()!r}") from None
        if start < 0 or (end >= 0 and end <= start):
            raise RunnerError(f"{path}:{number}: segment '{utt}' has start {start:g} s and end {end:g} s")
        cuts[utt] = (rec, start, end)
    return cuts


REFERENCE_NAMES = ("text.tc.de", "text.tc", "text")
SOURCE_NAMES = ("text.lc.rm.en", "text.tc.en", "text.lc.en", "text.en")


def read_kaldi_dir(root: Path, text: str | None = None) -> TestSet:
    """An ESPnet/Kaldi data directory: wav.scp, optional segments, and a reference text file."""
    if text is not None:
        reference_path = root / text
        if not reference_path.is_file():
            raise RunnerError(f"{reference_path}: reference text file not found")
    else:
        found = [root / name for name in REFERENCE_NAMES if (root / name).is_file()]
        found += sorted(p for p in root.glob("text.tc.*") if p not in found and not p.name.endswith(".en"))
        if not found:
            raise RunnerError(f"{root}: no reference text ({', '.join(REFERENCE_NAMES)}); name one with --text")
        reference_path = found[0]
    references = _read_table(reference_path)
    source_path = next((root / n for n in SOURCE_NAMES if (root / n).is_file()), None)
    sources = _read_table(source_path) if source_path else {}
    recordings = _read_table(root / "wav.scp")
    for key, location in recordings.items():
        if location.endswith("|"):
            raise RunnerError(f"{root / 'wav.scp'}: '{key}' is a pipe command; give audio file paths")
    if (root / "segments").is_file():
        cuts = _read_segments(root / "segments")
    else:
        cuts = {utt: (utt, 0.0, -1.0) for utt in recordings}

    segments: list[Segment] = []
    infos: dict[str, tuple[int, int]] = {}
    for utt, (rec, start_s, end_s) in cuts.items():
        if rec not in recordings:
            raise RunnerError(f"{root / 'segments'}: recording '{rec}' of '{utt}' is not in wav.scp")
        if utt not in references:
            raise RunnerError(f"{reference_path}: no reference for utterance '{utt}'")
        wav_path = Path(recordings[rec])
        if not wav_path.is_absolute():
            wav_path = wav_path if wav_path.exists() else root / wav_path
        if rec not in infos:
            infos[rec] = audio_info(wav_path)
        rate, total = infos[rec]
        start = round(start_s * rate)
        frames = total - start if end_s < 0 else round(end_s * rate) - start
        if frames <= 0 or start + frames > total:
            raise RunnerError(f"{root / 'segments'}: '{utt}' lies outside {wav_path}")
        segments.append(Segment(utt, wav_path, start, frames, rate, references[utt], sources.get(utt)))
    if not segments:
        raise RunnerError(f"{root / 'wav.scp'}: data directory is empty")
    target = reference_path.name.rsplit(".", 1)[-1] if reference_path.name.count(".") else None
    return TestSet(root, root.name, "kaldi", segments, "en" if sources else None, target)


def select(count: int, limit: int | None, seed: int | None) -> list[int]:
    """Indices of the test subset: the first `limit`, or `limit` drawn with `seed` (kept in corpus order)."""
    if limit is None or limit >= count:
        return list(range(count))
    if limit <= 0:
        raise RunnerError(f"--limit must be positive, got {limit}")
    if seed is None:
        return list(range(limit))
    return sorted(random.Random(seed).sample(range(count), limit))


def preload(
    test_set: TestSet,
    sample_rate: int,
    limit: int | None = None,
    seed: int | None = None,
    exclude_ids: Iterable[str] = (),
    progress: Callable[[Iterable], Iterable] | None = None,
    part: tuple[int, int] | None = None,
) -> PreloadedSet:
    """Read every selected segment (or the selection's `part` [start, stop)) into memory at `sample_rate`."""
    excluded = set(exclude_ids)
    pool = [i for i, s in enumerate(test_set.segments) if s.id not in excluded]
    indices = [pool[i] for i in select(len(pool), limit, seed)]
    if part is not None:
        indices = indices[part[0]:part[1]]
    chosen = [test_set.segments[i] for i in indices]
    iterator = progress(chosen) if progress else chosen
    utterances = []
    for segment in iterator:
        waveform, rate = read_audio(segment.audio_path, segment.start, segment.frames)
        if segment.frames >= 0 and len(waveform) != segment.frames:
            raise RunnerError(f"{segment.audio_path}: ends early, segment '{segment.id}' is cut short")
        waveform = resample(waveform, rate, sample_rate, segment.audio_path)
        utterances.append(Utterance(segment, waveform, sample_rate))
    memory = sum(u.waveform.nbytes for u in utterances)
    return PreloadedSet(test_set, utterances, indices, seed, memory, content_hash(utterances))
