"""The library API and the CLI over it, on a real tiny ESPnet model and a MuST-C-layout corpus."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from typer.testing import CliRunner

from runner.cli import app
from runner.defaults import REPO_ROOT
from runner.data import load_test_set
from runner.decode import DecodeOptions
from runner.errors import RunnerError
from runner.metrics.bleu import corpus_bleu
from runner.runner import EvaluateOptions, Runner

RUNNER = CliRunner()


@pytest.fixture(scope="module")
def tiny_runner(tiny_exp: Path) -> Runner:
    return Runner(tiny_exp, threads=1)


def test_evaluate_reports_every_figure(tiny_runner: Runner, shared_corpus: Path) -> None:
    report = tiny_runner.evaluate(shared_corpus, warmup=2)
    assert report.data["n"] == 5 and report.data["selection"] == "first"
    assert report.bleu == corpus_bleu(report.hypotheses(), report.references())
    assert report.metrics.parameters == sum(p.numel() for p in tiny_runner.bundle.model.parameters())
    assert report.metrics.source_wer is not None
    assert report.conditions.threads == 1 and report.conditions.warmup == 2
    timed = [u["seconds"] for u in report.utterances if not u["warmup"]]
    assert [u["warmup"] for u in report.utterances] == [True, True, False, False, False]
    assert report.latency.count == 3
    assert report.latency.mean == pytest.approx(sum(timed) / 3)
    assert report.latency.total == pytest.approx(sum(timed))
    steps = [u["steps"] for u in report.utterances[2:]]
    assert set(report.metrics.steps_mean) == {"asr_search", "st_search"}
    for name in ("asr_search", "st_search"):
        assert report.metrics.steps_mean[name] == pytest.approx(sum(s[name] for s in steps) / 3)
        assert report.metrics.seconds_per_step[name] == pytest.approx(
            sum(u["stages"][name] for u in report.utterances[2:]) / sum(s[name] for s in steps))
    assert "search steps" in report.format() and "ms per step" in report.format()


def test_search_steps_are_counted_per_search(tiny_exp: Path, shared_corpus: Path) -> None:
    # A negative max length ratio is ESPnet's "exactly this many output steps".
    fixed = DecodeOptions(beam_size=2, asr_beam_size=2, maxlenratio=-3, asr_maxlenratio=-4)
    report = Runner(tiny_exp, fixed, threads=1).evaluate(shared_corpus, limit=2, warmup=0)
    assert [u["steps"] for u in report.utterances] == [{"asr_search": 4, "st_search": 3}] * 2
    assert report.metrics.steps_mean == {"asr_search": 4.0, "st_search": 3.0}


def test_translate_a_single_waveform_at_any_rate(tiny_runner: Runner, shared_corpus: Path) -> None:
    wav = shared_corpus / "en-de/data/tst-COMMON/wav/ted_2.flac"
    samples, rate = soundfile.read(str(wav), dtype="int16")
    assert rate == 8000
    stereo = np.stack([samples, samples], axis=1)
    mono = tiny_runner.translate(samples, rate)
    assert tiny_runner.translate(stereo, rate).text == mono.text
    assert mono.tokens and mono.seconds > 0
    with pytest.raises(RunnerError, match="empty audio"):
        tiny_runner.translate(np.zeros(0, dtype=np.float32), 16000)


def test_random_subset_is_reproducible(tiny_runner: Runner, shared_corpus: Path) -> None:
    a = tiny_runner.preload(EvaluateOptions(
        data=shared_corpus, limit=3, sample=True, seed=4))
    b = tiny_runner.preload(EvaluateOptions(
        data=shared_corpus, limit=3, sample=True, seed=4))
    assert a.indices == b.indices and len(a.indices) == 3 and a.content_hash == b.content_hash


@pytest.mark.slow
def test_fp32_translations_equal_espnet_st_inference(tiny_exp: Path, shared_corpus: Path, tmp_path: Path) -> None:
    """The runner is a measuring instrument: same model, same options, same words as ESPnet's CLI."""
    options = DecodeOptions(beam_size=3, asr_beam_size=3)
    runner = Runner(tiny_exp, options, threads=1)
    report = runner.evaluate(shared_corpus, warmup=0)
    test_set = load_test_set(shared_corpus, "tst-COMMON")
    scp = tmp_path / "wav.scp"
    lines = []
    for utterance in runner.preload(EvaluateOptions(
            data=shared_corpus)).utterances:
        path = tmp_path / f"{utterance.segment.id}.wav"
        soundfile.write(str(path), utterance.waveform, 16000, subtype="FLOAT")
        lines.append(f"{utterance.segment.id} {path}")
    scp.write_text("\n".join(lines) + "\n")
    flags = [arg for name, value in options.speech2text_kwargs().items() for arg in (f"--{name}", str(value))]
    subprocess.run(
        [sys.executable, "-m", "espnet2.bin.st_inference", "--st_train_config", str(tiny_exp / "config.yaml"),
         "--st_model_file", str(tiny_exp / "valid.acc.ave.pth"), "--data_path_and_name_and_type",
         f"{scp},speech,sound", "--output_dir", str(tmp_path / "out"), "--ngpu", "0", *flags],
        check=True, capture_output=True)
    espnet_tokens = dict(
        line.split(" ", 1) if " " in line else (line, "")
        for line in (tmp_path / "out/1best_recog/token").read_text().splitlines())
    espnet_asr = dict(
        line.split(" ", 1) if " " in line else (line, "")
        for line in (tmp_path / "out/1asr_best_recog/asr_token").read_text().splitlines())
    assert len(espnet_tokens) == len(test_set.segments) == len(report.utterances)
    for utterance in report.utterances:
        translation = runner.translate(*soundfile.read(str(tmp_path / f"{utterance['id']}.wav"), dtype="float32"))
        assert " ".join(translation.tokens) == espnet_tokens[utterance["id"]]
        assert translation.text == utterance["hypothesis"]
        assert utterance["source_hypothesis"] is not None
    assert any(espnet_asr.values()) and any(espnet_tokens.values())


def test_cli_translate_writes_json_with_every_field(tiny_exp: Path, shared_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    result = RUNNER.invoke(app, ["translate", "--model", str(tiny_exp), "--data", str(shared_corpus), "--limit", "3",
                                 "--threads", "1", "--warmup", "1", "--set", "beam_size=2", "--no-progress",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    for label in ("size", "parameters", "BLEU", "latency", "stages (mean s)", "threads 1", "warm-up 1", "hop 160"):
        assert label in result.stdout
    document = json.loads(out.read_text())
    assert document["decode"]["beam_size"] == 2
    assert {"path", "content_hash", "summary"} <= set(document["model"])
    assert {"split", "n", "seed", "selection", "content_hash", "preload_memory_bytes"} <= set(document["data"])
    assert {"threads", "warmup", "int8_backend", "cpu", "versions", "hop_length", "plugins"} <= set(
        document["conditions"])
    assert {"torch", "espnet", "torchaudio", "sacrebleu"} <= set(document["conditions"]["versions"])
    assert {"size_mb", "parameters", "bleu", "chrf", "source_wer", "latency", "stages_mean"} <= set(document["metrics"])
    assert len(document["utterances"]) == 3


def test_cli_translate_adds_plugins_by_name_or_from_a_config(tiny_exp: Path, shared_corpus: Path,
                                                             tmp_path: Path) -> None:
    base = ["translate", "--model", str(tiny_exp), "--data", str(shared_corpus), "--limit", "3", "--threads", "1",
            "--no-progress"]
    documents = {}
    for label, extra in {"plain": [], "named": ["--plugin", "self-kv-cache", "--plugin", "ctc-prefix-scan"],
                         "config": ["--config", str(REPO_ROOT / "configs" / "fast-search.yaml"), "--threads", "1"]}.items():
        result = RUNNER.invoke(app, base + extra + ["--out", str(tmp_path / f"{label}.json")])
        assert result.exit_code == 0, result.output
        documents[label] = json.loads((tmp_path / f"{label}.json").read_text())
    names = {label: [p["name"] for p in d["conditions"]["plugins"]] for label, d in documents.items()}
    assert names["plain"] == [] and names["named"] == ["ctc-prefix-scan", "self-kv-cache"]  # applied by name
    assert sorted(names["config"]) == ["cross-kv-cache", "ctc-prefix-scan", "search-threads", "self-kv-cache"]
    hypotheses = {label: [u["hypothesis"] for u in d["utterances"]] for label, d in documents.items()}
    assert hypotheses["named"] == hypotheses["plain"] == hypotheses["config"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--data", "/nonexistent/mustc"], "/nonexistent/mustc: data path not found"),
        (["--split", "tst-HE"], "no MuST-C split 'tst-HE'"),
        (["--warmup", "9"], "leaves no utterance to time"),
        (["--set", "beam_sise=3"], "unknown decoding option"),
        (["--set", "beam_size=three"], "beam_size must be int"),
        (["--quant", "dynamic-int9"], "unknown plugin 'dynamic-int9'; available:"),
        (["--plugin", "self-kv-cash"], "unknown plugin 'self-kv-cash'; available:"),
        (["--hop", "0"], "hop_length must be positive"),
        (["--hop", "512"], "exceeds the window length 400; allowed: 1..400"),
    ],
)
def test_cli_bad_input_is_a_one_line_error(tiny_exp: Path, shared_corpus: Path, arguments: list[str],
                                           message: str) -> None:
    base = ["translate", "--model", str(tiny_exp), "--data", str(shared_corpus), "--no-progress"]
    if "--data" in arguments:
        base = ["translate", "--model", str(tiny_exp), "--no-progress"]
    result = RUNNER.invoke(app, base + arguments)
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.output


def test_cli_info(tiny_zip: Path) -> None:
    result = RUNNER.invoke(app, ["info", str(tiny_zip)])
    assert result.exit_code == 0, result.output
    for name in ("encoder", "extra_asr_decoder", "md_encoder", "decoder", "hop_length 160", "speech-attention decoder yes"):
        assert name in result.stdout
    as_json = json.loads(RUNNER.invoke(app, ["info", str(tiny_zip), "--json"]).stdout)
    assert as_json["multidecoder"] is True
    assert RUNNER.invoke(app, ["info", "/nonexistent"]).exit_code == 2


def test_a_failing_utterance_keeps_the_finished_results(tiny_exp: Path, corpus: Path, tmp_path: Path) -> None:
    yaml_path = corpus / "en-de/data/tst-COMMON/txt/tst-COMMON.yaml"
    # 30 ms is too short for the conv2d subsampling: ESPnet raises TooShortUttError on the third utterance.
    yaml_path.write_text(yaml_path.read_text().replace("duration: 0.800000", "duration: 0.030000"))
    out = tmp_path / "partial.json"
    result = RUNNER.invoke(app, ["translate", "--model", str(tiny_exp), "--data", str(corpus), "--threads", "1",
                                 "--no-progress", "--out", str(out)])
    assert result.exit_code == 2
    assert "ted_1.wav: decoding 'ted_1_0003000_0003030' failed" in result.stderr
    document = json.loads(out.read_text())
    assert document["data"]["complete"] is False and document["data"]["planned_n"] == 5
    assert len(document["utterances"]) == 2 and document["metrics"]["latency"]["count"] == 1


def test_package_exports_the_library_api() -> None:
    import runner as package

    from runner.conditions import RunConditions
    from runner.config import RunConfig
    from runner.engines import SearchEngine, Searched
    from runner.options import EvaluateOptions as Options
    from runner.plugin_set import PluginSet

    assert package.Runner is Runner and package.DecodeOptions is DecodeOptions
    assert package.RunnerError is RunnerError and package.EvaluateOptions is Options is EvaluateOptions
    assert (package.PluginSet, package.RunConditions, package.RunConfig) == (PluginSet, RunConditions, RunConfig)
    assert (package.SearchEngine, package.Searched) == (SearchEngine, Searched)
    assert set(package.__all__) >= {"EvaluateOptions", "PluginSet", "RunConditions", "SearchEngine"}


def test_decoding_options_follow_the_plugin_typing_rules() -> None:
    from runner.options import coerce

    options = DecodeOptions.from_dict({"beam_size": "4", "asr_ctc_weight": "0.5", "nbest": 2.0}, origin="x.yaml")
    assert (options.beam_size, options.asr_ctc_weight, options.nbest) == (4, 0.5, 2)
    for value in ("4.5", 4.5, True, "four"):
        with pytest.raises(RunnerError, match=r"x.yaml: beam_size must be int") as error:
            DecodeOptions.from_dict({"beam_size": value}, origin="x.yaml")
        with pytest.raises(RunnerError) as twin:  # a plugin's int option refuses the same values, the same way
            coerce(value, int, "x.yaml: beam_size")
        assert str(twin.value) == str(error.value)


def test_model_size_is_serialized_once_per_runner_not_per_evaluation(tiny_exp: Path, shared_corpus: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.model import ModelBundle

    calls = []
    original = ModelBundle.summary
    monkeypatch.setattr(ModelBundle, "summary", lambda self: calls.append(1) or original(self))
    runner = Runner(tiny_exp, threads=1, plugins=["dynamic-int8"])
    reports = [runner.evaluate(shared_corpus, limit=2, warmup=0) for _ in range(2)]
    assert len(calls) == 1
    assert reports[0].metrics.size_mb == reports[1].metrics.size_mb == original(runner.bundle)["state_dict_bytes"] / 1e6
