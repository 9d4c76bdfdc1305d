"""Crafted model files and archives: no code runs from a model file, nothing is written outside the cache."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from benchmarks.abuse_files import Payload, write_zip
from runner import archive
from runner.cli import app
from runner.errors import RunnerError
from runner.model_files import locate, read_weights


def _evil_exp(tiny_exp: Path, tmp_path: Path) -> tuple[Path, Path]:
    exp = shutil.copytree(tiny_exp, tmp_path / "evil")
    marker = tmp_path / "payload-ran"
    state = torch.load(exp / "valid.acc.ave.pth")
    state["extra"] = Payload(marker)
    torch.save(state, exp / "valid.acc.ave.pth")
    return exp, marker


@pytest.mark.parametrize("command", ["translate", "info"])
def test_a_pickle_payload_in_a_model_file_never_runs(tiny_exp: Path, shared_corpus: Path, tmp_path: Path,
                                                     command: str) -> None:
    exp, marker = _evil_exp(tiny_exp, tmp_path)
    args = [command, "--model", str(exp), "--data", str(shared_corpus), "--no-progress"] if command == "translate" \
        else [command, str(exp)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last == (f"error: {exp / 'valid.acc.ave.pth'}: refused: loading it would unpickle 'posix.system', "
                    f"which can run code; a model file holds only weights")
    assert not marker.exists()


def test_a_trainer_checkpoint_with_numpy_statistics_is_data(tmp_path: Path) -> None:
    import numpy as np

    path = tmp_path / "checkpoint.pth"
    torch.save({"model": {"w": torch.ones(2)}, "reporter": {"epoch": 2, "stats": {1: {"valid": {
        "acc": np.float64(0.9), "loss": np.float32(1.5), "count": np.int64(3), "curve": np.arange(3.0)}}}},
        "optimizers": [{"state": {}, "param_groups": [{"lr": 1e-3}]}], "schedulers": [None], "scaler": None}, path)
    state = read_weights(path)
    assert state["reporter"]["stats"][1]["valid"]["acc"] == 0.9 and torch.equal(state["model"]["w"], torch.ones(2))


# --- archives ---------------------------------------------------------------------------------

def _tar(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for info in members:
            payload = data.get(info.name)
            if payload is not None:
                info.size = len(payload)
            t.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


META = b"yaml_files:\n  st_train_config: exp/config.yaml\nfiles:\n  st_model_file: exp/model.pth\n"


@pytest.mark.parametrize(("case", "expected"), [
    ("zip-dotdot", "member '../outside.txt' climbs out of the archive with '..'"),
    ("tar-symlink", "member 'exp/link' is a link (to '{outside}')"),
    ("tar-hardlink", "is a link"),
    ("tar-device", "member 'exp/dev' is a device, FIFO or other special file"),
    ("tar-dotdot", "member 'exp/../../outside.txt' climbs out"),
])
def test_an_archive_that_climbs_out_of_the_cache_is_refused_before_any_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, expected: str) -> None:
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    outside.mkdir()
    monkeypatch.setenv("ST_RUNNER_CACHE", str(cache))
    absolute = str(outside / "abs.txt")  # a hard link's target
    path = {
        "zip-dotdot": lambda: write_zip(tmp_path / "a.zip", {"meta.yaml": META, "exp/config.yaml": b"a: 1\n",
                                                       "../outside.txt": b"x"}),
        "tar-symlink": lambda: _tar(tmp_path / "a.tar.gz", [_info("meta.yaml"), _info("exp/link", tarfile.SYMTYPE,
                                                                                      str(outside)),
                                                            _info("exp/link/planted.txt")],
                                    {"meta.yaml": META, "exp/link/planted.txt": b"x"}),
        "tar-hardlink": lambda: _tar(tmp_path / "a.tar.gz", [_info("meta.yaml"), _info("exp/h", tarfile.LNKTYPE,
                                                                                      absolute)], {"meta.yaml": META}),
        "tar-device": lambda: _tar(tmp_path / "a.tar.gz", [_info("meta.yaml"), _info("exp/dev", tarfile.CHRTYPE)],
                                   {"meta.yaml": META}),
        "tar-dotdot": lambda: _tar(tmp_path / "a.tar.gz", [_info("meta.yaml"), _info("exp/../../outside.txt")],
                                   {"meta.yaml": META, "exp/../../outside.txt": b"x"}),
    }[case]()
    with pytest.raises(RunnerError, match="^" + str(path).replace(".", r"\.") + ": ") as error:
        locate(path)
    assert expected.format(outside=outside) in str(error.value) and "\n" not in str(error.value)
    assert list(outside.iterdir()) == [] and not (tmp_path / "outside.txt").exists()
    assert not (cache / "packed").exists() or [p.name for p in (cache / "packed").iterdir()] == []


def test_absolute_member_names_land_under_the_entry(tmp_path: Path) -> None:
    """`espnet2.bin.pack` writes absolute names for files outside its working directory: kept inside the cache."""
    outside = tmp_path / "outside"
    meta = (f"yaml_files:\n  st_train_config: {outside}/config.yaml\nfiles:\n  st_model_file: {outside}/m.pth\n")
    path = write_zip(tmp_path / "abs.zip", {"meta.yaml": meta.encode(), f"{outside}/config.yaml":
                                       f"token_list: {outside}/tokens.txt\nother: {outside}/none\n".encode(),
                                       f"{outside}/m.pth": b"w", f"{outside}/tokens.txt": b"a\n"})
    entry, meta_read = archive.unpack(path, tmp_path / "cache")
    assert not outside.exists()
    name = str(outside).lstrip("/")
    assert meta_read["files"]["st_model_file"] == f"{name}/m.pth" and (entry / name / "m.pth").read_bytes() == b"w"
    config = (entry / name / "config.yaml").read_text()
    assert f"token_list: {entry / name / 'tokens.txt'}" in config and f"other: {outside}/none" in config


def test_too_many_members_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "MAX_MEMBERS", 5)
    path = write_zip(tmp_path / "many.zip", {"meta.yaml": META, **{f"f{i}": b"" for i in range(10)}})
    with pytest.raises(RunnerError, match="more than 5 members"):
        archive.unpack(path, tmp_path / "cache")


def test_a_packed_model_unpacks_once_and_a_tampered_entry_is_unpacked_again(tiny_zip: Path, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ST_RUNNER_CACHE", str(tmp_path / "cache"))
    files = locate(tiny_zip)
    entry = tmp_path / "cache" / "packed" / archive.sha256(tiny_zip)
    assert files.model_file.is_relative_to(entry) and files.config.is_relative_to(entry)
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # no temporary directory left
    stamp = files.model_file.stat().st_mtime_ns
    assert locate(tiny_zip).model_file.stat().st_mtime_ns == stamp  # reused, not unpacked again
    original = files.model_file.read_bytes()
    files.model_file.write_bytes(original[:-10] + b"0123456789")  # tampered with in the cache
    again = locate(tiny_zip)
    assert again.model_file.read_bytes() == original


# --- YAML ---------------------------------------------------------------------------------------

BOMB = "".join(f"{k}: &{k} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['lol'] * 9)}]\n"
               for p, k in zip([None, *"abcdefgh"], "abcdefghi"))  # 9^9 strings from under 1 KB


@pytest.mark.parametrize("place", ["data", "model config", "run config"])
def test_a_yaml_alias_bomb_is_one_line_wherever_yaml_is_read(tiny_exp: Path, shared_corpus: Path, tmp_path: Path,
                                                            place: str) -> None:
    assert len(BOMB) < 1000
    if place == "data":
        data = shutil.copytree(shared_corpus, tmp_path / "corpus")
        target = next(data.rglob("*.yaml"))
        args = ["translate", "--model", str(tiny_exp), "--data", str(data), "--no-progress"]
    elif place == "model config":
        exp = shutil.copytree(tiny_exp, tmp_path / "exp")
        target = exp / "config.yaml"
        args = ["info", str(exp)]
    else:
        target = tmp_path / "run.yaml"
        args = ["translate", "--config", str(target), "--no-progress"]
    target.write_text(BOMB)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last == f"error: {target}: its aliases expand to more than 5,000,000 YAML nodes; refused (an alias bomb?)"


def test_non_utf8_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    from runner.yamlio import read_yaml

    path = tmp_path / "run.yaml"
    path.write_bytes(b"threads: 1\nsplit: tst-\xff\n")
    with pytest.raises(RunnerError, match=r"run\.yaml:2: run config is not UTF-8 text \(byte 0xff\)$"):
        read_yaml(path, "run config")


def test_a_member_named_twice_or_both_file_and_directory_is_refused_by_name(tmp_path: Path) -> None:
    both = _tar(tmp_path / "both.tar.gz", [_info("meta.yaml"), _info("exp"), _info("exp/model.pth")],
                {"meta.yaml": META, "exp": b"x", "exp/model.pth": b"w"})
    with pytest.raises(RunnerError, match=r"member 'exp' is named twice or is both a file and a directory"):
        archive.unpack(both, tmp_path / "cache")
    twice = _tar(tmp_path / "twice.tar.gz", [_info("meta.yaml"), _info("exp/a"), _info("exp/a")],
                 {"meta.yaml": META, "exp/a": b"x"})
    with pytest.raises(RunnerError, match=r"member 'exp/a' is named twice"):
        archive.unpack(twice, tmp_path / "cache")
