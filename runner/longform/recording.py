"""Whole recordings: segment, translate the segments (in batches where the engine batches), write subtitles.

    result = Runner(search="lean").translate_long(waveform, 16000)
    Path("talk.srt").write_text(result.subtitles("srt"))

Subtitles go through `pysubs2` (SRT and WebVTT timing and escaping done by a library, not here).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from runner.audio import audio_info, resample, to_mono_float
from runner.errors import RunnerError
from runner.pipeline import batch_ready
from runner.longform.segment import BLOCK_SECONDS, SegmentOptions, Span, file_spans, segment

FORMATS = ("json", "srt", "vtt", "txt")
MIN_SECONDS = 0.25  # Silero VAD's shortest speech; a shorter fixed-window tail is silence or a breath


class Translator(Protocol):
    """What `translate_long` needs of a runner (`runner.Runner` is one)."""

    sample_rate: int
    bundle: Any

    def translate(self, waveform: np.ndarray, sample_rate: int) -> Any: ...

    def translate_batch(self, waveforms: list[np.ndarray], sample_rate: int) -> list[Any]: ...

    def conditions(self, warmup: int = 1, batch_size: int = 1) -> Any: ...


@dataclass(frozen=True)
class Segment:
    """One translated segment of a recording.

    Attributes:
        id: its index in the recording.
        start, end: seconds from the recording's start.
        text: the translation.
        source_text: the transcript (a multi-decoder model's ASR output), else None.
    """

    id: int
    start: float
    end: float
    text: str
    source_text: str | None


@dataclass(frozen=True)
class LongForm:
    """A translated recording, with the options it ran with.

    Attributes:
        segments: the translated segments, in order (empty: no speech heard).
        duration: the recording's length in seconds.
        options: how it was segmented.
        segment_seconds: wall time of the segmentation (the VAD's cost, reported apart).
        decode_seconds: wall time of decoding every segment.
        batch_size: segments per beam search.
    """

    segments: list[Segment]
    duration: float
    options: SegmentOptions
    segment_seconds: float
    decode_seconds: float
    batch_size: int = 1
    conditions: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The whole translation, segments joined by spaces."""
        return " ".join(s.text for s in self.segments if s.text)

    def to_dict(self) -> dict[str, Any]:
        return {"duration": self.duration, "segmenter": asdict(self.options), "segment_seconds": self.segment_seconds,
                "decode_seconds": self.decode_seconds, "batch_size": self.batch_size, "conditions": self.conditions,
                "text": self.text, "segments": [asdict(s) for s in self.segments]}

    def subtitles(self, fmt: str, source: bool = False) -> str:
        """The recording as `fmt` (json, srt, vtt or txt): translations, or transcripts with `source`.

        Raises:
            RunnerError: an unknown format.
        """
        if fmt not in FORMATS:
            raise RunnerError(f"--out-format: unknown format {fmt!r}; one of {', '.join(FORMATS)}")
        if fmt == "json":
            return json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n"
        texts = [(s, (s.source_text or "") if source else s.text) for s in self.segments]
        if fmt == "txt":
            return "".join(f"{text}\n" for _, text in texts)
        import pysubs2

        subs = pysubs2.SSAFile()
        for item, text in texts:
            subs.append(pysubs2.SSAEvent(start=pysubs2.make_time(s=item.start), end=pysubs2.make_time(s=item.end),
                                         text=text.replace("\n", " ")))
        return subs.to_string(fmt)


def translate_long(runner: Translator, waveform: np.ndarray | torch.Tensor, sample_rate: int,
                   options: SegmentOptions = SegmentOptions(), batch_size: int = 8,
                   progress: Callable[[Iterable], Iterable] | None = None) -> LongForm:
    """Translate a recording of any length: segment it, then decode the segments.

    Args:
        runner: the runner that decodes.
        waveform: the recording, in any layout and number format `Runner.translate` takes.
        sample_rate: its rate (resampled once to the model's).
        options: the segmenter (vad by default; `yaml` is data's, not a recording's).
        batch_size: segments per beam search where the runner's engine batches (lean, onnxruntime);
            one at a time otherwise.
        progress: wraps the batches (e.g. a progress bar).

    Returns:
        The segments with their times, translations and transcripts, and the time each stage took.

    Raises:
        RunnerError: malformed audio, or the `yaml` segmenter.
    """
    audio = resample(to_mono_float(waveform), sample_rate, runner.sample_rate)
    if audio.size == 0:
        raise RunnerError("waveform: empty audio")
    started = time.perf_counter()
    spans = [s for s in segment(audio, runner.sample_rate, options) if s.seconds >= MIN_SECONDS]
    cut = time.perf_counter() - started
    pieces = [(span, audio[span.samples(runner.sample_rate)]) for span in spans]
    segments, decoding, batch = _decode(runner, pieces, batch_size, progress)
    return LongForm(segments, len(audio) / runner.sample_rate, options, cut, decoding, batch,
                    runner.conditions(warmup=0, batch_size=batch).to_dict())


def translate_file(runner: Translator, path: str | Path, options: SegmentOptions = SegmentOptions(), batch_size: int = 8,
                   progress: Callable[[Iterable], Iterable] | None = None,
                   block_seconds: float | None = None) -> LongForm:
    """Translate an audio file of any length read as a stream: `block_seconds` of it at a time are segmented
    (`segment.file_spans`) and their segments decoded as they come, so memory holds one block, not the file.

    Args and Returns: as `translate_long`'s; `progress` wraps the segments; `block_seconds` defaults to
    `BLOCK_SECONDS` or three of the longest segments, whichever is longer.

    Raises:
        RunnerError: an unreadable or malformed file, or the `yaml` segmenter.
    """
    path = Path(path)
    rate, frames = audio_info(path)
    if frames == 0:
        raise RunnerError(f"{path}: empty audio")
    cut = 0.0  # the segmentation's seconds, summed between the decodes

    def pieces() -> Iterator[tuple[Span, np.ndarray]]:
        nonlocal cut
        spans = file_spans(path, runner.sample_rate, options,
                           block_seconds or max(BLOCK_SECONDS, 3 * options.max_seconds))
        while True:
            started = time.perf_counter()
            item = next(spans, None)
            cut += time.perf_counter() - started
            if item is None:
                return
            if item[0].seconds >= MIN_SECONDS:
                yield item

    segments, decoding, batch = _decode(runner, pieces(), batch_size, progress)
    return LongForm(segments, frames / rate, options, cut, decoding, batch,
                    runner.conditions(warmup=0, batch_size=batch).to_dict())


def _decode(runner: Translator, pieces: Iterable[tuple[Span, np.ndarray]], batch_size: int,
            progress: Callable[[Iterable], Iterable] | None) -> tuple[list[Segment], float, int]:
    """Decode (span, samples) pairs in batches as they come: the segments, the decoding's seconds and the batch
    size used."""
    batch = batch_size if batch_size > 1 and batch_ready(runner.bundle.speech2text) is None else 1
    segments: list[Segment] = []
    decoding = 0.0
    for group in _groups(progress(pieces) if progress else pieces, batch):
        started = time.perf_counter()
        samples = [piece for _, piece in group]
        done = (runner.translate_batch(samples, runner.sample_rate) if batch > 1
                else [runner.translate(samples[0], runner.sample_rate)])
        decoding += time.perf_counter() - started
        segments += [_segment(len(segments) + i, span, t) for i, ((span, _), t) in enumerate(zip(group, done))]
    return segments, decoding, batch


def _groups(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    group: list[Any] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _segment(index: int, span: Span, translation: Any) -> Segment:
    return Segment(index, round(span.start, 3), round(span.end, 3), translation.text, translation.source_text)
