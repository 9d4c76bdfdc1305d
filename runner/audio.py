"""Reading audio: whole files or sample-exact slices, mono float32, at the model's rate.

Audio headers are input a stranger may have crafted, so what a header claims is admitted before any
sample is decoded (`check_format`: the rate, the channels), decoded samples must be finite numbers of
audio's range (`check_samples`), and resampling approximates the rate ratio by small integers, so its
filter bank stays small whatever rate a header names (16,001 Hz would otherwise build 16,001 filters).
The same rules hold for MuST-C data, the library's `translate(waveform, rate)` and the server.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile
import torch

from runner.errors import RunnerError, first_line


MIN_RATE, MAX_RATE = 1_000, 192_000  # Hz: telephone speech to studio audio
MAX_CHANNELS = 8
MAX_MAGNITUDE = 1_000.0  # float audio is about [-1, 1]; a sample past this is not audio
RATIO_TERMS = 1_000  # the largest term of the rational rate ratio resampling uses (441/160 for 44.1 kHz)


def check_format(source: object, rate: int, channels: int = 1) -> None:
    """Refuse, in one line naming `source`, a sample rate or channel count that is not speech audio's."""
    if not MIN_RATE <= rate <= MAX_RATE:
        raise RunnerError(f"{source}: sample rate {rate:,} Hz is outside {MIN_RATE:,}..{MAX_RATE:,} Hz")
    if not 1 <= channels <= MAX_CHANNELS:
        raise RunnerError(f"{source}: {channels} channels; at most {MAX_CHANNELS} are read")


def check_samples(source: object, samples: np.ndarray) -> None:
    """Refuse, in one line naming `source`, samples that are NaN, infinite or far out of audio's range."""
    if samples.size == 0:
        return
    if not np.isfinite(samples).all():
        raise RunnerError(f"{source}: audio holds NaN or infinite samples")
    peak = float(np.abs(samples).max())
    if peak > MAX_MAGNITUDE:
        raise RunnerError(f"{source}: audio sample magnitude {peak:.3g} is out of range (audio is about -1..1)")


def audio_info(path: Path) -> tuple[int, int]:
    """(sample rate, number of frames) of an audio file, or a RunnerError naming it (see `check_format`)."""
    if not path.is_file():
        raise RunnerError(f"{path}: audio file not found")
    try:
        info = soundfile.info(str(path))
    except Exception as error:  # soundfile raises its own LibsndfileError/RuntimeError
        raise RunnerError(f"{path}: unreadable audio ({first_line(error)})") from error
    check_format(path, int(info.samplerate), int(info.channels))
    return int(info.samplerate), int(info.frames)


def read_audio(path: Path, start: int = 0, frames: int = -1) -> tuple[np.ndarray, int]:
    """Samples [start, start + frames) of `path` as mono float32, and the file's rate.

    float64 -> float32 reproduces what ESPnet's `sound` loader feeds `Speech2Text`,
    so the runner's input is bit-identical to `espnet2.bin.st_inference`'s.
    """
    try:
        with soundfile.SoundFile(str(path)) as f:
            f.seek(start)
            samples = f.read(frames, dtype="float64", always_2d=True)
            rate = f.samplerate
    except Exception as error:
        raise RunnerError(f"{path}: unreadable audio ({first_line(error)})") from error
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    check_samples(path, mono)
    return mono.astype(np.float32), int(rate)


def resample(waveform: np.ndarray, rate: int, target_rate: int, source: object = "waveform") -> np.ndarray:
    """Resample with torchaudio's band-limited sinc interpolation (a no-op at equal rates).

    The ratio is taken as the nearest fraction whose terms are at most `RATIO_TERMS`: exact for the
    usual rates (8, 11.025, 22.05, 44.1, 48 kHz to 16 kHz), and for an odd rate a pitch error under
    0.1 %, where the exact ratio (16,001/16,000) would cost gigabytes of filters and seconds.
    `source` names the audio in a refusal (`check_format`).
    """
    check_format(source, rate)
    ratio = Fraction(rate, target_rate).limit_denominator(RATIO_TERMS)
    while ratio.numerator > RATIO_TERMS:  # a rate far above the target: bound the numerator too
        ratio = Fraction(round(ratio.numerator / 2), max(1, round(ratio.denominator / 2)))
    if ratio == 1:
        return waveform
    import torchaudio.functional

    tensor = torch.from_numpy(np.ascontiguousarray(waveform))
    return torchaudio.functional.resample(tensor, ratio.numerator, ratio.denominator).numpy()


def to_mono_float(waveform: np.ndarray | torch.Tensor, source: object = "waveform") -> np.ndarray:
    """Accept (samples,), (samples, channels) or (channels, samples) input from a demo (`source` names it in errors)."""
    array = waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
    if np.issubdtype(array.dtype, np.integer):  # before any mean, which would make it float unscaled
        array = array / float(np.iinfo(array.dtype).max + 1)
    if array.ndim == 2:
        channel_axis = 0 if array.shape[0] < array.shape[1] else 1
        array = array.mean(axis=channel_axis)
    if array.ndim != 1:
        raise RunnerError(f"{source}: expected 1 or 2 dimensions, got shape {array.shape}")
    check_samples(source, array)
    return array.astype(np.float32)

