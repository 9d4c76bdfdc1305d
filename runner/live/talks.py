"""Simultaneous translation of whole talks, measured as long-form systems are: each talk's audio replayed through
one live session (its segments cut by the session's own VAD end-points or maximum length), the committed words
re-segmented to the reference segments by OmniSTEval's aligner (SoftSegmenter), then BLEU of the re-segmented
text and the long-form latency metrics, StreamLAAL (LAAL over re-segmented words) and long-form YAAL, both
computation-unaware and -aware.

The offline figure beside them is the same runner's offline translation of each talk (`translate_long`, Silero
VAD) re-segmented by the same aligner, so the two differ only in being simultaneous.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from runner.audio import read_audio
from runner.live.evaluate import Emitted, SimultaneousResult, replay_twice, replay_utterance, result
from runner.live.session import StreamOptions
from runner.longform.iwslt import talks

if TYPE_CHECKING:
    from runner.data import TestSet
    from runner.runner import Runner

WARMUP_SECONDS = 4.0  # of the first talk, replayed once untimed so no timed decode is a first call


def evaluate_talks_simultaneous(runner: Runner, test_set: TestSet, options: StreamOptions = StreamOptions(),
                                progress: Callable[[Iterable], Iterable] | None = None) -> SimultaneousResult:
    """Replay every talk of `test_set` whole through a live session and score it long-form.

    Args:
        runner: the runner whose sessions decode (`Runner.stream`).
        test_set: a split whose segments are cuts of talks (MuST-C YAML).
        options: the sessions' chunking, agreement and segmentation (`endpoint_ms` 0: segments of
            `max_segment_seconds` only).
        progress: wraps the talks (e.g. a progress bar).

    Returns:
        BLEU of the re-segmented committed text (computation-unaware replay; and as served), the offline BLEU of
        the same talks, StreamLAAL and long-form YAAL (computation-unaware and -aware), per talk its emissions.

    Raises:
        RunnerError: a split without whole-talk audio.
    """
    grouped = talks(test_set)
    segments = [[test_set.segments[i] for i in positions] for positions in grouped.values()]
    first = next(iter(grouped), None)
    if first is not None:
        waveform, rate = read_audio(first)
        replay_utterance(runner, waveform[:int(WARMUP_SECONDS * rate)], rate, options)
    replayed, offline, pairs = [], [], list(zip(grouped, segments))
    for path, talk in (progress(pairs) if progress else pairs):
        waveform, rate = read_audio(path)
        replayed.append(replay_twice(runner, path.name, " ".join(s.reference for s in talk), waveform, rate, options))
        offline.append(runner.translate_long(waveform, rate).text)
    return score_talks(replayed, offline, segments, options, runner.conditions(warmup=1))


def score_talks(replayed: list[Emitted], offline: list[str], segments: list[list[Any]], options: StreamOptions,
                conditions: Any) -> SimultaneousResult:
    """Re-segment each talk's committed words to its reference segments (OmniSTEval) and score them.

    Args:
        replayed: per talk, its two replays.
        offline: per talk, its offline translation.
        segments: per talk, its reference segments (`runner.data.Segment`: start, frames, rate, reference).
        options: the sessions' options; conditions: the runner's run conditions.
    """
    unaware = _resegment(segments, [_words(r.hypothesis, r.emission_cu, "emission_cu") for r in replayed])
    aware = _resegment(segments, [_words(r.served, r.emission_ca, "emission_ca") for r in replayed])
    still = _resegment(segments, [_words(text, None, None) for text in offline])
    return result(replayed, [s.reference for talk in segments for s in talk], [i.prediction for i in unaware],
                  [i.prediction for i in aware], [i.prediction for i in still],
                  {**_long_latency(unaware, aware=False), **_long_latency(aware, aware=True)}, options, conditions,
                  talks=True)


def _words(text: str, times: list[float] | None, key: str | None) -> list[Any]:
    """A talk's words as OmniSTEval's `Word`s, with their emission times in milliseconds under `key`."""
    from omnisteval import Word

    words = text.split()
    return [Word(word, **({key: times[i] * 1000} if key and times else {})) for i, word in enumerate(words)]


def _resegment(segments: list[list[Any]], hypotheses: list[list[Any]]) -> list[Any]:
    """OmniSTEval instances: each talk's hypothesis words aligned to its reference segments, emission times made
    relative to each segment's offset (as `omnisteval longform` does with a MuST-C YAML)."""
    from omnisteval import Word, resegment

    reference_words, segmentation, sentences = [], [], []
    for talk, segs in enumerate(segments):
        end = max((s.start + s.frames) / s.sample_rate for s in segs) * 1000
        words: list[Any] = []
        for index, seg in enumerate(segs):
            offset = seg.start / seg.sample_rate * 1000
            segmentation.append({"offset": offset, "duration": seg.frames / seg.sample_rate * 1000, "doc_id": talk,
                                 "seg_id": index, "time_to_recording_end": end - offset})
            sentences.append(seg.reference)
            # the reference word's time keeps words emitted before its segment from being aligned to it
            words += [Word(unit, emission_cu=offset, seq_id=len(sentences) - 1)
                      for unit in seg.reference.strip().lower().split()]
        reference_words.append(words)
    instances, _ = resegment(reference_words, hypotheses, segmentation, sentences)
    return instances


def _long_latency(instances: list[Any], aware: bool) -> dict[str, float]:
    """StreamLAAL and long-form YAAL in seconds (" (CA)": computation-aware), by OmniSTEval's scorers."""
    from omnisteval.scoring import LAALScorer, YAALScorer

    suffix = " (CA)" if aware else ""
    return {"StreamLAAL" + suffix: LAALScorer(computation_aware=aware)(instances) / 1000,
            "LongYAAL" + suffix: YAALScorer(computation_aware=aware, is_longform=True)(instances) / 1000}
