"""The speech synthesizers of the demo corpus: espeak-ng, Festival and flite, all offline Debian packages.

Each engine turns a list of sentences into 16-bit mono samples at 16 kHz and is byte-reproducible
(same text, voice and settings, same samples). espeak-ng is a formant synthesizer (its variants
include Klatt-style voices); Festival speaks with diphone voices (kal, ked) and a statistical HTS
voice (slt); flite is CMU's separate small engine, whose clustergen voices awb and rms are the
held-out engine of the `tst-HE` split. Engines run one process per sentence (espeak-ng, flite) or
one process per talk (Festival, whose start-up costs more than a sentence).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import resample_poly

from runner.errors import RunnerError

SAMPLE_RATE = 16000
INSTALL = "apt-get install espeak-ng festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts flite"
FESTIVAL_VOICE_ROOT = Path("/usr/share/festival/voices")
ENGINES = ("espeak-ng", "festival", "flite")  # each engine's name is its binary's


@dataclass(frozen=True)
class Voice:
    """One speaker: an engine, its voice, and the engine's own rate and pitch settings.

    Args:
        engine: "espeak-ng", "festival" or "flite".
        name: the engine's voice: "en-us+m3" (espeak-ng accent+variant), "kal_diphone" (Festival), "awb" (flite).
        rate: espeak-ng words per minute; for Festival and flite a duration stretch in percent (100 = as is).
        pitch: espeak-ng pitch 0-99; flite's target mean F0 in Hz (0 = the voice's own); unused by Festival.
    """

    engine: str
    name: str
    rate: int
    pitch: int = 0

    @property
    def speaker_id(self) -> str:
        """MuST-C-style speaker id; espeak-ng keeps its historic form `spk.<accent>+<variant>`."""
        return f"spk.{self.name}" if self.engine == "espeak-ng" else f"spk.{self.engine}+{self.name}"


def missing_engines() -> list[str]:
    """The engines of ENGINES whose binary is not on PATH."""
    return [engine for engine in ENGINES if shutil.which(engine) is None]


def require(engine: str) -> str:
    """The engine's binary, or a one-line error saying which Debian packages to install."""
    binary = shutil.which(engine)
    if binary is None:
        raise RunnerError(f"{engine}: not installed; install Debian's packages with `{INSTALL}`")
    if engine == "festival" and not any(FESTIVAL_VOICE_ROOT.glob("*/*")):
        raise RunnerError(f"festival: no voice installed under {FESTIVAL_VOICE_ROOT}; `{INSTALL}`")
    return binary


def pcm16(samples: np.ndarray, rate: int) -> np.ndarray:
    """Float samples at `rate` as 16-bit samples at 16 kHz (polyphase resampling: 22.05 kHz is 320/441)."""
    resampled = resample_poly(samples, SAMPLE_RATE, rate) if rate != SAMPLE_RATE else samples
    return np.clip(np.round(resampled * 32767), -32768, 32767).astype(np.int16)


def synthesize(sentences: Sequence[str], voice: Voice) -> list[np.ndarray]:
    """Speak each sentence with `voice`.

    Args:
        sentences: plain text, one utterance each.
        voice: the speaker.

    Returns:
        One int16 array at 16 kHz per sentence.
    """
    binary = require(voice.engine)
    if voice.engine == "festival":
        return _festival(sentences, voice, binary)
    speak = _espeak if voice.engine == "espeak-ng" else _flite
    return [speak(text, voice, binary) for text in sentences]


def _decode(wav: bytes, what: str) -> np.ndarray:
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float64")
    if not samples.size:
        raise RunnerError(f"{what}: no audio")
    return pcm16(samples, rate)


def _espeak(text: str, voice: Voice, binary: str) -> np.ndarray:
    command = [binary, "-v", voice.name, "-s", str(voice.rate), "-p", str(voice.pitch), "--stdout", text]
    done = subprocess.run(command, capture_output=True, check=False)
    if done.returncode != 0 or not done.stdout:
        raise RunnerError(f"espeak-ng: failed on {text!r} ({done.stderr.decode(errors='replace').strip()})")
    return _decode(done.stdout, f"espeak-ng {voice.name} on {text!r}")


def _flite(text: str, voice: Voice, binary: str) -> np.ndarray:
    with tempfile.TemporaryDirectory() as work:
        target = Path(work) / "speech.wav"
        command = [binary, "-voice", voice.name, "--setf", f"duration_stretch={voice.rate / 100:.2f}"]
        if voice.pitch:
            command += ["--setf", f"int_f0_target_mean={voice.pitch}"]
        done = subprocess.run([*command, "-t", text, "-o", str(target)], capture_output=True, check=False)
        if done.returncode != 0 or not target.is_file():
            raise RunnerError(f"flite: voice {voice.name} failed on {text!r} ({done.stderr.decode(errors='replace').strip()})")
        return _decode(target.read_bytes(), f"flite {voice.name} on {text!r}")


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _festival(sentences: Sequence[str], voice: Voice, binary: str) -> list[np.ndarray]:
    with tempfile.TemporaryDirectory() as work:
        targets = [Path(work) / f"{index}.wav" for index in range(len(sentences))]
        script = [f"(voice_{voice.name})", f"(Parameter.set 'Duration_Stretch {voice.rate / 100:.2f})"]
        script += [f"(utt.save.wave (utt.synth (Utterance Text {_scheme_string(text)})) {_scheme_string(str(path))} 'riff)"
                   for text, path in zip(sentences, targets)]
        (Path(work) / "speak.scm").write_text("\n".join(script) + "\n", encoding="utf-8")
        done = subprocess.run([binary, "-b", str(Path(work) / "speak.scm")], capture_output=True, check=False)
        missing = [text for text, path in zip(sentences, targets) if not path.is_file()]
        if done.returncode != 0 or missing:
            detail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
            raise RunnerError(f"festival: voice {voice.name} failed on {missing[:1] or sentences[:1]!r} ({detail[0]})")
        return [_decode(path.read_bytes(), f"festival {voice.name} on {text!r}") for text, path in zip(sentences, targets)]
