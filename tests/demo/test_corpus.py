"""The committed demo corpus (dev, tst-COMMON, tst-HE) and the deterministic builder behind it."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

from runner import defaults
from runner.demo import augment, corpus
from runner.data import load_test_set
from runner.demo.voices import INSTALL, missing_engines

COMMITTED = ("dev", "tst-COMMON", "tst-HE")
SMALL_BUILD_MANIFEST = Path(__file__).with_name("small_build.sha256")
# Two training talks (espeak-ng and Festival, augmented), one talk of each other split.
SMALL_SIZES = {"train": 23, "dev": 3, "tst-COMMON": 4, "tst-HE": 2}
needs_engines = pytest.mark.skipif(
    bool(missing_engines()),
    reason=f"a synthesizer is missing: {INSTALL} (Debian) to run the builder")


def _rows(split: str) -> list[dict]:
    return yaml.safe_load((defaults.DEMO_CORPUS / "en-de/data" / split / "txt" / f"{split}.yaml").read_text())


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
    training = corpus.split_speakers("train")
    # Every training talk the builder plans is spoken by a training voice, never by a test one.
    planned = {corpus.speaker_of(corpus.talk_voice("train", index, random.Random(f"train-{index}")).speaker_id)
               for index in range(corpus.DEFAULT_SIZES["train"] // corpus.UTTERANCES_PER_TALK)}
    assert planned <= training and {"festival:kal_diphone", "festival:cmu_us_slt_arctic_hts"} <= planned
    common = {corpus.speaker_of(entry["speaker_id"]) for entry in _rows("tst-COMMON")}
    held_out = {corpus.speaker_of(entry["speaker_id"]) for entry in _rows("tst-HE")}
    assert common and not common & training
    assert {"festival:ked_diphone"} < common  # an unheard voice of a trained engine, beside espeak-ng ones
    assert held_out == {"flite:awb", "flite:rms"} and not held_out & training
    assert "flite" not in corpus.TALK_ENGINES["train"] + corpus.TALK_ENGINES["dev"]
    pairs = corpus.sentence_pairs(corpus.DEFAULT_SIZES)
    splits = {name: {en for en, _ in items} for name, items in pairs.items()}
    assert not (splits["train"] & splits["dev"] or splits["train"] & splits["tst-COMMON"]
                or splits["dev"] & splits["tst-COMMON"])
    for split in ("tst-COMMON", "tst-HE"):
        committed = (defaults.DEMO_CORPUS / "en-de/data" / split / "txt" / f"{split}.en").read_text().splitlines()
        assert committed == [en for en, _ in pairs[split]]
    assert pairs["tst-HE"] == pairs["tst-COMMON"]  # the same sentences: the splits differ only in their speech


def test_committed_files_match_their_manifest() -> None:
    manifest = corpus.read_manifest(defaults.DEMO_CORPUS / "MANIFEST.sha256")
    assert manifest == corpus.checksums(defaults.DEMO_CORPUS)
    assert any(name.startswith("en-de/data/tst-HE/wav/") for name in manifest)


@needs_engines
def test_small_build_is_byte_identical_to_its_manifest(tmp_path: Path) -> None:
    corpus.build(tmp_path, SMALL_SIZES, jobs=2)
    built = corpus.checksums(tmp_path, include_train=True)
    assert built == corpus.read_manifest(SMALL_BUILD_MANIFEST)
    tsv = (tmp_path / "en-de/data/train/txt/train.augment.tsv").read_text().splitlines()
    assert len(tsv) == 1 + SMALL_SIZES["train"] and "festival+" in tsv[-1]


def test_augmentation_changes_speech_as_it_says() -> None:
    t = np.arange(16000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 200 * t) * 32767).astype(np.int16)  # 1 s at 200 Hz

    def dominant_hz(samples: np.ndarray) -> float:
        spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
        return float(np.fft.rfftfreq(len(samples), 1 / 16000)[np.argmax(spectrum)])

    slower = augment.apply(tone, augment.Augmentation(speed=0.9))
    assert abs(len(slower) / len(tone) - 1 / 0.9) < 0.01 and abs(dominant_hz(slower) - 180) < 3
    higher = augment.apply(tone, augment.Augmentation(semitones=2))
    assert abs(len(higher) - len(tone)) < 0.02 * len(tone) and abs(dominant_hz(higher) - 200 * 2 ** (2 / 12)) < 5
    quieter = augment.apply(tone, augment.Augmentation(gain_db=-6.0))
    assert abs(np.abs(quieter).max() / np.abs(tone).max() - 10 ** (-6 / 20)) < 0.01
    noisy = augment.apply(tone, augment.Augmentation(noise="pink", snr_db=10.0, seed=3)).astype(np.float64)
    residual = noisy - tone
    assert abs(10 * np.log10(np.mean(tone.astype(np.float64) ** 2) / np.mean(residual**2)) - 10.0) < 0.2
    wet = augment.apply(tone, augment.Augmentation(rt60=0.5, seed=3))
    assert len(wet) > len(tone) and not np.array_equal(wet[: len(tone)], tone)
    assert augment.draw(random.Random(5)) == augment.draw(random.Random(5))


def test_builder_without_a_synthesizer_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from runner.errors import RunnerError

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RunnerError, match=r"espeak-ng: not installed; .*apt-get install espeak-ng festival"):
        corpus.build(tmp_path, SMALL_SIZES, splits=("dev",))
