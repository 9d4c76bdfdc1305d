"""OpenAI Whisper inside ESPnet experiments: built offline from the experiment's own weights (`offline`)."""

from runner.whisper.offline import built_offline, dimensions, is_whisper_decoder, uses_whisper

__all__ = ["built_offline", "dimensions", "is_whisper_decoder", "uses_whisper"]
