"""`runner demo train`: ESPnet's own trainer fine-tunes the shipped model on a small demo corpus, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from runner import defaults
from runner.cli import app
from runner.demo import corpus
from runner.demo.train import reuse_units
from runner.demo.voices import missing_engines
from runner.runner import Runner


def test_reuse_units_keeps_the_models_bpe_and_token_lists(tmp_path: Path) -> None:
    tgt_bpe, tgt_tokens, src_bpe, src_tokens = reuse_units(defaults.DEMO_MODEL, tmp_path)
    config = yaml.safe_load((defaults.DEMO_MODEL / "config.yaml").read_text())
    assert tgt_tokens.read_text().splitlines() == config["token_list"]
    assert src_tokens.read_text().splitlines() == config["src_token_list"]
    assert tgt_bpe.read_bytes() == (defaults.DEMO_MODEL / config["bpemodel"]).read_bytes()
    assert src_bpe.read_bytes() == (defaults.DEMO_MODEL / config["src_bpemodel"]).read_bytes()


def test_a_bad_init_is_one_line_before_any_work(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "train", "--corpus", str(tmp_path / "none"), "--work", str(tmp_path / "w"),
                                      "--init", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert f"{tmp_path / 'missing' / 'valid.acc.ave.pth'}: no such file" in result.output
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
@pytest.mark.skipif(bool(missing_engines()),
                    reason="espeak-ng, festival and flite build the corpus (apt-get install espeak-ng festival "
                           "festvox-kallpc16k festvox-us-slt-hts flite)")
def test_fine_tuning_one_epoch_exports_a_model_that_loads_and_translates(tmp_path: Path) -> None:
    data = corpus.build(tmp_path / "corpus", {"train": 24, "dev": 4, "tst-COMMON": 2, "tst-HE": 2}, jobs=2)
    out = tmp_path / "model"
    result = CliRunner().invoke(app, ["demo", "train", "--corpus", str(data), "--work", str(tmp_path / "work"),
                                      "--out", str(out), "--init", str(defaults.DEMO_MODEL), "--max-epoch", "1",
                                      "--config", str(defaults.CONFIGS / "demo" / "finetune.yaml")])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["init_param"] == [] and config["normalize_conf"]["stats_file"] == "feats_stats.npz"
    assert config["token_list"] == yaml.safe_load((defaults.DEMO_MODEL / "config.yaml").read_text())["token_list"]
    tuned = torch.load(out / "valid.acc.ave.pth", map_location="cpu")
    shipped = torch.load(defaults.DEMO_MODEL / "valid.acc.ave.pth", map_location="cpu")
    assert tuned.keys() == shipped.keys()
    assert any(not torch.equal(tuned[k], shipped[k]) for k in shipped if shipped[k].is_floating_point())
    report = Runner(out, threads=1).evaluate(data, split="tst-HE", warmup=0)
    assert report.data["n"] == 2 and all(u["hypothesis"] for u in report.utterances)
