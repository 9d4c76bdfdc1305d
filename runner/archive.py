"""Unpacking a packed model (`espnet2.bin.pack`'s .zip or .tar[.gz|.bz2]) into the cache, member by member.

An archive is input a stranger may have crafted: a member named `../x` or `/etc/x`, a symlink member
and a file written through it, a device file, or a million members would, unpacked by `tarfile` or
ESPnet's `unpack`, write outside the cache or fill the disk before any error. Here every member is
checked before a byte is written: only regular files and directories, no `..` in a name (an absolute
name is placed under the entry, as `zipfile` places it), within the count and size limits. The archive is unpacked into a temporary directory beside the
cache entry and renamed into place only when complete; the entry is named by the archive's sha256
and records each file's sha256, which is checked again before the entry is reused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import yaml

from runner.errors import RunnerError

MAX_MEMBERS = 10_000
MAX_MEMBER_BYTES = 8 * 2**30  # one file: larger than any ESPnet model we know of
MAX_TOTAL_BYTES = 16 * 2**30
RECORD = ".st-runner-unpacked.json"  # each unpacked file's size and sha256, written last
CHUNK = 1 << 20


@dataclass(frozen=True)
class Member:
    """One regular file of an archive, checked: its safe relative name and declared size."""

    name: str
    size: int
    handle: Any  # tarfile.TarInfo or zipfile.ZipInfo


def sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _safe_name(archive: Path, name: str) -> str | None:
    """The member's name relative to the entry (None for the archive's root); RunnerError if it climbs out.

    An absolute name is taken relative to the entry, as zipfile's and GNU tar's extraction take it:
    `espnet2.bin.pack` itself writes absolute names for files outside its working directory.
    """
    path = PurePosixPath(name.replace("\\", "/"))
    if ".." in path.parts:
        raise RunnerError(f"{archive}: member '{name}' climbs out of the archive with '..'; refused "
                          f"(nothing was unpacked)")
    parts = [p for p in path.parts if p not in ("", ".", "/") and not (p == path.parts[0] and p.endswith(":"))]
    return "/".join(parts) or None


@contextmanager
def _opened(archive: Path) -> Iterator[tuple[list[Member], Any]]:
    """The archive's regular files, every member checked, and a function that opens one for reading."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                yield _zip_members(archive, z), z.open
            return
        with tarfile.open(archive) as t:
            yield _tar_members(archive, t), t.extractfile
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as error:
        raise RunnerError(f"{archive}: not a readable .zip or .tar archive ({error})") from error


def _zip_members(archive: Path, z: zipfile.ZipFile) -> list[Member]:
    infos = z.infolist()
    _check_count(archive, len(infos))
    members = []
    for info in infos:
        name = _safe_name(archive, info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise RunnerError(f"{archive}: member '{info.filename}' is a symbolic link; refused (nothing was unpacked)")
        if info.is_dir() or name is None:
            continue
        if stat.S_IFMT(mode) and not stat.S_ISREG(mode):  # no type bits: a plain file (zipfile's default)
            raise RunnerError(f"{archive}: member '{info.filename}' is not a regular file; refused")
        members.append(Member(name, info.file_size, info))
    return _check_sizes(archive, members)


def _tar_members(archive: Path, t: tarfile.TarFile) -> list[Member]:
    members, count = [], 0
    for info in t:  # read header by header, so a million members stop at the limit
        count += 1
        _check_count(archive, count)
        name = _safe_name(archive, info.name)
        if info.issym() or info.islnk():
            raise RunnerError(f"{archive}: member '{info.name}' is a link (to '{info.linkname}'); refused "
                              f"(nothing was unpacked)")
        if info.isdir() or name is None:
            continue
        if not info.isreg():
            raise RunnerError(f"{archive}: member '{info.name}' is a device, FIFO or other special file; refused")
        members.append(Member(name, info.size, info))
    return _check_sizes(archive, members)


def _check_count(archive: Path, count: int) -> None:
    if count > MAX_MEMBERS:
        raise RunnerError(f"{archive}: more than {MAX_MEMBERS:,} members; refused as a model archive")


def _check_sizes(archive: Path, members: list[Member]) -> list[Member]:
    for member in members:
        if member.size > MAX_MEMBER_BYTES:
            raise RunnerError(f"{archive}: member '{member.name}' is {member.size / 1e9:.1f} GB, over the "
                              f"{MAX_MEMBER_BYTES / 1e9:.1f} GB limit for one file; refused")
    total = sum(m.size for m in members)
    if total > MAX_TOTAL_BYTES:
        raise RunnerError(f"{archive}: {total / 1e9:.1f} GB unpacked, over the {MAX_TOTAL_BYTES / 1e9:.1f} GB limit")
    seen: set[str] = set()
    directories = {str(parent) for m in members for parent in PurePosixPath(m.name).parents}  # linear, not pairwise
    for member in members:
        if member.name in seen or member.name in directories:
            raise RunnerError(f"{archive}: member '{member.name}' is named twice or is both a file and a "
                              f"directory; refused")
        seen.add(member.name)
    return members


def _copy(source: IO[bytes], target: Path, limit: int, archive: Path, name: str) -> None:
    """Copy at most `limit` bytes (the declared size) into `target`, a new file."""
    written = 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("xb") as out:
        while block := source.read(CHUNK):
            written += len(block)
            if written > limit:
                raise RunnerError(f"{archive}: member '{name}' holds more bytes than its header declares; refused")
            out.write(block)


def _verified(entry: Path) -> dict[str, Any] | None:
    """The entry's meta.yaml contents when every recorded file is there with its recorded sha256."""
    try:
        record = json.loads((entry / RECORD).read_text(encoding="utf-8"))
        for name, (size, digest) in record["files"].items():
            path = entry / name
            if path.is_symlink() or not path.is_file() or path.stat().st_size != size or sha256(path) != digest:
                return None
        return record["meta"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def unpack(archive: Path, cache: Path) -> tuple[Path, dict[str, Any]]:
    """Unpack `archive` into `cache/<sha256>` (or reuse a verified entry); returns the entry and its meta.yaml.

    The configs meta.yaml lists (`yaml_files`) are rewritten as ESPnet's `unpack` rewrites them: a
    value that names a member of the archive becomes that file's unpacked path.

    Args:
        archive: a packed model (`espnet2.bin.pack` output: meta.yaml, a config and weights).
        cache: the directory that holds unpacked archives.

    Returns:
        The entry's directory and meta.yaml's mappings (`yaml_files`, `files`: key to member name).

    Raises:
        RunnerError: an unsafe or unreadable archive, or one without a valid meta.yaml; nothing is
            written outside a temporary directory of `cache`, which is removed.
    """
    entry = cache / sha256(archive)
    meta = _verified(entry)
    if meta is not None:
        return entry, meta
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=cache))
    try:
        meta = _unpack_into(archive, work, entry)
        if entry.exists():  # a stale or tampered entry: replaced whole
            shutil.rmtree(entry)
        work.rename(entry)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return entry, meta


def _unpack_into(archive: Path, work: Path, entry: Path) -> dict[str, Any]:
    with _opened(archive) as (members, open_member):
        meta_name = next((m.name for m in members if PurePosixPath(m.name).name == "meta.yaml"), None)
        if meta_name is None:
            raise RunnerError(f"{archive}: not an ESPnet packed model (no meta.yaml)")
        for member in members:
            with open_member(member.handle) as source:
                _copy(source, work / member.name, member.size, archive, member.name)
    names = {m.name for m in members}
    meta = _read_meta(archive, work / meta_name, names)
    for name in meta["yaml_files"].values():
        config = _rewrite_config(work / name, entry, names)
        (work / name).write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    record = {name: ((work / name).stat().st_size, sha256(work / name)) for name in names}
    (work / RECORD).write_text(json.dumps({"meta": meta, "files": record}), encoding="utf-8")
    return meta


def _read_meta(archive: Path, path: Path, names: set[str]) -> dict[str, Any]:
    from runner.yamlio import read_yaml

    meta = read_yaml(path, f"meta.yaml of {archive}")
    if not isinstance(meta, dict) or not all(isinstance(meta.get(k), dict) for k in ("yaml_files", "files")):
        raise RunnerError(f"{archive}: meta.yaml has no 'yaml_files' and 'files' mappings")
    checked: dict[str, dict[str, str]] = {}
    for group in ("yaml_files", "files"):
        checked[group] = {}
        for key, value in meta[group].items():
            name = _safe_name(archive, value) if isinstance(value, str) else None
            if name not in names:
                raise RunnerError(f"{archive}: meta.yaml names '{value}' ({key}), which the archive does not hold")
            checked[group][str(key)] = name
    return checked


def _rewrite_config(config: Path, entry: Path, names: set[str]) -> Any:
    """A packed config with every value naming a member of the archive turned into its path under `entry`."""
    from runner.yamlio import read_yaml

    def resolve(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        if isinstance(value, str) and ".." not in PurePosixPath(value).parts:
            name = _safe_name(config, value)
            if name in names:
                return str(entry / name)
        return value

    return resolve(read_yaml(config, "packed training config"))
