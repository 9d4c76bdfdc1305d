"""SmoothQuant: per-channel scales between pre-norm LayerNorms and their Linears, calibrated on dev.

Trained Transformers carry a few activation channels far larger than the rest; per-tensor int8
activations then lose their resolution. SmoothQuant (Xiao et al., 2023) divides each channel j of
the activation by s_j = max|X_j|^alpha / max|W_j|^(1-alpha) and multiplies the weights' input
column j by it, so the product is unchanged in float and both factors quantize well. Here the
division is folded into the LayerNorm before the Linears (`runner.quant.smoothing`), so the float model
computes the same function (translations identical, scores within rounding) and an int8 plugin
after it (`dynamic-int8`, `static-int8`) sees flattened activations. max|X_j| is measured with
full beam searches over the calibration utterances, before any later plugin applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runner.data import Utterance
from runner.model import ModelBundle
from runner.pipeline import translate
from runner.plugin import MODEL_PARTS, CalibrationConfig, Plugin
from runner.quant.parts import check_parts
from runner.quant.smoothing import ActivationMax, norm_groups, rescale, smooth_factors


@dataclass
class SmoothQuantConfig(CalibrationConfig):
    alpha: float = 0.5  # 0: all range stays in the activations; 1: all moves into the weights
    parts: list[str] = field(default_factory=lambda: list(MODEL_PARTS))

    def validate(self) -> None:
        check_parts(self.parts)
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be within 0..1, got {self.alpha}")
        super().validate()


class SmoothQuant(Plugin):
    name = "smoothquant"
    description = "SmoothQuant scales folded into pre-norm LayerNorms (float function unchanged), before int8"
    Config = SmoothQuantConfig
    after = ("frontend",)
    before = ("number-format", "search")  # int8 and the lean engine's packed weights see the smoothed model
    calibrate_before_next = True

    def apply(self, bundle: ModelBundle) -> None:
        self._groups = list(norm_groups(bundle.model, self.config.parts))
        self.details["layer_norms"] = len(self._groups)

    def calibrate(self, bundle: ModelBundle, utterances: list[Utterance]) -> None:
        with ActivationMax(self._groups) as maxima:
            for utterance in utterances:
                translate(bundle.speech2text, utterance.waveform)
        largest = 0.0
        for group in self._groups:
            if group.norm_name in maxima.maxima:  # a norm no search step reached keeps its scale
                factors = smooth_factors(maxima.maxima[group.norm_name], group, self.config.alpha)
                rescale(group, factors)
                largest = max(largest, float(factors.max() / factors.min()))
        self.details.update(layer_norms_smoothed=len(maxima.maxima), largest_factor_ratio=round(largest, 2))
