"""`runner`: a thin Typer layer over the library: each command parses its options, calls the library and prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from runner import defaults
from runner.cli import export as cli_export
from runner.cli import longform as cli_longform
from runner.cli import live as cli_live
from runner.cli import quant as cli_quant
from runner.cli import whisper as cli_whisper
from runner.cli.common import DEBUG_VARIABLE, fail, flag_error, parse_overrides, set_debug, show_notes
from runner.cli.demo import demo_app
from runner.errors import OptionError, RunnerError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Measure ESPnet speech-translation models: size, parameters, BLEU and latency.")
app.add_typer(demo_app, name="demo")


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", envvar=DEBUG_VARIABLE,
                                    help=f"Print the full traceback of an error (or set {DEBUG_VARIABLE}=1)")) -> None:
    """Measure ESPnet speech-translation models: size, parameters, BLEU and latency."""
    set_debug(debug)
    show_notes()


@app.command()
def translate(
    model: Optional[Path] = typer.Option(None, help="Experiment dir, config.yaml, .pth or packed .zip [default: data/model]"),
    model_file: Optional[Path] = typer.Option(None, help="Model weights, when the directory holds several .pth"),
    data: Optional[Path] = typer.Option(None, help="MuST-C root or ESPnet/Kaldi data dir [default: data/mustc-demo]"),
    split: Optional[str] = typer.Option(None, help="MuST-C split [default: tst-COMMON; the demo corpus also has tst-HE and dev]"),
    text: Optional[str] = typer.Option(None, help="Reference file inside a Kaldi data dir (e.g. text.tc.de)"),
    limit: Optional[int] = typer.Option(None, help="Decode only N utterances"),
    sample: Optional[bool] = typer.Option(None, "--sample/--first", help="Draw the N utterances with --seed, or take the first N"),
    seed: Optional[int] = typer.Option(None, help="Seed for --sample [default: 0]"),
    quant: Optional[str] = typer.Option(None, help="Number format: dynamic-int8, dynamic-fp16, static-int8 (CPU only); bf16 (autocast), half-fp16, half-bf16 (any device)"),
    hop: Optional[int] = typer.Option(None, help="Frontend STFT hop length in samples (the hop plugin)"),
    search: Optional[str] = typer.Option(None, "--search", "--engine", help="Beam-search engine (--engine: an alias): espnet (ESPnet's own), lean (same hypotheses, less work per step), onnxruntime (the lean search over exported graphs), or a registered one"),
    plugin: list[str] = typer.Option([], help="Also apply this plugin with its defaults (see `runner plugins`); repeatable"),
    threads: Optional[int] = typer.Option(None, help="Intra-op threads [default: all cores]"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:N, or auto (a GPU when one is visible and every plugin runs there) [default: cpu]"),
    warmup: Optional[int] = typer.Option(None, help="Leading utterances decoded but left out of latency [default: 1]"),
    batch_size: Optional[int] = typer.Option(None, help="Utterances per beam search, with an engine that batches (--search lean; same translations; latency is then each batch's time) [default: 1]"),
    config: Optional[Path] = typer.Option(None, help="Run YAML (model, data, decode, plugins, ...), or a shipped one by name (run, fast-search); options override it"),
    decode_config: Optional[Path] = typer.Option(None, help="Decoding YAML [default: configs/decode.yaml]"),
    set_: list[str] = typer.Option([], "--set", help="Override a decoding option, e.g. --set beam_size=4"),
    out: Optional[Path] = typer.Option(None, help="Write every figure and condition to this JSON file (with --audio: the translation in --out-format)"),
    progress: bool = typer.Option(True, help="Show progress bars"),
    audio: Optional[Path] = typer.Option(None, help="Translate this recording, of any length, cut by --segmenter (vad unless told) instead of a test set"),
    out_format: Optional[str] = typer.Option(None, help="With --audio: json, srt, vtt or txt [default: from --out's suffix, else txt]"),
    segmenter: Optional[str] = typer.Option(None, "--segmenter", "--segmentation", help="yaml (the data's own segments), vad (Silero VAD; with --data: whole talks re-aligned by mweralign, IWSLT-style) or fixed [default: yaml; vad with --audio]"),
    max_segment: float = typer.Option(20.0, help="Longest segment in seconds (vad, fixed)"),
    simultaneous: bool = typer.Option(False, "--simultaneous", help="Replay each utterance chunk by chunk through a live session and report BLEU with AL, LAAL and YAAL (computation-unaware and -aware); with --segmenter vad or fixed, each whole talk, with StreamLAAL and long-form YAAL"),
    chunk_seconds: float = typer.Option(1.0, help="With --simultaneous: new audio between two decodes"),
    agreement: int = typer.Option(2, help="With --simultaneous: commit what this many consecutive hypotheses agree on (LocalAgreement-n)"),
) -> None:
    """Translate a test set and report size, parameters, BLEU, chrF, source WER and latency; or a recording (--audio);
    or, with --simultaneous, translate it live and report its latency as simultaneous translation is measured."""
    from runner.config import RunConfig
    from runner.outputs import check_writable

    try:
        if out is not None:
            check_writable(out)  # before the decode, which a results file that cannot be written would waste
        run = (RunConfig.from_yaml(defaults.shipped_config(config), decode_config) if config
               else RunConfig.from_dict({}, "options", decode_config))
        run.evaluate = run.evaluate.replace(data=data, split=split, text=text, limit=limit, sample=sample, seed=seed,
                                            warmup=warmup, batch_size=batch_size, progress=progress)
        try:
            cut = cli_longform.segment_options(segmenter, max_segment, audio)
        except OptionError as error:
            raise RunnerError(flag_error(error, {"max_seconds": "--max-segment"})) from error
        fmt = cli_longform.output_format(out, out_format) if audio is not None else None
        stream = _stream_options(simultaneous, chunk_seconds, agreement, audio, cut)
        runner = _runner(run, model, model_file, quant, hop, plugin, set_, threads, device, search)
        if stream is not None:
            return cli_live.translate_simultaneous(runner, run.evaluate, stream, out, whole_talks=cut is not None)
        segments_per_search = batch_size if batch_size is not None else cli_longform.BATCH
        if audio is not None:
            return cli_longform.translate_recording(runner, audio, cut, out, fmt, segments_per_search, progress)
        if cut is not None:
            return cli_longform.translate_talks(runner, cut, out, run.evaluate, segments_per_search)
        preloaded = runner.preload(run.evaluate)
        typer.echo(f"preloaded {len(preloaded.utterances)} utterances ({preloaded.audio_seconds:.1f} s audio, "
                   f"{preloaded.memory_bytes / 1e6:.1f} MB in memory)", err=True)
        report = runner.evaluate_preloaded(preloaded, run.evaluate)
    except (RunnerError, KeyboardInterrupt) as error:
        partial = getattr(error, "partial_report", None)
        if partial is not None and out is not None:
            partial.save(out)
            typer.echo(f"wrote the {partial.data['n']} finished utterances of {partial.data['planned_n']} to {out}",
                       err=True)
        fail(str(error) or "interrupted", 2 if isinstance(error, RunnerError) else 130, error)
    typer.echo(report.format())
    if out is not None:
        try:
            report.save(out)
        except RunnerError as error:
            fail(str(error), 2, error)
        typer.echo(f"wrote {out}", err=True)


def _stream_options(simultaneous: bool, chunk_seconds: float, agreement: int, audio: Optional[Path],
                    cut: Any) -> Any:
    """The live sessions' options with --simultaneous (None without): with a segmenter (whole talks), segments
    end at VAD end-points, pauses of the segmenter's min_silence_ms (vad), or only at --max-segment (fixed). RunnerError for a combination it lacks."""
    from runner.live import StreamOptions

    if not simultaneous:
        return None
    if audio is not None:
        raise RunnerError(f"--simultaneous replays a test set (its utterances, or with --segmenter its whole talks) "
                          f"and scores it against its references; {audio} has none: leave out --audio")
    try:
        if cut is None:
            return StreamOptions(chunk_seconds=chunk_seconds, agreement=agreement)
        return StreamOptions(chunk_seconds=chunk_seconds, agreement=agreement, max_segment_seconds=cut.max_seconds,
                             endpoint_ms=cut.min_silence_ms if cut.segmenter == "vad" else 0)
    except OptionError as error:
        raise RunnerError(flag_error(error, {"chunk_seconds": "--chunk-seconds",
                                             "max_segment_seconds": "--max-segment"})) from error


def _runner(run: Any, model: Optional[Path], model_file: Optional[Path], quant: Optional[str], hop: Optional[int],
            plugin: list[str], set_: list[str], threads: Optional[int], device: Optional[str],
            search: Optional[str]) -> Any:
    """The `Runner` of a translate command: the run config with the command line's options over it."""
    from runner.config import compose_plugins
    from runner.runner import Runner

    decode = run.decode.replace(parse_overrides(set_), "--set")
    plugins = (compose_plugins(run.plugins.specs(), quant=quant, hop=hop, extra=plugin)
               if quant is not None or hop is not None or plugin else run.plugins)
    return Runner(str(model) if model else run.model, decode, threads=threads or run.threads, model_file=model_file,
                  plugins=plugins, calibration_data=run.data, device=device or run.device, search=search or run.search)


@app.command()
def sweep(
    config: Path = typer.Argument(..., help="Sweep YAML, e.g. configs/hop.yaml, or a shipped one by name (hop, hop-quality)"),
    out: Optional[Path] = typer.Option(None, help="Output directory [default: results/<config name>]"),
    resume: bool = typer.Option(False, help="Skip rows already in <out>/results.jsonl (same config hash)"),
    repeats: Optional[int] = typer.Option(None, help="Repeat every run R times in interleaved order"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:N or auto for every run [default: the YAML's device, else cpu]"),
    executor: str = typer.Option("local", help="local: one run after another here; ray: runs (or shards) as Ray "
                                               "tasks; or an executor registered under runner.executors"),
    address: Optional[str] = typer.Option(None, help="Ray cluster: auto or ray://host:port [default: a local cluster]"),
    allow_mixed_versions: bool = typer.Option(
        False, help="On --resume, keep rows measured by another runner commit or library version"),
    progress: bool = typer.Option(True, help="Show progress bars"),
) -> None:
    """Measure a grid of plugin configurations (e.g. hop x quantization) into a table, CSV/JSON and plots."""
    from runner.sweep import Sweep, SweepConfig

    out = out or Path("results") / config.stem
    try:
        sweep_config = SweepConfig.from_yaml(defaults.shipped_config(config))
        if repeats is not None:
            if repeats < 1:
                fail(f"--repeats must be at least 1, got {repeats}")
            sweep_config.repeats = repeats
        if device is not None:
            from runner.device import check_spec

            sweep_config.run.device = check_spec(device)
            sweep_config.check_plans()
        runner_sweep = Sweep(sweep_config, out, resume=resume, progress=progress, executor=executor, address=address,
                             allow_mixed_versions=allow_mixed_versions)
        rows = runner_sweep.run()
    except RunnerError as error:
        fail(str(error), error=error)
    except KeyboardInterrupt:
        fail(f"interrupted; finished rows are kept in {out / 'results.jsonl'}: rerun with --resume", 130)
    typer.echo((out / "summary.md").read_text(encoding="utf-8"))
    failed = [r for r in rows if r.get("status") != "ok"]
    written = [name for name in ("summary.md", "results.csv", "results.json", "bleu_latency.png", "size.png", "env.json")
               if (out / name).is_file()]
    typer.echo(f"wrote {out}/: {', '.join(written)}", err=True)
    if failed:
        fail(f"{len(failed)} run(s) failed (see summary.md); rerun with --resume to retry them", 1)


@app.command()
def serve(
    model: Optional[Path] = typer.Option(None, help="Experiment dir, config.yaml, .pth or packed .zip [default: data/model]"),
    model_file: Optional[Path] = typer.Option(None, help="Model weights, when the directory holds several .pth"),
    quant: list[str] = typer.Option([], help="Serve this scheme (none/fp32, dynamic-int8, ...); repeat to serve several"),
    hop: Optional[int] = typer.Option(None, help="Frontend STFT hop length in samples, for every served model"),
    search: Optional[str] = typer.Option(None, "--search", "--engine", help="Beam-search engine for every served model (--engine: an alias): espnet (ESPnet's own, the default), lean, onnxruntime, or a registered one"),
    plugin: list[str] = typer.Option([], help="Also apply this plugin to every served model (see `runner plugins`); repeatable"),
    threads: Optional[int] = typer.Option(None, help="Intra-op threads [default: all cores]"),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N or auto, for every served model"),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)"),
    port: int = typer.Option(8000, help="Port to listen on"),
    max_queue: int = typer.Option(32, help="Requests that may wait for the decoder; more get 503 with Retry-After"),
    max_batch: int = typer.Option(1, help="Requests for one model decoded in one batched search (needs an engine that batches: --search lean); 1: one at a time"),
    max_wait_ms: float = typer.Option(5.0, help="How long the oldest waiting request waits for others to join its batch"),
    max_mb: float = typer.Option(20.0, help="Largest upload in MB"),
    max_seconds: float = typer.Option(600.0, help="Longest audio in seconds (audio over 20 s is cut by VAD into segments)"),
    max_decode_seconds: Optional[float] = typer.Option(None, help="Stop a request's decoding after this many seconds (503) [default: 10 s + 2x its audio]"),
    header_seconds: float = typer.Option(10.0, help="A request's headers must arrive within this many seconds (else 408, connection closed)"),
    body_seconds: float = typer.Option(60.0, help="A request's body must arrive within this many seconds of its headers (else 408)"),
    shutdown_seconds: float = typer.Option(30.0, help="After SIGTERM, requests in flight get this long before the server stops anyway"),
    max_live_sessions: int = typer.Option(4, help="Live translation sessions (/v1/realtime/translations) open at once; one more gets 503"),
    live_idle_seconds: float = typer.Option(30.0, help="Close a live session that sends nothing for this long"),
    live_max_minutes: float = typer.Option(60.0, help="Close a live session after this many minutes"),
    live_chunk_seconds: float = typer.Option(1.0, help="New audio between two decodes of a live session's current segment"),
    live_agreement: int = typer.Option(2, help="Live sessions commit what this many consecutive hypotheses agree on (LocalAgreement-n)"),
    api_key: Optional[str] = typer.Option(None, envvar="ST_RUNNER_API_KEY", show_envvar=True,
                                          help="Require 'Authorization: Bearer KEY' (prefer the environment variable: a flag shows in process listings)"),
    cors_origin: list[str] = typer.Option([], help="Allow browser requests from this origin (scheme://host:port, or *); repeatable. Others get 403"),
    allowed_host: list[str] = typer.Option([], help="Also answer requests whose Host header names this host; repeatable. Others get 421"),
    ray: bool = typer.Option(False, "--ray", help="Serve as a Ray Serve deployment (pip install 'st-runner[ray]')"),
    address: Optional[str] = typer.Option(None, help="With --ray: the Ray cluster (auto, host:port or ray://...) [default: start a local one]"),
    replicas: int = typer.Option(1, help="With --ray: replicas, each reserving --threads CPUs"),
    decode_config: Optional[Path] = typer.Option(None, help="Decoding YAML [default: configs/decode.yaml]"),
    set_: list[str] = typer.Option([], "--set", help="Override a decoding option, e.g. --set beam_size=4"),
    calibration_data: Optional[Path] = typer.Option(
        None, help="Data root whose dev split static-int8 calibrates on [default: the embedded demo corpus]"),
) -> None:
    """Serve translation over HTTP: POST /translate, the OpenAI audio and realtime translation APIs under /v1, GET
    /health, /ready, /info, /metrics, and a web page at /."""
    from runner.config import decode_options
    from runner.live import StreamOptions
    from runner.serve import ServeLimits, load_models
    from runner.serve import serve as run_server
    from runner.serve.realtime import LiveLimits

    if replicas < 1:
        fail(f"--replicas: must be positive, got {replicas}")
    if (address is not None or replicas != 1) and not ray:
        fail("--address and --replicas apply to --ray")
    try:
        limits = ServeLimits(int(max_mb * 1e6) if max_mb > 0 else 0, max_seconds, max_queue, max_batch, max_wait_ms,
                             max_decode_seconds, header_seconds, body_seconds, shutdown_seconds)
        live = LiveLimits(max_live_sessions, live_idle_seconds, live_max_minutes * 60,
                          stream=StreamOptions(chunk_seconds=live_chunk_seconds, agreement=live_agreement))
    except OptionError as error:
        fail(flag_error(error, {"max_upload_bytes": "--max-mb", "max_audio_seconds": "--max-seconds",
                                "max_sessions": "--max-live-sessions", "idle_seconds": "--live-idle-seconds",
                                "max_session_seconds": "--live-max-minutes", "chunk_seconds": "--live-chunk-seconds",
                                "agreement": "--live-agreement"}))
    try:
        decode = decode_options(parse_overrides(set_), decode_config)
        if ray:
            from runner.serve.ray_serve import serve_on_ray

            from runner.serve.app import scheme_sets

            scheme_sets(quant, hop, search, plugin, device)  # refuse bad schemes here, not in every replica
            load = dict(model=model, quants=quant, hop=hop, decode=decode, threads=threads or 1, model_file=model_file,
                        plugins=plugin, calibration_data=calibration_data, search=search, device=device)
            typer.echo(f"serving on Ray ({replicas} replica(s)) at http://{host}:{port}/", err=True)
            serve_on_ray(load, limits, host=host, port=port, replicas=replicas, threads=threads or 1,
                         address=address, api_key=api_key, cors_origins=cors_origin, host_names=allowed_host)
            return
        models = load_models(model, quant, hop, decode, threads, model_file, plugin, calibration_data, search, device)
        typer.echo(f"serving {', '.join(models)} on http://{host}:{port}/", err=True)
        run_server(models, host, port, limits, api_key=api_key, cors_origins=cors_origin, host_names=allowed_host,
                   live=live)
    except RunnerError as error:
        fail(str(error), error=error)


@app.command("plugins")
def list_plugins() -> None:
    """List the plugins registered under the `runner.plugins` entry-point group, with their options."""
    from runner.plugin_set import available, config_fields

    try:
        registry = available()
    except RunnerError as error:
        fail(str(error), error=error)
    for name, plugin in registry.items():
        typer.echo(f"{name}: {plugin.description}  [runs on: {', '.join(plugin.devices)}]")
        for field_name, kind, default in config_fields(plugin):
            typer.echo(f"    {field_name:<20} {kind:<22} default {default!r}")


@app.command()
def info(
    model: Optional[Path] = typer.Argument(None, help="Experiment dir, config.yaml, .pth or packed .zip"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON"),
) -> None:
    """Describe a model: its parts, parameters per part, state_dict size and frontend settings."""
    from runner.model import load

    try:
        path = model if model is not None else defaults.model_path()
        summary = load(path).summary()
    except RunnerError as error:
        fail(str(error), error=error)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"model        {path}  ({summary['model_class']})")
    typer.echo(f"multi-decoder {'yes' if summary['multidecoder'] else 'no'}; "
               f"speech-attention decoder {'yes' if summary['speech_attention'] else 'no'}")
    for name, part in summary["parts"].items():
        typer.echo(f"  {name:<18} {part['class']:<24} {part['parameters']:>12,} parameters")
    for name in ("extra_asr_decoder", "md_encoder"):
        if name not in summary["parts"]:
            typer.echo(f"  {name:<18} (absent)")
    typer.echo(f"parameters   {summary['parameters']:,}")
    typer.echo(f"size         {summary['state_dict_bytes'] / 1e6:.2f} MB state_dict, "
               f"{summary['model_file_bytes'] / 1e6:.2f} MB model file")
    frontend = summary["frontend"]
    if frontend:
        typer.echo("frontend     " + ", ".join(f"{k} {v}" for k, v in frontend.items()))
    else:
        typer.echo("frontend     none (features come from the data loader)")
    typer.echo(f"tokens       {summary['token_type']}, vocabulary {summary['vocab_size']}"
               + (f", source vocabulary {summary['src_vocab_size']}" if summary["src_vocab_size"] else ""))


app.command()(cli_quant.sensitivity)
app.command()(cli_quant.tune)
app.command()(cli_export.export)
app.command("convert-whisper")(cli_whisper.convert_whisper)
