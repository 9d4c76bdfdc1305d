"""Finding a model's files: experiment directories, configs, .pth files and packed archives.

Paths inside config.yaml that do not exist (written relative to a recipe root, or absolute paths of
another machine) are found by their trailing components under the model directory and its parents,
so an experiment copied anywhere still loads. A trainer checkpoint (`checkpoint.pth`) is unwrapped
to its model weights. `runner.model.load` builds the model from what `locate` finds.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from runner import tasks
from runner.archive import sha256
from runner.archive import unpack as archive_unpack
from runner.errors import RunnerError, first_line
from runner.yamlio import read_yaml

MODEL_FILE_NAMES = (
    "valid.acc.ave.pth",
    "valid.bleu.ave.pth",
    "valid.acc.best.pth",
    "valid.bleu.best.pth",
    "valid.loss.ave.pth",
    "valid.loss.best.pth",
    "model.pth",
)
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2")
# Config keys that name files the model cannot load without.
REQUIRED_PATH_KEYS = ("token_list", "src_token_list", "bpemodel", "src_bpemodel", "stats_file")
# Keys of an ESPnet trainer checkpoint (espnet2/train/trainer.py) besides "model".
TRAINER_KEYS = ("reporter", "optimizers", "schedulers", "scaler")
SHOWN_KEYS = 3  # how many mismatched keys an error names
# bpemodel values that name a built-in tokenizer, not a file (ESPnet's Whisper experiments)
BUILTIN_TOKENIZERS = ("whisper_multilingual", "whisper_en")

logger = logging.getLogger("runner")


def cache_dir() -> Path:
    root = os.environ.get("ST_RUNNER_CACHE") or Path.home() / ".cache" / "st-runner"
    return Path(root)


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's config and weights are, after unpacking and path resolution."""

    origin: Path  # what the user named
    config: Path  # config.yaml to load (a resolved copy when paths had to be rewritten)
    model_file: Path  # the weights ESPnet loads (the unwrapped copy of a trainer checkpoint)
    packed: bool
    checkpoint: Path | None = None  # the trainer checkpoint `model_file` was unwrapped from
    weight_keys: frozenset[str] = frozenset()  # the state_dict keys in `model_file` (as the ST model names them)
    task: str = "st"  # what the experiment was trained for: "st", or "asr" (`runner.tasks`)

    @property
    def file_bytes(self) -> int:
        return self.model_file.stat().st_size

    @functools.cached_property
    def content_hash(self) -> str:
        """sha256 prefix of the weights, read once however many reports (or bundle copies) ask."""
        return file_hash(self.model_file)


def locate(path: str | Path, model_file: str | Path | None = None) -> ModelFiles:
    """Find a model's config and weights: fetch Hub names, unpack archives, unwrap trainer checkpoints, resolve
    paths."""
    from runner import hub

    origin = Path(path)
    if hub.is_hub_name(path):
        origin, weights_file = hub.experiment(hub.snapshot(str(path)), str(path))
        model_file = model_file or weights_file
    if not origin.exists():
        raise RunnerError(f"{origin}: model path not found")
    if origin.is_file() and origin.name.endswith(ARCHIVE_SUFFIXES):
        config, weights = _unpack(origin)
        packed = True
    elif origin.is_dir() and (origin / "manifest.json").is_file() and (origin / "model" / "config.yaml").is_file():
        # a `runner export` directory: its model/ is the experiment, its graphs run on the onnxruntime engine
        config, packed = origin / "model" / "config.yaml", False
        weights = Path(model_file) if model_file else origin / "model" / "model.pth"
    elif origin.is_dir():
        config = origin / "config.yaml"
        if not config.is_file():
            yamls = sorted(p.name for p in origin.glob("*.yaml"))
            raise RunnerError(f"{origin}: no config.yaml (found: {', '.join(yamls) or 'no YAML files'})")
        weights = Path(model_file) if model_file else _pick_model_file(origin)
        packed = False
    elif origin.suffix == ".pth":
        config, weights, packed = origin.parent / "config.yaml", origin, False
        if not config.is_file():
            raise RunnerError(f"{origin}: no config.yaml beside the model file")
    elif origin.suffix in (".yaml", ".yml"):
        config, packed = origin, False
        weights = Path(model_file) if model_file else _pick_model_file(origin.parent)
    else:
        raise RunnerError(f"{origin}: not a model directory, config, .pth or packed archive")
    if not weights.is_file():
        raise RunnerError(f"{weights}: model file not found")
    unwrapped, keys = _inspect_weights(weights)
    config, task = _as_st_config(_resolve_config_paths(config))
    if task == tasks.ASR:
        keys = frozenset(tasks.st_key(key) for key in keys)
    return ModelFiles(origin, config, unwrapped or weights, packed, weights if unwrapped else None, keys, task)


def _safe_globals() -> list[Any]:
    """What a trainer checkpoint may hold besides tensors and containers: numpy numbers and arrays of
    numbers (ESPnet's reporter keeps its statistics as numpy scalars). Nothing that runs code."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    dtypes = [type(np.dtype(name)) for name in ("float16", "float32", "float64", "int32", "int64", "bool")]
    return [core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


def read_weights(path: Path) -> Any:
    """torch.load of a model file onto the CPU, as data only, memory-mapped when the format allows.

    A model file is a pickle, and a pickle can name any callable to run while it loads. Only tensors,
    containers, numbers and numpy numbers (`_safe_globals`) are read; anything else is refused before
    it runs, naming the type the file asked for.

    Raises:
        RunnerError: the file is not a PyTorch file, or it asks to unpickle something that is not data.
    """
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"(?:GLOBAL|global) ([\w.]+)", str(error))
        what = f"'{found.group(1)}'" if found else "an object that is not tensors, numbers or containers"
        raise RunnerError(f"{path}: refused: loading it would unpickle {what}, which can run code; "
                          f"a model file holds only weights") from error
    except Exception as error:
        raise RunnerError(f"{path}: not a readable PyTorch model file ({first_line(error)})") from error


def _inspect_weights(weights: Path) -> tuple[Path | None, frozenset[str]]:
    """The weights' state_dict keys, and for an ESPnet trainer checkpoint its model weights saved once to
    the cache (None for plain weights)."""
    state = read_weights(weights)
    if isinstance(state, dict) and isinstance(state.get("module"), dict):  # DeepSpeed, as ESPnet unwraps it
        state = state["module"]
    if not isinstance(state, dict):
        raise RunnerError(f"{weights}: not a state_dict (a {type(state).__name__})")
    if not (isinstance(state.get("model"), dict) and any(k in state for k in TRAINER_KEYS)):
        return None, frozenset(state)
    target = cache_dir() / "unwrapped" / file_hash(weights) / "model.pth"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        torch.save(state["model"], partial)
        partial.replace(target)
    logger.info("%s is a trainer checkpoint: loading its model weights (saved as %s)", weights, target)
    return target, frozenset(state["model"])


def check_weights_fit(model: torch.nn.Module, files: ModelFiles) -> None:
    """Refuse weights whose keys differ from the model that config.yaml builds.

    ESPnet's `build_model_from_file` loads with `strict=False`, so missing keys would stay
    randomly initialised and unexpected ones would be dropped, without a word.
    """
    expected = set(model.state_dict())
    mismatched = {"missing": sorted(expected - files.weight_keys), "unexpected": sorted(files.weight_keys - expected)}
    problems = [f"{len(keys)} {kind} key(s) ({', '.join(keys[:SHOWN_KEYS])}{', ...' if len(keys) > SHOWN_KEYS else ''})"
                for kind, keys in mismatched.items() if keys]
    if not problems:
        return
    source = files.checkpoint or files.model_file
    raise RunnerError(f"{source}: the weights do not fit the model {files.config.name} builds: "
                      f"{' and '.join(problems)}; were they trained with this config?")


def _pick_model_file(directory: Path) -> Path:
    for name in MODEL_FILE_NAMES:
        if (directory / name).is_file():
            return directory / name
    candidates = sorted(p for p in directory.glob("*.pth") if p.name != "checkpoint.pth")
    averaged = [p for p in candidates if "ave" in p.name]
    if len(averaged) == 1 or len(candidates) == 1:
        return (averaged or candidates)[0]
    if not candidates and (directory / "checkpoint.pth").is_file():
        return directory / "checkpoint.pth"  # a run stopped before its first snapshot average: unwrapped
    if not candidates:
        raise RunnerError(f"{directory}: no model file (*.pth)")
    names = ", ".join(p.name for p in candidates)
    raise RunnerError(f"{directory}: several model files ({names}); name one with --model-file")


def file_hash(path: Path) -> str:
    """The first 16 hex digits of the file's sha256 (what reports print)."""
    return sha256(path)[:16]


def _unpack(archive: Path) -> tuple[Path, Path]:
    """The config and weights of a packed model, unpacked safely into the cache (`runner.archive`)."""
    entry, meta = archive_unpack(archive, cache_dir() / "packed")
    files = {**meta["yaml_files"], **meta["files"]}
    config = files.get("st_train_config") or next((v for k, v in files.items() if k.endswith("train_config")), None)
    weights = files.get("st_model_file") or next((v for k, v in files.items() if k.endswith("model_file")), None)
    if not config or not weights:
        raise RunnerError(f"{archive}: meta.yaml names no st_train_config/st_model_file ({sorted(files)})")
    return entry / config, entry / weights


def find_by_trailing_parts(value: str, roots: list[Path]) -> tuple[Path | None, list[Path]]:
    """`value` (relative or absolute, possibly another machine's) under `roots`, by its trailing components.

    `/home/x/egs2/must_c/st1/data/tgt_bpe.model` is looked for as `st1/data/tgt_bpe.model`,
    `data/tgt_bpe.model` and `tgt_bpe.model` under each root in turn (longest match first).

    Returns:
        The first existing candidate (or None) and every place tried, in order.
    """
    parts = [p for p in Path(value).parts if p not in (Path(value).anchor, "", ".")]
    tried: list[Path] = []
    for root in roots:
        for start in range(len(parts)):
            candidate = root.joinpath(*parts[start:])
            if candidate not in tried:
                tried.append(candidate)
            if candidate.exists():
                return candidate, tried
    return None, tried


def _as_st_config(config: Path) -> tuple[Path, str]:
    """The config ST inference loads and the experiment's task: an ASR experiment's config translated
    (`runner.tasks.st_config`), written once into the cache; any other as it is."""
    data = read_yaml(config, "training config")
    if not isinstance(data, dict) or tasks.task_of(data) != tasks.ASR:
        return config, tasks.ST
    return _cached_config(config, tasks.st_config(data, config), "st-of-asr"), tasks.ASR


def _cached_config(config: Path, data: dict[str, Any], kind: str) -> Path:
    """`data` written as a config.yaml in the cache, named by the original's path and content."""
    digest = hashlib.sha256(kind.encode() + str(config.resolve()).encode() + config.read_bytes()).hexdigest()[:16]
    target = cache_dir() / "configs" / digest / "config.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return target


def _resolve_config_paths(config: Path) -> Path:
    """Rewrite file paths in config.yaml that do not exist as written (see `find_by_trailing_parts`)."""
    data = read_yaml(config, "training config")
    if not isinstance(data, dict):
        raise RunnerError(f"{config}: not an ESPnet training config")
    roots = [config.parent, *list(config.parent.resolve().parents)[:4]]
    changed = False

    def resolve(key: str, value: Any) -> Any:
        nonlocal changed
        if isinstance(value, dict):
            return {k: resolve(k, v) for k, v in value.items()}
        if not isinstance(value, str) or key not in REQUIRED_PATH_KEYS or Path(value).exists() \
                or value in BUILTIN_TOKENIZERS:
            return value
        found, tried = find_by_trailing_parts(value, roots)
        if found is None:
            places = ", ".join(str(p) for p in tried)
            raise RunnerError(f"{config}: {key} '{value}' not found as written nor by its trailing parts; "
                              f"tried {places}")
        changed = True
        logger.debug("%s: %s '%s' found as %s", config, key, value, found)
        return str(found.resolve())

    resolved = {k: resolve(k, v) for k, v in data.items()}
    return _cached_config(config, resolved, "resolved") if changed else config
