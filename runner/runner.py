"""The library's front door: `Runner(model).evaluate(data)` and `Runner(model).translate(wave, rate)`."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from runner import defaults
from runner.audio import resample, to_mono_float
from runner.conditions import RunConditions
from runner.data import PreloadedSet, TestSet, load_test_set, preload
from runner.decode import DecodeOptions, Translation
from runner.device import PeakMemory, spec_type
from runner.device import resolve as resolve_device
from runner.engines import DEFAULT as DEFAULT_ENGINE
from runner.engines import engine_class
from runner.environment import manifest, resolve_threads, torch_settings
from runner.errors import RunnerError, first_line
from runner.longform.recording import LongForm, translate_file, translate_long
from runner.longform.segment import SegmentOptions
from runner.model import ModelBundle, load
from runner.options import EvaluateOptions
from runner.pipeline import batch_ranges, batch_ready, translate, translate_batch
from runner.plugin import Plugin, PluginSpec, translation_contexts
from runner.plugin_set import PluginSet
from runner.progress import bar
from runner.report import Report
from runner.reporting import build_report
from runner.staging import PluginStages, segment_key

if TYPE_CHECKING:
    from runner.live import StreamOptions, StreamSession

logger = logging.getLogger("runner")


class Runner:
    """A loaded model, ready to translate single waveforms or evaluate a test set.

    A runner sets torch's intra-op threads and int8 backend (torch.ao's quantized engine) only for its own calls and
    restores the caller's settings after each (see `runner.environment.torch_settings`).
    """

    def __init__(
        self,
        model: str | Path | ModelBundle | None = None,
        decode: DecodeOptions | None = None,
        threads: int | None = None,
        model_file: str | Path | None = None,
        plugins: PluginSet | Sequence[str | dict[str, Any] | PluginSpec] = (),
        calibration_data: str | Path | None = None,
        device: str | torch.device = "cpu",
        search: str = DEFAULT_ENGINE,
        engine: str | None = None,
    ) -> None:
        """Load `model`, apply `plugins` and install the search engine.

        Args:
            model: an ESPnet experiment directory, config.yaml, .pth or packed archive
                (default: the embedded demo model), or a loaded `ModelBundle`.
            decode: decoding options (default: `DecodeOptions()`, configs/decode.yaml's values).
            threads: intra-op threads for this runner's calls (default: every core).
            model_file: the weights, when the experiment directory holds several .pth files.
            plugins: a `PluginSet`, or names, `{name: ..., option: ...}` dicts or `PluginSpec`s; applied
                in the order their declared constraints give (then by name), whatever order they are listed in.
            calibration_data: data root whose calibration split (e.g. dev) calibrating plugins
                read. Default: the data of the first `evaluate` call, when it has that split;
                otherwise the embedded demo corpus, which is logged and recorded in the report.
            device: cpu (the default), cuda, cuda:N, or auto (a visible GPU, when every plugin runs
                there); ignored for a `ModelBundle`, which runs where it was loaded. A plugin that
                does not run on the device is refused before the model loads.
            search: the beam-search engine (`runner.engines`: espnet, lean, onnxruntime, or a registered one).
            engine: the same as `search` (the CLI's `--engine`); given, it wins.

        Raises:
            RunnerError: bad model files, plugin options, search engine or device (one line each).
        """
        self.threads = resolve_threads(threads)
        self._thread = threading.get_ident()  # see _check_thread
        plugin_set = PluginSet.resolve(plugins)
        search = engine or search
        engine_class(search)  # an unknown engine is refused before the model loads
        if isinstance(model, ModelBundle) or isinstance(device, torch.device):
            device = model.device if isinstance(model, ModelBundle) else device
            plugin_set.check_device(device.type)
        else:
            kind = spec_type(device)
            if kind is not None:  # a plugin that cannot run there is refused before any GPU is sought
                plugin_set.check_device(kind)
            device = resolve_device(device, plugin_set)  # "auto" picks a device every plugin runs on
        self.plugin_set = plugin_set
        self.plugins: list[Plugin] = plugin_set.instances()
        self.device: torch.device = device
        with torch_settings(self.threads):
            if isinstance(model, ModelBundle):  # see from_bundle
                self.decode, self.bundle = model.options, model
            else:
                self.decode = decode or DecodeOptions()
                self.bundle = load(model if model is not None else defaults.model_path(), self.decode, model_file,
                                   self.device)
            self._stages = PluginStages(self.plugins, self.bundle, search)
            self._stages.advance(calibration_data, "given")

    @property
    def search_engines(self) -> dict[str, str]:
        """Which search engine runs which beam search ("asr_search", "st_search"), with the reason where it
        is not the one asked for."""
        self._finish_plugins(None)
        return dict(self._stages.engines)

    @property
    def int8_backend(self) -> str | None:
        """torch.ao's quantized engine this runner's plugins packed int8 weights for; None for a float model."""
        return next((p.number_format.int8_backend for p in reversed(self.plugins)
                     if p.number_format is not None and p.number_format.int8_backend), None)

    def conditions(self, warmup: int = 1, batch_size: int = 1) -> RunConditions:
        """What this runner's figures are measured under (for an evaluation with `warmup` and `batch_size`)."""
        self._finish_plugins(None)
        formats = [p.number_format for p in self.plugins if p.number_format is not None]
        return RunConditions(
            device=str(self.device), threads=self.threads, int8_backend=self.int8_backend or "none",
            search=self.bundle.search_engine, hop_length=(self.summary["frontend"] or {}).get("hop_length"),
            dtype=formats[-1].dtype if formats else "float32", plugins=tuple(p.describe() for p in self.plugins),
            calibrations=tuple((p.name, p.calibration) for p in self.plugins if p.calibration is not None),
            decode=self.decode, machine=manifest(self.threads, self.int8_backend or "none", self.device),
            warmup=warmup, batch_size=batch_size, model_hash=self.bundle.files.content_hash,
            runtime=self.bundle.engine_runtime)

    def model_info(self) -> dict[str, Any]:
        """The model's files (origin, config, weights, packed or not, content hash) and its summary."""
        files = self.bundle.files
        return {"path": str(files.origin), "config": str(files.config), "model_file": str(files.model_file),
                "packed": files.packed, "content_hash": files.content_hash, "summary": self.summary}

    def _scope(self) -> contextlib.AbstractContextManager[None]:
        self._check_thread()
        return torch_settings(self.threads, self.int8_backend)

    def _check_thread(self) -> None:
        """Warn once when called from another thread than the one that loaded the runner.

        PyTorch's OpenMP keeps a team of threads per OS thread that runs parallel work; two teams
        make more OpenMP threads than cores and every decode slower (3x measured on 2 cores, see
        `runner.serve.batching.decoder_thread`). Load and call a runner from one thread.
        """
        current = threading.get_ident()
        if current != self._thread and not getattr(self, "_warned_thread", False):
            self._warned_thread = True
            logger.warning("this Runner was loaded on another thread: PyTorch then runs two OpenMP thread teams "
                           "and decoding slows down (about 3x on 2 cores); load and call a Runner from one thread")

    def _finish_plugins(self, evaluated: TestSet | None) -> None:
        """Calibrate (and apply) what still waits on `evaluated`'s calibration split, or else on the demo corpus."""
        waiting = self._stages.waiting()
        if not waiting:
            return
        names = ", ".join(p.name for p in waiting)
        split = waiting[0].config.calibration_split
        data, source = _calibration_source(evaluated, split)
        if source == "embedded demo corpus":
            reason = (f"{evaluated.path} has no '{split}' split" if evaluated is not None
                      else "no calibration_data was given")
            logger.warning("%s calibrates on the embedded demo corpus (%s, split %s): %s; pass calibration_data "
                           "to calibrate on your own data", names, data, split, reason)
        else:
            logger.info("%s calibrates on split %s of the evaluated data %s", names, split, data)
        with self._scope():
            self._stages.advance(data, source)

    @functools.cached_property
    def summary(self) -> dict[str, Any]:
        """The model after its plugins: parts, parameters, state_dict bytes, frontend.

        Computed once: plugins change the model only while the runner is built, and serializing
        a seed-scale state_dict for its size takes seconds that every repeat would otherwise pay.
        """
        self._finish_plugins(None)
        return self.bundle.summary()

    @classmethod
    def from_bundle(cls, bundle: ModelBundle, threads: int | None = None,
                    plugins: PluginSet | Sequence[str | dict[str, Any] | PluginSpec] = (),
                    calibration_data: str | Path | None = None, search: str = DEFAULT_ENGINE) -> Runner:
        """A runner over a copy of an already loaded float model (a sweep loads the model once), on its device."""
        return cls(bundle.copy(), threads=threads, plugins=plugins, calibration_data=calibration_data, search=search)

    @property
    def sample_rate(self) -> int:
        return self.bundle.sample_rate

    def translate(self, waveform: np.ndarray | torch.Tensor, sample_rate: int) -> Translation:
        """Translate one waveform, e.g. for a demo.

        Args:
            waveform: samples as (samples,), (samples, channels) or (channels, samples); float
                in [-1, 1] or integer PCM, as numpy or torch.
            sample_rate: the waveform's rate; it is resampled to the model's.

        Returns:
            The translation, the ASR transcript (multi-decoder models), tokens and latency per stage.

        Raises:
            AudioTooShortError: audio too short for the frontend window or the encoder's subsampling.
            RunnerError: empty or malformed audio, a rate outside 1-192 kHz, NaN/Inf or out-of-range samples.
        """
        audio = resample(to_mono_float(waveform), sample_rate, self.sample_rate)
        if audio.size == 0:
            raise RunnerError("waveform: empty audio")
        self._finish_plugins(None)
        with self._scope():
            try:
                return translate(self.bundle.speech2text, audio, translation_contexts(self.plugins, self.bundle))
            except RunnerError as error:
                raise type(error)(f"waveform: {error}") from error

    def stream(self, options: StreamOptions | None = None) -> StreamSession:
        """A live session over this runner: push audio as it arrives, get committed text back (`runner.live`).

        Every decode is this runner's `translate` (its threads, plugins and search engine)."""
        from runner.live import StreamOptions, StreamSession

        return StreamSession(self.translate, self.sample_rate,
                             options or StreamOptions())

    def translate_long(self, waveform: np.ndarray | torch.Tensor, sample_rate: int,
                       options: SegmentOptions = SegmentOptions(), batch_size: int = 8,
                       progress: Callable[[Iterable], Iterable] | None = None) -> LongForm:
        """Translate a recording of any length: cut by `options` (Silero VAD by default), segments decoded in
        batches of `batch_size` where the search engine batches (see `runner.longform.recording.translate_long`).

        Returns:
            A `LongForm`: its `segments` (start, end, translation, transcript), the segmentation's and the
            decoding's wall times, and `subtitles(fmt)` for SRT, WebVTT, text or JSON.
        """
        return translate_long(self, waveform, sample_rate, options, batch_size, progress)

    def translate_file(self, path: str | Path, options: SegmentOptions = SegmentOptions(), batch_size: int = 8,
                       progress: Callable[[Iterable], Iterable] | None = None) -> LongForm:
        """`translate_long` of an audio file read as a stream, a block at a time: memory holds one block
        (five minutes), whatever the file's length (see `runner.longform.recording.translate_file`)."""
        return translate_file(self, path, options, batch_size, progress)

    def translate_batch(self, waveforms: Sequence[np.ndarray | torch.Tensor],
                        sample_rate: int | Sequence[int]) -> list[Translation]:
        """Translate several waveforms in one batched beam search (the lean engine; see `runner.batch`).

        Each translation is the one `translate` gives for its waveform alone (bit for bit for fp32,
        int8 and fp16 decoders: tests/test_batch.py); the batch only shares each search step's work.

        Args:
            waveforms: each as `translate` takes it.
            sample_rate: the rate of every waveform, or one rate per waveform.

        Returns:
            One `Translation` per waveform, in order; `seconds` is the batch's wall time, `batch_size` its size.

        Raises:
            RunnerError: the model's searches do not run on the lean engine, or a waveform is empty.
            AudioTooShortError: a waveform is too short (naming its index).
        """
        rates = [sample_rate] * len(waveforms) if isinstance(sample_rate, int) else list(sample_rate)
        if len(rates) != len(waveforms):
            raise RunnerError(f"translate_batch: {len(waveforms)} waveforms but {len(rates)} sample rates")
        audio = [resample(to_mono_float(w, f"waveform {i} of the batch"), rate, self.sample_rate,
                          f"waveform {i} of the batch") for i, (w, rate) in enumerate(zip(waveforms, rates))]
        empty = [index for index, samples in enumerate(audio) if samples.size == 0]
        if empty:
            raise RunnerError(f"waveform {empty[0]} of the batch: empty audio")
        if not audio:
            return []
        self._finish_plugins(None)
        with self._scope():
            return translate_batch(self.bundle.speech2text, audio, translation_contexts(self.plugins, self.bundle))

    def preload(self, options: EvaluateOptions) -> PreloadedSet:
        """Read the utterances `options` select into memory at the model's rate (nothing here is timed)."""
        data = options.data if options.data is not None else defaults.data_path()
        test_set = load_test_set(data, options.split, options.text).for_task(self.bundle.task)
        progress = bar("preload") if options.progress else None
        return preload(
            test_set,
            self.sample_rate,
            limit=options.limit,
            seed=options.seed if options.sample else None,
            exclude_ids=options.exclude_ids,
            progress=progress,
            part=options.part,
        )

    def evaluate(self, data: str | Path | None = None, **options: Any) -> Report:
        """Preload a test subset, decode every utterance, and measure.

        Args:
            data: a MuST-C release (any of its roots) or an ESPnet/Kaldi data directory
                (default: the embedded demo corpus).
            options: the other `EvaluateOptions` by name (split, text, limit, sample, seed, warmup,
                batch_size, progress). With `batch_size` N > 1 (an engine that batches) the warm-up
                utterances form their own batch and the rest go in batches of N consecutive utterances;
                latency is then each utterance's batch's wall time.

        Returns:
            A `Report`: size, parameters, BLEU, chrF, source WER, latency, every condition and the options.

        Raises:
            RunnerError: an unknown or bad option, bad input (its `partial_report` holds finished utterances,
                if any).
        """
        chosen = EvaluateOptions.from_dict({"data": data, **options}, "evaluate")
        return self.evaluate_preloaded(self.preload(chosen), chosen)

    def evaluate_preloaded(self, preloaded: PreloadedSet, options: EvaluateOptions) -> Report:
        """`evaluate` on utterances already in memory (a sweep preloads once for every run)."""
        self._finish_plugins(preloaded.test_set)
        with self._scope():
            return self._evaluate(preloaded, options)

    def _evaluate(self, preloaded: PreloadedSet, options: EvaluateOptions) -> Report:
        utterances = preloaded.utterances
        overlap = [u.segment.id for u in utterances if segment_key(u.segment) in self._stages.calibration_keys]
        if overlap:
            raise RunnerError(
                f"{preloaded.test_set.path}: refusing to evaluate on {len(overlap)} utterance(s) the model was "
                f"calibrated on (e.g. '{overlap[0]}'); calibrate on another split (calibration_split)"
            )
        if options.warmup >= len(utterances):
            raise RunnerError(
                f"--warmup {options.warmup} leaves no utterance to time out of {len(utterances)}; lower it or raise --limit"
            )
        if options.warmup == 0 and self.device.type == "cuda":
            logger.warning("--warmup 0 on %s: the first utterance's latency includes CUDA's start-up and kernel "
                           "selection", self.device)
        if options.batch_size > 1:
            reason = batch_ready(self.bundle.speech2text)
            if reason is not None:
                raise RunnerError(f"--batch-size {options.batch_size}: {reason}")
        batches = batch_ranges(len(utterances), options.warmup, options.batch_size)
        iterator: Iterable = batches
        if options.progress:
            iterator = bar("decode", "batch" if options.batch_size > 1 else "utt")(batches)
        translations: list[Translation] = []
        try:
            with PeakMemory(self.device) as peak:
                for batch in iterator:
                    translations += self._decode(utterances[batch.start:batch.stop], options.batch_size > 1)
        except (RunnerError, KeyboardInterrupt) as error:
            # Keep what finished: the caller can still save these utterances' figures.
            error.partial_report = self._partial_report(preloaded, options, translations)  # type: ignore[union-attr]
            raise
        return build_report(self.conditions(), self.model_info(), preloaded, options, translations, peak.bytes)

    def _decode(self, utterances: Sequence[Any], batched: bool) -> list[Translation]:
        """Translate preloaded utterances, one at a time or as one batch; errors name the utterance."""
        if batched:
            try:
                return translate_batch(self.bundle.speech2text, [u.waveform for u in utterances],
                                       translation_contexts(self.plugins, self.bundle))
            except Exception as error:
                kind = type(error) if isinstance(error, RunnerError) else RunnerError
                ids = ", ".join(f"'{u.segment.id}'" for u in utterances)
                raise kind(f"{utterances[0].segment.audio_path}: decoding the batch of {ids} failed "
                           f"({first_line(error)})") from error
        translations = []
        for utterance in utterances:
            try:
                translations.append(translate(self.bundle.speech2text, utterance.waveform,
                                              translation_contexts(self.plugins, self.bundle)))
            except Exception as error:  # too short, shape errors, ...: name the utterance, keep the cause
                kind = type(error) if isinstance(error, RunnerError) else RunnerError
                raise kind(f"{utterance.segment.audio_path}: decoding '{utterance.segment.id}' "
                           f"failed ({first_line(error)})") from error
        return translations

    def _partial_report(self, preloaded: PreloadedSet, options: EvaluateOptions,
                        translations: list[Translation]) -> Report | None:
        if len(translations) <= options.warmup:
            return None
        report = build_report(self.conditions(), self.model_info(), preloaded.part(0, len(translations)), options,
                              translations)
        report.data["complete"] = False
        report.data["planned_n"] = len(preloaded.utterances)
        return report

def _calibration_source(evaluated: TestSet | None, split: str) -> tuple[Path, str]:
    """Where a calibrating plugin reads `split`: the evaluated MuST-C release when it has one."""
    if evaluated is not None and evaluated.format == "mustc":
        try:
            load_test_set(evaluated.path, split)
            return evaluated.path, "evaluated data"
        except RunnerError:
            pass
    return defaults.data_path(), "embedded demo corpus"

