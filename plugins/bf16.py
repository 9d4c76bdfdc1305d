"""CPU bfloat16 autocast: matmuls in bf16 (AMX on this CPU), weights and search state in float32."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from runner.plugin import Plugin


@dataclass
class Bf16Config:
    pass


class Bf16(Plugin):
    name = "bf16"
    description = "Run the whole translation under torch.autocast('cpu', bfloat16); weights stay float32"
    Config = Bf16Config
    changes_number_format = True

    def apply(self, bundle: Any) -> None:
        # Speech2Text casts its input to float32 and the beam searches keep float32 scores;
        # autocast lowers only the matmul-heavy ops, which is what AMX accelerates.
        bundle.speech2text.runner_autocast = torch.bfloat16
        self.details.update(dtype="bfloat16 (autocast)")
