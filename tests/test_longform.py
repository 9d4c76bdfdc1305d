"""Whole recordings: Silero VAD segmentation, long-form translation with subtitles, IWSLT-style evaluation.

On the demo corpus's real talks (each a file of 20 sentences with pauses, cut by its MuST-C YAML): the VAD
finds the YAML's segments, at any sample rate; each translated segment is what `Runner.translate` gives
for that span alone; SRT, WebVTT, JSON and text come out right and parse back; whole talks re-aligned by
mweralign score within 3 BLEU of the given segmentation; bad options are one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from typer.testing import CliRunner

from runner import defaults
from runner.audio import resample
from runner.cli import app
from runner.data import load_test_set
from runner.errors import OptionError
from runner.longform.iwslt import evaluate_talks, realign
from runner.runner import Runner
from runner.longform.segment import SegmentOptions, segment

pytestmark = pytest.mark.slow  # the fast tier (-m 'not slow') leaves this module out

CLI = CliRunner()
SPLIT = defaults.data_path() / "en-de/data/tst-HE"


@pytest.fixture(scope="module")
def talk() -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The first tst-HE talk and its YAML segments (start, end)."""
    path = sorted((SPLIT / "wav").iterdir())[0]
    samples, rate = soundfile.read(str(path), dtype="float32")
    assert rate == 16000
    cuts = [(c["offset"], c["offset"] + c["duration"]) for c in yaml.safe_load((SPLIT / "txt/tst-HE.yaml").read_text())
            if c["wav"] == path.name]
    return samples, cuts


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner(threads=2, search="lean")


def _matches(spans: list, cuts: list[tuple[float, float]]) -> bool:
    """One span per YAML segment, each span's middle inside its segment and its ends within 0.5 s of the segment's
    (the VAD keeps 200 ms of padding; the YAML's own margins differ)."""
    return len(spans) == len(cuts) and all(
        c[0] < (s.start + s.end) / 2 < c[1] and abs(s.start - c[0]) < 0.5 and abs(s.end - c[1]) < 0.5
        for s, c in zip(spans, cuts))


@pytest.mark.parametrize("rate", [16000, 8000, 44100])
def test_vad_finds_the_talks_segments_at_any_rate(talk: tuple[np.ndarray, list], rate: int) -> None:
    samples, cuts = talk
    threads = torch.get_num_threads()
    spans = segment(resample(samples, 16000, rate), rate)
    assert torch.get_num_threads() == threads  # silero_vad sets torch's threads when imported; not left so
    assert _matches(spans, cuts)
    assert segment(np.zeros(16000 * 30, dtype=np.float32), 16000) == []  # no speech, no segment


def test_fixed_windows_and_long_speech_are_cut_at_the_limit(talk: tuple[np.ndarray, list]) -> None:
    samples, _ = talk
    windows = segment(samples, 16000, SegmentOptions("fixed", max_seconds=20.0))
    assert [round(w.start) for w in windows] == list(range(0, int(len(samples) / 16000) + 1, 20))
    assert windows[-1].end == pytest.approx(len(samples) / 16000)
    no_pauses = samples[np.abs(samples) > 1e-3]  # the talk with its pauses removed: speech for ~40 s
    assert all(s.seconds <= 8.0 + 0.4 for s in segment(no_pauses, 16000, SegmentOptions(max_seconds=8.0)))
    with pytest.raises(OptionError, match="segmenter: unknown segmenter 'silence'"):
        SegmentOptions("silence")


def test_each_segment_is_translated_as_alone_and_subtitles_parse_back(runner: Runner,
                                                                      talk: tuple[np.ndarray, list]) -> None:
    import pysubs2

    samples, _ = talk
    result = runner.translate_long(samples[:16000 * 20], 16000, batch_size=4)
    assert result.batch_size == 4 and len(result.segments) >= 4
    for item in result.segments:
        alone = runner.translate(samples[int(round(item.start * 16000)):int(round(item.end * 16000))], 16000)
        assert (item.text, item.source_text) == (alone.text, alone.source_text)
    for fmt in ("srt", "vtt"):
        parsed = pysubs2.SSAFile.from_string(result.subtitles(fmt))
        assert [(e.start, e.end, e.plaintext) for e in parsed] == [
            (round(s.start * 1000), round(s.end * 1000), s.text) for s in result.segments]
    assert result.subtitles("txt").splitlines() == [s.text for s in result.segments]
    assert json.loads(result.subtitles("json"))["segments"][0]["text"] == result.segments[0].text
    assert runner.translate_long(np.zeros(16000 * 5, dtype=np.float32), 16000).segments == []


def test_translate_audio_writes_every_format(tmp_path: Path, talk: tuple[np.ndarray, list]) -> None:
    import pysubs2

    audio = tmp_path / "talk.flac"
    soundfile.write(str(audio), talk[0][:16000 * 12], 16000)
    for out in (tmp_path / "talk.srt", tmp_path / "talk.vtt", tmp_path / "talk.json"):
        result = CLI.invoke(app, ["translate", "--audio", str(audio), "--search", "lean", "--threads", "2",
                                  "--no-progress", "--out", str(out)])
        assert result.exit_code == 0, result.output
        if out.suffix == ".json":
            assert len(json.loads(out.read_text())["segments"]) >= 2
        else:
            assert len(pysubs2.load(str(out))) >= 2 and out.read_text().startswith("WEBVTT" if out.suffix == ".vtt" else "1\n")
    result = CLI.invoke(app, ["translate", "--audio", str(audio), "--out-format", "txt", "--no-progress"])
    assert result.exit_code == 0 and len(result.stdout.strip().splitlines()) >= 2


@pytest.mark.parametrize(("args", "message"), [
    (["--out-format", "xml"], "error: --out-format: unknown format 'xml'; one of json, srt, vtt, txt"),
    (["--segmenter", "yaml"], "is a recording without segments of its own; use vad or fixed"),
    (["--segmenter", "silence"], "error: --segmenter: unknown segmenter 'silence'; one of vad, fixed, yaml"),
    (["--max-segment", "0.5"], "error: --max-segment: must be over 1 second, got 0.5"),
])
def test_bad_long_form_options_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    audio = tmp_path / "a.wav"
    soundfile.write(str(audio), np.zeros(16000, dtype=np.float32), 16000)
    result = CLI.invoke(app, ["translate", "--audio", str(audio), *args])
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1


def test_realign_cuts_a_talk_into_its_reference_segments() -> None:
    references = ["Der Hund läuft schnell.", "Die Katze schläft im Haus.", "Ein Vogel singt."]
    assert realign(references, " ".join(references)) == references
    assert realign(references, "") == ["", "", ""]


def test_whole_talks_with_vad_score_within_3_bleu_of_the_given_segmentation(runner: Runner) -> None:
    """The first two tst-COMMON talks (40 segments); docs/longform.md has both whole splits."""
    test_set = load_test_set(defaults.data_path(), "tst-COMMON")
    test_set.segments[:] = test_set.segments[:40]
    given = runner.evaluate(split="tst-COMMON", limit=40, batch_size=8, progress=False)
    talks = evaluate_talks(runner, test_set, batch_size=8)
    assert talks.talks == 2 and talks.references == 40 and len(talks.hypotheses) == 40
    assert abs(talks.bleu.score - given.bleu.score) <= 3.0, (talks.bleu.score, given.bleu.score)
    assert "re-aligned to 40 reference segments by mweralign" in talks.format()



def test_a_file_read_a_block_at_a_time_gives_the_whole_reads_segments(runner: Runner, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Three tst-HE talks (190 s) as one FLAC, read in 60 s blocks: the same segments, at the same times, with the
    same translations as the whole recording in memory, and no read of the file longer than one window."""
    from runner import audio as audio_module
    from runner.longform.recording import translate_file
    from runner.longform.segment import CONTEXT_SECONDS

    audio = np.concatenate([soundfile.read(str(p), dtype="float32")[0] for p in sorted((SPLIT / "wav").iterdir())[:3]])
    path = tmp_path / "three-talks.flac"
    soundfile.write(str(path), audio, 16000)
    reads: list[int] = []
    real = audio_module.read_audio

    def counted(file: Path, start: int = 0, frames: int = -1) -> tuple[np.ndarray, int]:
        reads.append(frames)
        return real(file, start, frames)

    monkeypatch.setattr(audio_module, "read_audio", counted)
    streamed = translate_file(runner, path, block_seconds=60.0)
    whole = runner.translate_long(audio, 16000)
    assert [(s.start, s.end, s.text) for s in streamed.segments] == [(s.start, s.end, s.text) for s in whole.segments]
    assert len(reads) >= 3 and max(reads) <= (60.0 + 20.0 + CONTEXT_SECONDS) * 16000
    assert streamed.duration == pytest.approx(len(audio) / 16000)
    with pytest.raises(OptionError, match="^block_seconds: must be at least 3 segments"):
        translate_file(runner, path, block_seconds=30.0)
