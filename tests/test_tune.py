"""`runner sensitivity` and `runner tune` on real ESPnet models: planted outliers rank first, the tuner's plan
recovers the BLEU all-int8 loses, a model without outliers stays all int8, and bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from runner import defaults
from runner.cli import app
from runner.data import load_test_set, preload
from runner.environment import torch_settings
from runner.model import load
from runner.plugin import MODEL_PARTS
from runner.quant.parts import select_backend
from runner.quant.sensitivity import module_sensitivity, rollup
from runner.quant.smoothing import plant_outliers

pytestmark = pytest.mark.slow  # the fast tier (-m 'not slow') leaves this module out

CLI = CliRunner()
FAST = ("--search", "lean", "--batch-size", "6")  # the trials on the lean engine, batched: same ladder, a third of the time


@pytest.fixture(scope="module")
def outlier_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from benchmarks.outliers import write_outlier_model

    path = tmp_path_factory.mktemp("outliers") / "model"
    write_outlier_model(defaults.model_path(), path)
    return path


@pytest.mark.parametrize("scheme", ["dynamic-int8", "static-int8"])
def test_sensitivity_ranks_the_planted_layers_first(tiny_exp: Path, shared_corpus: Path, scheme: str) -> None:
    bundle = load(tiny_exp)
    planted = plant_outliers(bundle.model, ["decoder"], 100.0, 2, seed=0)
    assert planted and all(name.startswith("decoder.") for name in planted)
    utterances = preload(load_test_set(shared_corpus, "tst-COMMON"), 16000, limit=2).utterances
    with torch_settings(1):
        select_backend("auto")
        scores = module_sensitivity(bundle, utterances, scheme)
    readers = {n.rsplit(".", 1)[0] for n in planted}  # the layers whose norms carry the outliers
    worst = scores[:4]
    assert all(s.layer in readers for s in worst), [(s.name, s.sqnr_db) for s in worst]
    assert min(s.sqnr_db for s in scores if s.part != "decoder") > max(s.sqnr_db for s in worst) + 10
    assert rollup(scores)[0].name in readers  # the worst layer


def test_tune_keeps_the_fewest_sensitive_linears_in_float(outlier_model: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    result = CLI.invoke(app, ["tune", "--model", str(outlier_model), "--limit", "12", "--calibration", "4",
                              "--threads", "2", *FAST, "--no-smoothquant", "--out", str(plan)])
    assert result.exit_code == 0, result.output
    trials = [json.loads(line) for line in (tmp_path / "plan.trials" / "trials.jsonl").read_text().splitlines()]
    fp32, all_int8, final = trials[0], trials[1], max(trials[2:], key=lambda t: (t["bleu"] >= trials[0]["bleu"] - 1,
                                                                                -len(t["float_modules"])))
    assert fp32["label"] == "fp32" and all_int8["bleu"] < fp32["bleu"] - 20  # the collapse the plan must undo
    config = yaml.safe_load(plan.read_text())
    skip = config["plugins"][0]["skip"]
    assert config["plugins"][0]["name"] == "dynamic-int8" and 0 < len(skip) < 100
    assert skip == final["float_modules"] and final["bleu"] >= fp32["bleu"] - 1.0
    assert "kept in float" in result.output and "dev BLEU" in plan.read_text()
    assert "search lean, batch 6" in plan.read_text()  # the conditions the trials ran under
    report = CLI.invoke(app, ["translate", "--config", str(plan), "--limit", "3", "--no-progress"])  # report on test
    assert report.exit_code == 0, report.output


@pytest.mark.parametrize("scheme", ["dynamic-int8", "static-int8"])
def test_tune_smooths_before_it_falls_back_to_float(outlier_model: Path, tmp_path: Path, scheme: str) -> None:
    """All-int8 collapses on the outlier model; the tuner's next rung (smoothquant, free in size and speed)
    brings every Linear of every part back within the budget, so nothing is kept in float."""
    plan = tmp_path / "plan.yaml"
    result = CLI.invoke(app, ["tune", "--model", str(outlier_model), "--quant", scheme, "--limit", "12",
                              "--calibration", "4", "--threads", "2", *FAST, "--out", str(plan)])
    assert result.exit_code == 0, result.output
    trials = [json.loads(line) for line in (tmp_path / "plan.trials" / "trials.jsonl").read_text().splitlines()]
    assert [t["label"] for t in trials] == ["fp32", "all-int8", "smoothquant + all-int8"]
    fp32, plain, smoothed = trials
    assert plain["bleu"] < fp32["bleu"] - 20 and smoothed["bleu"] >= fp32["bleu"] - 1.0
    assert smoothed["size_mb"] == plain["size_mb"] < 0.45 * fp32["size_mb"]  # every part in int8, static too
    plugins = yaml.safe_load(plan.read_text())["plugins"]
    assert [p["name"] for p in plugins] == ["smoothquant", scheme] and "skip" not in plugins[1]
    assert "every module stays in int8 after smoothquant" in result.output
    assert "smoothquant + all int8" in result.output and "smoothquant + all int8" in plan.read_text()
    if scheme == "static-int8":
        assert plugins[1]["parts"] == list(MODEL_PARTS)
    report = CLI.invoke(app, ["translate", "--config", str(plan), "--limit", "3", "--no-progress"])  # report on test
    assert report.exit_code == 0, report.output


def test_tune_keeps_every_module_of_the_demo_model_in_int8(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    result = CLI.invoke(app, ["tune", "--limit", "8", "--calibration", "4", "--out", str(plan)])
    assert result.exit_code == 0, result.output
    assert "every module stays in int8" in result.output
    assert yaml.safe_load(plan.read_text())["plugins"] == [{"name": "dynamic-int8"}]


def test_tune_and_sensitivity_bad_input_is_one_line(tiny_exp: Path, shared_corpus: Path, tmp_path: Path) -> None:
    negative = CLI.invoke(app, ["tune", "--max-bleu-drop", "-1", "--out", str(tmp_path / "p.yaml")])
    assert negative.exit_code == 2 and negative.output.strip().splitlines() == [
        "error: --max-bleu-drop must be 0 or more BLEU points, got -1"]
    no_dev = CLI.invoke(app, ["sensitivity", "--model", str(tiny_exp), "--data", str(shared_corpus),
                              "--out", str(tmp_path / "s")])
    assert no_dev.exit_code == 2 and no_dev.output.startswith(f"error: --split dev: {shared_corpus}: no MuST-C split 'dev'")
    assert len(no_dev.output.strip().splitlines()) == 1
    foreign = tmp_path / "foreign.yaml"
    foreign.write_text(yaml.safe_dump({"model": str(tiny_exp), "plugins": [
        {"name": "dynamic-int8", "skip": ["encoder.encoders.9.self_attn.linear_q", "decoder.decoders.7.w_9"]}]}))
    result = CLI.invoke(app, ["translate", "--config", str(foreign), "--data", str(shared_corpus), "--no-progress"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "error: plugin 'dynamic-int8': skip names no module of this model: encoder.encoders.9.self_attn.linear_q, "
        "decoder.decoders.7.w_9 (a plan written for another model?)")
    (tmp_path / "a-file").write_text("x")
    unwritable = CLI.invoke(app, ["sensitivity", "--out", str(tmp_path / "a-file")])
    assert unwritable.exit_code == 2 and unwritable.output.strip().splitlines() == [
        f"error: {tmp_path / 'a-file' / 'sensitivity.json'}: --out lies under {tmp_path / 'a-file'}, which is a file"]
    wrong = CLI.invoke(app, ["tune", "--quant", "bf16", "--out", str(tmp_path / "p.yaml")])
    assert wrong.exit_code == 2 and "--quant must be one of dynamic-int8, static-int8" in wrong.output
    part = CLI.invoke(app, ["tune", "--parts", "encoder,decodr", "--out", str(tmp_path / "p.yaml")])
    assert part.exit_code == 2 and part.output.strip().splitlines() == [
        f"error: --parts: unknown part(s) ['decodr']; parts are {list(MODEL_PARTS)}"]


@pytest.mark.parametrize("command", ["tune", "sensitivity"])
def test_a_model_with_nothing_to_quantize_is_one_line(command: str, shared_corpus: Path, tmp_path: Path) -> None:
    """A plain (non-MD) ST model has no MD encoder: asked to quantize only that part, there is nothing to do."""
    model = plain_st_model(tmp_path / "plain")
    result = CLI.invoke(app, [command, "--model", str(model), "--data", str(shared_corpus), "--split", "tst-COMMON",
                              "--parts", "md_encoder", "--out", str(tmp_path / "out.yaml")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        f"error: {model}: no Linear the int8 plugins quantize in md_encoder; nothing to score or tune")


def plain_st_model(path: Path) -> Path:
    """A tiny plain ST model (one decoder, no ASR decoder, no MD encoder), random weights."""
    from runner.demo.build import char_token_list, md_config, write_experiment

    tokens = char_token_list()
    config = md_config(tokens, tokens, "tiny")
    config.update(extra_asr_decoder=None, md_encoder=None, decoder="transformer",
                  decoder_conf={k: v for k, v in config["decoder_conf"].items() if k != "use_speech_attn"},
                  model_conf={**config["model_conf"], "asr_weight": 0.0})
    return write_experiment(path, config)


def test_an_interrupted_tune_keeps_its_trials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.quant import tuning

    real = tuning.measure
    calls = []

    def interrupt_second(*args, **kwargs):  # noqa: ANN002, ANN003 - the real trial, then Ctrl-C
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tuning, "measure", interrupt_second)
    result = CLI.invoke(app, ["tune", "--limit", "4", "--calibration", "2", "--out", str(tmp_path / "plan.yaml")])
    assert result.exit_code == 130
    assert "interrupted; the trials measured so far are in" in result.output
    kept = (tmp_path / "plan.trials" / "trials.jsonl").read_text().splitlines()
    assert len(kept) == 1 and json.loads(kept[0])["label"] == "fp32"
    assert not (tmp_path / "plan.yaml").exists()


@pytest.mark.parametrize("observer", ["percentile", "entropy"])
def test_static_int8_takes_the_percentile_and_entropy_observers(observer: str) -> None:
    from runner.runner import Runner

    runner = Runner(threads=2, plugins=[{"name": "static-int8", "observer": observer, "calibration_size": 4}],
                    calibration_data=defaults.data_path())
    report = runner.evaluate(limit=4)
    assert report.bleu.score > 50  # the demo model has no outliers: any observer keeps its translations
    modules = runner.plugins[0].details["quantized_modules"]
    assert modules and all(count > 0 for count in modules.values())
    assert torch.backends.quantized.engine  # the runner restored the caller's engine


@pytest.mark.parametrize("kind", ["plain-st", "bpe-recipe", "packed-zip", "transformer-encoder"])
def test_sensitivity_and_smoothquant_on_models_of_other_shapes(kind: str, tiny_zip: Path, recipe_exp: Path,
                                                               shared_corpus: Path, tmp_path: Path) -> None:
    """Plain (non-MD) ST, BPE units from a recipe directory, a packed zip, a Transformer encoder of other depth."""
    from runner.demo.build import char_token_list, md_config, write_experiment
    from runner.runner import Runner

    tokens = char_token_list()
    if kind == "plain-st":
        model = plain_st_model(tmp_path / "plain")
    elif kind == "transformer-encoder":
        config = md_config(tokens, tokens, "tiny")
        config.update(encoder="transformer", encoder_conf={"output_size": 32, "attention_heads": 2, "linear_units": 96,
                                                           "num_blocks": 3, "input_layer": "conv2d"})
        model = write_experiment(tmp_path / "transformer", config)
    else:
        model = {"bpe-recipe": recipe_exp, "packed-zip": tiny_zip}[kind]
    bundle = load(model)
    utterances = preload(load_test_set(shared_corpus, "tst-COMMON"), 16000, limit=1).utterances
    with torch_settings(1):
        select_backend("auto")
        scores = module_sensitivity(bundle.copy(), utterances, "dynamic-int8")
    assert scores and {s.part for s in scores} >= {"encoder", "decoder"}
    plain = Runner(model, threads=1)
    smoothed = Runner(model, threads=1, plugins=[{"name": "smoothquant", "calibration_data": str(shared_corpus),
                                                  "calibration_split": "tst-COMMON", "calibration_size": 1}])
    assert smoothed.plugins[0].details["layer_norms_smoothed"] > 0
    waveform = preload(load_test_set(shared_corpus, "tst-COMMON"), 16000, limit=2).utterances[1].waveform
    assert smoothed.translate(waveform, 16000).text == plain.translate(waveform, 16000).text
