"""The seed-scale benchmark runs end to end (CI proves it works; timings are not asserted)."""

from __future__ import annotations

from pathlib import Path

from benchmarks import seed_scale


def test_benchmark_runs_on_two_utterances(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    assert seed_scale.main(["--utterances", "2", "--repeats", "1", "--threads", "1,2", "--warmup", "0",
                            "--schemes", "fp32,dynamic-int8,dynamic-int8+fast", "--doc", str(doc)]) == 0
    text = doc.read_text()
    rows = {line.split("|")[1].strip(): line.split("|") for line in text.splitlines()
            if line.startswith(("| fp32", "| dynamic-int8"))}
    assert set(rows) == {"fp32", "dynamic-int8", "dynamic-int8+fast"}  # the search plugins run at this scale too
    assert float(rows["dynamic-int8"][4].strip().rstrip("x")) <= 0.35  # size ratio of a Linear-dominated model
    assert rows["dynamic-int8"][5] == rows["fp32"][5]  # parameter count survives quantization
    assert "## Environment" in text and "quantized_engine" in text
