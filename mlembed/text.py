"""Turning text into model inputs: one tokenizer wrapper shared by training data and encoding.

Keeping one implementation matters: the data loader (in its worker processes) and ``encode`` at inference
must produce identical ids, or a model evaluated after training sees inputs it never saw in training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_TEMPLATE = "Instruct: {instruction}\nQuery: {query}"
"""How an instruction is put before a query: by the training data (each task's default) and by ``embed`` at
inference, one constant so the two cannot drift apart."""


def text_hash(text: str) -> int:
    """A stable 63-bit hash of a text (same on every process and run, unlike Python's ``hash``).

    Used to mask false negatives: two rows whose query (or positive) texts hash alike must not be each
    other's negatives, also when the rows live on different devices.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass
class TextTokenizer:
    """Tokenizes texts the way the backbone expects them, with padding to the longest text only.

    Padding to the longest text in the batch (not to ``max_seq_length``) keeps short texts cheap; the data
    pipeline adds length bucketing on top so that a batch holds texts of similar length.
    """

    path: str
    """A Hugging Face tokenizer: a local directory (or file), or a hub id ``ORG/NAME`` (``ORG/NAME@REVISION``
    pins a branch, tag or commit); see ``load_tokenizer``."""
    max_seq_length: int = 512
    """Texts are truncated to this many tokens, the appended EOS included."""
    append_eos: bool = False
    """Append the EOS token (decoders pooled on their last token need it; encoders do not)."""

    def __post_init__(self) -> None:
        if self.max_seq_length < 2:
            raise ValueError(f"--data.max_seq_length ({self.max_seq_length}) must be at least 2")
        self._tok = None

    @property
    def tokenizer(self):
        """The Hugging Face tokenizer, loaded lazily so the object pickles cheaply into loader workers."""
        if self._tok is None:
            self._tok = load_tokenizer(self.path)
        return self._tok

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_tok"] = None
        return state

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenize ``texts`` into right-padded ``input_ids`` and ``attention_mask`` of shape [B, T]."""
        return pad_right(self.ids(texts), pad_id=pad_token_id(self.tokenizer))

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """The token ids of each text, unpadded: special tokens added, truncated, EOS appended when asked."""
        tok = self.tokenizer
        eos = tok.eos_token_id if self.append_eos else None
        if self.append_eos and eos is None:
            raise ValueError(f"tokenizer at {self.path} has no EOS token, but append_eos is on")
        budget = self.max_seq_length - (1 if eos is not None else 0)
        encoded = tok(list(texts), add_special_tokens=True, truncation=True, max_length=budget)["input_ids"]
        return [ids + [eos] if eos is not None else ids for ids in encoded]


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token id lists into ``input_ids`` and ``attention_mask`` tensors of shape [B, T]."""
    width = max((len(r) for r in rows), default=1)
    ids = torch.full((len(rows), max(width, 1)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def pad_token_id(tok) -> int:
    """The tokenizer's pad id, falling back to EOS (decoder tokenizers often have no pad token)."""
    if tok.pad_token_id is not None:
        return int(tok.pad_token_id)
    if tok.eos_token_id is not None:
        return int(tok.eos_token_id)
    return 0


def load_tokenizer(path: str):
    """Load a tokenizer from a local path or a hub id (``ORG/NAME`` or ``ORG/NAME@REVISION``).

    A hub id goes to ``AutoTokenizer.from_pretrained`` with its revision, so transformers resolves it as for
    any user: the hub cache (``HF_HOME`` / ``HF_HUB_CACHE``), ``HF_HUB_OFFLINE``, a download when online.
    """
    from transformers import AutoTokenizer

    from mlembed.paths import split_hub_id

    if Path(path).exists():
        return AutoTokenizer.from_pretrained(path, **_base_config(Path(path)))
    parts = split_hub_id(path)
    if parts is None:
        raise FileNotFoundError(
            f"tokenizer path {path!r} does not exist and is not a Hugging Face hub id (ORG/NAME[@REVISION]): "
            "set --model.backbone.tokenizer or --model.backbone.pretrained to a directory or a hub id"
        )
    repo_id, revision = parts
    return AutoTokenizer.from_pretrained(repo_id, revision=revision)


def _base_config(directory: Path) -> dict:
    """For an efficiency export, ``config=`` its base model's config: transformers reads a directory's config.json
    before its tokenizer, and the export's own config needs the export's code (a prompt, or a warning, without
    ``trust_remote_code``); the tokenizer is the base model's either way. Else nothing."""
    import json

    from transformers import AutoConfig

    from mlembed.artifact import REMOTE_BASE_KEY, REMOTE_MODEL_TYPE

    file = directory / "config.json"
    written = json.loads(file.read_text()) if directory.is_dir() and file.is_file() else {}
    if written.get("model_type") != REMOTE_MODEL_TYPE:
        return {}
    return {"config": AutoConfig.for_model(**written[REMOTE_BASE_KEY])}
