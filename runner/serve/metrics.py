"""`GET /metrics`: the server's counters and histograms in the Prometheus text format (0.0.4).

Kept here rather than in `prometheus_client` so an app's figures are its own (no process-wide
registry shared by every app in the process, as tests and Ray replicas create several).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
PATHS = ("/", "/health", "/ready", "/info", "/metrics", "/translate")  # other paths count as "other"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """Cumulative bucket counts, sum and count of observed values, per label value."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.series: dict[str, list[float]] = {}  # label value -> [count per bucket..., +Inf count, sum]

    def observe(self, label: str, value: float) -> None:
        counts = self.series.setdefault(label, [0.0] * (len(self.buckets) + 2))
        counts[bisect.bisect_left(self.buckets, value)] += 1
        counts[-1] += value

    def lines(self, name: str, label: str) -> list[str]:
        lines = []
        for value, counts in sorted(self.series.items()):
            cumulative = 0.0
            for bound, count in zip((*self.buckets, float("inf")), counts[:-1]):
                cumulative += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(f'{name}_bucket{{{label}="{value}",le="{le}"}} {cumulative:g}')
            lines.append(f'{name}_sum{{{label}="{value}"}} {counts[-1]:.6f}')
            lines.append(f'{name}_count{{{label}="{value}"}} {cumulative:g}')
        return lines


class ServeMetrics:
    """What `runner serve` has done since it started: requests by status, queue, batches, latency per model.

    Args:
        queue_depth: reads the requests waiting for the decoder now.
    """

    def __init__(self, queue_depth: Callable[[], int]) -> None:
        self.queue_depth = queue_depth
        self.requests: Counter[tuple[str, int]] = Counter()  # (path, status) -> answered requests
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        self.decode_seconds = Histogram(LATENCY_BUCKETS)
        self.request_seconds = Histogram(LATENCY_BUCKETS)
        self.queue_seconds = Histogram(LATENCY_BUCKETS)

    def answered(self, path: str, status: int) -> None:
        self.requests[(path if path in PATHS else "other", status)] += 1

    def translated(self, model: str, decode: float, queue: float, total: float) -> None:
        self.decode_seconds.observe(model, decode)
        self.queue_seconds.observe(model, queue)
        self.request_seconds.observe(model, total)

    def batch(self, model: str, size: int) -> None:
        self.batch_sizes.observe(model, size)

    def render(self) -> str:
        """Every figure in the Prometheus text exposition format."""
        out = ["# HELP st_runner_requests_total HTTP requests answered, by path and status code.",
               "# TYPE st_runner_requests_total counter"]
        out += [f'st_runner_requests_total{{path="{path}",status="{status}"}} {count}'
                for (path, status), count in sorted(self.requests.items())]
        out += ["# HELP st_runner_request_errors_total HTTP requests answered with a 4xx or 5xx status.",
                "# TYPE st_runner_request_errors_total counter"]
        errors: Counter[int] = Counter()
        for (_, status), count in self.requests.items():
            if status >= 400:
                errors[status] += count
        out += [f'st_runner_request_errors_total{{status="{status}"}} {count}' for status, count in sorted(errors.items())]
        out += ["# HELP st_runner_queue_depth Requests waiting for the decoder.", "# TYPE st_runner_queue_depth gauge",
                f"st_runner_queue_depth {self.queue_depth()}"]
        for name, histogram, help_text in (
                ("st_runner_batch_size", self.batch_sizes, "Requests decoded together in one batched search."),
                ("st_runner_decode_seconds", self.decode_seconds,
                 "Decoding wall time of a request (its batch's), by model."),
                ("st_runner_queue_seconds", self.queue_seconds, "Time a request waited for the decoder, by model."),
                ("st_runner_request_seconds", self.request_seconds,
                 "Time from a request's arrival at the decoder queue to its answer, by model.")):
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram", *histogram.lines(name, "model")]
        return "\n".join(out) + "\n"
