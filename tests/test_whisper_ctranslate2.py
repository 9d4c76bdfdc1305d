"""Whisper from CTranslate2 (faster-whisper's model directory) as an ESPnet experiment: `runner convert-whisper`.

The CTranslate2 model is a tiny Whisper-shaped one (64 wide, one 64-wide head, 2 + 2 layers, Whisper's own
multilingual vocabulary) built here by CTranslate2's own converter from a seeded Hugging Face Whisper and saved in
float16, as the registry's packages are. What the runner decodes from the converted experiment is checked against
CTranslate2 decoding the original directory (the runtime faster-whisper runs), against ESPnet's own inference, and
across the runner's engines; the decodes are shared by module-scoped fixtures.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import espnet_call
from runner import defaults
from runner.cli import app
from runner.data import load_test_set, preload
from runner.decode import DecodeOptions
from runner.errors import RunnerError
from runner.runner import Runner

whisper = pytest.importorskip("whisper", reason="openai-whisper (the whisper extra) is not installed")
ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 (in the test extra) is not installed")
pytest.importorskip("transformers", reason="transformers (in the test extra) builds the CTranslate2 fixture")
PRIMER = [50258, 50259, 50359, 50363]  # <|startoftranscript|> <|en|> <|transcribe|> <|notimestamps|>
EOS = 50257
SHORT = DecodeOptions(beam_size=1, maxlenratio=-12.0)  # greedy, 12 tokens at most: CTranslate2's greedy search


def build_ct2_whisper(out: Path, heads: int = 1) -> Path:
    """A seeded Hugging Face Whisper, 64 wide, converted by CTranslate2's converter and saved in float16."""
    from ctranslate2.converters.transformers import WhisperLoader
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from runner.whisper.offline import espnet_compatible
    from runner.whisper.tokens import token_list

    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=51865, d_model=64, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=256,
                           decoder_ffn_dim=256, num_mel_bins=80, max_source_positions=1500,
                           max_target_positions=448, init_std=0.3)  # large weights: varied, confident tokens
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.model.decoder.embed_tokens.weight[EOS] *= 1.5  # (tied: its logit too) hypotheses end, some soon
    loader = WhisperLoader()
    spec = loader.get_model_spec(model)
    loader.set_config(spec.config, model, None)
    with espnet_compatible("the fixture") as module:
        spec.register_vocabulary([token.replace(" ", "Ġ") for token in token_list(module, True)])
    spec.validate()
    spec.optimize(quantization="float16")
    out.mkdir(parents=True, exist_ok=True)
    spec.save(str(out))
    return out


@pytest.fixture(scope="module")
def ct2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_ct2_whisper(tmp_path_factory.mktemp("ct2") / "whisper-tiny-ct2")


@pytest.fixture(scope="module")
def converted(ct2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = CliRunner().invoke(app, ["convert-whisper", str(ct2_dir), str(tmp_path_factory.mktemp("exp") / "exp")])
    assert result.exit_code == 0, result.output
    return Path(result.output.split("wrote ", 1)[1].split(":", 1)[0])


@pytest.fixture(scope="module")
def utterances() -> list:
    return preload(load_test_set(defaults.data_path(), "tst-COMMON"), 16000, limit=2).utterances


@pytest.fixture(scope="module")
def greedy(converted: Path) -> Runner:
    return Runner(converted, SHORT, threads=2)


def _features(waveform: np.ndarray) -> object:
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.as_tensor(waveform, dtype=torch.float32)))
    return ctranslate2.StorageView.from_array(mel[None].numpy())


def test_converted_whisper_encodes_and_decodes_as_ctranslate2(ct2_dir: Path, greedy: Runner,
                                                               utterances: list) -> None:
    """Same audio, same 30 s padding, same greedy search: the encoder's output to float rounding, and the same
    tokens, as CTranslate2's own Whisper on the float16 directory (float16 widened to float32 is exact)."""
    reference = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32", intra_threads=2)
    tokenizer = whisper.tokenizer.get_tokenizer(True, language="en", task="transcribe")
    for utterance in utterances:
        features = _features(utterance.waveform)
        theirs = np.array(reference.encode(features, to_cpu=True))[0]
        waveform = torch.as_tensor(utterance.waveform, dtype=torch.float32)[None]
        with torch.no_grad():
            ours = greedy.bundle.model.encoder(waveform, torch.tensor([waveform.size(1)]))[0][0].numpy()
        assert ours.shape == theirs.shape == (1500, 64)
        assert np.abs(ours - theirs).max() < 1e-3 * np.abs(theirs).max()  # measured: 3e-6 of it
        result = greedy.translate(utterance.waveform, 16000)
        generated = reference.generate(features, [PRIMER], beam_size=1, max_length=64,
                                       suppress_blank=False, suppress_tokens=[])[0].sequences_ids[0]
        assert len(result.tokens) >= 3
        assert result.text == tokenizer.decode(generated[:len(result.tokens)])


def test_the_runner_translates_the_converted_whisper_as_espnets_inference(greedy: Runner, utterances: list) -> None:
    result = greedy.translate(utterances[1].waveform, 16000)
    assert result.text == espnet_call(greedy.bundle, utterances[1].waveform)[0][0]


def test_the_lean_engine_finds_espnets_hypotheses_on_whisper(converted: Path, utterances: list) -> None:
    """Learned positions, the tied output projection, its cache and the primer: beam 3, the same n-best; and
    with settled-stop, the same n-best (benchmarks.peers shows its steps saved on Whisper base)."""
    options = DecodeOptions(beam_size=3, nbest=2, maxlenratio=-12.0)
    espnet = Runner(converted, options, threads=2)
    lean = Runner(espnet.bundle.copy(), options, threads=2, search="lean")
    settled = Runner(espnet.bundle.copy(), options, threads=2, search="lean", plugins=["settled-stop"])
    for utterance in utterances:
        theirs = espnet.translate(utterance.waveform, 16000)
        for ours in (lean.translate(utterance.waveform, 16000), settled.translate(utterance.waveform, 16000)):
            assert ours.text == theirs.text and ours.tokens == theirs.tokens
            assert [float(h[3].score) for h in ours.nbest] == pytest.approx([float(h[3].score) for h in theirs.nbest],
                                                                            rel=1e-6)


def test_a_decode_that_never_ends_stops_at_whispers_448_positions(converted: Path, utterances: list,
                                                                  tmp_path: Path) -> None:
    """ESPnet's maxlen follows the encoder's 1500 frames; Whisper's decoder has 448 learned positions, so a
    hypothesis that never ends (here <|endoftext|> embedded as zeros: never the likeliest) used to index past
    them. Both engines stop after 448 - 4 (the primer) + 1 steps, the last <|endoftext|>."""
    endless = tmp_path / "endless"
    shutil.copytree(converted, endless)
    state = torch.load(endless / "model.pth")
    state["decoder.decoders.token_embedding.weight"][EOS] = 0.0
    torch.save(state, endless / "model.pth")
    espnet = Runner(endless, DecodeOptions(beam_size=1), threads=2)
    lean = Runner(espnet.bundle.copy(), DecodeOptions(beam_size=1), threads=2, search="lean")
    waveform = utterances[0].waveform
    for runner in (espnet, lean):
        result = runner.translate(waveform, 16000)
        assert result.steps == {"st_search": 448 - len(PRIMER) + 1}
        assert 0 < len(result.tokens) <= 448 - len(PRIMER)  # the text's tokens (special ones left out)


def test_dynamic_int8_quantizes_whispers_tied_output_projection(converted: Path, utterances: list) -> None:
    """The projection onto 51,865 tokens is most of a small Whisper's decoder time: a Linear the plugin sees
    (int8 beside the float embedding that looks the tokens up: the saved model grows by its int8 copy)."""
    runner = Runner(converted, SHORT, threads=2, plugins=["dynamic-int8"])
    projection = runner.bundle.model.decoder.output_layer
    assert "quantized" in type(projection).__module__
    assert projection.weight().dtype == torch.qint8 and tuple(projection.weight().shape) == (51865, 64)
    assert len(runner.translate(utterances[0].waveform, 16000).tokens) >= 1


def _write_parts(root: Path, stem: str, model_bin: bytes, numbers: list[int], extra: Path) -> None:
    """Data packages as the registry's: `<stem>_partN/data/model.bin.partM`, the first with the side files."""
    cut = len(model_bin) // 2
    for index, number in enumerate(numbers, start=1):
        data = root / f"{stem}_part{index}" / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("")
        (data / f"model.bin.part{number}").write_bytes(model_bin[:cut] if index == 1 else model_bin[cut:])
        if index == 1:
            for name in ("config.json", "vocabulary.json"):
                shutil.copyfile(extra / name, data / name)


def test_installed_packages_are_joined_and_a_missing_part_refused(ct2_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.whisper.packages import assemble

    model_bin = (ct2_dir / "model.bin").read_bytes()
    _write_parts(tmp_path, "fakewhisper_tiny", model_bin, [1, 2], ct2_dir)
    _write_parts(tmp_path, "gappy_whisper", model_bin, [1, 3], ct2_dir)
    monkeypatch.syspath_prepend(str(tmp_path))
    joined = assemble("fakewhisper-tiny", tmp_path / "joined")
    assert (joined / "model.bin").read_bytes() == model_bin
    assert (joined / "vocabulary.json").read_bytes() == (ct2_dir / "vocabulary.json").read_bytes()
    with pytest.raises(RunnerError, match=r"gappy-whisper: the installed packages hold model.bin parts \[1, 3\]"):
        assemble("gappy-whisper", tmp_path / "gap")
    result = CliRunner().invoke(app, ["convert-whisper", "no-such-whisper", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no-such-whisper: neither a directory nor installed packages" in result.output


def _truncated(ct2_dir: Path, target: Path) -> Path:
    shutil.copytree(ct2_dir, target)
    data = (target / "model.bin").read_bytes()
    (target / "model.bin").write_bytes(data[: len(data) // 3])
    return target


def _version_99(ct2_dir: Path, target: Path) -> Path:
    shutil.copytree(ct2_dir, target)
    data = bytearray((target / "model.bin").read_bytes())
    data[:4] = (99).to_bytes(4, "little")
    (target / "model.bin").write_bytes(bytes(data))
    return target


def _two_heads(ct2_dir: Path, target: Path) -> Path:
    return build_ct2_whisper(target, heads=2)


@pytest.mark.parametrize("craft, message", [
    (_truncated, r"truncated or corrupt: .* runs past the end of the file"),
    (_version_99, r"not a CTranslate2 model.bin this runner reads \(version 99"),
    (_two_heads, r"its encoder has 2 attention heads of 32 \(width 64\)"),
])
def test_a_crafted_ctranslate2_directory_is_refused_in_one_line(ct2_dir: Path, tmp_path: Path, craft: object,
                                                                message: str) -> None:
    source = craft(ct2_dir, tmp_path / "crafted")
    result = CliRunner().invoke(app, ["convert-whisper", str(source), str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {source}") and re.search(message, lines[0])
    assert not (tmp_path / "out" / "config.yaml").exists()


def test_an_experiment_already_written_is_not_overwritten(ct2_dir: Path, converted: Path) -> None:
    before = (converted / "model.pth").stat().st_mtime_ns
    result = CliRunner().invoke(app, ["convert-whisper", str(ct2_dir), str(converted)])
    assert result.exit_code == 2 and "already holds an experiment" in result.output
    assert (converted / "model.pth").stat().st_mtime_ns == before
    assert sys.modules.get("whisper") is whisper
