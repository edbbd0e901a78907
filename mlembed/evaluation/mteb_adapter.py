"""An Encoder at one fixed (rank, depth, dim) behind the ``encode`` interface the ``mteb`` package calls.

mteb itself is not imported: the adapter only has to quack like an mteb model, so it works with whichever mteb
version is installed (and tests need none). Both calling styles are accepted: mteb 1.x passes a list of
sentences and ``task_name``; mteb 2.x passes a DataLoader of ``{"text": [...]}`` batches and ``task_metadata``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from mlembed.encoder import Encoder, truncate_normalize
from mlembed.evaluation.grid import eval_mode

QUERY, PASSAGE = "query", "passage"
"""Values of mteb's ``PromptType`` (a ``str`` enum), compared by value."""


class MTEBEncoder:
    """Serve ``encoder`` at (rank, depth, dim) to mteb.

    Instructions: ``instructions[task_name]`` (else ``default_instruction``) goes before queries and before the
    texts of symmetric tasks (STS, bitext, clustering: mteb passes no prompt type there); passages never get
    one, as in training.

    Args:
        encoder: any ``mlembed.encoder.Encoder`` (``mlembed.load(...)``'s result, an EmbeddingModule).
        rank: MEL rank (None: full).
        depth: number of layers (None: full).
        dim: embedding size, an MRL prefix (None: full).
        instructions: task name -> instruction.
        default_instruction: instruction of tasks not in ``instructions`` (None: no instruction).
        batch_size: default encoder batch size.
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        rank: int | None = None,
        depth: int | None = None,
        dim: int | None = None,
        instructions: Mapping[str, str] | None = None,
        default_instruction: str | None = None,
        batch_size: int = 32,
    ) -> None:
        self.encoder, self.rank, self.depth, self.dim = encoder, rank, depth, dim
        self.instructions = dict(instructions or {})
        self.default_instruction, self.batch_size = default_instruction, batch_size

    def __repr__(self) -> str:
        return f"MTEBEncoder(rank={self.rank}, depth={self.depth}, dim={self.dim})"

    def encode(
        self,
        sentences: Iterable[str] | Iterable[Mapping[str, Any]],
        *,
        task_name: str | None = None,
        prompt_type: Any = None,
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """L2-normalised float32 embeddings [N, dim] of ``sentences``.

        Args:
            sentences: texts, or batches ``{"text": [...]}`` (an mteb 2.x DataLoader).
            task_name: the mteb task (picks the instruction); mteb 2.x's ``task_metadata.name`` also works.
            prompt_type: ``"query"``, ``"passage"`` (or mteb's PromptType), or None for symmetric tasks.
            batch_size: encoder batch size (default: the constructor's).
            **kwargs: other mteb arguments (``task_metadata``, ``hf_split``, ``hf_subset``...); ignored otherwise.
        """
        if task_name is None and kwargs.get("task_metadata") is not None:
            task_name = getattr(kwargs["task_metadata"], "name", None)
        texts = _texts(sentences)
        if not texts:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        with eval_mode(self.encoder):
            vectors = self.encoder.embed(texts, rank=self.rank, depth=self.depth,
                                         instruction=self.instruction(task_name, prompt_type),
                                         batch_size=batch_size or self.batch_size)
        return truncate_normalize(vectors, self.dim).cpu().numpy().astype(np.float32)

    def instruction(self, task_name: str | None, prompt_type: Any = None) -> str | None:
        """The instruction for a task's texts of this prompt type (None for passages)."""
        if getattr(prompt_type, "value", prompt_type) == PASSAGE:
            return None
        return self.instructions.get(task_name, self.default_instruction) if task_name else self.default_instruction

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity matrix [N, M] (the vectors are unit length)."""
        return np.asarray(a, dtype=np.float32) @ np.asarray(b, dtype=np.float32).T

    def similarity_pairwise(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity of aligned rows [N]."""
        return (np.asarray(a, dtype=np.float32) * np.asarray(b, dtype=np.float32)).sum(-1)


def _texts(sentences) -> list[str]:
    """A flat list of texts from a list of strings or an iterable of ``{"text": [...]}`` batches."""
    texts: list[str] = []
    for item in sentences:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, Mapping) and "text" in item:
            batch = item["text"]
            texts.extend([batch] if isinstance(batch, str) else batch)
        else:
            raise TypeError(f"MTEBEncoder.encode: expected strings or {{'text': [...]}} batches, got {type(item)}")
    return texts
