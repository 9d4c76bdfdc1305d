"""The lean engine's hypotheses are ESPnet's: token for token on models of several shapes.

Every case decodes the same audio with ESPnet's own `Speech2Text.__call__` on ESPnet's own
`BatchBeamSearch` objects (no engine installed) and with the lean engine's searches over the same weights, and compares every n-best entry of both the
ST and (multi-decoder) ASR searches. Where float rounding (keys/values projected a row at a time
instead of the whole prefix at once) flips a near-tie, the two entries' scores must agree to 1e-4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runner import defaults
from runner.data import load_test_set, preload
from runner.decode import DecodeOptions
from runner.errors import RunnerError
from runner.lean import LeanBeamSearch, check_search
from runner.model import load
from runner.runner import Runner
from helpers import CASES, assert_same_hypotheses, espnet_call, nbest_entries

@pytest.fixture(scope="module")
def waveforms() -> list[np.ndarray]:
    test = preload(load_test_set(defaults.data_path(), "tst-COMMON"), 16000, limit=3)
    return [u.waveform for u in test.utterances]


@pytest.mark.parametrize(("shape", "options"), CASES, ids=[f"{s}-{'-'.join(f'{k}{v}' for k, v in o.items())}"
                                                           for s, o in CASES])
def test_lean_search_equals_espnets(shapes: dict[str, Path], waveforms: list[np.ndarray], shape: str,
                                    options: dict[str, Any]) -> None:
    bundle = load(shapes[shape], DecodeOptions(**options))
    lean = Runner.from_bundle(bundle, threads=1, search="lean")
    searches = lean.bundle.searches
    assert searches and all(isinstance(s, LeanBeamSearch) for s in searches), lean.search_engines
    assert lean.bundle.search_engine == "lean" and bundle.search_engine == "espnet"
    flips = 0
    for index, waveform in enumerate(waveforms):
        flips += assert_same_hypotheses(espnet_call(bundle, waveform), lean.translate(waveform, 16000),
                                        f"{shape} utterance {index}")
    assert flips <= 1, f"{flips} near-tie flips"


@pytest.mark.slow
def test_espnet_engine_equals_espnets_own_call(shapes: dict[str, Path], waveforms: list[np.ndarray]) -> None:
    """The default engine (ESPnet's search through the engine protocol) gives `Speech2Text.__call__`'s n-best
    exactly, scores and all, on every shape."""
    for shape, path in shapes.items():
        bundle = load(path, DecodeOptions(beam_size=5, asr_beam_size=5, nbest=3))
        runner = Runner.from_bundle(bundle, threads=1)
        assert runner.search_engines == dict.fromkeys(bundle.search_stages, "espnet")
        for waveform in waveforms[:2]:
            with runner._scope():  # ESPnet's call on the runner's threads: MKL sums differently on others
                expected = nbest_entries(espnet_call(bundle, waveform))
            got = nbest_entries(runner.translate(waveform, 16000))
            for search in ("st", "asr"):
                assert got.get(search) == expected.get(search), (shape, search)


def test_lean_counts_the_same_steps_and_reports_its_engine(tiny_exp: Path, waveforms: list[np.ndarray]) -> None:
    bundle = load(tiny_exp)
    espnet, lean = Runner.from_bundle(bundle, threads=1), Runner.from_bundle(bundle, threads=1, search="lean")
    first, second = espnet.translate(waveforms[0], 16000), lean.translate(waveforms[0], 16000)
    assert (second.tokens, second.source_text) == (first.tokens, first.source_text)
    assert second.steps == first.steps and all(second.steps.values())
    assert set(second.stages) == set(first.stages) and second.stages["st_search"] > 0


def test_lean_runs_the_quantized_decoders(tiny_exp: Path, waveforms: list[np.ndarray]) -> None:
    """After dynamic int8 the engine calls every quantized decoder Linear (it must not bypass a plugin's modules).

    Hypotheses are not compared with ESPnet's here: dynamic int8 scales activations per call, and
    ESPnet projects a whole prefix per call where the engine projects one new position.
    """
    bundle = load(tiny_exp)
    both = Runner.from_bundle(bundle, threads=1, plugins=["dynamic-int8"], search="lean")
    assert [p.name for p in both.plugins] == ["dynamic-int8"] and both.bundle.search_engine == "lean"
    quantized = {name: module for part in ("decoder", "extra_asr_decoder")
                 for name, module in getattr(both.bundle.model, part).named_modules(prefix=part)
                 if type(module).__name__ == "DynamicQuantizedLinear" or type(module).__name__ == "Linear"
                 and type(module).__module__.startswith("torch.ao.nn.quantized.dynamic")}
    assert quantized
    calls = dict.fromkeys(quantized, 0)
    handles = [module.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
               for name, module in quantized.items()]
    try:
        translation = both.translate(waveforms[0], 16000)
    finally:
        for handle in handles:
            handle.remove()
    assert translation.tokens and all(calls.values()), [name for name, count in calls.items() if not count]


def test_unsupported_searches_keep_espnets_engine_and_say_why(tiny_exp: Path) -> None:
    from espnet.nets.beam_search import BeamSearch

    bundle = load(tiny_exp)
    search = bundle.speech2text.beam_search
    plain = BeamSearch(scorers=dict(search.scorers), weights=dict(search.weights), beam_size=2,
                       vocab_size=search.n_vocab, sos=search.sos, eos=search.eos)
    with pytest.raises(RunnerError, match="not ESPnet's BatchBeamSearch"):
        check_search(plain)
    bundle.speech2text.beam_search = plain  # e.g. a non-batch scorer made ESPnet fall back to BeamSearch
    runner = Runner.from_bundle(bundle, threads=1, search="lean")
    engines = runner.search_engines
    assert engines["asr_search"] == "lean" and engines["st_search"].startswith("espnet (")
    assert "not ESPnet's BatchBeamSearch" in engines["st_search"]
    assert runner.bundle.search_engine == "asr lean, st espnet"


def test_search_engines_are_registered_and_checked(tiny_exp: Path) -> None:
    from runner.engines import EspnetSearch, available
    from runner.plugin_set import PluginSet

    assert {"espnet": EspnetSearch, "lean": LeanBeamSearch}.items() <= available().items()
    with pytest.raises(RunnerError, match="unknown search engine 'fast'; available: espnet, lean, onnxruntime"):
        Runner(tiny_exp, search="fast")
    with pytest.raises(RunnerError, match="'lean' is a search engine, not a plugin: choose it with --search lean"):
        PluginSet.resolve(["lean"])


def test_cli_search_option_reports_the_engine(tiny_exp: Path, shared_corpus: Path, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from runner.cli import app

    documents = {}
    for engine in ("espnet", "lean"):
        out = tmp_path / f"{engine}.json"
        result = CliRunner().invoke(app, ["translate", "--model", str(tiny_exp), "--data", str(shared_corpus),
                                          "--limit", "3", "--threads", "1", "--search", engine, "--no-progress",
                                          "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert f"search {engine}" in result.stdout
        documents[engine] = json.loads(out.read_text())
    assert documents["lean"]["conditions"]["search"] == "lean"
    assert [u["hypothesis"] for u in documents["lean"]["utterances"]] == [
        u["hypothesis"] for u in documents["espnet"]["utterances"]]
    bad = CliRunner().invoke(app, ["translate", "--model", str(tiny_exp), "--search", "fastest"])
    assert bad.exit_code != 0 and "--search: unknown search engine 'fastest'" in bad.output


def test_served_models_state_their_search_engine(tiny_exp: Path) -> None:
    from runner.serve import load_models, model_config

    models = load_models(tiny_exp, ["none", "dynamic-int8"], threads=1, search="lean")
    assert {name: model_config(runner)["search"] for name, runner in models.items()} == {"fp32": "lean",
                                                                                        "dynamic-int8": "lean"}
    assert model_config(load_models(tiny_exp, ["none"], threads=1)["fp32"])["search"] == "espnet"


def test_serve_refuses_an_unknown_search_engine_in_one_line(tiny_exp: Path) -> None:
    from typer.testing import CliRunner

    from runner.cli import app
    from runner.engines import available

    result = CliRunner().invoke(app, ["serve", "--model", str(tiny_exp), "--search", "fastest"])
    assert result.exit_code == 2
    assert {"espnet", "lean", "onnxruntime"} <= set(available())
    assert result.output.strip() == ("error: --search: unknown search engine 'fastest'; available: "
                                     + ", ".join(available()))


@pytest.mark.parametrize(("shape", "options"), [case for case in CASES if not case[1].get("penalty")],
                         ids=lambda value: value if isinstance(value, str) else "-".join(f"{k}{v}" for k, v in value.items()))
def test_settled_stop_keeps_the_nbest_in_no_more_steps(shapes: dict[str, Path], waveforms: list[np.ndarray],
                                                     shape: str, options: dict[str, Any]) -> None:
    """Stopping once the n-best can no longer change: on each engine, the n-best (tokens and scores) of the
    search that runs to ESPnet's end detection, in no more steps (these tiny models end within a step or two
    of it; tests/test_whisper_ctranslate2.py shows the steps saved)."""
    bundle = load(shapes[shape], DecodeOptions(**options))
    for search in ("espnet", "lean"):
        full = Runner.from_bundle(bundle, threads=1, search=search)
        stopping = Runner.from_bundle(bundle, threads=1, search=search, plugins=["settled-stop"])
        for waveform in waveforms:
            ours, theirs = stopping.translate(waveform, 16000), full.translate(waveform, 16000)
            for part in ("st", "asr"):  # the n-best kept: the ASR search's list goes on past it
                assert (nbest_entries(ours).get(part, [])[:bundle.options.nbest]
                        == nbest_entries(theirs).get(part, [])[:bundle.options.nbest]), (search, part)
            assert all(ours.steps[stage] <= theirs.steps[stage] for stage in theirs.steps)


def test_settled_stop_is_refused_where_a_score_can_rise(shapes: dict[str, Path]) -> None:
    with pytest.raises(RunnerError, match=r"plugin 'settled-stop': the st_search cannot stop early exactly: "
                                          r"scorer\(s\) \['length_bonus'\]"):
        Runner(shapes["md-conformer"], DecodeOptions(penalty=0.5), threads=1, plugins=["settled-stop"])
