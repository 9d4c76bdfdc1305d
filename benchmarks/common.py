"""What the benchmarks share: a page's environment block, a process's resident memory, the seed-scale model,
and a measured scheme (plugins, search engine, ONNX Runtime export) with the runner that measures it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from runner import defaults
from runner.data import load_test_set, preload
from runner.decode import DecodeOptions
from runner.demo.build import SPECIALS_HEAD, SPECIALS_TAIL, md_config, write_experiment
from runner.model import cache_dir
from runner.plugin_set import PluginSet
from runner.runner import Runner

SEED_SCALE_CONFIG = defaults.CONFIGS / "models" / "seed-scale.yaml"


def environment_block(env: dict[str, Any]) -> list[str]:
    """A generated page's `## Environment` section: the manifest a figure was measured with, a line a field."""
    return ["## Environment", "", "```", *(f"{k}: {v}" for k, v in env.items()), "```", ""]


def publish(path: Path, text: str) -> None:
    """Write a generated page (its folder made if missing) and print it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(text)


def rss(pid: int) -> int:
    """Resident set of a process in bytes (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass(frozen=True)
class Scheme:
    """One measured configuration.

    Attributes:
        plugins: plugin names or `{name: ..., option: ...}` entries, in order.
        search: the search engine (espnet, lean, onnxruntime).
        export: for onnxruntime, the number format the model is exported in (`runner export --quant`).
    """

    plugins: tuple[Any, ...] = ()
    search: str = "espnet"
    export: str | None = None

    def runs_on(self, device_type: str) -> bool:
        """Whether every plugin runs on `device_type` (an export runs wherever ONNX Runtime does)."""
        return PluginSet.resolve(list(self.plugins)).runs_on(device_type)


def espnet(*plugins: Any) -> Scheme:
    """`plugins` on ESPnet's own search."""
    return Scheme(plugins)


def lean(*plugins: Any) -> Scheme:
    """`plugins` on the lean engine."""
    return Scheme(plugins, "lean")


def ort(export: str, *plugins: Any) -> Scheme:
    """The model exported in number format `export`, searched by the onnxruntime engine, with `plugins`."""
    return Scheme(plugins, "onnxruntime", export)


def scheme_runner(bundle: Any, scheme: Scheme, **options: Any) -> Runner:
    """A runner over a copy of `bundle` for `scheme` (an export is written once into the cache)."""
    if scheme.export is not None:
        options.pop("calibration_data", None)
        return Runner(exported(bundle, scheme.export), bundle.options, search=scheme.search,
                      plugins=list(scheme.plugins), **options)
    return Runner.from_bundle(bundle, plugins=list(scheme.plugins), search=scheme.search, **options)


def build_model(config: dict[str, Any]) -> Path:
    """The random-weight seed-scale experiment directory (built once, cached by its config)."""
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    exp = cache_dir() / "seed-scale" / key
    if (exp / "valid.acc.ave.pth").is_file():
        return exp

    def tokens(n: int, prefix: str) -> list[str]:
        return SPECIALS_HEAD[:2] + [f"▁{prefix}{i}" for i in range(n - 3)] + SPECIALS_TAIL
    model_config = md_config(tokens(config["tgt_vocab"], "de"), tokens(config["src_vocab"], "en"),
                             config["architecture"], token_type="word")
    write_experiment(exp, model_config, seed=config["seed"])
    state = torch.load(exp / "valid.acc.ave.pth")
    for name in ("decoder.output_layer.bias", "extra_asr_decoder.output_layer.bias"):
        state[name][-1] = -1e4  # <sos/eos> is never the best token: every search runs its full length
    torch.save(state, exp / "valid.acc.ave.pth")
    return exp


def exported(bundle: Any, quant: str) -> Path:
    """`bundle`'s model exported in number format `quant` (static int8 calibrated on 4 demo dev utterances),
    written once into the cache (~/.cache/st-runner/benchmark-exports)."""
    from runner.ort.export import ExportOptions, export
    from runner.ort.sessions import is_current_export

    target = cache_dir() / "benchmark-exports" / f"{bundle.files.content_hash}-{quant}"
    if not is_current_export(target):
        calibration = (preload(load_test_set(defaults.data_path(), "dev"), bundle.sample_rate, limit=4).utterances
                       if quant == "static-int8" else [])
        export(bundle, target, ExportOptions(quant, calibration, force=True,
                                             source={"data": str(defaults.data_path()), "split": "dev"}))
    return target


def decode_options(config: dict[str, Any]) -> DecodeOptions:
    """Beams from the config; a negative max length ratio is ESPnet's "exactly this many steps"."""
    return DecodeOptions(beam_size=config["beam_size"], asr_beam_size=config["asr_beam_size"],
                         asr_ctc_weight=config["asr_ctc_weight"], maxlenratio=-float(config["st_steps"]),
                         asr_maxlenratio=-float(config["asr_steps"]))
