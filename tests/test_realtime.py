"""`/v1/realtime/translations`: OpenAI's Realtime Translation API over the demo model (lean engine).

In-process (Starlette's test client over the real app): the server's session commits exactly what the library's
`StreamSession` commits for the same audio; hostile events get OpenAI-shaped `error` events and leave the session
open; keys, origins, models and the session limit are checked on the upgrade; idle and overlong sessions are
closed with a reason; a client that vanishes frees its slot. Over the wire (`runner serve` in a child process):
the real `openai` client, paced as a live microphone, reads committed text before its audio ends.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse

from runner import defaults
from runner.audio import resample
from runner.data import load_test_set, preload
from runner.live import StreamOptions
from runner.serve import ServeLimits
from runner.serve.app import create_app, load_models
from runner.serve.batching import decoder_thread
from runner.serve.realtime import PATH, LiveLimits

KEY = "live-key"
FRAME = 4800  # 200 ms at 24 kHz


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    return load_models(search="lean", threads=2)


@pytest.fixture(scope="module")
def pcm() -> list[np.ndarray]:
    """The first two demo test utterances as 24 kHz PCM16, as a realtime client sends them."""
    utterances = preload(load_test_set(defaults.data_path(), "tst-COMMON"), 16000, limit=2).utterances
    return [(np.clip(resample(u.waveform, 16000, 24000), -1, 1) * 32767).astype(np.int16) for u in utterances]


def client(models: dict[str, Any], **live: Any) -> TestClient:
    app = create_app(models, ServeLimits(), api_key=KEY, warm=False, live=LiveLimits(**live))
    return TestClient(app, headers={"Authorization": f"Bearer {KEY}"})


def append(samples: np.ndarray, event_id: str | None = None) -> dict[str, Any]:
    event = {"type": "session.input_audio_buffer.append", "audio": base64.b64encode(samples.tobytes()).decode()}
    return {**event, "event_id": event_id} if event_id else event


def until_closed(ws: Any) -> list[dict[str, Any]]:
    events = []
    while not events or events[-1]["type"] != "session.closed":
        events.append(ws.receive_json())
    return events


def text(events: list[dict[str, Any]], kind: str = "session.output_transcript.delta") -> str:
    return "".join(e["delta"] for e in events if e["type"] == kind)


def test_the_servers_session_commits_what_the_librarys_does(models: dict[str, Any], pcm: list[np.ndarray]) -> None:
    """Two utterances with a second of silence between, sent as one append and then closed: the server pushes it to
    its session once and finishes it, as the library's session below does; the deltas (translation and, once the
    transcription is on, the ASR transcript) are the library's, and each event parses as the openai client's."""
    from openai.types.realtime import RealtimeTranslationServerEvent
    from pydantic import TypeAdapter

    talk = np.concatenate([pcm[0], np.zeros(24000, np.int16), pcm[1]])
    options = StreamOptions()
    runner = models["fp32"]

    def library() -> tuple[str, str]:
        session = runner.stream(options)
        updates = session.push(talk, 24000) + session.finish()
        return "".join(u.translation for u in updates), "".join(u.transcript for u in updates)

    expected, transcript = decoder_thread().submit(library).result()
    with client(models, max_append_bytes=len(talk) * 2, stream=options) as http, \
            http.websocket_connect(f"{PATH}?model=fp32") as ws:
        created = ws.receive_json()
        assert created["type"] == "session.created" and created["session"]["model"] == "fp32"
        ws.send_json({"type": "session.update", "session": {"audio": {"input": {"transcription": {"model": "x"}},
                                                                      "output": {"language": "de"}}}})
        assert ws.receive_json()["session"]["audio"]["input"]["transcription"] == {"model": "fp32"}
        ws.send_json(append(talk))
        ws.send_json({"type": "session.close"})
        events = until_closed(ws)
    assert len(expected.split()) >= 4 and text(events) == expected
    assert text(events, "session.input_transcript.delta") == transcript and transcript
    parse = TypeAdapter(RealtimeTranslationServerEvent).validate_python
    assert {type(parse(e)).__name__ for e in events} >= {"RealtimeTranslationOutputTranscriptDeltaEvent",
                                                        "RealtimeTranslationSessionClosedEvent"}
    elapsed = [e["elapsed_ms"] for e in events if "elapsed_ms" in e]
    assert all(ms % 200 == 0 for ms in elapsed) and elapsed == sorted(elapsed)


def test_hostile_events_get_error_events_and_the_session_goes_on(models: dict[str, Any]) -> None:
    bad = [("not json", None), ("[1, 2]", "type"), ('{"type": "response.create", "event_id": "e1"}', "type"),
           (json.dumps({"type": "session.input_audio_buffer.append", "audio": "%%%", "event_id": "e2"}), "audio"),
           (json.dumps({"type": "session.input_audio_buffer.append", "audio": 5}), "audio"),
           (json.dumps({"type": "session.input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()}),
            "audio"),
           (json.dumps({"type": "session.input_audio_buffer.append", "audio": "A" * 100_000}), "audio"),
           (json.dumps({"type": "session.update", "session": {"model": "other"}}), "session.model"),
           (json.dumps({"type": "session.update", "session": {"audio": {"output": {"language": "fr"}}}}),
            "session.audio.output.language"),
           (json.dumps({"type": "session.update", "session": "x"}), "session"),
           (json.dumps({"type": "session.update", "session": {"audio": {"output": "fr"}, "model": 3}}), "session.model")]
    crafted = [{"audio": {"output": "fr"}}, {"audio": ["input"]}, {"audio": {"input": "x", "output": None}}]
    with client(models, max_append_bytes=48_000) as http, http.websocket_connect(f"{PATH}?model=fp32") as ws:
        ws.receive_json()
        for frame, param in bad:
            ws.send_text(frame)
            event = ws.receive_json()
            assert event["type"] == "error" and event["error"]["param"] == param, (frame[:60], event)
            assert event["error"]["type"] == "invalid_request_error" and event["error"]["message"]
        for changes in crafted:  # not the objects OpenAI's schema has: nothing to change, the session goes on
            ws.send_json({"type": "session.update", "session": changes})
            assert ws.receive_json()["type"] == "session.updated"
        ws.send_bytes(b"\x00\x01")
        assert "JSON text frames" in ws.receive_json()["error"]["message"]
        ws.send_text('{"type": "response.create", "event_id": "e9"}')
        assert ws.receive_json()["error"]["event_id"] == "e9"
        ws.send_json(append(np.zeros(FRAME, np.int16)))
        ws.send_json({"type": "session.close"})
        assert [e["type"] for e in until_closed(ws)] == ["session.closed"]  # silence: nothing to say


def test_the_upgrade_checks_key_origin_model_and_the_session_limit(models: dict[str, Any]) -> None:
    with client(models, max_sessions=2) as http:
        for headers, query, status in [({"Authorization": "Bearer wrong"}, "?model=fp32", 401),
                                       ({"Origin": "http://evil.example"}, "?model=fp32", 403),
                                       ({}, "?model=whisper-1", 404), ({}, "", 400)]:
            with pytest.raises(WebSocketDenialResponse) as refused:
                with http.websocket_connect(PATH + query, headers=headers):
                    pass
            assert refused.value.status_code == status
            assert refused.value.json()["error"]["type"]  # OpenAI's error shape
        # A browser cannot set headers: it offers the key as a subprotocol, and gets "realtime" back.
        bare = TestClient(http.app)
        with bare.websocket_connect(f"{PATH}?model=fp32",
                                    subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"]) as ws:
            assert ws.accepted_subprotocol == "realtime" and ws.receive_json()["type"] == "session.created"
            with http.websocket_connect(f"{PATH}?model=fp32") as second:
                second.receive_json()
                with pytest.raises(WebSocketDenialResponse) as full:
                    with http.websocket_connect(f"{PATH}?model=fp32"):
                        pass
                assert full.value.status_code == 503 and "--max-live-sessions 2" in full.value.text
        with http.websocket_connect(f"{PATH}?model=fp32") as ws:  # the slots were freed
            assert ws.receive_json()["type"] == "session.created"
        assert "st_runner_live_sessions 0.0" in http.get("/metrics").text


def test_idle_and_overlong_sessions_are_closed_with_a_reason_and_a_vanished_client_frees_its_slot(
        models: dict[str, Any], pcm: list[np.ndarray]) -> None:
    with client(models, idle_seconds=1.0, max_session_seconds=3.0, max_sessions=1) as http:
        with http.websocket_connect(f"{PATH}?model=fp32") as ws:
            ws.receive_json()
            events = until_closed(ws)  # sends nothing
        assert events[0]["error"]["code"] == "idle_timeout" and events[-1]["type"] == "session.closed"
        with http.websocket_connect(f"{PATH}?model=fp32") as ws:
            ws.receive_json()
            started = time.monotonic()
            while time.monotonic() - started < 3.5:  # silence forever, on time
                ws.send_json(append(np.zeros(FRAME, np.int16)))
                time.sleep(0.2)
            events = until_closed(ws)
        assert [e["error"]["code"] for e in events if e["type"] == "error"] == ["session_expired"]
        assert not text(events)
        with http.websocket_connect(f"{PATH}?model=fp32") as ws:  # leaves mid-utterance, without session.close
            ws.receive_json()
            ws.send_json(append(pcm[0][:24000 * 2]))
        deadline = time.monotonic() + 30
        while http.get("/info").json()["live"]["open_sessions"] and time.monotonic() < deadline:
            time.sleep(0.1)
        with http.websocket_connect(f"{PATH}?model=fp32") as ws:
            assert ws.receive_json()["type"] == "session.created"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from benchmarks.live_server import live_server

    log = tmp_path_factory.mktemp("realtime") / "serve.log"
    # --header-seconds 2: a session outlives the head deadline of the connection it upgraded (a 408 written into
    # the WebSocket once corrupted its frames)
    with live_server(log, "--search", "lean", "--threads", "2", "--header-seconds", "2",
                     env={"ST_RUNNER_API_KEY": KEY}) as url:
        yield url


@pytest.mark.slow
def test_the_openai_client_reads_committed_text_before_its_audio_ends(served: str, pcm: list[np.ndarray]) -> None:
    """`openai` code written for OpenAI's realtime translation, with only its base URL changed, sending 200 ms frames
    in real time: translation deltas arrive while audio is still being sent, and they end as whole words."""
    from openai import AsyncOpenAI

    talk = np.concatenate([pcm[0], np.zeros(12000, np.int16), pcm[1], np.zeros(24000, np.int16)])

    async def session() -> tuple[list[Any], float]:
        api = AsyncOpenAI(api_key=KEY, websocket_base_url=served.replace("http", "ws") + "/v1")
        events, last_sent = [], 0.0
        async with api.realtime.translations.connect(model="fp32") as connection:
            async def send() -> None:
                nonlocal last_sent
                for start in range(0, len(talk), FRAME):
                    await connection.send(append(talk[start:start + FRAME]))
                    await asyncio.sleep(0.2)
                last_sent = time.monotonic()
                await connection.send({"type": "session.close"})

            sender = asyncio.create_task(send())
            async for event in connection:
                events.append((time.monotonic(), event))
                if event.type == "session.closed":
                    break
            await sender
        return events, last_sent

    events, last_sent = asyncio.run(session())
    deltas = [(at, e) for at, e in events if e.type == "session.output_transcript.delta"]
    assert deltas and deltas[0][0] < last_sent  # text while the speaker is still speaking
    assert type(deltas[0][1]).__name__ == "RealtimeTranslationOutputTranscriptDeltaEvent"
    words = "".join(e.delta for _, e in deltas)
    assert len(words.split()) >= 4 and words == words.strip() and "  " not in words


@pytest.mark.slow
def test_a_plain_websocket_client_is_refused_without_the_key_over_the_wire(served: str) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as refused:
        connect(served.replace("http", "ws") + f"{PATH}?model=fp32").close()
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body)["error"]["type"] == "authentication_error"
    with connect(served.replace("http", "ws") + f"{PATH}?model=fp32",
                 additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        assert json.loads(ws.recv())["type"] == "session.created"
        ws.send(json.dumps({"type": "session.close"}))
        assert json.loads(ws.recv())["type"] == "session.closed"
