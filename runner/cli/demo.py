"""`runner demo corpus|train|export`: build the embedded demo corpus and model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from runner import defaults
from runner.cli.common import fail
from runner.errors import RunnerError

demo_app = typer.Typer(no_args_is_help=True, help="Build the embedded demo corpus and model.")


@demo_app.command("corpus")
def demo_corpus(
    out: Path = typer.Option(defaults.demo_output_root() / "mustc-demo", help="Where to write en-de/data/<split>"),
    train: int = typer.Option(4000, help="Training utterances"),
    dev: int = typer.Option(200, help="Dev utterances"),
    test: int = typer.Option(100, help="tst-COMMON utterances"),
    held_out: int = typer.Option(100, "--held-out", help="tst-HE utterances (held-out engine: flite)"),
    splits: list[str] = typer.Option(["train", "dev", "tst-COMMON", "tst-HE"], "--split", help="Splits to (re)write"),
    audio_format: str = typer.Option("flac", "--format", help="flac or wav"),
    jobs: int = typer.Option(2, help="Talks synthesized at once (processes); the files do not depend on it"),
) -> None:
    """Build the synthetic English-German corpus (MuST-C layout) with espeak-ng, Festival and flite; deterministic."""
    from runner.demo import corpus

    unknown = [split for split in splits if split not in corpus.SPLITS]
    if unknown:
        fail(f"--split {unknown[0]}: not a demo split (choose from {', '.join(corpus.SPLITS)})")
    try:
        corpus.build(out, {"train": train, "dev": dev, "tst-COMMON": test, "tst-HE": held_out}, tuple(splits),
                     audio_format, jobs)
        manifest = corpus.write_manifest(out)
    except RunnerError as error:
        fail(str(error), error=error)
    typer.echo(f"wrote {out} (checksums in {manifest})")


@demo_app.command("train")
def demo_train(
    corpus: Path = typer.Option(defaults.demo_output_root() / "mustc-demo",
                                 help="MuST-C-layout corpus with train and dev splits (runner demo corpus writes it)"),
    work: Path = typer.Option(Path("exp/demo"), help="Scratch directory: dumps, stats, checkpoints"),
    out: Path = typer.Option(defaults.demo_output_root() / "model", help="Where to export the experiment directory"),
    config: Path = typer.Option(defaults.CONFIGS / "demo" / "train.yaml", help="ESPnet training config"),
    max_epoch: Optional[int] = typer.Option(None, help="Override the config's max_epoch"),
    src_vocab: int = typer.Option(250, help="English BPE vocabulary"),
    tgt_vocab: int = typer.Option(300, help="German BPE vocabulary"),
    init: Optional[Path] = typer.Option(None, help="Start from this exported model's weights and keep its BPE units "
                                                   "(e.g. data/model with configs/demo/finetune.yaml)"),
) -> None:
    """Train the demo multi-decoder model with ESPnet's trainer and export it (about an hour on 2 cores)."""
    from runner.demo.train import train

    try:
        exported = train(corpus, work, out, config, max_epoch, src_vocab, tgt_vocab, init)
    except RunnerError as error:
        fail(str(error), error=error)
    typer.echo(f"exported {exported}")


@demo_app.command("export")
def demo_export(
    work: Path = typer.Option(Path("exp/demo"), help="The training scratch directory"),
    out: Path = typer.Option(defaults.demo_output_root() / "model", help="Where to export the experiment directory"),
) -> None:
    """Export a (possibly stopped) training run: average its kept epoch snapshots, copy what the config names."""
    from runner.demo.train import export

    try:
        typer.echo(f"exported {export(work / 'exp', out)}")
    except RunnerError as error:
        fail(str(error), error=error)
