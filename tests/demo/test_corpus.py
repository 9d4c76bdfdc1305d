"""The committed demo corpus (dev, tst-COMMON) and the deterministic builder behind it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import soundfile
import yaml

from runner import defaults
from runner.demo import corpus
from runner.data import load_test_set

COMMITTED = ("dev", "tst-COMMON")
SMALL_BUILD_MANIFEST = Path(__file__).with_name("small_build.sha256")
SMALL_SIZES = {"train": 0, "dev": 3, "tst-COMMON": 4}


@pytest.mark.parametrize("split", COMMITTED)
def test_committed_split_is_valid_mustc(split: str) -> None:
    txt = defaults.DEMO_CORPUS / "en-de" / "data" / split / "txt"
    text = (txt / f"{split}.yaml").read_text(encoding="utf-8")
    safe, strings = yaml.safe_load(text), yaml.load(text, Loader=yaml.BaseLoader)
    assert len(safe) == len(strings) == corpus.DEFAULT_SIZES[split]
    assert all(list(entry) == ["duration", "offset", "speaker_id", "wav"] for entry in strings)
    assert all(isinstance(entry["offset"], float) for entry in safe)
    for suffix in ("en", "de"):
        assert len((txt / f"{split}.{suffix}").read_text(encoding="utf-8").splitlines()) == len(safe)
    for entry in safe:
        info = soundfile.info(str(txt.parent / "wav" / entry["wav"]))
        assert info.samplerate == 16000 and info.channels == 1
        assert 0 <= entry["offset"] and entry["offset"] + entry["duration"] <= info.frames / info.samplerate
    assert len(load_test_set(defaults.DEMO_CORPUS, split).segments) == len(safe)


def test_test_speakers_are_unseen_in_training_and_sentences_disjoint() -> None:
    speakers = set()
    for entry in yaml.safe_load((defaults.DEMO_CORPUS / "en-de/data/tst-COMMON/txt/tst-COMMON.yaml").read_text()):
        speakers.add(entry["speaker_id"].split("+")[1])
    assert speakers and not speakers & set(corpus.VARIANTS["train"])
    pairs = corpus.sentence_pairs({"train": 2000, "dev": 200, "tst-COMMON": 100})
    splits = {name: {en for en, _ in items} for name, items in pairs.items()}
    assert not (splits["train"] & splits["dev"] or splits["train"] & splits["tst-COMMON"]
                or splits["dev"] & splits["tst-COMMON"])
    committed_test = (defaults.DEMO_CORPUS / "en-de/data/tst-COMMON/txt/tst-COMMON.en").read_text().splitlines()
    assert committed_test == [en for en, _ in pairs["tst-COMMON"]]


def test_committed_files_match_their_manifest() -> None:
    manifest = corpus.read_manifest(defaults.DEMO_CORPUS / "MANIFEST.sha256")
    assert manifest == corpus.checksums(defaults.DEMO_CORPUS)


@pytest.mark.skipif(shutil.which("espeak-ng") is None,
                    reason="espeak-ng is not installed: apt-get install espeak-ng (Debian) to run the builder")
def test_small_build_is_byte_identical_to_its_manifest(tmp_path: Path) -> None:
    corpus.build(tmp_path, SMALL_SIZES, splits=("dev", "tst-COMMON"))
    assert corpus.checksums(tmp_path) == corpus.read_manifest(SMALL_BUILD_MANIFEST)


def test_builder_without_espeak_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from runner.errors import RunnerError

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RunnerError, match="apt-get install espeak-ng"):
        corpus.build(tmp_path, SMALL_SIZES, splits=("dev",))
