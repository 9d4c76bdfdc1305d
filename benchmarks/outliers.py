"""A copy of an ESPnet model whose LayerNorm outputs carry outlier channels, its float function unchanged.

    python -m benchmarks.outliers --out /tmp/outlier-model                 # the embedded demo model
    python -m benchmarks.outliers --model exp/st_train --out DIR --scale 100 --channels 4 --seed 0

Trained Transformers carry a few activation channels tens of times larger than the rest; the
embedded demo model, trained briefly on synthetic speech, does not, so int8 costs it nothing.
This writes a copy in which `channels` seeded random output channels of every pre-norm LayerNorm
of `--parts` are `--scale` times larger and the matching input columns of the Linears that read
them `--scale` times smaller (`runner.quant.smoothing.plant_outliers`): the same function in float, the
int8 collapse of a real model. The copy is an experiment directory every runner command loads.
With `--table`, it also decodes tst-COMMON with fp32, dynamic int8 and static int8 on the
original and the copy and prints their BLEU.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from runner import defaults
from runner.decode import DecodeOptions
from runner.errors import RunnerError
from runner.model import load
from runner.model_files import cache_dir
from runner.plugin import MODEL_PARTS
from runner.quant.smoothing import plant_outliers

SCALE, CHANNELS = 100.0, 4  # on the demo model: fp32 unchanged, dynamic and static int8 lose > 20 BLEU


def _source_directory(files) -> tuple[Path, Path]:  # noqa: ANN001 - runner.model_files.ModelFiles
    """The directory to copy (an experiment directory, or a packed model's cache entry) and the weights in it."""
    if files.origin.is_dir():
        return files.origin, files.model_file
    packed = cache_dir() / "packed"
    if files.packed and files.config.is_relative_to(packed):
        entry = packed / files.config.relative_to(packed).parts[0]
        return entry, files.model_file
    return files.config.parent, files.model_file


def write_outlier_model(model: str | Path, out: Path, scale: float = SCALE, channels: int = CHANNELS,
                        parts: tuple[str, ...] = MODEL_PARTS, seed: int = 0) -> dict[str, list[int]]:
    """Write `model`'s copy with planted outliers to `out` (a new directory).

    Args:
        model: an experiment directory, config, .pth or packed archive.
        out: the directory to write; must not exist.
        scale: how much larger the planted channels are (> 1).
        channels: planted channels per LayerNorm.
        parts: model parts to plant in.
        seed: the channel choice's seed.

    Returns:
        LayerNorm name -> planted channels (also written to `out/outliers.json`).

    Raises:
        RunnerError: `out` exists, bad options, or a model with no pre-norm LayerNorm in `parts`.
    """
    if out.exists():
        raise RunnerError(f"{out}: already exists; choose a new --out")
    if scale <= 1 or channels < 1:
        raise RunnerError(f"--scale must be above 1 and --channels at least 1, got {scale:g} and {channels}")
    bundle = load(model, DecodeOptions())
    planted = plant_outliers(bundle.model, parts, scale, channels, seed)
    if not planted:
        raise RunnerError(f"{model}: no pre-norm LayerNorm read only by Linears in {list(parts)}; nothing to plant")
    source, weights = _source_directory(bundle.files)
    shutil.copytree(source, out)
    torch.save(bundle.model.state_dict(), out / weights.relative_to(source))
    record = {"source": str(model), "scale": scale, "channels_per_layer_norm": channels, "parts": list(parts),
              "seed": seed, "planted": planted}
    (out / "outliers.json").write_text(json.dumps(record, indent=1) + "\n")
    return planted


def bleu_table(original: str | Path, planted: Path, limit: int | None, threads: int) -> list[tuple[str, str, float]]:
    """(model, scheme, tst-COMMON BLEU) for fp32, dynamic int8 and static int8 on both models."""
    from runner.runner import Runner

    rows = []
    for name, path in (("original", original), ("outliers", planted)):
        for scheme in ("none", "dynamic-int8", "static-int8"):
            runner = Runner(path, threads=threads, plugins=[] if scheme == "none" else [scheme],
                            calibration_data=defaults.data_path())
            report = runner.evaluate(limit=limit)
            rows.append((name, "fp32" if scheme == "none" else scheme, report.bleu.score))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model to copy [default: the embedded demo model]")
    parser.add_argument("--out", type=Path, required=True, help="directory to write (must not exist)")
    parser.add_argument("--scale", type=float, default=SCALE)
    parser.add_argument("--channels", type=int, default=CHANNELS, help="planted channels per LayerNorm")
    parser.add_argument("--parts", nargs="+", default=list(MODEL_PARTS), choices=MODEL_PARTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--table", action="store_true", help="also print BLEU of fp32/int8 on both models")
    parser.add_argument("--limit", type=int, default=None, help="with --table: utterances of tst-COMMON")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    model = args.model or defaults.model_path()
    try:
        planted = write_outlier_model(model, args.out, args.scale, args.channels, tuple(args.parts), args.seed)
    except RunnerError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"wrote {args.out}: {len(planted)} LayerNorms, {args.channels} channel(s) each x{args.scale:g}")
    if args.table:
        print("| model | scheme | BLEU |\n|---|---|---|")
        for name, scheme, bleu in bleu_table(model, args.out, args.limit, args.threads):
            print(f"| {name} | {scheme} | {bleu:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
