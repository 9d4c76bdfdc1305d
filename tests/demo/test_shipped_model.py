"""The embedded demo model shipped in data/model: really multi-decoder, and it translates both test splits."""

from __future__ import annotations

import pytest

from runner import defaults
from runner.model import load
from runner.runner import Runner

# Measured on the first 20 committed utterances of each split (fp32, hop 160, beam 5/5, 2 threads): see
# README ("The embedded default"). The floors sit far below: they catch a broken model or pipeline, not noise.
BLEU_FLOORS = {"tst-COMMON": 50.0, "tst-HE": 25.0}  # measured: 87.7 (espeak-ng), 56.7 (flite awb)


@pytest.mark.slow
def test_shipped_model_is_a_multidecoder_with_speech_attention() -> None:
    assert (defaults.DEMO_MODEL / "config.yaml").is_file() and (defaults.DEMO_MODEL / "valid.acc.ave.pth").is_file()
    summary = load(defaults.DEMO_MODEL).summary()
    assert summary["multidecoder"] and summary["speech_attention"]
    assert {"encoder", "extra_asr_decoder", "md_encoder", "decoder"} <= set(summary["parts"])
    assert summary["token_type"] == "bpe" and summary["frontend"]["hop_length"] == 160


@pytest.fixture(scope="module")
def default_runner() -> Runner:
    runner = Runner(threads=2)  # no arguments: the embedded default model
    assert runner.bundle.files.origin == defaults.DEMO_MODEL
    return runner


@pytest.mark.slow
@pytest.mark.parametrize("split", BLEU_FLOORS)
def test_shipped_model_translates_20_committed_utterances(default_runner: Runner, split: str) -> None:
    report = default_runner.evaluate(split=split, limit=20)
    assert report.data["n"] == 20 and report.data["split"] == split
    assert report.bleu.score > BLEU_FLOORS[split], report.hypotheses()[:3]
