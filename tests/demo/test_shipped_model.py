"""The embedded demo model shipped in data/model: really multi-decoder, and it translates."""

from __future__ import annotations

from runner import defaults
from runner.model import load
from runner.runner import Runner

# Measured on the first 20 committed tst-COMMON utterances: see README ("The embedded default").
# The threshold sits far below it: it catches a broken model or pipeline, not noise.
BLEU_FLOOR = 50.0  # measured: 80.3 (fp32, hop 160, beam 5/5, 2 threads)


def test_shipped_model_is_a_multidecoder_with_speech_attention() -> None:
    assert (defaults.DEMO_MODEL / "config.yaml").is_file() and (defaults.DEMO_MODEL / "valid.acc.ave.pth").is_file()
    summary = load(defaults.DEMO_MODEL).summary()
    assert summary["multidecoder"] and summary["speech_attention"]
    assert {"encoder", "extra_asr_decoder", "md_encoder", "decoder"} <= set(summary["parts"])
    assert summary["token_type"] == "bpe" and summary["frontend"]["hop_length"] == 160


def test_shipped_model_translates_20_committed_utterances() -> None:
    runner = Runner(threads=2)  # no arguments: the embedded default model
    assert runner.bundle.files.origin == defaults.DEMO_MODEL
    report = runner.evaluate(limit=20)
    assert report.data["n"] == 20
    assert report.bleu.score > BLEU_FLOOR, report.hypotheses()[:3]
