"""Which task an experiment was trained for, and how an ASR experiment runs where ST experiments do.

The runner decodes through ESPnet's ST inference (`espnet2.bin.st_inference`). An ASR experiment (ESPnet's ASR
task: an encoder, an attention decoder, a CTC, no source side) is the same shape as an ST model without an ASR
decoder: its config, translated by `st_config`, builds an `ESPnetSTModel` whose encoder and decoder are the ASR
experiment's (same parameter names, so ESPnet loads them as they are), and whose ST CTC is its CTC (`st_key`).
Its "translation" is then the transcript; it is measured like the ASR half of a multi-decoder model: WER, and
BLEU against the source transcripts (`runner.data.TestSet.for_task`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.errors import RunnerError

ST, ASR = "st", "asr"
# Keys only an ST config holds (ESPnet writes every argument of its task into config.yaml)
ST_ONLY = ("src_token_list", "src_token_type", "extra_asr_decoder", "md_encoder")
SOURCE_STUB = ("<blank>", "<unk>", "<sos/eos>")
# ESPnetASRModel's model_conf names -> ESPnetSTModel's
MODEL_CONF = {"ctc_weight": "st_mtlalpha", "lsm_weight": "lsm_weight", "ignore_id": "ignore_id",
              "length_normalized_loss": "length_normalized_loss", "sym_space": "tgt_sym_space",
              "sym_blank": "tgt_sym_blank", "sym_sos": "tgt_sym_sos", "sym_eos": "tgt_sym_eos",
              "extract_feats_in_collect_stats": "extract_feats_in_collect_stats", "lang_token_id": "lang_token_id"}


def task_of(config: Mapping[str, Any]) -> str:
    """"asr" for an ESPnet ASR-task config, else "st"."""
    if any(key in config for key in ST_ONLY):
        return ST
    return ASR if "ctc_conf" in config and "token_list" in config else ST


def st_config(config: Mapping[str, Any], source: Path) -> dict[str, Any]:
    """An ASR experiment's config as the ST task reads it: the same frontend, encoder and decoder, no source
    side, its CTC as the ST CTC; Whisper's language and task as ST inference expects them.

    Raises:
        RunnerError: a kind of ASR model the ST task cannot build (transducers, mask-CTC, PIT).
    """
    model = config.get("model") or "espnet"
    if model != "espnet" or config.get("decoder") == "transducer" or config.get("joint_net_conf"):
        kind = "transducer" if model == "espnet" else model
        raise RunnerError(f"{source}: an ASR experiment of kind '{kind}' is not supported (attention-decoder "
                          "ASR experiments, `model: espnet`, are)")
    translated = {key: value for key, value in config.items() if key not in ("model", "model_conf")}
    asr_conf = dict(config.get("model_conf") or {})
    translated["model_conf"] = {MODEL_CONF[key]: value for key, value in asr_conf.items() if key in MODEL_CONF}
    translated["model_conf"].update(asr_weight=0.0, mt_weight=0.0, mtlalpha=0.0)
    # ESPnet's ST model and inference need a source vocabulary: the smallest their checks accept builds no
    # source side but a 3-wide ASR CTC (removed after the build: `fit_ctc`)
    translated.update(src_token_list=list(SOURCE_STUB), src_token_type="char", src_bpemodel=None, extra_asr_decoder=None,
                      extra_mt_decoder=None, md_encoder=None, hier_encoder=None, extra_mt_encoder=None)
    preprocessor_conf = dict(config.get("preprocessor_conf") or {})
    if "whisper_language" in preprocessor_conf or "whisper" in str(config.get("token_type") or ""):
        language = preprocessor_conf.get("whisper_language") or "en"
        preprocessor_conf["whisper_language"] = [language, language]  # ST's (source, target)
        preprocessor_conf.setdefault("whisper_task", "transcribe")
    translated["preprocessor_conf"] = preprocessor_conf
    return translated


def st_key(key: str) -> str:
    """An ASR experiment's weight name as the ST model names it (its CTC is the ST CTC)."""
    return "st_" + key if key.startswith("ctc.") else key


def fit_ctc(model: Any, weights: Mapping[str, Any]) -> None:
    """After ESPnet built and loaded an ASR experiment as an ST model: its CTC weights into the ST CTC, or, for
    an experiment trained without CTC, no ST CTC at all (the ST task always builds one); no ASR CTC (the ST task
    built one for the stub source vocabulary)."""
    model.ctc = None
    ctc = {key.removeprefix("ctc."): value for key, value in weights.items() if key.startswith("ctc.")}
    if ctc:
        model.st_ctc.load_state_dict(ctc)
    else:
        model.st_ctc = None
