"""A built wheel, installed in a fresh virtual environment, runs the embedded default from any directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from runner import defaults
from runner.runner import Runner

pytestmark = pytest.mark.slow  # the fast tier (-m 'not slow') leaves this module out

LIMIT = 3
REPO_ROOT = defaults.REPO_ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # From a copy of the sources: setuptools packs whatever an old build/ of the checkout still holds.
    source = shutil.copytree(defaults.REPO_ROOT, tmp_path_factory.mktemp("source") / "st-runner",
                             ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "results*",
                                                           "__pycache__", "exp", "train"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True, text=True)
    return next(out.glob("st_runner-*.whl"))


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the wheel; torch, ESPnet & co. come from this venv through a .pth line
    (a path line only: this venv's editable st-runner finder is not imported there)."""
    target = tmp_path_factory.mktemp("venv") / "fresh"
    venv.create(target, with_pip=False)
    site = Path(sysconfig.get_paths(vars={"base": str(target), "platbase": str(target)})["purelib"])
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: the dependencies' site-packages holds this checkout's editable st-runner,
    # which pip would otherwise take for the wheel already installed.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(target / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", "--ignore-installed", str(wheel)], check=True, capture_output=True,
                   text=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert (target / "bin" / "runner").is_file()
    return target


def _run(venv_dir: Path, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ST_RUNNER_DATA")}
    return subprocess.run([str(venv_dir / "bin" / "runner"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**environment, **env}, check=False)


def test_wheel_installs_only_the_runner_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"runner", wheel.name.split("-py3")[0] + ".dist-info"}, top
    assert "runner/plugins/static_int8.py" in names and "runner/configs/hop.yaml" in names
    assert "runner/embedded/model/valid.acc.ave.pth" in names
    assert "runner/embedded/mustc-demo/en-de/data/tst-COMMON/txt/tst-COMMON.de" in names
    assert "runner/embedded/mustc-demo/en-de/data/tst-HE/txt/tst-HE.yaml" in names
    assert any(name.startswith("runner/embedded/mustc-demo/en-de/data/tst-HE/wav/") for name in names)
    assert not any("/train/" in name for name in names)
    packages = sorted(str(init.parent.relative_to(REPO_ROOT)) for init in (REPO_ROOT / "runner").rglob("__init__.py"))
    missing = [package for package in packages if f"{package}/__init__.py" not in names]
    assert not missing, f"runner subpackages left out of the wheel (pyproject [tool.setuptools] packages): {missing}"
    entry_points = zipfile.ZipFile(wheel).read(f"{wheel.name.split('-py3')[0]}.dist-info/entry_points.txt").decode()
    assert "hop = runner.plugins.hop:Hop" in entry_points


def test_installed_wheel_translates_the_embedded_default_from_anywhere(installed: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    done = _run(installed, tmp_path, "translate", "--limit", str(LIMIT), "--threads", "1", "--warmup", "0",
                "--no-progress", "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["model"]["path"].startswith(str(installed)) and "/runner/embedded/model" in report["model"]["path"]
    assert report["data"]["path"].startswith(str(installed))
    source = Runner(threads=1).evaluate(limit=LIMIT, warmup=0)  # the source checkout's own default
    assert [u["hypothesis"] for u in report["utterances"]] == source.hypotheses()
    assert report["metrics"]["bleu"]["score"] == source.bleu.score
    shipped = subprocess.run([str(installed / "bin" / "python"), "-c", "from runner import defaults; "
                              "print(defaults.shipped_config('configs/hop.yaml'), defaults.shipped_config('fast-search'), "
                              "defaults.demo_output_root())"],
                             cwd=tmp_path, capture_output=True, text=True, check=True,
                             env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}).stdout.split()
    assert shipped == [*(str(Path(report["model"]["path"]).parent.parent / "configs" / name)
                         for name in ("hop.yaml", "fast-search.yaml")), "st-runner-data"]  # never site-packages
    assert defaults.demo_output_root() == defaults.REPO_ROOT / "data"  # a checkout builds into its data/


def test_installed_wheel_sweeps_both_search_engines(installed: Path, tmp_path: Path) -> None:
    config = tmp_path / "engines.yaml"
    config.write_text(f"limit: {LIMIT}\nthreads: 1\nwarmup: 0\ngrid:\n  search: [espnet, lean]\n")
    done = _run(installed, tmp_path, "sweep", str(config), "--out", str(tmp_path / "engines"), "--no-progress")
    assert done.returncode == 0, done.stderr
    rows = {row["label"]: row for row in json.loads((tmp_path / "engines" / "results.json").read_text())["rows"]}
    assert rows["trained hop + lean"]["search"] == "lean" and rows["trained hop"]["search"] == "espnet"
    assert rows["trained hop + lean"]["hypotheses"] == rows["trained hop"]["hypotheses"]


def test_installed_wheel_without_its_model_says_what_to_pass(installed: Path, tmp_path: Path) -> None:
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    done = _run(installed, tmp_path, "translate", ST_RUNNER_DATA=str(empty))
    assert done.returncode == 2
    assert done.stderr == (f"error: {empty / 'model'}: no embedded demo model here; pass --model EXP_DIR (an ESPnet "
                           f"experiment directory, config.yaml, .pth or packed .zip), or set ST_RUNNER_DATA to a "
                           f"directory holding model/ and mustc-demo/\n")


def test_a_benchmark_runs_from_a_checkout_installed_without_editable_mode(installed: Path, tmp_path: Path) -> None:
    """Inside a checkout Python imports the checkout's `runner/` before the installed one; the entry points still
    name `runner.plugins.*`, which the checkout provides through its `runner/plugins` link to `plugins/`."""
    checkout = shutil.copytree(REPO_ROOT, tmp_path / "checkout", symlinks=True,
                               ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "results*",
                                                             "__pycache__", "exp", "train", "site"))
    assert (checkout / "runner" / "plugins").is_symlink()
    doc = tmp_path / "throughput.md"
    done = subprocess.run([str(installed / "bin" / "python"), "-m", "benchmarks.batch_throughput", "--sets", "demo",
                           "--demo-utterances", "3", "--repeats", "1", "--threads", "1", "--batch", "2",
                           "--doc", str(doc)], cwd=checkout, capture_output=True, text=True, timeout=900,
                          env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ST_RUNNER_DATA")},
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "lean static-int8-all" in doc.read_text()  # a plugin and an engine resolved through the entry points
