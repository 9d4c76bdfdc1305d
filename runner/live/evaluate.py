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
    """One utterance replayed live: what was committed, and when each word was.

    Attributes:
        id: the segment's id; hypothesis: the committed words, joined; reference: the reference translation.
        source_seconds: the utterance's length.
        emission_cu: per word, the audio (seconds) the session had heard when it committed it.
        emission_ca: per word, when it was shown: that audio time plus the decoding before it.
        speech_onset: where speech starts in the utterance (Silero VAD), seconds.
        compute_seconds: the decodes' total time.
    """

    id: str
    hypothesis: str
    reference: str
    source_seconds: float
    emission_cu: list[float]
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
        bleu, chrf: of the committed text; offline_bleu: of the same runner's offline translations.
        latency: metric name ("LAAL", "LAAL (CA)", ...) -> seconds, from OmniSTEval.
        first_word_lag: mean seconds from speech onset to the first committed word (computation-aware).
        real_time_factor: decoding time over audio time, summed over the replays.
        utterances: each utterance's emissions.
    """

    options: StreamOptions
    conditions: RunConditions
    bleu: CorpusScore
    chrf: CorpusScore
    offline_bleu: CorpusScore
    latency: dict[str, float]
    first_word_lag: float
    real_time_factor: float
    utterances: list[Emitted] = field(repr=False)

    def format(self) -> str:
        """The result as the CLI prints it, with its conditions."""
        c = self.conditions
        cpu = c.machine.get("cpu_kind", "unknown")
        lines = [f"simultaneous: chunk {self.options.chunk_seconds:g} s, LocalAgreement-{self.options.agreement}, "
                 f"segments up to {self.options.max_segment_seconds:g} s, endpoint {self.options.endpoint_ms} ms "
                 f"(computation-aware replay, {len(self.utterances)} utterances)",
                 f"conditions: {c.threads} thread(s), cpu kind {cpu}, device {c.device}, search {c.search}, "
                 f"hop {c.hop_length}, plugins {c.plugin_labels()}",
                 f"BLEU {self.bleu.score:.2f} (offline {self.offline_bleu.score:.2f}, "
                 f"{self.bleu.score - self.offline_bleu.score:+.2f})  chrF {self.chrf.score:.2f}  [{self.bleu.signature}]",
                 "latency (s, OmniSTEval, word-level): " + "  ".join(
                     f"{name} {value:.3f}" for name, value in self.latency.items()),
                 f"first committed word {self.first_word_lag:.3f} s after speech onset (mean);  "
                 f"real-time factor {self.real_time_factor:.3f}"]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"options": asdict(self.options), "conditions": self.conditions.to_dict(),
                "bleu": asdict(self.bleu), "chrf": asdict(self.chrf), "offline_bleu": asdict(self.offline_bleu),
                "latency_seconds": self.latency, "latency_scorer": f"omnisteval {_version()}",
                "first_word_lag_seconds": self.first_word_lag, "real_time_factor": self.real_time_factor,
                "utterances": [asdict(u) for u in self.utterances]}


def emitted(updates: list[StreamUpdate]) -> tuple[list[str], list[float], list[float]]:
    """The committed words of a replay and, per word, its computation-unaware and -aware emission times."""
    words, cu, ca = [], [], []
    for update in updates:
        new = update.translation.split()
        words += new
        cu += [update.audio_seconds] * len(new)
        ca += [update.emitted_seconds if update.emitted_seconds is not None else update.audio_seconds] * len(new)
    return words, cu, ca


def replay_utterance(runner: Runner, waveform: np.ndarray, options: StreamOptions) -> list[StreamUpdate]:
    """One utterance through a fresh live session, as if it arrived in real time (computation-aware)."""
    return replay(runner.stream(options), waveform, runner.sample_rate)


def evaluate_simultaneous(runner: Runner, preloaded: PreloadedSet, options: StreamOptions = StreamOptions(),
                          progress: Any = None) -> SimultaneousResult:
    """Replay every utterance of `preloaded` through a live session and score quality and latency.

    The first utterance is replayed once before, untimed, so no decode's time is a first call's. The offline
    BLEU is the same runner's `translate` of each utterance.
    """
    from runner.longform.segment import SegmentOptions, segment

    utterances = preloaded.utterances
    if utterances:
        replay_utterance(runner, utterances[0].waveform, options)  # warm-up
    results, offline = [], []
    for utterance in (progress(utterances) if progress else utterances):
        updates = replay_utterance(runner, utterance.waveform, options)
        words, cu, ca = emitted(updates)
        spans = segment(utterance.waveform, utterance.sample_rate, SegmentOptions("vad"))
        results.append(Emitted(utterance.segment.id, " ".join(words), utterance.segment.reference, utterance.seconds,
                               cu, ca, spans[0].start if spans else 0.0, sum(u.compute_seconds for u in updates)))
        offline.append(runner.translate(utterance.waveform, utterance.sample_rate).text)
    return score(results, offline, options, runner.conditions(warmup=1))


def score(results: list[Emitted], offline: list[str], options: StreamOptions,
          conditions: RunConditions) -> SimultaneousResult:
    """Quality (sacrebleu) and latency (OmniSTEval) of replayed utterances."""
    references = [r.reference for r in results]
    hypotheses = [r.hypothesis for r in results]
    lags = [r.first_word_lag for r in results if r.first_word_lag is not None]
    audio = sum(r.source_seconds for r in results)
    return SimultaneousResult(options, conditions, corpus_bleu(hypotheses, references),
                              corpus_chrf(hypotheses, references), corpus_bleu(offline, references),
                              latency(results), float(np.mean(lags)) if lags else float("nan"),
                              sum(r.compute_seconds for r in results) / audio if audio else float("nan"), results)


def latency(results: list[Emitted]) -> dict[str, float]:
    """AL, LAAL and YAAL in seconds, computation-unaware and -aware ("(CA)"), by OmniSTEval's scorers."""
    from omnisteval.data import Instance
    from omnisteval.scoring import ALScorer, LAALScorer, YAALScorer

    instances = [Instance(prediction=r.hypothesis, reference=r.reference, source_length=r.source_seconds * 1000,
                          emission_cu=[t * 1000 for t in r.emission_cu], emission_ca=[t * 1000 for t in r.emission_ca])
                 for r in results if r.emission_cu]
    scorers = {"AL": ALScorer, "LAAL": LAALScorer, "YAAL": YAALScorer}
    figures = {}
    for aware in (False, True):
        for name in METRICS:
            figures[name + (" (CA)" if aware else "")] = scorers[name](computation_aware=aware)(instances) / 1000
    return figures


def _version() -> str:
    from importlib.metadata import version

    return version("omnisteval")
