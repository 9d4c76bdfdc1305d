"""Outlier channels planted in LayerNorms (float function unchanged) break int8; SmoothQuant's scales fix it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_corpus
from runner import defaults
from runner.model import load
from runner.plugin import MODEL_PARTS
from runner.runner import EvaluateOptions, Runner
from runner.smoothing import norm_groups, plant_outliers


def _nbest(runner: Runner, waveform: np.ndarray) -> list[tuple[str, float]]:
    """The ST n-best (text, score) of ESPnet's own Speech2Text call on `runner`'s model."""
    with runner._scope(), torch.no_grad():
        output = runner.bundle.speech2text(torch.as_tensor(waveform))
    results = output[0] if isinstance(output, tuple) else output
    return [(text, float(hyp.score)) for text, _, _, hyp in results]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sq-corpus")
    write_corpus(root)
    return write_corpus(root, split="dev")


@pytest.mark.parametrize("search", ["espnet", "lean"])
def test_smoothquant_leaves_the_float_model_unchanged(tiny_exp: Path, corpus: Path, search: str) -> None:
    from runner.data import load_test_set, preload

    bundle = load(tiny_exp)
    planted = plant_outliers(bundle.model, MODEL_PARTS, 30.0, 2, seed=1)  # large factors for smoothing to undo
    assert planted and all(len(channels) == 2 for channels in planted.values())
    engine = [] if search == "espnet" else ["lean"]
    plain = Runner.from_bundle(bundle, threads=1, plugins=engine)
    smoothed = Runner.from_bundle(bundle, threads=1, plugins=[*engine, {"name": "smoothquant", "calibration_size": 2}],
                                  calibration_data=corpus)
    assert [p.name for p in smoothed.plugins][0] == "smoothquant"  # before the search engine, however listed
    details = smoothed.plugins[0].details
    assert details["layer_norms_smoothed"] == len(planted) and details["largest_factor_ratio"] > 10
    for utterance in preload(load_test_set(corpus, "tst-COMMON"), 16000, limit=3).utterances:
        expected, got = plain.translate(utterance.waveform, 16000), smoothed.translate(utterance.waveform, 16000)
        assert got.text == expected.text and got.source_text == expected.source_text
        if search == "espnet":
            for (text_a, score_a), (text_b, score_b) in zip(_nbest(plain, utterance.waveform),
                                                            _nbest(smoothed, utterance.waveform)):
                assert text_a == text_b and abs(score_a - score_b) < 1e-4


def test_the_quantization_page_holds_and_its_targets_are_met(tmp_path: Path) -> None:
    """docs/quantization.md's outlier rows against a fresh decode of tst-COMMON (exact on the CPU kind it names,
    quantized rows within the cross-kind tolerance elsewhere): fp32 unchanged by the outliers, int8 collapses,
    smoothquant + dynamic int8 within 2 BLEU of fp32."""
    from benchmarks.outliers import write_outlier_model
    from benchmarks.readme_tables import measured_kind, stale_cell, tables
    from runner.environment import cpu_kind

    page = defaults.REPO_ROOT / "docs" / "quantization.md"
    table = next(t for t in tables(page) if t.header[:2] == ["model", "scheme"])
    exact = measured_kind(table) == cpu_kind()
    published = {(row[0], row[1]): row[2] for row in table.rows}
    planted = tmp_path / "outliers"
    write_outlier_model(defaults.model_path(), planted)
    schemes = {"fp32": [], "dynamic-int8": ["dynamic-int8"], "static-int8 (histogram)": ["static-int8"],
               "smoothquant + dynamic-int8": ["smoothquant", "dynamic-int8"]}
    fresh, stale = {}, []
    for label, plugins in schemes.items():
        runner = Runner(planted, threads=2, plugins=plugins, calibration_data=defaults.data_path())
        fresh[label] = runner.evaluate().bleu.score
        why = stale_cell("BLEU", published[("outliers", label)], f"{fresh[label]:.2f}", exact or not plugins)
        if why:
            stale.append(f"{label}: {why}")
    assert not stale, "docs/quantization.md is stale (python -m benchmarks.quantization):\n" + "\n".join(stale)
    original = float(published[("embedded", "fp32")])
    assert abs(fresh["fp32"] - original) <= 0.1  # the outliers leave the float model's translations alone
    assert fresh["dynamic-int8"] < original - 20 and fresh["static-int8 (histogram)"] < original - 20
    assert fresh["smoothquant + dynamic-int8"] >= original - 2


def test_norm_groups_skip_post_norm_layers(tiny_exp: Path) -> None:
    bundle = load(tiny_exp)
    groups = list(norm_groups(bundle.model, MODEL_PARTS))
    assert groups and all(len(g.readers) in (1, 3) for g in groups)
    layer = bundle.model.get_submodule(groups[0].norm_name.rsplit(".", 1)[0])
    layer.normalize_before = False  # a post-norm layer's norm feeds the residual stream: never rescaled
    assert len(list(norm_groups(bundle.model, MODEL_PARTS))) < len(groups)
