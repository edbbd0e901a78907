"""Pooling token states [B, T, H] into one vector per text [B, H].

Each strategy is a small class so that YAML picks it by ``class_path`` (no table of names to classes).
"""

from __future__ import annotations

import abc

import torch
from torch import nn


class Pooling(nn.Module, abc.ABC):
    """Base class: ``forward(hidden [B, T, H], attention_mask [B, T]) -> [B, H]``."""

    #: Whether the texts must end with an EOS token for this pooling to see the whole text.
    needs_eos: bool = False

    @abc.abstractmethod
    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pool ``hidden`` [B, T, H] over the tokens where ``attention_mask`` [B, T] is 1."""


class LastTokenPooling(Pooling):
    """The state of the last real token (decoders: it has attended to the whole text).

    The position comes from the mask, not from the sequence length, so left AND right padding both work.
    """

    needs_eos = True

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        width = attention_mask.shape[1]
        # Index of the last 1 in each row: flip, find the first 1, count back from the end.
        last = width - 1 - attention_mask.flip(-1).to(torch.int64).argmax(-1)  # [B]
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class MeanPooling(Pooling):
    """The mean of the real tokens' states (the usual choice for BERT-like encoders)."""

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class ClsPooling(Pooling):
    """The state of the first token ([CLS] for BERT-like encoders, right padding assumed)."""

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return hidden[:, 0]
