"""Beam-search engines: one protocol, ESPnet's own search and the lean engine as implementations.

A `SearchEngine` takes the place of one ESPnet beam search inside `Speech2Text` (the ST search,
and a multi-decoder model's ASR search) and keeps ESPnet's scorer tables, so plugins that change
decoders or scorers reach it. Called with one or several utterances' encoder outputs, it returns
each one's n-best with the steps it took and its wall time: the runner's report counts steps and
times searches from these return values alone.

Engines are found through the entry-point group `runner.engines`, like plugins, and checked when
the registry loads (`pluggy`'s `_verify_hook` does the same for hooks):

    class MyEngine(SearchEngine):
        name = "my-engine"
        description = "..."

        def run(self, xs, maxlenratio, minlenratio, pre_xs) -> list[Searched]:
            ...  # each utterance's n-best, steps and seconds

    # pyproject.toml: [project.entry-points."runner.engines"] my-engine = "my_package:MyEngine"

`runner translate --search my-engine` (`Runner(search="my-engine")`) then installs it in place of
ESPnet's searches. An engine that cannot run a search (`check` raises) leaves ESPnet's there, and
the runner reports which engine runs which search.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from runner.device import clock
from runner.registry import Registry
from runner.errors import DecodeTimeoutError, RunnerError
from runner.whisper.offline import is_whisper_decoder

logger = logging.getLogger("runner")
ENTRY_POINT_GROUP = "runner.engines"
DEFAULT = "espnet"


@dataclass(frozen=True)
class Searched:
    """One utterance's beam search.

    Attributes:
        nbest: ESPnet `Hypothesis` tuples, best first, as `BeamSearch.forward` returns them.
        steps: output steps the search took (a retry with a smaller minlenratio adds its own).
        seconds: the search's wall time; in a batch, the batch's (the utterances share every step).
    """

    nbest: list[Any]
    steps: int
    seconds: float


def _espnet_setting(name: str) -> property:
    """An attribute of the engine that is the ESPnet search's own (read and written there)."""
    return property(lambda self: getattr(self.espnet, name), lambda self, value: setattr(self.espnet, name, value),
                    doc=f"ESPnet's search's `{name}`")


class SearchEngine(torch.nn.Module):
    """One beam search of a `Speech2Text`, run by an engine: subclass with `name`, `description` and `run`.

    A module, as ESPnet's searches are: it moves and copies with the model, and `Speech2Text.__call__`
    can still call it as ESPnet's search (`forward` returns the n-best alone).

    Args:
        search: the ESPnet search it replaces (its settings and scorer tables stay in use).
        context: what `prepare` made of the model for every search this engine runs (None by default).

    Raises:
        RunnerError: the engine cannot run this search (`check` says why).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    batches: ClassVar[bool] = False  # searches several utterances in one loop (`--batch-size`)

    def __init__(self, search: Any, context: Any = None) -> None:
        super().__init__()
        type(self).check(search)
        self._espnet = [search]  # a list, not a submodule: the decoders stay owned by the model
        self.context = context
        self.stage = "search"  # which of the model's searches it runs (asr_search, st_search), for messages
        self.threads: int | None = None  # intra-op threads while searching (None: the caller's)
        self.settled_nbest: int | None = None  # stop once this many best can no longer change (settled-stop)

    @classmethod
    def check(cls, search: Any) -> None:
        """Raise RunnerError naming what this engine cannot run in `search` (default: anything goes)."""

    @classmethod
    def prepare(cls, bundle: Any) -> Any:
        """What the engine needs of the whole model, made once before its searches are adopted (e.g. sessions
        over exported graphs); passed to each search's constructor. Default: nothing.

        Raises:
            RunnerError: the engine cannot run this model at all (the runner refuses it in one line).
        """
        return None

    @property
    def runtime(self) -> dict[str, str]:
        """What the engine runs on beyond torch (e.g. ONNX Runtime's version, execution provider and graph
        optimization level), for the run conditions; empty for an engine that runs in torch."""
        return {}

    @property
    def graphs(self) -> Any:
        """Graphs that also run the encoder and the MD encoder (`encode(features)`, `md_encode(states)`), for an
        engine that runs the whole model elsewhere; None: they run in torch."""
        return None

    @property
    def espnet(self) -> Any:
        """The ESPnet search this engine replaces."""
        return self._espnet[0]

    # ESPnet's settings and scorer tables, read and written on its search: `ModelBundle.rewire_searches`
    # (after a plugin replaces a decoder), plugins that change scorers or the beam size, and every engine
    # see one set of values.
    sos = _espnet_setting("sos")
    hyp_primer = _espnet_setting("hyp_primer")
    eos = _espnet_setting("eos")
    beam_size = _espnet_setting("beam_size")
    n_vocab = _espnet_setting("n_vocab")
    pre_beam_size = _espnet_setting("pre_beam_size")
    do_pre_beam = _espnet_setting("do_pre_beam")
    pre_beam_score_key = _espnet_setting("pre_beam_score_key")
    return_hs = _espnet_setting("return_hs")
    normalize_length = _espnet_setting("normalize_length")
    weights = _espnet_setting("weights")
    token_list = _espnet_setting("token_list")
    scorers = _espnet_setting("scorers")
    full_scorers = _espnet_setting("full_scorers")
    part_scorers = _espnet_setting("part_scorers")
    nn_dict = _espnet_setting("nn_dict")

    def run(self, xs: Sequence[torch.Tensor], maxlenratio: float, minlenratio: float,
            pre_xs: Sequence[torch.Tensor] | None) -> list[Searched]:
        """Each utterance's search, as `BeamSearch.forward(x, maxlenratio, minlenratio, pre_x)` would give it
        (what an engine implements; callers use `search` or `search_batch`).

        Args:
            xs: each utterance's memory for the decoder (T_i, d).
            maxlenratio, minlenratio: as ESPnet's, applied to each utterance's own length.
            pre_xs: each utterance's speech encoder output for a speech-attention decoder, or None.
        """
        raise NotImplementedError

    def search_batch(self, xs: Sequence[torch.Tensor], maxlenratio: float = 0.0, minlenratio: float = 0.0,
                     pre_xs: Sequence[torch.Tensor] | None = None) -> list[Searched]:
        """Several utterances' searches: in one loop where the engine `batches`, else one after another.

        On `threads` intra-op threads when set (the search-threads plugin), restored afterwards.
        """
        if self.threads is None:
            return self.run(list(xs), maxlenratio, minlenratio, pre_xs)
        saved = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self.run(list(xs), maxlenratio, minlenratio, pre_xs)
        finally:
            torch.set_num_threads(saved)

    def search(self, x: torch.Tensor, maxlenratio: float = 0.0, minlenratio: float = 0.0,
               pre_x: torch.Tensor | None = None) -> Searched:
        """One utterance's search."""
        return self.search_batch([x], maxlenratio, minlenratio, None if pre_x is None else [pre_x])[0]

    def forward(self, x: torch.Tensor, maxlenratio: float = 0.0, minlenratio: float = 0.0,
                pre_x: torch.Tensor | None = None) -> list[Any]:
        """ESPnet's search call (`Speech2Text.__call__` makes it): the n-best alone."""
        return self.search(x, maxlenratio, minlenratio, pre_x).nbest


def check_deadline(stage: str, steps: int) -> None:
    """Raise DecodeTimeoutError when the decoding deadline (`runner.decode.deadline`) has passed.

    Every engine calls this once per output step, so a server's request never searches past its deadline.
    """
    from runner.decode import DEADLINE

    stop_at = DEADLINE.get()
    if stop_at is not None and time.monotonic() > stop_at:
        raise DecodeTimeoutError(f"{stage} stopped after {steps} steps: past the decoding deadline")


def length_bounds(source: torch.Tensor, maxlenratio: float, minlenratio: float,
                  longest: int | None = None) -> tuple[int, int]:
    """`BeamSearch.forward`'s maximum and minimum output lengths for a memory of `source`'s length, the
    maximum at most `longest` (the search's `longest_output`) where the decoder has a limit."""
    if maxlenratio == 0:
        maxlen = source.shape[0]
    elif maxlenratio < 0:
        maxlen = -1 * int(maxlenratio)
    else:
        maxlen = max(1, int(maxlenratio * source.size(0)))
    if longest is not None:
        maxlen = max(1, min(maxlen, longest))
    minlen = -1 * int(minlenratio) if minlenratio < 0 else int(minlenratio * source.size(0))
    return maxlen, minlen


def longest_output(search: Any) -> int | None:
    """The most steps `search` can take before its decoder runs out of positions, or None without a limit.

    Whisper's decoder has a learned table of 448 positions; ESPnet's search, whose maxlen follows the
    encoder's length (1500 frames for 30 s), indexes past it and fails on any utterance whose hypotheses
    do not end in time. The hypotheses start with the primer (start-of-transcript, language, task), and
    the last step's token is <eos>, which the decoder never reads.
    """
    decoder = getattr(search, "full_scorers", {}).get("decoder")
    if not is_whisper_decoder(decoder):
        return None
    return decoder.decoders.positional_embedding.size(0) - len(search.hyp_primer or [search.sos]) + 1


def monotone_scores(search: Any) -> str | None:
    """Why a hypothesis' score could still rise as it grows, or None: every scorer's step score is a log
    probability (at most 0) at a weight of at least 0, no length bonus, no length normalization.

    Under these, a running hypothesis ends no better than it stands now, so `settled` is exact.
    """
    if search.normalize_length:
        return "its n-best is ranked by score per token (normalize_length)"
    raised = sorted(name for name, weight in search.weights.items()
                    if weight and (weight < 0 or name == "length_bonus"))
    return f"scorer(s) {raised} add a positive score per token (penalty > 0) or weigh negatively" if raised else None


def settled(ended_scores: list[float], running_best: float, nbest: int) -> bool:
    """Whether the best `nbest` ended hypotheses are final: the `nbest`-th best scores at least the best running
    one, which can only lose score as it grows (`monotone_scores`)."""
    return len(ended_scores) >= nbest and sorted(ended_scores, reverse=True)[nbest - 1] >= running_best


def _best_score(running: Any) -> float:
    """The best score among running hypotheses: a `BatchHypothesis` (its scores a tensor) or a list."""
    if isinstance(getattr(running, "score", None), torch.Tensor):
        return float(running.score.max())
    return max(float(h.score) for h in running)


class EspnetSearch(SearchEngine):
    """ESPnet's own search (`BeamSearch`/`BatchBeamSearch`): its `init_hyp`, `search` and `post_process`
    for every step, in `BeamSearch.forward`'s loop, with the steps counted.

    Two differences from `BeamSearch.forward`, neither in what it computes: the retry with a smaller
    minlenratio keeps `pre_x` (ESPnet's drops it, and a speech-attention decoder then fails on None),
    and its log lines are not written (the runner reports steps and n-best itself).
    """

    name = "espnet"
    description = "ESPnet's own BatchBeamSearch, step for step (the reference every other engine equals)"

    @classmethod
    def check(cls, search: Any) -> None:
        from espnet.nets.beam_search import BeamSearch

        if not isinstance(search, BeamSearch) or type(search).forward is not BeamSearch.forward:
            raise RunnerError(f"{type(search).__name__} is not an ESPnet BeamSearch with its own main loop")

    def run(self, xs: Sequence[torch.Tensor], maxlenratio: float, minlenratio: float,
            pre_xs: Sequence[torch.Tensor] | None) -> list[Searched]:
        results = []
        for index, x in enumerate(xs):
            started = clock(x.device)
            steps: list[int] = [0]
            pre_x = None if pre_xs is None else pre_xs[index]
            nbest = self._run(x, maxlenratio, minlenratio, pre_x, steps)
            results.append(Searched(nbest, steps[0], clock(x.device) - started))
        return results

    def _run(self, x: torch.Tensor, maxlenratio: float, minlenratio: float, pre_x: torch.Tensor | None,
             steps: list[int]) -> list[Any]:
        from espnet.nets.e2e_asr_common import end_detect

        search = self.espnet
        maxlen, minlen = length_bounds(x if pre_x is None else pre_x, maxlenratio, minlenratio,
                                      longest_output(search))
        running = search.init_hyp(x if pre_x is None else pre_x)
        ended: list[Any] = []
        for i in range(maxlen):
            steps[0] += 1
            check_deadline(self.stage, steps[0])
            best = search.search(running, x, pre_x=pre_x)
            running = search.post_process(i, maxlen, minlen, maxlenratio, best, ended)
            if maxlenratio == 0.0 and end_detect([h.asdict() for h in ended], i):
                break
            if len(running) == 0:
                break
            if self.settled_nbest and settled([float(h.score) for h in ended], _best_score(running),
                                              self.settled_nbest):
                break
        if search.normalize_length:
            nbest = sorted(ended, key=lambda h: h.score / (len(h.yseq) - 1), reverse=True)
        else:
            nbest = sorted(ended, key=lambda h: h.score, reverse=True)
        if not nbest:
            logger.warning("no hypothesis ended; decoding again with a smaller minlenratio")
            return [] if minlenratio < 0.1 else self._run(x, maxlenratio, max(0.0, minlenratio - 0.1), pre_x, steps)
        return nbest


def _check_class(name: str, where: str, engine: Any) -> None:
    problems = []
    if not (isinstance(engine, type) and issubclass(engine, SearchEngine)):
        problems.append("is not a runner.engines.SearchEngine subclass")
    else:
        if getattr(engine, "name", None) != name:
            problems.append(f"has name {getattr(engine, 'name', None)!r}, registered as '{name}'")
        if not isinstance(getattr(engine, "description", None), str):
            problems.append("has no description")
        if engine.run is SearchEngine.run:
            problems.append("does not implement run(xs, maxlenratio, minlenratio, pre_xs)")
    if problems:
        raise RunnerError(f"search engine '{name}' ({where}) {'; '.join(problems)}")


REGISTRY: Registry[type[SearchEngine]] = Registry(ENTRY_POINT_GROUP, "search engine", _check_class)


def available(refresh: bool = False) -> dict[str, type[SearchEngine]]:
    """Every engine registered under the `runner.engines` entry-point group, by name.

    Args:
        refresh: scan the installed distributions again (after installing an engine in-process).
    """
    return REGISTRY.available(refresh)


def engine_class(name: str, where: str = "--search") -> type[SearchEngine]:
    """The registered engine called `name`.

    Raises:
        RunnerError: no engine of that name (the message lists the registered ones).
    """
    return REGISTRY.get(name, where)


def install(bundle: Any, name: str, context: Any = None) -> dict[str, str]:
    """Put engine `name` in place of the beam searches of `bundle` (a `ModelBundle`), with `context` (default:
    what the engine's `prepare` makes of the bundle).

    A search the engine cannot run gets ESPnet's adapter instead; one that adapter cannot run either (a
    transducer, a search class with its own loop) stays ESPnet's object as it is.

    Returns:
        stage -> the engine now running it, with the reason where it is not `name`.

    Raises:
        RunnerError: the engine cannot run this model at all (its `prepare` says why).
    """
    speech2text, engine = bundle.speech2text, engine_class(name)
    if context is None:
        context = engine.prepare(bundle)
    engines: dict[str, str] = {}
    for stage in bundle.search_stages:
        attribute = SEARCH_ATTRIBUTES[stage]
        current = getattr(speech2text, attribute, None)
        if current is None:
            continue
        original = current.espnet if isinstance(current, SearchEngine) else current
        chosen, why = _adopt(engine, original, context)
        if chosen is None and name != DEFAULT:
            chosen, _ = _adopt(EspnetSearch, original, None)
        if chosen is not None:
            chosen.stage = stage
        setattr(speech2text, attribute, chosen if chosen is not None else original)
        label = chosen.name if chosen is not None else type(original).__name__
        engines[stage] = label if label == name else f"{label} ({why})"
    return engines


def _adopt(engine: type[SearchEngine], search: Any, context: Any) -> tuple[SearchEngine | None, str]:
    """`engine` over `search`, or None and the reason it cannot run it."""
    try:
        return engine(search, context), ""
    except RunnerError as reason:
        return None, str(reason)


SEARCH_ATTRIBUTES = {"asr_search": "asr_beam_search", "st_search": "beam_search"}  # stage -> Speech2Text attribute
