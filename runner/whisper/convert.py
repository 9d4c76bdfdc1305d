"""A CTranslate2 Whisper (faster-whisper's model directory) written as an ESPnet ASR experiment.

The experiment is what ESPnet's Whisper recipes train: the ASR task, `encoder: whisper`, `decoder: whisper`,
Whisper's own tokens (`token_type: whisper_multilingual`), no CTC, transcription in the model's language. Its
weights are the CTranslate2 model's, widened to float32 (`runner.whisper.ctranslate2.whisper_state`); ESPnet's
`ASRTask.build_model` builds the model and loads them strictly, so the experiment loads wherever ESPnet runs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from runner import _espnet
from runner.errors import RunnerError
from runner.whisper.ctranslate2 import CT2Model, read_directory, whisper_state
from runner.whisper.offline import HEAD_SIZE, built_offline, espnet_compatible
from runner.whisper.tokens import token_list

NAMES = {384: "tiny", 512: "base", 768: "small", 1024: "medium", 1280: "large"}
MODEL_FILE = "model.pth"
RENAMED = {"<|nocaptions|>": "<|nospeech|>"}  # Whisper's tokenizer renamed the token (same id) in 2023


@dataclass
class Converted:
    """What `convert` wrote: the experiment directory, its model name, parameter count and the source's."""

    directory: Path
    whisper_model: str
    parameters: int
    source: Path


def espnet_name(key: str) -> str:
    """A Whisper state_dict key as ESPnet's `OpenAIWhisperEncoder`/`OpenAIWhisperDecoder` hold it."""
    part, rest = key.split(".", 1)
    return f"{part}.{part}s.{rest}"


def convert(source: Path, out: Path, pad_trim: bool = True, language: str = "en") -> Converted:
    """Write CTranslate2 Whisper directory `source` as an ESPnet ASR experiment in `out`.

    Args:
        source: a CTranslate2 Whisper directory (model.bin, config.json, vocabulary).
        out: the experiment directory to write (config.yaml, model.pth); must not hold a config.yaml yet.
        pad_trim: whether the encoder pads or trims every input to 30 s as Whisper was trained
            (`do_pad_trim`); without, it encodes only the audio given (how ESPnet fine-tunes Whisper).
        language: the language it transcribes (ESPnet's `whisper_language`).

    Raises:
        RunnerError: not a CTranslate2 Whisper, a vocabulary that is not Whisper's, or `out` already written.
    """
    if (out / "config.yaml").exists():
        raise RunnerError(f"{out}: already holds an experiment (config.yaml); choose another directory")
    model = read_directory(source)
    try:
        weights = whisper_state(model)
    except RunnerError as error:  # a variable missing: name the directory
        raise RunnerError(f"{source}: {error}") from error
    state = {espnet_name(key): torch.from_numpy(value) for key, value in weights.items()}
    width = state["encoder.encoders.conv1.weight"].shape[0]
    check_heads(model, source, width)
    multilingual = len(model.vocabulary) != 51864
    with espnet_compatible(source) as whisper:
        expected = token_list(whisper, multilingual)
    vocabulary = [RENAMED.get(token, token).replace("Ġ", " ") for token in model.vocabulary]
    if vocabulary != expected:
        raise RunnerError(f"{source}: its vocabulary ({len(vocabulary):,} tokens) is not the Whisper vocabulary "
                          f"ESPnet 202511 tokenizes with ({len(expected):,} tokens; large-v3's 100th language "
                          "is not among them)")
    name = NAMES.get(width, "base") + ("" if multilingual else ".en")
    config = experiment_config(name, expected, pad_trim, language, multilingual)
    args = argparse.Namespace(**config)
    with built_offline(state, source), _espnet.quiet():
        built = _espnet.asr_task().build_model(args)
    built.load_state_dict(state, strict=True)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(built.state_dict(), out / MODEL_FILE)
    (out / "config.yaml").write_text(yaml.safe_dump(vars(args), allow_unicode=True, sort_keys=False),
                                     encoding="utf-8")
    return Converted(out, name, sum(p.numel() for p in built.parameters()), source)


def check_heads(model: CT2Model, source: Path, width: int) -> None:
    """Refuse attention heads other than 64 wide: ESPnet builds Whisper's modules from the weights' shapes,
    in which the head count does not show, and every published Whisper's heads are 64 wide.

    Raises:
        RunnerError: naming the side and its heads.
    """
    for side in ("encoder", "decoder"):
        heads = model.variables.get(f"{side}/num_heads")
        if heads is not None and int(heads) * HEAD_SIZE != width:
            raise RunnerError(f"{source}: its {side} has {int(heads)} attention heads of {width / int(heads):g} "
                              f"(width {width}); ESPnet's Whisper modules, like every published Whisper, "
                              f"have heads {HEAD_SIZE} wide")


def experiment_config(name: str, tokens: list[str], pad_trim: bool, language: str,
                      multilingual: bool) -> dict[str, Any]:
    """The config.yaml of an ESPnet Whisper ASR experiment, as ESPnet's recipes write one (every other argument
    at the ASR task's default)."""
    with _espnet.quiet():
        defaults = vars(_espnet.asr_task().get_parser().parse_args(["--output_dir", "exp"]))
    token_type = "whisper_multilingual" if multilingual else "whisper_en"
    whisper_conf = {"whisper_model": name, "dropout_rate": 0.0}
    defaults.update(
        token_list=tokens, token_type=token_type, bpemodel=token_type, input_size=1,
        frontend=None, frontend_conf={}, specaug=None, specaug_conf={}, normalize=None, normalize_conf={},
        encoder="whisper", encoder_conf={**whisper_conf, "use_specaug": False, "do_pad_trim": pad_trim},
        decoder="whisper", decoder_conf=whisper_conf,
        model="espnet", model_conf={"ctc_weight": 0.0, "lsm_weight": 0.1, "length_normalized_loss": False,
                                    "sym_sos": "<|startoftranscript|>", "sym_eos": "<|endoftext|>"},
        preprocessor_conf={"whisper_language": language, "whisper_task": "transcribe"},
        output_dir=None)
    return defaults
