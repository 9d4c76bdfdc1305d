"""bfloat16 autocast: matmuls in bf16 (AMX on this CPU), weights and search state in float32.

On a GPU the same region is CUDA's autocast; `half-bf16` stores the weights in bf16 too.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from runner.model import ModelBundle
from runner.plugin import MODEL_PARTS, Effects, NumberFormat, Plugin


@dataclass
class Bf16Config:
    pass


class Bf16(Plugin):
    name = "bf16"
    description = "Run the whole translation under torch.autocast(<device>, bfloat16); weights stay float32"
    Config = Bf16Config
    effects = Effects(number_format=True)

    def number_format_parts(self) -> tuple[str, ...]:
        return MODEL_PARTS  # autocast reaches every part's matmuls

    def apply(self, bundle: ModelBundle) -> None:
        self.number_format = NumberFormat("bfloat16 (autocast)")

    def translation_context(self, bundle: ModelBundle) -> contextlib.AbstractContextManager[Any]:
        # Speech2Text casts its input to float32 and the beam searches keep float32 scores;
        # autocast lowers only the matmul-heavy ops, which is what AMX accelerates.
        return torch.autocast(bundle.device.type, dtype=torch.bfloat16)
