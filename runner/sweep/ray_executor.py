"""`runner sweep --executor ray`: the same sweep, its runs (or utterance shards) as Ray tasks.

A latency sweep sends each run (all its repeats) to one worker as one task, which reserves
`threads` CPUs, so two timed runs never share a core. A quality pass (`measure: quality`)
splits the test subset into contiguous shards, decodes them on any workers, and computes one
corpus BLEU over the merged hypotheses. Model and data paths must be readable on every worker
(the same install, or shared storage); each worker checks the content hashes of what it loaded
against the driver's, so a different copy is an error, not a silently different figure.

A task whose worker dies is submitted once more; a second death, or an error inside the run,
records the run as failed with the reason, and the other runs go on.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, replace
from typing import Any

from runner.config import RunConfig
from runner.data import PreloadedSet
from runner.decode import DecodeOptions
from runner.device import spec_type
from runner.errors import RunnerError, error_fields, first_line
from runner.metrics.bleu import corpus_bleu, corpus_chrf
from runner.metrics.wer import source_wer
from runner.progress import counter
from runner.sweep.executors import Executor, SweepRecorder
from runner.sweep.plan import RunPlan
from runner.sweep.rows import code_versions, failed_row, row_from_reports, worker

ATTEMPTS = 2  # a run whose worker dies is tried once more


@dataclass
class Job:
    """One task: a run, or shard [start, stop) of its utterances, with what the worker must find."""

    run: RunConfig
    decode: DecodeOptions
    threads: int
    plan: RunPlan
    repeats: int
    model_hash: str
    data_hash: str  # of the whole selection, or of the shard
    versions: dict[str, Any]  # the driver's code: a worker running other code refuses the job
    shard: tuple[int, int] | None = None


_loaded: dict[tuple, Any] = {}  # per worker process: the float model, reused by the runs it is sent


def execute(job: Job) -> dict[str, Any]:
    """Run on a worker: a sweep row for a whole run, or hypotheses for a shard."""
    from runner import defaults
    from runner.runner import Runner

    run = job.run
    if code_versions() != job.versions:
        raise RunnerError(f"on worker {socket.gethostname()} st-runner runs other code ({code_versions()}) than the "
                          f"driver ({job.versions}); install the same version on every node")
    key = (run.model, repr(job.decode), job.threads, run.device)
    if key not in _loaded:
        _loaded.clear()
        # Ray shows a task the GPU it reserved as cuda:0 (CUDA_VISIBLE_DEVICES).
        device = "cuda" if spec_type(run.device) == "cuda" else run.device
        _loaded[key] = Runner(run.model or defaults.model_path(), job.decode, threads=job.threads, device=device)
    base = _loaded[key]
    origin = base.bundle.files.origin
    if base.bundle.files.content_hash != job.model_hash:
        raise RunnerError(f"{origin}: on worker {socket.gethostname()} this model differs from the driver's "
                          f"(content hash {base.bundle.files.content_hash}, expected {job.model_hash})")
    options = run.evaluate.replace(warmup=0 if job.shard else run.evaluate.warmup, part=job.shard)
    preloaded = base.preload(options)
    if preloaded.content_hash != job.data_hash:
        raise RunnerError(f"{preloaded.test_set.path}: on worker {socket.gethostname()} the audio differs from the "
                          f"driver's (content hash {preloaded.content_hash}, expected {job.data_hash})")
    runner = Runner.from_bundle(base.bundle, base.threads, job.plan.plugins, calibration_data=run.data,
                                search=job.plan.search)
    reports = [runner.evaluate_preloaded(preloaded, options) for _ in range(1 if job.shard else job.repeats)]
    row = {**row_from_reports(job.plan, reports), **worker("ray")}
    if job.shard:
        row.update(first_index=job.shard[0], source_hypotheses=[u["source_hypothesis"] for u in reports[0].utterances])
    return row


class RayExecutor(Executor):
    """Runs as Ray tasks on an existing cluster (`address`), or on a local one started for the sweep."""

    name = "ray"

    def threads(self, requested: int | None) -> int | None:
        return requested or 1  # a task reserves `threads` CPUs, so it needs a number

    def base_device(self, requested: str) -> str:
        return "cpu"  # the driver only hashes and preloads: it needs no GPU, the tasks do

    def run(self, sweep: SweepRecorder, todo: list[RunPlan], base: Any, preloaded: PreloadedSet,
            options: Any) -> None:
        run_on_ray(sweep, todo, base, preloaded, self.address)


def run_on_ray(sweep: SweepRecorder, todo: list[RunPlan], base: Any, preloaded: PreloadedSet,
               address: str | None) -> None:
    """Submit every run (or shard) of `todo`, record each row as it completes."""
    try:
        import ray
        from ray import exceptions
    except ImportError:
        raise RunnerError("--executor ray needs Ray: pip install 'st-runner[ray]'") from None

    config = sweep.config
    started_here = connect_cluster(address)
    try:
        threads = base.threads
        largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]), default=0)
        if threads > largest:
            raise RunnerError(f"{config.source}: threads {threads} is more than any Ray node has ({largest:g} CPUs)")
        gpus = 1 if spec_type(config.run.device) == "cuda" else 0  # a timed run has its GPU to itself
        remote = ray.remote(execute).options(num_cpus=threads, num_gpus=gpus, max_retries=0)
        shards = _shards(len(preloaded.utterances), config, ray.cluster_resources().get("CPU", 1), threads)
        jobs = []
        for plan in todo:
            job = Job(config.run, base.decode, threads, plan, config.repeats, base.bundle.files.content_hash,
                      preloaded.content_hash, code_versions())
            if shards is None:
                jobs.append(job)
            else:
                jobs += [replace(job, shard=(a, b), data_hash=preloaded.part(a, b).content_hash) for a, b in shards]
        pending = {remote.remote(job): (job, 1) for job in jobs}
        parts: dict[str, list[dict[str, Any]]] = {p.config_hash: [] for p in todo}
        attempts: dict[str, int] = {p.config_hash: 1 for p in todo}
        bar = counter(len(jobs), "sweep", "run", sweep.progress)
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            job, attempt = pending.pop(ref)
            plan = job.plan
            # Only a lost worker is retried; anything else would fail the same way again.
            lost_worker = (exceptions.WorkerCrashedError, exceptions.NodeDiedError, exceptions.LocalRayletDiedError,
                           exceptions.ObjectLostError, exceptions.OutOfMemoryError)
            try:
                result = ray.get(ref)
            except exceptions.RayTaskError as error:  # the run itself raised
                cause = error.cause or error
                _give_up(sweep, plan, first_line(cause), pending, parts, attempt, **error_fields(cause))
                bar.update(1)
                continue
            except lost_worker as error:  # the worker died (killed, out of memory, node lost)
                if plan.config_hash not in parts:
                    continue
                if attempt < ATTEMPTS:
                    pending[remote.remote(job)] = (job, attempt + 1)
                    attempts[plan.config_hash] = attempt + 1
                    continue
                _give_up(sweep, plan, f"worker died {attempt} times: {first_line(error)}", pending, parts, attempt,
                         **error_fields(error))
                bar.update(1)
                continue
            except exceptions.RayError as error:  # cancelled, system error, ...: recorded, not retried
                _give_up(sweep, plan, first_line(error), pending, parts, attempt, **error_fields(error))
                bar.update(1)
                continue
            bar.update(1)
            if plan.config_hash not in parts:
                continue  # another shard of this run failed already
            parts[plan.config_hash].append(result)
            if shards is None or len(parts[plan.config_hash]) == len(shards):
                sweep.finish({**_merge(parts.pop(plan.config_hash), preloaded),
                              "attempts": attempts[plan.config_hash]})
        bar.close()
    finally:
        if started_here:
            ray.shutdown()


def _give_up(sweep: SweepRecorder, plan: RunPlan, reason: str, pending: dict, parts: dict, attempt: int,
             **error: Any) -> None:
    import ray

    if parts.pop(plan.config_hash, None) is None:
        return  # this run was recorded as failed already
    for ref, (job, _) in list(pending.items()):  # the run's other shards are no use now
        if job.plan.config_hash == plan.config_hash:
            ray.cancel(ref, force=True)
            del pending[ref]
    sweep.finish(failed_row(plan, reason, attempts=attempt, executor="ray", **error))


def _merge(parts: list[dict[str, Any]], preloaded: PreloadedSet) -> dict[str, Any]:
    """One row from a run's shard rows: one corpus BLEU over all hypotheses, never a mean of shard scores."""
    if len(parts) == 1:
        return parts[0]
    parts = sorted(parts, key=lambda row: row["first_index"])
    hypotheses = [h for row in parts for h in row["hypotheses"]]
    sources = [h for row in parts for h in row["source_hypotheses"]]
    references = [u.segment.reference for u in preloaded.utterances]
    wer = source_wer(sources, [u.segment.source for u in preloaded.utterances])
    bleu = corpus_bleu(hypotheses, references)
    return {**parts[0], "bleu": bleu.score, "bleu_signature": bleu.signature,
            "chrf": corpus_chrf(hypotheses, references).score, "source_wer": wer, "n": len(hypotheses),
            "hypotheses": hypotheses, "source_hypotheses": sources,
            "shards": [{"first_index": row["first_index"], "n": row["n"], "host": row["host"], "pid": row["pid"]}
                       for row in parts]}


def _shards(count: int, config: Any, cluster_cpus: float, threads: int) -> list[tuple[int, int]] | None:
    """Contiguous [start, stop) ranges for a quality pass; None for a latency sweep (whole runs)."""
    if config.measure != "quality":
        return None
    wanted = config.shards or max(1, int(cluster_cpus // threads))
    wanted = min(wanted, count)
    bounds = [round(i * count / wanted) for i in range(wanted + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def connect_cluster(address: str | None) -> bool:
    """Connect to the cluster at `address`, or start one on this machine; True if started here."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    if address is None:
        # A one-machine cluster talks over loopback: Ray uses 127.0.0.1 when this is off.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray.init(**quiet)
        return True
    _check_reachable(address)
    try:
        ray.init(address=address, **{k: v for k, v in quiet.items() if k != "include_dashboard"})
    except (ConnectionError, ValueError, RuntimeError, ImportError) as error:
        raise RunnerError(f"--address {address}: cannot connect to a Ray cluster ({first_line(error)})") from error
    return False


def _check_reachable(address: str) -> None:
    """Fail at once on a host:port nothing listens at (Ray itself retries for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address == "auto" or not host or not port.isdigit():
        return  # "auto" finds a local cluster itself, and fails fast
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as error:
        raise RunnerError(f"--address {address}: no Ray cluster reachable at {host}:{port} ({error})") from error

