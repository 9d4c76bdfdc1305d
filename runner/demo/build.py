"""Build random-initialised ESPnet multi-decoder ST models with `STTask.build_model`.

Used by the tests (tiny models), by the seed-scale benchmark, and as the stand-in default
until a trained demo model is shipped. The experiment directory it writes is exactly what
ESPnet's trainer writes: config.yaml (`vars(args)`) and a state_dict .pth.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from runner import _espnet

SPECIALS_HEAD = ["<blank>", "<unk>", "<space>"]
SPECIALS_TAIL = ["<sos/eos>"]
CHARACTERS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZäöüÄÖÜß.,'?!-")

# A multi-decoder ST architecture: conformer encoder, extra ASR decoder, MD encoder and the
# speech-attention ST decoder (transformer_md), as in ESPnet's MuST-C multi-decoder recipe.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tiny": dict(d=32, heads=2, ffn=64, encoder_blocks=2, decoder_blocks=1, md_blocks=1, cnn_kernel=7),
    "small": dict(d=144, heads=4, ffn=576, encoder_blocks=4, decoder_blocks=2, md_blocks=2, cnn_kernel=15),
    "seed": dict(d=256, heads=4, ffn=2048, encoder_blocks=12, decoder_blocks=6, md_blocks=2, cnn_kernel=31),
}


def char_token_list(characters: list[str] | None = None) -> list[str]:
    return SPECIALS_HEAD + (characters or CHARACTERS) + SPECIALS_TAIL


def md_config(
    token_list: list[str] | str,
    src_token_list: list[str] | str,
    architecture: str = "tiny",
    hop_length: int = 160,
    token_type: str = "char",
    bpemodel: str | None = None,
    src_bpemodel: str | None = None,
) -> dict[str, Any]:
    """An STTask config dict (defaults overlaid with a multi-decoder architecture)."""
    arch = ARCHITECTURES[architecture]
    task = _espnet.st_task()
    # get_default_config() parses sys.argv itself; hide the caller's arguments from it.
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        config = copy.deepcopy(task.get_default_config())
    finally:
        sys.argv = argv
    transformer_decoder = dict(
        attention_heads=arch["heads"],
        linear_units=arch["ffn"],
        num_blocks=arch["decoder_blocks"],
        dropout_rate=0.1,
        positional_dropout_rate=0.1,
        self_attention_dropout_rate=0.1,
        src_attention_dropout_rate=0.1,
    )
    config.update(
        token_list=token_list,
        src_token_list=src_token_list,
        token_type=token_type,
        src_token_type=token_type,
        bpemodel=bpemodel,
        src_bpemodel=src_bpemodel,
        input_size=None,
        frontend="default",
        frontend_conf=dict(fs=16000, n_fft=512, win_length=400, hop_length=hop_length, n_mels=80),
        specaug=None,
        specaug_conf={},
        normalize="utterance_mvn",
        normalize_conf={},
        encoder="conformer",
        encoder_conf=dict(
            output_size=arch["d"],
            attention_heads=arch["heads"],
            linear_units=arch["ffn"],
            num_blocks=arch["encoder_blocks"],
            dropout_rate=0.1,
            positional_dropout_rate=0.1,
            attention_dropout_rate=0.1,
            input_layer="conv2d",
            normalize_before=True,
            macaron_style=True,
            rel_pos_type="latest",
            pos_enc_layer_type="rel_pos",
            selfattention_layer_type="rel_selfattn",
            activation_type="swish",
            use_cnn_module=True,
            cnn_module_kernel=arch["cnn_kernel"],
        ),
        extra_asr_decoder="transformer",
        extra_asr_decoder_conf=dict(transformer_decoder),
        md_encoder="transformer",
        md_encoder_conf=dict(
            output_size=arch["d"],
            attention_heads=arch["heads"],
            linear_units=arch["ffn"],
            num_blocks=arch["md_blocks"],
            dropout_rate=0.1,
            positional_dropout_rate=0.1,
            attention_dropout_rate=0.1,
            input_layer=None,
            normalize_before=True,
        ),
        decoder="transformer_md",
        decoder_conf=dict(transformer_decoder, use_speech_attn=True),
        ctc_conf=dict(dropout_rate=0.0, ctc_type="builtin", reduce=True, ignore_nan_grad=None),
        model_conf=dict(asr_weight=0.3, mt_weight=0.0, mtlalpha=0.3, st_mtlalpha=0.0, lsm_weight=0.1,
                        length_normalized_loss=False),
    )
    config.pop("extra_mt_decoder", None)
    # get_default_config() fills in the preprocessor's class defaults; the trainer writes {}.
    config["preprocessor_conf"] = {}
    return config


def build_model(config: dict[str, Any], seed: int = 0) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build with ESPnet's own `STTask.build_model`; returns the model and the config it resolved."""
    task = _espnet.st_task()
    args = argparse.Namespace(**copy.deepcopy(config))
    torch.manual_seed(seed)
    with _espnet.quiet():
        model = task.build_model(args)
    return model.eval(), vars(args)


def write_experiment(out_dir: str | Path, config: dict[str, Any], seed: int = 0,
                     model_name: str = "valid.acc.ave.pth") -> Path:
    """Write config.yaml and a random-initialised state_dict, as an ESPnet experiment directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, resolved = build_model(config, seed)
    (out / "config.yaml").write_text(yaml.safe_dump(resolved, allow_unicode=True, sort_keys=False), encoding="utf-8")
    torch.save(model.state_dict(), out / model_name)
    return out


def pack_experiment(exp_dir: str | Path, archive: str | Path, model_name: str = "valid.acc.ave.pth") -> Path:
    """Pack an experiment directory the way `espnet2.bin.pack st` does (meta.yaml + files)."""
    with _espnet.quiet():
        from espnet2.main_funcs.pack_funcs import pack

    exp = Path(exp_dir)
    archive = Path(archive)
    with _espnet.quiet():  # pack() prints every file it adds
        pack(
            files={"st_model_file": str(exp / model_name)},
            yaml_files={"st_train_config": str(exp / "config.yaml")},
            outpath=str(archive),
        )
    return archive
