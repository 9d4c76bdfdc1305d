"""The plugin contract: a named technique with a typed config, declared effects and one `apply` step.

A plugin is a small class, found through the entry-point group `runner.plugins` (the built-ins
are registered there too, so a third party's plugin is treated exactly like them):

    @dataclass
    class HalveBeamConfig:
        factor: int = 2                          # the plugin's options, typed

    class HalveBeam(Plugin):
        name = "halve-beam"
        description = "Divide the ST beam size by `factor`"
        Config = HalveBeamConfig
        effects = Effects(search=True)           # what it changes: frontend, number format, search
        after = ("number-format",)               # ordering constraints: plugin names or effect kinds
        devices = ("cpu", "cuda")                # where it runs (the default); others refuse it

        def apply(self, bundle: ModelBundle) -> None:
            for search in bundle.searches:       # each search's engine (runner.engines), whose settings
                search.beam_size //= self.config.factor   # are ESPnet's search's: every engine reads them

The runner calls the hooks in this order:

1. `apply(bundle)`, once per plugin, in the order the constraints give (ties broken by name, so
   the order a user lists plugins in never changes a result); the run's search engine is installed
   after the frontend and number-format plugins and before the first plugin that changes the search;
2. `calibrate(bundle, utterances)`, for plugins whose `Config` subclasses `CalibrationConfig`,
   after every plugin is applied, so calibration sees the model exactly as it will run; a plugin
   with `calibrate_before_next = True` is calibrated right after its own `apply`, before the
   plugins after it apply (SmoothQuant measures the float activations int8 will then see);
3. `translation_context(bundle)`, entered around every translation (e.g. an autocast region);
4. `describe()`, for reports: the config plus what `apply`/`calibrate` recorded in `details`.

A number-format plugin (`effects.number_format`) names the model parts it changes with
`number_format_parts()` (by default its config's `parts`, else every part); two plugins may not
change the same part. `runner translate --quant none` removes every number-format plugin, and a
sweep compares each one against the float run of the same grid point.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from runner.errors import RunnerError

if TYPE_CHECKING:
    from runner.data import Utterance
    from runner.model import ModelBundle

ENTRY_POINT_GROUP = "runner.plugins"
MODEL_PARTS = ("encoder", "extra_asr_decoder", "md_encoder", "decoder", "ctc")
DECODER_PARTS = ("extra_asr_decoder", "decoder")  # the parts a beam search steps through
EFFECT_KINDS = ("frontend", "number-format", "search")
DEVICE_TYPES = ("cpu", "cuda")


@dataclass(frozen=True)
class Effects:
    """What a plugin changes. The runner orders, checks and compares plugins by these, never by name."""

    frontend: bool = False  # the features the encoder sees (e.g. the STFT hop length)
    number_format: bool = False  # the number format of weights or arithmetic (int8, fp16, bf16)
    search: bool = False  # how a beam-search step is computed, not the numbers it computes with

    def kinds(self) -> tuple[str, ...]:
        """The effect kinds set, as `after`/`before` constraints name them."""
        flags = (self.frontend, self.number_format, self.search)
        return tuple(kind for kind, on in zip(EFFECT_KINDS, flags) if on)


@dataclass
class CalibrationConfig:
    """Options of a plugin that calibrates: subclass this for the plugin's `Config`.

    The runner then feeds `calibrate` with utterances of `calibration_split` of
    `calibration_data` (default: the evaluated data, else the embedded demo corpus), disjoint
    from every utterance it evaluates.
    """

    calibration_data: str | None = None
    calibration_split: str = "dev"
    calibration_size: int = 32
    calibration_seed: int | None = None  # None: the first calibration_size utterances

    def validate(self) -> None:
        if self.calibration_size < 1:
            raise ValueError(f"calibration_size must be at least 1, got {self.calibration_size}")


@dataclass(frozen=True)
class NumberFormat:
    """What a number-format plugin's `apply` made of the model: its dtype, and torch.ao's quantized engine it
    packed int8 weights for (`int8_backend`; None where none is involved: bf16, half precision)."""

    dtype: str
    int8_backend: str | None = None


@dataclass(frozen=True)
class Calibration:
    """Where a calibrating plugin's utterances came from and what calibrating cost (set by the runner).

    Attributes:
        data: the data root; split: its split; source: "plugin option", "given", "evaluated data" or
        "embedded demo corpus"; utterances: how many; seconds: the wall time of `calibrate`.
    """

    data: str
    split: str
    source: str
    utterances: int
    seconds: float


class Plugin:
    """Subclass with `name`, `description`, a dataclass `Config`, `effects` and `apply`.

    A number-format plugin sets `self.number_format` in `apply`; the runner sets `self.calibration`
    after `calibrate`. Anything else worth reporting goes in `self.details`.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type]
    effects: ClassVar[Effects] = Effects()
    # Plugin names or effect kinds ("frontend", "number-format", "search") this one must follow / precede.
    after: ClassVar[tuple[str, ...]] = ()
    before: ClassVar[tuple[str, ...]] = ()
    # Device types ("cpu", "cuda") the plugin runs on; a run on another device refuses it in one line
    # that gives `device_note` as the reason.
    devices: ClassVar[tuple[str, ...]] = DEVICE_TYPES
    device_note: ClassVar[str] = ""
    # A calibrating plugin whose calibration must finish before the plugins after it apply.
    calibrate_before_next: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        self.config = config
        self.details: dict[str, Any] = {}  # what apply/calibrate did, for the report
        self.number_format: NumberFormat | None = None
        self.calibration: Calibration | None = None

    @classmethod
    def calibrates(cls) -> bool:
        """Whether the runner must call `calibrate` (the plugin's Config subclasses CalibrationConfig)."""
        return issubclass(cls.Config, CalibrationConfig)

    def apply(self, bundle: ModelBundle) -> None:
        """Change the loaded model (in place: its beam searches hold references to its modules)."""
        raise NotImplementedError

    def calibrate(self, bundle: ModelBundle, utterances: list[Utterance]) -> None:
        """Feed calibration utterances through the model, then finish the transformation."""

    def number_format_parts(self) -> tuple[str, ...]:
        """Model parts whose number format this plugin changes (checked for conflicts)."""
        if not self.effects.number_format:
            return ()
        parts = getattr(self.config, "parts", None)
        return tuple(parts) if parts is not None else MODEL_PARTS

    def translation_context(self, bundle: ModelBundle) -> contextlib.AbstractContextManager[Any]:
        """A context entered around every translation (default: none)."""
        return contextlib.nullcontext()

    def label(self) -> str:
        """How tables and the conditions line name this plugin: its name, with the parts it changes when
        its config has `parts` (a plugin may say more, as hop's `hop(200)` does)."""
        parts = getattr(self.config, "parts", None)
        return f"{self.name}({','.join(parts)})" if parts is not None else self.name

    def describe(self) -> dict[str, Any]:
        """The plugin's name, label, config, outcomes and details, for reports (JSON-able)."""
        described: dict[str, Any] = {"name": self.name, "label": self.label(), "config": dataclasses.asdict(self.config),
                                     **self.details}
        if self.number_format is not None:
            described.update(dtype=self.number_format.dtype, **({"int8_backend": self.number_format.int8_backend}
                                                               if self.number_format.int8_backend else {}))
        if self.calibration is not None:
            described.update({f"calibration_{k}": v for k, v in dataclasses.asdict(self.calibration).items()})
        return described


@dataclass
class PluginSpec:
    """A plugin name plus raw config values, as written in YAML or on the command line."""

    name: str
    values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, entry: Any, origin: str) -> PluginSpec:
        if isinstance(entry, str):
            return cls(entry)
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            return cls(entry["name"], {k: v for k, v in entry.items() if k != "name"})
        raise RunnerError(f"{origin}: a plugin entry needs a name, e.g. {{name: dynamic-int8}}, got {entry!r}")


@contextlib.contextmanager
def translation_contexts(plugins: list[Plugin], bundle: ModelBundle) -> Iterator[None]:
    """Every plugin's `translation_context`, entered in application order."""
    with contextlib.ExitStack() as stack:
        for plugin in plugins:
            stack.enter_context(plugin.translation_context(bundle))
        yield
