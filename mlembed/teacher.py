"""A separate, frozen teacher for distillation (``--model.loss.kd_teacher=model``).

The teacher is the student's starting model (the default) or any other backbone named in config. It never
trains: its parameters do not require gradients, it stays in eval mode (no dropout) whatever mode the student is
in, and it is kept OUTSIDE the student's module tree, so that it is in no optimizer, no checkpoint and no
FSDP unit. Every process holds a whole copy (a teacher is usually no larger than the student; under FSDP the
copy costs one unsharded model per device, and it only runs forward passes without autograd).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mlembed.backbone import Backbone, BackboneConfig
from mlembed.pooling import Pooling
from mlembed.text import TextTokenizer


@dataclass
class TeacherConfig:
    """Which model teaches (used when ``--model.loss.kd_teacher=model``)."""

    backbone: BackboneConfig | None = None
    """The teacher's backbone; null: the student's own starting model (its ``--model.backbone``), frozen. A
    teacher with another tokenizer gets the batch's texts decoded from the student's tokens and re-tokenized."""


class FrozenTeacher(nn.Module):
    """A backbone and pooling that embed a batch's texts at full size, without gradients.

    Args:
        backbone: the teacher's backbone settings.
        pooling: how its token states become one vector.
        student_tokenizer: the tokenizer that made the batches; when the teacher's tokenizer is another one,
            the batch's token ids are decoded with this one and re-tokenized for the teacher.
    """

    def __init__(self, backbone: BackboneConfig, pooling: Pooling, student_tokenizer: TextTokenizer) -> None:
        super().__init__()
        self.backbone = Backbone(backbone)
        self.pooling = pooling
        self.student_tokenizer = student_tokenizer
        same = backbone.tokenizer_path == student_tokenizer.path
        self.tokenizer = None if same else TextTokenizer(backbone.tokenizer_path, backbone.max_seq_length,
                                                         append_eos=pooling.needs_eos)

    def build(self) -> FrozenTeacher:
        """Load the weights once, then freeze them."""
        self.backbone.build()
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> FrozenTeacher:
        # Always eval: a teacher with dropout would give noisy targets.
        return super().train(False)

    @property
    def depth(self) -> int:
        return self.backbone.depth

    @torch.no_grad()
    def embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unit-length embeddings [B, H_teacher] of the batch rows in ``inputs`` (student-tokenized)."""
        depth = self.backbone.depth
        return F.normalize(self.features(inputs, [depth])[depth].float(), dim=-1)

    @torch.no_grad()
    def features(self, inputs: dict[str, torch.Tensor], layers: list[int]) -> dict[int, torch.Tensor]:
        """Raw pooled features {layer: [B, H_teacher]} of the batch rows in ``inputs`` (student-tokenized); an
        intermediate layer goes through the final norm first, as the student's do."""
        device = inputs["input_ids"].device
        if next(self.parameters()).device != device:
            self.to(device)
        if self.tokenizer is not None:
            texts = self.student_tokenizer.tokenizer.batch_decode(inputs["input_ids"], skip_special_tokens=True)
            inputs = {k: v.to(device) for k, v in self.tokenizer(texts).items()}
        states = self.backbone(inputs["input_ids"], inputs["attention_mask"], layers)
        return {layer: self.pooling(states[layer], inputs["attention_mask"]) for layer in layers}
