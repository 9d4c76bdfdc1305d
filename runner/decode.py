"""Decoding: its options, a translation's typed result, the decoding deadline and stage timing.

The path a translation takes is `runner.pipeline` (`Speech2Text.__call__`'s steps, each beam search
through its engine); what it returns, how long it may take and how its stages are timed live here.
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
from runner.errors import AudioTooShortError, RunnerError
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

    def replace(self, values: dict[str, Any], origin: str = "decoding options") -> DecodeOptions:
        """These options with `values` (named as `from_dict` takes them), checked."""
        return self.from_dict({**asdict(self), **values}, origin) if values else self

    def validate(self, origin: str) -> None:
        for name in ("beam_size", "asr_beam_size", "nbest"):
            if getattr(self, name) < 1:
                raise RunnerError(f"{origin}: {name} must be at least 1")
        for name in ("ctc_weight", "asr_ctc_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise RunnerError(f"{origin}: {name} must lie in [0, 1]")

    def speech2text_kwargs(self) -> dict[str, Any]:
        return asdict(self)


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
        nbest: the ST n-best as `Speech2Text.__call__` returns it: (text, tokens, token ids, hypothesis).
        source_nbest: a multi-decoder model's ASR n-best: (text, tokens, token ids, hypothesis, decoder states).
    """

    text: str
    source_text: str | None  # the ASR decoder's transcript, for multi-decoder models
    tokens: list[str]
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    batch_size: int = 1
    nbest: list[tuple[Any, ...]] = field(default_factory=list, repr=False)
    source_nbest: list[tuple[Any, ...]] = field(default_factory=list, repr=False)


SEARCH_STAGES = ("asr_search", "st_search")


DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("runner_decode_deadline", default=None)


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Within the block, a beam search that is still running `seconds` from now stops at its next step.

    Every engine checks it once per step (`runner.engines.check_deadline`) and raises
    DecodeTimeoutError, so a server can answer the request instead of decoding 59 s of noise for
    minutes. None: no deadline.
    """
    token = DEADLINE.set(None if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        DEADLINE.reset(token)


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
