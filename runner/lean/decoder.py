"""One decoding step of an ESPnet Transformer decoder for the whole beam, with cached keys and values.

ESPnet's `forward_one_step` re-embeds the whole prefix, re-projects every earlier position's
self-attention keys and values, and projects the encoder memory again for every hypothesis, at
every step. Here each step embeds only the new token, projects only its keys and values into one
(layers, 2, n, heads, L, d_k) buffer that follows the beam, and attends to source keys and
values projected once per utterance. The layer's sublayers run in ESPnet's order with ESPnet's
modules; where a module's computation is a single op (a plain Linear or LayerNorm, a dynamically
or statically quantized Linear, a static int8 region) that op is called directly, the three
self-attention projections share one product, and the softmax attention is PyTorch's
`scaled_dot_product_attention`. These change float rounding in the last bits only (the tests
compare with ESPnet's n-best to 1e-4); anything else a plugin made of a module is called as it is.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from runner.errors import RunnerError
from runner.lean.ops import PACKING, ROW_GROUPS, Packing, direct, feed_forward, fused_projection


def check_decoder(decoder: Any) -> None:
    """Raise RunnerError naming what the lean step cannot run in this decoder (then ESPnet's search runs it)."""
    from espnet.nets.pytorch_backend.transformer.attention import MultiHeadedAttention
    from espnet.nets.pytorch_backend.transformer.decoder_layer import DecoderLayer
    from espnet.nets.pytorch_backend.transformer.embedding import PositionalEncoding
    from espnet2.asr.decoder.transformer_decoder import BaseTransformerDecoder

    if not isinstance(decoder, BaseTransformerDecoder):
        raise RunnerError(f"{type(decoder).__name__} is not a Transformer decoder")
    embed = getattr(decoder, "embed", None)
    if not (isinstance(embed, torch.nn.Sequential) and len(embed) == 2 and isinstance(embed[0], torch.nn.Embedding)
            and type(embed[1]) is PositionalEncoding):
        raise RunnerError("decoder input layer is not Embedding + PositionalEncoding")
    for index, layer in enumerate(decoder.decoders):
        if type(layer) is not DecoderLayer or layer.concat_after:
            raise RunnerError(f"decoder layer {index} is not a plain DecoderLayer")
        for name in ("self_attn", "src_attn", "sequential_attn"):
            attention = getattr(layer, name, None)
            if attention is None and name == "sequential_attn":
                continue
            if type(attention) is not MultiHeadedAttention:
                raise RunnerError(f"decoder layer {index} {name} is {type(attention).__name__}")
            if getattr(attention, "use_sdpa", False) or getattr(attention, "use_flash_attn", False):
                raise RunnerError(f"decoder layer {index} {name} uses SDPA/flash attention")


class SourceAttention:
    """Keys and values of each utterance's memory, projected once; every hypothesis's query attends to its own.

    The memories are padded (utterances, heads, T, d_k) with a mask over the padding, and the rows
    placed in an (utterances x beam) padded view by their `Layout` slots: an utterance's attention
    has the same shapes, so the same arithmetic, alone and in any batch.
    """

    def __init__(self, attention: Any, memories: list[torch.Tensor]) -> None:
        self.heads, self.d_k = attention.h, attention.d_k
        keys, values = [], []
        for memory in memories:  # projected one utterance at a time, as ESPnet projects it
            single = memory.unsqueeze(0)  # (1, T, d): ESPnet's input shape for one hypothesis
            k = attention.linear_k(single).view(1, -1, self.heads, self.d_k).transpose(1, 2)
            keys.append(attention.k_norm(k))  # (1, heads, T, d_k)
            values.append(attention.linear_v(single).view(1, -1, self.heads, self.d_k).transpose(1, 2))
        self.keys, self.values, self.mask = _pad_memories(keys, values)
        self.query, self.out = direct(attention.linear_q), direct(attention.linear_out)
        self.q_norm = direct(attention.q_norm)

    def keep(self, utterances: torch.Tensor) -> None:
        """Keep these utterances' keys and values, in this order (the others are done searching)."""
        self.keys, self.values = self.keys[utterances], self.values[utterances]
        self.mask = None if self.mask is None else self.mask[utterances]

    def __call__(self, x: torch.Tensor, layout: Any) -> torch.Tensor:
        n = x.size(0)
        q = self.query(x).view(n, self.heads, 1, self.d_k)
        if self.q_norm is not None:
            q = self.q_norm(q)
        batch = self.keys.size(0)
        beam = layout.beam_size
        q = q.view(n, self.heads * self.d_k)
        if not layout.full:
            slots = layout.slots(x.device)
            q = q.new_zeros(batch * beam, self.heads * self.d_k).index_copy_(0, slots, q)
        queries = q.view(batch, beam, self.heads, self.d_k).transpose(1, 2)  # (utterances, heads, beam, d_k)
        context = F.scaled_dot_product_attention(queries, self.keys, self.values, attn_mask=self.mask)
        context = context.transpose(1, 2).reshape(batch * beam, -1)
        if not layout.full:
            context = context.index_select(0, slots)
        return self.out(context)


MEMORY_ALIGN = 64  # memory positions are padded to a multiple of this, in every batch (see _pad_memories)


def _pad_memories(keys: list[torch.Tensor], values: list[torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Keys and values of several memories in one (utterances, heads, T, d_k) tensor each, and the
    (utterances, 1, 1, T) mask of real positions.

    Every memory is padded to a multiple of `MEMORY_ALIGN` positions, alone or in a batch: attention's
    reductions over positions then see the same whole vectors of real and padded positions whatever
    the longest memory of the batch, so an utterance's attention is bit for bit the same alone and
    batched (dynamic int8 would amplify a last-bit difference into a different quantized activation).
    """
    lengths = [k.size(2) for k in keys]
    longest = -(-max(lengths) // MEMORY_ALIGN) * MEMORY_ALIGN
    padded_keys = keys[0].new_zeros((len(keys), keys[0].size(1), longest, keys[0].size(3)))
    padded_values = values[0].new_zeros((len(values), values[0].size(1), longest, values[0].size(3)))
    for index, (k, v) in enumerate(zip(keys, values)):
        padded_keys[index, :, :k.size(2)] = k[0]
        padded_values[index, :, :v.size(2)] = v[0]
    mask = torch.arange(longest, device=keys[0].device) < torch.tensor(lengths, device=keys[0].device).unsqueeze(1)
    return padded_keys, padded_values, mask.view(len(keys), 1, 1, longest)


class SelfAttention:
    """The new position's attention over every cached position of its hypothesis (ESPnet's arithmetic)."""

    def __init__(self, attention: Any) -> None:
        self.heads, self.d_k = attention.h, attention.d_k
        self.qkv = fused_projection(attention)
        if self.qkv is None:  # resolved only when used: a float Linear gets an MKL-packed copy of its weight
            self.query, self.key, self.value = (direct(attention.linear_q), direct(attention.linear_k),
                                                direct(attention.linear_v))
            self.q_norm, self.k_norm = direct(attention.q_norm), direct(attention.k_norm)
        self.out = direct(attention.linear_out)

    def __call__(self, x: torch.Tensor, cache: torch.Tensor, t: int) -> torch.Tensor:
        """Attention of the new position x (n, d); its key and value go into `cache` (2, n, heads, L, d_k) at t."""
        n = x.size(0)
        if self.qkv is not None:
            qkv = self.qkv(x).view(n, 3, self.heads, self.d_k)
            q = qkv[:, 0]
            cache[:, :, :, t] = qkv[:, 1:].transpose(0, 1)  # key and value in one copy
        else:
            q = self.query(x).view(n, self.heads, self.d_k)
            k = self.key(x).view(n, self.heads, self.d_k)
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            cache[0, :, :, t] = k
            cache[1, :, :, t] = self.value(x).view(n, self.heads, self.d_k)
        # One query row per (hypothesis, head) over the cached positions, read in place from the buffer.
        context = F.scaled_dot_product_attention(q.unsqueeze(2), cache[0, :, :, :t + 1], cache[1, :, :, :t + 1])
        return self.out(context.view(n, -1))  # (n, heads, 1, d_k) -> (n, d)


class Layer:
    """One decoder layer's step, with its modules resolved once per utterance."""

    def __init__(self, layer: Any, memories: list[torch.Tensor], speeches: list[torch.Tensor] | None) -> None:
        self.pre = layer.normalize_before
        self.norms = [direct(getattr(layer, name)) if hasattr(layer, name) else None
                      for name in ("norm1", "norm2", "norm3", "norm4")]
        self.self_attention = SelfAttention(layer.self_attn)
        self.source = SourceAttention(layer.src_attn, memories)
        sequential = getattr(layer, "sequential_attn", None)
        self.speech = SourceAttention(sequential, speeches) if sequential is not None and speeches is not None \
            else None
        self.feed_forward = feed_forward(layer.feed_forward)

    def __call__(self, x: torch.Tensor, cache: torch.Tensor, t: int, layout: Any) -> torch.Tensor:
        """x (n, d) of the new position; `cache` (2, n, heads, L, d_k) gets its key and value at t."""
        norm1, norm2, norm3, norm4 = self.norms
        pre = self.pre
        x = x + self.self_attention(norm1(x) if pre else x, cache, t)
        if not pre:
            x = norm1(x)
        if self.speech is not None:
            x = x + self.speech(norm4(x) if pre else x, layout)
            if not pre:
                x = norm4(x)
        x = x + self.source(norm2(x) if pre else x, layout)
        if not pre:
            x = norm2(x)
        x = x + self.feed_forward(norm3(x) if pre else x)
        if not pre:
            x = norm3(x)
        return x


class DecoderStep:
    """The beams' decoder state for one or more utterances searched together: one call per search step.

    Args:
        decoder: an ESPnet `TransformerDecoder` or `TransformerMDDecoder` (checked by `check_decoder`).
        memories: each utterance's memory that every layer's source attention reads (T_i, d).
        speeches: each utterance's speech encoder output for MD decoders' speech attention (T'_i, d), else None.
        max_length: the most steps the search can take (the key/value buffers' length).
        beam_size: the most hypotheses a step holds per utterance.
    """

    def __init__(self, decoder: Any, memories: list[torch.Tensor], speeches: list[torch.Tensor] | None,
                 max_length: int, beam_size: int) -> None:
        rows = beam_size * len(memories)
        # Float weights are packed for one utterance's beam and for the batch's rows, rounded up to a
        # power-of-two batch so that a server's varying batch sizes share a few packed copies.
        token = PACKING.set(Packing(beam_size, beam_size * (1 << (len(memories) - 1).bit_length())))
        try:
            self.layers = [Layer(layer, memories, speeches) for layer in decoder.decoders]
            self.after_norm = direct(decoder.after_norm) if decoder.normalize_before else None
            self.output = direct(decoder.output_layer) if decoder.output_layer is not None else None
        finally:
            PACKING.reset(token)
        first = decoder.decoders[0].self_attn
        self.heads, self.d_k = first.h, first.d_k
        self.embedding, self.positions = decoder.embed[0], decoder.embed[1]
        # As ESPnet's PositionalEncoding: its table on the device, in the embeddings' dtype.
        weight = self.embedding.weight
        self.positions.extend_pe(torch.empty(1, max_length + 1, device=weight.device, dtype=weight.dtype))
        self.shape = (len(self.layers), 2, rows, self.heads, max_length + 1, self.d_k)
        # Two buffers, (layers, key/value, hypotheses, heads, positions, d_k): a beam reorder copies the
        # used positions of the chosen rows into the spare one, so no step allocates (or page-faults) memory.
        self.cache: torch.Tensor | None = None
        self.spare: torch.Tensor | None = None
        self.rows = 1
        self.length = 0
        self.hidden: torch.Tensor | None = None

    def __call__(self, tokens: torch.Tensor, layout: Any) -> torch.Tensor:
        """Log-probabilities (n, V) of the next token; `hidden` keeps the last layer's normalized output (n, d).

        Args:
            tokens: each hypothesis's last token (n,); the positions before it are in the cache.
            layout: which rows belong to which utterance (`runner.lean.search.Layout`).
        """
        t = self.length
        x = self.embedding(tokens) * self.positions.xscale + self.positions.pe[0, t]
        if self.cache is None:
            device_type = x.device.type
            dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
            self.cache, self.spare = x.new_empty(self.shape, dtype=dtype), x.new_empty(self.shape, dtype=dtype)
        cache = self.cache[:, :, :x.size(0)]
        # Dynamic int8 scales a call's activations by their range: one call per utterance keeps each
        # utterance's numbers what they are when it is searched alone.
        groups = ROW_GROUPS.set(layout.counts if len(layout.counts) > 1 else None)
        try:
            for index, layer in enumerate(self.layers):
                x = layer(x, cache[index], t, layout)
            self.hidden = self.after_norm(x) if self.after_norm is not None else x
            logits = self.output(self.hidden) if self.output is not None else None
        finally:
            ROW_GROUPS.reset(groups)
        self.length += 1
        self.rows = x.size(0)
        if logits is None:
            return self.hidden
        return torch.log_softmax(logits, dim=-1)

    def select(self, hypotheses: torch.Tensor) -> None:
        """Keep the cached keys and values of these hypotheses, in this order."""
        if self.cache is None:
            return
        used = self.cache[:, :, :self.rows, :, :self.length]
        torch.index_select(used, 2, hypotheses, out=self.spare[:, :, :len(hypotheses), :, :self.length])
        self.cache, self.spare = self.spare, self.cache
        self.rows = len(hypotheses)

    def keep_utterances(self, utterances: torch.Tensor) -> None:
        """Keep these utterances' memories, in this order (call `select` for their rows)."""
        for layer in self.layers:
            layer.source.keep(utterances)
            if layer.speech is not None:
                layer.speech.keep(utterances)
