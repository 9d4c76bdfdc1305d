"""`runner serve --ray`: the same HTTP API as a Ray Serve deployment on a local cluster started by the command."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

from conftest import Utterance, live_server

pytestmark = pytest.mark.slow  # the fast tier (-m 'not slow') leaves this module out

pytest.importorskip("ray.serve")


def test_ray_serve_answers_like_the_server(tmp_path: Path, served_utterances: dict[str, list[Utterance]]) -> None:
    """Two replicas of the demo model (one CPU each) behind Ray's proxy: translations, bad input, key, Host, metrics."""
    utterances = served_utterances["fp32"]
    short = io.BytesIO()
    soundfile.write(short, np.zeros(300, dtype=np.float32), 16000, format="WAV", subtype="PCM_16")
    key = {"Authorization": "Bearer ray-key"}
    with live_server(tmp_path / "serve.log", "--ray", "--replicas", "2", "--threads", "1", "--search", "lean",
                     "--max-batch", "4", "--max-wait-ms", "50", env={"ST_RUNNER_API_KEY": "ray-key"}) as url:

        async def send_all() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=300, headers=key) as client:
                return await asyncio.gather(*[client.post(f"{url}/translate", content=u.path.read_bytes())
                                              for u in utterances * 2])

        responses = asyncio.run(send_all())
        assert [r.status_code for r in responses] == [200] * len(utterances) * 2, [r.text for r in responses]
        for utterance, response in zip(utterances * 2, responses):
            assert response.json()["translation"] == utterance.translation
            assert response.json()["config"]["threads"] == 1
        assert httpx.post(f"{url}/translate", content=utterances[0].path.read_bytes()).status_code == 401
        bad = httpx.post(f"{url}/translate", content=b"not audio", headers=key)
        assert bad.status_code == 415 and "not a readable audio file" in bad.json()["error"]
        too_short = httpx.post(f"{url}/translate", content=short.getvalue(), headers=key, timeout=120)
        assert too_short.status_code == 422 and "too short" in too_short.json()["error"]
        rebound = httpx.get(f"{url}/info", headers={**key, "Host": "evil.example", "Origin": "http://evil.example"})
        assert rebound.status_code == 421 and "evil.example" in rebound.json()["error"]  # DNS rebinding
        assert httpx.get(f"{url}/metrics", headers=key).text.startswith("# HELP st_runner_requests_total")
        assert (tmp_path / "serve.log").read_text().count("serving on Ray (2 replica(s))") == 1
