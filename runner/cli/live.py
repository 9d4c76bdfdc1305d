"""`runner translate --simultaneous`: a thin path over `runner.live.evaluate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from runner.progress import bar


def translate_simultaneous(runner: Any, evaluate: Any, options: Any, out: Optional[Path],
                           whole_talks: bool = False) -> None:
    """Replay the test set `evaluate` selects (its utterances; or, `whole_talks`, its talks) through live sessions
    with `options`, print the quality and latency, and write the result as JSON to `out` when given."""
    from runner.outputs import write_atomic

    if whole_talks:
        result = _talks(runner, evaluate, options)
    else:
        from runner.live.evaluate import evaluate_simultaneous

        preloaded = runner.preload(evaluate)
        typer.echo(f"preloaded {len(preloaded.utterances)} utterances ({preloaded.audio_seconds:.1f} s audio); "
                   f"replaying each in {options.chunk_seconds:g} s chunks", err=True)
        result = evaluate_simultaneous(runner, preloaded, options, bar("replay") if evaluate.progress else None)
    typer.echo(result.format())
    if out is not None:
        write_atomic(out, json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
        typer.echo(f"wrote {out}", err=True)


def _talks(runner: Any, evaluate: Any, options: Any) -> Any:
    from runner.cli.longform import talk_split
    from runner.live.talks import evaluate_talks_simultaneous

    test_set = talk_split(evaluate, runner.bundle.task)
    typer.echo(f"replaying the whole talks of {test_set.path} {test_set.split} in {options.chunk_seconds:g} s chunks",
               err=True)
    return evaluate_talks_simultaneous(runner, test_set, options, bar("replay", "talks") if evaluate.progress else None)
