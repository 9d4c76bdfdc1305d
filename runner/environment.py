"""The machine a figure was measured on: CPU model and kind, cores, GPU, library versions, commit (the
manifest that `runner.conditions.RunConditions` carries), and torch's process-wide settings around a run."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import runner
from runner._espnet import root_handlers_kept
from runner.device import facts as device_facts
from runner.errors import RunnerError

CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def resolve_threads(threads: int | None) -> int:
    """The intra-op thread count a runner uses: `threads`, or every core this process may use."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise RunnerError(f"threads must be a positive integer, got {threads!r}")
    return threads or available_cores()


def ignore_library_warnings() -> None:
    """Inside a `warnings.catch_warnings()` block: drop notices about code the user does not call.

    torch 2.11 warns on every eager-mode `torch.ao.quantization` call that it is deprecated (it
    works), and ESPnet's encoder warns about `torch.cuda.amp.autocast` on every first call.
    """
    warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization.*", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization.*", category=UserWarning)
    warnings.filterwarnings("ignore", message=r".*deprecated.*", module=r"torch\.ao\.quantization")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"espnet2?\.")


@contextlib.contextmanager
def torch_settings(threads: int, int8_backend: str | None = None) -> Iterator[None]:
    """Run the block on `threads` intra-op threads and torch.ao's quantized engine `int8_backend`; restore the caller's after.

    torch keeps both process-wide, so a runner embedded in a host program sets them only for
    its own calls. Inter-op threads are left as they are: torch lets a process set them once.
    Library warnings are filtered inside the block only, and logging handlers that ESPnet adds to
    the root logger are removed at its end.
    """
    threads_before, engine_before = torch.get_num_threads(), torch.backends.quantized.engine
    with warnings.catch_warnings(), root_handlers_kept():
        ignore_library_warnings()
        torch.set_num_threads(threads)
        if int8_backend is not None:
            torch.backends.quantized.engine = int8_backend
        try:
            yield
        finally:
            torch.set_num_threads(threads_before)
            torch.backends.quantized.engine = engine_before


def cpu_model() -> tuple[str, list[str]]:
    """This machine's CPU model name and which of `CPU_FLAGS_OF_INTEREST` it has."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                present = set(value.split())
                flags = [f for f in CPU_FLAGS_OF_INTEREST if f in present]
    except OSError:
        pass
    return model, flags


# The instruction sets that choose the kernels of torch's CPU libraries (MKL, oneDNN, fbgemm), best first.
_ISA_LEVELS = (("amx", ("amx_int8", "amx_bf16", "amx_tile")), ("avx512-bf16", ("avx512_bf16",)),
               ("avx512-vnni", ("avx512_vnni",)), ("avx512", ("avx512f",)), ("avx2", ("avx2",)))


def cpu_kind(model: str | None = None, flags: list[str] | None = None) -> str:
    """The kind of CPU a figure depends on: its vendor and the best instruction set its kernels can use.

    Quantized and bf16 figures can differ between kinds in their last digits (MKL picks its code path by
    vendor and instruction set, oneDNN uses AMX where it exists), so every published table names
    the kind it was measured on: `intel-amx` for an Intel Xeon with AMX, `amd-avx512-bf16` for an AMD
    EPYC with AVX-512 BF16 and no AMX.

    Args:
        model: a CPU model name (default: this machine's); flags: its flags (default: this machine's).

    Returns:
        `<vendor>-<isa>`, e.g. `intel-amx`; the vendor is `intel`, `amd` or the machine's architecture. For this
        machine with its libraries capped by `ISA_SWITCHES`, `-capped-<caps>` follows.
    """
    here = model is None and flags is None
    if model is None or flags is None:
        here_model, here_flags = cpu_model()
        model, flags = model if model is not None else here_model, flags if flags is not None else here_flags
    lowered = model.lower()
    vendor = "intel" if "intel" in lowered else "amd" if ("amd" in lowered or "epyc" in lowered) else platform.machine()
    present = set(flags)
    isa = next((name for name, needed in _ISA_LEVELS if present & set(needed)), "base")
    capped = isa_caps() if here else None
    return f"{vendor}-{isa}" + (f"-capped-{capped}" if capped else "")


# The switches that make torch's CPU libraries use fewer instructions than the CPU has (to reproduce
# another kind's kernels). ONNX Runtime's MLAS has none: it dispatches on cpuid alone.
ISA_SWITCHES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "FBGEMM_ENABLE_INSTRUCTIONS")


def isa_caps() -> str | None:
    """The instruction-set caps set in this process's environment (`ISA_SWITCHES`), as one word, or None.

    A capped machine is not the kind its flags say and not quite the kind it imitates (ONNX Runtime still uses
    every instruction), so `cpu_kind` names it apart, e.g. `amd-avx512-bf16-capped-avx2`: no published table
    names such a kind, and its quantized figures are compared with none.
    """
    values = sorted({os.environ[name].strip().lower().replace("_", "-") for name in ISA_SWITCHES
                     if os.environ.get(name, "").strip()})
    return "+".join(values) or None


def cpu_description() -> str:
    """One line naming this machine's CPU, its kind and the flags that chose its kernels."""
    model, flags = cpu_model()
    return f"{model}, cpu kind `{cpu_kind()}` ({', '.join(flags) or 'no AVX2'})"


LIBRARIES = ("torch", "torchaudio", "espnet", "sacrebleu", "numpy")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries every figure depends on."""
    return {name: _version(name) for name in LIBRARIES}


def git_commit() -> str | None:
    root = Path(runner.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def manifest(threads: int | None = None, int8_backend: str | None = None,
             device: torch.device | str | None = None) -> dict[str, Any]:
    """The machine and libraries a figure was measured with.

    Args:
        threads: the intra-op threads the measured runner used (default: torch's current count).
        int8_backend: torch.ao's quantized engine the measured model's plugins used; "none" for a float
            model. Default: torch's current one (for a manifest that describes the machine only).
        device: where the measured model ran (default: the CPU). On a GPU the manifest names it,
            its memory, compute capability, and the CUDA and cuDNN versions (`runner.device.facts`).
    """
    model, flags = cpu_model()
    return {
        **device_facts(device),
        "cpu": model,
        "cpu_kind": cpu_kind(),  # this machine's, with its instruction-set caps
        "cpu_flags": flags,
        "cores": available_cores(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "int8_backend": int8_backend if int8_backend is not None else torch.backends.quantized.engine,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": library_versions(),
        "runner": runner.__version__,
        "runner_commit": git_commit(),
    }
