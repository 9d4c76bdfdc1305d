from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from runner import _espnet
from runner.decode import DecodeOptions
from runner.pipeline import translate
from runner.errors import RunnerError
from runner.metrics.size import count_parameters, state_dict_bytes
from runner.model import load, locate


def _speech(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(scale=0.1, size=int(16000 * seconds))).astype(np.float32)


def test_experiment_dir_and_packed_zip_load_and_decode_alike(tiny_exp: Path, tiny_zip: Path) -> None:
    from_dir, from_zip = load(tiny_exp), load(tiny_zip)
    assert from_zip.files.packed and not from_dir.files.packed
    assert from_dir.files.model_file.name == "valid.acc.ave.pth"
    a, b = translate(from_dir.speech2text, _speech()), translate(from_zip.speech2text, _speech())
    assert a.tokens and a.source_text  # the fixture model emits tokens from both decoders
    assert (a.text, a.source_text) == (b.text, b.source_text)
    assert set(a.stages) == {"frontend", "encoder", "asr_search", "md_encoder", "st_search"}
    assert all(seconds > 0 for seconds in a.stages.values())
    assert sum(a.stages.values()) <= a.seconds


def test_summary_describes_a_multidecoder_model(tiny_exp: Path) -> None:
    bundle = load(tiny_exp)
    summary = bundle.summary()
    assert summary["multidecoder"] and summary["speech_attention"]
    assert {"encoder", "extra_asr_decoder", "md_encoder", "decoder", "ctc"} <= set(summary["parts"])
    assert summary["parts"]["decoder"]["class"] == "TransformerMDDecoder"
    assert summary["frontend"]["hop_length"] == 160 and summary["frontend"]["fs"] == 16000
    assert summary["parameters"] == sum(p.numel() for p in bundle.model.parameters())
    assert summary["model_file_bytes"] == (tiny_exp / "valid.acc.ave.pth").stat().st_size


def test_recipe_relative_paths_resolve_from_anywhere(recipe_exp: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # nowhere near the recipe root the config's paths are relative to
    assert not Path("data/bpe/bpe.model").exists()
    files = locate(recipe_exp)
    assert files.config != recipe_exp / "config.yaml"  # a resolved copy
    bundle = load(recipe_exp)
    assert bundle.summary()["token_type"] == "bpe"
    assert type(bundle.model.normalize).__name__ == "GlobalMVN"
    result = translate(bundle.speech2text, _speech())
    assert result.tokens and result.text == "".join(result.tokens).replace("▁", " ").strip()


def test_plain_st_model_without_multidecoder_loads(tmp_path: Path) -> None:
    from runner.demo.build import char_token_list, md_config, write_experiment

    tokens = char_token_list()
    config = md_config(tokens, tokens, "tiny")
    config.update(extra_asr_decoder=None, md_encoder=None, decoder="transformer",
                  decoder_conf={k: v for k, v in config["decoder_conf"].items() if k != "use_speech_attn"},
                  model_conf={**config["model_conf"], "asr_weight": 0.0})
    bundle = load(write_experiment(tmp_path / "plain", config))
    summary = bundle.summary()
    assert not summary["multidecoder"] and "md_encoder" not in summary["parts"]
    result = translate(bundle.speech2text, _speech())
    assert result.source_text is None and set(result.stages) >= {"encoder", "st_search"}


def test_parameters_survive_dynamic_quantization_and_searches_follow_new_modules(tiny_exp: Path) -> None:
    bundle = load(tiny_exp)
    float_count = count_parameters(bundle.model)
    float_bytes = state_dict_bytes(bundle.model)
    quantized = torch.ao.quantization.quantize_dynamic(bundle.model, {torch.nn.Linear}, dtype=torch.qint8)
    assert sum(p.numel() for p in quantized.parameters()) < float_count  # the pitfall being worked around
    assert count_parameters(quantized) == float_count
    assert state_dict_bytes(quantized) < float_bytes

    bundle.speech2text.st_model = quantized
    search = bundle.speech2text.beam_search
    assert search.full_scorers["decoder"] is not quantized.decoder  # stale until rewired
    bundle.rewire_searches()
    assert search.full_scorers["decoder"] is quantized.decoder
    assert bundle.speech2text.asr_beam_search.full_scorers["decoder"] is quantized.extra_asr_decoder
    assert bundle.speech2text.asr_beam_search.scorers["ctc"].ctc is quantized.ctc
    calls = []
    quantized.decoder.register_forward_hook(lambda *args: calls.append(1))
    layer = next(m for m in quantized.decoder.modules() if "quantized" in type(m).__module__)
    layer.register_forward_hook(lambda *args: calls.append(2))
    assert translate(bundle.speech2text, _speech()).tokens
    assert 2 in calls  # quantized kernels of the new decoder ran inside ESPnet's beam search


def test_retry_without_nbest_keeps_pre_x(tiny_exp: Path) -> None:
    """ESPnet's retry drops pre_x and the speech-attention decoder fails; the runner's does not."""
    options = DecodeOptions(minlenratio=1.5, maxlenratio=0.0)  # nothing may end: forces the retries
    bundle = load(tiny_exp, options)
    result = translate(bundle.speech2text, _speech(0.5))
    assert isinstance(result.text, str)

    stock = _espnet.st_inference().Speech2Text(
        st_train_config=str(tiny_exp / "config.yaml"), st_model_file=str(tiny_exp / "valid.acc.ave.pth"),
        **options.speech2text_kwargs())
    with pytest.raises((TypeError, AttributeError)):
        with _espnet.quiet():
            stock(_speech(0.5))


def test_model_errors_name_the_file(tmp_path: Path, tiny_exp: Path) -> None:
    with pytest.raises(RunnerError, match="model path not found"):
        locate(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunnerError, match=f"{empty}: no config.yaml"):
        locate(empty)
    two = shutil.copytree(tiny_exp, tmp_path / "two")
    (two / "valid.acc.ave.pth").rename(two / "10epoch.pth")
    shutil.copyfile(two / "10epoch.pth", two / "11epoch.pth")
    with pytest.raises(RunnerError, match="several model files"):
        locate(two)
    assert locate(two, two / "11epoch.pth").model_file.name == "11epoch.pth"
    broken = shutil.copytree(tiny_exp, tmp_path / "broken")
    config = (broken / "config.yaml").read_text().replace("normalize: utterance_mvn", "normalize: global_mvn")
    (broken / "config.yaml").write_text(config.replace("normalize_conf: {}", "normalize_conf:\n  stats_file: gone.npz"))
    with pytest.raises(RunnerError, match="stats_file 'gone.npz' not found"):
        locate(broken)
    not_zip = tmp_path / "model.zip"
    not_zip.write_bytes(io.BytesIO(b"junk").getvalue())
    with pytest.raises(RunnerError, match="model.zip"):
        locate(not_zip)
