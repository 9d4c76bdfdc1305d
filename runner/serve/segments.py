"""Long uploads: audio longer than one segment is cut by Silero VAD and its segments decoded through the batcher.

Audio up to `SEGMENT_SECONDS` is decoded whole, as it always was (its translation is `Runner.translate`'s);
longer audio is cut as `runner.longform.segment` cuts a recording, and its segments join the decoder's queue a
batch at a time (`max_batch` of them), so one long request neither fills the queue nor holds more than
a segment's activations, and its segments share batches with each other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from runner.longform.recording import MIN_SECONDS, LongForm
from runner.longform.recording import Segment as LongSegment
from runner.longform.segment import SegmentOptions, Span, segment
from runner.serve.batching import Batcher, Decoded
from runner.serve.metrics import ServeMetrics
from runner.serve.upload import Audio

SEGMENT_SECONDS = SegmentOptions().max_seconds  # longer uploads are segmented


@dataclass(frozen=True)
class Decodes:
    """A request's decoded segments.

    Attributes:
        parts: each segment's span and its decode, in order (empty: no speech heard).
        segmented: whether the audio was cut (False: decoded whole, one part).
        segment_seconds: the VAD's wall time (0 when not cut).
        seconds: wall time from the first segment queued to the last decoded.
    """

    parts: list[tuple[Span, Decoded]]
    segmented: bool
    segment_seconds: float
    seconds: float

    @property
    def text(self) -> str:
        return " ".join(d.translation.text for _, d in self.parts if d.translation.text)

    @property
    def transcript(self) -> str | None:
        texts = [d.translation.source_text for _, d in self.parts]
        return None if any(t is None for t in texts) else " ".join(t for t in texts if t)

    def segments(self) -> list[dict[str, Any]]:
        """Each segment: id, start, end (seconds), translation and transcript."""
        return [segment_json(i, span, d) for i, (span, d) in enumerate(self.parts)]

    def long_form(self, duration: float) -> LongForm:
        """The request as `Runner.translate_long` gives a recording (for its subtitles)."""
        return LongForm([LongSegment(i, round(span.start, 3), round(span.end, 3), d.translation.text,
                                     d.translation.source_text) for i, (span, d) in enumerate(self.parts)],
                        duration, SegmentOptions(), self.segment_seconds, self.seconds)


def segment_json(index: int, span: Span, decoded: Decoded) -> dict[str, Any]:
    """One decoded segment as the API answers it: id, start, end (seconds), translation and transcript."""
    return {"id": index, "start": round(span.start, 3), "end": round(span.end, 3), "text": decoded.translation.text,
            "transcript": decoded.translation.source_text}


Parts = list[tuple[Span, Decoded]]


async def decode(batcher: Batcher, model: str, audio: Audio, gone: Callable[[], Awaitable[bool]],
                 metrics: ServeMetrics | None = None, on_parts: Callable[[Parts], None] | None = None) -> Decodes:
    """Decode `audio` for `model`: whole when it is one segment long, else cut by VAD and decoded by segments;
    each decode is recorded in `metrics`, and each batch of decoded parts passed to `on_parts` as it is ready.

    Raises:
        ApiError: as `Batcher.submit` does (queue full 503, client gone 400, a segment's own refusal).
    """
    started = time.perf_counter()
    if audio.seconds <= SEGMENT_SECONDS:
        decodes = Decodes([(Span(0.0, audio.seconds), await batcher.submit(model, audio, gone))], False, 0.0,
                          time.perf_counter() - started)
        if on_parts is not None:
            on_parts(decodes.parts)
    else:
        decodes = await _by_segments(batcher, model, audio, gone, on_parts)
    for _, decoded in decodes.parts if metrics is not None else ():
        metrics.translated(model, decoded.translation.seconds, decoded.queue_seconds, time.perf_counter() - started)
    return decodes


async def _by_segments(batcher: Batcher, model: str, audio: Audio, gone: Callable[[], Awaitable[bool]],
                       on_parts: Callable[[Parts], None] | None) -> Decodes:
    started = time.perf_counter()
    mono = audio.waveform.mean(axis=1)
    # On the decoder thread: the VAD's torch calls on any other thread would start a second OpenMP thread team,
    # and decoding on 2 cores then ran 3x slower for the rest of the process (a 9-minute request took 24.6 s, 8 s here)
    spans = [s for s in await batcher.run_on_decoder(lambda: segment(mono, audio.sample_rate))
             if s.seconds >= MIN_SECONDS]
    cut = time.perf_counter()
    parts: Parts = []
    step = max(1, batcher.limits.max_batch)
    for start in range(0, len(spans), step):
        group = spans[start:start + step]
        pieces = [replace(audio, waveform=audio.waveform[s.samples(audio.sample_rate)], seconds=s.seconds)
                  for s in group]
        done = list(zip(group, await asyncio.gather(*(batcher.submit(model, p, gone) for p in pieces))))
        parts += done
        if on_parts is not None:
            on_parts(done)
    return Decodes(parts, True, cut - started, time.perf_counter() - cut)
