"""`--device`: the CPU/CUDA dispatch, refusals, manifest fields and half precision, checked on the CPU.

The same paths on a real GPU are in tests/test_cuda.py (skipped without one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_cli

from runner import defaults
from runner.data import load_test_set, preload
from runner.device import PeakMemory, check_spec, facts, resolve
from runner.environment import manifest
from runner.errors import RunnerError
from runner.plugin import Effects, Plugin, PluginSpec
from runner.plugin_set import PluginSet, _check_class
from runner.runner import Runner

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answers of a machine without a GPU")


@pytest.mark.parametrize("spec", ["cpu", "cuda", "cuda:0", "cuda:12", "auto"])
def test_device_specs_are_accepted(spec: str) -> None:
    assert check_spec(spec) == spec


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:-1", "CPU", "mps", ""])
def test_bad_device_specs_are_one_line_errors(spec: str) -> None:
    with pytest.raises(RunnerError, match=r"--device must be cpu, cuda, cuda:N or auto") as error:
        check_spec(spec)
    assert "\n" not in str(error.value)


@NO_GPU
def test_auto_picks_the_cpu_and_cuda_says_why_not() -> None:
    assert resolve("auto") == torch.device("cpu")
    with pytest.raises(RunnerError, match=r"--device cuda: no CUDA GPU is visible to torch .*use --device cpu"):
        resolve("cuda")


def test_cpu_only_plugins_are_refused_on_cuda_naming_plugin_and_device() -> None:
    for name in ("dynamic-int8", "dynamic-fp16", "static-int8"):
        with pytest.raises(RunnerError) as error:
            PluginSet.resolve([PluginSpec(name)], device_type="cuda")
        message = str(error.value)
        assert f"plugin '{name}' runs on cpu only, not cuda" in message and "\n" not in message
    plugins = PluginSet.resolve([PluginSpec(n) for n in ("hop", "half-bf16", "ctc-prefix-scan", "self-kv-cache",
                                                         "cross-kv-cache", "search-threads")], device_type="cuda")
    assert len(plugins) == 6  # the frontend, search and half-precision plugins run there


def test_auto_stays_on_the_cpu_for_cpu_only_plugins() -> None:
    assert resolve("auto", PluginSet.resolve([PluginSpec("dynamic-int8")])) == torch.device("cpu")


def test_the_cli_refuses_a_cpu_only_plugin_on_cuda_in_one_line(tiny_exp: Path, shared_corpus: Path) -> None:
    done = run_cli("translate", "--model", str(tiny_exp), "--data", str(shared_corpus), "--device", "cuda",
                   "--quant", "dynamic-int8", "--no-progress")
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: plugin 'dynamic-int8' runs on cpu only, not cuda (torch.ao quantized "
                                   "kernels (fbgemm, onednn) are CPU-only; on a GPU use half-fp16 or half-bf16); "
                                   "drop it or use --device cpu")
    done = run_cli("translate", "--model", str(tiny_exp), "--device", "tpu", "--no-progress")
    assert done.returncode == 2 and "--device must be cpu, cuda, cuda:N or auto, got 'tpu'" in done.stderr


@NO_GPU
def test_the_cli_says_there_is_no_gpu_in_one_line(tiny_exp: Path, shared_corpus: Path) -> None:
    done = run_cli("translate", "--model", str(tiny_exp), "--data", str(shared_corpus), "--device", "cuda",
                   "--no-progress")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "--device cuda: no CUDA GPU is visible" in done.stderr


def test_sweep_and_serve_refuse_cpu_only_schemes_on_cuda(tmp_path: Path, tiny_exp: Path) -> None:
    from runner.serve.app import scheme_sets
    from runner.sweep import SweepConfig

    config = tmp_path / "gpu.yaml"
    config.write_text(yaml.safe_dump({"model": str(tiny_exp), "device": "cuda",
                                      "grid": {"quant": ["none", "half-fp16", "static-int8"]}}))
    with pytest.raises(RunnerError, match=rf"^{config}: plugin 'static-int8' runs on cpu only, not cuda"):
        SweepConfig.from_yaml(config)
    config.write_text(yaml.safe_dump({"model": str(tiny_exp), "device": "gpu:0"}))
    with pytest.raises(RunnerError, match=rf"^{config}: device must be cpu, cuda, cuda:N or auto"):
        SweepConfig.from_yaml(config)
    with pytest.raises(RunnerError, match=r"plugin 'dynamic-int8' runs on cpu only, not cuda"):
        scheme_sets(["none", "dynamic-int8"], device="cuda:1")
    assert list(scheme_sets(["none", "half-bf16"], device="cuda")) == ["fp32", "half-bf16"]


def test_a_plugin_must_declare_known_devices() -> None:
    @dataclass
    class NoOptions:
        pass

    class Accelerated(Plugin):
        name = "accelerated"
        description = "declares a device the runner does not know"
        Config = NoOptions
        effects = Effects()
        devices = ("tpu",)

    with pytest.raises(RunnerError, match=r"declares devices \('tpu',\)"):
        _check_class("accelerated", "tests", Accelerated)
    Accelerated.devices = ("cuda",)
    _check_class("accelerated", "tests", Accelerated)
    assert Plugin.devices == ("cpu", "cuda")  # a plugin that says nothing runs anywhere


def test_manifest_and_report_state_the_device(tiny_exp: Path, shared_corpus: Path) -> None:
    fields = manifest(threads=1, int8_backend="none", device="cpu")
    assert {k: fields[k] for k in ("device", "gpu", "gpu_memory_bytes", "cuda", "cudnn")} == {
        "device": "cpu", "gpu": None, "gpu_memory_bytes": None, "cuda": None, "cudnn": None}
    assert facts(None)["device"] == "cpu"
    with PeakMemory("cpu") as peak:
        pass
    assert peak.bytes is None  # no GPU memory to speak of
    runner = Runner(tiny_exp, threads=1)
    assert runner.device == torch.device("cpu") and runner.bundle.device == torch.device("cpu")
    report = runner.evaluate(shared_corpus, limit=3)
    assert report.conditions.device == "cpu" and report.conditions.machine["gpu"] is None
    assert report.metrics.gpu_peak_memory_bytes is None
    from runner.environment import cpu_kind

    assert f"device cpu, cpu {cpu_kind()}, threads 1" in report.format() and "GPU" not in report.format()
    assert report.conditions.machine["cpu_kind"] == cpu_kind() and f"(cpu kind {cpu_kind()})" in report.format()
    assert report.to_dict()["conditions"]["device"] == "cpu"


@pytest.fixture(scope="module")
def demo_waveforms() -> list:
    test = preload(load_test_set(defaults.data_path(), "tst-COMMON"), 16000, limit=6)
    return [u.waveform for u in test.utterances]


@pytest.mark.parametrize("name", ["half-bf16", "half-fp16"])
def test_half_stores_half_weights_keeps_the_frontend_float32_and_translates(name: str, demo_waveforms: list) -> None:
    fp32 = Runner(threads=2, search="lean")
    half = Runner.from_bundle(fp32.bundle, threads=2, plugins=[name], search="lean")
    dtype = torch.bfloat16 if name == "half-bf16" else torch.float16
    model = half.bundle.model
    assert {p.dtype for p in model.encoder.parameters()} == {dtype}
    assert {p.dtype for p in model.decoder.parameters()} == {dtype}
    assert all(p.dtype == torch.float32 for p in model.frontend.parameters())
    ratio = half.summary["state_dict_bytes"] / fp32.summary["state_dict_bytes"]
    assert 0.45 < ratio < 0.55, ratio  # the size is the bytes of the saved half-precision weights
    assert half.plugins[0].describe()["dtype"].startswith(str(dtype).replace("torch.", ""))
    if name == "half-fp16":
        # torch 2.11's float16 depthwise Conv1d on this CPU takes minutes for some lengths (144 channels,
        # kernel 15: 110 or 128 frames over 100 s, 120 or 129 a few ms), so the conformer cannot decode
        # here; tests/test_cuda.py translates with half-fp16 on a GPU.
        return
    seen: list[torch.dtype] = []
    model.frontend.register_forward_hook(lambda _m, _a, out: seen.append(out[0].dtype))
    model.encoder.register_forward_hook(lambda _m, _a, out: seen.append(out[0].dtype))
    expected = [fp32.translate(w, 16000).text for w in demo_waveforms[:3]]
    got = [half.translate(w, 16000).text for w in demo_waveforms[:3]]
    assert seen[:2] == [torch.float32, torch.float32]  # features in float32, the search reads float32
    # The demo model is confident: half precision keeps its translations of these utterances.
    assert got == expected
    batched = [t.text for t in half.translate_batch(demo_waveforms[:3], 16000)]
    assert batched == got


def test_sweep_device_option_checks_every_grid_point(tmp_path: Path) -> None:
    done = run_cli("sweep", "hop", "--device", "cuda", "--out", str(tmp_path / "out"), "--no-progress")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "hop.yaml: plugin 'dynamic-int8' runs on cpu only, not cuda" in done.stderr
    assert not (tmp_path / "out" / "results.jsonl").exists()  # refused before anything ran
