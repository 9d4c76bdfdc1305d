"""The embedded default: the demo model, the demo corpus and the shipped configs.

One rule finds them, in this order:

1. ``$ST_RUNNER_DATA``, when set: a directory holding ``model/`` and ``mustc-demo/``;
2. the installed package's own copy, ``runner/embedded/`` (``pip install .`` or a wheel puts it
   there, with the configs in ``runner/configs/``);
3. the source checkout's ``data/`` and ``configs/`` beside ``runner/`` (a clone, or ``pip install -e .``).

A missing default model is an error that says what to pass: the runner never measures a
stand-in model.
"""

from __future__ import annotations

import os
from pathlib import Path

from runner.errors import RunnerError

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent  # the source checkout, when running from one
_INSTALLED_DATA = PACKAGE_ROOT / "embedded"
_INSTALLED_CONFIGS = PACKAGE_ROOT / "configs"


def data_root() -> Path:
    """The directory holding the embedded ``model/`` and ``mustc-demo/``, by the rule above."""
    override = os.environ.get("ST_RUNNER_DATA")
    if override:
        return Path(override)
    if _INSTALLED_DATA.is_dir():
        return _INSTALLED_DATA
    return REPO_ROOT / "data"


def configs_root() -> Path:
    """The shipped configs: ``runner/configs`` in an install, ``configs/`` in a checkout."""
    return _INSTALLED_CONFIGS if _INSTALLED_CONFIGS.is_dir() else REPO_ROOT / "configs"


DATA_ROOT = data_root()
DEMO_CORPUS = DATA_ROOT / "mustc-demo"
DEMO_MODEL = DATA_ROOT / "model"
CONFIGS = configs_root()
DECODE_CONFIG = CONFIGS / "decode.yaml"


def demo_output_root() -> Path:
    """Where `runner demo corpus|train|export` write by default: the checkout's data/, never site-packages.

    From an install that is ./st-runner-data (then point ST_RUNNER_DATA at it to use what was built).
    """
    return REPO_ROOT / "data" if (REPO_ROOT / "pyproject.toml").is_file() else Path("st-runner-data")


def data_path() -> Path:
    """The embedded demo corpus (MuST-C layout)."""
    return DEMO_CORPUS


def model_path() -> Path:
    """The embedded demo model's experiment directory.

    Raises:
        RunnerError: when no demo model is where the rule above looks.
    """
    if (DEMO_MODEL / "config.yaml").is_file():
        return DEMO_MODEL
    raise RunnerError(
        f"{DEMO_MODEL}: no embedded demo model here; pass --model EXP_DIR (an ESPnet experiment directory, "
        f"config.yaml, .pth or packed .zip), or set ST_RUNNER_DATA to a directory holding model/ and mustc-demo/"
    )


def shipped_config(path: str | Path) -> Path:
    """`path` if it exists, else the shipped config of that name (``hop`` or ``configs/hop.yaml``).

    So ``runner sweep configs/hop.yaml`` works from a checkout and from any directory after
    ``pip install .``.
    """
    given = Path(path)
    if given.exists():
        return given
    parts = given.parts[1:] if given.parts[:1] == ("configs",) else given.parts
    candidate = CONFIGS.joinpath(*parts) if parts else CONFIGS
    if candidate.suffix not in (".yaml", ".yml"):
        candidate = candidate.with_name(candidate.name + ".yaml")
    return candidate if candidate.is_file() else given
