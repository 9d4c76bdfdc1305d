"""Decoder self-attention key/value cache: each output step projects only its own position.

ESPnet's decoders cache each layer's *outputs*; at every step every layer layer-normalises the
whole prefix again and projects it to keys and values again, for every hypothesis, so step n
does n positions of that work. This plugin gives each decoder a `batch_score` whose per-layer
beam-search state is that layer's projected keys and values (n-1, 2d) instead: a step embeds
its last token, projects one position per layer and attends to the stored keys. Everything
else in a layer (source, speech and feed-forward parts) is called as ESPnet's modules, so
quantized or patched submodules (cross-kv-cache) are used as they are. The beam search selects
and reorders these states as it does ESPnet's. Layers with `concat_after` or SDPA/flash
attention are left unpatched.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Any

import torch

from runner.compat import check_espnet_version, require_attributes, require_parameters
from runner.model import ModelBundle
from runner.plugin import DECODER_PARTS, Effects, Plugin

# What `decoder_step` reads of ESPnet's decoders, their layers and self-attention modules.
DECODER_ATTRIBUTES = ("decoders", "embed", "after_norm", "normalize_before", "output_layer")
LAYER_ATTRIBUTES = ("self_attn", "src_attn", "feed_forward", "norm1", "norm2", "norm3", "normalize_before",
                    "concat_after", "sequential_attn")
ATTENTION_ATTRIBUTES = ("h", "d_k", "linear_q", "linear_k", "linear_v", "linear_out", "q_norm", "k_norm")


@dataclass
class SelfKvCacheConfig:
    pass


def _self_attention(attention: Any, query_input: torch.Tensor, keys_values: torch.Tensor) -> torch.Tensor:
    """The new positions' self-attention over every stored position (ESPnet's arithmetic).

    New positions are the last rows of `keys_values`; each sees itself and what precedes it.
    """
    (n_batch, length), new = keys_values.shape[:2], query_input.size(1)
    heads, d_k = attention.h, attention.d_k
    q = attention.q_norm(attention.linear_q(query_input).view(n_batch, new, heads, d_k).transpose(1, 2))
    k, v = keys_values.view(n_batch, length, 2, heads, d_k).permute(2, 0, 3, 1, 4)
    scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(d_k)
    if new == 1:  # a search step: the last position sees every earlier one
        attention.attn = torch.softmax(scores, dim=-1)
    else:
        hidden = torch.ones(new, length, dtype=torch.bool, device=scores.device).tril(length - new).logical_not()
        scores = scores.masked_fill(hidden, torch.finfo(scores.dtype).min)
        attention.attn = torch.softmax(scores, dim=-1).masked_fill(hidden, 0.0)
    context = torch.matmul(attention.attn, v).transpose(1, 2).reshape(n_batch, new, heads * d_k)
    return attention.linear_out(context)


def _project(attention: Any, normed: torch.Tensor) -> torch.Tensor:
    """Keys (after ESPnet's optional k_norm) and values of new positions, side by side: (batch, new, 2d)."""
    n_batch, new = normed.shape[:2]
    k = attention.k_norm(attention.linear_k(normed).view(n_batch, new, attention.h, attention.d_k).transpose(1, 2))
    return torch.cat((k.transpose(1, 2).reshape(n_batch, new, -1), attention.linear_v(normed)), dim=-1)


def _sublayer(layer: Any, x: torch.Tensor, norm: torch.nn.Module, attend: Any) -> torch.Tensor:
    """Residual block in ESPnet's pre- or post-norm order."""
    if layer.normalize_before:
        return x + attend(norm(x))
    return norm(x + attend(x))


def layer_step(layer: Any, x: torch.Tensor, past: torch.Tensor | None, memory: torch.Tensor,
               speech: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoder layer for the new positions x (batch, new, d): their outputs and all keys/values so far."""
    normed = layer.norm1(x) if layer.normalize_before else x
    keys_values = _project(layer.self_attn, normed)
    if past is not None:
        keys_values = torch.cat((past, keys_values), dim=1)
    attended = x + _self_attention(layer.self_attn, normed, keys_values)
    x = attended if layer.normalize_before else layer.norm1(attended)
    if layer.sequential_attn is not None:
        x = _sublayer(layer, x, layer.norm4, lambda h: layer.sequential_attn(h, speech, speech, None))
    x = _sublayer(layer, x, layer.norm2, lambda h: layer.src_attn(h, memory, memory, None))
    x = _sublayer(layer, x, layer.norm3, layer.feed_forward)
    return x, keys_values


def decoder_step(decoder: Any, ys: torch.Tensor, states: list[Any], memory: torch.Tensor,
                 speech: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, list[list[torch.Tensor]]]:
    """Log-probabilities, last hidden state and per-hypothesis [per-layer keys/values] for prefixes ys."""
    n_batch, n_layers = len(ys), len(decoder.decoders)
    past = (None if states[0] is None else
            [torch.stack([states[b][i] for b in range(n_batch)]) for i in range(n_layers)])
    # Positional encoding needs positions: embed the prefix, keep what no state covers (one row in a search).
    x = decoder.embed(ys)[:, 0 if past is None else past[0].size(1):]
    stored = []
    for i, layer in enumerate(decoder.decoders):
        x, keys_values = layer_step(layer, x, None if past is None else past[i], memory, speech)
        stored.append(keys_values)
    hidden = decoder.after_norm(x[:, -1]) if decoder.normalize_before else x[:, -1]
    logp = torch.log_softmax(decoder.output_layer(hidden), dim=-1) if decoder.output_layer is not None else hidden
    return logp, hidden, [[stored[i][b] for i in range(n_layers)] for b in range(n_batch)]


def batch_score(self: Any, ys: torch.Tensor, states: list[Any], xs: torch.Tensor,
                return_hs: bool = False) -> tuple[Any, list[Any]]:
    logp, hidden, state_list = decoder_step(self, ys, states, xs, None)
    return ((logp, hidden), state_list) if return_hs else (logp, state_list)


def md_batch_score(self: Any, ys: torch.Tensor, states: list[Any], xs: torch.Tensor,
                   speech: torch.Tensor | None = None) -> tuple[torch.Tensor, list[Any]]:
    logp, _, state_list = decoder_step(self, ys, states, xs, speech if self.use_speech_attn else None)
    return logp, state_list


def check_internals(plugin: str, part: str, decoder: Any) -> None:
    """Refuse, naming what differs, when the decoder is not built as `decoder_step` expects."""
    require_attributes(plugin, decoder, DECODER_ATTRIBUTES, f"{part} ({type(decoder).__name__})")
    for index, layer in enumerate(decoder.decoders):
        where = f"{part}.decoders.{index} ({type(layer).__name__})"
        require_attributes(plugin, layer, LAYER_ATTRIBUTES, where)
        if layer.sequential_attn is not None:
            require_attributes(plugin, layer, ("norm4",), where)
        require_attributes(plugin, layer.self_attn, ATTENTION_ATTRIBUTES, f"{where}.self_attn")


def supported(decoder: Any) -> bool:
    """Whether every layer computes what `layer_step` re-implements (no concat_after, no SDPA/flash)."""
    layers = list(decoder.decoders)
    return bool(layers) and all(
        not layer.concat_after and not getattr(layer.self_attn, "use_sdpa", False)
        and not getattr(layer.self_attn, "use_flash_attn", False) for layer in layers)


class SelfKvCache(Plugin):
    name = "self-kv-cache"
    description = "Decoder self-attention keeps each position's keys/values instead of re-projecting the prefix"
    Config = SelfKvCacheConfig
    effects = Effects(search=True)

    def apply(self, bundle: ModelBundle) -> None:
        from espnet2.asr.decoder.transformer_decoder import BaseTransformerDecoder, TransformerMDDecoder

        check_espnet_version(self.name)
        require_parameters(self.name, BaseTransformerDecoder.batch_score, ("ys", "states", "xs", "return_hs"),
                           "BaseTransformerDecoder.batch_score")
        require_parameters(self.name, TransformerMDDecoder.batch_score, ("ys", "states", "xs", "speech"),
                           "TransformerMDDecoder.batch_score")
        patched, skipped = [], []
        for part in DECODER_PARTS:
            decoder = getattr(bundle.model, part, None)
            if not isinstance(decoder, BaseTransformerDecoder):
                continue
            check_internals(self.name, part, decoder)
            if isinstance(decoder, TransformerMDDecoder):
                require_attributes(self.name, decoder, ("use_speech_attn",), f"{part} ({type(decoder).__name__})")
            if not supported(decoder):
                skipped.append(part)
                continue
            step = md_batch_score if isinstance(decoder, TransformerMDDecoder) else batch_score
            decoder.batch_score = types.MethodType(step, decoder)
            patched.append(part)
        self.details.update(decoders=patched, unsupported=skipped)
