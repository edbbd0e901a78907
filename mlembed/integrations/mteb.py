"""An Encoder at one fixed (rank, depth, dim) behind the encoder interface of the ``mteb`` package.

mteb 2.x (``mteb.evaluate(model, tasks)``) calls ``encode(inputs, task_metadata=..., hf_split=..., hf_subset=...,
prompt_type=..., batch_size=...)`` with ``inputs`` a DataLoader of ``{"text": [...]}`` batches, scores with
``similarity`` / ``similarity_pairwise``, and files results under the model's ``mteb_model_meta`` (name,
revision, and here the point as its experiment). mteb 1.x's call (a list of sentences and ``task_name``) is
accepted too. mteb is imported only by ``mteb_model_meta``, so the adapter itself needs no mteb; it needs of
the model only the encoder protocol (``embed``, ``points``, ``num_parameters``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from mlembed.encoder import PointEncoder, truncate_normalize
from mlembed.evaluation.grid import eval_mode

QUERY = "query"
PASSAGES = frozenset({"passage", "document"})
"""Values of mteb's ``PromptType`` (a ``str`` enum, compared by value) for the corpus side of retrieval: mteb 2.x
says ``document``, mteb 1.x ``passage``."""


class MTEBEncoder:
    """Serve ``encoder`` at (rank, depth, dim) to mteb.

    Instructions: ``instructions[task_name]`` (else ``default_instruction``) goes before queries and before the
    texts of symmetric tasks (STS, bitext, clustering: mteb passes no prompt type there); passages (documents)
    never get one, as in training.

    Args:
        encoder: what ``mlembed.load(...)`` returns, or any model with ``embed``, ``points`` and
            ``num_parameters`` (an EmbeddingModule).
        rank: MEL rank (None: the encoder's own, e.g. what ``mlembed.load(..., rank=)`` was given; else full).
        depth: number of layers (None: the encoder's own, else full).
        dim: embedding size, an MRL prefix (None: the encoder's own, else full).
        instructions: task name -> instruction.
        default_instruction: instruction of tasks not in ``instructions`` (None: no instruction).
        batch_size: default encoder batch size.
        name: the model's name in mteb's results, ``ORG/NAME`` (mteb requires the slash).
        revision: the model's revision in mteb's results (results of one name and revision are reused by mteb's
            cache: give each trained model its own).
    """

    def __init__(
        self,
        encoder: PointEncoder,
        *,
        rank: int | None = None,
        depth: int | None = None,
        dim: int | None = None,
        instructions: Mapping[str, str] | None = None,
        default_instruction: str | None = None,
        batch_size: int = 32,
        name: str = "mlembed/model",
        revision: str = "local",
    ) -> None:
        if "/" not in name:
            raise ValueError(f"MTEBEncoder name {name!r}: mteb needs ORG/NAME (with a slash)")
        self.encoder = encoder
        self.rank = rank if rank is not None else getattr(encoder, "rank", None)
        self.depth = depth if depth is not None else getattr(encoder, "depth", None)
        self.dim = dim if dim is not None else getattr(encoder, "dim", None)
        self.instructions = dict(instructions or {})
        self.default_instruction, self.batch_size = default_instruction, batch_size
        self.name, self.revision = name, revision

    def __repr__(self) -> str:
        return f"MTEBEncoder(rank={self.rank}, depth={self.depth}, dim={self.dim})"

    def encode(
        self,
        inputs: Iterable[str] | Iterable[Mapping[str, Any]],
        *,
        task_metadata: Any = None,
        hf_split: str | None = None,
        hf_subset: str | None = None,
        prompt_type: Any = None,
        task_name: str | None = None,
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """L2-normalised float32 embeddings [N, dim] of ``inputs``.

        Args:
            inputs: texts, or batches ``{"text": [...]}`` (mteb 2.x's DataLoader).
            task_metadata: mteb 2.x's TaskMetadata; its ``name`` picks the instruction.
            hf_split: the split mteb evaluates (unused).
            hf_subset: the subset (language) mteb evaluates (unused).
            prompt_type: ``"query"``, ``"document"`` / ``"passage"`` (or mteb's PromptType), or None for
                symmetric tasks.
            task_name: mteb 1.x's task name (instead of ``task_metadata``).
            batch_size: encoder batch size (default: the constructor's).
            **kwargs: other mteb arguments (``show_progress_bar``...), ignored.
        """
        if task_name is None and task_metadata is not None:
            task_name = getattr(task_metadata, "name", None)
        texts = _texts(inputs)
        if not texts:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        with eval_mode(self.encoder):
            vectors = self.encoder.embed(texts, rank=self.rank, depth=self.depth,
                                         instruction=self.instruction(task_name, prompt_type),
                                         batch_size=batch_size or self.batch_size)
        return truncate_normalize(torch.as_tensor(vectors), self.dim).cpu().numpy().astype(np.float32)

    def instruction(self, task_name: str | None, prompt_type: Any = None) -> str | None:
        """The instruction for a task's texts of this prompt type (None for passages)."""
        if getattr(prompt_type, "value", prompt_type) in PASSAGES:
            return None
        return self.instructions.get(task_name, self.default_instruction) if task_name else self.default_instruction

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity matrix [N, M] (the vectors are unit length)."""
        return _matrix(a) @ _matrix(b).T

    def similarity_pairwise(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity of aligned rows [N]."""
        return (_matrix(a) * _matrix(b)).sum(-1)

    def point(self) -> dict[str, int | None]:
        """The (rank, depth, dim) served, the encoder's full value where none was set (None: no such axis)."""
        points = self.encoder.points()
        out = {}
        for axis, value in (("rank", self.rank), ("depth", self.depth), ("dim", self.dim)):
            values = list(getattr(points, axis + "s"))
            full = [v for v in values if v is not None]  # None on an axis: the model has no such axis (MEL off)
            out[axis] = value if value is not None else (max(full) if full else None)
        return out

    @property
    def mteb_model_meta(self):
        """mteb's ModelMeta of this point: results go to ``results/ORG__NAME/REVISION/experiments/<point>/``."""
        from mteb.models.model_meta import ModelMeta, ScoringFunction

        point = self.point()
        parameters = self.encoder.num_parameters(rank=point["rank"], depth=point["depth"])
        return ModelMeta.create_empty({
            "name": self.name, "revision": self.revision, "n_parameters": int(parameters),
            "embed_dim": point["dim"], "similarity_fn_name": ScoringFunction.COSINE, "framework": ["PyTorch"],
            "use_instructions": bool(self.instructions or self.default_instruction),
            "experiment_kwargs": {axis: value for axis, value in point.items() if value is not None},
        })


def _matrix(x) -> np.ndarray:
    """A float32 array of ``x`` (a numpy array, a list, or a torch tensor on any device)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _texts(inputs) -> list[str]:
    """A flat list of texts from a list of strings or an iterable of ``{"text": [...]}`` batches."""
    texts: list[str] = []
    for item in inputs:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, Mapping) and "text" in item:
            batch = item["text"]
            texts.extend([batch] if isinstance(batch, str) else batch)
        else:
            raise TypeError(f"MTEBEncoder.encode: expected strings or {{'text': [...]}} batches, got {type(item)}")
    return texts
