"""An exported directory's graphs as ONNX Runtime sessions, its files checked against the manifest first.

`ExportedGraphs.open(directory)` reads manifest.json and verifies the sha256 of every file it lists (a
missing or altered file is a one-line error naming it) and the ONNX Runtime version against the opset.
Sessions are created on first use, one per graph and intra-op thread count (torch's count at the
call, which the runner sets to its own), with full graph optimization, on the CPU execution provider
or CUDA's for a model on a GPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runner.archive import sha256
from runner.errors import RunnerError

MANIFEST = "manifest.json"
FORMAT_VERSION = 4  # the graphs' inputs and outputs: an export of another format is refused (export it again)
MIN_ONNXRUNTIME = (1, 17)  # opset 17 graphs need ONNX Runtime 1.17 or later (its release notes)
OPTIMIZATION = "ORT_ENABLE_ALL"  # every graph optimization ONNX Runtime has, applied when a session loads


def is_exported(directory: Path) -> bool:
    """Whether `directory` is a `runner export` output (a manifest.json beside model/)."""
    return (directory / MANIFEST).is_file() and (directory / "model" / "config.yaml").is_file()


def is_current_export(directory: Path) -> bool:
    """Whether `directory` is an export of the format this runner reads (a cached one is otherwise redone)."""
    try:
        return is_exported(directory) and json.loads((directory / MANIFEST).read_text())["format"] == FORMAT_VERSION
    except (OSError, ValueError, KeyError):
        return False


def check_onnxruntime() -> str:
    """ONNX Runtime's version, refused in one line when too old for the exported opset."""
    import onnxruntime

    version = onnxruntime.__version__
    numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if numbers < MIN_ONNXRUNTIME:
        raise RunnerError(f"onnxruntime {version} is too old for opset 17 graphs; install onnxruntime>="
                          f"{'.'.join(map(str, MIN_ONNXRUNTIME))}")
    return version


@dataclass
class ExportedGraphs:
    """The graphs of one exported directory, opened as sessions on demand.

    Attributes:
        directory: the export.
        manifest: its manifest.json.
        device: where the model runs (CUDA's execution provider on a GPU).
    """

    directory: Path
    manifest: dict[str, Any]
    device: torch.device = torch.device("cpu")
    _sessions: dict[tuple[str, int], Any] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, directory: Path, device: torch.device | None = None) -> ExportedGraphs:
        """Read and verify an export.

        Raises:
            RunnerError: no manifest, a listed file missing or altered (sha256), an ONNX Runtime too old.
        """
        check_onnxruntime()
        path = directory / MANIFEST
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise RunnerError(f"{path}: not a readable export manifest ({error})") from error
        if manifest.get("format") != FORMAT_VERSION:
            raise RunnerError(f"{path}: an export of format {manifest.get('format')!r}, this runner reads format "
                              f"{FORMAT_VERSION}; export the model again (runner export)")
        files = manifest.get("files")
        if not isinstance(files, dict) or not isinstance(manifest.get("graphs"), dict):
            raise RunnerError(f"{path}: lists no files and graphs; export the model again")
        for name, digest in files.items():
            file = directory / name
            if not file.resolve().is_relative_to(directory.resolve()):
                raise RunnerError(f"{path}: file {name!r} lies outside the export")
            if not file.is_file():
                raise RunnerError(f"{file}: missing from the export (listed in its manifest)")
            if sha256(file) != digest:
                raise RunnerError(f"{file}: sha256 differs from the export manifest's; the file was altered")
        return cls(directory, manifest, device or torch.device("cpu"))

    def has(self, graph: str) -> bool:
        return graph in self.manifest["graphs"]

    @property
    def provider(self) -> str:
        """The execution provider the sessions run on."""
        return "CUDAExecutionProvider" if self.device.type == "cuda" else "CPUExecutionProvider"

    @property
    def runtime(self) -> dict[str, str]:
        """ONNX Runtime's version, the execution provider and the graph optimization level, as run conditions
        state them."""
        import onnxruntime

        return {"onnxruntime": f"onnxruntime {onnxruntime.__version__}", "provider": self.provider,
                "graph_optimization": f"graph optimization {OPTIMIZATION}"}

    def session(self, graph: str) -> Any:
        """The session of `graph` for torch's current intra-op thread count."""
        import onnxruntime

        threads = torch.get_num_threads()
        key = (graph, threads)
        if key not in self._sessions:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, OPTIMIZATION)
            # ONNX Runtime's threads spin after a call by default: between a search's session calls torch runs
            # (top-k, CTC prefix scores) on the same cores, and spinning doubled an ASR step at 2 threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            providers = [self.provider] + (["CPUExecutionProvider"] if self.provider != "CPUExecutionProvider" else [])
            file = self.directory / self.manifest["graphs"][graph]["file"]
            self._sessions[key] = onnxruntime.InferenceSession(str(file), options, providers=providers)
        return self._sessions[key]

    def run(self, graph: str, **inputs: Any) -> list[np.ndarray]:
        """Run `graph` on `inputs` (torch tensors or arrays, by the graph's input names); its outputs as arrays."""
        feeds = {name: value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
                 for name, value in inputs.items()}
        return self.session(graph).run(None, feeds)
