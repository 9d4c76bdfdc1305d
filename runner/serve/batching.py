"""The server's decoder queue: requests for one model that arrive within a window are decoded together.

One decode (a batch, or one request) runs at a time, across all models the server holds: they
share the CPU, and a latency measured while another decode runs would not be the model's. The
oldest waiting request opens a batch; requests for the same model that arrive within
`max_wait_ms` of it join, up to `max_batch`, and are decoded in one batched beam search
(`Runner.translate_batch`). Requests wait in one arrival-ordered queue of bounded length; a
request that finds it full gets 503 with a Retry-After estimate.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from runner.decode import Translation, deadline
from runner.errors import AudioTooShortError, DecodeTimeoutError, RunnerError
from runner.runner import Runner
from runner.serve.upload import ApiError, Audio, ServeLimits


_decoder: ThreadPoolExecutor | None = None
logger = logging.getLogger("runner.serve")
AUDIO_TOO_SHORT = "audio_too_short"  # ApiError.code of audio the frontend or encoder cannot take
GONE_POLL_S = 0.25  # how often a waiting request checks that its client is still there


def decoder_thread() -> ThreadPoolExecutor:
    """The one thread that makes every torch call of a serving process: loading, warm-up and decoding.

    PyTorch's OpenMP gives each OS thread that runs parallel work its own team of threads. Once two
    threads have teams (models loaded on the main thread, decoded on a worker), there are more
    OpenMP threads than cores, libgomp throttles its spin-waiting, and every decode here took about
    3x as long (0.47 s instead of 0.16 s per demo utterance on 2 cores): what capped the one-at-a-time
    server near three requests a second. Keeping all torch work on this thread avoids it.
    """
    global _decoder
    if _decoder is None:
        _decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runner-decode")
    return _decoder


def stop_decoder_thread() -> None:
    """Let the decoder thread finish its work and exit; the next `decoder_thread()` starts a new one.

    Its OpenMP team goes with it. A program that served (or loaded models for serving) in-process and then
    runs torch on its own threads gets their full speed back: while two teams exist, libgomp throttles the
    spin-waiting of both, and small ops on the other thread ran 1.6-1.9x slower (measured on 2 cores).
    """
    global _decoder
    if _decoder is not None:
        _decoder.shutdown(wait=True)
        _decoder = None


@dataclass
class Decoded:
    """One request's result: its translation, how long it waited, and the batch it rode in."""

    translation: Translation
    queue_seconds: float
    batch_id: int
    batch_size: int


@dataclass
class _Job:
    model: str
    audio: Audio
    arrived: float
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Decodes queued requests one batch at a time on one decoder thread.

    Args:
        models: model name -> loaded Runner.
        limits: `max_queue`, `max_batch` and `max_wait_ms` apply.
        on_batch: called with (model, batch size) as each batch starts decoding (metrics).
    """

    def __init__(self, models: dict[str, Runner], limits: ServeLimits,
                 on_batch: Callable[[str, int], None] | None = None) -> None:
        self.models, self.limits, self.on_batch = models, limits, on_batch
        self._jobs: deque[_Job] = deque()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self.decoding = 0  # requests in the batch being decoded
        self.batches = 0
        self.dropped = 0  # requests whose client went away before they were decoded
        self._seconds_per_request = 1.0  # recent decode time per request, for Retry-After

    @property
    def waiting(self) -> int:
        """Requests queued behind the batch being decoded."""
        return len(self._jobs)

    def run_on_decoder(self, job: Callable[[], Any]) -> asyncio.Future:
        """Run `job` on the decoder thread (warm-up uses it, so it never overlaps a decode)."""
        return asyncio.get_running_loop().run_in_executor(decoder_thread(), job)

    async def submit(self, model: str, audio: Audio,
                     gone: Callable[[], Awaitable[bool]] | None = None) -> Decoded:
        """Queue one request and wait for its result; ApiError 503 when the queue is full.

        Args:
            model: the model's name; audio: the request's audio.
            gone: says whether the client has disconnected (polled while the request waits); a request
                whose client has gone is dropped from the queue before it is decoded.
        """
        # Room for one batch being decoded (or gathered) and `max_queue` requests waiting behind it.
        if len(self._jobs) + self.decoding >= self.limits.max_queue + self.limits.max_batch:
            retry = max(1, math.ceil(self._seconds_per_request * (len(self._jobs) + self.decoding)
                                     / max(1, self.limits.max_batch)))
            raise ApiError(503, f"server busy: {len(self._jobs) + self.decoding} request(s) already queued or decoding "
                                f"(--max-queue {self.limits.max_queue}); retry in about {retry} s",
                           {"Retry-After": str(retry)})
        self._start()
        job = _Job(model, audio, time.perf_counter(), asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._wake.set()
        try:
            if gone is None:
                return await job.future
            while True:
                done, _ = await asyncio.wait({job.future}, timeout=GONE_POLL_S)
                if done:
                    return job.future.result()
                if await gone():
                    job.future.cancel()
                    self.dropped += 1
                    raise ApiError(400, "client disconnected before its request was decoded")
        except asyncio.CancelledError:  # the caller was cancelled (a client leaving a stream): not decoded
            if job.future.cancel():
                self.dropped += 1
            raise

    def _start(self) -> None:
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            if not self._jobs:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [job for job in await self._gather() if not job.future.done()]  # clients gone: dropped
            if not batch:
                continue
            self.batches += 1
            batch_id = self.batches
            self.decoding = len(batch)
            if self.on_batch is not None:
                self.on_batch(batch[0].model, len(batch))
            started = time.perf_counter()
            runner = self.models[batch[0].model]
            try:
                results = await self.run_on_decoder(lambda: decode_batch(runner, [job.audio for job in batch], self.limits))
            except Exception as error:  # the decoder itself failed: every request of the batch gets it
                results = [error] * len(batch)
            finally:
                self.decoding = 0
            elapsed = time.perf_counter() - started
            self._seconds_per_request = 0.8 * self._seconds_per_request + 0.2 * elapsed / len(batch)
            for job, result in zip(batch, results):
                if job.future.done():  # the client went away
                    continue
                if isinstance(result, Exception):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(Decoded(result, started - job.arrived, batch_id, len(batch)))

    async def _gather(self) -> list[_Job]:
        """The oldest request and those for the same model that join it within the window."""
        first = self._jobs[0]
        deadline = first.arrived + self.limits.max_wait_ms / 1000
        while self._count(first.model) < self.limits.max_batch:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                break
        batch = [job for job in self._jobs if job.model == first.model][:self.limits.max_batch]
        for job in batch:
            self._jobs.remove(job)
        return batch

    def _count(self, model: str) -> int:
        return sum(job.model == model for job in self._jobs)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        for job in self._jobs:
            if not job.future.done():
                job.future.set_exception(ApiError(503, "server shutting down"))


def decode_batch(runner: Runner, audios: list[Audio],
                 limits: ServeLimits | None = None) -> list[Translation | ApiError]:
    """Each request's translation, or the ApiError that answers it; one request's failure is its own.

    A batch that fails for any reason (one request's audio too short for the encoder, say, or a fault
    in the decoder) is decoded again one request at a time, so each request gets its own answer and
    its batch-mates theirs. Each decode stops at its deadline (`ServeLimits.decode_seconds`): 503.
    """
    limits = limits or ServeLimits()
    if len(audios) > 1:
        try:
            with deadline(max(limits.decode_seconds(a.seconds) for a in audios)):
                return runner.translate_batch([a.waveform for a in audios], [a.sample_rate for a in audios])
        except Exception:  # noqa: BLE001 - whatever it was, each request is retried alone
            logger.debug("a batch of %d failed; decoding its requests one at a time", len(audios), exc_info=True)
    return [_translate_one(runner, audio, limits.decode_seconds(audio.seconds)) for audio in audios]


def _translate_one(runner: Runner, audio: Audio, seconds: float) -> Translation | ApiError:
    try:
        with deadline(seconds):
            return runner.translate(audio.waveform, audio.sample_rate)
    except AudioTooShortError as error:  # shorter than the STFT window, or too few frames to subsample
        return ApiError(422, f"{error} ({audio.seconds:.3f} s of audio)", code=AUDIO_TOO_SHORT)
    except DecodeTimeoutError as error:
        return ApiError(503, f"decoding took longer than {seconds:g} s for {audio.seconds:.1f} s of audio "
                             f"(--max-decode-seconds) and was stopped: {error}")
    except RunnerError as error:
        return ApiError(422, str(error))
    except Exception as error:  # noqa: BLE001 - a fault of the server, not of the request: logged, 500
        logger.exception("decoding a request failed")
        return ApiError(500, f"internal error while decoding ({type(error).__name__}); the server logged it")
