"""Models by Hugging Face Hub name: `--model espnet/<name>`, as ESPnet publishes them.

`huggingface_hub.snapshot_download` resolves the name (honouring `HF_HOME`, `HF_HUB_CACHE` and
`HF_HUB_OFFLINE`: offline, only what the cache holds) into ESPnet's upload layout: `meta.yaml`
naming the training config and weights (`exp/.../config.yaml`, `exp/.../*.pth`) beside
`data/token_list/...` and BPE models, which the config names relative to the repository root. The
experiment directory is then loaded as any other (`runner.model_files.locate` resolves those paths).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from runner.errors import RunnerError
from runner.yamlio import read_yaml_mapping

_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CONFIG_KEYS = ("st_train_config", "asr_train_config")  # meta.yaml's yaml_files entry of the training config
MODEL_KEYS = ("st_model_file", "asr_model_file")  # ... and its files entry of the weights


def is_hub_name(value: str | Path) -> bool:
    """Whether `value` reads as a Hub repository name (`owner/name`) rather than a local path that exists."""
    text = str(value)
    return bool(_NAME.match(text)) and not Path(text).exists() and not text.startswith((".", "/"))


def snapshot(name: str) -> Path:
    """The local snapshot of Hub repository `name`, downloaded when the Hub is reachable and not yet cached.

    Raises:
        RunnerError: the name is neither cached nor downloadable here (one line saying what to run on a
            connected machine), or the repository does not exist.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(name))
    except LocalEntryNotFoundError as error:
        raise RunnerError(f"{name}: no such local path, and no Hub model of that name in the Hugging Face cache "
                          f"{constants.HF_HUB_CACHE} (the Hub cannot be reached from here); on a connected machine "
                          f"run `hf download {name}` and copy that cache here, or point HF_HUB_CACHE at it") from error
    except RepositoryNotFoundError as error:
        raise RunnerError(f"{name}: no such local path, and no such model on the Hugging Face Hub") from error


def _inside(root: Path, relative: object, meta: Path) -> Path:
    """`root / relative`, refused when meta.yaml's path leads out of the snapshot (a crafted upload)."""
    if not isinstance(relative, str):
        raise RunnerError(f"{meta}: a file entry must be a path, got {relative!r}")
    path = Path(os.path.normpath(root / relative))  # lexically: the snapshot's files are links into blobs/
    if not path.is_relative_to(root):
        raise RunnerError(f"{meta}: {relative!r} leads out of the model's snapshot")
    return path


def experiment(root: Path, name: str) -> tuple[Path, Path | None]:
    """The experiment directory and weights of an ESPnet upload at `root` (its `meta.yaml`, else its only
    `exp/*/config.yaml`).

    Raises:
        RunnerError: no ST/ASR training config named in meta.yaml and none (or several) under exp/.
    """
    meta = root / "meta.yaml"
    if meta.is_file():
        values = read_yaml_mapping(meta, "meta.yaml")
        configs, files = values.get("yaml_files") or {}, values.get("files") or {}
        config = next((configs[k] for k in CONFIG_KEYS if isinstance(configs, dict) and k in configs), None)
        weights = next((files[k] for k in MODEL_KEYS if isinstance(files, dict) and k in files), None)
        if config is not None:
            return _inside(root, config, meta).parent, _inside(root, weights, meta) if weights is not None else None
    found = sorted(root.glob("exp/*/config.yaml"))
    if len(found) != 1:
        raise RunnerError(f"{name}: {root} has {'no' if not found else len(found)} exp/*/config.yaml and no "
                          f"meta.yaml naming the training config; pass the experiment directory as --model")
    return found[0].parent, None
