"""`runner serve` in a child process on a free loopback port: what the serving tests and benchmarks drive."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def live_server(log: Path, *args: str, env: dict[str, str] | None = None,
                processes: list[subprocess.Popen] | None = None, cwd: Path | None = None) -> Iterator[str]:
    """`runner serve ARGS` on a free loopback port; yields its base URL once /ready answers (models warmed up).

    Args:
        log: the server's stdout and stderr go here.
        args: `runner serve` options.
        env: environment variables added to this process's for the server.
        processes: the server's `Popen` is appended here (its pid, for memory readings).
        cwd: the server's working directory (a checkout there is imported first, as `python -m` does).
    """
    port = free_port()
    with log.open("w") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "runner.cli", "serve", "--port", str(port), *args],
                                   stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=cwd)
        if processes is not None:
            processes.append(process)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            probe = "/ready"
            while True:
                assert process.poll() is None, f"runner serve exited: {log.read_text()}"
                assert time.monotonic() < deadline, f"runner serve did not start: {log.read_text()}"
                try:
                    if urllib.request.urlopen(f"{url}{probe}", timeout=2).status == 200:
                        break
                except urllib.error.HTTPError as error:
                    if error.code == 404:  # a server from before /ready (an earlier commit)
                        probe = "/health"
                    time.sleep(0.5)
                except OSError:
                    time.sleep(0.5)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)
