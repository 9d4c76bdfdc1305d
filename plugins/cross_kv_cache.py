"""Cross-attention key/value cache: project the encoder memory once per utterance, not per step.

ESPnet's batch beam search hands each decoder the encoder output expanded to the beam
(`x.expand(n_batch, ...)`), and every decoder layer's source attention projects that memory
to keys and values again at every output step, for every hypothesis: beam x steps identical
projections of a (T, d) matrix, the largest matmuls of decoding. This plugin gives each
source-attention module a `forward` that projects one copy of the memory, keeps it while that
memory tensor is alive, and attends the whole beam to it without expanding it. Weights and state_dict are unchanged;
any quantization of `linear_k`/`linear_v` is used as it is.
"""

from __future__ import annotations

import math
import types
import weakref
from dataclasses import dataclass
from typing import Any

import torch

from runner.compat import check_espnet_version, require_attributes, require_parameters
from runner.model import ModelBundle
from runner.plugin import DECODER_PARTS, Effects, Plugin

# What `cached_forward` reads of ESPnet's MultiHeadedAttention.
ATTENTION_ATTRIBUTES = ("h", "d_k", "linear_q", "linear_k", "linear_v", "linear_out", "q_norm", "k_norm", "attn",
                        "use_sdpa", "use_flash_attn")


@dataclass
class CrossKvCacheConfig:
    pass


def _root(tensor: torch.Tensor) -> torch.Tensor:
    return tensor._base if tensor._base is not None else tensor


def _projected_memory(self: Any, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of one copy of `memory`, (heads, T, d_k) each, computed once per memory tensor."""
    signature = (memory.data_ptr(), tuple(memory.shape[1:]), memory.stride()[1:], memory.dtype)
    cached = self.runner_kv_cache
    if cached is None or cached[0]() is not _root(memory) or cached[1] != signature:
        single = memory[:1]
        k = self.k_norm(self.linear_k(single).view(1, -1, self.h, self.d_k).transpose(1, 2))[0]
        v = self.linear_v(single).view(-1, self.h, self.d_k).transpose(0, 1)
        # A weak reference: the cache must not keep a finished utterance's memory alive,
        # and a new memory (even at a reused address) is a different object.
        cached = self.runner_kv_cache = (weakref.ref(_root(memory)), signature, k, v)
    return cached[2], cached[3]


def cached_forward(self: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   mask: torch.Tensor | None, expand_kv: bool = False) -> torch.Tensor:
    """`MultiHeadedAttention.forward` (ESPnet's non-SDPA arithmetic) against a cached, unexpanded memory.

    Every hypothesis attends to the same keys, so the beam's queries become rows of one
    (heads, beam x t1, d_k) x (heads, d_k, T) product: no copy of the expanded memory is made.
    """
    one_memory = key.dim() == 3 and (key.size(0) == 1 or key.stride(0) == 0)  # every row the same tensor
    if key is not value or not one_memory or self.training or self.use_flash_attn or self.use_sdpa:
        return type(self).forward(self, query, key, value, mask, expand_kv)
    k, v = _projected_memory(self, key)
    n_batch, t1 = query.shape[:2]
    q = self.q_norm(self.linear_q(query).view(n_batch, t1, self.h, self.d_k).transpose(1, 2))
    rows = q.transpose(0, 1).reshape(self.h, n_batch * t1, self.d_k)
    scores = (torch.bmm(rows, k.transpose(1, 2)) / math.sqrt(self.d_k)).view(self.h, n_batch, t1, -1).transpose(0, 1)
    if mask is not None:
        mask = mask.unsqueeze(1).eq(0)
        scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
        self.attn = torch.softmax(scores, dim=-1).masked_fill(mask, 0.0)
    else:
        self.attn = torch.softmax(scores, dim=-1)
    weights = self.attn.transpose(0, 1).reshape(self.h, n_batch * t1, -1)
    context = torch.bmm(weights, v).view(self.h, n_batch, t1, self.d_k).permute(1, 2, 0, 3)
    return self.linear_out(context.reshape(n_batch, t1, self.h * self.d_k))


class CrossKvCache(Plugin):
    name = "cross-kv-cache"
    description = "Project decoder cross-attention keys/values once per utterance instead of per hypothesis per step"
    Config = CrossKvCacheConfig
    effects = Effects(search=True)
    after = ("number-format",)  # it calls whatever linear_k/linear_v have become

    def apply(self, bundle: ModelBundle) -> None:
        from espnet.nets.pytorch_backend.transformer.attention import MultiHeadedAttention

        check_espnet_version(self.name)
        require_parameters(self.name, MultiHeadedAttention.forward, ("query", "key", "value", "mask", "expand_kv"),
                           "MultiHeadedAttention.forward")
        patched, unsupported = 0, 0
        for part in DECODER_PARTS:
            decoder = getattr(bundle.model, part, None)
            if decoder is None:
                continue
            for name, module in decoder.named_modules():
                if type(module) is not MultiHeadedAttention or name.endswith("self_attn"):
                    continue  # subclasses (relative positions, ...) compute other arithmetic
                require_attributes(self.name, module, ATTENTION_ATTRIBUTES, f"{part}.{name}")
                if module.use_sdpa or module.use_flash_attn:
                    unsupported += 1  # ESPnet's fused kernels: left as they are
                    continue
                module.forward = types.MethodType(cached_forward, module)
                module.runner_kv_cache = None
                patched += 1
        self.details.update(cross_attention_modules=patched, unsupported_modules=unsupported)
