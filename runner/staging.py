"""A runner's plugins on their way onto its model: applied in order, each calibrated once its data is known."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from runner.data import Segment, load_test_set, preload
from runner.model import ModelBundle
from runner.plugin import Calibration, Plugin, translation_contexts

logger = logging.getLogger("runner")


class PluginStages:
    """Which plugins are applied, which wait for calibration, and the calibration utterances used.

    Args:
        plugins: the resolved plugins, in application order.
        bundle: the model they change.
        search: the search engine (`runner.engines`) to install: after the frontend and number-format
            plugins (an engine may pack the weights they leave), before the first plugin that changes the
            search (which hooks the engine), and before any calibration after the last plugin applies (the
            model calibrates as it will run).
    """

    def __init__(self, plugins: list[Plugin], bundle: ModelBundle, search: str = "espnet") -> None:
        self.bundle = bundle
        self.search: str | None = search  # None once installed
        self.engines: dict[str, str] = {}  # search stage -> the engine running it (why not `search`, if not)
        self.to_apply, self.applied = list(plugins), []
        self.uncalibrated: list[Plugin] = []  # applied, calibrated once every plugin is applied
        self.blocking: Plugin | None = None  # applied, to be calibrated before the next plugin applies
        self.calibration_keys: set[tuple[str, int, int]] = set()  # `segment_key`s of calibration utterances

    def waiting(self) -> list[Plugin]:
        """Plugins that still need calibration data (applied or not)."""
        return [p for p in [self.blocking, *self.uncalibrated, *self.to_apply] if p is not None and p.calibrates()]

    def advance(self, data: str | Path | None, source: str) -> None:
        """Apply and calibrate the plugins still pending, in order, as far as calibration data is known.

        A plugin that calibrates is calibrated after every plugin is applied, so it sees the model as
        it will run; one with `calibrate_before_next` (SmoothQuant's scales, which int8 must see) is
        calibrated before the next plugin applies. Without data (`data` None and no plugin option)
        the rest waits for the first evaluation (`Runner._finish_plugins`).
        """
        if self.blocking is not None:
            if not _knows_data(self.blocking, data):
                return
            self._calibrate([self.blocking], data, source)
            self.blocking = None
        while self.to_apply:
            plugin = self.to_apply.pop(0)
            if plugin.effects.search:
                self._install_engine()
            started = time.perf_counter()
            plugin.apply(self.bundle)
            self.bundle.rewire_searches()
            self.applied.append(plugin)
            plugin.details["apply_seconds"] = time.perf_counter() - started
            if plugin.calibrates() and plugin.calibrate_before_next:
                if not _knows_data(plugin, data):
                    self.blocking = plugin
                    return
                self._calibrate([plugin], data, source)
            elif plugin.calibrates():
                self.uncalibrated.append(plugin)
        self._install_engine()
        if self.uncalibrated and all(_knows_data(p, data) for p in self.uncalibrated):
            self._calibrate(self.uncalibrated, data, source)
            self.uncalibrated = []

    def _install_engine(self) -> None:
        if self.search is not None:
            self.engines = self.bundle.install_engine(self.search)
            elsewhere = {stage: engine for stage, engine in self.engines.items() if engine != self.search}
            if elsewhere:
                logger.warning("search engine %s does not run %s", self.search,
                               "; ".join(f"{stage}: {engine}" for stage, engine in elsewhere.items()))
            self.search = None

    def _calibrate(self, plugins: list[Plugin], data: str | Path | None, source: str) -> None:
        """Run `plugins`' `calibrate`, each on its own data, else on `data`."""
        for plugin in plugins:
            config = plugin.config
            where = config.calibration_data or data
            test_set = load_test_set(where, config.calibration_split)
            calibration = preload(test_set, self.bundle.sample_rate, limit=config.calibration_size,
                                  seed=config.calibration_seed)
            started = time.perf_counter()
            with translation_contexts(self.applied, self.bundle):  # calibrate the model as it will run
                plugin.calibrate(self.bundle, calibration.utterances)
            self.bundle.rewire_searches()
            plugin.calibration = Calibration(str(where), config.calibration_split,
                                             "plugin option" if config.calibration_data else source,
                                             len(calibration.utterances), time.perf_counter() - started)
            self.calibration_keys |= {segment_key(u.segment) for u in calibration.utterances}


def _knows_data(plugin: Plugin, data: str | Path | None) -> bool:
    return bool(plugin.config.calibration_data or data)


def segment_key(segment: Segment) -> tuple[str, int, int]:
    """What identifies an utterance across loads: its audio file, first frame and length."""
    return (str(segment.audio_path.resolve()), segment.start, segment.frames)
