"""st-runner: load an ESPnet speech-translation model, change it with plugins, measure it.

    from runner import Runner
    report = Runner("data/model", plugins=["dynamic-int8"]).evaluate("data/mustc-demo", limit=20)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["DecodeOptions", "EvaluateOptions", "PluginSet", "Report", "RunConditions", "RunConfig", "Runner",
           "RunnerError", "SearchEngine", "Searched", "StreamOptions", "Translation"]

_EXPORTS = {
    "Runner": "runner.runner",
    "DecodeOptions": "runner.decode",
    "EvaluateOptions": "runner.options",
    "PluginSet": "runner.plugin_set",
    "Translation": "runner.decode",
    "Report": "runner.report",
    "RunConditions": "runner.conditions",
    "RunConfig": "runner.config",
    "RunnerError": "runner.errors",
    "SearchEngine": "runner.engines",
    "Searched": "runner.engines",
    "StreamOptions": "runner.live",
}


def __getattr__(name: str) -> Any:
    # Lazy, so that `runner --help` does not pay for importing torch and ESPnet.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
