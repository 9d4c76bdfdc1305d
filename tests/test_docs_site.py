"""The documentation: the README is a quick start with the two set-up commands first, and the docs site builds
with `mkdocs build --strict` (every page in the nav, every relative link resolving)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from runner.defaults import REPO_ROOT


def test_the_readme_is_a_quick_start_with_the_two_set_up_commands_first() -> None:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    blocks = re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S)
    assert [language for language, _ in blocks[:2]] == ["sh", "sh"]
    first, second = (body.strip() for _, body in blocks[:2])
    assert first.endswith("pip install -q . && .venv/bin/runner translate")
    assert second.endswith("pip install -q -e '.[test]' && .venv/bin/python -m pytest")
    assert second in (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")  # what CI runs
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (REPO_ROOT / link).is_file(), link


def test_the_docs_site_builds_strictly(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "engines" / "index.html").is_file()
    listed = set(re.findall(r"([\w.-]+\.md)", (REPO_ROOT / "mkdocs.yml").read_text(encoding="utf-8")))
    assert listed == {p.name for p in (REPO_ROOT / "docs").glob("*.md")}, "every page of docs/ is in the nav"
