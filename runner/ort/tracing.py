"""What torch.export needs to see ESPnet's encoders: a padding mask it can trace, for the export alone.

ESPnet's `make_pad_mask(lengths)` takes its width from `lengths.max()`, a value `torch.export` cannot
turn into a shape. An exported graph encodes one utterance, so every length is the frames it was
given: while `traceable_masks(frames)` is open, ESPnet's modules see a `make_pad_mask` that takes that
width from the input's own (symbolic) size. The modules' original function is put back when the
block ends, also on an error.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterator
from typing import Any

import torch

_FRAMES: contextvars.ContextVar[Any] = contextvars.ContextVar("export_frames")


def _make_pad_mask(lengths: torch.Tensor, xs: torch.Tensor | None = None, length_dim: int = -1,
                   maxlen: Any = None) -> torch.Tensor:
    """ESPnet's `make_pad_mask` (True at padded positions) with a width torch.export can trace."""
    if maxlen is None:
        maxlen = xs.size(length_dim) if xs is not None else _FRAMES.get()
    mask = torch.arange(maxlen, device=lengths.device).unsqueeze(0) >= lengths.unsqueeze(1)
    if xs is None:
        return mask
    dim = length_dim % xs.dim()
    index = tuple(slice(None) if i in (0, dim) else None for i in range(xs.dim()))
    return mask[index].expand_as(xs)


@contextlib.contextmanager
def traceable_masks(frames: Any) -> Iterator[None]:
    """Within the block, ESPnet's modules mask with `_make_pad_mask`, `frames` the width of a lengths-only mask."""
    from espnet.nets.pytorch_backend import nets_utils

    original = nets_utils.make_pad_mask
    users = [module for module in list(sys.modules.values())
             if module is not None and getattr(module, "make_pad_mask", None) is original]
    token = _FRAMES.set(frames)
    for module in users:
        module.make_pad_mask = _make_pad_mask
    try:
        yield
    finally:
        for module in users:
            module.make_pad_mask = original
        _FRAMES.reset(token)
