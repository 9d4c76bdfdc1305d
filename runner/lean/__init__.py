"""The lean beam-search engine: ESPnet's search, with the beam held in tensors (see `runner.lean.search`)."""

from runner.lean.search import LeanBeamSearch, check_search

__all__ = ["LeanBeamSearch", "check_search"]
