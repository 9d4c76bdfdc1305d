"""Reading audio: whole files or sample-exact slices, mono float32, at the model's rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import torch

from runner.errors import RunnerError, first_line


def audio_info(path: Path) -> tuple[int, int]:
    """(sample rate, number of frames) of an audio file, or a RunnerError naming it."""
    if not path.is_file():
        raise RunnerError(f"{path}: audio file not found")
    try:
        info = soundfile.info(str(path))
    except Exception as error:  # soundfile raises its own LibsndfileError/RuntimeError
        raise RunnerError(f"{path}: unreadable audio ({first_line(error)})") from error
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
    return mono.astype(np.float32), int(rate)


def resample(waveform: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Resample with torchaudio's band-limited sinc interpolation (a no-op at equal rates)."""
    if rate == target_rate:
        return waveform
    import torchaudio.functional

    tensor = torch.from_numpy(np.ascontiguousarray(waveform))
    return torchaudio.functional.resample(tensor, rate, target_rate).numpy()


def to_mono_float(waveform: np.ndarray | torch.Tensor) -> np.ndarray:
    """Accept (samples,), (samples, channels) or (channels, samples) input from a demo."""
    array = waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
    if array.ndim == 2:
        channel_axis = 0 if array.shape[0] < array.shape[1] else 1
        array = array.mean(axis=channel_axis)
    if array.ndim != 1:
        raise RunnerError(f"waveform: expected 1 or 2 dimensions, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.integer):
        array = array / float(np.iinfo(array.dtype).max + 1)
    return array.astype(np.float32)

