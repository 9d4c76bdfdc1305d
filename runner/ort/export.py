"""`runner export`: a model as ONNX graphs an ONNX Runtime deployment runs, and the runner's `onnxruntime` engine.

The directory written:

    model/            the ESPnet experiment (config.yaml naming its own copies of token lists, BPE models and
                      statistics, and the weights): the directory is itself a valid `--model`
    encoder.onnx      features -> encoder output and ASR encoder output (normalization and encoder)
    asr_ctc.onnx      the ASR CTC head (multi-decoder models; the ASR search's prefix scores)
    st_ctc.onnx       the ST CTC head (when the model has one)
    md_encoder.onnx   the MD encoder (multi-decoder models)
    asr_step.onnx, st_step.onnx        each decoder's step for a whole beam (`DecoderStepGraph`)
    asr_memory.onnx, st_memory.onnx    each decoder's source keys/values, once per utterance
    st_speech.onnx    the ST decoder's speech keys/values (speech-attention decoders)
    manifest.json     what was exported and how: graphs, number format, calibration, decoding options,
                      frontend settings, versions, and the sha256 of every file

The STFT frontend stays in torch (ONNX's exporter takes no complex STFT); the graphs start from its
features. Everything is written into a temporary directory beside the target and renamed when
complete, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from runner.archive import sha256
from runner.errors import RunnerError
from runner.model import ModelBundle, stft_frontend
from runner.model_files import REQUIRED_PATH_KEYS
from runner.ort import graphs
from runner.ort.sessions import FORMAT_VERSION, MANIFEST

OPSET = 17
QUANTS = ("none", "dynamic-int8", "static-int8")
MAX_POSITIONS = 4096  # decoder positional-encoding table exported (longest hypothesis a step can take)


@dataclass
class ExportOptions:
    """What `export` writes.

    Attributes:
        quant: "none", "dynamic-int8" (ONNX Runtime's `quantize_dynamic`: MatMulInteger) or "static-int8"
            (`quantize_static`, QDQ, calibrated with real beam searches).
        calibration: the utterances static int8 calibrates with (dev, never test).
        calibration_method: minmax, entropy or percentile (ONNX Runtime's `CalibrationMethod`).
        force: replace a non-empty output directory.
        source: what the calibration utterances are, for the manifest (data root and split).
    """

    quant: str = "none"
    calibration: list[Any] = field(default_factory=list)
    calibration_method: str = "minmax"
    force: bool = False
    source: dict[str, Any] = field(default_factory=dict)


def check_exportable(bundle: ModelBundle) -> None:
    """Raise RunnerError naming the part the graphs cannot express (nothing is written then)."""
    from runner.lean.decoder import check_decoder
    from runner.lean.search import check_search

    stft_frontend(bundle, "the onnxruntime export (its graphs start from the STFT's features; "
                          "--search lean runs it)")
    for stage, search in zip(bundle.search_stages, _searches(bundle)):
        try:
            check_search(search.espnet if hasattr(search, "espnet") else search)
            check_decoder(search.full_scorers["decoder"])
        except RunnerError as reason:
            part = "ASR decoder" if stage == "asr_search" else "ST decoder"
            raise RunnerError(f"{bundle.files.origin}: the {part}'s step cannot be exported: {reason}") from reason


def _searches(bundle: ModelBundle) -> list[Any]:
    speech2text = bundle.speech2text
    return [speech2text.asr_beam_search if stage == "asr_search" else speech2text.beam_search
            for stage in bundle.search_stages]


def prepare_output(out: Path, force: bool) -> None:
    """Refuse an output that is a file, or a non-empty directory without `force` (one line each)."""
    if out.is_file():
        raise RunnerError(f"{out}: --out is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise RunnerError(f"{out}: not empty; choose a new --out or pass --force to replace it")


def export(bundle: ModelBundle, out: Path, options: ExportOptions,
           progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Write `bundle`'s float model as ONNX graphs (and int8 ones, per `options.quant`) into `out`.

    Args:
        bundle: a float model (no plugin applied).
        out: the directory to write (created; replaced only with `options.force`).
        options: number format, calibration and overwrite.
        progress: called with a line as each stage finishes.

    Returns:
        The manifest written to `out/manifest.json`.

    Raises:
        RunnerError: a part the graphs cannot express, an unknown format, an unusable `out`.
    """
    if options.quant not in QUANTS:
        raise RunnerError(f"--quant must be one of {', '.join(QUANTS)}, got {options.quant!r}")
    if options.quant == "static-int8" and not options.calibration:
        raise RunnerError("--quant static-int8 needs calibration utterances (--data with a dev split)")
    prepare_output(out, options.force)
    check_exportable(bundle)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        files = write_graphs(bundle, work, progress)
        copy_model(bundle, work / "model")
        manifest = write_manifest(bundle, work, files, ExportOptions())  # the fp32 graphs, which calibration decodes
        if options.quant != "none":
            from runner.ort.quantize import quantize_graphs

            quantize_graphs(work, files, bundle, options, progress)
            manifest = write_manifest(bundle, work, files, options)
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


def write_graphs(bundle: ModelBundle, out: Path, progress: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Export every graph of the float model into `out`; returns graph name -> its inputs and outputs."""
    model = bundle.model.eval()
    examples = _examples(bundle)
    written: dict[str, dict[str, Any]] = {}

    def save(name: str, module: torch.nn.Module, args: tuple[Any, ...], inputs: list[str], outputs: list[str],
             axes: dict[str, dict[int, str]]) -> None:
        # The tracer warns about every shape it takes as a constant (ESPnet's length checks); the graphs are
        # checked against ESPnet's own decoding by the tests instead. The caller's filters come back after.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), args, str(out / f"{name}.onnx"), opset_version=OPSET,
                              input_names=inputs, output_names=outputs, dynamic_axes=axes, dynamo=False)
        written[name] = {"file": f"{name}.onnx", "inputs": inputs, "outputs": outputs}
        progress(f"exported {name}.onnx")

    features = examples["features"]
    save("encoder", graphs.EncoderGraph(model), (features.clone(),), ["features"], ["encoded", "asr_encoded"],
         {"features": {1: "frames"}, "encoded": {1: "length"}, "asr_encoded": {1: "length"}})
    encoded = examples["encoded"]
    for name, ctc in (("asr_ctc", getattr(model, "ctc", None) if bundle.is_multidecoder else None),
                      ("st_ctc", getattr(model, "st_ctc", None))):
        if ctc is not None:
            save(name, graphs.CtcGraph(ctc), (encoded,), ["encoded"], ["log_probs"],
                 {"encoded": {1: "length"}, "log_probs": {1: "length"}})
    if bundle.is_multidecoder:
        save("md_encoder", graphs.MdEncoderGraph(model.md_encoder), (encoded,), ["states"], ["md_encoded"],
             {"states": {1: "length"}, "md_encoded": {1: "length"}})
    for stage, search in zip(bundle.search_stages, _searches(bundle)):
        prefix = stage.removesuffix("_search")
        decoder = search.full_scorers["decoder"]
        _step_graphs(prefix, decoder, encoded, save)
    return written


def _step_graphs(prefix: str, decoder: Any, encoded: torch.Tensor, save: Callable[..., None]) -> None:
    """A decoder's memory (and speech) projections and its step, exported with `save`."""
    decoder.embed[1].extend_pe(torch.empty(1, MAX_POSITIONS))
    memory = graphs.MemoryGraph(decoder)
    save(f"{prefix}_memory", memory, (encoded,), ["memory"], ["projected"], {"memory": {1: "length"},
                                                                                "projected": {3: "length"}})
    step = graphs.DecoderStepGraph(decoder)
    with torch.no_grad():
        source = memory(encoded)  # (layers, 2, heads, T, d_k) of one utterance
    layers, _, heads, _, d_k = source.shape
    rows = 2  # one utterance's grid of 2 rows (the graph reads the beam from rows / utterances)
    past = [torch.zeros(rows, heads, 1, d_k) for _ in range(2 * layers)]
    memories = [source[i, kind].unsqueeze(0) for i in range(layers) for kind in (0, 1)]
    mask = torch.ones(1, source.size(3), dtype=torch.bool)
    args: list[Any] = [torch.zeros(rows, dtype=torch.long), torch.tensor([1]), *past, *memories, mask]
    if step.speech:
        speech = graphs.MemoryGraph(decoder, speech=True)
        save(f"{prefix}_speech", speech, (encoded,), ["speech"], ["projected"], {"speech": {1: "length"},
                                                                                  "projected": {3: "length"}})
        args += [*memories, mask]
    names, outputs = step.input_names(), step.output_names()
    axes: dict[str, dict[int, str]] = {"tokens": {0: "rows"}, "log_probs": {0: "rows"}, "hidden": {0: "rows"}}
    for name in names:
        if name.startswith("past_"):
            axes[name] = {0: "rows", 2: "positions"}
        elif name.startswith(("source_", "speech_")):
            length = "length" if name.startswith("source") else "speech_length"
            axes[name] = {0: "utterances", 1: length} if name.endswith("mask") else {0: "utterances", 2: length}
    axes.update({name: {0: "rows"} for name in outputs[2:]})
    save(f"{prefix}_step", step, tuple(args), names, outputs, axes)


def _examples(bundle: ModelBundle) -> dict[str, torch.Tensor]:
    """Example inputs to trace with: the features and encoder output of one second of noise."""
    generator = torch.Generator().manual_seed(0)
    speech = torch.randn(1, bundle.sample_rate, generator=generator) * 0.1
    model = bundle.model
    with torch.no_grad():
        features, _ = model.frontend(speech, torch.tensor([speech.size(1)]))
        encoded = graphs.EncoderGraph(model)(features.clone())[0]
    return {"features": features, "encoded": encoded}


def copy_model(bundle: ModelBundle, target: Path) -> None:
    """The ESPnet experiment into `target`: its weights, and a config.yaml naming copies of its files."""
    target.mkdir(parents=True)
    config = yaml.safe_load(bundle.files.config.read_text(encoding="utf-8"))

    def localize(key: str, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: localize(k, v) for k, v in value.items()}
        if key in REQUIRED_PATH_KEYS and isinstance(value, str) and Path(value).is_file():
            name = f"{key}-{Path(value).name}"
            shutil.copyfile(value, target / name)
            return name
        return value

    localized = {key: localize(key, value) for key, value in config.items()}
    (target / "config.yaml").write_text(yaml.safe_dump(localized, allow_unicode=True, sort_keys=False),
                                        encoding="utf-8")
    torch.save(bundle.model.state_dict(), target / "model.pth")  # the weights the graphs were exported from


def write_manifest(bundle: ModelBundle, out: Path, graphs_written: dict[str, dict[str, Any]],
                   options: ExportOptions) -> dict[str, Any]:
    """manifest.json: the graphs, the number format, decoding options, frontend, versions, every file's sha256."""
    import onnx
    import onnxruntime

    from runner.environment import library_versions

    files = {str(path.relative_to(out)): sha256(path) for path in sorted(out.rglob("*"))
             if path.is_file() and path.name != MANIFEST}
    manifest = {
        "format": FORMAT_VERSION, "opset": OPSET, "quant": options.quant,
        "calibration": ({"method": options.calibration_method, "utterances": len(options.calibration),
                         **options.source} if options.quant == "static-int8" else None),
        "graphs": graphs_written, "model": "model", "multidecoder": bundle.is_multidecoder,
        "speech_attention": bool(getattr(bundle.model, "use_speech_attn", False)),
        "source_model": {"path": str(bundle.files.origin), "content_hash": bundle.files.content_hash},
        "decode": bundle.options.speech2text_kwargs(),
        "frontend": bundle.summary()["frontend"],
        "versions": {**library_versions(), "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
                     "runner": __import__("runner").__version__},
        "files": files,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest
