"""Frontend STFT hop length: fewer frames per second, a shorter encoder input, faster decoding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner.errors import RunnerError
from runner.plugin import Plugin


@dataclass
class HopConfig:
    hop_length: int = 160

    def validate(self) -> None:
        if self.hop_length <= 0:
            raise ValueError(f"hop_length must be positive, got {self.hop_length}")


class Hop(Plugin):
    name = "hop"
    description = "Set the frontend STFT hop length (samples) of the loaded model"
    Config = HopConfig
    order = 10  # before quantization: it changes what calibration and decoding see

    def apply(self, bundle: Any) -> None:
        frontend = getattr(bundle.model, "frontend", None)
        stft = getattr(frontend, "stft", None)
        if stft is None or not hasattr(stft, "hop_length"):
            raise RunnerError(f"{bundle.files.origin}: plugin 'hop' needs an in-model STFT frontend; "
                              f"this model has {type(frontend).__name__ if frontend is not None else 'none'}")
        hop = self.config.hop_length
        if hop > stft.win_length:
            raise RunnerError(f"plugin 'hop': hop_length {hop} exceeds the window length {stft.win_length}; "
                              f"allowed: 1..{stft.win_length}")
        self.details["trained_hop_length"] = stft.hop_length
        stft.hop_length = hop
        if hasattr(frontend, "hop_length"):
            frontend.hop_length = hop
