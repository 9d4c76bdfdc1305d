"""Plugins that patch ESPnet internals refuse, in one line, when those internals are not what they expect."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from runner import compat
from runner.errors import RunnerError
from runner.model import load
from runner.plugin import PluginSpec
from runner.plugin_set import build

INTERNAL_PLUGINS = ("cross-kv-cache", "self-kv-cache", "ctc-prefix-scan")


def _apply(name: str, tiny_exp: Path) -> None:
    build(PluginSpec(name)).apply(load(tiny_exp))


@pytest.mark.parametrize("name", INTERNAL_PLUGINS)
def test_an_untested_espnet_version_is_refused(name: str, tiny_exp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat, "espnet_version", lambda: "202604")
    with pytest.raises(RunnerError) as error:
        _apply(name, tiny_exp)
    assert str(error.value) == (f"plugin '{name}': tested with espnet 202511, this is espnet 202604; it patches "
                                f"ESPnet internals, so it refuses (set ST_RUNNER_ALLOW_UNTESTED_ESPNET=1 to try it "
                                f"anyway)")
    monkeypatch.setenv(compat.ALLOW_UNTESTED, "1")
    _apply(name, tiny_exp)


def test_tested_version_passes() -> None:
    compat.check_espnet_version("any")  # the pinned espnet==202511 is the tested one


def test_cross_kv_cache_refuses_an_attention_without_what_it_reads(tiny_exp: Path) -> None:
    bundle = load(tiny_exp)
    del bundle.model.decoder.decoders[0].src_attn.k_norm
    with pytest.raises(RunnerError, match=r"^plugin 'cross-kv-cache': decoder.decoders.0.src_attn \(espnet 202511\) "
                                          r"lacks k_norm, which the plugin relies on$"):
        build(PluginSpec("cross-kv-cache")).apply(bundle)


def test_cross_kv_cache_leaves_sdpa_attention_to_espnet(tiny_exp: Path) -> None:
    bundle = load(tiny_exp)
    bundle.model.decoder.decoders[0].src_attn.use_sdpa = True
    plugin = build(PluginSpec("cross-kv-cache"))
    plugin.apply(bundle)
    assert plugin.details["unsupported_modules"] == 1
    assert "forward" not in vars(bundle.model.decoder.decoders[0].src_attn)
    assert "forward" in vars(bundle.model.extra_asr_decoder.decoders[0].src_attn)


def test_a_changed_signature_is_refused(tiny_exp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from espnet2.asr.decoder.transformer_decoder import BaseTransformerDecoder

    def batch_score(self, ys, states, xs, cache=None, return_hs=False):  # noqa: ANN001, ANN202
        raise AssertionError("never called")

    monkeypatch.setattr(BaseTransformerDecoder, "batch_score", batch_score)
    with pytest.raises(RunnerError, match=r"^plugin 'self-kv-cache': BaseTransformerDecoder.batch_score "
                                          r"\(espnet 202511\) takes \(ys, states, xs, cache\), the plugin expects "
                                          r"\(ys, states, xs, return_hs\)$"):
        _apply("self-kv-cache", tiny_exp)


def test_self_kv_cache_refuses_a_layer_without_what_it_reads(tiny_exp: Path) -> None:
    bundle = load(tiny_exp)
    layer = bundle.model.extra_asr_decoder.decoders[0]
    del layer.norm3
    with pytest.raises(RunnerError, match=r"extra_asr_decoder.decoders.0 \(DecoderLayer\) \(espnet 202511\) "
                                          r"lacks norm3"):
        build(PluginSpec("self-kv-cache")).apply(bundle)


def test_ctc_prefix_scan_refuses_a_scorer_without_what_it_reads(tiny_exp: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from espnet.nets.ctc_prefix_score import CTCPrefixScoreTH

    original = CTCPrefixScoreTH.__init__

    @functools.wraps(original)  # the same signature: only the attribute differs
    def init_without_end_frames(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        original(self, *args, **kwargs)
        del self.end_frames

    monkeypatch.setattr(CTCPrefixScoreTH, "__init__", init_without_end_frames)
    with pytest.raises(RunnerError, match=r"^plugin 'ctc-prefix-scan': CTCPrefixScoreTH \(espnet 202511\) "
                                          r"lacks end_frames, which the plugin relies on$"):
        _apply("ctc-prefix-scan", tiny_exp)
