"""The embedded default: the demo corpus and model shipped in the repository's data/."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ROOT = Path(os.environ.get("ST_RUNNER_DATA", REPO_ROOT / "data"))
DEMO_CORPUS = DATA_ROOT / "mustc-demo"
DEMO_MODEL = DATA_ROOT / "model"
DECODE_CONFIG = REPO_ROOT / "configs" / "decode.yaml"


def data_path() -> Path:
    return DEMO_CORPUS


def model_path() -> tuple[Path, str | None]:
    """The shipped demo model, or, until one is shipped, a random-initialised stand-in built now."""
    if (DEMO_MODEL / "config.yaml").is_file():
        return DEMO_MODEL, None
    from runner.demo.build import char_token_list, md_config, write_experiment
    from runner.model import cache_dir

    stand_in = cache_dir() / "stand-in-model"
    if not (stand_in / "config.yaml").is_file():
        tokens = char_token_list()
        write_experiment(stand_in, md_config(tokens, tokens, "tiny"))
    return stand_in, (
        f"no trained demo model in {DEMO_MODEL}: using a random-initialised multi-decoder model "
        f"built at {stand_in}; its BLEU is meaningless"
    )
