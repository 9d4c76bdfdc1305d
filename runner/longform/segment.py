"""Cutting a recording into the segments a speech-translation model decodes one at a time.

Three segmenters, as `--segmenter` names them:

- ``vad``: Silero VAD (the `silero-vad` package ships its weights; run here through ONNX Runtime on one
  thread, nothing downloaded) finds speech; a stretch longer than `max_seconds` is cut at its longest
  pause, as `silero_vad.get_speech_timestamps` does.
- ``fixed``: windows of `max_seconds`, back to back (a baseline that needs no model).
- ``yaml``: the data's own segmentation (MuST-C's YAML offsets); only data has it, so `segment` refuses it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from runner.audio import resample
from runner.errors import OptionError, RunnerError

SEGMENTERS = ("vad", "fixed", "yaml")
VAD_RATE = 16000  # Silero VAD runs at 8 or 16 kHz; other rates are resampled for it alone
VAD_FRAME = 512  # samples of one Silero VAD decision at VAD_RATE


@dataclass(frozen=True)
class SegmentOptions:
    """How `segment` cuts a recording.

    Attributes:
        segmenter: vad, fixed or yaml (see the module's docstring).
        max_seconds: the longest segment (default 20 s, a length the demo and MuST-C models decode well).
        min_silence_ms: a pause at least this long ends a speech segment (vad).
        padding_ms: speech padding kept on both sides of a segment (vad). 200 ms was chosen on demo dev's first 40
            segments (BLEU 88.5 at 100 ms, 91.5 at 200, 85.3 at 300, 79.2 at 500; 91.8 with the given segments).
        threshold: the VAD's speech probability threshold.
    """

    segmenter: str = "vad"
    max_seconds: float = 20.0
    min_silence_ms: int = 300
    padding_ms: int = 200
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.segmenter not in SEGMENTERS:
            raise OptionError("segmenter", f"unknown segmenter {self.segmenter!r}; one of {', '.join(SEGMENTERS)}")
        if not self.max_seconds > 1.0:
            raise OptionError("max_seconds", f"must be over 1 second, got {self.max_seconds}")
        for name in ("min_silence_ms", "padding_ms"):
            if getattr(self, name) < 0:
                raise OptionError(name, f"must be 0 or more, got {getattr(self, name)}")
        if not 0.0 < self.threshold < 1.0:
            raise OptionError("threshold", f"must be in (0, 1), got {self.threshold}")


@dataclass(frozen=True)
class Span:
    """A stretch of a recording, in seconds from its start."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def samples(self, rate: int) -> slice:
        """The span's samples at `rate`."""
        return slice(int(round(self.start * rate)), int(round(self.end * rate)))


@functools.cache
def _silero() -> tuple[Any, Any]:
    """Silero VAD's ONNX model and its `get_speech_timestamps`."""
    # silero_vad's model module sets torch's intra-op threads to 1 when imported: a library must not leave that
    saved = torch.get_num_threads()
    try:
        from silero_vad import get_speech_timestamps, load_silero_vad

        return load_silero_vad(onnx=True), get_speech_timestamps
    finally:
        torch.set_num_threads(saved)


def segment(waveform: np.ndarray, rate: int, options: SegmentOptions = SegmentOptions()) -> list[Span]:
    """Cut a mono float waveform into spans to decode.

    Args:
        waveform: mono float samples in [-1, 1].
        rate: their sample rate.
        options: the segmenter and its settings.

    Returns:
        The spans in order, none longer than `options.max_seconds` (plus padding); empty when the VAD
        hears no speech.

    Raises:
        RunnerError: the `yaml` segmenter (the data's own segmentation, not the recording's).
    """
    duration = len(waveform) / rate
    if options.segmenter == "yaml":
        raise RunnerError("--segmenter yaml: a recording has no segmentation of its own (use vad or fixed)")
    if options.segmenter == "fixed":
        starts = np.arange(0.0, duration, options.max_seconds)
        return [Span(float(s), float(min(s + options.max_seconds, duration))) for s in starts]
    return _speech_spans(waveform, rate, options)


def _speech_spans(waveform: np.ndarray, rate: int, options: SegmentOptions) -> list[Span]:
    model, get_speech_timestamps = _silero()
    audio = resample(waveform, rate, VAD_RATE) if rate != VAD_RATE else waveform
    model.reset_states()
    stamps = get_speech_timestamps(
        torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), model, threshold=options.threshold,
        sampling_rate=VAD_RATE, min_silence_duration_ms=options.min_silence_ms, speech_pad_ms=options.padding_ms,
        max_speech_duration_s=options.max_seconds)
    return [Span(stamp["start"] / VAD_RATE, stamp["end"] / VAD_RATE) for stamp in stamps]


BLOCK_SECONDS = 300.0  # of a file read at once by `file_spans`: 19 MB of 16 kHz float32, whatever the file's length
CONTEXT_SECONDS = 10.0  # read again before a window's first span: the VAD's recurrent state needs it (1 s and 3 s
# moved span ends by up to 180 and 30 ms on the demo talks; 8 s gave the whole read's spans)


def file_spans(path: Any, rate: int, options: SegmentOptions = SegmentOptions(),
               block_seconds: float = BLOCK_SECONDS) -> Iterator[tuple[Span, np.ndarray]]:
    """The spans of an audio file and their samples at `rate`, reading it `block_seconds` at a time.

    Each window read starts `CONTEXT_SECONDS` before the first span the last window had not finished (a span
    is finished when a pause that ends it lies inside the window, or the file ends) and runs one block further,
    on the VAD's frame grid; spans of the context, given before, are not given again. So the spans are the ones
    `segment` finds in the whole recording (equal on the demo talks), and memory holds one window: a block,
    one span and the context, whatever the file's length.

    Raises:
        RunnerError: an unreadable file, or audio `check_format`/`check_samples` refuse.
    """
    from runner.audio import audio_info, read_audio

    if block_seconds < 3 * options.max_seconds:
        raise OptionError("block_seconds", f"must be at least 3 segments ({3 * options.max_seconds:g} s), "
                                           f"got {block_seconds}")
    file_rate, frames = audio_info(path)
    margin = (options.min_silence_ms + options.padding_ms) / 1000 + 0.1  # a pause this close to the end may go on
    grid = max(1, round(VAD_FRAME * file_rate / VAD_RATE))  # windows start on the VAD's frames
    start, done = 0, 0.0  # the window's first sample; where the last span given ended (seconds)
    while start < frames:
        count = min(frames - start, int((block_seconds + options.max_seconds + CONTEXT_SECONDS) * file_rate))
        waveform, _ = read_audio(path, start, count)
        audio = resample(waveform, file_rate, rate, path)
        last, length, offset = start + count >= frames, len(audio) / rate, start / file_rate
        spans = [s for s in segment(audio, rate, options) if offset + s.end > done + 0.05]  # the context's: given
        finished = [s for s in spans if last or s.end <= length - margin]
        for span in finished:
            begin = max(offset + span.start, done)
            yield Span(begin, offset + span.end), audio[Span(begin - offset, span.end).samples(rate)]
            done = offset + span.end
        if last:
            return
        rest = [s for s in spans if s not in finished]
        resume = (rest[0].start if rest else length - margin) - CONTEXT_SECONDS
        start += max(int(resume * file_rate) // grid * grid, grid)
