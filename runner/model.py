"""Finding, loading and describing ESPnet speech-translation models.

Accepts an experiment directory (config.yaml + a .pth), a config or .pth file, or a packed
archive written by `espnet2.bin.pack`. Paths inside config.yaml that do not exist (written
relative to a recipe root, or absolute paths of another machine) are found by their trailing
components under the model directory and its parents, so an experiment copied anywhere still
loads. The weights must fit the config: ESPnet loads them with `strict=False`, which would
leave a mismatched model partly random, so the runner checks every key itself. A trainer
checkpoint (`checkpoint.pth`) is unwrapped to its model weights.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from runner import _espnet
from runner.decode import DecodeOptions, keep_pre_x_on_retry
from runner.errors import RunnerError, first_line
from runner.metrics.size import count_parameters, state_dict_bytes
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

logger = logging.getLogger("runner")
PARTS = ("frontend", "normalize", "encoder", "extra_asr_decoder", "md_encoder", "decoder", "ctc", "st_ctc")


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
    weight_keys: frozenset[str] = frozenset()  # the state_dict keys in `model_file`, read once by `locate`

    @property
    def file_bytes(self) -> int:
        return self.model_file.stat().st_size

    @functools.cached_property
    def content_hash(self) -> str:
        """sha256 prefix of the weights, read once however many reports (or bundle copies) ask."""
        return file_hash(self.model_file)


def locate(path: str | Path, model_file: str | Path | None = None) -> ModelFiles:
    """Find a model's config and weights: unpack archives, unwrap trainer checkpoints, resolve paths."""
    origin = Path(path)
    if not origin.exists():
        raise RunnerError(f"{origin}: model path not found")
    if origin.is_file() and origin.name.endswith(ARCHIVE_SUFFIXES):
        config, weights = _unpack(origin)
        packed = True
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
    return ModelFiles(origin, _resolve_config_paths(config), unwrapped or weights, packed,
                      weights if unwrapped else None, keys)


def read_weights(path: Path) -> Any:
    """torch.load of a model file onto the CPU, memory-mapped when the format allows (cheap to inspect)."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=False)
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


def file_hash(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:16]


def _unpack(archive: Path) -> tuple[Path, Path]:
    with _espnet.quiet():
        from espnet2.main_funcs.pack_funcs import unpack
    target = cache_dir() / "packed" / file_hash(archive)
    try:
        files = unpack(archive, target)
    except Exception as error:
        raise RunnerError(f"{archive}: not an ESPnet packed model ({first_line(error)})") from error
    config = files.get("st_train_config") or next((v for k, v in files.items() if k.endswith("train_config")), None)
    weights = files.get("st_model_file") or next((v for k, v in files.items() if k.endswith("model_file")), None)
    if not config or not weights:
        raise RunnerError(f"{archive}: meta.yaml names no st_train_config/st_model_file ({sorted(files)})")
    return Path(config), Path(weights)


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
        if not isinstance(value, str) or key not in REQUIRED_PATH_KEYS or Path(value).exists():
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
    if not changed:
        return config
    digest = hashlib.sha256(str(config.resolve()).encode() + config.read_bytes()).hexdigest()[:16]
    target = cache_dir() / "configs" / digest / "config.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(resolved, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return target


class ModelBundle:
    """A loaded ESPnet `Speech2Text`: what a plugin's `apply(bundle)` receives.

    Attributes and properties a plugin may use:
        model: the `ESPnetSTModel` (parts: frontend, normalize, encoder, extra_asr_decoder,
            md_encoder, decoder, ctc); change it in place.
        speech2text: ESPnet's `Speech2Text` that every translation calls.
        searches: the beam searches a translation runs (ST, and a multi-decoder's ASR search).
        files: where the config and weights came from (`ModelFiles`).
        options: the decoding options it was loaded with.
        device, sample_rate, is_multidecoder: facts about the model.
    After replacing modules, call `rewire_searches()` (the runner also does, after each plugin).
    """

    def __init__(self, speech2text: Any, files: ModelFiles, options: DecodeOptions) -> None:
        self.speech2text = speech2text
        self.files = files
        self.options = options
        self.float_parameters = count_parameters(self.model)

    @property
    def model(self) -> torch.nn.Module:
        return self.speech2text.st_model

    @property
    def device(self) -> torch.device:
        """Where the model runs (`Speech2Text` moves its input there)."""
        return torch.device(self.speech2text.device)

    @property
    def is_multidecoder(self) -> bool:
        return bool(getattr(self.model, "use_multidecoder", False))

    @property
    def sample_rate(self) -> int:
        frontend_conf = getattr(self.speech2text.st_train_args, "frontend_conf", None) or {}
        return int(frontend_conf.get("fs", 16000))

    @property
    def search_engine(self) -> str:
        """Which engine runs the beam searches: "espnet", "lean", or per search ("asr lean, st espnet")."""
        engines = {"asr": getattr(self.speech2text, "asr_beam_search", None) if self.is_multidecoder else None,
                   "st": self.speech2text.beam_search}
        names = {stage: getattr(search, "engine_name", "espnet") for stage, search in engines.items()
                 if search is not None}
        if len(set(names.values())) == 1:
            return next(iter(names.values()))
        return ", ".join(f"{stage} {name}" for stage, name in names.items())

    @property
    def searches(self) -> list[Any]:
        """The beam searches a translation runs: the ST search, and a multi-decoder's ASR search."""
        searches = [self.speech2text.beam_search]
        if self.is_multidecoder:
            searches.append(self.speech2text.asr_beam_search)
        return [search for search in searches if search is not None]

    def rewire_searches(self) -> None:
        """Point both beam searches at the model's current modules.

        `Speech2Text` hands module references to its BeamSearch objects once, so a plugin
        that replaces a decoder (quantize_dynamic returns copies) would otherwise be bypassed.
        """
        model = self.model
        wiring = [(self.speech2text.beam_search, model.decoder, getattr(model, "st_ctc", None))]
        if self.is_multidecoder:
            wiring.append((self.speech2text.asr_beam_search, model.extra_asr_decoder, model.ctc))
        for search, decoder, ctc in wiring:
            if search is None:
                continue
            for table in (search.scorers, search.full_scorers, search.nn_dict):
                if "decoder" in table:
                    table["decoder"] = decoder
            ctc_scorer = search.scorers.get("ctc")
            if ctc_scorer is not None and ctc is not None:
                ctc_scorer.ctc = ctc

    def copy(self) -> ModelBundle:
        """An independent deep copy (model, searches, tokenizers) for a plugin to change."""
        speech2text = copy.deepcopy(self.speech2text)
        # The pre_x fix is a closure over the original search: install a fresh one on the copy.
        vars(speech2text.beam_search).pop("forward", None)
        keep_pre_x_on_retry(speech2text.beam_search)
        clone = ModelBundle.__new__(ModelBundle)
        clone.speech2text, clone.files, clone.options = speech2text, self.files, self.options
        clone.float_parameters = self.float_parameters
        return clone

    def summary(self) -> dict[str, Any]:
        model = self.model
        parts = {}
        for name in PARTS:
            module = getattr(model, name, None)
            if isinstance(module, torch.nn.Module):
                parts[name] = {"class": type(module).__name__, "parameters": count_parameters(module)}
        decoder = getattr(model, "decoder", None)
        return {
            "model_class": type(model).__name__,
            "multidecoder": self.is_multidecoder,
            "speech_attention": bool(getattr(model, "use_speech_attn", False))
            or bool(getattr(decoder, "use_speech_attn", False)),
            "parts": parts,
            "parameters": count_parameters(model),
            "state_dict_bytes": state_dict_bytes(model),
            "model_file_bytes": self.files.file_bytes,
            "frontend": frontend_settings(model, self.speech2text.st_train_args),
            "token_type": getattr(self.speech2text.st_train_args, "token_type", None),
            "vocab_size": len(model.token_list),
            "src_vocab_size": len(getattr(model, "src_token_list", None) or []) or None,
        }


def frontend_settings(model: torch.nn.Module, train_args: Any) -> dict[str, Any] | None:
    frontend = getattr(model, "frontend", None)
    if frontend is None:
        return None
    conf = dict(getattr(train_args, "frontend_conf", None) or {})
    stft = getattr(frontend, "stft", None)
    settings = {
        "class": type(frontend).__name__,
        "fs": conf.get("fs", 16000),
        "n_fft": getattr(stft, "n_fft", conf.get("n_fft")),
        "win_length": getattr(stft, "win_length", conf.get("win_length")),
        "hop_length": getattr(stft, "hop_length", conf.get("hop_length")),
        "n_mels": getattr(getattr(frontend, "logmel", None), "n_mels", conf.get("n_mels")),
    }
    return settings


def load(path: str | Path, options: DecodeOptions | None = None, model_file: str | Path | None = None,
         device: torch.device | str = "cpu") -> ModelBundle:
    """Load a model with ESPnet's `Speech2Text` and check that its weights fit its config.

    Args:
        path: an experiment directory, config.yaml, .pth or packed archive.
        options: decoding options (default: `DecodeOptions()`).
        model_file: the weights, when the directory holds several.
        device: where the model runs (a resolved device: see `runner.device.resolve`).

    Returns:
        The loaded model, its two beam searches and tokenizers, as a `ModelBundle`.

    Raises:
        RunnerError: missing files, paths not found, weights that do not fit, ESPnet load errors.
    """
    options = options or DecodeOptions()
    files = locate(path, model_file)
    module = _espnet.st_inference()
    try:
        with _espnet.quiet():
            speech2text = module.Speech2Text(
                st_train_config=str(files.config), st_model_file=str(files.model_file), device=str(device),
                **options.speech2text_kwargs())
    except (FileNotFoundError, RuntimeError, KeyError, AssertionError, TypeError, ValueError) as error:
        raise RunnerError(f"{files.origin}: ESPnet could not load the model ({first_line(error)})") from error
    check_weights_fit(speech2text.st_model, files)
    bundle = ModelBundle(speech2text, files, options)
    keep_pre_x_on_retry(speech2text.beam_search)
    return bundle
