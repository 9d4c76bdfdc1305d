"""Crafted files against the CLI, for `benchmarks.abuse`: each case's exit code and last line of output.

Model files with pickle payloads, archives that climb out of the cache (`..`, symlinks, hard links,
device files, too many members), YAML alias bombs and non-UTF-8 YAML, non-finite offsets in a data
YAML, `--out` under a file, and a sweep's `results.jsonl` cut mid-line by a crash. Afterwards the
pass checks that nothing was written outside its work directory's cache and no payload ran.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from runner import defaults

META = b"yaml_files: {}\nfiles: {}\n"


class Payload:
    """Unpickling this runs `os.system`, as a crafted model file would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        import os

        return os.system, (f"touch {self.marker}",)


def _tar(path: Path, members: list[tuple[str, bytes, int, str]]) -> Path:
    """A .tar.gz of (name, data, tar type, link target) members, written as a crafted one would be."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data, kind, target in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, target, len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return path


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    """A .zip of name -> bytes members, names as given (`..` and absolute ones too)."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def archive_cases(work: Path, outside: Path) -> list[tuple[str, list[str]]]:
    """`runner info` on archives that try to write outside the cache or exhaust it."""
    meta = ("meta.yaml", META, tarfile.REGTYPE, "")
    return [
        ("packed model: zip member '../../escaped.txt'",
         ["info", str(write_zip(work / "slip.zip", {"meta.yaml": META, "../../escaped.txt": b"x"}))]),
        ("packed model: tar symlink out, then a file through it",
         ["info", str(_tar(work / "link.tar.gz", [meta, ("exp/link", b"", tarfile.SYMTYPE, str(outside)),
                                                  ("exp/link/planted.txt", b"x", tarfile.REGTYPE, "")]))]),
        ("packed model: tar hard link to /etc/passwd",
         ["info", str(_tar(work / "hard.tar.gz", [meta, ("exp/h", b"", tarfile.LNKTYPE, "/etc/passwd")]))]),
        ("packed model: tar character device",
         ["info", str(_tar(work / "dev.tar.gz", [meta, ("exp/dev", b"", tarfile.CHRTYPE, "")]))]),
        ("packed model: zip of 10,001 empty members",
         ["info", str(write_zip(work / "many.zip", {"meta.yaml": META, **{f"f{i}": b"" for i in range(10_001)}}))]),
    ]


def yaml_and_data_cases(work: Path) -> list[tuple[str, list[str]]]:
    """Alias bombs, bytes that are not UTF-8 and non-finite offsets in YAML the CLI reads."""
    bomb = "".join(f"{k}: &{k} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['x'] * 9)}]\n"
                   for p, k in zip([None, *"abcdefgh"], "abcdefghi"))
    (work / "bomb.yaml").write_text(bomb)
    (work / "latin1.yaml").write_bytes("limit: 1\n# Größe\n".encode("latin-1"))
    data = shutil.copytree(defaults.data_path(), work / "mustc-nan")
    split = data / "en-de/data/tst-COMMON/txt/tst-COMMON.yaml"
    lines = split.read_text().splitlines()
    lines[0] = lines[0].replace("offset: ", "offset: .nan, was: ")
    split.write_text("\n".join(lines) + "\n")
    return [("run config: YAML alias bomb (9^9 nodes)", ["translate", "--config", str(work / "bomb.yaml")]),
            ("run config: Latin-1 bytes", ["translate", "--config", str(work / "latin1.yaml")]),
            ("data YAML: offset .nan", ["translate", "--data", str(data), "--limit", "1"])]


def model_cases(work: Path) -> list[tuple[str, list[str]]]:
    exp = shutil.copytree(defaults.model_path(), work / "evil")
    payload = exp / "payload.pth"
    torch.save({"w": Payload(work / "payload-ran")}, payload)
    return [("model file: pickle payload (os.system)",
             ["translate", "--model", str(exp), "--model-file", str(payload), "--limit", "1"]),
            ("--out under a file", ["translate", "--limit", "1", "--out", str(work / "slip.zip" / "x.json")])]


def cut_results_line(work: Path, invoke: Any) -> tuple[str, int, str]:
    """A two-run sweep whose results.jsonl's last line is cut, resumed: the cut run is measured again."""
    grid = work / "grid.yaml"
    grid.write_text("limit: 1\nwarmup: 0\nthreads: 1\ndecode: {beam_size: 2, asr_beam_size: 2}\n"
                    "grid:\n  quant: [none, dynamic-int8]\n")
    out = work / "sweep"
    invoke(["sweep", str(grid), "--out", str(out), "--no-progress"])
    jsonl = out / "results.jsonl"
    lines = jsonl.read_bytes().splitlines(keepends=True)
    jsonl.write_bytes(lines[0] + lines[1][:40])
    code, output = invoke(["sweep", str(grid), "--out", str(out), "--resume", "--no-progress"])
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    said = next((line for line in output.splitlines() if "cut by a crash" in line), "(not said)")
    whole = len(rows) == 2 and all(f"| {r['label']} |" in (out / "summary.md").read_text() for r in rows)
    return ("sweep: results.jsonl's last line cut, --resume", code,
            f"{said.strip()[:110]} ({'2 whole rows, both in summary.md' if whole else 'ROWS LOST'})")


def cli_pass(work: Path) -> list[tuple[str, int, str]]:
    """Every crafted file case: (what, exit code, last line of output), then the outside/payload check."""
    from typer.testing import CliRunner

    from runner.cli import app

    outside, cache = work / "outside", work / "cache"
    outside.mkdir()

    def invoke(args: list[str]) -> tuple[int, str]:
        extra = ["--no-progress"] if args[0] == "translate" else []
        result = CliRunner().invoke(app, [*args, *extra], env={"ST_RUNNER_CACHE": str(cache)})
        return result.exit_code, result.output

    results = []
    for what, args in [*yaml_and_data_cases(work), *archive_cases(work, outside), *model_cases(work)]:
        code, output = invoke(args)
        results.append((what, code, (output.strip().splitlines() or [""])[-1][:160]))
    results.append(cut_results_line(work, invoke))
    escaped = (work.parent / "escaped.txt").exists() or (work / "payload-ran").exists() or any(outside.iterdir())
    results.append(("nothing written outside, no payload ran", 0 if not escaped else 1, "checked"))
    return results
