"""What every int8 (and bf16) scheme does to BLEU on this CPU kind -> a section of docs/int8-kinds.md.

    python -m benchmarks.int8_kinds                         # this machine's kind
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2 \\
        python -m benchmarks.int8_kinds                     # torch's libraries held to AVX2 (kind `...-capped-avx2`)

int8 products differ between CPU kinds: with VNNI (AVX-512 VNNI, AMX) u8 x s8 products sum in 32 bits;
on AVX2 alone fbgemm and ONNX Runtime's MLAS sum pairs in 16 bits, which can saturate (why torch's x86
engine quantizes activations to 7 bits, `reduce_range`, and ONNX Runtime offers the same). For each scheme
this measures, on the demo model's two test splits, the paired difference to fp32 (`runner.metrics.paired`:
BLEU difference, its 95 % bootstrap interval, sentences changed, chrF difference): torch's dynamic and static
int8, smoothquant + dynamic int8 and bf16 on the lean engine in batches of 8 (each utterance what it gets
alone), ONNX Runtime's dynamic and static int8 exports (batch 8), and on the outlier model (planted LayerNorm
outliers, `benchmarks.outliers`) dynamic int8 alone and after smoothquant. The section for this kind replaces
the one the page had for it; the other kinds' sections stay.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from runner import defaults
from runner.environment import cpu_kind, isa_caps, manifest
from runner.metrics.paired import paired_difference
from runner.runner import Runner

DOC = defaults.REPO_ROOT / "docs" / "int8-kinds.md"
SPLITS = ("tst-COMMON", "tst-HE")
TORCH_SCHEMES = {"dynamic-int8": ["dynamic-int8"], "static-int8 (decoder)": ["static-int8"],
                 "smoothquant + dynamic-int8": ["smoothquant", "dynamic-int8"], "bf16": ["bf16"]}
ORT_SCHEMES = ("dynamic-int8", "static-int8")
HEADER = ("| model | path | scheme | split | fp32 BLEU | BLEU | ΔBLEU | 95 % interval | sentences changed | ΔchrF |",
          "|---|---|---|---|---|---|---|---|---|---|")


def _row(model: str, path: str, scheme: str, split: str, fp32: Any, report: Any) -> str:
    d = paired_difference(fp32.hypotheses(), report.hypotheses(), fp32.references())
    print(f"{model} {path} {scheme} {split}: {d.line()}", file=sys.stderr, flush=True)
    return (f"| {model} | {path} | {scheme} | {split} | {fp32.bleu.score:.2f} | {report.bleu.score:.2f} | "
            f"{d.delta:+.2f} | [{d.low:+.2f}, {d.high:+.2f}] | {d.changed} of {d.sentences} | {d.chrf_delta:+.2f} |")


def _ort_exports(work: Path) -> dict[str, Path]:
    from typer.testing import CliRunner

    from runner.cli import app

    exports = {}
    for quant in ("none", *ORT_SCHEMES):
        exports[quant] = work / quant
        result = CliRunner().invoke(app, ["export", "--out", str(exports[quant]), "--quant", quant])
        if result.exit_code != 0:
            raise SystemExit(f"runner export --quant {quant}: {result.output.strip().splitlines()[-1:]}")
    return exports


def measure(threads: int, onnxruntime: bool) -> list[str]:
    """The table rows for this machine."""
    from benchmarks.outliers import write_outlier_model

    rows: list[str] = []
    with tempfile.TemporaryDirectory() as work:
        for split in SPLITS:
            fp32 = Runner(threads=threads, search="lean").evaluate(split=split, batch_size=8)
            for scheme, plugins in TORCH_SCHEMES.items():
                report = Runner(threads=threads, plugins=plugins, search="lean").evaluate(split=split, batch_size=8)
                rows.append(_row("embedded", "torch, lean", scheme, split, fp32, report))
        if onnxruntime:
            exports = _ort_exports(Path(work))
            for split in SPLITS:
                fp32 = Runner(exports["none"], threads=threads, search="onnxruntime").evaluate(split=split,
                                                                                               batch_size=8)
                for scheme in ORT_SCHEMES:
                    report = Runner(exports[scheme], threads=threads, search="onnxruntime").evaluate(
                        split=split, batch_size=8)
                    rows.append(_row("embedded", "onnxruntime", scheme, split, fp32, report))
        outliers = Path(work) / "outliers"
        write_outlier_model(defaults.model_path(), outliers)
        fp32 = Runner(outliers, threads=threads, search="lean").evaluate(batch_size=8)
        for scheme in ("dynamic-int8", "smoothquant + dynamic-int8"):
            report = Runner(outliers, threads=threads, plugins=TORCH_SCHEMES[scheme], search="lean").evaluate(
                batch_size=8)
            rows.append(_row("outliers", "torch, lean", scheme, "tst-COMMON", fp32, report))
    return rows


def section(rows: list[str], command: str, threads: int) -> str:
    env = manifest(threads)
    caps = isa_caps()
    where = (f"torch's libraries capped by {caps} (ONNX Runtime's MLAS cannot be capped: it dispatches on cpuid)"
             if caps else "no instruction-set caps")
    return "\n".join([
        f"## cpu kind `{env['cpu_kind']}`", "",
        f"`{command}` at commit {env['runner_commit']} on the 2-core {env['cpu']} (cpu kind `{env['cpu_kind']}`, flags "
        f"{', '.join(env['cpu_flags'])}; {where}), {threads} threads, batch 8, the 100 utterances of each demo "
        "split; calibration (static int8, smoothquant) on demo dev.", "", *HEADER, *rows, ""])


def write(doc: Path, kind: str, text: str) -> None:
    """Replace (or add) the section of `kind` in `doc`, keeping the others."""
    old = doc.read_text(encoding="utf-8") if doc.exists() else ""
    head, *sections = re.split(r"(?m)^(?=## cpu kind `)", old) if old else [""]
    intro = head if head.strip() else ("# int8 and bf16 on each CPU kind\n\nGenerated by `python -m "
                                       "benchmarks.int8_kinds`, one section per CPU kind.\n\n")
    kept = [s.rstrip() + "\n\n" for s in sections if not s.startswith(f"## cpu kind `{kind}`")]
    body = sorted([*kept, text.rstrip() + "\n\n"])
    doc.write_text(intro + "".join(body).rstrip() + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--no-onnxruntime", dest="onnxruntime", action="store_false",
                        help="leave out ONNX Runtime's exports (with capped torch libraries ORT is this kind's anyway)")
    args = parser.parse_args(argv)
    rows = measure(args.threads, args.onnxruntime)
    command = ("python -m benchmarks.int8_kinds " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    caps = isa_caps()
    if caps:
        command = " ".join(f"{name}={value}" for name, value in _switches().items()) + " " + command
    write(args.doc, cpu_kind(), section(rows, command, args.threads))
    print(args.doc.read_text(encoding="utf-8"))
    return 0


def _switches() -> dict[str, str]:
    import os

    from runner.environment import ISA_SWITCHES

    return {name: os.environ[name] for name in ISA_SWITCHES if os.environ.get(name)}


if __name__ == "__main__":
    raise SystemExit(main())
