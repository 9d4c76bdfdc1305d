"""The quality-latency page (docs/live-latency.md) and `runner translate --simultaneous`.

The page is what `benchmarks.live_latency` renders from its JSON; a row's reproducible replay (computation-unaware,
fp32, lean) is decoded again for the first utterances and must give the same words at the same times. The CLI
prints BLEU with OmniSTEval's AL, LAAL and YAAL and its conditions, writes them as JSON, and refuses what it lacks
in one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmarks.live_latency import PAGE, page
from runner.cli import app
from runner.live import StreamOptions
from runner.live.evaluate import emitted, replay_utterance
from runner.options import EvaluateOptions
from runner.runner import Runner

RECHECKED = 8  # utterances of a published row decoded again


@pytest.fixture(scope="module")
def published() -> dict:
    return json.loads(PAGE.with_suffix(".json").read_text(encoding="utf-8"))


def test_the_page_is_what_its_command_renders(published: dict) -> None:
    rows = published["rows"]
    assert {(r["chunk"], r["agreement"]) for r in rows} >= {(1.0, 2), (0.5, 1), (2.0, 3)}
    rendered = page(rows, published["stream"], published["served"], published.get("split", "tst-COMMON"),
                    published["environment"], published["talks"])
    assert PAGE.read_text(encoding="utf-8") == rendered
    assert f"cpu kind `{published['environment']['cpu_kind']}`" in rendered and "## Targets (issue #37)" in rendered
    assert "## Whole talks" in rendered and "--simultaneous --search lean --threads 2 --chunk-seconds 1 --agreement 2" \
        " --segmenter vad" in rendered


def test_a_published_rows_reproducible_replay_decodes_again_to_the_same_words_at_the_same_times(
        published: dict) -> None:
    row = next(r for r in published["rows"] if (r["chunk"], r["agreement"]) == (1.0, 2))
    options = StreamOptions(**row["result"]["options"])
    runner = Runner(threads=2, search="lean")
    preloaded = runner.preload(EvaluateOptions(limit=RECHECKED, progress=False))
    for utterance, expected in zip(preloaded.utterances, row["unaware"]):
        text, times = emitted(replay_utterance(runner, utterance.waveform, utterance.sample_rate, options,
                                                aware=False), aware=False)
        assert (utterance.segment.id, text, times) == (expected["id"], expected["hypothesis"],
                                                       expected["emission_cu"])


def test_runner_translate_simultaneous_reports_bleu_and_latency_with_its_conditions(tmp_path: Path) -> None:
    out = tmp_path / "live.json"
    result = CliRunner().invoke(app, ["translate", "--simultaneous", "--search", "lean", "--threads", "2", "--limit",
                                      "3", "--chunk-seconds", "0.5", "--no-progress", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "chunk 0.5 s, LocalAgreement-2" in result.output and "search lean" in result.output
    written = json.loads(out.read_text())
    assert set(written["latency_seconds"]) == {"AL", "LAAL", "YAAL", "AL (CA)", "LAAL (CA)", "YAAL (CA)"}
    assert written["latency_scorer"].startswith("omnisteval") and len(written["utterances"]) == 3
    for utterance in written["utterances"]:
        assert len(utterance["emission_cu"]) == len(utterance["hypothesis"].split())
        assert utterance["emission_cu"] == sorted(utterance["emission_cu"])
        assert all(t <= utterance["source_seconds"] + 1e-9 for t in utterance["emission_cu"])
    assert 0 < written["latency_seconds"]["LAAL"] <= max(u["source_seconds"] for u in written["utterances"])
    assert written["bleu"]["score"] > 50 and written["conditions"]["cpu_kind"]
    for args, message in [(["--chunk-seconds", "0"], "--chunk-seconds: must be in"),
                          (["--audio", str(out)], "has none: leave out --audio"),
                          (["--segmenter", "vad", "--limit", "3"], "--limit: whole talks are decoded"),
                          (["--segmenter", "vad", "--max-segment", "1.5"], "--max-segment: must be at least 2 s")]:
        refused = CliRunner().invoke(app, ["translate", "--simultaneous", "--search", "lean", *args])
        assert refused.exit_code == 2 and message in refused.output, refused.output


def test_a_whole_talk_replayed_live_is_scored_long_form_near_its_offline_translation() -> None:
    """The first tst-COMMON talk (20 sentences, 64 s) replayed whole through one session, its segments cut by the
    session's own VAD end-points: re-segmented by OmniSTEval to its 20 references, BLEU near the offline VAD
    translation's (measured on all five talks: 82.27 against 84.88; a session that joins sentences into one
    segment scored 18-52, one that starts segments in the pause 64), with StreamLAAL and long-form YAAL."""
    from runner import defaults
    from runner.data import load_test_set
    from runner.live.talks import evaluate_talks_simultaneous

    test_set = load_test_set(defaults.data_path(), "tst-COMMON")
    test_set.segments[:] = test_set.segments[:20]
    runner = Runner(threads=2, search="lean")
    result = evaluate_talks_simultaneous(runner, test_set, StreamOptions(chunk_seconds=1.0, endpoint_ms=300,
                                                                         max_segment_seconds=20.0))
    assert result.talks and len(result.utterances) == 1
    talk = result.utterances[0]
    assert talk.emission_cu == sorted(talk.emission_cu) and talk.emission_cu[-1] <= talk.source_seconds + 1e-9
    assert len(talk.emission_ca) == len(talk.served.split())
    assert set(result.latency) == {"StreamLAAL", "LongYAAL", "StreamLAAL (CA)", "LongYAAL (CA)"}
    assert 0.5 < result.latency["StreamLAAL"] < 4.0 and result.latency["StreamLAAL (CA)"] >= result.latency["StreamLAAL"]
    assert result.bleu.score >= result.offline_bleu.score - 10, (result.bleu.score, result.offline_bleu.score)
    assert "1 whole talks, committed words re-segmented" in result.format()
