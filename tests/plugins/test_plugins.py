"""Each built-in plugin on a real tiny ESPnet model: what it changes, that it runs in beam search."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import write_corpus
from runner.cli import app
from runner.pipeline import translate
from runner.demo.build import char_token_list, md_config, write_experiment
from runner.errors import RunnerError
from runner.metrics.size import count_parameters, state_dict_bytes
from runner.plugin import PluginSpec
from runner.plugin_set import PluginSet, available
from runner.runner import Runner

SPEECH = (np.random.default_rng(0).normal(scale=0.1, size=16000)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus_with_dev(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mustc-dev")
    write_corpus(root, split="tst-COMMON")
    return write_corpus(root, split="dev")


def _types(model: torch.nn.Module, prefix: str) -> dict[str, str]:
    return {name: type(m).__name__ for name, m in model.named_modules() if name.startswith(prefix)}


def test_dynamic_int8_quantizes_exactly_the_linears_of_the_chosen_parts(tiny_exp: Path) -> None:
    runner = Runner(tiny_exp, threads=1, plugins=[{"name": "dynamic-int8", "parts": ["decoder"],
                                                   "skip": ["decoder.output_layer"]}])
    model = runner.bundle.model
    decoder_linears = [n for n, m in model.decoder.named_modules() if type(m) is torch.nn.Linear]
    assert decoder_linears == ["output_layer"]  # the skipped one stays float
    assert all("quantized.dynamic" in type(m).__module__ for n, m in model.decoder.named_modules()
               if n.endswith(("linear_q", "linear_k", "linear_v", "linear_out", "w_1", "w_2")))
    assert all(type(m) is torch.nn.Linear for m in model.extra_asr_decoder.modules() if "Linear" in type(m).__name__)
    assert type(model.encoder.embed.conv[0]) is torch.nn.Conv2d
    assert runner.plugins[0].details["modules_quantized"] == len(
        [m for m in model.decoder.modules() if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")])
    assert translate(runner.bundle.speech2text, SPEECH).tokens


def test_dynamic_int8_shrinks_a_linear_dominated_model_threefold(tmp_path: Path) -> None:
    tokens = char_token_list()
    config = md_config(tokens, tokens, "tiny")
    for part in ("encoder_conf", "extra_asr_decoder_conf", "decoder_conf", "md_encoder_conf"):
        config[part]["linear_units"] = 4096
    exp = write_experiment(tmp_path / "wide", config)
    float_runner = Runner(exp, threads=1)
    quantized = Runner(exp, threads=1, plugins=["dynamic-int8"])
    float_bytes, int8_bytes = state_dict_bytes(float_runner.bundle.model), state_dict_bytes(quantized.bundle.model)
    assert float_bytes / int8_bytes >= 3.0
    assert count_parameters(quantized.bundle.model) == count_parameters(float_runner.bundle.model)


def test_dynamic_int8_weight_granularity(tiny_exp: Path) -> None:
    schemes = {}
    for per_channel in (True, False):
        runner = Runner(tiny_exp, threads=1, plugins=[{"name": "dynamic-int8", "per_channel": per_channel}])
        schemes[per_channel] = runner.bundle.model.decoder.output_layer.weight().qscheme()
    assert schemes == {True: torch.per_channel_affine, False: torch.per_tensor_affine}


def test_dynamic_fp16_uses_float16_weights(tiny_exp: Path) -> None:
    runner = Runner(tiny_exp, threads=1, plugins=["dynamic-fp16"])
    layer = runner.bundle.model.decoder.output_layer
    assert "quantized.dynamic" in type(layer).__module__ and layer._packed_params.dtype == torch.float16
    # fbgemm keeps the fp16 copy packed; the state_dict stores float32 weights: no size gain to report.
    assert state_dict_bytes(runner.bundle.model) >= 0.95 * state_dict_bytes(Runner(tiny_exp, threads=1).bundle.model)
    assert runner.plugins[0].number_format.dtype == "float16" and runner.plugins[0].describe()["dtype"] == "float16"
    assert translate(runner.bundle.speech2text, SPEECH).tokens


def test_static_int8_runs_quantized_kernels_inside_beam_search(tiny_exp: Path, corpus_with_dev: Path) -> None:
    runner = Runner(tiny_exp, threads=1, plugins=[{"name": "static-int8", "calibration_size": 3}],
                    calibration_data=corpus_with_dev)
    model = runner.bundle.model
    quantized = [m for m in model.decoder.modules() if type(m) is torch.ao.nn.quantized.Linear]
    stubs = [m for m in model.decoder.modules() if type(m).__name__ == "Quantize"]
    assert quantized and len(stubs) == len(quantized)
    assert all(type(m) is torch.nn.Linear for m in model.extra_asr_decoder.modules() if "Linear" in type(m).__name__)
    assert type(model.decoder.embed[0]) is torch.nn.Embedding  # left in float
    calibration = runner.plugins[0].calibration
    assert calibration.utterances == 3 and calibration.split == "dev" and calibration.seconds > 0
    assert runner.plugins[0].describe()["calibration_utterances"] == 3

    calls = []
    for module in quantized:
        module.register_forward_hook(lambda *args: calls.append(1))
    result = translate(runner.bundle.speech2text, SPEECH)
    assert result.tokens and len(calls) > len(quantized)  # every step of the search ran int8 Linears
    assert count_parameters(model) == runner.bundle.float_parameters
    report = runner.evaluate(corpus_with_dev, split="tst-COMMON", warmup=1)
    assert report.conditions.dtype == "qint8" and len(report.hypotheses()) == 5


def test_static_int8_block_granularity_fuses_feed_forward_blocks(tiny_exp: Path, corpus_with_dev: Path) -> None:
    runner = Runner(tiny_exp, threads=1, calibration_data=corpus_with_dev,
                    plugins=[{"name": "static-int8", "granularity": "block", "calibration_size": 2,
                              "observer": "minmax", "per_channel": False}])
    ffn = runner.bundle.model.decoder.decoders[0].feed_forward
    assert type(ffn).__name__ == "QuantWrapper" and type(ffn.module.w_1).__name__ == "LinearReLU"
    assert runner.plugins[0].details["feed_forward_blocks"] == 1
    assert count_parameters(runner.bundle.model) == runner.bundle.float_parameters
    assert translate(runner.bundle.speech2text, SPEECH).tokens


def test_calibration_must_not_touch_the_test_utterances(tiny_exp: Path, corpus_with_dev: Path) -> None:
    runner = Runner(tiny_exp, threads=1, calibration_data=corpus_with_dev,
                    plugins=[{"name": "static-int8", "calibration_size": 2}])
    with pytest.raises(RunnerError, match="refusing to evaluate on 2 utterance"):
        runner.evaluate(corpus_with_dev, split="dev")


def test_hop_changes_the_number_of_encoder_input_frames(tiny_exp: Path) -> None:
    frames = {}
    for hop in (160, 320):
        runner = Runner(tiny_exp, threads=1, plugins=[{"name": "hop", "hop_length": hop}])
        seen = []
        runner.bundle.model.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
        translate(runner.bundle.speech2text, SPEECH)
        frames[hop] = seen[0]
        assert runner.bundle.summary()["frontend"]["hop_length"] == hop
    assert frames[160] == 16000 // 160 + 1 and frames[320] == 16000 // 320 + 1


def test_plugins_compose_in_a_defined_order(tiny_exp: Path) -> None:
    runner = Runner(tiny_exp, threads=1, plugins=["dynamic-int8", {"name": "hop", "hop_length": 200}])
    assert [p.name for p in runner.plugins] == ["hop", "dynamic-int8"]
    assert runner.bundle.summary()["frontend"]["hop_length"] == 200
    assert "quantized" in type(runner.bundle.model.decoder.output_layer).__module__
    assert translate(runner.bundle.speech2text, SPEECH).tokens


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([PluginSpec("dynamic-int9")], "unknown plugin 'dynamic-int9'; available: bf16, cross-kv-cache, ctc-prefix-scan, dynamic-fp16, dynamic-int8"),
        ([PluginSpec("hop", {"hop_length": 0})], "hop_length must be positive"),
        ([PluginSpec("hop", {"hop_lenght": 200})], "unknown option(s) ['hop_lenght']; allowed: ['hop_length']"),
        ([PluginSpec("dynamic-int8", {"parts": ["decoders"]})], "unknown part(s) ['decoders']"),
        ([PluginSpec("static-int8", {"observer": "mse"})], "must be one of ['minmax', 'histogram', 'percentile', 'entropy']"),
        ([PluginSpec("dynamic-int8"), PluginSpec("static-int8")], "both change the number format of the decoder"),
        ([PluginSpec("hop"), PluginSpec("hop")], "given more than once"),
    ],
)
def test_bad_plugin_lists_are_one_line_errors(specs: list[PluginSpec], message: str) -> None:
    with pytest.raises(RunnerError) as error:
        PluginSet.resolve(specs)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_hop_beyond_the_window_and_unknown_int8_backend_are_rejected(tiny_exp: Path) -> None:
    with pytest.raises(RunnerError, match=r"exceeds the window length 400; allowed: 1..400"):
        Runner(tiny_exp, threads=1, plugins=[{"name": "hop", "hop_length": 401}])
    with pytest.raises(RunnerError, match=r"int8 backend \(torch.ao quantized engine\) 'tpu' is not supported"):
        Runner(tiny_exp, threads=1, plugins=[{"name": "dynamic-int8", "backend": "tpu"}])


def test_cli_quant_hop_and_yaml_plugins(tiny_exp: Path, corpus_with_dev: Path, tmp_path: Path) -> None:
    cli = CliRunner()
    result = cli.invoke(app, ["translate", "--model", str(tiny_exp), "--data", str(corpus_with_dev), "--limit", "2",
                              "--quant", "dynamic-int8", "--hop", "250", "--threads", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "hop 250" in result.stdout and "dtype qint8" in result.stdout and "hop(250), dynamic-int8" in result.stdout
    run = tmp_path / "run.yaml"
    run.write_text(f"model: {tiny_exp}\ndata: {corpus_with_dev}\nlimit: 2\nthreads: 1\n"
                   "plugins:\n  - {name: hop, hop_length: 300}\n  - {name: dynamic-fp16, parts: [decoder]}\n")
    result = cli.invoke(app, ["translate", "--config", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "hop 300" in result.stdout and "dynamic-fp16(decoder)" in result.stdout
    run.write_text("modle: x\n")
    result = cli.invoke(app, ["translate", "--config", str(run), "--no-progress"])
    assert result.exit_code == 2 and f"{run}: unknown key(s) ['modle']" in result.stderr
    listing = cli.invoke(app, ["plugins"])
    assert all(name in listing.stdout for name in ("dynamic-int8", "dynamic-fp16", "static-int8", "hop", "bf16"))
    assert "calibration_size" in listing.stdout and "hop_length" in listing.stdout


def test_a_third_party_plugin_installs_through_the_entry_point_group(tiny_exp: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "thirdparty"
    (package / "halve_beam").mkdir(parents=True)
    (package / "halve_beam" / "__init__.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from runner.plugin import Plugin

        @dataclass
        class Config:
            factor: int = 2

        class HalveBeam(Plugin):
            name = "halve-beam"
            description = "Divide the ST beam size by factor"
            Config = Config

            def apply(self, bundle):
                search = bundle.speech2text.beam_search
                search.beam_size = max(1, search.beam_size // self.config.factor)
                self.details["beam_size"] = search.beam_size
    '''))
    (package / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "halve-beam"
        version = "0.1"
        [project.entry-points."runner.plugins"]
        halve-beam = "halve_beam:HalveBeam"
    '''))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(site), str(package)], check=True, capture_output=True)
    monkeypatch.syspath_prepend(str(site))
    assert "halve-beam" in available(refresh=True)
    runner = Runner(tiny_exp, threads=1, plugins=[{"name": "halve-beam", "factor": 5}])
    assert runner.bundle.speech2text.beam_search.beam_size == 1
    assert runner.plugins[0].describe()["beam_size"] == 1
    monkeypatch.undo()
    assert "halve-beam" not in available(refresh=True)  # uninstalled again for the tests after this one


def _count_calls(modules: list[torch.nn.Module]) -> list[int]:
    calls: list[int] = []
    for module in modules:
        module.register_forward_hook(lambda *args: calls.append(1))
    return calls


@pytest.mark.parametrize("quant", [None, "dynamic-int8"])
def test_cross_kv_cache_projects_memory_once_and_keeps_the_translation(tiny_exp: Path, quant: str | None) -> None:
    plain = Runner(tiny_exp, threads=1, plugins=[quant] if quant else [])
    cached = Runner.from_bundle(plain.bundle if not quant else Runner(tiny_exp, threads=1).bundle, threads=1,
                                plugins=([quant] if quant else []) + ["cross-kv-cache"])
    # ASR decoder: source attention; ST decoder: source attention and speech ("sequential") attention.
    assert cached.plugins[-1].details["cross_attention_modules"] == 3
    calls = {}
    for label, model in {"plain": plain.bundle.model, "cached": cached.bundle.model}.items():
        calls[label] = _count_calls([model.extra_asr_decoder.decoders[0].src_attn.linear_k,
                                     model.decoder.decoders[0].src_attn.linear_k,
                                     model.decoder.decoders[0].sequential_attn.linear_k])
    for speech in (SPEECH, SPEECH[:12000]):  # a second utterance must not reuse the first one's keys
        expected = translate(plain.bundle.speech2text, speech)
        before = len(calls["cached"])
        got = translate(cached.bundle.speech2text, speech)
        assert (got.tokens, got.source_text) == (expected.tokens, expected.source_text)
        assert len(calls["cached"]) - before == 3  # once per module per utterance
    assert len(calls["plain"]) > 10 * len(calls["cached"])  # ...where ESPnet projects at every step


def test_search_threads_narrows_only_the_beam_searches(tiny_exp: Path) -> None:
    plain = Runner(tiny_exp, threads=2)
    narrowed = Runner.from_bundle(plain.bundle, threads=2, plugins=[{"name": "search-threads", "threads": 1}])
    model = narrowed.bundle.model
    seen: dict[str, list[int]] = {"encoder": [], "decoder": [], "extra_asr_decoder": []}
    # Beam search calls the decoders' layers (through forward_one_step), not the decoders' forward.
    for module, counts in ((model.encoder, seen["encoder"]), (model.decoder.decoders[0], seen["decoder"]),
                           (model.extra_asr_decoder.decoders[0], seen["extra_asr_decoder"])):
        module.register_forward_pre_hook(lambda *args, counts=counts: counts.append(torch.get_num_threads()))
    result = translate(narrowed.bundle.speech2text, SPEECH)
    assert set(seen["encoder"]) == {2} and set(seen["decoder"]) == set(seen["extra_asr_decoder"]) == {1}
    assert torch.get_num_threads() == 2  # restored after the searches
    assert result.tokens == translate(plain.bundle.speech2text, SPEECH).tokens
    with pytest.raises(RunnerError, match="threads must be at least 1"):
        Runner.from_bundle(plain.bundle, threads=2, plugins=[{"name": "search-threads", "threads": 0}])


def _stepwise_ctc_scores(impl_type: type, logp: torch.Tensor, steps: int, beam: int, partial: bool,
                         seed: int) -> list[torch.Tensor]:
    """Prefix scores of a beam that grows by randomly chosen labels, step by step, through `impl_type`."""
    generator = torch.Generator().manual_seed(seed)
    odim, frames = logp.size(2), logp.size(1)
    scorer = impl_type(logp.clone(), torch.tensor([frames]), 0, odim - 1)
    prefixes = [torch.tensor([odim - 1])] * beam
    state, scores = None, []
    for _ in range(steps):
        ids = torch.stack([torch.randperm(odim - 2, generator=generator)[:6] + 1 for _ in range(beam)]) if partial else None
        local, state = scorer(prefixes, state, ids)
        scores.append(state[1])  # the prefix scores themselves (local ones subtract the parent's)
        chosen = (ids[:, 1] if partial else torch.randint(1, odim - 1, (beam,), generator=generator))
        parents = torch.randint(0, beam, (beam,), generator=generator)
        best = (parents * odim + chosen[parents]).view(1, beam)
        state = scorer.index_select_state(state, best)
        prefixes = [torch.cat((prefixes[int(p)], torch.tensor([int(c)]))) for p, c in zip(parents, chosen[parents])]
    return scores


@pytest.mark.parametrize("frames,partial", [(40, True), (9, True), (25, False)])
def test_ctc_prefix_scan_matches_espnets_frame_loop(frames: int, partial: bool) -> None:
    from espnet.nets.ctc_prefix_score import CTCPrefixScoreTH

    from runner.plugins.ctc_prefix_scan import ScanCTCPrefixScore

    logp = torch.randn(1, frames, 20, generator=torch.Generator().manual_seed(frames)).log_softmax(-1)
    expected = _stepwise_ctc_scores(CTCPrefixScoreTH, logp, frames - 1, 3, partial, seed=1)
    got = _stepwise_ctc_scores(ScanCTCPrefixScore, logp, frames - 1, 3, partial, seed=1)
    for step, (e, g) in enumerate(zip(expected, got)):
        possible = e > -1e4  # ESPnet's logzero (-1e10) marks impossible prefixes; float32 keeps no digits there
        assert torch.equal(possible, g > -1e4), step
        torch.testing.assert_close(g[possible], e[possible], rtol=1e-5, atol=2e-4)


def test_ctc_prefix_scan_keeps_the_translation(tiny_exp: Path) -> None:
    from runner.plugins.ctc_prefix_scan import ScanCTCPrefixScore

    plain = Runner(tiny_exp, threads=1)
    scanned = Runner(tiny_exp, threads=1, plugins=["ctc-prefix-scan"])
    assert scanned.plugins[0].details["ctc_scorers"] >= 1
    for speech in (SPEECH, SPEECH[:9000]):
        expected = translate(plain.bundle.speech2text, speech)
        got = translate(scanned.bundle.speech2text, speech)
        assert (got.tokens, got.source_text) == (expected.tokens, expected.source_text)
    ctc = scanned.bundle.speech2text.asr_beam_search.scorers["ctc"]
    assert type(ctc.impl) is ScanCTCPrefixScore  # the search really used the scan


@pytest.fixture(scope="module")
def two_block_exp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with two blocks per decoder: a layer's keys then depend on the layer below."""
    tokens = char_token_list()
    config = md_config(tokens, tokens, "tiny")
    for part in ("extra_asr_decoder_conf", "decoder_conf"):
        config[part]["num_blocks"] = 2
    return write_experiment(tmp_path_factory.mktemp("two-block") / "exp", config)


@pytest.mark.parametrize("others", [[], ["cross-kv-cache", "ctc-prefix-scan"]])
def test_self_kv_cache_projects_each_position_once_and_keeps_the_translation(two_block_exp: Path,
                                                                              others: list[str]) -> None:
    plain = Runner(two_block_exp, threads=1)
    cached = Runner(two_block_exp, threads=1, plugins=["self-kv-cache", *others])
    details = {k: v for k, v in next(p for p in cached.plugins if p.name == "self-kv-cache").details.items() if k != "apply_seconds"}
    assert details == {"decoders": ["extra_asr_decoder", "decoder"], "unsupported": []}
    positions: dict[str, list[int]] = {"plain": [], "cached": []}
    for label, runner in (("plain", plain), ("cached", cached)):
        for decoder in (runner.bundle.model.extra_asr_decoder, runner.bundle.model.decoder):
            decoder.decoders[-1].self_attn.linear_k.register_forward_hook(
                lambda module, args, output, seen=positions[label]: seen.append(args[0].size(1)))
    for speech in (SPEECH, SPEECH[:9000]):
        expected = translate(plain.bundle.speech2text, speech)
        got = translate(cached.bundle.speech2text, speech)
        assert (got.tokens, got.source_text) == (expected.tokens, expected.source_text)
    assert set(positions["cached"]) == {1}  # one new position per step...
    assert max(positions["plain"]) > 3  # ...where ESPnet projects the whole prefix again


@pytest.mark.parametrize("part", ["extra_asr_decoder", "decoder"])
def test_self_kv_cache_scores_a_whole_prefix_and_continues_it_like_espnet(two_block_exp: Path, part: str) -> None:
    model = Runner(two_block_exp, threads=1, plugins=["self-kv-cache"]).bundle.model
    decoder = getattr(model, part)
    espnet_score = type(decoder).batch_score.__get__(decoder)
    ys = torch.tensor([[1, 5, 7, 9], [1, 6, 6, 2]])
    memory = torch.randn(2, 11, decoder.output_layer.in_features, generator=torch.Generator().manual_seed(0))
    # The speech-attention ST decoder also attends to the speech encoding (random here, as memory is).
    speech = {"speech": memory.flip(1)} if part == "decoder" else {}
    got, states = decoder.batch_score(ys[:, :3], [None, None], memory, **speech)  # three positions at once
    expected, _ = espnet_score(ys[:, :3], [None, None], memory, **speech)
    torch.testing.assert_close(got, expected)
    # A layer's state holds keys and values: (positions so far, 2 * d)...
    assert [tuple(s.shape) for s in states[1]] == [(3, 2 * memory.size(2))] * len(decoder.decoders)
    got, _ = decoder.batch_score(ys, states, memory, **speech)  # ...and the next step continues from it
    expected, _ = espnet_score(ys, [None, None], memory, **speech)
    torch.testing.assert_close(got, expected)
    if part == "extra_asr_decoder":  # the ASR decoder's hidden states feed the MD encoder
        (_, hidden), _ = decoder.batch_score(ys, states, memory, return_hs=True)
        (_, expected_hidden), _ = espnet_score(ys, [None, None], memory, return_hs=True)
        torch.testing.assert_close(hidden, expected_hidden)
