"""ESPnet experiments built on OpenAI Whisper load offline: their Whisper encoder and decoder are built from the
experiment's own weights (`runner.whisper.offline`), nothing downloaded, and decode as ESPnet's own inference does.

The experiment is a tiny Whisper-shaped one built here (64 wide, 2 + 2 layers; its config names `base`, as a
fine-tuned experiment from another machine would), with the demo's character tokens.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from helpers import espnet_call
from runner import defaults
from runner.data import load_test_set, preload
from runner.decode import DecodeOptions
from runner.demo.build import build_model, char_token_list, md_config
from runner.errors import RunnerError
from runner.runner import Runner

whisper = pytest.importorskip("whisper", reason="openai-whisper (the whisper extra) is not installed")
WIDTH, LAYERS = 64, 2


def _whisper_config() -> dict:
    tokens = char_token_list()
    config = md_config(tokens, tokens, "tiny")
    whisper_conf = dict(whisper_model="base", dropout_rate=0.0)
    config.update(input_size=1, frontend=None, frontend_conf={}, normalize=None, normalize_conf={},
                  encoder="whisper", encoder_conf=dict(whisper_conf, do_pad_trim=False),
                  decoder="whisper", decoder_conf=whisper_conf, md_encoder=None, md_encoder_conf={})
    return config


@pytest.fixture(scope="module")
def whisper_exp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """config.yaml and weights of a small Whisper ST model, written as an experiment directory."""
    from whisper.model import ModelDimensions, Whisper

    from runner.whisper.offline import espnet_compatible

    small = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=WIDTH, n_audio_head=1, n_audio_layer=LAYERS,
                            n_vocab=51865, n_text_ctx=448, n_text_state=WIDTH, n_text_head=1, n_text_layer=LAYERS)
    original = whisper.load_model
    whisper.load_model = lambda *args, **kwargs: Whisper(small)  # the training machine's copy of the checkpoint
    try:
        with espnet_compatible("the fixture"):  # ESPnet 202511 imports whisper.audio.N_MELS, gone from openai-whisper
            model, resolved = build_model(_whisper_config(), seed=0)
    finally:
        whisper.load_model = original
    exp = tmp_path_factory.mktemp("whisper") / "exp"
    exp.mkdir()
    (exp / "config.yaml").write_text(yaml.safe_dump(resolved, allow_unicode=True, sort_keys=False), encoding="utf-8")
    state = model.state_dict()
    # Whisper leaves the decoder's positional embedding uninitialised (torch.empty: whatever memory held, NaN
    # at times); a trained checkpoint has values, so this one gets some
    state["decoder.decoders.positional_embedding"].normal_(0.0, 0.02, generator=torch.Generator().manual_seed(0))
    state["decoder.decoders.token_embedding.weight"][-1] *= 3.0  # <sos/eos> likelier: short random decodes
    torch.save(state, exp / "valid.acc.ave.pth")
    return exp


@pytest.fixture()
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("whisper tried to download a checkpoint")

    monkeypatch.setattr(whisper, "_download", refuse)


def test_a_whisper_experiment_loads_offline_and_decodes_as_espnets_inference(whisper_exp: Path,
                                                                             no_download: None) -> None:
    """`whisper.load_model` is not reached (it would download), the weights are the experiment's, and the
    runner's translation is ESPnet's own `Speech2Text` call's on the same model."""
    runner = Runner(whisper_exp, DecodeOptions(maxlenratio=0.1, asr_maxlenratio=0.1), threads=2)
    state = torch.load(whisper_exp / "valid.acc.ave.pth")
    loaded = runner.bundle.model.state_dict()
    differ = [key for key, value in state.items() if not torch.equal(loaded[key], value)]
    assert not differ, differ
    assert runner.bundle.model.encoder.encoders.conv1.weight.shape == (WIDTH, 80, 3)
    assert whisper.load_model.__module__ == "whisper" and not hasattr(whisper.audio, "N_MELS")  # restored
    waveform = preload(load_test_set(defaults.data_path(), "tst-COMMON"), 16000, limit=1).utterances[0].waveform
    ours = runner.translate(waveform, 16000)
    theirs = espnet_call(runner.bundle, waveform)
    assert ours.text == theirs[0][0]


def test_hop_is_refused_in_one_line_where_whisper_computes_its_own_features(whisper_exp: Path,
                                                                            no_download: None) -> None:
    with pytest.raises(RunnerError, match="its Whisper encoder computes its own features"):
        Runner(whisper_exp, plugins=[{"name": "hop", "hop_length": 200}])


def test_without_openai_whisper_the_error_names_the_extra(whisper_exp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "whisper", None)  # as if it were not installed
    with pytest.raises(RunnerError, match=r"built on OpenAI Whisper, which is not installed: pip install "
                                          r"'st-runner\[whisper\]'"):
        Runner(whisper_exp)


def test_dimensions_come_from_the_weights() -> None:
    from runner.whisper import dimensions

    state = {"encoder.encoders.conv1.weight": np.zeros((384, 80, 3)),
             "encoder.encoders.positional_embedding": np.zeros((1500, 384)),
             **{f"encoder.encoders.blocks.{i}.mlp.0.weight": np.zeros(1) for i in range(4)},
             "decoder.decoders.token_embedding.ori_emb.weight": np.zeros((51865, 384)),
             "decoder.decoders.token_embedding.add_emb.weight": np.zeros((3, 384)),
             "decoder.decoders.positional_embedding": np.zeros((448, 384)),
             **{f"decoder.decoders.blocks.{i}.mlp.0.weight": np.zeros(1) for i in range(4)}}
    assert dimensions(state, "base") == {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 384, "n_audio_head": 6,
                                         "n_audio_layer": 4, "n_vocab": 51865, "n_text_ctx": 448,
                                         "n_text_state": 384, "n_text_head": 6, "n_text_layer": 4}
    assert dimensions({}, "small.en")["n_vocab"] == 51864 and dimensions({}, "small")["n_audio_state"] == 768


def test_weights_claiming_a_whisper_larger_than_any_are_refused_before_the_build(whisper_exp: Path,
                                                                                  tmp_path: Path) -> None:
    """A crafted file whose zero-stride view claims 10 million encoder positions: refused in one line, not built."""
    import shutil

    crafted = tmp_path / "crafted"
    shutil.copytree(whisper_exp, crafted)
    state = torch.load(crafted / "valid.acc.ave.pth")
    state["encoder.encoders.positional_embedding"] = torch.zeros(1, WIDTH).expand(10_000_000, WIDTH)
    torch.save(state, crafted / "valid.acc.ave.pth")
    with pytest.raises(RunnerError, match="describe a Whisper larger than any: n_audio_ctx 10,000,000"):
        Runner(crafted)

