"""Loading and describing ESPnet speech-translation models.

Accepts an experiment directory (config.yaml + a .pth), a config or .pth file, or a packed
archive written by `espnet2.bin.pack` (found by `runner.model_files.locate`, which also resolves
paths of other machines and unwraps trainer checkpoints). The weights must fit the config: ESPnet
loads them with `strict=False`, which would leave a mismatched model partly random, so the runner
checks every key itself.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import torch

from runner import _espnet, tasks
from runner.decode import DecodeOptions
from runner.errors import RunnerError, first_line
from runner.metrics.size import count_parameters, state_dict_bytes
from runner.whisper.offline import pad_trim_lengths, plain_modules, tie_output_layer
# Re-exported: callers find a model's files through this module too.
from runner.model_files import ModelFiles, cache_dir, check_weights_fit, file_hash, locate, read_weights

__all__ = ["ModelBundle", "ModelFiles", "cache_dir", "check_weights_fit", "file_hash", "frontend_settings", "load",
           "locate", "read_weights", "stft_frontend"]
PARTS = ("frontend", "normalize", "encoder", "extra_asr_decoder", "md_encoder", "decoder", "ctc", "st_ctc")


class ModelBundle:
    """A loaded ESPnet `Speech2Text`: what a plugin's `apply(bundle)` receives.

    Attributes and properties a plugin may use:
        model: the `ESPnetSTModel` (parts: frontend, normalize, encoder, extra_asr_decoder,
            md_encoder, decoder, ctc); change it in place.
        speech2text: ESPnet's `Speech2Text` that every translation calls.
        searches: the beam searches a translation runs (ST, and a multi-decoder's ASR search).
        files: where the config and weights came from (`ModelFiles`).
        options: the decoding options it was loaded with.
        device, sample_rate, is_multidecoder: facts about the model.
    After replacing modules, call `rewire_searches()` (the runner also does, after each plugin).
    """

    def __init__(self, speech2text: Any, files: ModelFiles, options: DecodeOptions) -> None:
        self.speech2text = speech2text
        self.files = files
        self.options = options
        self.float_parameters = count_parameters(self.model)

    @property
    def model(self) -> torch.nn.Module:
        return self.speech2text.st_model

    @property
    def device(self) -> torch.device:
        """Where the model runs (`Speech2Text` moves its input there)."""
        return torch.device(self.speech2text.device)

    @property
    def task(self) -> str:
        """What the experiment was trained for: "st", or "asr" (its translations are transcripts: `runner.tasks`)."""
        return self.files.task

    @property
    def is_multidecoder(self) -> bool:
        return bool(getattr(self.model, "use_multidecoder", False))

    @property
    def sample_rate(self) -> int:
        frontend_conf = getattr(self.speech2text.st_train_args, "frontend_conf", None) or {}
        return int(frontend_conf.get("fs", 16000))

    @property
    def search_stages(self) -> tuple[str, ...]:
        """The beam searches a translation runs: "st_search", and a multi-decoder's "asr_search" first."""
        return ("asr_search", "st_search") if self.is_multidecoder else ("st_search",)

    @property
    def search_engine(self) -> str:
        """Which engine runs the beam searches: "espnet", "lean", or per search ("asr lean, st espnet")."""
        from runner.engines import SEARCH_ATTRIBUTES

        names = {}
        for stage in self.search_stages:
            search = getattr(self.speech2text, SEARCH_ATTRIBUTES[stage], None)
            if search is not None:
                names[stage.removesuffix("_search")] = getattr(search, "name", "espnet")
        if len(set(names.values())) == 1:
            return next(iter(names.values()))
        return ", ".join(f"{stage} {name}" for stage, name in names.items())

    @property
    def engine_runtime(self) -> dict[str, str]:
        """What the searches' engines run on beyond torch (`SearchEngine.runtime`, merged); empty in torch."""
        runtime: dict[str, str] = {}
        for search in self.searches:
            runtime.update(getattr(search, "runtime", {}))
        return runtime

    def install_engine(self, name: str, context: Any = None) -> dict[str, str]:
        """Run the beam searches on engine `name` (`runner.engines`), with `context` (default: what the engine
        prepares of this model); returns which engine runs which search."""
        from runner.engines import install

        return install(self, name, context)

    @property
    def searches(self) -> list[Any]:
        """The beam searches a translation runs: the ST search, and a multi-decoder's ASR search."""
        searches = [self.speech2text.beam_search]
        if self.is_multidecoder:
            searches.append(self.speech2text.asr_beam_search)
        return [search for search in searches if search is not None]

    def rewire_searches(self) -> None:
        """Point both beam searches at the model's current modules.

        `Speech2Text` hands module references to its BeamSearch objects once, so a plugin
        that replaces a decoder (quantize_dynamic returns copies) would otherwise be bypassed.
        """
        model = self.model
        wiring = [(self.speech2text.beam_search, model.decoder, getattr(model, "st_ctc", None))]
        if self.is_multidecoder:
            wiring.append((self.speech2text.asr_beam_search, model.extra_asr_decoder, model.ctc))
        for search, decoder, ctc in wiring:
            if search is None:
                continue
            for table in (search.scorers, search.full_scorers, search.nn_dict):
                if "decoder" in table:
                    table["decoder"] = decoder
            ctc_scorer = search.scorers.get("ctc")
            if ctc_scorer is not None and ctc is not None:
                ctc_scorer.ctc = ctc

    def _size(self) -> dict[str, Any]:
        """The bytes of what runs: the state_dict, or the exported graphs an engine runs instead (`graphs`)."""
        graphs = getattr(self.speech2text.beam_search, "graphs", None)
        if graphs is None:
            return {"size_bytes": state_dict_bytes(self.model), "size_of": "state_dict"}
        return {"size_bytes": graphs.bytes, "size_of": "onnx graphs"}

    def copy(self) -> ModelBundle:
        """An independent deep copy (model, searches, tokenizers) for a plugin to change."""
        speech2text = copy.deepcopy(self.speech2text)
        clone = ModelBundle.__new__(ModelBundle)
        clone.speech2text, clone.files, clone.options = speech2text, self.files, self.options
        clone.float_parameters = self.float_parameters
        return clone

    def summary(self) -> dict[str, Any]:
        model = self.model
        parts = {}
        for name in PARTS:
            module = getattr(model, name, None)
            if isinstance(module, torch.nn.Module):
                parts[name] = {"class": type(module).__name__, "parameters": count_parameters(module)}
        decoder = getattr(model, "decoder", None)
        return {
            "model_class": type(model).__name__,
            "task": self.files.task,
            "multidecoder": self.is_multidecoder,
            "speech_attention": bool(getattr(model, "use_speech_attn", False))
            or bool(getattr(decoder, "use_speech_attn", False)),
            "parts": parts,
            "parameters": count_parameters(model),
            "state_dict_bytes": state_dict_bytes(model),
            **self._size(),
            "model_file_bytes": self.files.file_bytes,
            "frontend": frontend_settings(model, self.speech2text.st_train_args),
            "token_type": getattr(self.speech2text.st_train_args, "token_type", None),
            "vocab_size": len(model.token_list),
            "src_vocab_size": len(getattr(model, "src_token_list", None) or []) or None,
        }


def stft_frontend(bundle: ModelBundle, needed_by: str) -> Any:
    """The model's in-model STFT (what hop and the onnxruntime export change or run before their graphs).

    Raises:
        RunnerError: naming `needed_by` and the frontend the model has instead (a Whisper encoder computes
            its own log-mel features from the waveform).
    """
    frontend = getattr(bundle.model, "frontend", None)
    stft = getattr(frontend, "stft", None)
    if stft is None or not hasattr(stft, "hop_length"):
        own = hasattr(getattr(bundle.model, "encoder", None), "log_mel_spectrogram")
        raise RunnerError(f"{bundle.files.origin}: {needed_by} needs an in-model STFT frontend; "
                          f"this model has {type(frontend).__name__ if frontend is not None else 'none'}"
                          + (" (its Whisper encoder computes its own features)" if own else ""))
    return stft


def frontend_settings(model: torch.nn.Module, train_args: Any) -> dict[str, Any] | None:
    frontend = getattr(model, "frontend", None)
    if frontend is None:
        return None
    conf = dict(getattr(train_args, "frontend_conf", None) or {})
    stft = getattr(frontend, "stft", None)
    settings = {
        "class": type(frontend).__name__,
        "fs": conf.get("fs", 16000),
        "n_fft": getattr(stft, "n_fft", conf.get("n_fft")),
        "win_length": getattr(stft, "win_length", conf.get("win_length")),
        "hop_length": getattr(stft, "hop_length", conf.get("hop_length")),
        "n_mels": getattr(getattr(frontend, "logmel", None), "n_mels", conf.get("n_mels")),
    }
    return settings


def load(path: str | Path, options: DecodeOptions | None = None, model_file: str | Path | None = None,
         device: torch.device | str = "cpu") -> ModelBundle:
    """Load a model with ESPnet's `Speech2Text` and check that its weights fit its config.

    Args:
        path: an experiment directory, config.yaml, .pth or packed archive.
        options: decoding options (default: `DecodeOptions()`).
        model_file: the weights, when the directory holds several.
        device: where the model runs (a resolved device: see `runner.device.resolve`).

    Returns:
        The loaded model, its two beam searches and tokenizers, as a `ModelBundle`.

    Raises:
        RunnerError: missing files, paths not found, weights that do not fit, ESPnet load errors.
    """
    options = options or DecodeOptions()
    files = locate(path, model_file)
    module = _espnet.st_inference()
    try:
        with _espnet.quiet(), _whisper_offline(files):
            speech2text = module.Speech2Text(
                st_train_config=str(files.config), st_model_file=str(files.model_file), device=str(device),
                **options.speech2text_kwargs())
    except (FileNotFoundError, RuntimeError, KeyError, AssertionError, TypeError, ValueError) as error:
        raise RunnerError(f"{files.origin}: ESPnet could not load the model ({first_line(error)})") from error
    if files.task == tasks.ASR:
        tasks.fit_ctc(speech2text.st_model, read_weights(files.model_file))
    plain_modules(speech2text.st_model)
    pad_trim_lengths(speech2text.st_model)
    tie_output_layer(speech2text.st_model)
    check_weights_fit(speech2text.st_model, files)
    bundle = ModelBundle(speech2text, files, options)
    bundle.install_engine("espnet")  # ESPnet's own search, through the engine protocol (runner.engines)
    return bundle


def _whisper_offline(files: ModelFiles) -> Any:
    """For an experiment built on Whisper, its Whisper modules built from its own weights (nothing downloaded);
    for any other, nothing."""
    from runner.whisper.offline import built_offline, uses_whisper
    from runner.yamlio import read_yaml_mapping

    if not uses_whisper(read_yaml_mapping(files.config, "model config")):
        return contextlib.nullcontext()
    return built_offline(read_weights(files.model_file), files.origin)
