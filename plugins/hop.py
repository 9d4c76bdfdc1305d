"""Frontend STFT hop length: fewer frames per second, a shorter encoder input, faster decoding."""

from __future__ import annotations

from dataclasses import dataclass

from runner.errors import RunnerError
from runner.model import ModelBundle, stft_frontend
from runner.plugin import Effects, Plugin


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
    effects = Effects(frontend=True)
    before = ("number-format", "search")  # what they see (and calibrate on) are this hop's features

    def label(self) -> str:
        return f"hop({self.config.hop_length})"

    def apply(self, bundle: ModelBundle) -> None:
        stft = stft_frontend(bundle, "plugin 'hop'")
        frontend = bundle.model.frontend
        hop = self.config.hop_length
        if hop > stft.win_length:
            raise RunnerError(f"plugin 'hop': hop_length {hop} exceeds the window length {stft.win_length}; "
                              f"allowed: 1..{stft.win_length}")
        self.details["trained_hop_length"] = stft.hop_length
        stft.hop_length = hop
        if hasattr(frontend, "hop_length"):
            frontend.hop_length = hop
