"""One decoding step of ESPnet's Whisper decoder (`OpenAIWhisperDecoder`) for the whole beam, with cached keys
and values.

ESPnet's Whisper decoder has no cache: every step re-runs the whole prefix, and every hypothesis re-projects
the encoder's 1500 frames into keys and values in every layer (347 ms a step for Whisper base on 2 cores).
Here, as `runner.lean.decoder.DecoderStep` does for ESPnet's Transformer decoder, each step embeds only the new
token (Whisper's learned positions), caches its self-attention keys and values, and attends to the memory's
keys and values projected once per utterance; the output projection is the token embedding, as Whisper ties
them. The attention arithmetic is the lean engine's (`SelfAttention`, `SourceAttention`), over Whisper's
modules named as ESPnet names its own (`_EspnetNames`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from runner.errors import RunnerError
from runner.lean.decoder import SelfAttention, SourceAttention
from runner.lean.ops import PACKING, ROW_GROUPS, Packing, direct


def check_whisper_decoder(decoder: Any) -> None:
    """Raise RunnerError naming what the lean step cannot run in this Whisper decoder."""
    blocks = decoder.decoders.blocks
    for index, block in enumerate(blocks):
        if block.cross_attn is None:
            raise RunnerError(f"Whisper decoder block {index} has no cross-attention")
    if type(decoder.decoders.token_embedding) is not torch.nn.Embedding:
        raise RunnerError("the Whisper decoder's vocabulary was expanded (ExpandedTokenEmbedding)")
    if not isinstance(getattr(decoder, "output_layer", None), torch.nn.Module):
        raise RunnerError("the Whisper decoder has no output_layer (runner.whisper.offline.tie_output_layer)")


class _EspnetNames:
    """A Whisper `MultiHeadAttention` seen through the names of ESPnet's (what the lean attention reads)."""

    def __init__(self, attention: Any) -> None:
        self.h = attention.n_head
        self.d_k = attention.query.out_features // attention.n_head
        self.linear_q, self.linear_k, self.linear_v = attention.query, attention.key, attention.value
        self.linear_out = attention.out
        self.q_norm = self.k_norm = torch.nn.Identity()
        self.__dict__["runner_lean_qkv"] = attention.__dict__.setdefault("runner_lean_qkv", {})


def _attend(q: torch.Tensor, keys_t: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """softmax(q K^T / sqrt(d) + bias) V for a few query rows: two matrix products (PyTorch's fused CPU kernel
    costs ~0.6 ms a call for 5 queries over Whisper's 1500 frames, more than the products themselves)."""
    scores = torch.matmul(q * (q.size(-1) ** -0.5), keys_t)
    if bias is not None:
        scores = scores + bias
    return torch.matmul(torch.softmax(scores, dim=-1), values)


class _CrossAttention(SourceAttention):
    """The lean engine's source attention, its keys kept transposed and its mask as an additive bias."""

    def __init__(self, attention: Any, memories: list[torch.Tensor]) -> None:
        super().__init__(attention, memories)
        self._transpose()

    def _transpose(self) -> None:
        self.keys_t = self.keys.transpose(-1, -2).contiguous()
        self.bias = None if self.mask is None or bool(self.mask.all()) else \
            torch.zeros(self.mask.shape, dtype=self.keys.dtype).masked_fill(~self.mask, float("-inf"))

    def keep(self, utterances: torch.Tensor) -> None:
        super().keep(utterances)
        self._transpose()

    def __call__(self, x: torch.Tensor, layout: Any) -> torch.Tensor:
        q = self.query(x)
        batch, beam = self.keys.size(0), layout.beam_size
        if not layout.full:
            slots = layout.slots(x.device)
            q = q.new_zeros(batch * beam, q.size(1)).index_copy_(0, slots, q)
        queries = q.view(batch, beam, self.heads, self.d_k).transpose(1, 2)
        context = _attend(queries, self.keys_t, self.values, self.bias).transpose(1, 2).reshape(batch * beam, -1)
        if not layout.full:
            context = context.index_select(0, slots)
        return self.out(context)


class _SelfAttention(SelfAttention):
    """The lean engine's self-attention over the cached positions, attended by `_attend`."""

    def __call__(self, x: torch.Tensor, cache: torch.Tensor, t: int) -> torch.Tensor:
        n = x.size(0)
        if self.qkv is not None:
            qkv = self.qkv(x).view(n, 3, self.heads, self.d_k)
            q = qkv[:, 0]
            cache[:, :, :, t] = qkv[:, 1:].transpose(0, 1)
        else:
            q = self.query(x).view(n, self.heads, self.d_k)
            cache[0, :, :, t] = self.key(x).view(n, self.heads, self.d_k)
            cache[1, :, :, t] = self.value(x).view(n, self.heads, self.d_k)
        context = _attend(q.unsqueeze(2), cache[0, :, :, :t + 1].transpose(-1, -2), cache[1, :, :, :t + 1], None)
        return self.out(context.view(n, -1))


class _Block:
    """One residual attention block's step: self-attention, cross-attention, MLP, each after its LayerNorm."""

    def __init__(self, block: Any, memories: list[torch.Tensor]) -> None:
        self.attn_ln, self.cross_ln, self.mlp_ln = direct(block.attn_ln), direct(block.cross_attn_ln), direct(
            block.mlp_ln)
        self.self_attention = _SelfAttention(_EspnetNames(block.attn))
        self.source = _CrossAttention(_EspnetNames(block.cross_attn), memories)
        first, activation, second = block.mlp
        self.first, self.second, self.activation = direct(first), direct(second), activation
        self.exact_gelu = type(activation) is torch.nn.GELU and activation.approximate == "none" and \
            not activation._forward_hooks

    def __call__(self, x: torch.Tensor, cache: torch.Tensor, t: int, layout: Any) -> torch.Tensor:
        x = x + self.self_attention(self.attn_ln(x), cache, t)
        x = x + self.source(self.cross_ln(x), layout)
        hidden = self.first(self.mlp_ln(x))
        hidden = F.gelu(hidden) if self.exact_gelu else self.activation(hidden)
        return x + self.second(hidden)


class WhisperStep:
    """The beams' Whisper decoder state for one or more utterances (`DecoderStep`'s interface).

    Args:
        decoder: ESPnet's `OpenAIWhisperDecoder` (checked by `check_whisper_decoder`).
        memories: each utterance's encoder output (T_i, d).
        max_length: the most positions a hypothesis reaches (primer included): the buffers' length.
        beam_size: the most hypotheses a step holds per utterance.
    """

    def __init__(self, decoder: Any, memories: list[torch.Tensor], max_length: int, beam_size: int) -> None:
        whisper = decoder.decoders
        rows = beam_size * len(memories)
        token = PACKING.set(Packing(beam_size, beam_size * (1 << (len(memories) - 1).bit_length())))
        try:
            self.blocks = [_Block(block, memories) for block in whisper.blocks]
            self.ln = direct(whisper.ln)
            self.output = direct(decoder.output_layer)  # the embedding's weight (`tie_output_layer`)
        finally:
            PACKING.reset(token)
        self.embedding, self.positions = whisper.token_embedding, whisper.positional_embedding
        heads, d_k = self.blocks[0].self_attention.heads, self.blocks[0].self_attention.d_k
        self.shape = (len(self.blocks), 2, rows, heads, max_length, d_k)
        self.cache: torch.Tensor | None = None
        self.spare: torch.Tensor | None = None
        self.rows = 1
        self.length = 0
        self.hidden: torch.Tensor | None = None

    def prefill(self, tokens: torch.Tensor, layout: Any) -> None:
        """Cache the positions of a primer's tokens before the last (n, P-1): Whisper's start-of-transcript,
        language and task; the first `__call__` then takes the primer's last token."""
        for position in range(tokens.size(1)):
            self(tokens[:, position], layout, logits=False)

    def __call__(self, tokens: torch.Tensor, layout: Any, logits: bool = True) -> torch.Tensor | None:
        """Log-probabilities (n, V) of the next token after each hypothesis's last token `tokens` (n,)."""
        t = self.length
        x = self.embedding(tokens) + self.positions[t]
        if self.cache is None:
            self.cache, self.spare = x.new_empty(self.shape), x.new_empty(self.shape)
        cache = self.cache[:, :, :x.size(0)]
        groups = ROW_GROUPS.set(layout.counts if len(layout.counts) > 1 else None)
        try:
            for index, block in enumerate(self.blocks):
                x = block(x, cache[index], t, layout)
            self.length += 1
            self.rows = x.size(0)
            if not logits:
                return None
            self.hidden = self.ln(x)
            scores = self.output(self.hidden).float()
        finally:
            ROW_GROUPS.reset(groups)
        return torch.log_softmax(scores, dim=-1)

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
        for block in self.blocks:
            block.source.keep(utterances)
