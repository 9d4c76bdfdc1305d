"""One decoding step of an ESPnet Transformer decoder for the whole beam, with cached keys and values.

ESPnet's `forward_one_step` re-embeds the whole prefix, re-projects every earlier position's
self-attention keys and values, and projects the encoder memory again for every hypothesis, at
every step. Here each step embeds only the new token, projects only its keys and values into one
(layers, 2, n, heads, L, d_k) buffer that follows the beam, and attends to source keys and
values projected once per utterance. Every submodule (Linear, LayerNorm, feed-forward, and
whatever a quantization plugin made of them) is called as ESPnet calls it, in ESPnet's order.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from runner.errors import RunnerError

CHUNK = 16  # key/value buffer growth, in positions


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


def _heads(attention: Any, x: torch.Tensor) -> torch.Tensor:
    """(n, d) -> (n, heads, d_k)."""
    return x.view(x.size(0), attention.h, attention.d_k)


class SourceAttention:
    """Keys and values of one memory (heads, T, d_k), projected once; queries of the whole beam attend to them."""

    def __init__(self, attention: Any, memory: torch.Tensor) -> None:
        self.attention = attention
        single = memory.unsqueeze(0)  # (1, T, d): ESPnet's input shape for one hypothesis
        k = attention.linear_k(single).view(1, -1, attention.h, attention.d_k).transpose(1, 2)
        self.keys_t = attention.k_norm(k)[0].transpose(1, 2)  # (heads, d_k, T)
        self.values = attention.linear_v(single).view(-1, attention.h, attention.d_k).transpose(0, 1)  # (heads, T, d_k)
        self.scale = math.sqrt(attention.d_k)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        attention, n = self.attention, x.size(0)
        q = attention.q_norm(_heads(attention, attention.linear_q(x)).unsqueeze(2)).squeeze(2)  # (n, heads, d_k)
        scores = torch.bmm(q.transpose(0, 1), self.keys_t) / self.scale  # (heads, n, T)
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights, self.values).transpose(0, 1).reshape(n, -1)  # (n, d)
        return attention.linear_out(context)


class DecoderStep:
    """The beam's decoder state for one utterance: one call per search step.

    Args:
        decoder: an ESPnet `TransformerDecoder` or `TransformerMDDecoder` (checked by `check_decoder`).
        memory: the memory every layer's source attention reads (T, d).
        speech: the speech encoder output for MD decoders' speech attention (T', d), else None.
        max_length: the most steps the search can take (positional encodings are extended to it).
    """

    def __init__(self, decoder: Any, memory: torch.Tensor, speech: torch.Tensor | None, max_length: int) -> None:
        self.decoder = decoder
        self.layers = list(decoder.decoders)
        self.embedding, self.positions = decoder.embed[0], decoder.embed[1]
        self.positions.extend_pe(torch.empty(1, max_length + 1))
        self.sources = [SourceAttention(layer.src_attn, memory) for layer in self.layers]
        self.speech = [SourceAttention(layer.sequential_attn, speech)
                       if getattr(layer, "sequential_attn", None) is not None and speech is not None else None
                       for layer in self.layers]
        self.cache: torch.Tensor | None = None  # (layers, 2, n, heads, L, d_k)
        self.length = 0

    def __call__(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities (n, V) of the next token and the last layer's normalized output (n, d).

        Args:
            tokens: each hypothesis's last token (n,); the positions before it are in the cache.
        """
        t = self.length
        x = self.embedding(tokens) * self.positions.xscale + self.positions.pe[0, t]
        for index, layer in enumerate(self.layers):
            x = self._layer(index, layer, x, t)
        self.length += 1
        hidden = self.decoder.after_norm(x) if self.decoder.normalize_before else x
        if self.decoder.output_layer is None:
            return hidden, hidden
        return torch.log_softmax(self.decoder.output_layer(hidden), dim=-1), hidden

    def _layer(self, index: int, layer: Any, x: torch.Tensor, t: int) -> torch.Tensor:
        pre = layer.normalize_before
        normed = layer.norm1(x) if pre else x
        x = x + self._self_attention(index, layer.self_attn, normed, t)
        if not pre:
            x = layer.norm1(x)
        speech = self.speech[index]
        if speech is not None:
            x = x + speech(layer.norm4(x) if pre else x)
            if not pre:
                x = layer.norm4(x)
        x = x + self.sources[index](layer.norm2(x) if pre else x)
        if not pre:
            x = layer.norm2(x)
        x = x + layer.feed_forward(layer.norm3(x) if pre else x)
        if not pre:
            x = layer.norm3(x)
        return x

    def _self_attention(self, index: int, attention: Any, x: torch.Tensor, t: int) -> torch.Tensor:
        n = x.size(0)
        q = attention.q_norm(_heads(attention, attention.linear_q(x)).unsqueeze(2))  # (n, heads, 1, d_k)
        k = attention.k_norm(_heads(attention, attention.linear_k(x)).unsqueeze(2))
        v = _heads(attention, attention.linear_v(x))
        if index == 0:
            self._reserve(k, t)
        self.cache[index, 0, :, :, t] = k[:, :, 0]
        self.cache[index, 1, :, :, t] = v
        keys, values = self.cache[index, 0, :, :, :t + 1], self.cache[index, 1, :, :, :t + 1]
        scores = torch.matmul(q, keys.transpose(-2, -1)) / math.sqrt(attention.d_k)  # (n, heads, 1, t+1)
        context = torch.matmul(torch.softmax(scores, dim=-1), values)  # (n, heads, 1, d_k)
        return attention.linear_out(context.reshape(n, -1))

    def _reserve(self, k: torch.Tensor, t: int) -> None:
        """Room for position t: the buffer grows by CHUNK positions, so a beam reorder copies little unused space."""
        n, heads, _, d_k = k.shape
        if self.cache is None:
            self.cache = k.new_empty(len(self.layers), 2, n, heads, CHUNK, d_k)
        elif self.cache.size(4) <= t:
            self.cache = torch.cat((self.cache, self.cache.new_empty(*self.cache.shape[:4], CHUNK, d_k)), dim=4)

    def select(self, hypotheses: torch.Tensor) -> None:
        """Keep the cached keys and values of these hypotheses, in this order."""
        if self.cache is not None:
            self.cache = self.cache.index_select(2, hypotheses)
