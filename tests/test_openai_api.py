"""The OpenAI audio API of `runner serve`, called by the real `openai` client against a live server.

A recording longer than one segment (the first 25 s of a demo talk, which the server cuts by VAD) is
translated and transcribed in all five response formats; every format carries the segments
`Runner.translate_long` gives for the same audio in-process; errors come in OpenAI's shape with its
status codes; /translate answers long audio with its segments.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from benchmarks.live_server import live_server
from runner import defaults
from runner.runner import Runner

pytestmark = pytest.mark.slow  # the fast tier (-m 'not slow') leaves this module out

KEY = "test-key"


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    talk = sorted((defaults.data_path() / "en-de/data/tst-HE/wav").iterdir())[0]
    samples, rate = soundfile.read(str(talk), dtype="float32")
    samples = samples[:25 * rate]
    path = tmp_path_factory.mktemp("recording") / "talk.wav"
    soundfile.write(str(path), samples, rate, subtype="PCM_16")
    return path, soundfile.read(str(path), dtype="float32")[0]  # as the server reads the upload


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("openai") / "serve.log"
    with live_server(log, "--search", "lean", "--max-batch", "4", "--threads", "2",
                     env={"ST_RUNNER_API_KEY": KEY}) as base:
        yield base


@pytest.fixture(scope="module")
def expected(recording: tuple[Path, np.ndarray]) -> object:
    return Runner(threads=2, search="lean").translate_long(recording[1], 16000, batch_size=4)


def client(url: str, key: str = KEY):  # noqa: ANN201 - the openai client
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def test_every_response_format_of_both_tasks(url: str, recording: tuple[Path, np.ndarray], expected: object) -> None:
    import pysubs2

    api = client(url)
    assert [m.id for m in api.models.list().data] == ["fp32"]
    assert len(expected.segments) >= 3  # the recording is cut, not decoded whole
    for task, create in (("translate", api.audio.translations.create), ("transcribe", api.audio.transcriptions.create)):
        texts = [s.text if task == "translate" else s.source_text for s in expected.segments]
        with recording[0].open("rb") as file:
            assert create(model="fp32", file=file).text == " ".join(texts), task
        with recording[0].open("rb") as file:
            assert create(model="fp32", file=file, response_format="text").strip() == " ".join(texts)
        for fmt in ("srt", "vtt"):
            with recording[0].open("rb") as file:
                subtitles = pysubs2.SSAFile.from_string(create(model="fp32", file=file, response_format=fmt))
            assert [e.plaintext for e in subtitles] == texts, (task, fmt)
            assert [(e.start, e.end) for e in subtitles] == [(round(s.start * 1000), round(s.end * 1000))
                                                             for s in expected.segments]
        with recording[0].open("rb") as file:
            verbose = create(model="fp32", file=file, response_format="verbose_json", prompt="ignored",
                             temperature=0.3)
        assert verbose.duration == pytest.approx(25.0, abs=0.01)
        assert verbose.language == ("de" if task == "translate" else "en")
        assert [(s.id, s.start, s.end, s.text) for s in verbose.segments] == [
            (s.id, s.start, s.end, text) for s, text in zip(expected.segments, texts)]


def test_errors_come_in_openais_shape(url: str, recording: tuple[Path, np.ndarray]) -> None:
    import openai

    api = client(url)
    with recording[0].open("rb") as file, pytest.raises(openai.NotFoundError) as missing:
        api.audio.translations.create(model="whisper-1", file=file)
    assert "not served here" in missing.value.body["message"] and missing.value.body["type"] == "not_found_error"
    with recording[0].open("rb") as file, pytest.raises(openai.BadRequestError) as bad:
        api.audio.translations.create(model="fp32", file=file, response_format="xml")
    assert "response_format 'xml'" in bad.value.body["message"]
    with recording[0].open("rb") as file, pytest.raises(openai.AuthenticationError):
        client(url, "wrong").audio.translations.create(model="fp32", file=file)
    silence = io.BytesIO()
    soundfile.write(silence, np.zeros(16000 * 25, dtype=np.float32), 16000, format="WAV")
    silence.name = "silence.wav"
    assert api.audio.translations.create(model="fp32", file=silence).text == ""  # no speech: 200, empty text


def test_translate_answers_long_audio_by_segments(url: str, recording: tuple[Path, np.ndarray],
                                                  expected: object) -> None:
    import urllib.request

    request = urllib.request.Request(f"{url}/translate", data=recording[0].read_bytes(),
                                     headers={"Authorization": f"Bearer {KEY}"}, method="POST")
    body = json.loads(urllib.request.urlopen(request, timeout=120).read())
    assert [(s["start"], s["end"], s["text"]) for s in body["segments"]] == [
        (s.start, s.end, s.text) for s in expected.segments]
    assert body["translation"] == expected.text and body["latency"]["segments"] == len(expected.segments)
