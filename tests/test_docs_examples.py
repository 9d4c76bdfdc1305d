"""The documented examples, run as written: docs/library.md's "Embedding in your demo" (only the server's port
changes) and the README's library in five lines."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Utterance

pytestmark = pytest.mark.slow  # the fast tier (-m 'not slow') leaves this module out

ROOT = Path(__file__).resolve().parent.parent
LIBRARY_PAGE = ROOT / "docs" / "library.md"


def embedding_examples() -> list[str]:
    text = LIBRARY_PAGE.read_text(encoding="utf-8")
    section = text.split("## Embedding in your demo", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_library_example_runs(tmp_path: Path) -> None:
    """The README's five lines, as written: a typed report whose conditions line names the engine."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    code = re.findall(r"```python\n(.*?)```", text.split("## The library in five lines", 1)[1], flags=re.S)[0]
    assert len(code.strip().splitlines()) <= 5
    lines = run_example(code, tmp_path)
    bleu, latency, size, conditions = lines[-1].split(" ", 3)
    assert float(bleu) > 50 and float(latency) > 0 and float(size) < 10  # dynamic int8: a third of 19.40 MB
    assert "search lean" in conditions and "dtype qint8" in conditions


def run_example(code: str, cwd: Path) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_library_page_has_both_examples_of_at_most_ten_lines() -> None:
    examples = embedding_examples()
    assert len(examples) == 2
    assert all(len(code.strip().splitlines()) <= 10 for code in examples)


def test_library_example(tmp_path: Path, served_utterances: dict[str, list[Utterance]]) -> None:
    utterance = served_utterances["dynamic-int8"][4]
    shutil.copy(utterance.path, tmp_path / "utterance.flac")
    lines = run_example(embedding_examples()[0], tmp_path)
    assert lines[:2] == [utterance.translation, utterance.transcript]
    assert re.match(r"\d+\.\d{3} s \{'frontend'", lines[2])


def test_http_example(tmp_path: Path, server: str, served_utterances: dict[str, list[Utterance]]) -> None:
    utterance = served_utterances["fp32"][4]  # the test server's default model
    shutil.copy(utterance.path, tmp_path / "utterance.flac")
    code = embedding_examples()[1]
    assert "http://127.0.0.1:8000" in code
    lines = run_example(code.replace("http://127.0.0.1:8000", server), tmp_path)
    assert lines[0] == utterance.translation
    assert lines[1].startswith(f"{utterance.transcript} ") and lines[1].endswith(" []")
