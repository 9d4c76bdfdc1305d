"""st-runner: load an ESPnet speech-translation model, change it with plugins, measure it."""

__version__ = "0.1.0"
