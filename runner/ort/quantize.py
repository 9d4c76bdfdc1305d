"""int8 exports through ONNX Runtime's own quantization tools.

dynamic-int8: `quantize_dynamic` of every graph's products (int8 weights, activations quantized per
call: MatMulInteger/DynamicQuantizeLinear). static-int8: `quantize_static` in the QDQ format
(QuantizeLinear/DequantizeLinear around the products, ONNX Runtime's static PTQ), after
`quant_pre_process`, with activation ranges calibrated on the inputs each graph receives during real
beam searches: the fp32 export decodes the calibration utterances (dev, never test) on the
`onnxruntime` engine while every session call's inputs are recorded.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from runner.errors import RunnerError
from runner.model import ModelBundle
from runner.ort.sessions import ExportedGraphs

logger = logging.getLogger("runner")
METHODS = ("minmax", "entropy", "percentile")
# The products: normalizations, softmax and residual adds stay float (they lose most to int8: wyoming-whisper-trt
# #1052 measured cosine 0.61 -> 0.98 keeping them out), and so do the conformer's convolutions and the token
# embedding (dynamic int8 of every op type made the seed-scale encoder 1.8x slower than fp32, of the products alone
# 0.6x; a step 1.93 against 1.43 ms: benchmarks.seed_scale, EPYC).
OP_TYPES = ["MatMul", "Gemm"]
CALLS_KEPT = 128  # recorded session calls kept per graph: beyond it every other one is dropped (all steps stay spanned)


class RecordingGraphs(ExportedGraphs):
    """Sessions that keep (a thinned sample of) every call's inputs, per graph."""

    recorded: dict[str, list[dict[str, Any]]]
    _stride: dict[str, int]
    _seen: dict[str, int]

    def session(self, graph: str) -> Any:
        session = super().session(graph)
        graphs = self

        class Recording:
            def run(self, outputs: Any, feeds: dict[str, Any]) -> Any:
                graphs.keep(graph, feeds)
                return session.run(outputs, feeds)

        return Recording()

    def keep(self, graph: str, feeds: dict[str, Any]) -> None:
        recorded = self.__dict__.setdefault("recorded", {}).setdefault(graph, [])
        seen, stride = self.__dict__.setdefault("_seen", {}), self.__dict__.setdefault("_stride", {})
        seen[graph] = seen.get(graph, 0) + 1
        if (seen[graph] - 1) % stride.get(graph, 1):
            return
        recorded.append({name: value.copy() for name, value in feeds.items()})
        if len(recorded) >= CALLS_KEPT:
            recorded[:] = recorded[::2]
            stride[graph] = stride.get(graph, 1) * 2


def record_inputs(directory: Path, utterances: list[Any], threads: int = 1) -> dict[str, list[dict[str, Any]]]:
    """Every graph's inputs while the fp32 export in `directory` decodes `utterances` on the onnxruntime engine."""
    from runner.environment import torch_settings
    from runner.model import load
    from runner.pipeline import translate

    recorder = RecordingGraphs.open(directory)
    with torch_settings(threads):
        bundle = load(directory)
        bundle.install_engine("onnxruntime", context=recorder)
        for utterance in utterances:
            translate(bundle.speech2text, utterance.waveform)
    return getattr(recorder, "recorded", {})


class _Reader:
    """ONNX Runtime's CalibrationDataReader over recorded feeds."""

    def __init__(self, feeds: list[dict[str, Any]]) -> None:
        self._feeds: Iterator[dict[str, Any]] = iter(feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._feeds, None)

    def rewind(self) -> None:  # pragma: no cover - ONNX Runtime's interface
        pass


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantization tools log advice through the root logger: silenced for the block, restored."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def quantize_graphs(directory: Path, graphs: dict[str, dict[str, Any]], bundle: ModelBundle, options: Any,
                    progress: Callable[[str], None]) -> None:
    """Replace every fp32 graph in `directory` by its int8 version (`options.quant`), in place."""
    with _quiet():
        _quantize_graphs(directory, graphs, options, progress)


def _quantize_graphs(directory: Path, graphs: dict[str, dict[str, Any]], options: Any,
                     progress: Callable[[str], None]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if options.quant == "dynamic-int8":
        for name, graph in graphs.items():
            path = directory / graph["file"]
            quantize_dynamic(path, path, weight_type=QuantType.QInt8, op_types_to_quantize=OP_TYPES)
            progress(f"quantized {graph['file']} (dynamic int8)")
        return
    if options.calibration_method not in METHODS:
        raise RunnerError(f"--calibration-method must be one of {', '.join(METHODS)}, got "
                          f"{options.calibration_method!r}")
    recorded = record_inputs(directory, options.calibration)
    progress(f"recorded the graphs' inputs over {len(options.calibration)} calibration utterances")
    for name, graph in graphs.items():
        feeds = recorded.get(name)
        if not feeds:
            raise RunnerError(f"graph {name} received no input while decoding the calibration utterances")
        _quantize_static(directory / graph["file"], feeds, options.calibration_method)
        progress(f"quantized {graph['file']} (static int8, QDQ, {options.calibration_method}, {len(feeds)} calls)")


def _quantize_static(path: Path, feeds: list[dict[str, Any]], method: str) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = path.with_suffix(".prepared.onnx")
    try:
        # ONNX's shape inference and ORT's optimizations; ORT's symbolic shape inference stays off: on these
        # graphs it gives up and then writes its half-inferred model into the working directory
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
    except Exception as error:  # noqa: BLE001 - pre-processing is an optimization; quantize the graph as it is
        logger.info("%s: quant_pre_process skipped (%s)", path.name, error)
        shutil.copyfile(path, prepared)
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    try:
        quantize_static(str(prepared), str(path), _Reader(feeds), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=calibrate, op_types_to_quantize=OP_TYPES)
    finally:
        prepared.unlink(missing_ok=True)
        for leftover in path.parent.glob("augmented_model*.onnx"):
            leftover.unlink()
