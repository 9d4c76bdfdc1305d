"""A CTranslate2 Whisper directory (what faster-whisper loads) read back into OpenAI Whisper's weights.

CTranslate2's `model.bin` is one file of named arrays: a version (6 today), the spec's name and revision, then
each variable (name, rank, dimensions, data type, byte count, bytes), then aliases (a tied output projection is
an alias of the token embedding). `read_model_bin` reads it with every length checked against the file (a crafted
file is refused in one line, never over-allocated); `whisper_state` renames CTranslate2's fused attention
projections back to Whisper's query/key/value, and int8 weights back to float with their scales.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner.errors import RunnerError

# CTranslate2's DataType codes (include/ctranslate2/types.h)
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
MAX_RANK, MAX_NAME, MAX_VARIABLES = 8, 4096, 1_000_000
SUPPORTED_VERSIONS = range(5, 7)  # model.bin versions with per-variable data types and aliases


@dataclass
class CT2Model:
    """The variables of one CTranslate2 model, by name (aliases resolved), with its spec and config."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    config: dict[str, Any]
    vocabulary: list[str]


def read_model_bin(path: Path) -> tuple[str, int, dict[str, np.ndarray]]:
    """The spec name, revision and variables of a CTranslate2 `model.bin` (arrays view a memory map).

    Raises:
        RunnerError: not a model.bin, a version this reader does not know, or lengths past the file's end.
    """
    data = np.memmap(path, dtype=np.uint8, mode="r")
    reader = _Reader(data, path)
    version = reader.unpack("<I")
    if version not in SUPPORTED_VERSIONS:
        raise RunnerError(f"{path}: not a CTranslate2 model.bin this runner reads (version {version}; "
                          f"reads {SUPPORTED_VERSIONS.start}-{SUPPORTED_VERSIONS.stop - 1})")
    spec, revision = reader.string(), reader.unpack("<I")
    count = reader.unpack("<I")
    if count > MAX_VARIABLES:
        raise RunnerError(f"{path}: claims {count:,} variables (at most {MAX_VARIABLES:,})")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name, rank = reader.string(), reader.unpack("<B")
        if rank > MAX_RANK:
            raise RunnerError(f"{path}: variable {name} claims rank {rank} (at most {MAX_RANK})")
        shape = tuple(reader.unpack("<I") for _ in range(rank))
        code, size = reader.unpack("<B"), reader.unpack("<I")
        variables[name] = reader.array(name, shape, code, size)
    for _ in range(reader.unpack("<I")):
        alias, target = reader.string(), reader.string()
        if target not in variables:
            raise RunnerError(f"{path}: alias {alias} names no variable ({target})")
        variables[alias] = variables[target]
    return spec, revision, variables


class _Reader:
    """Sequential reads over the mapped file, each checked against its end."""

    def __init__(self, data: np.ndarray, path: Path) -> None:
        self.data, self.path, self.pos = data, path, 0

    def take(self, size: int, what: str) -> np.ndarray:
        if self.pos + size > len(self.data):
            raise RunnerError(f"{self.path}: truncated or corrupt: {what} runs past the end of the file")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def unpack(self, fmt: str) -> int:
        return int(struct.unpack(fmt, self.take(struct.calcsize(fmt), "a header field").tobytes())[0])

    def string(self) -> str:
        length = self.unpack("<H")
        if length > MAX_NAME:
            raise RunnerError(f"{self.path}: a name of {length} bytes (at most {MAX_NAME})")
        return self.take(length, "a name").tobytes().rstrip(b"\0").decode("utf-8", errors="replace")

    def array(self, name: str, shape: tuple[int, ...], code: int, size: int) -> np.ndarray:
        if code not in DTYPES:
            raise RunnerError(f"{self.path}: variable {name} has an unknown data type code {code}")
        dtype = DTYPES[code]
        itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        if int(np.prod(shape, dtype=np.int64)) * itemsize != size:
            raise RunnerError(f"{self.path}: variable {name}: {size} bytes do not hold shape {list(shape)}")
        raw = self.take(size, f"variable {name}")
        if dtype == "bfloat16":  # numpy has none: widen to float32 by placing the 16 bits high
            return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
        return raw.view(dtype).reshape(shape)


def read_directory(directory: Path) -> CT2Model:
    """A CTranslate2 model directory: model.bin, config.json, and vocabulary.txt or vocabulary.json.

    Raises:
        RunnerError: a missing file, or a model that is not a Whisper.
    """
    model_bin = directory / "model.bin"
    if not model_bin.is_file():
        raise RunnerError(f"{directory}: no model.bin (a CTranslate2 model directory holds model.bin, config.json "
                          "and its vocabulary)")
    spec, revision, variables = read_model_bin(model_bin)
    if spec != "WhisperSpec":
        raise RunnerError(f"{model_bin}: a CTranslate2 {spec}, not a Whisper model")
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    vocabulary = _vocabulary(directory)
    return CT2Model(spec, revision, variables, config if isinstance(config, dict) else {}, vocabulary)


def _vocabulary(directory: Path) -> list[str]:
    text_file, json_file = directory / "vocabulary.txt", directory / "vocabulary.json"
    if text_file.is_file():
        return text_file.read_text(encoding="utf-8").split("\n")[:-1]
    if json_file.is_file():
        tokens = json.loads(json_file.read_text(encoding="utf-8"))
        if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
            return tokens
    raise RunnerError(f"{directory}: no vocabulary.txt or vocabulary.json")


def _float(variables: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A weight as float32: int8 ones scaled back by their per-row `weight_scale`."""
    try:
        value = variables[name]
    except KeyError:
        raise RunnerError(f"the CTranslate2 model has no variable {name}") from None
    if value.dtype == np.int8:
        scale = variables[name.removesuffix("weight") + "weight_scale"].astype(np.float32)
        return value.astype(np.float32) / scale.reshape(-1, *([1] * (value.ndim - 1)))
    return value.astype(np.float32)


def _linear(variables: dict[str, np.ndarray], source: str, targets: list[str], state: dict[str, np.ndarray],
            biased: tuple[bool, ...]) -> None:
    """CTranslate2's (possibly fused) Linear `source` split into Whisper's `targets` (keys have no bias)."""
    weights = np.split(_float(variables, f"{source}/weight"), len(targets))
    bias_name = f"{source}/bias"
    biases = np.split(_float(variables, bias_name), len(targets)) if bias_name in variables else [None] * len(targets)
    for target, weight, bias, has_bias in zip(targets, weights, biases, biased, strict=True):
        state[f"{target}.weight"] = weight
        if has_bias:
            state[f"{target}.bias"] = bias if bias is not None else np.zeros(weight.shape[0], np.float32)


def _layer_norm(variables: dict[str, np.ndarray], source: str, target: str, state: dict[str, np.ndarray]) -> None:
    state[f"{target}.weight"] = _float(variables, f"{source}/gamma")
    state[f"{target}.bias"] = _float(variables, f"{source}/beta")


def _layers(variables: dict[str, np.ndarray], side: str) -> int:
    found = {int(m.group(1)) for m in (re.match(rf"{side}/layer_(\d+)/", name) for name in variables) if m}
    return max(found) + 1 if found else 0


def whisper_state(model: CT2Model) -> dict[str, np.ndarray]:
    """OpenAI Whisper's state_dict (`whisper.model.Whisper` names, float32) of a CTranslate2 Whisper."""
    v, state = model.variables, {}
    for conv in ("conv1", "conv2"):
        state[f"encoder.{conv}.weight"] = _float(v, f"encoder/{conv}/weight")
        state[f"encoder.{conv}.bias"] = _float(v, f"encoder/{conv}/bias")
    state["encoder.positional_embedding"] = _float(v, "encoder/position_encodings/encodings")
    for i in range(_layers(v, "encoder")):
        source, target = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        _attention(v, source, target, state, cross=False)
        _mlp(v, source, target, state)
    _layer_norm(v, "encoder/layer_norm", "encoder.ln_post", state)
    state["decoder.token_embedding.weight"] = _float(v, "decoder/embeddings/weight")
    state["decoder.positional_embedding"] = _float(v, "decoder/position_encodings/encodings")
    for i in range(_layers(v, "decoder")):
        source, target = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        _attention(v, source, target, state, cross=False)
        _attention(v, source, target, state, cross=True)
        _mlp(v, source, target, state)
    _layer_norm(v, "decoder/layer_norm", "decoder.ln", state)
    projection = v.get("decoder/projection/weight")
    if projection is not None and not np.array_equal(projection, v["decoder/embeddings/weight"]):
        raise RunnerError("the CTranslate2 model's output projection is not its token embedding; Whisper ties them")
    return state


def _attention(v: dict[str, np.ndarray], source: str, target: str, state: dict[str, np.ndarray], cross: bool) -> None:
    if not cross:
        _layer_norm(v, f"{source}/self_attention/layer_norm", f"{target}.attn_ln", state)
        _linear(v, f"{source}/self_attention/linear_0", [f"{target}.attn.{n}" for n in ("query", "key", "value")],
                state, (True, False, True))
        _linear(v, f"{source}/self_attention/linear_1", [f"{target}.attn.out"], state, (True,))
        return
    _layer_norm(v, f"{source}/attention/layer_norm", f"{target}.cross_attn_ln", state)
    _linear(v, f"{source}/attention/linear_0", [f"{target}.cross_attn.query"], state, (True,))
    _linear(v, f"{source}/attention/linear_1", [f"{target}.cross_attn.key", f"{target}.cross_attn.value"], state,
            (False, True))
    _linear(v, f"{source}/attention/linear_2", [f"{target}.cross_attn.out"], state, (True,))


def _mlp(v: dict[str, np.ndarray], source: str, target: str, state: dict[str, np.ndarray]) -> None:
    _layer_norm(v, f"{source}/ffn/layer_norm", f"{target}.mlp_ln", state)
    _linear(v, f"{source}/ffn/linear_0", [f"{target}.mlp.0"], state, (True,))
    _linear(v, f"{source}/ffn/linear_1", [f"{target}.mlp.2"], state, (True,))
