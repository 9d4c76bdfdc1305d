"""`runner translate --audio` and `runner translate --segmenter vad`: thin paths over `runner.longform.recording` and
`runner.longform.iwslt`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from runner import defaults
from runner.errors import RunnerError
from runner.longform.recording import FORMATS
from runner.longform.segment import SegmentOptions
from runner.progress import bar

BATCH = 8  # segments per beam search of a recording, where the engine batches
SUFFIXES = {".json": "json", ".srt": "srt", ".vtt": "vtt", ".txt": "txt"}


def segment_options(segmenter: Optional[str], max_seconds: float, audio: Optional[Path]) -> SegmentOptions | None:
    """The segmentation the command asks for; None for the data's own (`yaml`, the default with data).

    Raises:
        RunnerError: an unknown segmenter, or `yaml` for a recording, which has no YAML.
    """
    name = segmenter or ("vad" if audio is not None else "yaml")
    options = SegmentOptions(name, max_seconds)  # checks the name and the length
    if name == "yaml":
        if audio is not None:
            raise RunnerError(f"--segmenter yaml: {audio} is a recording without segments of its own; use vad or fixed")
        return None
    return options


def output_format(out: Optional[Path], fmt: Optional[str]) -> str:
    """--out-format, or the one --out's suffix names, else txt."""
    if fmt is None:
        fmt = SUFFIXES.get(out.suffix.lower(), "txt") if out is not None else "txt"
    if fmt not in FORMATS:
        raise RunnerError(f"--out-format: unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    return fmt


def translate_recording(runner: Any, audio: Path, options: SegmentOptions, out: Optional[Path],
                        fmt: str, batch_size: int, progress: bool) -> None:
    """Translate the recording `audio` (segments in batches of `batch_size` where the engine batches) and print
    or write it in `fmt`."""
    result = runner.translate_file(audio, options, batch_size, progress=bar("translate", "segment") if progress else None)
    text = result.subtitles(fmt)
    typer.echo(f"{audio}: {result.duration:.1f} s, {len(result.segments)} segments ({options.segmenter}, "
               f"{result.segment_seconds:.2f} s), decoded in {result.decode_seconds:.2f} s, batch {result.batch_size}; "
               f"{runner.conditions(warmup=0, batch_size=result.batch_size).line()}", err=True)
    if not result.segments:
        typer.echo(f"note: {audio}: no speech found", err=True)
    if out is None:
        sys.stdout.write(text)
        return
    out.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {out} ({fmt})", err=True)


def talk_split(evaluate: Any, task: str = "st") -> Any:
    """The split whose whole talks a command decodes, as a model trained for `task` is measured on it;
    RunnerError for --limit, which would cut a talk."""
    from runner.data import load_test_set

    if evaluate.limit is not None:
        raise RunnerError("--limit: whole talks are decoded with --segmenter vad or fixed; leave --limit out")
    return load_test_set(evaluate.data or defaults.data_path(), evaluate.split, evaluate.text).for_task(task)


def translate_talks(runner: Any, options: SegmentOptions, out: Optional[Path], evaluate: Any,
                    batch_size: int) -> None:
    """Decode the data's talks whole with automatic segmentation and print their re-aligned BLEU."""
    from runner.longform.iwslt import evaluate_talks

    test_set = talk_split(evaluate, runner.bundle.task)
    score = evaluate_talks(runner, test_set, options, batch_size,
                           progress=bar("translate", "talks") if evaluate.progress else None)
    typer.echo(score.format())
    typer.echo(runner.conditions(warmup=0, batch_size=batch_size).line())
    if out is not None:
        out.write_text(json.dumps(score.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        typer.echo(f"wrote {out}", err=True)

