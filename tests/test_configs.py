"""Every YAML shipped in configs/ loads with the reader meant for it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runner.config import RunConfig
from runner.decode import DecodeOptions
from runner.sweep import SweepConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", ["hop.yaml", "hop-quality.yaml"])
def test_sweep_configs(name: str) -> None:
    config = SweepConfig.from_yaml(CONFIGS / name)
    assert len(config.plan()) == 16
    assert config.measure == ("quality" if "quality" in name else "latency")


def test_run_and_decode_configs() -> None:
    run = RunConfig.from_yaml(CONFIGS / "run.yaml")
    assert [spec.name for spec in run.plugins] == ["hop", "dynamic-int8"]
    assert DecodeOptions.from_yaml(CONFIGS / "decode.yaml").beam_size == 5


def test_seed_scale_model_config_is_about_the_seeds_size() -> None:
    config = yaml.safe_load((CONFIGS / "models" / "seed-scale.yaml").read_text())
    assert {"architecture", "asr_steps", "st_steps", "beam_size"} <= set(config)


def test_half_sweep_config_compares_half_precision_with_fp32_on_the_lean_engine() -> None:
    config = SweepConfig.from_yaml(CONFIGS / "half.yaml")
    assert [plan.quant for plan in config.plan()] == ["none", "half-bf16"]
    assert config.run.search == "lean" and all(plan.search == "lean" for plan in config.plan())


def test_held_out_sweep_config_compares_every_cpu_number_format_on_tst_he() -> None:
    config = SweepConfig.from_yaml(CONFIGS / "held-out.yaml")
    assert config.run.evaluate.split == "tst-HE"
    assert [plan.quant for plan in config.plan()] == ["none", "dynamic-int8", "static-int8", "bf16"]
