"""`runner export`: a thin command over `runner.ort.export`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from runner import defaults
from runner.cli.common import fail
from runner.errors import RunnerError


def export(
    out: Path = typer.Option(..., help="Directory to write: ONNX graphs, model/, manifest.json"),
    model: Optional[Path] = typer.Option(None, help="Experiment dir, config, .pth, packed archive or Hub name [default: the demo model]"),
    quant: str = typer.Option("none", help="none, dynamic-int8 (ONNX Runtime quantize_dynamic) or static-int8 (quantize_static, QDQ)"),
    data: Optional[Path] = typer.Option(None, help="Data root whose --calibration-split static int8 calibrates on [default: the demo corpus]"),
    calibration_split: str = typer.Option("dev", help="Split of --data static int8 calibrates on (never a test split)"),
    calibration_size: int = typer.Option(16, help="Calibration utterances (real beam searches)"),
    calibration_method: str = typer.Option("minmax", help="minmax, entropy or percentile"),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out"),
    threads: int = typer.Option(2, help="Intra-op threads while calibrating"),
) -> None:
    """Export the model as ONNX graphs (opset 17) that `--search onnxruntime` and a deployment run."""
    from runner.environment import torch_settings
    from runner.model import load
    from runner.ort.export import ExportOptions, export as write
    from runner.ort.export import prepare_output

    try:
        prepare_output(out, force)  # before loading and exporting, which a bad --out would waste
        with torch_settings(threads):
            bundle = load(model if model is not None else defaults.model_path())
            options = ExportOptions(quant, force=force, calibration_method=calibration_method)
            if quant == "static-int8":
                options.calibration, options.source = _calibration(data, calibration_split, calibration_size,
                                                                   bundle.sample_rate)
            manifest = write(bundle, out, options, progress=lambda line: typer.echo(f"note: {line}", err=True))
    except RunnerError as error:
        fail(str(error), error=error)
    typer.echo(f"wrote {out}: {len(manifest['graphs'])} graphs ({quant}), model/, manifest.json; translate "
               f"with: runner translate --model {out} --search onnxruntime")




def _calibration(data: Optional[Path], split: str, size: int, rate: int) -> tuple[list, dict]:
    """The calibration utterances of `split` and what they are, for the manifest."""
    from runner.data import load_test_set, preload

    if split.startswith("tst"):
        typer.echo(f"note: calibrating on test split {split}, as asked by name; report on another split", err=True)
    root = data if data is not None else defaults.data_path()
    try:
        test_set = load_test_set(root, split)
    except RunnerError as error:
        raise RunnerError(f"--calibration-split {split}: {error}") from error
    utterances = preload(test_set, rate, limit=size).utterances
    return utterances, {"data": str(root), "split": split}
