"""Dynamic float16 quantization: float16 weights, float32 activations and accumulation."""

from __future__ import annotations

import torch

from runner.plugins.dynamic_int8 import DynamicInt8


class DynamicFp16(DynamicInt8):
    name = "dynamic-fp16"
    description = "torch.ao dynamic quantization with float16 weights (fbgemm packs them; docs/plugins.md says what that does to size)"
    dtype = torch.float16
