"""Simultaneous translation measured as the field measures it: each test utterance replayed chunk by chunk
through a live session (`replay`, computation-aware), BLEU of what it committed, and the latency of every
committed word scored by OmniSTEval (AL, LAAL and YAAL, computation-unaware and -aware).

OmniSTEval (PyPI `omnisteval`, Apache-2.0, 2026) is chosen over SimulEval (unmaintained since 2023, and
built around its own agent loop) and simulstream (a serving framework that pulls in librosa and model
back-ends): it scores given emission times, which a session already produces, and adds YAAL, the metric its
authors show to rank long-form systems correctly, plus the long-form resegmentation of whole talks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from runner.live.session import StreamOptions, StreamUpdate, replay
from runner.metrics.bleu import CorpusScore, corpus_bleu, corpus_chrf

if TYPE_CHECKING:
    from runner.conditions import RunConditions
    from runner.data import PreloadedSet
    from runner.runner import Runner

METRICS = ("AL", "LAAL", "YAAL")


@dataclass(frozen=True)
class Emitted:
    """One utterance replayed live, twice: what was committed, and when each word was.

    Attributes:
        id: the segment's id; reference: the reference translation; source_seconds: the utterance's length.
        hypothesis: the committed words of the computation-unaware replay (every chunk decoded, at the audio
            time it arrived: deterministic); emission_cu: per word, the audio (seconds) heard when it was committed.
        served: the committed words of the computation-aware replay (the clock runs on while a decode runs and
            updates are skipped as a live server skips them); emission_ca: per word, when it was shown.
        speech_onset: where speech starts in the utterance (Silero VAD), seconds.
        compute_seconds: the computation-aware replay's decoding time.
    """

    id: str
    reference: str
    source_seconds: float
    hypothesis: str
    emission_cu: list[float]
    served: str
    emission_ca: list[float]
    speech_onset: float
    compute_seconds: float

    @property
    def first_word_lag(self) -> float | None:
        """Seconds from speech onset to the first committed word being shown (computation-aware)."""
        return self.emission_ca[0] - self.speech_onset if self.emission_ca else None


@dataclass(frozen=True)
class SimultaneousResult:
    """A simultaneous evaluation of one runner over a test set.

    Attributes:
        options: the sessions' chunking and agreement.
        conditions: what the figures were measured under (threads, CPU kind, engine, hop, device).
        bleu, chrf: of the computation-unaware replay's text (reproducible); served_bleu: of the computation-aware
            replay's (as a live server would have shown it); offline_bleu: of the same runner's offline translations.
        latency: metric name ("LAAL", "LAAL (CA)", ...) -> seconds, from OmniSTEval.
        first_word_lag: mean seconds from speech onset to the first committed word (computation-aware).
        real_time_factor: decoding time over audio time in the computation-aware replays.
        utterances: each utterance's emissions (with `talks`, each whole talk's).
        talks: whole talks were replayed, their words re-segmented to the reference segments (`runner.live.talks`);
            the offline BLEU is then of the talks' offline VAD translations, re-segmented the same way.
    """

    options: StreamOptions
    conditions: RunConditions
    bleu: CorpusScore
    chrf: CorpusScore
    served_bleu: CorpusScore
    offline_bleu: CorpusScore
    latency: dict[str, float]
    first_word_lag: float
    real_time_factor: float
    utterances: list[Emitted] = field(repr=False)
    talks: bool = False

    def format(self) -> str:
        """The result as the CLI prints it, with its conditions."""
        c = self.conditions
        what = (f"{len(self.utterances)} whole talks, committed words re-segmented to the reference segments by "
                f"OmniSTEval" if self.talks else f"{len(self.utterances)} utterances")
        return "\n".join([
            f"simultaneous: chunk {self.options.chunk_seconds:g} s, LocalAgreement-{self.options.agreement}, "
            f"segments up to {self.options.max_segment_seconds:g} s, endpoint {self.options.endpoint_ms} ms, "
            f"{what}, warm-up {c.warmup}",
            f"conditions: {c.threads} thread(s), cpu kind {c.machine.get('cpu_kind', 'unknown')}, device {c.device}, "
            f"search {c.search}, hop {c.hop_length}, plugins {c.plugin_labels()}",
            f"BLEU {self.bleu.score:.2f} (offline{' VAD' if self.talks else ''} {self.offline_bleu.score:.2f}, "
            f"{self.bleu.score - self.offline_bleu.score:+.2f}; as served, computation-aware {self.served_bleu.score:.2f})"
            f"  chrF {self.chrf.score:.2f}  [{self.bleu.signature}]",
            "latency (s, OmniSTEval, words): " + "  ".join(f"{name} {value:.3f}" for name, value in self.latency.items()),
            f"first committed word {self.first_word_lag:.3f} s after speech onset (mean, computation-aware);  "
            f"real-time factor {self.real_time_factor:.3f}"])

    def to_dict(self) -> dict[str, Any]:
        return {"options": asdict(self.options), "conditions": self.conditions.to_dict(),
                "bleu": asdict(self.bleu), "chrf": asdict(self.chrf), "served_bleu": asdict(self.served_bleu),
                "offline_bleu": asdict(self.offline_bleu), "latency_seconds": self.latency,
                "latency_scorer": f"omnisteval {_version()}", "first_word_lag_seconds": self.first_word_lag,
                "real_time_factor": self.real_time_factor, "talks": self.talks, "utterances": [asdict(u) for u in self.utterances]}


def emitted(updates: list[StreamUpdate], aware: bool) -> tuple[str, list[float]]:
    """The committed text of a replay and, per word, its emission time: the audio heard when it was committed
    (computation-unaware) or when it was shown (`aware`)."""
    words, times = [], []
    for update in updates:
        new = update.translation.split()
        words += new
        shown = update.emitted_seconds if aware and update.emitted_seconds is not None else update.audio_seconds
        times += [shown] * len(new)
    return " ".join(words), times


def replay_utterance(runner: Runner, waveform: np.ndarray, rate: int, options: StreamOptions,
                     aware: bool = True) -> list[StreamUpdate]:
    """One recording at `rate` through a fresh live session, as if it arrived in real time."""
    return replay(runner.stream(options), waveform, rate, computation_aware=aware)


def replay_twice(runner: Runner, name: str, reference: str, waveform: np.ndarray, rate: int,
                 options: StreamOptions) -> Emitted:
    """A recording replayed computation-unaware and computation-aware, with its speech onset (Silero VAD)."""
    from runner.longform.segment import SegmentOptions, segment

    text, cu = emitted(replay_utterance(runner, waveform, rate, options, aware=False), aware=False)
    served_updates = replay_utterance(runner, waveform, rate, options)
    served, ca = emitted(served_updates, aware=True)
    spans = segment(waveform, rate, SegmentOptions("vad"))
    return Emitted(name, reference, len(waveform) / rate, text, cu, served, ca, spans[0].start if spans else 0.0,
                   sum(u.compute_seconds for u in served_updates))


def evaluate_simultaneous(runner: Runner, preloaded: PreloadedSet, options: StreamOptions = StreamOptions(),
                          progress: Any = None) -> SimultaneousResult:
    """Replay every utterance of `preloaded` through live sessions and score quality and latency.

    Each utterance is replayed computation-unaware (its text and latency are reproducible) and computation-aware
    (what a live server shows, and when). The first utterance is replayed once before, untimed, so no decode's
    time is a first call's. The offline BLEU is the same runner's `translate` of each utterance.
    """
    utterances = preloaded.utterances
    if utterances:
        replay_utterance(runner, utterances[0].waveform, utterances[0].sample_rate, options)  # warm-up
    results, offline = [], []
    for utterance in (progress(utterances) if progress else utterances):
        results.append(replay_twice(runner, utterance.segment.id, utterance.segment.reference, utterance.waveform,
                                    utterance.sample_rate, options))
        offline.append(runner.translate(utterance.waveform, utterance.sample_rate).text)
    return score(results, offline, options, runner.conditions(warmup=1))


def score(results: list[Emitted], offline: list[str], options: StreamOptions,
          conditions: RunConditions) -> SimultaneousResult:
    """Quality (sacrebleu) and latency (OmniSTEval) of replayed utterances."""
    return result(results, [r.reference for r in results], [r.hypothesis for r in results],
                  [r.served for r in results], offline, latency(results), options, conditions)


def result(replayed: list[Emitted], references: list[str], hypotheses: list[str], served: list[str],
           offline: list[str], latencies: dict[str, float], options: StreamOptions, conditions: RunConditions,
           talks: bool = False) -> SimultaneousResult:
    """A `SimultaneousResult` from the texts to score against `references` (one per reference: an utterance's,
    or a talk's re-segmented) and the replays' latency, first-word lag and decoding time."""
    lags = [r.first_word_lag for r in replayed if r.first_word_lag is not None]
    audio = sum(r.source_seconds for r in replayed)
    return SimultaneousResult(options, conditions, corpus_bleu(hypotheses, references),
                              corpus_chrf(hypotheses, references), corpus_bleu(served, references),
                              corpus_bleu(offline, references), latencies,
                              float(np.mean(lags)) if lags else float("nan"),
                              sum(r.compute_seconds for r in replayed) / audio if audio else float("nan"), replayed,
                              talks)


def latency(results: list[Emitted]) -> dict[str, float]:
    """AL, LAAL and YAAL in seconds, computation-unaware (of the unaware replay) and -aware ("(CA)", of the aware
    replay), by OmniSTEval's scorers."""
    from omnisteval.data import Instance
    from omnisteval.scoring import ALScorer, LAALScorer, YAALScorer

    scorers = {"AL": ALScorer, "LAAL": LAALScorer, "YAAL": YAALScorer}
    figures = {}
    for aware in (False, True):
        instances = [Instance(prediction=r.served if aware else r.hypothesis, reference=r.reference,
                              source_length=r.source_seconds * 1000,
                              **{"emission_ca" if aware else "emission_cu":
                                 [t * 1000 for t in (r.emission_ca if aware else r.emission_cu)]})
                     for r in results if (r.emission_ca if aware else r.emission_cu)]
        for name in METRICS:
            figures[name + (" (CA)" if aware else "")] = scorers[name](computation_aware=aware)(instances) / 1000
    return figures


def _version() -> str:
    from importlib.metadata import version

    return version("omnisteval")
