"""The onnxruntime engine and `runner export`: real exports of real ESPnet models, decoded by ONNX Runtime.

At fp32 the engine's n-best lists are ESPnet's own `Speech2Text.__call__`'s on models of five shapes
(scores within 1e-4, at most one near-tie flip per case, as for the lean engine), and the demo model's
translations are ESPnet's on both demo splits; int8 exports (ONNX Runtime's dynamic and static QDQ
quantization, calibrated on dev) keep BLEU (a paired bootstrap interval, as for torch's int8); batches give batch 1's translations;
bad exports are one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import KEEPS_BLEU_MARGIN, Decodes
from helpers import CASES, SCORE_TOLERANCE, espnet_call, nbest_entries
from runner import defaults
from runner.cli import app
from runner.data import load_test_set, preload
from runner.decode import DecodeOptions
from runner.errors import RunnerError
from runner.model import load
from runner.metrics.paired import paired_difference
from runner.runner import Runner

pytestmark = pytest.mark.slow  # the fast tier (-m 'not slow') leaves this module out

CLI = CliRunner()


@pytest.fixture(scope="module")
def waveforms() -> list[np.ndarray]:
    return [u.waveform for u in preload(load_test_set(defaults.data_path(), "tst-COMMON"), 16000, limit=3).utterances]


@pytest.fixture(scope="module")
def demo_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo model exported three ways, by `runner export` as a user runs it (static int8 on demo dev)."""
    root = tmp_path_factory.mktemp("exports")
    exports = {}
    before = set(Path.cwd().iterdir())
    for quant in ("none", "dynamic-int8", "static-int8"):
        exports[quant] = root / quant
        result = CLI.invoke(app, ["export", "--out", str(exports[quant]), "--quant", quant, "--calibration-size", "8"])
        assert result.exit_code == 0, result.output
    assert set(Path.cwd().iterdir()) == before  # nothing written beside the export (ONNX Runtime's tools can)
    return exports


@pytest.mark.parametrize(("shape", "options"), CASES, ids=[f"{s}-{'-'.join(f'{k}{v}' for k, v in o.items())}"
                                                           for s, o in CASES])
def test_onnxruntime_search_equals_espnets(shapes: dict[str, Path], waveforms: list[np.ndarray], shape: str,
                                           options: dict[str, Any]) -> None:
    bundle = load(shapes[shape], DecodeOptions(**options))
    engine = Runner.from_bundle(bundle, threads=1, search="onnxruntime")
    assert engine.search_engines == dict.fromkeys(bundle.search_stages, "onnxruntime")
    flips = 0
    for index, waveform in enumerate(waveforms):
        with engine._scope():
            expected = nbest_entries(espnet_call(bundle, waveform))
        got = nbest_entries(engine.translate(waveform, 16000))
        for search in ("st", "asr"):
            if search not in expected:
                continue
            assert len(got[search]) == len(expected[search]), (shape, index, search)
            for (tokens, score), (ort_tokens, ort_score) in zip(expected[search], got[search]):
                assert abs(score - ort_score) <= SCORE_TOLERANCE * max(1.0, abs(score)), (shape, index, search)
                flips += tokens != ort_tokens
    assert flips <= 1, f"{flips} near-tie flips"


@pytest.mark.parametrize("split", ["tst-COMMON", "tst-HE"])
def test_the_demo_models_translations_are_espnets_and_int8_keeps_bleu(demo_exports: dict[str, Path], decodes: Decodes,
                                                                      split: str,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """fp32, in batches of 8 (batch 1's translations: test_batches_give_batch_one_translations): ESPnet's 100
    translations (the session's one decode of `runner translate`). int8 keeps BLEU as
    tests/demo/test_published_figures.py judges it: the paired bootstrap interval of the difference reaches
    -KEEPS_BLEU_MARGIN (on amd-avx2, where MLAS has no VNNI, dynamic int8 moved tst-HE by -0.76 and static int8
    tst-COMMON by +0.54: one or two sentences; ONNX Runtime cannot be made to imitate another kind, so each kind
    measures its own)."""
    espnet = decodes.report("runner translate" + ("" if split == "tst-COMMON" else f" --split {split}"))
    fp32 = Runner(demo_exports["none"], threads=2, search="onnxruntime").evaluate(split=split, batch_size=8)
    assert fp32.conditions.search == "onnxruntime" and len(fp32.utterances) == 100
    for field in ("hypothesis", "source_hypothesis"):
        assert [u[field] for u in fp32.utterances] == [u[field] for u in espnet["utterances"]], field
    lines = []
    for quant in ("dynamic-int8", "static-int8"):
        report = Runner(demo_exports[quant], threads=2, search="onnxruntime").evaluate(split=split, batch_size=8)
        difference = paired_difference(fp32.hypotheses(), report.hypotheses(), fp32.references())
        lines.append(f"  onnxruntime {quant} {split}: {difference.line()}")
        assert difference.holds(KEEPS_BLEU_MARGIN), lines[-1]
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def test_batches_give_batch_one_translations(demo_exports: dict[str, Path]) -> None:
    for quant, export in demo_exports.items():
        runner = Runner(export, threads=2, search="onnxruntime")
        one, eight = runner.evaluate(limit=17, batch_size=1), runner.evaluate(limit=17, batch_size=8)
        assert eight.hypotheses() == one.hypotheses(), quant
        assert [u["source_hypothesis"] for u in eight.utterances] == [u["source_hypothesis"] for u in one.utterances]


def test_the_export_states_itself_and_its_figures_name_the_engine(demo_exports: dict[str, Path]) -> None:
    manifest = json.loads((demo_exports["static-int8"] / "manifest.json").read_text())
    assert manifest["quant"] == "static-int8" and manifest["opset"] >= 17
    assert manifest["calibration"]["split"] == "dev" and manifest["calibration"]["utterances"] == 8
    assert {"encoder", "asr_step", "st_step", "md_encoder", "asr_ctc"} <= set(manifest["graphs"])
    assert {"onnxruntime", "onnx", "torch"} <= set(manifest["versions"]) and "model/config.yaml" in manifest["files"]
    import onnxruntime

    runner = Runner(demo_exports["none"], threads=1, engine="onnxruntime")
    report = runner.evaluate(limit=2, warmup=0)
    assert f"search onnxruntime (onnxruntime {onnxruntime.__version__}, CPUExecutionProvider, graph optimization " \
        "ORT_ENABLE_ALL)" in report.format()
    assert report.to_dict()["conditions"]["runtime"]["provider"] == "CPUExecutionProvider"
    from runner.serve.app import model_config

    assert model_config(runner)["runtime"] == report.conditions.runtime
    espnet_here = Runner(demo_exports["none"], threads=1).evaluate(limit=2, warmup=0)  # the export is a --model
    assert espnet_here.conditions.search == "espnet" and espnet_here.hypotheses() == report.hypotheses()


def test_bad_exports_are_one_line(demo_exports: dict[str, Path], shapes: dict[str, Path], tmp_path: Path) -> None:
    copy = shutil.copytree(demo_exports["none"], tmp_path / "altered")
    with (copy / "st_step.onnx").open("ab") as stream:
        stream.write(b"\0")
    with pytest.raises(RunnerError, match=r"st_step.onnx: sha256 differs from the export manifest's; the file was "
                                          r"altered$"):
        Runner(copy, threads=1, search="onnxruntime")
    (copy / "st_step.onnx").unlink()
    result = CLI.invoke(app, ["translate", "--model", str(copy), "--search", "onnxruntime", "--limit", "1",
                              "--no-progress"])
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1] == (
        f"error: {copy / 'st_step.onnx'}: missing from the export (listed in its manifest)")
    with pytest.raises(RunnerError, match="a number-format plugin changed it: run `runner export --quant"):
        Runner(threads=1, plugins=["dynamic-int8"], search="onnxruntime")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "a-file").write_text("x")
    refused = CLI.invoke(app, ["export", "--out", str(taken)])
    assert refused.exit_code == 2 and refused.output.strip().splitlines() == [
        f"error: {taken}: not empty; choose a new --out or pass --force to replace it"]
    unusual = tmp_path / "lstm-decoder"
    result = CLI.invoke(app, ["export", "--model", str(_rnn_decoder_model(tmp_path)), "--out", str(unusual)])
    assert result.exit_code == 2 and "step cannot be exported" in result.output
    assert not unusual.exists() and not list(tmp_path.glob(".lstm-decoder.*"))  # nothing half-written


def _rnn_decoder_model(tmp_path: Path) -> Path:
    """A tiny plain ST model whose decoder is an RNN: the step graph cannot express it."""
    from runner.demo.build import char_token_list, md_config, write_experiment

    tokens = char_token_list()
    config = md_config(tokens, tokens, "tiny")
    config.update(extra_asr_decoder=None, md_encoder=None, decoder="rnn", decoder_conf={"hidden_size": 32},
                  model_conf={**config["model_conf"], "asr_weight": 0.0})
    return write_experiment(tmp_path / "rnn", config)


def test_a_live_session_on_the_exported_model_commits_what_the_lean_engine_commits(
        demo_exports: dict[str, Path], waveforms: list[np.ndarray]) -> None:
    """Live translation on the onnxruntime engine: the fp32 export replayed chunk by chunk (computation-unaware)
    commits the lean engine's words at the same audio times, its search being the lean one over exported graphs."""
    from runner.live import StreamOptions
    from runner.live.evaluate import emitted, replay_utterance

    options = StreamOptions(chunk_seconds=0.5, agreement=2)
    ort, lean = Runner(demo_exports["none"], threads=2, search="onnxruntime"), Runner(threads=2, search="lean")
    for waveform in waveforms[:2]:
        served = emitted(replay_utterance(ort, waveform, 16000, options, aware=False), aware=False)
        assert served == emitted(replay_utterance(lean, waveform, 16000, options, aware=False), aware=False)
        assert len(served[0].split()) >= 3
