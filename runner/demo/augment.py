"""Waveform augmentation for the demo corpus's training split, as a speech recipe would use it.

One `Augmentation` per utterance, drawn from a seeded generator, so the corpus stays byte-
reproducible: Kaldi-style speed perturbation (resampling: tempo and pitch together), a pitch shift
at constant tempo (phase-vocoder time stretch, then resampling), a volume change, simulated room
reverberation (an exponentially decaying noise impulse response with a given RT60) and additive
white, pink or brown noise at a given SNR. SpecAugment is the trainer's (configs/demo/train.yaml).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy.signal import fftconvolve, istft, resample_poly, stft

from runner.demo.voices import SAMPLE_RATE

SPEEDS = (0.9, 1.0, 1.1)
SEMITONES = (-2, -1, 1, 2)
SNRS_DB = (5, 10, 15, 20)
NOISES = ("white", "pink", "brown")
PITCH_PROBABILITY, REVERB_PROBABILITY, NOISE_PROBABILITY = 0.4, 0.3, 0.4


@dataclass(frozen=True)
class Augmentation:
    """What is done to one utterance, in this order; the neutral values mean "not applied"."""

    speed: float = 1.0
    semitones: int = 0
    gain_db: float = 0.0
    rt60: float = 0.0  # seconds; 0 = dry
    noise: str = ""  # white, pink, brown; "" = none
    snr_db: float = 0.0
    seed: int = 0  # for the impulse response and the noise

    def describe(self) -> str:
        """One TSV-friendly description, e.g. `speed=1.1 pitch=-2 gain=-3.0dB rt60=0.45s noise=pink@10dB`."""
        parts = [f"speed={self.speed}", f"pitch={self.semitones:+d}", f"gain={self.gain_db:+.1f}dB"]
        parts.append(f"rt60={self.rt60:.2f}s" if self.rt60 else "rt60=dry")
        parts.append(f"noise={self.noise}@{self.snr_db:g}dB" if self.noise else "noise=none")
        return " ".join(parts)


def draw(rng: random.Random) -> Augmentation:
    """A random augmentation for one training utterance."""
    speed = rng.choice(SPEEDS)
    semitones = rng.choice(SEMITONES) if rng.random() < PITCH_PROBABILITY else 0
    gain_db = round(rng.uniform(-12.0, 6.0), 1)
    rt60 = round(rng.uniform(0.15, 0.7), 2) if rng.random() < REVERB_PROBABILITY else 0.0
    noisy = rng.random() < NOISE_PROBABILITY
    noise, snr_db = (rng.choice(NOISES), float(rng.choice(SNRS_DB))) if noisy else ("", 0.0)
    return Augmentation(speed, semitones, gain_db, rt60, noise, snr_db, rng.randrange(2**31))


def apply(samples: np.ndarray, augmentation: Augmentation) -> np.ndarray:
    """The augmented int16 utterance (16 kHz in, 16 kHz out)."""
    x = samples.astype(np.float64) / 32768.0
    if augmentation.speed != 1.0:
        x = _resample(x, 1.0 / augmentation.speed)
    if augmentation.semitones:
        ratio = 2.0 ** (augmentation.semitones / 12.0)
        x = _resample(_time_stretch(x, ratio), 1.0 / ratio)
    rng = np.random.default_rng(augmentation.seed)
    if augmentation.rt60:
        x = _reverberate(x, augmentation.rt60, rng)
    if augmentation.noise:
        x = _add_noise(x, augmentation.noise, augmentation.snr_db, rng)
    x = x * 10.0 ** (augmentation.gain_db / 20.0)
    peak = np.max(np.abs(x)) if x.size else 0.0
    if peak > 0.99:  # a gain that would clip is lowered to the loudest clean one
        x = x * (0.99 / peak)
    return np.round(x * 32767).astype(np.int16)


def _resample(x: np.ndarray, length_ratio: float) -> np.ndarray:
    """Resample to `length_ratio` times as many samples (played at 16 kHz: slower and lower when > 1)."""
    ratio = Fraction(length_ratio).limit_denominator(64)
    return resample_poly(x, ratio.numerator, ratio.denominator)


def _time_stretch(x: np.ndarray, length_ratio: float, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """Phase-vocoder time stretch to `length_ratio` times the duration, pitch unchanged."""
    _, _, spectrum = stft(x, nperseg=n_fft, noverlap=n_fft - hop, boundary="zeros")
    frames = spectrum.shape[1]
    positions = np.arange(0.0, frames - 1, 1.0 / length_ratio)
    advance = 2.0 * np.pi * hop * np.arange(spectrum.shape[0]) / n_fft
    phase = np.angle(spectrum[:, 0])
    out = np.empty((spectrum.shape[0], len(positions)), dtype=np.complex128)
    for column, position in enumerate(positions):
        left, fraction = int(position), position - int(position)
        magnitude = (1 - fraction) * np.abs(spectrum[:, left]) + fraction * np.abs(spectrum[:, left + 1])
        out[:, column] = magnitude * np.exp(1j * phase)
        delta = np.angle(spectrum[:, left + 1]) - np.angle(spectrum[:, left]) - advance
        phase = phase + advance + (delta + np.pi) % (2 * np.pi) - np.pi
    _, y = istft(out, nperseg=n_fft, noverlap=n_fft - hop, boundary=True)
    return y


def _reverberate(x: np.ndarray, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room response (direct path + decaying diffuse tail: -60 dB at rt60)."""
    length = int(rt60 * SAMPLE_RATE)
    t = np.arange(length) / SAMPLE_RATE
    response = rng.standard_normal(length) * np.exp(-6.908 * t / rt60) * 0.3
    response[0] = 1.0
    wet = fftconvolve(x, response)[: len(x) + length // 4]
    level = np.sqrt(np.mean(x**2)) / max(np.sqrt(np.mean(wet**2)), 1e-12)
    return wet * level


def _add_noise(x: np.ndarray, colour: str, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white, pink (1/f) or brown (1/f^2) noise at `snr_db` against the utterance's power."""
    white = rng.standard_normal(len(x))
    if colour != "white":
        spectrum = np.fft.rfft(white)
        frequency = np.maximum(np.fft.rfftfreq(len(x)), 1.0 / len(x))
        spectrum /= frequency ** (0.5 if colour == "pink" else 1.0)
        white = np.fft.irfft(spectrum, len(x))
    signal_power = np.mean(x**2)
    noise = white * np.sqrt(signal_power / (np.mean(white**2) * 10.0 ** (snr_db / 10.0)))
    return x + noise
