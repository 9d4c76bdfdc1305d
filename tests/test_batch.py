"""Batched decoding: an utterance's translation in a batch is the one it gets alone, bit for bit.

Every case decodes the same utterances one at a time through ESPnet's `Speech2Text` call (with
the lean engine's searches) and together through `translate_batch`, and compares every n-best
entry of both searches: token ids, scores (exactly) and the ASR hidden states the MD encoder reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import Decodes
from helpers import nbest_entries
from runner import defaults
from runner.pipeline import translate_batch
from runner.cli import app
from runner.data import load_test_set, preload
from runner.decode import DecodeOptions
from runner.errors import AudioTooShortError, RunnerError
from runner.model import load
from runner.runner import Runner



@pytest.fixture(scope="module")
def utterances() -> list[np.ndarray]:
    """Six demo utterances of different lengths (so memories are padded and searches end apart)."""
    test = preload(load_test_set(defaults.data_path(), "tst-COMMON"), 16000, limit=6)
    return [u.waveform for u in test.utterances]


def _batched_entries(speech2text: Any, waveforms: list[np.ndarray]) -> list[dict[str, Any]]:
    """translate_batch's n-best lists (each search's own, as `Speech2Text.__call__` builds them)."""
    translations = translate_batch(speech2text, waveforms)
    assert all(t.batch_size == len(waveforms) for t in translations)
    return [nbest_entries(translation) for translation in translations]


CASES = [
    ("md-conformer", "fp32", dict(beam_size=5, asr_beam_size=5, nbest=2)),
    ("md-conformer", "dynamic-int8", dict(beam_size=4, asr_beam_size=3, penalty=0.5, maxlenratio=0.5)),
    ("md-bpe-global-mvn", "fp32", dict(beam_size=5, asr_beam_size=5)),
    ("md-bpe-global-mvn", "static-int8", dict(beam_size=5, asr_beam_size=5)),
    ("md-no-speech-attention", "dynamic-int8", dict(beam_size=5, asr_beam_size=5)),
    ("plain-transformer", "fp32", dict(beam_size=5, ctc_weight=0.3, nbest=3)),
    ("plain-transformer", "dynamic-int8", dict(beam_size=10, ctc_weight=0.0, minlenratio=0.2)),
    ("plain-post-norm", "dynamic-fp16", dict(beam_size=3, ctc_weight=0.3)),
    ("md-conformer", "bf16", dict(beam_size=4, asr_beam_size=4)),
]


@pytest.mark.parametrize(("shape", "scheme", "options"), CASES,
                         ids=[f"{s}-{q}-{'-'.join(f'{k}{v}' for k, v in o.items())}" for s, q, o in CASES])
def test_a_batch_gives_each_utterance_what_it_gets_alone(shapes: dict[str, Path],
                                                         utterances: list[np.ndarray], shape: str, scheme: str,
                                                         options: dict[str, Any]) -> None:
    bundle = load(shapes[shape], DecodeOptions(**options))
    plugins = [] if scheme == "fp32" else [{"name": scheme, "calibration_data": str(defaults.data_path())}
                                           if scheme == "static-int8" else scheme]
    runner = Runner.from_bundle(bundle, threads=1, plugins=plugins, search="lean")
    speech2text = runner.bundle.speech2text
    with runner._scope():
        alone = [nbest_entries(speech2text(w)) for w in utterances]
        for size in (2, len(utterances)):
            batched = []
            for start in range(0, len(utterances), size):
                batched += _batched_entries(speech2text, utterances[start:start + size])
            for index, (expected, got) in enumerate(zip(alone, batched)):
                label = f"{shape} {scheme} batch {size} utterance {index}"
                assert got["st"] == expected["st"], label
                if "asr" in expected:
                    assert got["asr"] == expected["asr"], label
                    assert torch.equal(got["asr_hs"], expected["asr_hs"]), label


@pytest.mark.slow
def test_batched_evaluation_keeps_every_demo_translation(decodes: Decodes) -> None:
    """On the demo test set, fp32 and dynamic int8: batch 8 gives batch 1's 100 translations and transcripts (the
    session's one decode of each command; tests/demo/test_published_figures.py reads the same ones)."""
    for quant in ("", " --quant dynamic-int8"):
        one = decodes.report(f"runner translate --search lean{quant}")
        eight = decodes.report(f"runner translate --search lean --batch-size 8{quant}")
        for field in ("hypothesis", "source_hypothesis"):
            assert [u[field] for u in eight["utterances"]] == [u[field] for u in one["utterances"]], (quant, field)
        assert eight["metrics"]["bleu"]["score"] == one["metrics"]["bleu"]["score"]
        assert eight["conditions"]["batch_size"] == 8 and one["conditions"]["batch_size"] == 1
        speed = eight["metrics"]["throughput"]
        assert speed["batch_size"] == 8 and speed["batches"] == 13  # 99 timed utterances after the warm-up batch
        assert speed["utterances_per_second"] == pytest.approx(99 / speed["wall_seconds"])
        assert [u["batch_size"] for u in eight["utterances"][:3]] == [1, 8, 8]


def _row_by_row(alone: Any, batched: Any, in_features: int, rows: int, batch_rows: int) -> bool:
    """Whether every row of a random batch gets, in `batched`, the bits `alone` gives it at each of its positions."""
    generator = torch.Generator().manual_seed(12345)
    batch = torch.randn(batch_rows, in_features, generator=generator)
    together = batched(batch)
    for index in range(batch_rows):
        for position in range(rows):
            chunk = torch.randn(rows, in_features, generator=generator)  # other neighbours than the probe's
            chunk[position] = batch[index]
            if not torch.equal(alone(chunk)[position], together[index]):
                return False
    return True


@pytest.mark.parametrize("kernel", ["mkl-packed", "F.linear"])
def test_the_shared_call_check_agrees_with_a_row_by_row_check(kernel: str) -> None:
    """`rows_independent` decides whether a batch shares one float product; on any CPU it must say what a
    row-by-row comparison says (on the Xeon both answers occur: F.linear depends on the row count here)."""
    from runner.lean.ops import MKL_LINEAR, MKL_REORDER, rows_independent

    if kernel == "mkl-packed" and MKL_LINEAR is None:
        pytest.skip("this PyTorch build has no MKL packed GEMM")
    generator = torch.Generator().manual_seed(0)
    verdicts = {}
    with torch.no_grad():
        for out_features, in_features in ((96, 64), (256, 256), (2048, 256), (69, 32)):
            weight = torch.randn(out_features, in_features, generator=generator)
            bias = torch.randn(out_features, generator=generator)
            for rows, batch_rows in ((5, 10), (5, 40), (4, 32)):
                if kernel == "F.linear":
                    alone = batched = lambda x, w=weight, b=bias: torch.nn.functional.linear(x, w, b)
                else:
                    packs = {n: MKL_REORDER(weight, n) for n in (rows, batch_rows)}
                    alone = lambda x, w=weight, b=bias, p=packs[rows], n=rows: MKL_LINEAR(x, p, w, b, n)
                    batched = lambda x, w=weight, b=bias, p=packs[batch_rows], n=batch_rows: MKL_LINEAR(x, p, w, b, n)
                verdict = rows_independent(alone, batched, in_features, rows, batch_rows)
                label = (out_features, in_features, rows, batch_rows)
                assert verdict == _row_by_row(alone, batched, in_features, rows, batch_rows), (kernel, label)
                verdicts[label] = verdict
    print(f"{kernel} shares a batch's call on this CPU for", [k for k, v in verdicts.items() if v] or "no shape")


def test_a_batch_is_exact_when_no_float_product_may_share_its_call(shapes: dict[str, Path],
                                                                  utterances: list[np.ndarray],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The path a CPU whose kernels depend on the row count takes (every product per utterance), on any CPU."""
    from runner.lean import ops

    monkeypatch.setattr(ops, "rows_independent", lambda *args, **kwargs: False)
    test_a_batch_gives_each_utterance_what_it_gets_alone(shapes, utterances, "md-conformer", "fp32",
                                                         dict(beam_size=5, asr_beam_size=5, nbest=2))


def test_espnet_engine_refuses_batches_in_one_line(tiny_exp: Path, shared_corpus: Path) -> None:
    runner = Runner(tiny_exp, threads=1)
    with pytest.raises(RunnerError, match=r"^--batch-size 4: st_search and asr_search run the espnet search engine, which decodes one utterance at a time"):
        runner.evaluate(shared_corpus, batch_size=4)
    result = CliRunner().invoke(app, ["translate", "--model", str(tiny_exp), "--data", str(shared_corpus),
                                      "--batch-size", "4", "--no-progress"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: --batch-size 4: st_search and asr_search run")


def test_translate_batch_takes_any_rates_and_names_bad_waveforms(tiny_exp: Path,
                                                                 utterances: list[np.ndarray]) -> None:
    import torchaudio

    runner = Runner(tiny_exp, threads=1, search="lean")
    at_8k = torchaudio.functional.resample(torch.from_numpy(utterances[1]), 16000, 8000).numpy()
    batch = runner.translate_batch([utterances[0], at_8k], [16000, 8000])
    assert [t.tokens for t in batch] == [runner.translate(utterances[0], 16000).tokens,
                                         runner.translate(at_8k, 8000).tokens]
    with pytest.raises(RunnerError, match="waveform 1 of the batch: empty audio"):
        runner.translate_batch([utterances[0], np.zeros(0, dtype=np.float32)], 16000)
    with pytest.raises(AudioTooShortError, match="utterance 1 of the batch: audio too short"):
        runner.translate_batch([utterances[0], np.zeros(100, dtype=np.float32)], 16000)
    with pytest.raises(RunnerError, match="2 waveforms but 1 sample rates"):
        runner.translate_batch(utterances[:2], [16000])


def test_cli_and_sweep_yaml_take_a_batch_size(tiny_exp: Path, shared_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    result = CliRunner().invoke(app, ["translate", "--model", str(tiny_exp), "--data", str(shared_corpus),
                                      "--search", "lean", "--batch-size", "2", "--threads", "1", "--no-progress",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "batch 2" in result.stdout and "batches of up to 2" in result.stdout
    document = json.loads(out.read_text())
    assert document["conditions"]["batch_size"] == 2
    assert document["metrics"]["throughput"]["batches"] == 2  # 4 timed utterances after 1 warm-up
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"model": str(tiny_exp), "data": str(shared_corpus), "threads": 1,
                                      "batch_size": 3, "search": "lean",
                                      "grid": {"quant": ["none", "dynamic-int8"]}}))
    result = CliRunner().invoke(app, ["sweep", str(config), "--out", str(tmp_path / "sweep"), "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "sweep" / "results.jsonl").read_text().splitlines()]
    assert [r["batch_size"] for r in rows] == [3, 3] and all(r["utterances_per_second"] > 0 for r in rows)
    config.write_text(yaml.safe_dump({"model": str(tiny_exp), "batch_size": 0, "grid": {"hop": [160]}}))
    result = CliRunner().invoke(app, ["sweep", str(config), "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "batch_size must be a positive integer, got 0" in result.output
