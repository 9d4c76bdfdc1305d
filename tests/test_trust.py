"""What a user must be able to trust: weights that fit, paths found, short audio refused,
plugin lists composed one way, and a runner that leaves its host's torch settings alone."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import run_cli, write_corpus
from runner.cli import app
from runner.config import compose_plugins
from runner.data import load_test_set
from runner.errors import AudioTooShortError, RunnerError
from runner.model import load, locate
from runner.plugin import PluginSpec
from runner.runner import Runner

RUNNER = CliRunner()


def _names(specs: list[PluginSpec]) -> list[str]:
    return [s.name for s in specs]


# --- weights must fit the config -------------------------------------------------------------

def test_weights_from_another_config_are_refused(tiny_exp: Path, tmp_path: Path) -> None:
    state = torch.load(tiny_exp / "valid.acc.ave.pth")
    missing = dict(state)
    del missing["decoder.output_layer.bias"], missing["encoder.embed.conv.0.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(RunnerError, match=r"missing.pth: the weights do not fit the model config.yaml builds: "
                                          r"2 missing key\(s\) \(decoder.output_layer.bias, encoder.embed"):
        load(tiny_exp, model_file=tmp_path / "missing.pth")
    extra = {**state, "decoder.decoders.9.self_attn.linear_q.weight": torch.zeros(2, 2)}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(RunnerError, match=r"1 unexpected key\(s\) \(decoder.decoders.9.self_attn.linear_q.weight\)"):
        load(tiny_exp, model_file=tmp_path / "extra.pth")


def test_a_trainer_checkpoint_is_unwrapped_to_its_model(tiny_exp: Path, shared_corpus: Path, tmp_path: Path) -> None:
    exp = shutil.copytree(tiny_exp, tmp_path / "stopped")
    state = torch.load(exp / "valid.acc.ave.pth")
    (exp / "valid.acc.ave.pth").unlink()  # a run stopped before its first average: only checkpoint.pth
    torch.save({"model": state, "reporter": {"epoch": 3}, "optimizers": [{}], "schedulers": [None], "scaler": None},
               exp / "checkpoint.pth")
    files = locate(exp)
    assert files.checkpoint == exp / "checkpoint.pth" and files.model_file != files.checkpoint
    assert set(torch.load(files.model_file)) == set(state)
    unwrapped = Runner(exp, threads=1).evaluate(shared_corpus, warmup=0)
    plain = Runner(tiny_exp, threads=1).evaluate(shared_corpus, warmup=0)
    assert unwrapped.hypotheses() == plain.hypotheses()


# --- config.yaml paths from another machine --------------------------------------------------

def test_absolute_paths_of_another_machine_resolve_by_trailing_parts(recipe_exp: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = shutil.copytree(recipe_exp.parent.parent, tmp_path / "copied")  # the recipe root, off a cluster
    exp = recipe / "exp" / recipe_exp.name
    config = yaml.safe_load((exp / "config.yaml").read_text())
    config["bpemodel"] = "/home/someone/espnet/egs2/must_c/st1/data/bpe/bpe.model"
    config["normalize_conf"]["stats_file"] = "/scratch/u1/st1/exp/stats/train/feats_stats.npz"
    (exp / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    bundle = load(exp)
    resolved = yaml.safe_load(bundle.files.config.read_text())
    assert Path(resolved["bpemodel"]) == (recipe / "data" / "bpe" / "bpe.model").resolve()
    assert Path(resolved["normalize_conf"]["stats_file"]) == (recipe / "exp/stats/train/feats_stats.npz").resolve()

    config["bpemodel"] = "/home/someone/espnet/egs2/must_c/st1/data/bpe/gone.model"
    (exp / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(RunnerError) as error:
        locate(exp)
    message = str(error.value)
    assert "bpemodel '/home/someone/espnet/egs2/must_c/st1/data/bpe/gone.model' not found" in message
    assert f"{exp}/data/bpe/gone.model" in message and f"{recipe}/gone.model" in message and "\n" not in message


# --- audio too short for the frontend or the encoder -----------------------------------------

@pytest.mark.parametrize("samples", [1, 80, 256, 400])
def test_too_short_audio_is_one_clear_error(tiny_exp: Path, samples: int) -> None:
    runner = Runner(tiny_exp, threads=1)
    with pytest.raises(AudioTooShortError, match=r"^waveform: audio too short") as error:
        runner.translate(np.zeros(samples, dtype=np.float32), 16000)
    assert "\n" not in str(error.value)
    assert runner.translate(np.random.default_rng(0).normal(scale=0.1, size=16000), 16000).seconds > 0


# --- one composition of plugin lists ---------------------------------------------------------

def test_plugin_lists_compose_one_way() -> None:
    base = [PluginSpec("hop", {"hop_length": 200}), PluginSpec("static-int8", {"calibration_size": 8}),
            PluginSpec("cross-kv-cache")]
    assert _names(compose_plugins(base, quant="none")) == ["hop", "cross-kv-cache"]
    assert _names(compose_plugins(base, quant="fp32")) == ["hop", "cross-kv-cache"]
    swapped = compose_plugins(base, quant="dynamic-int8")
    assert _names(swapped) == ["hop", "cross-kv-cache", "dynamic-int8"]
    kept = compose_plugins(base, quant="static-int8", replace=[PluginSpec("hop", {"hop_length": 300})],
                           extra=["cross-kv-cache", "self-kv-cache"])
    assert [(s.name, s.values) for s in kept] == [("static-int8", {"calibration_size": 8}), ("cross-kv-cache", {}),
                                                  ("self-kv-cache", {}), ("hop", {"hop_length": 300})]
    gridded = compose_plugins(base, options={"static-int8.granularity": "block", "bf16.unused": 1})
    assert gridded[1].values == {"calibration_size": 8, "granularity": "block"}
    assert base[1].values == {"calibration_size": 8}  # the config's own list is untouched
    assert _names(compose_plugins([PluginSpec("bf16")], quant="none")) == []


def test_quant_none_wins_over_a_config_quantizer(tiny_exp: Path, shared_corpus: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": str(tiny_exp), "data": str(shared_corpus), "threads": 1,
                                      "warmup": 0, "plugins": [{"name": "dynamic-int8"}, "cross-kv-cache"]}))
    for quant, expected in (("none", ["cross-kv-cache"]), (None, ["dynamic-int8", "cross-kv-cache"])):
        out = tmp_path / f"{quant}.json"
        result = RUNNER.invoke(app, ["translate", "--config", str(config), "--no-progress", "--out", str(out),
                                     *(["--quant", quant] if quant else [])])
        assert result.exit_code == 0, result.output
        report = json.loads(out.read_text())
        assert sorted(p["name"] for p in report["conditions"]["plugins"]) == sorted(expected)
        assert report["conditions"]["dtype"] == ("float32" if quant else "qint8")


# --- process-wide state stays the host's -----------------------------------------------------

def test_a_runner_scopes_threads_and_engine_to_its_own_calls(tiny_exp: Path, shared_corpus: Path) -> None:
    torch.set_num_threads(2)
    torch.backends.quantized.engine = "x86"
    filters = list(warnings.filters)
    seen: list[tuple[int, str]] = []
    try:
        runner = Runner(tiny_exp, threads=1, plugins=[{"name": "dynamic-int8", "backend": "qnnpack"}])
        assert (torch.get_num_threads(), torch.backends.quantized.engine) == (2, "x86")
        runner.bundle.model.encoder.register_forward_pre_hook(
            lambda *_: seen.append((torch.get_num_threads(), torch.backends.quantized.engine)))
        report = runner.evaluate(shared_corpus, limit=2, warmup=0)
        runner.translate(np.random.default_rng(0).normal(scale=0.1, size=16000), 16000)
        assert seen == [(1, "qnnpack")] * 3
        assert (torch.get_num_threads(), torch.backends.quantized.engine) == (2, "x86")
        assert report.conditions.int8_backend == "qnnpack" and report.conditions.threads == 1
        assert Runner(tiny_exp, threads=1).evaluate(shared_corpus, limit=1, warmup=0).conditions \
            .int8_backend == "none"
        assert warnings.filters == filters
    finally:
        torch.set_num_threads(2)
        torch.backends.quantized.engine = "x86"


# --- static int8 says what it calibrated on --------------------------------------------------

def test_static_int8_calibrates_on_the_evaluated_datas_dev_split(tiny_exp: Path, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "mustc")
    write_corpus(corpus, split="dev")
    runner = Runner(tiny_exp, threads=1, plugins=[{"name": "static-int8", "calibration_size": 2}])
    report = runner.evaluate(corpus, limit=2, warmup=0)
    plugin = report.conditions.plugins[0]
    assert plugin["calibration_data"] == str(corpus) and plugin["calibration_source"] == "evaluated data"
    assert plugin["calibration_utterances"] == 2 and "quantized_modules" in plugin
    assert "split dev of " + str(corpus) + " (evaluated data)" in report.format()


def test_static_int8_without_a_dev_split_says_it_used_the_demo_corpus(tiny_exp: Path, shared_corpus: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    from runner import defaults

    runner = Runner(tiny_exp, threads=1, plugins=[{"name": "static-int8", "calibration_size": 1}])
    with caplog.at_level(logging.WARNING, logger="runner"):
        report = runner.evaluate(shared_corpus, limit=1, warmup=0)
    assert f"static-int8 calibrates on the embedded demo corpus ({defaults.data_path()}, split dev): " \
           f"{shared_corpus} has no 'dev' split" in caplog.text
    plugin = report.conditions.plugins[0]
    assert plugin["calibration_data"] == str(defaults.data_path())
    assert plugin["calibration_source"] == "embedded demo corpus"


# --- errors keep their cause -----------------------------------------------------------------

@pytest.mark.slow
def test_debug_prints_the_whole_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "run.yaml"
    bad.write_text("plugins: [\n")
    quiet = run_cli("translate", "--config", str(bad))
    assert quiet.returncode == 2 and quiet.stderr.strip().count("\n") == 0
    assert quiet.stderr.startswith(f"error: {bad}:2: invalid YAML")
    loud = run_cli("--debug", "translate", "--config", str(bad))
    assert loud.returncode == 2 and "Traceback" in loud.stderr and "yaml.parser.ParserError" in loud.stderr
    assert "The above exception was the direct cause" in loud.stderr
    monkeypatch.setenv("ST_RUNNER_DEBUG", "1")
    assert "Traceback" in run_cli("translate", "--config", str(bad)).stderr


# --- Kaldi segments ---------------------------------------------------------------------------

@pytest.mark.parametrize("line", ["u1 talk1 0.25", "u1 talk1 zero 1.25", "u1 talk1 1.25 0.25"])
def test_malformed_kaldi_segments_line_is_a_one_line_error(tmp_path: Path, corpus: Path, line: str) -> None:
    wav = corpus / "en-de/data/tst-COMMON/wav/ted_1.wav"
    (tmp_path / "wav.scp").write_text(f"talk1 {wav}\n")
    (tmp_path / "segments").write_text(f"u0 talk1 0.0 0.5\n{line}\n")
    (tmp_path / "text.tc.de").write_text("u0 Hallo.\nu1 Der Hund sieht ein Auto.\n")
    with pytest.raises(RunnerError, match=rf"^{tmp_path}/segments:2: ") as error:
        load_test_set(tmp_path)
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_a_fresh_process_keeps_its_warning_filters_logging_and_environment(tiny_exp: Path,
                                                                           shared_corpus: Path) -> None:
    code = f"""
import logging, os, warnings, torch
def state():
    return {{"filters": list(warnings.filters), "handlers": list(logging.root.handlers), "level": logging.root.level,
            "disable": logging.root.manager.disable, "nltk": os.environ.get("NLTK_DATA"),
            "threads": torch.get_num_threads(), "engine": torch.backends.quantized.engine}}
before = state()
from runner import Runner
runner = Runner({str(tiny_exp)!r}, threads=1, plugins=["dynamic-int8", "cross-kv-cache"])
runner.evaluate({str(shared_corpus)!r}, limit=1, warmup=0)
after = state()
print(sorted(k for k in before if before[k] != after[k]))
"""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
