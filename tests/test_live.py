"""Live sessions: LocalAgreement over re-decoded segments, append-only commits, pauses closing segments, and a
decoder slower than the audio skipping updates instead of falling behind (the demo model, lean engine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runner import defaults
from runner.data import load_test_set, preload
from runner.errors import OptionError, RunnerError
from runner.live import LocalAgreement, StreamOptions
from runner.live.session import StreamSession, replay
from runner.runner import Runner


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner(threads=2, search="lean")


@pytest.fixture(scope="module")
def utterances() -> list[np.ndarray]:
    return [u.waveform for u in preload(load_test_set(defaults.data_path(), "tst-COMMON"), 16000, limit=3).utterances]


def test_local_agreement_commits_the_shared_prefix_and_never_takes_it_back() -> None:
    agreement = LocalAgreement(2)
    assert agreement.update("ein".split()) == []  # one hypothesis agrees with nothing yet
    assert agreement.update("ein Hund".split()) == ["ein"]
    assert agreement.update("ein Hund läuft".split()) == ["Hund"]
    assert agreement.update("eine Katze läuft".split()) == []  # disagrees with what is committed: nothing new
    assert agreement.unstable() == "eine Katze läuft".split()
    assert agreement.finish("ein Hund läuft schnell".split()) == ["läuft", "schnell"]
    assert agreement.committed == "ein Hund läuft schnell".split()
    assert LocalAgreement(1).update(["a", "b"]) == ["a", "b"]
    with pytest.raises(ValueError):
        LocalAgreement(0)


def test_a_replayed_utterance_commits_append_only_and_ends_as_the_offline_translation(
        runner: Runner, utterances: list[np.ndarray]) -> None:
    """Without pauses closing segments, the last decode is the whole utterance's: the session's text is the
    offline translation whenever the early commits agreed with it, and every delta appends to the text."""
    equal = 0
    for waveform in utterances:
        session = runner.stream(StreamOptions(chunk_seconds=0.5, agreement=2, endpoint_ms=0))
        updates = replay(session, waveform, 16000, computation_aware=False)
        text = "".join(u.translation for u in updates)
        assert text == " ".join(session.translation) and updates[-1].final
        assert "".join(u.transcript for u in updates) == " ".join(session.transcript)
        offline = runner.translate(waveform, 16000)
        committed_early = [w for u in updates[:-1] for w in u.translation.split()]
        if offline.text.split()[:len(committed_early)] == committed_early:
            assert text == offline.text  # the final decode's words complete what was committed
            equal += 1
        first = next(u for u in updates if u.translation)
        assert first.audio_seconds <= len(waveform) / 16000  # words before the audio ended (or with its end)
    assert equal >= 1


def test_a_slow_decoder_skips_updates_and_a_pause_closes_the_segment(runner: Runner,
                                                                    utterances: list[np.ndarray]) -> None:
    """Chunks of 50 ms arrive faster than ESPnet's search decodes them: computation-aware replay decodes fewer times
    than there are chunks, each decode taking all the audio that arrived meanwhile, so an update's lag behind
    the audio stays within a decode or two instead of growing. Two utterances with a second of silence between
    are two segments; silence alone says nothing."""
    waveform, chunk = utterances[0], 0.05
    slow = Runner(threads=2)  # ESPnet's search: slower than 50 ms a decode
    updates = replay(slow.stream(StreamOptions(chunk_seconds=chunk, endpoint_ms=0)), waveform, 16000)
    assert len(updates) < len(waveform) / 16000 / chunk and updates[-1].final
    longest = max(u.compute_seconds for u in updates)
    assert longest > chunk  # the case under test: a decode outlasts a chunk
    for earlier, later in zip(updates, updates[1:-1]):
        assert later.audio_seconds - earlier.audio_seconds >= min(earlier.compute_seconds, 1.0) - chunk  # skipped
        assert later.emitted_seconds - later.audio_seconds <= 2 * longest + chunk  # no growing backlog
    talk = np.concatenate([utterances[0], np.zeros(16000, dtype=np.float32), utterances[1]])
    session = runner.stream(StreamOptions(chunk_seconds=0.5, endpoint_ms=500))
    updates = replay(session, talk, 16000)
    assert len([u for u in updates if u.final]) >= 2 and updates[-1].segment >= 1
    assert "".join(u.translation for u in updates) == " ".join(session.translation)
    silent = runner.stream(StreamOptions(chunk_seconds=0.5))
    assert replay(silent, np.zeros(16000 * 5, dtype=np.float32), 16000) == []  # silence forever: nothing, no growth


def test_stream_options_refuse_bad_values_naming_the_field() -> None:
    for field, values in {"chunk_seconds": {"chunk_seconds": 0.0}, "agreement": {"agreement": 0},
                          "max_segment_seconds": {"max_segment_seconds": 1.0}, "endpoint_ms": {"endpoint_ms": -1}}.items():
        with pytest.raises(OptionError, match=f"^{field}: "):
            StreamOptions(**values)


def test_the_live_page_example_runs_as_written(tmp_path: Path, utterances: list[np.ndarray]) -> None:
    """docs/live.md's example, on a talk.wav of two demo utterances: the deltas it prints as they come add up to
    the session's whole text, which it prints last."""
    import re
    import subprocess
    import sys

    import soundfile

    code = re.search(r"```python\n(.*?)```", (defaults.REPO_ROOT / "docs" / "live.md").read_text(), re.S).group(1)
    soundfile.write(tmp_path / "talk.wav", np.concatenate([utterances[0], np.zeros(8000, np.float32), utterances[1]]),
                    16000, subtype="PCM_16")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    full = done.stdout.rstrip("\n").splitlines()[-1]
    streamed = done.stdout.rstrip("\n")[:-len(full)].replace("\n", "")
    assert len(full.split()) >= 4 and streamed == full  # the deltas, printed as they came, add up to the text


def test_a_24_khz_stream_decodes_what_the_same_recording_gives_offline(runner: Runner,
                                                                        utterances: list[np.ndarray]) -> None:
    """OpenAI's realtime audio is 24 kHz PCM16 in 200 ms frames: the session keeps the stream's rate and resamples
    each segment whole, so a segment decoded once, at the end, is the offline translation of the recording."""
    from runner.audio import resample

    pcm = (np.clip(resample(utterances[1], 16000, 24000), -1, 1) * 32767).astype(np.int16)
    session = runner.stream(StreamOptions(chunk_seconds=30, max_segment_seconds=30, endpoint_ms=0))
    assert all(session.push(pcm[start:start + 4800], 24000) == [] for start in range(0, len(pcm), 4800))
    assert len(session.finish()) == 1
    assert " ".join(session.translation) == runner.translate(pcm, 24000).text
    with pytest.raises(RunnerError, match="16000 Hz after 24000 Hz"):
        session.push(np.zeros(1600, dtype=np.float32), 16000)


def _recording(runner: Runner, options: StreamOptions) -> tuple[StreamSession, list[float]]:
    """A session whose decodes note the seconds of audio each was given."""
    lengths: list[float] = []

    def translate(waveform: np.ndarray, rate: int) -> object:
        lengths.append(len(waveform) / rate)
        return runner.translate(waveform, rate)

    return StreamSession(translate, runner.sample_rate, options), lengths


def test_no_decode_is_longer_than_a_segment_however_much_one_push_brings(runner: Runner,
                                                                       utterances: list[np.ndarray]) -> None:
    talk = np.concatenate(utterances)  # about 10 s, pushed at once
    session, lengths = _recording(runner, StreamOptions(chunk_seconds=3.0, max_segment_seconds=3.0, endpoint_ms=0))
    updates = session.push(talk, 16000) + session.finish()
    assert len([u for u in updates if u.final]) == -(-len(talk) // (3 * 16000)) and updates[-1].final
    assert max(lengths) <= 3.0 and len(lengths) == len(updates)
    assert "".join(u.translation for u in updates) == " ".join(session.translation)


def test_each_sentence_of_a_talk_is_its_own_segment_starting_at_its_speech(runner: Runner,
                                                                          utterances: list[np.ndarray]) -> None:
    """Sentences 0.35 s apart, checked once a second: a check that lands after the next sentence began still
    closes the first at its pause (the first finished stretch of speech, not the last), and the next segment
    starts at its own speech, not in the pause before it, as the offline segmenter cuts it."""
    pause = np.zeros(int(0.35 * 16000), dtype=np.float32)
    talk = np.concatenate([piece for u in utterances for piece in (u, pause)])
    session, lengths = _recording(runner, StreamOptions(chunk_seconds=1.0, endpoint_ms=300))
    updates = replay(session, talk, 16000, computation_aware=False)
    finals = [u for u in updates if u.final]
    assert len(finals) == len(utterances) and [u.segment for u in finals] == list(range(len(utterances)))
    assert max(lengths) <= max(len(u) for u in utterances) / 16000 + 0.2  # never two sentences in one decode


def test_a_session_runs_every_plugin_its_runner_has(utterances: list[np.ndarray]) -> None:
    """A session decodes through its runner's `translate`, plugins and all: on dynamic int8, a segment decoded
    once at the end is that runner's offline translation, not the fp32 one's path."""
    int8 = Runner(threads=2, search="lean", plugins=["dynamic-int8"])
    session = int8.stream(StreamOptions(chunk_seconds=30, max_segment_seconds=30, endpoint_ms=0))
    assert session.push(utterances[2], 16000) == [] and len(session.finish()) == 1
    assert " ".join(session.translation) == int8.translate(utterances[2], 16000).text
    assert int8.conditions().plugin_labels() != "none"
