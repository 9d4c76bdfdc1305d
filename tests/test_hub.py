"""Models by Hugging Face Hub name, offline: a Hub cache written here in huggingface_hub's documented layout
(`models--<owner>--<name>/refs/main`, `snapshots/<commit>/...`) holding an ESPnet upload (meta.yaml,
exp/.../config.yaml and weights, a BPE model and stats the config names relative to the repository root).
No test reaches the network: every run sets HF_HUB_OFFLINE=1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runner.errors import RunnerError
from runner.hub import experiment, is_hub_name
from runner.runner import Runner

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_cache(recipe_exp: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hub cache holding `espnet/tiny-st`: the BPE recipe's files as ESPnet uploads them."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    repository = cache / "models--espnet--tiny-st"
    snapshot = repository / "snapshots" / COMMIT
    recipe = recipe_exp.parent.parent  # the recipe root: exp/ and data/
    shutil.copytree(recipe / "data", snapshot / "data")
    shutil.copytree(recipe / "exp", snapshot / "exp")
    (snapshot / "meta.yaml").write_text(yaml.safe_dump({
        "espnet": "202511", "files": {"st_model_file": f"exp/{recipe_exp.name}/valid.acc.ave.pth"},
        "yaml_files": {"st_train_config": f"exp/{recipe_exp.name}/config.yaml"}}))
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(COMMIT)
    return cache


def _runner_cli(cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HF_")}, "HF_HUB_CACHE": str(cache),
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600, check=False)


@pytest.mark.slow
def test_a_cached_hub_model_loads_by_name_offline(hub_cache: Path, recipe_exp: Path, shared_corpus: Path,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    done = _runner_cli(hub_cache, "translate", "--model", "espnet/tiny-st", "--data", str(shared_corpus),
                       "--limit", "2", "--warmup", "0", "--threads", "1", "--no-progress", "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["model"]["path"] == str(hub_cache / "models--espnet--tiny-st" / "snapshots" / COMMIT / "exp" /
                                          recipe_exp.name)
    local = Runner(recipe_exp, threads=1).evaluate(shared_corpus, limit=2, warmup=0)
    assert [u["hypothesis"] for u in report["utterances"]] == local.hypotheses()
    assert report["model"]["content_hash"] == local.model["content_hash"]


def test_an_uncached_hub_name_offline_is_one_line_saying_what_to_run(hub_cache: Path) -> None:
    done = _runner_cli(hub_cache, "translate", "--model", "espnet/not-downloaded", "--no-progress")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: espnet/not-downloaded: no such local path, and no Hub model of that name in the Hugging Face cache "
        f"{hub_cache} (the Hub cannot be reached from here); on a connected machine run `hf download "
        f"espnet/not-downloaded` and copy that cache here, or point HF_HUB_CACHE at it"]


def test_hub_names_and_crafted_meta_files(tmp_path: Path) -> None:
    assert is_hub_name("espnet/brian_mustc_st") and not is_hub_name("/models/exp") and not is_hub_name("./a/b")
    existing = tmp_path / "exp"
    existing.mkdir()
    assert not is_hub_name(str(existing))
    (tmp_path / "meta.yaml").write_text(yaml.safe_dump({"yaml_files": {"st_train_config": "../../etc/config.yaml"}}))
    with pytest.raises(RunnerError, match=r"meta.yaml: '../../etc/config.yaml' leads out of the model's snapshot"):
        experiment(tmp_path, "espnet/crafted")
    (tmp_path / "meta.yaml").unlink()
    with pytest.raises(RunnerError, match=r"espnet/empty: .* has no exp/\*/config.yaml"):
        experiment(tmp_path, "espnet/empty")
