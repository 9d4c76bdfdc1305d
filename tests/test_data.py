from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

from conftest import SEGMENTS, write_corpus
from runner.data import load_test_set, preload, read_kaldi_dir, select
from runner.errors import RunnerError


def test_mustc_v1_segments_cut_at_exact_sample_counts(corpus: Path) -> None:
    test_set = load_test_set(corpus, "tst-COMMON")
    assert (test_set.source_lang, test_set.target_lang) == ("en", "de")
    assert len(test_set.segments) == 5
    first = test_set.segments[0]
    assert (first.start, first.frames, first.sample_rate) == (4000, 16000, 16000)
    flac = test_set.segments[3]
    assert (flac.start, flac.frames, flac.sample_rate) == (800, 8800, 8000)
    assert first.reference == "Der Hund sieht ein Auto." and first.source == "The dog sees a car."

    loaded = preload(test_set, sample_rate=8000)
    for utterance, (rate, offset, duration) in zip(
        loaded.utterances, [(r, o, d) for r, segs in SEGMENTS.values() for o, d, *_ in segs]
    ):
        samples, file_rate = soundfile.read(str(utterance.segment.audio_path), dtype="float32")
        assert file_rate == rate
        if rate == 8000:  # no resampling: the cut must equal the file's samples exactly
            start = round(offset * rate)
            np.testing.assert_array_equal(utterance.waveform, samples[start : start + round(duration * rate)])


def test_resampling_to_the_model_rate(corpus: Path) -> None:
    loaded = preload(load_test_set(corpus, "tst-COMMON"), sample_rate=16000)
    eight_khz = loaded.utterances[3]
    assert eight_khz.segment.sample_rate == 8000
    assert len(eight_khz.waveform) == 2 * eight_khz.segment.frames
    assert eight_khz.sample_rate == 16000
    assert loaded.memory_bytes == sum(u.waveform.nbytes for u in loaded.utterances)
    assert loaded.audio_seconds == pytest.approx(1.0 + 1.25 + 0.8 + 1.1 + 0.9)


def test_mustc_v2_yaml_with_rw_uw(corpus_v2: Path) -> None:
    yaml_text = (corpus_v2 / "en-de/data/tst-COMMON/txt/tst-COMMON.yaml").read_text()
    assert "rW: 9, uW: 0" in yaml_text
    test_set = load_test_set(corpus_v2 / "en-de", "tst-COMMON")  # the pair directory is a valid root too
    assert [s.frames for s in test_set.segments] == [16000, 20000, 12800, 8800, 7200]


def test_subset_first_n_and_seeded_draw() -> None:
    assert select(10, 3, None) == [0, 1, 2]
    drawn = select(10, 3, 0)
    assert drawn == select(10, 3, 0) and drawn == sorted(drawn) and drawn != select(10, 3, 1)
    assert select(10, None, 0) == list(range(10))
    with pytest.raises(RunnerError, match="positive"):
        select(10, 0, None)


def test_kaldi_data_directory(tmp_path: Path, corpus: Path) -> None:
    test_set = load_test_set(corpus, "tst-COMMON")
    data_dir = tmp_path / "tst-COMMON.en-de"
    data_dir.mkdir()
    wav_dir = corpus / "en-de/data/tst-COMMON/wav"
    (data_dir / "wav.scp").write_text(f"talk1 {wav_dir / 'ted_1.wav'}\ntalk2 {wav_dir / 'ted_2.flac'}\n")
    (data_dir / "segments").write_text("u1 talk1 0.25 1.25\nu2 talk2 0.1 1.2\n")
    (data_dir / "text.tc.de").write_text("u1 Der Hund sieht ein Auto.\nu2 Das Mädchen kann die Tür öffnen.\n")
    (data_dir / "text.lc.rm.en").write_text("u1 the dog sees a car\nu2 the girl can open the door\n")
    kaldi = load_test_set(data_dir)
    assert kaldi.format == "kaldi" and [s.id for s in kaldi.segments] == ["u1", "u2"]
    assert kaldi.segments[0].frames == test_set.segments[0].frames
    assert kaldi.segments[1].source == "the girl can open the door"
    a = preload(kaldi, 16000).utterances[0].waveform
    b = preload(test_set, 16000, limit=1).utterances[0].waveform
    np.testing.assert_array_equal(a, b)
    other = read_kaldi_dir(data_dir, text="text.lc.rm.en")
    assert other.segments[0].reference == "the dog sees a car"


def _txt(root: Path) -> Path:
    return root / "en-de/data/tst-COMMON/txt"


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda r: (_txt(r) / "tst-COMMON.de").write_text("only one line\n"), r"tst-COMMON\.de 1"),
        (lambda r: (r / "en-de/data/tst-COMMON/wav/ted_1.wav").unlink(), r"ted_1\.wav: audio file not found"),
        (lambda r: (r / "en-de/data/tst-COMMON/wav/ted_1.wav").write_bytes(b"not audio"), r"ted_1\.wav: unreadable audio"),
        (lambda r: [(_txt(r) / f"tst-COMMON.{s}").write_text("") for s in ("yaml", "en", "de")], "is empty"),
        (lambda r: (_txt(r) / "tst-COMMON.yaml").write_text(
            (_txt(r) / "tst-COMMON.yaml").read_text().replace("offset: 3.000000", "offset: 30.000000")), "lies outside"),
        (lambda r: (_txt(r) / "tst-COMMON.yaml").write_text("- {duration: 1.0, offset: [\n"), "invalid YAML"),
    ],
    ids=["line-counts", "missing-wav", "unreadable-audio", "empty-split", "segment-outside-wav", "bad-yaml"],
)
def test_bad_corpus_gives_one_line_error_naming_the_file(corpus: Path, breakage, message: str) -> None:
    breakage(corpus)
    with pytest.raises(RunnerError, match=message) as error:
        load_test_set(corpus, "tst-COMMON")
    assert "\n" not in str(error.value)
    assert str(corpus) in str(error.value)


def test_missing_split_names_the_root(corpus: Path) -> None:
    with pytest.raises(RunnerError, match="no MuST-C split 'tst-HE'"):
        load_test_set(corpus, "tst-HE")


def test_yaml_written_as_the_release_writes_it(corpus: Path) -> None:
    path = _txt(corpus) / "tst-COMMON.yaml"
    strings = yaml.load(path.read_text(), Loader=yaml.BaseLoader)
    assert strings[0] == {"duration": "1.000000", "offset": "0.250000", "speaker_id": "spk.1", "wav": "ted_1.wav"}
    write_corpus(corpus, version=2)
    assert list(yaml.safe_load(path.read_text())[0]) == ["duration", "offset", "rW", "uW", "speaker_id", "wav"]
