"""`runner serve --ray`: the same HTTP API as a Ray Serve deployment, replicated across a Ray cluster.

Every replica loads the models itself (`load_models` with the command's options), reserves its
intra-op threads as Ray CPUs, and serves the app `create_app` builds, so answers, limits, API
key, CORS, batching, /metrics and /ready are those of one `runner serve` process; Ray's proxy
spreads requests over the replicas. The cluster is the one at `address`, or a local one started
here as `runner sweep --executor ray` starts it. Needs `pip install 'st-runner[ray]'`, and the
same st-runner install on every node.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from runner.device import spec_type
from runner.errors import RunnerError, first_line
from runner.serve.upload import ServeLimits

logger = logging.getLogger("runner.serve")
APP_NAME = "st-runner"


class Replica:
    """One Ray Serve replica: the models loaded once, and the server's ASGI app over them."""

    def __init__(self, load: dict[str, Any], limits: dict[str, Any], api_key: str | None,
                 cors_origins: Sequence[str], hosts: Sequence[str] | None = None) -> None:
        from runner.serve.app import create_app, load_models

        # Not `self.app`: Ray's ingress wrapper owns that name.
        self.asgi = create_app(load_models(**load), ServeLimits(**limits), api_key=api_key, cors_origins=cors_origins,
                               allowed_hosts=hosts)

    def __serve_build_asgi_app__(self) -> Any:  # Ray Serve asks for the app once the replica is built
        return self.asgi


def deployment(load: dict[str, Any], limits: ServeLimits, *, replicas: int = 1, threads: int = 1,
               api_key: str | None = None, cors_origins: Sequence[str] = (),
               hosts: Sequence[str] | None = None) -> Any:
    """The bound Ray Serve application: `replicas` copies of `Replica`, `threads` CPUs each.

    Args:
        load: `load_models` keyword arguments (model, quants, hop, decode, threads, ...), for every replica.
        limits: each replica's limits (its queue and batching are its own).
        replicas: how many replicas to run.
        threads: CPUs each replica reserves (its intra-op threads); with `load["device"]` cuda, one GPU too.
        api_key: the bearer key, as for `create_app`.
        cors_origins: allowed browser origins, as for `create_app`.
        hosts: the Host header names replicas answer (None: any), as for `create_app`'s `allowed_hosts`.

    Returns:
        The application `serve.run` takes.
    """
    from ray import serve

    ingress = serve.ingress()(Replica)
    # A replica on a GPU reserves one; Ray shows it to the replica as cuda:0.
    gpus = 1 if spec_type(load.get("device", "cpu")) == "cuda" else 0
    if gpus:
        load = {**load, "device": "cuda"}
    options = dict(num_replicas=replicas, ray_actor_options={"num_cpus": threads, "num_gpus": gpus},
                   # a replica must hold its whole queue and a batch, or Ray's proxy refuses requests first
                   max_ongoing_requests=limits.max_queue + max(1, limits.max_batch),
                   health_check_period_s=10)
    return serve.deployment(name="st-runner", **options)(ingress).bind(load, asdict(limits), api_key,
                                                                        list(cors_origins), hosts)


def serve_on_ray(load: dict[str, Any], limits: ServeLimits, *, host: str = "127.0.0.1", port: int = 8000,
                 replicas: int = 1, threads: int = 1, address: str | None = None, api_key: str | None = None,
                 cors_origins: Sequence[str] = (), host_names: Sequence[str] = (), blocking: bool = True) -> None:
    """Run the deployment on the cluster at `address` (None: start a local one) until interrupted.

    Requests must name the server in their Host header, as for `runner serve` (`security.allowed_hosts`
    of `host`, `host_names` and `cors_origins`): Ray's proxy passes the client's Host to the replica.

    Raises:
        RunnerError: Ray Serve is not installed, the cluster is unreachable, or it lacks the CPUs.
    """
    try:
        import ray
        from ray import serve
    except ImportError as error:
        raise RunnerError(f"--ray needs Ray Serve: pip install 'st-runner[ray]' ({error})") from error
    from runner.serve.security import allowed_hosts
    from runner.sweep.ray_executor import connect_cluster

    started = connect_cluster(address)
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < replicas * threads:
        raise RunnerError(f"--replicas {replicas} x {threads} thread(s) needs {replicas * threads} CPUs; "
                          f"the Ray cluster has {cpus:g}")
    gpus = ray.cluster_resources().get("GPU", 0)
    if spec_type(load.get("device", "cpu")) == "cuda" and gpus < replicas:
        raise RunnerError(f"--replicas {replicas} on --device {load['device']} needs {replicas} GPUs; "
                          f"the Ray cluster has {gpus:g}")
    try:
        serve.start(http_options={"host": host, "port": port})
        hosts = allowed_hosts(host, host_names, cors_origins)
        serve.run(deployment(load, limits, replicas=replicas, threads=threads, api_key=api_key,
                             cors_origins=cors_origins, hosts=hosts), name=APP_NAME, route_prefix="/", blocking=blocking)
    except KeyboardInterrupt:
        pass
    except RuntimeError as error:  # a replica failed to start: its reason is in Ray's serve logs
        raise RunnerError(f"--ray: the deployment did not start ({first_line(error)}); see the replica logs "
                          f"under /tmp/ray/session_latest/logs/serve/") from error
    finally:
        if blocking:
            serve.shutdown()
            if started:
                ray.shutdown()
