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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from runner.audio import resample
from runner.errors import OptionError, RunnerError

SEGMENTERS = ("vad", "fixed", "yaml")
VAD_RATE = 16000  # Silero VAD runs at 8 or 16 kHz; other rates are resampled for it alone


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
