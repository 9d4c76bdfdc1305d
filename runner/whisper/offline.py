"""ESPnet experiments built on Whisper, loaded without a download.

ESPnet's `OpenAIWhisperEncoder` and `OpenAIWhisperDecoder` call `whisper.load_model(name)` in their constructors,
which downloads OpenAI's checkpoint unless it is already cached, only for the weights to be replaced by the
experiment's own a moment later. `built_offline(weights)` makes that call build an untrained `Whisper` of the
experiment's own dimensions instead, read from its weights' shapes (ESPnet then loads every weight from the
experiment), so a fine-tuned experiment loads on a machine that never reached OpenAI. Inside the block only:
`whisper.load_model` is restored on leaving.

ESPnet 202511 also imports `N_MELS` from `whisper.audio` when it builds a Whisper encoder, which openai-whisper
20231106 dropped (it became a per-model dimension); `espnet_compatible` puts the constant back for the block
(80, what every model before large-v3 uses and what ESPnet's encoder computes its features with).
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from runner.errors import RunnerError

EXTRA = "pip install 'st-runner[whisper]'"
HEAD_SIZE = 64  # every Whisper model's attention heads are 64 wide (tiny: 384 / 6 ... large: 1280 / 20)
N_MELS = 80
# Beyond any published Whisper (large: 1280 wide, 32 layers, 1500 + 448 positions, 51866 tokens): a crafted
# weights file whose tensor views claim such shapes would make the build allocate gigabytes before any check
LIMITS = {"n_mels": 256, "n_audio_ctx": 6000, "n_audio_state": 4096, "n_audio_layer": 128, "n_vocab": 262144,
          "n_text_ctx": 4096, "n_text_state": 4096, "n_text_layer": 128}
# The published models' dimensions, for a part the weights do not show (a Whisper decoder over another encoder)
PUBLISHED = {
    "tiny": (384, 4), "base": (512, 6), "small": (768, 12), "medium": (1024, 24), "large": (1280, 32),
    "large-v1": (1280, 32), "large-v2": (1280, 32), "large-v3": (1280, 32), "turbo": (1280, 32),
}


def uses_whisper(config: Mapping[str, Any]) -> bool:
    """Whether an experiment's config builds a Whisper encoder or decoder, or uses Whisper's tokens."""
    return any(config.get(part) == "whisper" for part in ("encoder", "decoder", "extra_asr_decoder")) or any(
        "whisper" in str(config.get(key) or "") for key in ("token_type", "src_token_type"))


def require_whisper(source: object) -> Any:
    """The `whisper` package (openai-whisper); RunnerError naming the extra when it is not installed."""
    try:
        import whisper
        import whisper.audio
    except ImportError as error:
        raise RunnerError(f"{source}: this experiment is built on OpenAI Whisper, which is not installed: "
                          f"{EXTRA}") from error
    return whisper


@contextlib.contextmanager
def espnet_compatible(source: object = "model") -> Iterator[Any]:
    """Inside the block, `whisper.audio.N_MELS` exists as ESPnet 202511's constructors import it (removed again
    on leaving where openai-whisper has none); yields the `whisper` package."""
    whisper = require_whisper(source)
    added = not hasattr(whisper.audio, "N_MELS")
    if added:
        whisper.audio.N_MELS = N_MELS
    try:
        yield whisper
    finally:
        if added:
            del whisper.audio.N_MELS


def dimensions(state: Mapping[str, Any], name: str = "base") -> dict[str, int]:
    """`whisper.model.ModelDimensions` fields of the Whisper inside an ESPnet state_dict.

    The encoder's come from `*.encoders.conv1` and its positional embedding, the decoder's from its token and
    positional embeddings, the layer counts from the block indices; heads are 64 wide in every Whisper. A part
    the weights lack takes the published model `name`'s shape.
    """
    width, layers = PUBLISHED.get(name.removesuffix(".en"), PUBLISHED["base"])
    dims = {"n_mels": N_MELS, "n_audio_ctx": 1500, "n_audio_state": width, "n_audio_head": width // HEAD_SIZE,
            "n_audio_layer": layers, "n_vocab": 51864 if name.endswith(".en") else 51865, "n_text_ctx": 448,
            "n_text_state": width, "n_text_head": width // HEAD_SIZE, "n_text_layer": layers}
    expanded = any(key.endswith("token_embedding.ori_emb.weight") for key in state)
    for key, tensor in state.items():
        shape = tuple(tensor.shape)
        if key.endswith("encoders.conv1.weight"):
            dims.update(n_audio_state=shape[0], n_audio_head=shape[0] // HEAD_SIZE, n_mels=shape[1])
        elif key.endswith("encoders.positional_embedding"):
            dims["n_audio_ctx"] = shape[0]
        elif key.endswith("decoders.positional_embedding"):
            dims.update(n_text_ctx=shape[0], n_text_state=shape[1], n_text_head=shape[1] // HEAD_SIZE)
        elif key.endswith("decoders.token_embedding.weight") and not expanded:
            dims["n_vocab"] = shape[0]
        elif key.endswith("decoders.token_embedding.ori_emb.weight"):  # ESPnet's expanded vocabulary: the original
            dims["n_vocab"] = shape[0]
    for side, pattern in (("n_audio_layer", r"encoders\.blocks\.(\d+)\."), ("n_text_layer", r"decoders\.blocks\.(\d+)\.")):
        found = [int(m.group(1)) for m in (re.search(pattern, key) for key in state) if m]
        if found:
            dims[side] = max(found) + 1
    return dims


def plain_modules(model: torch.nn.Module) -> int:
    """Whisper's Linear, Conv1d and LayerNorm subclasses made torch's own classes, in place; returns how many.

    Whisper's subclasses only cast weights to the input's dtype (and LayerNorm computes in float32), the same
    computation in float32; as torch's classes, every plugin and engine that finds `nn.Linear` by type
    (`quantize_dynamic`, static int8, SmoothQuant, the lean engine) finds Whisper's too.
    """
    whisper_model = sys.modules.get("whisper.model")
    if whisper_model is None:
        return 0
    plain = {whisper_model.Linear: torch.nn.Linear, whisper_model.Conv1d: torch.nn.Conv1d,
             whisper_model.LayerNorm: torch.nn.LayerNorm}
    changed = 0
    for module in model.modules():
        target = plain.get(type(module))
        if target is not None:
            module.__class__ = target
            changed += 1
    return changed


def is_whisper_decoder(decoder: Any) -> bool:
    """Whether `decoder` is ESPnet's `OpenAIWhisperDecoder` (by name: importing it needs openai-whisper)."""
    return type(decoder).__name__ == "OpenAIWhisperDecoder"


def tie_output_layer(model: torch.nn.Module) -> None:
    """Whisper's output projection (its token embedding, transposed) as the decoder's `output_layer`, a Linear
    sharing the embedding's weight, which ESPnet's `forward_one_step` and the lean engine then call.

    ESPnet's Whisper decoder multiplies by the embedding matrix inline, where no plugin sees it: the dynamic int8
    plugin left the largest product of a step (51,865 x 512, 106 MB read per step in float32) in float, as
    CTranslate2's int8 does not. The state_dict stays ESPnet's (the tied layer is not saved twice).
    """
    for decoder in (getattr(model, "decoder", None), getattr(model, "extra_asr_decoder", None)):
        if not is_whisper_decoder(decoder) or isinstance(getattr(decoder, "output_layer", None), torch.nn.Module):
            continue
        embedding = decoder.decoders.token_embedding
        layer = torch.nn.Linear(embedding.weight.size(1), embedding.weight.size(0), bias=False,
                                device=embedding.weight.device, dtype=embedding.weight.dtype)
        layer.weight = embedding.weight
        decoder.output_layer = layer
        decoder.__class__ = _tied_class(type(decoder))
        decoder._register_state_dict_hook(_without_tied_copy)


def _without_tied_copy(module: Any, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    if module.output_layer.weight is module.decoders.token_embedding.weight:
        state.pop(prefix + "output_layer.weight", None)


_TIED: dict[type, type] = {}


def _tied_class(base: type) -> type:
    """ESPnet's Whisper decoder class whose step ends in `self.output_layer` (made once per base class)."""
    if base not in _TIED:
        def forward_one_step(self: Any, tgt: torch.Tensor, tgt_mask: torch.Tensor, memory: torch.Tensor, *,
                             cache: Any = None) -> tuple[torch.Tensor, None]:
            whisper = self.decoders
            x = (whisper.token_embedding(tgt) + whisper.positional_embedding[: tgt.size(1)]).to(memory.dtype)
            for block in whisper.blocks:  # ESPnet's step in eval mode (its dropout is off)
                x = block(x, memory, mask=whisper.mask)
            y = whisper.ln(x)[:, -1]
            return torch.log_softmax(self.output_layer(y).float(), dim=-1), None

        _TIED[base] = type(base.__name__, (base,), {"forward_one_step": forward_one_step,
                                                    "__module__": base.__module__})
    return _TIED[base]


def _whole_window(module: Any, inputs: Any, output: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
    encoded, lengths, states = output
    return encoded, torch.full_like(lengths, encoded.size(1)), states


def pad_trim_lengths(model: Any) -> None:
    """A Whisper encoder that pads or trims to 30 s (`do_pad_trim`) reports the whole window as its output length.

    ESPnet's encoder reports the frames of the audio before padding, but its decoder attends to the whole
    window, as Whisper was trained; ESPnet's ASR model exempts Whisper from the check that the lengths cover the
    output, its ST model does not, and refused every utterance. A forward hook (kept by copies and exports).
    """
    encoder = getattr(model, "encoder", None)
    if getattr(encoder, "do_pad_trim", False) and not getattr(encoder, "_runner_whole_window", False):
        encoder.register_forward_hook(_whole_window)
        encoder._runner_whole_window = True


@contextlib.contextmanager
def built_offline(state: Mapping[str, Any] | None, source: object = "model") -> Iterator[None]:
    """Inside the block, `whisper.load_model(name, ...)` builds an untrained Whisper with the dimensions of the
    weights `state` holds (`dimensions`), downloading nothing, and Whisper's tokenizer has the surface ESPnet
    calls (`runner.whisper.tokens.bridged`); restored on leaving (`espnet_compatible` too)."""
    from runner.whisper.tokens import bridged

    with espnet_compatible(source) as whisper, bridged(whisper):
        from whisper.model import ModelDimensions, Whisper

        original = whisper.load_model

        def load_model(name: str, device: Any = None, download_root: Any = None, in_memory: bool = False) -> Any:
            dims = dimensions(state or {}, name)
            over = [f"{key} {dims[key]:,} (at most {limit:,})" for key, limit in LIMITS.items() if dims[key] > limit]
            if over:
                raise RunnerError(f"{source}: its weights describe a Whisper larger than any: {', '.join(over)}")
            return Whisper(ModelDimensions(**dims)).to(device or "cpu")

        whisper.load_model = load_model
        try:
            yield
        finally:
            whisper.load_model = original
