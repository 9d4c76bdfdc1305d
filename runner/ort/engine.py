"""The `onnxruntime` search engine: the lean engine's search, its computations in ONNX Runtime sessions.

The search loop is `runner.lean.LeanBeamSearch`'s (pre-beam, CTC prefix scoring, end detection,
n-best, the retry, several utterances per step); each decoder step is one session call of the
exported step graph (`OrtDecoderStep`), each utterance's source and speech keys/values one call of
the memory graphs, the CTC heads theirs, and the encoder and MD encoder run as graphs too (`graphs`,
which `runner.pipeline` asks for). The STFT frontend stays in torch.

The graphs come from an exported directory given as the model (`runner export`, any number format),
or, for any other float model, from an fp32 export of the model as the runner holds it, written once
into the cache (`~/.cache/st-runner/onnx/<digest of the weights and config>`).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runner.errors import RunnerError
from runner.lean.decoder import MEMORY_ALIGN
from runner.lean.search import LeanBeamSearch
from runner.ort.sessions import ExportedGraphs, is_current_export, is_exported

logger = logging.getLogger("runner")


class ModelGraphs:
    """The encoder and MD encoder of an export, called as `runner.pipeline` calls the torch modules."""

    def __init__(self, graphs: ExportedGraphs) -> None:
        self.graphs = graphs

    @property
    def bytes(self) -> int:
        """The bytes of the graph files (what a deployment holds, the model's size on this engine)."""
        return sum((self.graphs.directory / g["file"]).stat().st_size for g in self.graphs.manifest["graphs"].values())

    def encode(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (1, frames, n_mels) -> (encoder output, ASR encoder output), each (1, T, d)."""
        encoded, asr_encoded = self.graphs.run("encoder", features=features)
        return torch.from_numpy(encoded), torch.from_numpy(asr_encoded)

    def md_encode(self, states: torch.Tensor) -> torch.Tensor:
        """The MD encoder over the ASR decoder's states (1, L, d) -> (1, L, d)."""
        return torch.from_numpy(self.graphs.run("md_encoder", states=states)[0])


def _projected(graphs: ExportedGraphs, graph: str, memories: list[torch.Tensor]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each utterance's keys/values from `graph`, padded to a multiple of MEMORY_ALIGN positions (as the lean
    engine pads them: the same reductions alone and in a batch): (layers, 2, 1, heads, T, d_k) and the (1, T)
    mask of its real positions."""
    name = graphs.manifest["graphs"][graph]["inputs"][0]
    projected = []
    for memory in memories:
        keys_values = graphs.run(graph, **{name: memory.unsqueeze(0)})[0]  # (layers, 2, heads, T, d_k)
        length = keys_values.shape[3]
        padded = -(-length // MEMORY_ALIGN) * MEMORY_ALIGN
        grid = np.zeros(keys_values.shape[:2] + (1,) + keys_values.shape[2:3] + (padded,) + keys_values.shape[4:],
                        dtype=keys_values.dtype)
        grid[:, :, 0, :, :length] = keys_values
        mask = np.zeros((1, padded), dtype=bool)
        mask[0, :length] = True
        projected.append((grid, mask))
    return projected


def _joined(memories: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Several utterances' keys/values in one array, each padded to the longest: (layers, 2, U, heads, T, d_k), (U, T)."""
    if len(memories) == 1:
        return memories[0]
    longest = max(mask.shape[1] for _, mask in memories)
    first = memories[0][0]
    grid = np.zeros(first.shape[:2] + (len(memories),) + first.shape[3:4] + (longest,) + first.shape[5:],
                    dtype=first.dtype)
    masks = np.zeros((len(memories), longest), dtype=bool)
    for index, (keys_values, mask) in enumerate(memories):
        grid[:, :, index, :, :mask.shape[1]] = keys_values[:, :, 0]
        masks[index, :mask.shape[1]] = mask[0]
    return grid, masks


class OrtDecoderStep:
    """`runner.lean.decoder.DecoderStep`'s interface over the exported step graph of one decoder.

    Args:
        graphs: the export's sessions.
        prefix: "asr" or "st" (which decoder's graphs).
        memories, speeches: each utterance's memory and, for a speech-attention decoder, speech encoder output.
        per_utterance: call the graph once per utterance (dynamic int8 scales activations per call, so a batch
            call would change an utterance's numbers).
    """

    def __init__(self, graphs: ExportedGraphs, prefix: str, memories: list[torch.Tensor],
                 speeches: list[torch.Tensor] | None, per_utterance: bool) -> None:
        self.graphs, self.graph = graphs, f"{prefix}_step"
        self.sources = _projected(graphs, f"{prefix}_memory", memories)
        self.speeches = (_projected(graphs, f"{prefix}_speech", speeches)
                         if speeches is not None and graphs.has(f"{prefix}_speech") else None)
        self.per_utterance = per_utterance
        self._batch: dict[str, np.ndarray] | None = None  # every utterance's memories joined, for one call
        layers, _, _, heads, _, d_k = self.sources[0][0].shape
        # per layer, the keys and the values of every earlier position: (rows, heads, positions, d_k) each
        self.past = [np.zeros((0, heads, 0, d_k), dtype=self.sources[0][0].dtype) for _ in range(2 * layers)]
        self.length = 0
        self.hidden: torch.Tensor | None = None

    def _memories(self, block: range) -> dict[str, np.ndarray]:
        """The feeds of these utterances' memories (one utterance's own arrays, or all of them joined), per layer."""
        if len(block) == len(self.sources) and self._batch is not None:
            return self._batch
        chosen = slice(block.start, block.stop)
        feeds: dict[str, np.ndarray] = {}
        for kind, memories in (("source", self.sources), ("speech", self.speeches)):
            if memories is None:
                continue
            joined, mask = _joined(memories[chosen])
            for layer in range(joined.shape[0]):
                feeds[f"{kind}_key_{layer}"], feeds[f"{kind}_value_{layer}"] = joined[layer, 0], joined[layer, 1]
            feeds[f"{kind}_mask"] = mask
        if len(block) == len(self.sources):
            self._batch = feeds
        return feeds

    def __call__(self, tokens: torch.Tensor, layout: Any) -> torch.Tensor:
        """Log-probabilities (n, V) of the next token for every running hypothesis; `hidden` keeps (n, d).

        The graph takes each utterance's hypotheses as a block of `beam` rows: rows a block lacks are padded
        (and dropped from the outputs); with `per_utterance`, each utterance's block is its own call.
        """
        counts, beam = list(layout.counts), layout.beam_size
        if self.past[0].shape[0] != len(tokens):  # the first step: no earlier position yet
            self.past = [np.zeros((len(tokens),) + p.shape[1:], dtype=p.dtype) for p in self.past]
        if len(counts) == 1 or not self.per_utterance:
            slots = None if layout.full else layout.slots(tokens.device).numpy()
            outputs = self._call(tokens.numpy(), self.past, slots, range(len(counts)), beam)
        else:
            slots = layout.slots(tokens.device).numpy()  # each row's place in the (utterances x beam) grid
            starts = np.cumsum([0] + counts)
            parts = []
            for u in range(len(counts)):
                rows = slice(starts[u], starts[u + 1])
                parts.append(self._call(tokens.numpy()[rows], [p[rows] for p in self.past], slots[rows] - u * beam,
                                        range(u, u + 1), beam))
            outputs = [np.concatenate(pieces) for pieces in zip(*parts)]
        log_probs, hidden, new = outputs[0], outputs[1], outputs[2:]
        self.past = [np.concatenate((past, position), axis=2) for past, position in zip(self.past, new)]
        self.length += 1
        self.hidden = torch.from_numpy(hidden)
        return torch.from_numpy(log_probs)

    def _call(self, tokens: np.ndarray, past: list[np.ndarray], slots: np.ndarray | None, block: range, beam: int
              ) -> list[np.ndarray]:
        """One session call for the utterances of `block`, their rows placed at `slots` of the grid (None: the
        rows are the grid)."""
        size = len(block) * beam
        full = slots is None or len(tokens) == size
        if not full:
            grid_tokens = np.zeros(size, dtype=tokens.dtype)
            grid_tokens[slots] = tokens
            grid = []
            for kv in past:
                padded = np.zeros((size,) + kv.shape[1:], dtype=kv.dtype)
                padded[slots] = kv
                grid.append(padded)
            tokens, past = grid_tokens, grid
        feeds = {"tokens": tokens, "position": np.array([self.length]), **self._memories(block)}
        for layer in range(len(past) // 2):
            feeds[f"past_key_{layer}"], feeds[f"past_value_{layer}"] = past[2 * layer], past[2 * layer + 1]
        outputs = self.graphs.session(self.graph).run(None, feeds)
        return outputs if full else [output[slots] for output in outputs]

    def select(self, hypotheses: torch.Tensor) -> None:
        """Keep the cached keys and values of these hypotheses, in this order."""
        index = hypotheses.numpy()
        self.past = [past[index] for past in self.past]

    def keep_utterances(self, utterances: torch.Tensor) -> None:
        """Keep these utterances' memories, in this order."""
        index = utterances.tolist()
        self.sources = [self.sources[i] for i in index]
        if self.speeches is not None:
            self.speeches = [self.speeches[i] for i in index]
        self._batch = None


class OnnxRuntimeSearch(LeanBeamSearch):
    """The lean engine's search over ONNX Runtime sessions (see the module's docstring)."""

    name = "onnxruntime"
    description = "The lean engine's search, the encoder and every decoder step in ONNX Runtime sessions"
    batches = True

    @classmethod
    def prepare(cls, bundle: Any) -> ExportedGraphs:
        origin = bundle.files.origin
        if is_exported(origin):
            return ExportedGraphs.open(origin, bundle.device)
        return ExportedGraphs.open(cached_export(bundle), bundle.device)

    def __init__(self, search: Any, context: ExportedGraphs | None = None) -> None:
        super().__init__(search, context)
        if context is None:
            raise RunnerError("the onnxruntime engine needs the model's exported graphs")

    @property
    def runtime(self) -> dict[str, str]:
        return self.context.runtime

    @property
    def graphs(self) -> ModelGraphs:
        return ModelGraphs(self.context)

    @property
    def prefix(self) -> str:
        return self.stage.removesuffix("_search")

    def decoder_step(self, xs: list[torch.Tensor], speeches: list[torch.Tensor] | None, max_length: int) -> Any:
        if not self.context.has(f"{self.prefix}_step"):
            raise RunnerError(f"{self.context.directory}: the export has no {self.prefix}_step graph")
        per_utterance = self.context.manifest.get("quant") == "dynamic-int8"
        return OrtDecoderStep(self.context, self.prefix, xs, speeches, per_utterance)

    def ctc_log_probs(self, ctc: Any, x: torch.Tensor) -> torch.Tensor:
        graph = "asr_ctc" if self.prefix == "asr" else "st_ctc"
        return torch.from_numpy(self.context.run(graph, encoded=x.unsqueeze(0))[0][0])


def cached_export(bundle: Any) -> Path:
    """An fp32 export of the float model as the runner holds it, written once into the cache.

    Raises:
        RunnerError: the model is no longer float (a number-format plugin ran: export with `runner export
            --quant` and pass that directory as the model instead), or a part cannot be exported.
    """
    from runner.model_files import cache_dir
    from runner.ort.export import ExportOptions, export

    changed = [name for name, module in bundle.model.named_modules() if "quantized" in type(module).__module__]
    halves = [name for name, p in bundle.model.named_parameters() if p.dtype != torch.float32]
    if changed or halves:
        raise RunnerError("the onnxruntime engine exports the float model; a number-format plugin changed it: run "
                          "`runner export --quant ...` and pass that directory as --model instead")
    buffer = io.BytesIO()
    torch.save(bundle.model.state_dict(), buffer)
    import hashlib

    from runner.ort.sessions import FORMAT_VERSION

    digest = hashlib.sha256(buffer.getvalue() + bundle.files.config.read_bytes()
                            + str(FORMAT_VERSION).encode()).hexdigest()[:16]
    target = cache_dir() / "onnx" / digest
    if not is_current_export(target):
        logger.info("exporting the model's graphs for the onnxruntime engine into %s", target)
        export(bundle, target, ExportOptions(force=True))
    return target
