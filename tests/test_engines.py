"""The engine protocol: docs/engines.md's example engine, installed as a user would, registers and runs like
the built-ins; a broken engine is refused when the registry loads; steps come back as return values."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import documented_package, installed_package
from runner.data import load_test_set, preload
from runner.defaults import REPO_ROOT
from runner.engines import EspnetSearch, SearchEngine, Searched, _check_class, available
from runner.errors import RunnerError
from runner.runner import Runner


@pytest.fixture(scope="module")
def installed_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    files = documented_package(REPO_ROOT / "docs" / "engines.md", "## Write an engine")
    assert sorted(files) == ["first_best.py", "pyproject.toml"]
    with installed_package(files, tmp_path_factory.mktemp("first-best"), "first_best", lambda: available(refresh=True)):
        yield


@pytest.fixture(scope="module")
def waveforms() -> list[np.ndarray]:
    from runner import defaults

    return [u.waveform for u in preload(load_test_set(defaults.data_path(), "tst-COMMON"), 16000, limit=2).utterances]


def test_the_documented_engine_registers_and_runs_like_the_built_ins(installed_engine: None, tiny_exp: Path,
                                                                     waveforms: list[np.ndarray]) -> None:
    assert "first-best" in available()
    from runner.decode import DecodeOptions

    espnet = Runner(tiny_exp, DecodeOptions(nbest=3), threads=1)
    first = Runner(tiny_exp, DecodeOptions(nbest=3), threads=1, search="first-best")
    assert first.search_engines == {"asr_search": "first-best", "st_search": "first-best"}
    assert first.conditions().search == "first-best"
    for waveform in waveforms:
        full, best = espnet.translate(waveform, 16000), first.translate(waveform, 16000)
        assert len(full.nbest) == 3 and len(best.nbest) == 1
        assert best.tokens == full.tokens and best.steps == full.steps  # the same search, one hypothesis kept


def test_an_engine_that_breaks_the_protocol_is_refused_at_registration() -> None:
    class NoRun(EspnetSearch):
        name = "no-run"
        description = "forgets run"

    NoRun.run = SearchEngine.run  # the protocol's own run, which every engine must replace
    with pytest.raises(RunnerError, match=r"search engine 'no-run' \(tests\) does not implement run"):
        _check_class("no-run", "tests", NoRun)
    with pytest.raises(RunnerError, match=r"search engine 'other' \(tests\) is not a runner.engines.SearchEngine"):
        _check_class("other", "tests", object)
    with pytest.raises(RunnerError, match=r"has name 'espnet', registered as 'lean2'"):
        _check_class("lean2", "tests", EspnetSearch)


def test_steps_and_search_times_are_return_values(tiny_exp: Path, waveforms: list[np.ndarray]) -> None:
    """Both built-in engines return each search's steps and seconds; the translation reports exactly those."""
    for engine in ("espnet", "lean"):
        runner = Runner(tiny_exp, threads=1, search=engine)
        search = runner.bundle.speech2text.beam_search
        assert not hasattr(type(search), "forward_batch") and "search" not in vars(search)  # nothing to patch
        translation = runner.translate(waveforms[0], 16000)
        assert translation.steps["st_search"] > 0 and translation.steps["asr_search"] > 0
        assert translation.stages["st_search"] > 0
        asr_enc = runner.bundle.model.encode(*_batch(waveforms[0]), return_int_enc=True)[2][0]
        searched = runner.bundle.speech2text.asr_beam_search.search(asr_enc)
        assert isinstance(searched, Searched) and searched.steps > 0 and searched.seconds > 0 and searched.nbest


def _batch(waveform: np.ndarray) -> tuple:
    import torch

    speech = torch.tensor(waveform).unsqueeze(0)
    return speech, torch.tensor([speech.size(1)])
