"""Helpers several test modules share: random ESPnet models of several shapes, ESPnet's own decode of one, and
comparing n-best lists (the exactness tests of the lean engine, batches and ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from runner.decode import Translation
from runner.demo.build import char_token_list, md_config, write_experiment

SCORE_TOLERANCE = 1e-4
TRANSFORMER_ENCODER = dict(output_size=32, attention_heads=2, linear_units=64, num_blocks=2, dropout_rate=0.1,
                           positional_dropout_rate=0.1, attention_dropout_rate=0.1, input_layer="conv2d",
                           normalize_before=True)


def _plain_config(**decoder: Any) -> dict[str, Any]:
    """A plain (single-decoder) ST model: transformer encoder, ST CTC head, decoder options as given."""
    tokens = char_token_list()
    config = md_config(tokens, tokens, "tiny")
    config.update(extra_asr_decoder=None, md_encoder=None, decoder="transformer", encoder="transformer",
                  encoder_conf=TRANSFORMER_ENCODER,
                  decoder_conf={**{k: v for k, v in config["decoder_conf"].items() if k != "use_speech_attn"},
                                **decoder},
                  model_conf={**config["model_conf"], "asr_weight": 0.0, "st_mtlalpha": 0.3})
    return config


def _md_without_speech_attention() -> dict[str, Any]:
    tokens = char_token_list()
    config = md_config(tokens, tokens, "tiny")
    config["decoder_conf"] = {**config["decoder_conf"], "use_speech_attn": False}
    return config


def shape_experiments(root: Path, tiny_exp: Path, recipe_exp: Path, discourage_eos: Any) -> dict[str, Path]:
    """Experiment dirs of several shapes under `root` (random weights; <sos/eos> discouraged so hypotheses are
    long), with the two conftest builds."""
    built = {"md-conformer": tiny_exp, "md-bpe-global-mvn": recipe_exp}
    for name, config in {"plain-transformer": _plain_config(),
                         "plain-post-norm": _plain_config(normalize_before=False, num_blocks=2),
                         "md-no-speech-attention": _md_without_speech_attention()}.items():
        exp = write_experiment(root / name, config, seed=1)
        discourage_eos(exp)
        built[name] = exp
    return built


def nbest_entries(output: Any) -> dict[str, list[tuple[list[int], float]]]:
    """Both searches' n-best lists as (token ids, score), from `Speech2Text.__call__`'s output or a `Translation`."""
    if isinstance(output, Translation):
        results, source = output.nbest, output.source_nbest
    else:
        results, source = output if isinstance(output, tuple) else (output, [])
    entries = {"st": [(r[2], float(r[3].score)) for r in results]}
    if source:
        entries["asr"] = [(r[2], float(r[3].score)) for r in source]
        entries["asr_hs"] = source[0][-1]
    return entries


def assert_same_hypotheses(espnet: Any, lean: Any, label: str) -> int:
    """Equal n-best lists (a near-tie flip allowed when the scores agree to 1e-4); returns the flips."""
    expected, got = nbest_entries(espnet), nbest_entries(lean)
    flips = 0
    for search in ("st", "asr"):
        if search not in expected:
            continue
        assert len(got[search]) == len(expected[search]), (label, search)
        for rank, ((tokens, score), (lean_tokens, lean_score)) in enumerate(zip(expected[search], got[search])):
            assert abs(score - lean_score) <= SCORE_TOLERANCE * max(1.0, abs(score)), (label, search, rank)
            flips += tokens != lean_tokens
    if "asr_hs" in expected and got["asr"][0][0] == expected["asr"][0][0]:
        torch.testing.assert_close(got["asr_hs"], expected["asr_hs"], atol=1e-4, rtol=1e-4)
    return flips


CASES = [
    ("md-conformer", dict(beam_size=1, asr_beam_size=1)),
    ("md-conformer", dict(beam_size=5, asr_beam_size=5, nbest=3)),
    ("md-conformer", dict(beam_size=10, asr_beam_size=10, asr_ctc_weight=0.0)),
    ("md-conformer", dict(beam_size=4, asr_beam_size=3, penalty=0.5, asr_penalty=0.2, maxlenratio=0.5)),
    ("md-bpe-global-mvn", dict(beam_size=5, asr_beam_size=5, nbest=2)),
    ("md-no-speech-attention", dict(beam_size=5, asr_beam_size=5)),
    ("plain-transformer", dict(beam_size=5, ctc_weight=0.3, nbest=3)),
    ("plain-transformer", dict(beam_size=10, ctc_weight=0.0, minlenratio=0.2)),
    ("plain-post-norm", dict(beam_size=5, ctc_weight=0.3)),
]


def espnet_call(bundle: Any, waveform: np.ndarray) -> Any:
    """ESPnet's own `Speech2Text.__call__` with its own BatchBeamSearch objects (the engines taken out)."""
    speech2text = bundle.copy().speech2text
    for attribute in ("beam_search", "asr_beam_search"):
        search = getattr(speech2text, attribute, None)
        if search is not None and hasattr(search, "espnet"):
            setattr(speech2text, attribute, search.espnet)
    return speech2text(waveform)
