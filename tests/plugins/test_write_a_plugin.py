"""docs/plugins.md's "Write a plugin" package, installed as a user would, is treated exactly like a built-in
number-format plugin; and the contract's ordering makes results independent of the listing order."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import documented_package, installed_package, write_corpus
from runner.config import compose_plugins
from runner.defaults import REPO_ROOT
from runner.errors import RunnerError
from runner.plugin import Effects, Plugin, PluginSpec
from runner.plugin_set import PluginSet, available, number_format_plugins, order
from runner.runner import Runner
from runner.sweep import Sweep, SweepConfig


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    files = documented_package(REPO_ROOT / "docs" / "plugins.md", "## Write a plugin")
    assert sorted(files) == ["pyproject.toml", "round_weights.py"]
    with installed_package(files, tmp_path_factory.mktemp("round-weights"), "round_weights",
                           lambda: available(refresh=True)):
        yield


def test_the_readme_plugin_is_a_number_format_plugin_like_the_built_ins(installed_example: None,
                                                                         tiny_exp: Path) -> None:
    assert "round-weights" in available() and "round-weights" in number_format_plugins()
    with pytest.raises(RunnerError, match="plugins 'dynamic-int8' and 'round-weights' both change the number "
                                          "format of the decoder"):
        PluginSet.resolve([PluginSpec("dynamic-int8"), PluginSpec("round-weights")])
    PluginSet.resolve([PluginSpec("dynamic-int8", {"parts": ["encoder"]}), PluginSpec("round-weights")])
    base = [PluginSpec("round-weights", {"parts": ["encoder"]}), PluginSpec("cross-kv-cache")]
    assert [s.name for s in compose_plugins(base, quant="none")] == ["cross-kv-cache"]
    assert [s.name for s in compose_plugins(base, quant="dynamic-int8")] == ["cross-kv-cache", "dynamic-int8"]
    with pytest.raises(RunnerError, match=r"unknown part\(s\) \['decoders'\]"):
        PluginSet.resolve([PluginSpec("round-weights", {"parts": ["decoders"]})])

    runner = Runner(tiny_exp, threads=1, plugins=[{"name": "round-weights", "parts": ["decoder"]}])
    weight = runner.bundle.model.decoder.output_layer.weight
    assert torch.equal(weight, weight.to(torch.bfloat16).float())
    assert runner.plugins[0].details["linear_modules"] > 0


def test_a_sweep_compares_the_readme_plugin_with_the_float_run(installed_example: None, tiny_exp: Path,
                                                                tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "mustc")
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"model: {tiny_exp}\ndata: {corpus}\nlimit: 3\nthreads: 1\nwarmup: 0\n"
                    "decode: {beam_size: 2, asr_beam_size: 2}\n"
                    "plugins:\n  - {name: round-weights, parts: [decoder, extra_asr_decoder]}\n"
                    "grid:\n  hop: [160, 320]\n  quant: [none, round-weights]\n")
    rows = {r["label"]: r for r in Sweep(SweepConfig.from_yaml(grid), tmp_path / "out", progress=False).run()}
    assert sorted(rows) == ["hop 160", "hop 160 + round-weights", "hop 320", "hop 320 + round-weights"]
    for hop in (160, 320):
        row, float_row = rows[f"hop {hop} + round-weights"], rows[f"hop {hop}"]
        assert row["quant"] == "round-weights" and row["dtype"] == "bfloat16 (rounded weights)"
        assert row["bleu_delta"] == pytest.approx(row["bleu"] - float_row["bleu"])
        assert float_row["quant"] == "none" and float_row["bleu_delta"] is None
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| hop 320 + round-weights | round-weights | bfloat16 (rounded weights) |" in summary


def _plugin(name: str, effects: Effects = Effects(), after: tuple[str, ...] = (),
            before: tuple[str, ...] = ()) -> Plugin:
    @dataclass
    class Config:
        pass

    kind = type(name.title().replace("-", ""), (Plugin,), {"name": name, "description": name, "Config": Config,
                                                           "effects": effects, "after": after, "before": before})
    return kind(Config())


def test_order_follows_constraints_then_names_never_the_listing() -> None:
    frontend = _plugin("z-frontend", Effects(frontend=True), before=("number-format", "search"))
    quantizer = _plugin("b-quantizer", Effects(number_format=True))
    attention = _plugin("a-attention", Effects(search=True), after=("number-format",))
    other = _plugin("c-other", Effects(search=True))
    expected = ["z-frontend", "b-quantizer", "a-attention", "c-other"]
    for listing in ([frontend, quantizer, attention, other], [other, attention, quantizer, frontend]):
        assert [p.name for p in order(listing)] == expected
    loop = [_plugin("x", after=("y",)), _plugin("y", after=("x",)), _plugin("w")]
    with pytest.raises(RunnerError, match=r"plugins \['x', 'y'\] constrain each other in a cycle"):
        order(loop)


def test_plugin_order_in_yaml_no_longer_changes_results(tiny_exp: Path, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "mustc")
    write_corpus(corpus, split="dev")
    static = {"name": "static-int8", "calibration_size": 3}
    listings = [[static, "self-kv-cache", "cross-kv-cache"], ["cross-kv-cache", "self-kv-cache", static]]
    runners = [Runner(tiny_exp, threads=1, plugins=plugins, calibration_data=corpus) for plugins in listings]
    assert [p.name for p in runners[0].plugins] == [p.name for p in runners[1].plugins] == [
        "self-kv-cache", "static-int8", "cross-kv-cache"]
    reports = [runner.evaluate(corpus, warmup=0) for runner in runners]
    assert reports[0].hypotheses() == reports[1].hypotheses()
    scales = [[float(m.scale) for m in r.bundle.model.modules() if type(m).__name__ == "Quantize"] for r in runners]
    assert scales[0] and scales[0] == scales[1]
