"""IWSLT-style evaluation: whole talks, segmented automatically, re-aligned to the reference segments.

The IWSLT offline task scores a system on each talk's whole audio with its own segmentation: the
translations of a talk are joined and cut again into the reference's segments by minimum-WER
resegmentation (mwerSegmenter; here its maintained reimplementation `mweralign`), then scored with
sacrebleu as usual. `evaluate_talks` does that for a MuST-C split: a talk is one audio file of its YAML.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from runner.audio import read_audio
from runner.data import TestSet
from runner.errors import RunnerError
from runner.longform.recording import Translator, translate_long
from runner.metrics.bleu import CorpusScore, corpus_bleu
from runner.longform.segment import SegmentOptions


@dataclass(frozen=True)
class TalkScore:
    """BLEU of whole talks decoded with automatic segmentation and re-aligned to the references.

    Attributes:
        bleu: sacrebleu's corpus BLEU of the re-aligned hypotheses (with its signature).
        segmentation: how the talks were cut (`SegmentOptions` as a dict).
        alignment: the re-alignment and its version.
        talks: talks decoded; references: reference segments; segments: segments the segmenter made.
        audio_seconds, segment_seconds, decode_seconds: the talks' length, the segmentation's wall time
            (the VAD's cost) and the decoding's.
        hypotheses: re-aligned hypotheses, one per reference segment, in the split's order.
        conditions: the runner's run conditions.
    """

    bleu: CorpusScore
    segmentation: dict[str, Any]
    alignment: str
    talks: int
    references: int
    segments: int
    audio_seconds: float
    segment_seconds: float
    decode_seconds: float
    hypotheses: list[str] = field(repr=False)
    conditions: dict[str, Any] = field(default_factory=dict, repr=False)

    def format(self) -> str:
        """The terminal report."""
        cut = self.segmentation
        return (f"BLEU {self.bleu.score:.2f} on {self.talks} whole talks ({self.audio_seconds:.1f} s), "
                f"segmenter {cut['segmenter']} (max {cut['max_seconds']:g} s, min silence {cut['min_silence_ms']} ms, "
                f"padding {cut['padding_ms']} ms): {self.segments} segments, re-aligned to {self.references} "
                f"reference segments by {self.alignment}\n{self.bleu.signature}\n"
                f"segmentation {self.segment_seconds:.2f} s, decoding {self.decode_seconds:.2f} s")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bleu": asdict(self.bleu)}


def talks(test_set: TestSet) -> dict[Path, list[int]]:
    """Each talk's audio file and the positions of its reference segments, in the split's order.

    Raises:
        RunnerError: a split whose segments do not come from whole-talk files (a Kaldi data dir of cut files).
    """
    grouped: dict[Path, list[int]] = {}
    for index, segment in enumerate(test_set.segments):
        if segment.frames < 0:
            raise RunnerError(f"{test_set.path}: segment '{segment.id}' is a whole file, not a cut of a talk; "
                              "--segmenter vad needs talks with their reference segmentation (MuST-C YAML)")
        grouped.setdefault(segment.audio_path, []).append(index)
    return grouped


def realign(references: list[str], hypothesis: str) -> list[str]:
    """`hypothesis` (a whole talk's translation) cut into one line per reference segment by mweralign."""
    import mweralign

    if not hypothesis.strip():
        return [""] * len(references)
    lines = mweralign.align_texts("\n".join(r.replace("\n", " ") for r in references), hypothesis).split("\n")
    if len(lines) != len(references):
        raise RunnerError(f"mweralign gave {len(lines)} segments for {len(references)} references")
    return [line.strip() for line in lines]


def evaluate_talks(runner: Translator, test_set: TestSet, options: SegmentOptions = SegmentOptions(),
                   batch_size: int = 8, progress: Callable[[Iterable], Iterable] | None = None) -> TalkScore:
    """Decode every talk of `test_set` whole with `options`' segmentation and score it IWSLT-style.

    Args:
        runner: the runner that decodes (`Runner`).
        test_set: a split whose segments are cuts of talks (MuST-C).
        options: the segmenter (vad by default).
        batch_size: segments per beam search where the engine batches.
        progress: wraps the talks (e.g. a progress bar).

    Returns:
        The re-aligned BLEU with the segmentation, the alignment and the time each stage took.
    """
    grouped = talks(test_set)
    hypotheses = [""] * len(test_set.segments)
    audio = cut = decode = 0.0
    segments = 0
    for path in (progress(list(grouped)) if progress else grouped):
        waveform, rate = read_audio(path)
        talk = translate_long(runner, waveform, rate, options, batch_size)
        positions = grouped[path]
        for index, line in zip(positions, realign([test_set.segments[i].reference for i in positions], talk.text)):
            hypotheses[index] = line
        audio, cut, decode = audio + talk.duration, cut + talk.segment_seconds, decode + talk.decode_seconds
        segments += len(talk.segments)
    references = [s.reference for s in test_set.segments]
    return TalkScore(corpus_bleu(hypotheses, references), asdict(options), f"mweralign {version('mweralign')}",
                     len(grouped), len(references), segments, audio, cut, decode, hypotheses,
                     runner.conditions(warmup=0, batch_size=batch_size).to_dict())
