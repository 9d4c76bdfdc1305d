"""The model's computations as functions of tensors alone, in the shape ONNX export takes them.

`DecoderStepGraph` is the lean engine's decoder step (`runner.lean.decoder.DecoderStep`) for a whole
beam, with the self-attention keys/values of earlier positions as an input and the new position's as
an output, and each utterance's source (and speech) keys/values, projected once by `MemoryGraph`:
one session call per decoder per search step. `EncoderGraph` is the
feature normalization and the encoder from the frontend's features (the STFT frontend itself stays in
torch: ONNX's exporter takes no complex STFT), `CtcGraph` a CTC head's log-probabilities, and
`MdEncoderGraph` the multi-decoder model's MD encoder. Every graph calls ESPnet's own modules in
ESPnet's order, so in float it computes what ESPnet computes.
"""

from __future__ import annotations

from typing import Any

import torch

from runner.ort.tracing import traceable_masks


def _heads(x: torch.Tensor, heads: int, d_k: int) -> torch.Tensor:
    """(rows, length, heads * d_k) -> (rows, heads, length, d_k)."""
    return x.view(x.size(0), -1, heads, d_k).transpose(1, 2)


def _attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention of one query per (row, head): (rows, heads, 1, d_k) over (rows, heads, T, d_k)."""
    scores = torch.matmul(query, keys.transpose(-2, -1)) / (query.size(-1) ** 0.5)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), values)


def _stacked(attention: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The query, key and value projections' weights (and biases) stacked: one (3 d, d) product."""
    linears = (attention.linear_q, attention.linear_k, attention.linear_v)
    weight = torch.cat([linear.weight for linear in linears])
    biases = [linear.bias for linear in linears]
    return weight, (torch.cat(biases) if all(b is not None for b in biases) else None)


class MemoryGraph(torch.nn.Module):
    """One utterance's memory (1, T, d) -> every layer's source-attention keys and values (layers, 2, heads, T, d_k);
    with `speech`, the speech attention's instead."""

    def __init__(self, decoder: Any, speech: bool = False) -> None:
        super().__init__()
        self.attentions = torch.nn.ModuleList(
            [layer.sequential_attn if speech else layer.src_attn for layer in decoder.decoders])

    def forward(self, memory: torch.Tensor) -> torch.Tensor:
        projected = []
        for attention in self.attentions:
            keys = attention.k_norm(_heads(attention.linear_k(memory), attention.h, attention.d_k))
            values = _heads(attention.linear_v(memory), attention.h, attention.d_k)
            projected.append(torch.stack((keys[0], values[0])))
        return torch.stack(projected)


class DecoderStepGraph(torch.nn.Module):
    """One search step of an ESPnet Transformer (or MD) decoder for every running hypothesis.

    The hypotheses come as a grid of `utterances` x `beam` rows (rows an utterance lacks are padding, whose
    outputs the caller drops), so each utterance's queries attend to its own memory in one batched product.
    Inputs (`input_names`): tokens (U*B,) of the new position, its index `position` (a 1-element int64
    tensor), then per layer the keys and values of earlier positions (U*B, heads, t, d_k), per layer each
    utterance's source keys and values (U, heads, T, d_k) and `source_mask` (U, T), and for a
    speech-attention decoder its speech keys, values and mask likewise: one tensor per layer, so no step
    splits (copies) a cache or a memory. Outputs: log-probabilities (U*B, V), the last layer's normalized
    output (U*B, d), and per layer the new position's key and value (U*B, heads, 1, d_k).
    """

    def __init__(self, decoder: Any) -> None:
        super().__init__()
        self.decoder = decoder
        self.speech = getattr(decoder.decoders[0], "sequential_attn", None) is not None

    def _self_attention(self, attention: Any, x: torch.Tensor, past_kv: tuple[torch.Tensor, ...]
                        ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        rows, heads, d_k = x.size(0), attention.h, attention.d_k
        if isinstance(attention.q_norm, torch.nn.Identity) and isinstance(attention.k_norm, torch.nn.Identity):
            # the three projections as one product over [W_q; W_k; W_v] (one quantized call instead of three)
            qkv = torch.nn.functional.linear(x, *_stacked(attention)).view(rows, 3, heads, 1, d_k)
            query, key, value = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        else:
            x1 = x.unsqueeze(1)
            query = attention.q_norm(_heads(attention.linear_q(x1), heads, d_k))
            key = attention.k_norm(_heads(attention.linear_k(x1), heads, d_k))
            value = _heads(attention.linear_v(x1), heads, d_k)
        keys, values = torch.cat((past_kv[0], key), dim=2), torch.cat((past_kv[1], value), dim=2)
        context = _attend(query, keys, values).transpose(1, 2).reshape(rows, heads * d_k)
        return attention.linear_out(context), [key, value]

    @staticmethod
    def _source_attention(attention: Any, x: torch.Tensor, memory: tuple[torch.Tensor, ...],
                          mask: torch.Tensor) -> torch.Tensor:
        heads, d_k = attention.h, attention.d_k
        utterances = memory[0].size(0)
        query = attention.linear_q(x).view(utterances, -1, heads, d_k).transpose(1, 2)  # (U, heads, B, d_k)
        query = attention.q_norm(query)
        context = _attend(query, memory[0], memory[1], mask.view(utterances, 1, 1, -1))  # (U, heads, B, d_k)
        return attention.linear_out(context.transpose(1, 2).reshape(x.size(0), heads * d_k))

    def input_names(self) -> list[str]:
        layers = range(len(self.decoder.decoders))
        names = ["tokens", "position", *(f"past_{kind}_{i}" for i in layers for kind in ("key", "value")),
                 *(f"source_{kind}_{i}" for i in layers for kind in ("key", "value")), "source_mask"]
        if self.speech:
            names += [*(f"speech_{kind}_{i}" for i in layers for kind in ("key", "value")), "speech_mask"]
        return names

    def output_names(self) -> list[str]:
        return ["log_probs", "hidden", *(f"new_{kind}_{i}" for i in range(len(self.decoder.decoders))
                                         for kind in ("key", "value"))]

    def forward(self, tokens: torch.Tensor, position: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        decoder = self.decoder
        layers = len(decoder.decoders)
        past, source, source_mask = tensors[:2 * layers], tensors[2 * layers:4 * layers], tensors[4 * layers]
        speech, speech_mask = (tensors[4 * layers + 1:6 * layers + 1], tensors[6 * layers + 1]) if self.speech \
            else (None, None)
        embedding, positions = decoder.embed[0], decoder.embed[1]
        x = embedding(tokens) * positions.xscale + positions.pe[0].index_select(0, position)
        new: list[torch.Tensor] = []
        for index, layer in enumerate(decoder.decoders):
            pre = layer.normalize_before
            pair = slice(2 * index, 2 * index + 2)
            attended, kv = self._self_attention(layer.self_attn, layer.norm1(x) if pre else x, past[pair])
            new += kv
            x = x + attended
            if not pre:
                x = layer.norm1(x)
            if speech is not None and speech_mask is not None:
                x = x + self._source_attention(layer.sequential_attn, layer.norm4(x) if pre else x, speech[pair],
                                               speech_mask)
                if not pre:
                    x = layer.norm4(x)
            x = x + self._source_attention(layer.src_attn, layer.norm2(x) if pre else x, source[pair], source_mask)
            if not pre:
                x = layer.norm2(x)
            x = x + layer.feed_forward(layer.norm3(x) if pre else x)
            if not pre:
                x = layer.norm3(x)
        hidden = decoder.after_norm(x) if decoder.normalize_before else x
        logits = decoder.output_layer(hidden)
        return (torch.log_softmax(logits, dim=-1), hidden, *new)


class EncoderGraph(torch.nn.Module):
    """Features (1, frames, n_mels) from the STFT frontend -> (encoder output, ASR encoder output), each
    (1, T, d): `ESPnetSTModel.encode(..., return_int_enc=True)` after the frontend (normalization,
    pre-encoder, encoder, hierarchical encoder, post-encoder)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        lengths = torch.full((1,), features.size(1), dtype=torch.long)
        with traceable_masks(features.size(1)):
            if model.normalize is not None:
                features, lengths = model.normalize(features, lengths)
            if getattr(model, "preencoder", None) is not None:
                features, lengths = model.preencoder(features, lengths)
            encoded, lengths, _ = model.encoder(features, lengths)
            intermediate = encoded
            if getattr(model, "hier_encoder", None) is not None:
                encoded, lengths, _ = model.hier_encoder(encoded, lengths)
            if getattr(model, "postencoder", None) is not None:
                encoded, lengths = model.postencoder(encoded, lengths)
        return encoded, intermediate


class CtcGraph(torch.nn.Module):
    """A CTC head: encoder output (1, T, d) -> log-probabilities (1, T, V)."""

    def __init__(self, ctc: Any) -> None:
        super().__init__()
        self.ctc = ctc

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        return self.ctc.log_softmax(encoded)


class MdEncoderGraph(torch.nn.Module):
    """The MD encoder over the best ASR hypothesis's decoder states (1, L, d) -> (1, L, d)."""

    def __init__(self, md_encoder: Any) -> None:
        super().__init__()
        self.md_encoder = md_encoder

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        lengths = torch.full((1,), states.size(1), dtype=torch.long)
        with traceable_masks(states.size(1)):
            return self.md_encoder(states, lengths)[0]
