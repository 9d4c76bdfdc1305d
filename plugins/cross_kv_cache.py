"""Cross-attention key/value cache: project the encoder memory once per utterance, not per step.

ESPnet's batch beam search hands each decoder the encoder output expanded to the beam
(`x.expand(n_batch, ...)`), and every decoder layer's source attention projects that memory
to keys and values again at every output step, for every hypothesis: beam x steps identical
projections of a (T, d) matrix, the largest matmuls of decoding. This plugin gives each
source-attention module a `forward_qkv` that projects one copy of the memory, keeps it while
that memory tensor is alive, and expands it to the beam. Weights and state_dict are unchanged;
any quantization of `linear_k`/`linear_v` is used as it is.
"""

from __future__ import annotations

import types
import weakref
from dataclasses import dataclass
from typing import Any

import torch

from runner.plugin import Plugin

DECODERS = ("extra_asr_decoder", "decoder")


@dataclass
class CrossKvCacheConfig:
    pass


def _root(tensor: torch.Tensor) -> torch.Tensor:
    return tensor._base if tensor._base is not None else tensor


def cached_forward_qkv(self: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       expand_kv: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`MultiHeadedAttention.forward_qkv` for a memory whose batch rows are one tensor expanded."""
    one_memory = key.dim() == 3 and (key.size(0) == 1 or key.stride(0) == 0)  # every row the same tensor
    if key is not value or not one_memory or self.training:
        return type(self).forward_qkv(self, query, key, value, expand_kv)
    n_batch = query.size(0)
    signature = (key.data_ptr(), tuple(key.shape[1:]), key.stride()[1:], key.dtype)
    cached = self.runner_kv_cache
    if cached is None or cached[0]() is not _root(key) or cached[1] != signature:
        single = key[:1]
        k = self.k_norm(self.linear_k(single).view(1, -1, self.h, self.d_k).transpose(1, 2))
        v = self.linear_v(single).view(1, -1, self.h, self.d_k).transpose(1, 2)
        # A weak reference: the cache must not keep a finished utterance's memory alive,
        # and a new memory (even at a reused address) is a different object.
        cached = self.runner_kv_cache = (weakref.ref(_root(key)), signature, k, v)
    q = self.q_norm(self.linear_q(query).view(n_batch, -1, self.h, self.d_k).transpose(1, 2))
    k, v = cached[2], cached[3]
    return q, k.expand(n_batch, *k.shape[1:]), v.expand(n_batch, *v.shape[1:])


class CrossKvCache(Plugin):
    name = "cross-kv-cache"
    description = "Project decoder cross-attention keys/values once per utterance instead of per hypothesis per step"
    Config = CrossKvCacheConfig
    order = 90  # after quantization: it calls whatever linear_k/linear_v have become

    def apply(self, bundle: Any) -> None:
        from espnet.nets.pytorch_backend.transformer.attention import MultiHeadedAttention

        patched = 0
        for part in DECODERS:
            decoder = getattr(bundle.model, part, None)
            if decoder is None:
                continue
            for name, module in decoder.named_modules():
                if isinstance(module, MultiHeadedAttention) and not name.endswith("self_attn"):
                    module.forward_qkv = types.MethodType(cached_forward_qkv, module)
                    module.runner_kv_cache = None
                    patched += 1
        self.details.update(cross_attention_modules=patched)
