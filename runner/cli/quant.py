"""`runner sensitivity` and `runner tune`: thin commands over `runner.quant.sensitivity` and `runner.quant.tuning`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from runner import defaults
from runner.cli.common import fail
from runner.errors import RunnerError
from runner.progress import bar

if TYPE_CHECKING:
    from runner.data import PreloadedSet
    from runner.model import ModelBundle

PARTS_HELP = "Model parts quantized, repeated or comma-separated [default: every part]"


def _check(quant: str, split: str) -> None:
    """--quant is a scheme sensitivity and tuning know; a test split is tuned on only when named."""
    from runner.quant.sensitivity import SCHEMES

    if quant not in SCHEMES:
        fail(f"--quant must be one of {', '.join(SCHEMES)}, got {quant!r}")
    if split.startswith("tst"):
        typer.echo(f"note: tuning/scoring on test split {split}, as asked by name; report on another split", err=True)


def _parts(parts: Optional[list[str]]) -> list[str]:
    """--parts as the plugins' parts (default: every part), refused in one line when unknown."""
    from runner.plugin import MODEL_PARTS
    from runner.quant.parts import check_parts

    chosen = [p for item in parts or MODEL_PARTS for p in item.split(",") if p]
    try:
        check_parts(chosen)
    except ValueError as error:
        raise RunnerError(f"--parts: {error}") from error
    return chosen


def _dev_sets(model: Optional[Path], data: Optional[Path], split: str, limit: Optional[int],
              calibration: int, parts: list[str]) -> tuple[ModelBundle, PreloadedSet, PreloadedSet, Path]:
    """The float model, the calibration utterances (first `calibration` of `split`), the rest (up to `limit`)
    and the data root."""
    from runner.data import load_test_set, preload
    from runner.model import load
    from runner.quant.sensitivity import left_in_float, quantizable

    data_root = data or defaults.data_path()
    bundle = load(model or defaults.model_path())
    if not quantizable(bundle, parts):
        raise RunnerError(f"{model or defaults.model_path()}: no Linear the int8 plugins quantize in "
                          f"{', '.join(parts)}; nothing to score or tune")
    try:
        test_set = load_test_set(data_root, split).for_task(bundle.task)
    except RunnerError as error:  # a data set without the tuning split: say which option chose it
        raise RunnerError(f"--split {split}: {error}") from error
    others = left_in_float(bundle, parts)
    if others:
        typer.echo("note: not quantized by the int8 plugins, left in float: "
                   + ", ".join(f"{name} x{count}" for name, count in sorted(others.items())), err=True)
    calibrating = preload(test_set, bundle.sample_rate, limit=calibration)
    rest = preload(test_set, bundle.sample_rate, limit=limit, exclude_ids=[u.segment.id for u in calibrating.utterances])
    if len(rest.utterances) < 2:
        raise RunnerError(f"{data_root}: --split {split} has {len(rest.utterances)} utterance(s) beyond the "
                          f"{calibration} calibration ones; at least 2 are needed")
    return bundle, calibrating, rest, data_root


def sensitivity(
    model: Optional[Path] = typer.Option(None, help="Experiment dir, config, .pth or packed archive [default: the demo model]"),
    data: Optional[Path] = typer.Option(None, help="Data root whose --split is scored [default: the demo corpus]"),
    quant: str = typer.Option("dynamic-int8", help="dynamic-int8 or static-int8"),
    split: str = typer.Option("dev", help="Split scored (never a test split unless named here)"),
    limit: Optional[int] = typer.Option(None, help="Utterances for the BLEU effects [default: all of the split]"),
    calibration: int = typer.Option(8, help="Utterances of the split whose beam searches give the module inputs"),
    bleu_groups: int = typer.Option(3, help="Worst layers whose BLEU effect is decoded (0: none)"),
    observer: str = typer.Option("histogram", help="static-int8's activation observer"),
    parts: Optional[list[str]] = typer.Option(None, help=PARTS_HELP),
    threads: int = typer.Option(2, help="Intra-op threads"),
    out: Path = typer.Option(Path("sensitivity"), help="Directory for sensitivity.json, .csv and .png"),
    progress: bool = typer.Option(True, help="Show progress bars"),
) -> None:
    """Quantize each Linear alone and score it (SQNR over real beam-search steps), by layer and part."""
    from runner.environment import torch_settings
    from runner.outputs import check_writable
    from runner.quant.parts import select_backend
    from runner.quant.report import Sensitivity, measured_under, sensitivity_table, write_sensitivity
    from runner.quant.sensitivity import module_sensitivity, rollup, static_observer
    from runner.quant.tuning import bleu_effects

    _check(quant, split)
    try:
        check_writable(out / "sensitivity.json")  # before the decoding, which an unwritable --out would waste
        chosen = _parts(parts)
        bundle, calibrating, rest, root = _dev_sets(model, data, split, limit, calibration, chosen)
        with torch_settings(threads):
            select_backend("auto")  # before the observer: its reduce_range follows the backend, as in the plugin
            observe = static_observer({"observer": observer}) if quant == "static-int8" else None
            scores = module_sensitivity(bundle, calibrating.utterances, quant, observe, chosen,
                                        progress=bar("sensitivity", "module") if progress else None)
        if not scores:
            raise RunnerError(f"{model or defaults.model_path()}: no quantizable Linear is reached by a search")
        groups = rollup(scores)
        worst = [g for g in groups if g.kind == "layer"][:bleu_groups]
        static = {"observer": observer, "calibration_data": str(root), "calibration_split": split,
                  "calibration_size": calibration}
        fp32, trials = (bleu_effects(bundle, rest, [g.modules for g in worst], quant, threads, root,
                                     {**static, "parts": chosen} if quant == "static-int8" else None)
                        if worst else (None, []))
        conditions = measured_under(threads, model=str(model or defaults.model_path()), data=str(root), split=split,
                                    calibration_utterances=len(calibrating.utterances),
                                    bleu_utterances=len(rest.utterances), parts=",".join(chosen),
                                    **({"observer": observer} if quant == "static-int8" else {}))
        result = Sensitivity(quant, conditions, scores, groups, fp32, {g.name: t for g, t in zip(worst, trials)})
        typer.echo(sensitivity_table(result))
        written = write_sensitivity(result, out)
    except RunnerError as error:
        fail(str(error), error=error)
    typer.echo(f"wrote {', '.join(str(p) for p in written)}", err=True)


def tune(
    model: Optional[Path] = typer.Option(None, help="Experiment dir, config, .pth or packed archive [default: the demo model]"),
    data: Optional[Path] = typer.Option(None, help="Data root whose --split tunes the plan [default: the demo corpus]"),
    quant: str = typer.Option("dynamic-int8", help="dynamic-int8 or static-int8"),
    smoothquant: Optional[bool] = typer.Option(
        None, "--smoothquant/--no-smoothquant",
        help="Always/never put the smoothquant plugin before the int8 one [default: tried when all-int8 misses "
             "the budget, kept when it measures better]"),
    max_bleu_drop: float = typer.Option(1.0, help="The largest dev BLEU loss from fp32 the plan may have"),
    split: str = typer.Option("dev", help="Split the plan is tuned on (never a test split unless named here)"),
    limit: Optional[int] = typer.Option(None, help="Tuning utterances [default: all but the calibration ones]"),
    calibration: int = typer.Option(32, help="Leading utterances of the split that calibrate (and rank); not scored"),
    observer: str = typer.Option("histogram", help="static-int8's activation observer"),
    parts: Optional[list[str]] = typer.Option(None, help=PARTS_HELP),
    threads: int = typer.Option(2, help="Intra-op threads"),
    search: Optional[str] = typer.Option(None, help="Search engine the trials decode on (lean: faster) [default: espnet]"),
    batch_size: int = typer.Option(1, help="Utterances per beam search in the trials (needs an engine that batches: --search lean)"),
    out: Path = typer.Option(Path("plan.yaml"), help="The plan (a run config); trials.jsonl goes beside it"),
) -> None:
    """Keep the fewest, most sensitive Linears in float so dev BLEU stays within --max-bleu-drop of fp32."""
    from runner.outputs import check_writable
    from runner.plugin import MODEL_PARTS
    from runner.quant.report import measured_under, plan_summary, write_plan
    from runner.quant.tuning import TuneOptions, check_budget
    from runner.quant.tuning import tune as run_tune

    _check(quant, split)
    trials = out.parent / (out.stem + ".trials")
    try:
        check_budget(max_bleu_drop)
        check_writable(out)
        check_writable(trials / "trials.jsonl")
        chosen = _parts(parts)
        bundle, calibrating, rest, root = _dev_sets(model, data, split, limit, calibration, chosen)
        calibrating_options = {"calibration_data": str(root), "calibration_split": split,
                               "calibration_size": calibration}
        # "everything in int8": every chosen part, for static int8 too (its own default is the decoder)
        plugin_options = ({"observer": observer, "parts": chosen} if quant == "static-int8" else
                          {} if set(chosen) == set(MODEL_PARTS) else {"parts": chosen})
        options = TuneOptions(quant, max_bleu_drop, smoothquant, threads, calibration=calibrating_options,
                              plugin_options=plugin_options, search=search, batch_size=batch_size)
        plan = run_tune(bundle, rest, calibrating, options, trials, root,
                        progress=lambda line: typer.echo(f"note: {line}", err=True))
        conditions = measured_under(threads, data=str(root), utterances=len(rest.utterances), warmup=1,
                                    **({"search": search, "batch": batch_size} if search or batch_size > 1 else {}))
        write_plan(plan, out, str(model) if model else None, conditions)
    except KeyboardInterrupt:
        fail(f"interrupted; the trials measured so far are in {trials / 'trials.jsonl'}", 130)
    except RunnerError as error:
        fail(str(error), error=error)
    typer.echo(plan_summary(plan))
    typer.echo(f"wrote {out} (trials in {trials / 'trials.jsonl'}); report it on test: "
               f"runner translate --config {out} --split tst-COMMON", err=True)

