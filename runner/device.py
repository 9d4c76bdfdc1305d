"""Where a model runs: `--device cpu|cuda|cuda:N|auto`, the GPU's facts, and timing on it.

The CPU is the default, so every figure measured before devices existed keeps its meaning. On
CUDA, kernels run asynchronously: a clock read right after a call measures only the launch, so
`synchronize` waits for the device before every reading, and `PeakMemory` records the most GPU
memory a run held (what a user sizes a GPU by).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

import torch

from runner.errors import RunnerError

DEVICE_CHOICES = "cpu, cuda, cuda:N or auto"
_SPEC = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")


def check_spec(spec: str, where: str = "--device") -> str:
    """`spec` if it names a device this runner knows (cpu, cuda, cuda:N, auto), else a one-line error."""
    if not isinstance(spec, str) or not _SPEC.match(spec):
        raise RunnerError(f"{where} must be {DEVICE_CHOICES}, got {spec!r}")
    return spec


def spec_type(spec: str, where: str = "--device") -> str | None:
    """The device type ("cpu" or "cuda") a checked `spec` names; None for "auto", decided only at load."""
    check_spec(spec, where)
    return None if spec == "auto" else spec.split(":")[0]


def cuda_unavailable_reason() -> str | None:
    """Why torch cannot use a GPU here (None when it can)."""
    if torch.version.cuda is None:
        return f"this torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        return f"no CUDA GPU is visible to torch {torch.__version__} (built for CUDA {torch.version.cuda})"
    return None


def resolve(spec: str, plugins: Iterable[Any] = (), where: str = "--device") -> torch.device:
    """The device a runner uses for `spec`.

    Args:
        spec: cpu, cuda, cuda:N or auto (a GPU when one is visible and every plugin runs there).
        plugins: the run's plugins (a `PluginSet`, or plugin objects); their `devices` decide whether `auto`
            may pick the GPU.
        where: what the error messages name (the option or YAML file).

    Returns:
        The `torch.device`.

    Raises:
        RunnerError: a malformed spec, or CUDA asked for where there is none (or no such index).
    """
    kind = spec_type(spec, where)
    if kind == "cpu":
        return torch.device("cpu")
    if kind is None:
        cuda_everywhere = all("cuda" in plugin.devices for plugin in plugins)
        return torch.device("cuda:0" if cuda_unavailable_reason() is None and cuda_everywhere else "cpu")
    reason = cuda_unavailable_reason()
    if reason is not None:
        raise RunnerError(f"{where} {spec}: {reason}; use --device cpu (or auto)")
    device = torch.device(spec if ":" in spec else "cuda:0")
    if device.index >= torch.cuda.device_count():
        raise RunnerError(f"{where} {spec}: there are {torch.cuda.device_count()} CUDA device(s) (cuda:0 .. "
                          f"cuda:{torch.cuda.device_count() - 1})")
    return device


def synchronize(device: torch.device | str | None) -> None:
    """Wait until `device` has finished its queued work (a no-op on the CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device | str | None) -> float:
    """`time.perf_counter()` once `device` has finished its queued work: the time to read on a GPU."""
    synchronize(device)
    return time.perf_counter()


def facts(device: torch.device | str | None) -> dict[str, Any]:
    """The device's fields of the environment manifest: name, GPU model, CUDA and cuDNN versions, memory.

    On the CPU the GPU fields are None (the CPU itself is described by `environment.manifest`).
    """
    device = torch.device(device or "cpu")
    fields: dict[str, Any] = {"device": str(device), "gpu": None, "gpu_memory_bytes": None,
                              "gpu_capability": None, "cuda": None, "cudnn": None}
    if device.type != "cuda":
        return fields
    properties = torch.cuda.get_device_properties(device)
    fields.update(gpu=properties.name, gpu_memory_bytes=int(properties.total_memory),
                  gpu_capability=f"{properties.major}.{properties.minor}", cuda=torch.version.cuda,
                  cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    return fields


class PeakMemory:
    """The most GPU memory torch allocated on `device` inside the block (None on the CPU).

    torch's peak counter is per device and process-wide; it is reset when the block starts, so a
    reading covers this block's work only.
    """

    def __init__(self, device: torch.device | str | None) -> None:
        self.device = torch.device(device or "cpu")
        self.bytes: int | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.bytes = int(torch.cuda.max_memory_allocated(self.device))
