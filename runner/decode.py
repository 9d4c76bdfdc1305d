"""Decoding: options, one timed translation through ESPnet's own `Speech2Text`.

The runner never re-implements ESPnet's decoding: it calls `Speech2Text.__call__` and times
its stages with forward hooks, so an fp32 translation is exactly what
`espnet2.bin.st_inference` writes for the same model and options.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
import typing
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runner.device import clock
from runner.errors import AudioTooShortError, DecodeTimeoutError, RunnerError
from runner.options import coerce  # decoding options follow the plugin options' typing rules

STAGES = ("frontend", "encoder", "asr_search", "md_encoder", "st_search")


@dataclass
class DecodeOptions:
    """Beam-search settings, named as `espnet2.bin.st_inference` names them."""

    beam_size: int = 5
    asr_beam_size: int = 5
    ctc_weight: float = 0.0
    asr_ctc_weight: float = 0.3
    penalty: float = 0.0
    asr_penalty: float = 0.0
    maxlenratio: float = 0.0
    minlenratio: float = 0.0
    asr_maxlenratio: float = 0.0
    asr_minlenratio: float = 0.0
    nbest: int = 1

    @classmethod
    def from_dict(cls, values: dict[str, Any], origin: str = "decoding options") -> DecodeOptions:
        known = typing.get_type_hints(cls)
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise RunnerError(f"{origin}: unknown decoding option(s) {unknown}; allowed: {sorted(known)}")
        options = cls(**{name: coerce(value, known[name], f"{origin}: {name}") for name, value in values.items()})
        options.validate(origin)
        return options

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> DecodeOptions:
        from runner.yamlio import read_yaml_mapping

        values = read_yaml_mapping(path, "decoding config")
        values = values.get("decode", values)
        return cls.from_dict({**values, **(overrides or {})}, origin=str(path))

    def validate(self, origin: str) -> None:
        for name in ("beam_size", "asr_beam_size", "nbest"):
            if getattr(self, name) < 1:
                raise RunnerError(f"{origin}: {name} must be at least 1")
        for name in ("ctc_weight", "asr_ctc_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise RunnerError(f"{origin}: {name} must lie in [0, 1]")

    def speech2text_kwargs(self) -> dict[str, Any]:
        return asdict(self)


def keep_pre_x_on_retry(search: Any) -> None:
    """Make ESPnet's no-n-best retry keep `pre_x`.

    `BeamSearch.forward` retries with a smaller minlenratio as `self.forward(x, maxlenratio,
    minlenratio)`, dropping `pre_x`, and the speech-attention decoder then fails on None.
    An instance-level `forward` sees the retry (it goes through `self.forward`) and passes
    the outer call's `pre_x` on; ESPnet's source stays untouched.
    """
    if search is None or "forward" in vars(search):
        return
    outer: list[torch.Tensor | None] = []

    def forward(x: torch.Tensor, maxlenratio: float = 0.0, minlenratio: float = 0.0, pre_x: Any = None) -> Any:
        if outer and pre_x is None:
            pre_x = outer[-1]
        outer.append(pre_x)
        try:
            return type(search).forward(search, x, maxlenratio, minlenratio, pre_x=pre_x)
        finally:
            outer.pop()

    search.forward = forward


@dataclass
class Translation:
    """One translated utterance.

    Attributes:
        text: the detokenized translation.
        source_text: the ASR decoder's transcript (multi-decoder models), else None.
        tokens: the translation's tokens.
        seconds: wall time of `Speech2Text.__call__`; in a batch, the batch's wall time (when the
            utterance's result was ready).
        stages: seconds per stage (frontend, encoder, asr_search, md_encoder, st_search); in a batch, the batch's.
        steps: output steps each beam search took (asr_search, st_search): `BeamSearch.search` calls.
        batch_size: utterances decoded together with this one (itself included).
    """

    text: str
    source_text: str | None  # the ASR decoder's transcript, for multi-decoder models
    tokens: list[str]
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    batch_size: int = 1


SEARCH_STAGES = ("asr_search", "st_search")


DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("runner_decode_deadline", default=None)


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Within the block, a beam search that is still running `seconds` from now stops at its next step.

    The search raises DecodeTimeoutError (so a server can answer the request instead of decoding 59 s
    of noise for minutes). None: no deadline.
    """
    token = DEADLINE.set(None if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        DEADLINE.reset(token)


class StepCounter:
    """Counts each beam search's output steps (its `search` calls) during one translation, and stops a
    search past the `deadline` of the block it runs in.

    A per-instance `search` wraps ESPnet's (or the lean engine's) for the duration of the block only,
    so a search's time per step can be reported beside its stage time.
    """

    def __init__(self, searches: dict[str, Any]) -> None:
        self.searches = {name: search for name, search in searches.items() if search is not None}
        self.steps = {name: 0 for name in self.searches}

    def __enter__(self) -> StepCounter:
        stop_at = DEADLINE.get()
        for name, search in self.searches.items():
            original = search.search

            def counted(*args: Any, name: str = name, original: Any = original, **kwargs: Any) -> Any:
                self.steps[name] += 1
                if stop_at is not None and time.monotonic() > stop_at:
                    raise DecodeTimeoutError(f"{name} stopped after {self.steps[name]} steps: past the decoding "
                                             f"deadline")
                return original(*args, **kwargs)

            search.search = counted
        return self

    def __exit__(self, *exc: object) -> None:
        for search in self.searches.values():
            vars(search).pop("search", None)


class StageTimer:
    """Adds up wall time spent inside named modules during one call, through forward hooks.

    On a GPU each reading waits for the device (`runner.device.clock`), so a stage's time is its
    kernels' time, not their launch.
    """

    def __init__(self, modules: dict[str, list[torch.nn.Module]], device: torch.device | str | None = None) -> None:
        self.modules = modules
        self.device = torch.device(device or "cpu")
        self.seconds = {name: 0.0 for name in modules}
        self._handles: list[Any] = []

    def __enter__(self) -> StageTimer:
        for name, group in self.modules.items():
            for module in group:
                started: list[float] = []

                def pre(_module: Any, _args: Any, started: list[float] = started) -> None:
                    started.append(clock(self.device))

                def post(_module: Any, _args: Any, _out: Any, name: str = name, started: list[float] = started) -> None:
                    self.seconds[name] += clock(self.device) - started.pop()

                self._handles.append(module.register_forward_pre_hook(pre))
                self._handles.append(module.register_forward_hook(post))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def stage_modules(speech2text: Any) -> dict[str, list[torch.nn.Module]]:
    model = speech2text.st_model
    groups: dict[str, list[Any]] = {
        "frontend": [getattr(model, "frontend", None), getattr(model, "normalize", None)],
        "encoder": [getattr(model, "preencoder", None), model.encoder],
        "asr_search": [speech2text.asr_beam_search if getattr(model, "use_multidecoder", False) else None],
        "md_encoder": [getattr(model, "md_encoder", None)],
        "st_search": [speech2text.beam_search],
    }
    return {name: [m for m in group if isinstance(m, torch.nn.Module)] for name, group in groups.items()}


def minimum_samples(speech2text: Any) -> int:
    """The fewest samples the model's STFT frontend accepts (reflect padding needs more than n_fft // 2)."""
    stft = getattr(getattr(speech2text.st_model, "frontend", None), "stft", None)
    if stft is None or not hasattr(stft, "n_fft"):
        return 1
    return stft.n_fft // 2 + 1 if getattr(stft, "center", True) else stft.n_fft


def check_length(speech2text: Any, waveform: np.ndarray) -> None:
    """Raise AudioTooShortError when the waveform is shorter than the frontend's STFT window."""
    needed = minimum_samples(speech2text)
    if len(waveform) < needed:
        raise AudioTooShortError(f"audio too short: {len(waveform)} samples, the frontend's STFT window needs at "
                                 f"least {needed}")


def translate(speech2text: Any, waveform: np.ndarray,
              context: contextlib.AbstractContextManager[Any] | None = None) -> Translation:
    """One utterance through `Speech2Text.__call__`, with wall time in total and per stage (on a GPU,
    read after the device finishes: see `runner.device.clock`).

    Args:
        speech2text: ESPnet's `Speech2Text` (a `ModelBundle.speech2text`).
        waveform: mono float32 samples at the model's rate.
        context: entered around the call and inside the timing (plugins' translation contexts).

    Raises:
        AudioTooShortError: when the waveform is shorter than the frontend's window or gives the
            encoder too few frames for its subsampling (ESPnet's TooShortUttError).
    """
    check_length(speech2text, waveform)
    device = torch.device(speech2text.device)
    timer = StageTimer(stage_modules(speech2text), device)
    multidecoder = getattr(speech2text.st_model, "use_multidecoder", False)
    counter = StepCounter({"asr_search": speech2text.asr_beam_search if multidecoder else None,
                           "st_search": speech2text.beam_search})
    with timer, counter, context or contextlib.nullcontext():
        started = clock(device)
        try:
            output = speech2text(waveform)
        except Exception as error:
            if type(error).__name__ == "TooShortUttError":  # espnet.nets.pytorch_backend.transformer.subsampling
                raise AudioTooShortError(
                    f"audio too short for the encoder's subsampling: {len(waveform)} samples give "
                    f"{error.actual_size} feature frames, it needs more than {error.limit}") from error
            raise
        seconds = clock(device) - started
    if isinstance(output, tuple):  # multi-decoder: (st results, asr results)
        results, asr_results = output
        source_text = asr_results[0][0] if asr_results else None
    else:
        results, source_text = output, None
    text, tokens = (results[0][0] or "", results[0][1]) if results else ("", [])
    return Translation(text, source_text, tokens, seconds, dict(timer.seconds), dict(counter.steps))
