"""Results are never lost: --out checked before decoding, cut result lines repaired, one sweep per --out,
and crafted numbers or bytes in data files are one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_corpus
from runner.cli import app
from runner.data import load_test_set
from runner.errors import RunnerError
from runner.outputs import output_lock
from runner.sweep import read_rows

CLI = CliRunner()


@pytest.mark.parametrize("case", ["directory", "under a file"])
def test_an_out_that_cannot_be_written_fails_before_decoding(tiny_exp: Path, shared_corpus: Path, tmp_path: Path,
                                                             case: str) -> None:
    (tmp_path / "file").write_text("x")
    out = tmp_path if case == "directory" else tmp_path / "file" / "report.json"
    result = CLI.invoke(app, ["translate", "--model", str(tiny_exp), "--data", str(shared_corpus), "--no-progress",
                              "--out", str(out)])
    assert result.exit_code == 2
    assert "preloaded" not in result.output  # refused before any work
    expected = "--out is a directory" if case == "directory" else f"--out lies under {tmp_path / 'file'}, which is a file"
    assert result.output.strip().splitlines() == [f"error: {out}: {expected}" + ("; name a file" if case == "directory"
                                                                                  else "")]
    assert not list(tmp_path.glob("**/*.tmp"))


@pytest.fixture()
def grid(tiny_exp: Path, tmp_path: Path) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(f"model: {tiny_exp}\ndata: {write_corpus(tmp_path / 'mustc')}\nlimit: 2\nthreads: 1\nwarmup: 0\n"
                    "decode: {beam_size: 2, asr_beam_size: 2}\ngrid:\n  quant: [none, dynamic-int8]\n")
    return path


def test_a_results_line_cut_by_a_crash_is_measured_again(grid: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert CLI.invoke(app, ["sweep", str(grid), "--out", str(out), "--no-progress"]).exit_code == 0
    jsonl = out / "results.jsonl"
    lines = jsonl.read_bytes().splitlines(keepends=True)
    jsonl.write_bytes(lines[0] + lines[1][:40])  # the second row cut mid-write
    result = CLI.invoke(app, ["sweep", str(grid), "--out", str(out), "--resume", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "its last line was cut by a crash mid-write; that run is measured again" in result.output
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]  # every line whole
    assert [r["label"] for r in rows] == [r["label"] for r in read_rows(jsonl)] and len(rows) == 2
    summary = (out / "summary.md").read_text()
    assert all(f"| {row['label']} |" in summary for row in rows)  # both rows in the summary


def test_a_second_sweep_into_the_same_out_is_refused(grid: Path, tmp_path: Path) -> None:
    import os

    out = tmp_path / "out"
    out.mkdir()
    with output_lock(out):
        result = CLI.invoke(app, ["sweep", str(grid), "--out", str(out), "--no-progress"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        f"error: {out}: another sweep (pid {os.getpid()}) is writing here; wait for it or choose another --out")
    assert not (out / "results.jsonl").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_offsets_and_durations_are_one_line(tmp_path: Path, value: str) -> None:
    corpus = write_corpus(tmp_path / "mustc")
    yaml_path = corpus / "en-de/data/tst-COMMON/txt/tst-COMMON.yaml"
    lines = yaml_path.read_text().splitlines()
    lines[1] = lines[1].replace("offset: ", f"offset: {value}, was: ")
    yaml_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RunnerError, match=r"tst-COMMON\.yaml:2: entry needs wav, and finite offset and duration"):
        load_test_set(corpus, "tst-COMMON")
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    wav = corpus / "en-de/data/tst-COMMON/wav/ted_1.wav"
    (kaldi / "wav.scp").write_text(f"talk1 {wav}\n")
    (kaldi / "segments").write_text(f"u1 talk1 0.25 {value}\n")
    (kaldi / "text").write_text("u1 Der Hund.\n")
    with pytest.raises(RunnerError, match=r"segments:1: expected 'utterance recording start end'"):
        load_test_set(kaldi)


def test_non_utf8_reference_text_names_the_file_and_line(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "mustc")
    text = corpus / "en-de/data/tst-COMMON/txt/tst-COMMON.de"
    text.write_bytes(text.read_bytes().replace("Hund".encode(), b"H\xfcnd", 1))
    line = next(i for i, row in enumerate(text.read_bytes().split(b"\n"), start=1) if b"H\xfcnd" in row)
    with pytest.raises(RunnerError, match=rf"tst-COMMON\.de:{line}: text file is not UTF-8 text \(byte 0xfc\)$"):
        load_test_set(corpus, "tst-COMMON")
    shutil.rmtree(corpus)
