"""`GET /metrics`: the server's counters and histograms through `prometheus_client`.

Each app has its own `CollectorRegistry` (never the process-wide default one), so two apps in one
process, as tests and Ray replicas create, count only their own requests.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
PATHS = ("/", "/health", "/ready", "/info", "/metrics", "/translate")  # other paths count as "other"
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServeMetrics:
    """What `runner serve` has done since it started: requests by status, queue, batches, latency per model.

    Args:
        queue_depth: reads the requests waiting for the decoder now.
        live_sessions: reads the live sessions open now.
    """

    def __init__(self, queue_depth: Callable[[], int], live_sessions: Callable[[], int] = lambda: 0) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("st_runner_requests", "HTTP requests answered, by path and status code.",
                                ["path", "status"], registry=self.registry)
        self.errors = Counter("st_runner_request_errors", "HTTP requests answered with a 4xx or 5xx status.",
                              ["status"], registry=self.registry)
        Gauge("st_runner_queue_depth", "Requests waiting for the decoder.",
              registry=self.registry).set_function(queue_depth)
        Gauge("st_runner_live_sessions", "Live translation sessions open (/v1/realtime/translations).",
              registry=self.registry).set_function(live_sessions)
        self.batch_sizes = Histogram("st_runner_batch_size", "Requests decoded together in one batched search.",
                                     ["model"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.decode_seconds = Histogram("st_runner_decode_seconds",
                                        "Decoding wall time of a request (its batch's), by model.", ["model"],
                                        buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_seconds = Histogram("st_runner_queue_seconds", "Time a request waited for the decoder, by model.",
                                       ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.request_seconds = Histogram("st_runner_request_seconds",
                                         "Time from a request's arrival at the decoder queue to its answer, by model.",
                                         ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)

    def answered(self, path: str, status: int) -> None:
        self.requests.labels(path if path in PATHS else "other", str(status)).inc()
        if status >= 400:
            self.errors.labels(str(status)).inc()

    def translated(self, model: str, decode: float, queue: float, total: float) -> None:
        self.decode_seconds.labels(model).observe(decode)
        self.queue_seconds.labels(model).observe(queue)
        self.request_seconds.labels(model).observe(total)

    def batch(self, model: str, size: int) -> None:
        self.batch_sizes.labels(model).observe(size)

    def render(self) -> str:
        """Every figure in the Prometheus text exposition format."""
        return generate_latest(self.registry).decode("utf-8")
