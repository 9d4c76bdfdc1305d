"""`runner translate --simultaneous`: a thin path over `runner.live.evaluate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from runner.progress import bar


def translate_simultaneous(runner: Any, evaluate: Any, options: Any, out: Optional[Path]) -> None:
    """Replay the test set `evaluate` selects through live sessions with `options`, print the quality and latency,
    and write the result as JSON to `out` when given."""
    from runner.live.evaluate import evaluate_simultaneous
    from runner.outputs import write_atomic

    preloaded = runner.preload(evaluate)
    typer.echo(f"preloaded {len(preloaded.utterances)} utterances ({preloaded.audio_seconds:.1f} s audio); replaying "
               f"each in {options.chunk_seconds:g} s chunks", err=True)
    result = evaluate_simultaneous(runner, preloaded, options, bar("replay") if evaluate.progress else None)
    typer.echo(result.format())
    if out is not None:
        write_atomic(out, json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
        typer.echo(f"wrote {out}", err=True)
