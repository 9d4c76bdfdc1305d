"""The web page at / in headless Chromium: upload a demo utterance, read the translation off the page."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import Utterance

pytestmark = pytest.mark.slow  # the fast tier (-m 'not slow') leaves this module out

SCREENSHOTS = Path(__file__).resolve().parent.parent / "results" / "screenshots"


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "Debian's chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it: a missing browser there is a broken set-up, not a skip
        pytest.skip(message)
    return path


def microphone_page(playwright: object, server: str, microphone: Path) -> tuple[object, object]:
    """Headless Chromium whose fake microphone plays the WAV `microphone` (looped), on the page at `server`."""
    browser = playwright.chromium.launch(executable_path=chromium(), args=[
        "--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}"])
    page = browser.new_context(permissions=["microphone"]).new_page()
    page.goto(server)
    return browser, page


@pytest.fixture()
def page(server: str):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.goto(server)
        yield page
        browser.close()


def test_page_translates_an_uploaded_utterance(page, served_utterances: dict[str, list[Utterance]]) -> None:
    from playwright.sync_api import expect

    for model in ("fp32", "dynamic-int8"):
        utterance = served_utterances[model][2]
        page.select_option("#model", model)
        expect(page.locator("#model-info")).to_contain_text("parameters, hop 160")
        expect(page.locator("#model-info")).to_contain_text("threads, on cpu")
        page.set_input_files("#file", str(utterance.path))
        page.click("#translate")
        expect(page.locator("#status")).to_contain_text("done in", timeout=60_000)
        assert page.inner_text("#translation") == utterance.translation
        assert page.inner_text("#transcript") == utterance.transcript
        assert "st_search" in page.inner_text("#latency")
        plugins = "none (fp32)" if model == "fp32" else model
        expect(page.locator("#conditions")).to_contain_text(f"model {model} on cpu: plugins {plugins}; hop 160")
        backend = "none" if model == "fp32" else r"(?!none)\w+"  # int8 names the backend it packed weights for
        assert re.search(rf"int8 backend {backend}; .*; search steps asr \d+, st \d+; ", page.inner_text("#conditions"))
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"serve-page-{model}.png"), full_page=True)


def test_page_shows_the_servers_error(page, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("these are not samples")
    page.set_input_files("#file", str(not_audio))
    page.click("#translate")
    expect(page.locator("#status")).to_contain_text("415: not a readable audio file")
    expect(page.locator("#status")).to_have_class("error")


def test_page_records_from_the_microphone(server: str, served_utterances: dict[str, list[Utterance]],
                                          tmp_path: Path) -> None:
    """Chromium's fake microphone plays a demo utterance; the page records it as WAV and translates it."""
    import soundfile
    from playwright.sync_api import expect, sync_playwright

    utterance = served_utterances["fp32"][3]
    speech, rate = soundfile.read(str(utterance.path), dtype="int16")
    microphone = tmp_path / "microphone.wav"
    soundfile.write(str(microphone), speech, rate, subtype="PCM_16")
    with sync_playwright() as playwright:
        browser, page = microphone_page(playwright, server, microphone)
        page.click("#record")
        expect(page.locator("#record")).to_have_text("Stop")
        page.wait_for_timeout(3000)
        page.click("#record")
        expect(page.locator("#status")).to_contain_text("recording.wav ready")
        page.click("#translate")
        expect(page.locator("#status")).to_contain_text("done in", timeout=60_000)
        conditions = page.inner_text("#conditions")
        heard = page.inner_text("#transcript").split()
        browser.close()
    assert float(re.search(r"([\d.]+) s of audio", conditions).group(1)) > 2.0
    # The fake device loops the file from wherever it is when recording starts, at the browser's own
    # rate: most of the words come back, not necessarily the exact hypothesis.
    expected = utterance.transcript.split()
    assert len(set(heard) & set(expected)) >= 0.6 * len(set(expected)), (heard, expected)


def test_page_asks_for_the_api_key_once(tmp_path: Path, served_utterances: dict[str, list[Utterance]]) -> None:
    """With `runner serve --api-key`, the page prompts once, then sends the key with every request."""
    from playwright.sync_api import expect, sync_playwright

    from conftest import live_server

    utterance = served_utterances["fp32"][0]
    prompts = []
    with live_server(tmp_path / "serve.log", "--threads", "1", env={"ST_RUNNER_API_KEY": "page-key"}) as url, \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page()
        page.on("dialog", lambda dialog: (prompts.append(dialog.message), dialog.accept("page-key")))
        page.goto(url)
        expect(page.locator("#model-info")).to_contain_text("parameters")
        for _ in range(2):
            page.set_input_files("#file", str(utterance.path))
            page.click("#translate")
            expect(page.locator("#status")).to_contain_text("done in", timeout=60_000)
            assert page.inner_text("#translation") == utterance.translation
        browser.close()
    assert prompts == ["This server needs an API key:"]


def test_page_shows_a_long_recordings_segments_and_offers_subtitles(page, tmp_path: Path) -> None:
    """25 s of a demo talk: the server cuts it by VAD; its segments appear with their times, SRT/WebVTT download."""
    import numpy as np
    import pysubs2
    import soundfile
    from playwright.sync_api import expect

    from runner import defaults

    talk = sorted((defaults.data_path() / "en-de/data/tst-HE/wav").iterdir())[0]
    samples, rate = soundfile.read(str(talk), dtype="float32")
    recording = tmp_path / "talk.wav"
    soundfile.write(str(recording), np.asarray(samples[:25 * rate]), rate, subtype="PCM_16")
    page.select_option("#model", "fp32")
    page.set_input_files("#file", str(recording))
    page.click("#translate")
    expect(page.locator("#status")).to_contain_text("done in", timeout=120_000)
    rows = page.locator("#segments tbody tr")
    assert rows.count() >= 3
    texts = [rows.nth(i).locator("td").nth(2).inner_text() for i in range(rows.count())]
    assert page.inner_text("#translation") == " ".join(t for t in texts if t)
    assert "segmentation (VAD)" in page.inner_text("#latency")
    with page.expect_download() as download:
        page.click("#download-srt")
    subtitles = pysubs2.load(download.value.path(), format_="srt")
    assert [e.plaintext for e in subtitles] == texts
    assert [round(e.start / 1000, 2) for e in subtitles] == [float(rows.nth(i).locator("td").nth(0).inner_text())
                                                             for i in range(rows.count())]
    page.screenshot(path=str(SCREENSHOTS / "serve-page-long.png"), full_page=True)


def test_page_translates_live_from_the_microphone(server: str, served_utterances: dict[str, list[Utterance]],
                                                  tmp_path: Path) -> None:
    """Live mode: Chromium's fake microphone plays two demo utterances; committed translation appears on the page
    while the recording is still playing (before its duration has passed), then Stop closes the session."""
    import time

    import numpy as np
    import soundfile
    from playwright.sync_api import expect, sync_playwright

    parts = [soundfile.read(str(u.path), dtype="int16")[0] for u in served_utterances["fp32"][:2]]
    speech = np.concatenate([parts[0], np.zeros(8000, np.int16), parts[1], np.zeros(16000, np.int16)])
    microphone = tmp_path / "microphone.wav"
    soundfile.write(str(microphone), speech, 16000, subtype="PCM_16")
    with sync_playwright() as playwright:
        browser, page = microphone_page(playwright, server, microphone)
        expect(page.locator("#model-info")).to_contain_text("parameters")
        page.click("#live")
        started = time.monotonic()
        expect(page.locator("#live")).to_have_text("Stop live")
        page.wait_for_function("document.getElementById('translation').textContent.trim().split(' ').length >= 2",
                               timeout=60_000)
        first_words = time.monotonic() - started
        page.click("#live")
        expect(page.locator("#status")).to_contain_text("live session closed", timeout=60_000)
        translation, transcript = page.inner_text("#translation"), page.inner_text("#transcript")
        browser.close()
    assert first_words < len(speech) / 16000, first_words  # words while the speaker was still speaking
    assert len(translation.split()) >= 4 and len(transcript.split()) >= 4
