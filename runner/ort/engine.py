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
from runner.ort.sessions import ExportedGraphs, is_exported

logger = logging.getLogger("runner")


class ModelGraphs:
    """The encoder and MD encoder of an export, called as `runner.pipeline` calls the torch modules."""

    def __init__(self, graphs: ExportedGraphs) -> None:
        self.graphs = graphs

    def encode(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (1, frames, n_mels) -> (encoder output, ASR encoder output), each (1, T, d)."""
        encoded, asr_encoded = self.graphs.run("encoder", features=features)
        return torch.from_numpy(encoded), torch.from_numpy(asr_encoded)

    def md_encode(self, states: torch.Tensor) -> torch.Tensor:
        """The MD encoder over the ASR decoder's states (1, L, d) -> (1, L, d)."""
        return torch.from_numpy(self.graphs.run("md_encoder", states=states)[0])


def _projected(graphs: ExportedGraphs, graph: str, memories: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Each utterance's keys/values from `graph`, padded to a multiple of MEMORY_ALIGN positions (alone or in
    a batch alike): (layers, 2, utterances, heads, T, d_k) and the (utterances, T) mask of real positions."""
    projected = [graphs.run(graph, **{graphs.manifest["graphs"][graph]["inputs"][0]: memory.unsqueeze(0)})[0]
                 for memory in memories]
    lengths = [p.shape[3] for p in projected]
    longest = -(-max(lengths) // MEMORY_ALIGN) * MEMORY_ALIGN
    layers, _, heads, _, d_k = projected[0].shape
    keys_values = np.zeros((layers, 2, len(memories), heads, longest, d_k), dtype=projected[0].dtype)
    mask = np.zeros((len(memories), longest), dtype=bool)
    for index, (p, length) in enumerate(zip(projected, lengths)):
        keys_values[:, :, index, :, :length] = p
        mask[index, :length] = True
    return keys_values, mask


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
        self.source, self.source_mask = _projected(graphs, f"{prefix}_memory", memories)
        self.speech = None
        if speeches is not None and graphs.has(f"{prefix}_speech"):
            self.speech, self.speech_mask = _projected(graphs, f"{prefix}_speech", speeches)
        self.per_utterance = per_utterance
        layers, _, _, heads, _, d_k = self.source.shape
        self.past = np.zeros((layers, 2, 0, heads, 0, d_k), dtype=self.source.dtype)
        self.length = 0
        self.hidden: torch.Tensor | None = None

    def __call__(self, tokens: torch.Tensor, layout: Any) -> torch.Tensor:
        """Log-probabilities (n, V) of the next token for every running hypothesis; `hidden` keeps (n, d)."""
        counts = list(layout.counts)
        rows = np.repeat(np.arange(len(counts)), counts)
        if self.past.shape[2] != len(rows):  # the first step: no earlier position yet
            self.past = np.zeros(self.past.shape[:2] + (len(rows),) + self.past.shape[3:], dtype=self.past.dtype)
        groups = [slice(start, start + count) for start, count in zip(np.cumsum([0] + counts[:-1]), counts)] \
            if self.per_utterance and len(counts) > 1 else [slice(0, len(rows))]
        outputs = [self._call(tokens.numpy()[group], rows[group], self.past[:, :, group]) for group in groups]
        log_probs, hidden, new = (np.concatenate(parts, axis=axis) for parts, axis in zip(zip(*outputs), (0, 0, 2)))
        self.past = np.concatenate((self.past, new), axis=4)
        self.length += 1
        self.hidden = torch.from_numpy(hidden)
        return torch.from_numpy(log_probs)

    def _call(self, tokens: np.ndarray, rows: np.ndarray, past: np.ndarray) -> list[np.ndarray]:
        utterances = np.unique(rows) if self.per_utterance else None
        source, mask, local = self.source, self.source_mask, rows
        if utterances is not None and len(utterances) == 1:  # one utterance's memory alone, as when it is searched alone
            source, mask, local = source[:, :, utterances], mask[utterances], np.zeros_like(rows)
        feeds = {"tokens": tokens, "position": np.array([self.length]), "past": np.ascontiguousarray(past),
                 "source": source, "source_mask": mask, "rows": local}
        if self.speech is not None:
            speech, speech_mask = self.speech, self.speech_mask
            if utterances is not None and len(utterances) == 1:
                speech, speech_mask = speech[:, :, utterances], speech_mask[utterances]
            feeds.update(speech=speech, speech_mask=speech_mask)
        return self.graphs.session(self.graph).run(None, feeds)

    def select(self, hypotheses: torch.Tensor) -> None:
        """Keep the cached keys and values of these hypotheses, in this order."""
        self.past = np.ascontiguousarray(self.past[:, :, hypotheses.numpy()])

    def keep_utterances(self, utterances: torch.Tensor) -> None:
        """Keep these utterances' memories, in this order."""
        index = utterances.numpy()
        self.source, self.source_mask = self.source[:, :, index], self.source_mask[index]
        if self.speech is not None:
            self.speech, self.speech_mask = self.speech[:, :, index], self.speech_mask[index]


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

    digest = hashlib.sha256(buffer.getvalue() + bundle.files.config.read_bytes()).hexdigest()[:16]
    target = cache_dir() / "onnx" / digest
    if not is_exported(target):
        logger.info("exporting the model's graphs for the onnxruntime engine into %s", target)
        export(bundle, target, ExportOptions(force=True))
    return target
