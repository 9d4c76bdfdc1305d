"""A live session: audio pushed as it arrives, the current segment re-decoded every chunk, text committed by
LocalAgreement and never revised; `replay` feeds a recording through one as if it arrived in real time."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from runner.audio import to_mono_float
from runner.decode import Translation
from runner.errors import AudioTooShortError, OptionError, RunnerError
from runner.live.agreement import LocalAgreement

LEAD_SECONDS = 0.2  # a stream's first segment is cut to its speech only when this much silence precedes the VAD's
# padding: the demo model's translation of a clip moves with tens of milliseconds of leading silence (2-s chunks,
# n 2: 10 of 40 utterances changed, BLEU 84.13 -> 81.41), while half a second of a talk's lead made it invent words
SILENCE_DROP_SECONDS = 3.0  # a segment that is all silence this long is dropped, not decoded again and again


@dataclass(frozen=True)
class StreamOptions:
    """How a live session decodes.

    Attributes:
        chunk_seconds: new audio between two decodes of the current segment.
        agreement: LocalAgreement's n: how many consecutive hypotheses must share a prefix to commit it.
        max_segment_seconds: a segment this long is closed (its last hypothesis committed whole).
        endpoint_ms: a pause this long after speech closes the segment (Silero VAD); 0: only the maximum length
            closes one.
    """

    chunk_seconds: float = 1.0
    agreement: int = 2
    max_segment_seconds: float = 15.0
    endpoint_ms: int = 500

    def __post_init__(self) -> None:
        if not 0.05 <= self.chunk_seconds <= 30.0:
            raise OptionError("chunk_seconds", f"must be in [0.05, 30], got {self.chunk_seconds}")
        if self.agreement < 1:
            raise OptionError("agreement", f"must be 1 or more, got {self.agreement}")
        if not self.max_segment_seconds >= max(2.0, self.chunk_seconds):
            raise OptionError("max_segment_seconds", f"must be at least 2 s and one chunk, got {self.max_segment_seconds}")
        if self.endpoint_ms < 0:
            raise OptionError("endpoint_ms", f"must be 0 or more, got {self.endpoint_ms}")


@dataclass(frozen=True)
class StreamUpdate:
    """What one decode of a live session decided.

    Attributes:
        translation: newly committed translation text (an append-only delta; "" when nothing was committed).
        transcript: newly committed source transcript (multi-decoder models; "" otherwise).
        unstable_translation: the latest hypothesis beyond the committed words (shown apart; it may change).
        unstable_transcript: the same for the transcript.
        audio_seconds: the stream time (audio received so far) this decode saw.
        compute_seconds: how long the decode took.
        segment: the segment's index; final: the segment closed with this update.
        emitted_seconds: the stream time the update was ready (`replay` sets it: audio time plus the
            decoding that came before it); None live, where it is the wall clock's.
    """

    translation: str
    transcript: str
    unstable_translation: str
    unstable_transcript: str
    audio_seconds: float
    compute_seconds: float
    segment: int
    final: bool
    emitted_seconds: float | None = None


class StreamSession:
    """One live stream over an offline model (`Runner.stream`).

    Args:
        translate: decodes one mono float waveform at the rate given with it (a `Runner`'s `translate`, which
            resamples it to the model's; a server's bridge to its decoder queue).
        rate: the model's sample rate (the stream's until its first push says otherwise).
        options: chunking, agreement and segmentation.
        endpoints: where speech starts and its first stretch ends in a segment (`speech_bounds`'s contract);
            default Silero VAD.
    """

    def __init__(self, translate: Callable[[np.ndarray, int], Translation], rate: int,
                 options: StreamOptions = StreamOptions(),
                 endpoints: Callable[[np.ndarray, int, int], tuple[float, float] | None] | None = None) -> None:
        self._translate, self.rate, self.options = translate, rate, options
        self._endpoints = endpoints or speech_bounds
        self._buffer = np.zeros(0, dtype=np.float32)  # the current segment, at the stream's own rate
        self._source_rate: int | None = None  # the stream's rate (its first push's); decodes resample a segment whole
        self._decoded_samples = 0  # of the buffer, at the last decode
        self._received = 0  # samples of the whole stream
        self._segment = 0
        self._translation, self._transcript = LocalAgreement(options.agreement), LocalAgreement(options.agreement)
        self.translation: list[str] = []  # every committed word, all segments
        self.transcript: list[str] = []

    @property
    def _rate(self) -> int:
        """The stream's rate (the model's until the first push)."""
        return self._source_rate or self.rate

    @property
    def audio_seconds(self) -> float:
        """The stream time: seconds of audio received."""
        return self._received / self._rate

    def push(self, samples: np.ndarray, sample_rate: int) -> list[StreamUpdate]:
        """Add audio; decode the current segment once if a chunk of new audio has arrived since the last
        decode (however much arrived: a caller that fell behind gets one decode, not one per chunk).

        Raises:
            RunnerError: audio at another rate than the stream's first push, or malformed audio.
        """
        if self._source_rate is None:
            self._source_rate = sample_rate
        elif sample_rate != self._source_rate:
            raise RunnerError(f"stream audio: {sample_rate} Hz after {self._source_rate} Hz; a stream keeps one rate")
        audio = to_mono_float(samples, "stream audio") if len(samples) else np.zeros(0, dtype=np.float32)
        self._buffer = np.concatenate([self._buffer, audio.astype(np.float32, copy=False)])
        self._received += len(audio)
        if len(self._buffer) - self._decoded_samples < self.options.chunk_seconds * sample_rate:
            return []
        return self._step()

    def finish(self) -> list[StreamUpdate]:
        """The stream ended: every finished segment is closed, and what is left of the current one is decoded once
        more and committed whole (in pieces of at most `max_segment_seconds`, should one push have brought more)."""
        closed, speech = self._close_finished()
        if not speech:
            return closed
        limit = int(self.options.max_segment_seconds * self._rate)
        while len(self._buffer) > limit:
            closed.append(self._close(limit))
        return [*closed, self._close(len(self._buffer))] if len(self._buffer) else closed

    def _step(self) -> list[StreamUpdate]:
        """Close every segment the buffer has finished, then decode what is left once for LocalAgreement."""
        closed, speech = self._close_finished()
        if not speech:
            return closed
        translation, spent = self._decode(self._buffer)
        self._decoded_samples = len(self._buffer)
        if translation is None:
            return closed
        words = self._translation.update(translation.text.split())
        source = self._transcript.update((translation.source_text or "").split())
        return [*closed, self._update(words, source, spent, final=False)]

    def _close_finished(self) -> tuple[list[StreamUpdate], bool]:
        """Close the segments the buffer holds whole: each `max_segment_seconds` long, or (with `endpoint_ms`)
        ended by a pause; a segment after a cut starts where its speech does. Returns them, and whether speech is
        left."""
        rate, closed = self._rate, []
        while len(self._buffer):
            seconds = len(self._buffer) / rate
            if seconds >= self.options.max_segment_seconds:  # never a longer decode, however much one push brought
                closed.append(self._close(int(self.options.max_segment_seconds * rate)))
                continue
            if not self.options.endpoint_ms:
                return closed, True
            bounds = self._endpoints(self._buffer, rate, self.options.endpoint_ms)
            if bounds is None:  # no speech yet: nothing to decode (a model would make words of silence)
                if seconds >= SILENCE_DROP_SECONDS:
                    self._buffer, self._decoded_samples = np.zeros(0, dtype=np.float32), 0
                return closed, False
            start, end = bounds
            if start > 0 and self._decoded_samples == 0 and (self._segment or start >= LEAD_SECONDS):
                # a segment after a cut starts at its speech, not in the pause before it
                self._buffer = self._buffer[int(start * rate):]
                end = max(0.0, end - start) if end else 0.0
            if end == 0:
                return closed, True
            closed.append(self._close(int(end * rate)))
        return closed, False

    def _close(self, samples: int) -> StreamUpdate:
        """Decode the segment's first `samples`, commit its hypothesis whole, and start the next segment."""
        translation, spent = self._decode(self._buffer[:samples])
        words = self._translation.finish(translation.text.split()) if translation else []
        source = self._transcript.finish((translation.source_text or "").split()) if translation else []
        update = self._update(words, source, spent, final=True)
        self._buffer, self._decoded_samples = self._buffer[samples:], 0
        self._segment += 1
        self._translation, self._transcript = LocalAgreement(self.options.agreement), LocalAgreement(
            self.options.agreement)
        return update

    def _decode(self, audio: np.ndarray) -> tuple[Translation | None, float]:
        """The translation of a segment (at the stream's rate: the translator resamples it whole) and the seconds
        it took."""
        started = time.perf_counter()
        try:
            return self._translate(audio, self._rate), time.perf_counter() - started
        except AudioTooShortError:  # too little speech yet for the frontend or the encoder
            return None, time.perf_counter() - started

    def _update(self, words: list[str], source: list[str], spent: float, final: bool) -> StreamUpdate:
        self.translation += words
        self.transcript += source
        lead = " " if words and len(self.translation) > len(words) else ""
        source_lead = " " if source and len(self.transcript) > len(source) else ""
        return StreamUpdate(lead + " ".join(words), source_lead + " ".join(source),
                            "" if final else " ".join(self._translation.unstable()),
                            "" if final else " ".join(self._transcript.unstable()),
                            self.audio_seconds, spent, self._segment, final)


def speech_bounds(buffer: np.ndarray, rate: int, pause_ms: int) -> tuple[float, float] | None:
    """Where speech starts in `buffer` and where its first finished stretch ended, in seconds (Silero VAD, with
    padding): finished means a pause of at least `pause_ms` follows it (an end of 0.0: speech still going on).
    None when the buffer holds no speech at all.

    The first, not the last: a buffer checked once a chunk may hold a sentence, its pause and the start of the
    next, which must not be decoded as one segment."""
    from runner.longform.segment import SegmentOptions, segment

    padding = min(200, pause_ms // 2)
    spans = segment(buffer, rate, SegmentOptions("vad", max_seconds=max(2.0, len(buffer) / rate + 1.0),
                                                 min_silence_ms=pause_ms, padding_ms=padding))
    if not spans:
        return None
    start, end = spans[0].start, spans[0].end  # the padding is part of the pause
    if len(spans) > 1:  # the VAD split there: a pause of at least pause_ms follows the first
        return start, end
    return start, end if len(buffer) / rate - end >= (pause_ms - padding) / 1000 else 0.0


def replay(session: StreamSession, waveform: np.ndarray, rate: int,
           computation_aware: bool = True) -> list[StreamUpdate]:
    """Feed a recording through `session` as if it arrived in real time, a chunk at a time.

    Computation-aware (the default): the stream clock runs on while a decode runs, and the audio that arrived
    meanwhile goes to the next push at once, so a decoder slower than the audio skips updates instead of
    queueing them; each update's `emitted_seconds` is when it would have been shown. Otherwise every chunk
    is pushed alone and an update is emitted at the audio time it saw.
    """
    chunk = max(1, int(session.options.chunk_seconds * rate))
    position, clock, updates = 0, 0.0, []
    while position < len(waveform):
        arrived = position + chunk
        if computation_aware:
            arrived = max(arrived, int(clock * rate))
        arrived = min(arrived, len(waveform))
        clock = max(clock, arrived / rate)
        for update in session.push(waveform[position:arrived], rate):
            clock += update.compute_seconds if computation_aware else 0.0
            updates.append(replace(update, emitted_seconds=clock))
        position = arrived
    for update in session.finish():
        clock += update.compute_seconds if computation_aware else 0.0
        updates.append(replace(update, emitted_seconds=clock))
    return updates
