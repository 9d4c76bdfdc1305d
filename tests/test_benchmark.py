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


def test_the_seed_scale_quantization_page_measures_agreement(tmp_path: Path) -> None:
    """One utterance: fp32 agrees with itself; dynamic int8 keeps some of fp32's output; the page names its kind."""
    from benchmarks import quantization_seed

    doc = tmp_path / "q.md"
    assert quantization_seed.main(["--utterances", "1", "--doc", str(doc)]) == 0
    rows = {tuple(line.split(" | ")[:2]): line.split(" | ") for line in doc.read_text().splitlines()
            if line.startswith("| seed scale")}
    assert rows[("| seed scale", "fp32")][2:4] == ["100%", "100.0"]
    assert float(rows[("| seed scale", "dynamic-int8")][3]) > 20  # chrF against fp32's translation
    assert "cpu_kind: " in doc.read_text() and len(rows) == 8
