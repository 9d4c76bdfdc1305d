"""`--device cuda` on a real GPU: skipped, with the reason, on machines without one (CI here has none)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from conftest import run_cli

from runner import defaults
from runner.data import load_test_set, preload
from runner.decode import DecodeOptions
from runner.runner import Runner

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch on this machine")
UTTERANCES = 20
SCORE_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def demo() -> Any:
    return preload(load_test_set(defaults.data_path(), "tst-COMMON"), 16000, limit=UTTERANCES)


def _best(runner: Runner, waveform: Any) -> list[tuple[str, float]]:
    """The ST search's two best (text, score) for one waveform."""
    results = runner.bundle.speech2text(waveform)
    results = results[0] if isinstance(results, tuple) else results
    return [(r[0], float(r[3].score)) for r in results]


def test_fp32_on_cuda_translates_as_on_the_cpu(demo: Any) -> None:
    cpu = Runner(threads=2)
    cuda = Runner(threads=2, device="cuda")
    assert cuda.device.type == "cuda" and next(cuda.bundle.model.parameters()).is_cuda
    flips = []
    for utterance in demo.utterances:
        on_cpu = cpu.translate(utterance.waveform, 16000).text
        on_gpu = cuda.translate(utterance.waveform, 16000).text
        if on_cpu != on_gpu:
            flips.append(utterance.segment.id)
    if flips:  # a different hypothesis only where the two devices' best scores tie to 1e-3
        nbest = DecodeOptions(nbest=2)
        cpu2, cuda2 = Runner(threads=2, decode=nbest), Runner(threads=2, decode=nbest, device="cuda")
        for utterance in demo.utterances:
            if utterance.segment.id in flips:
                (_, cpu_score), (_, gpu_score) = _best(cpu2, utterance.waveform)[0], _best(cuda2, utterance.waveform)[0]
                assert abs(cpu_score - gpu_score) <= SCORE_TOLERANCE * max(1.0, abs(cpu_score)), utterance.segment.id


@pytest.mark.parametrize(("scheme", "search"), [([], "espnet"), (["half-fp16"], "espnet"), (["half-bf16"], "espnet"),
                                                (["bf16"], "espnet"), ([], "lean"), (["half-fp16"], "lean")])
def test_gpu_schemes_report_device_memory_and_keep_bleu(scheme: list[str], search: str) -> None:
    fp32 = Runner(threads=2, device="cuda").evaluate(limit=UTTERANCES)
    report = Runner(threads=2, device="cuda", plugins=scheme, search=search).evaluate(limit=UTTERANCES)
    conditions = report.conditions.to_dict()
    assert conditions["device"].startswith("cuda") and conditions["gpu"] and conditions["cuda"] == torch.version.cuda
    assert conditions["gpu_memory_bytes"] > 0 and report.metrics.gpu_peak_memory_bytes > 0
    assert abs(report.bleu.score - fp32.bleu.score) <= 1.0
    assert f"device {conditions['device']}" in report.format() and "peak memory" in report.format()


def test_batched_lean_decoding_on_cuda_gives_batch_one_translations(demo: Any) -> None:
    runner = Runner(threads=2, device="cuda", search="lean")
    waveforms = [u.waveform for u in demo.utterances[:8]]
    alone = [runner.translate(w, 16000).text for w in waveforms]
    assert [t.text for t in runner.translate_batch(waveforms, 16000)] == alone


def test_translate_cli_on_cuda(tmp_path: Path) -> None:
    out = tmp_path / "cuda.json"
    done = run_cli("translate", "--device", "cuda", "--limit", "5", "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "device cuda:0" in done.stdout and "GPU" in done.stdout


def test_serve_info_shows_the_gpu(tmp_path: Path) -> None:
    from benchmarks.live_server import live_server

    with live_server(tmp_path / "serve.log", "--device", "cuda") as url:
        info = httpx.get(f"{url}/info").json()
    assert info["models"]["fp32"]["device"] == "cuda:0" and info["environment"]["gpu"]


def test_onnxruntime_engine_on_cuda_uses_the_cuda_provider_and_keeps_the_translations(demo: Any) -> None:
    """With onnxruntime-gpu installed, the sessions run on CUDA's execution provider; translations as on the CPU
    except where the two devices' best scores tie (as for torch on the GPU)."""
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA execution provider (pip install onnxruntime-gpu)")
    cpu, cuda = Runner(threads=2, search="onnxruntime"), Runner(threads=2, device="cuda", search="onnxruntime")
    session = cuda.bundle.speech2text.beam_search.context.session("st_step")
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    texts = [(cpu.translate(u.waveform, 16000).text, cuda.translate(u.waveform, 16000).text) for u in demo.utterances]
    assert sum(a != b for a, b in texts) <= 1
