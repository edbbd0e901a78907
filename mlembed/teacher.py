"""A separate, frozen teacher for distillation (``--model.loss.kd_teacher=model``).

The teacher is the student's starting model (the default) or any other backbone named in config. It never
trains: its parameters do not require gradients, it stays in eval mode (no dropout) whatever mode the student is
in, and it is kept OUTSIDE the student's module tree, so that it is in no optimizer, no checkpoint and no
FSDP unit. Every process holds a whole copy (a teacher is usually no larger than the student; under FSDP the
copy costs one unsharded model per device, and it only runs forward passes without autograd).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mlembed.axes.mll import MLL
from mlembed.backbone import Backbone, BackboneConfig
from mlembed.losses import ContrastiveLoss, feature_distillation_loss
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


def teacher_of(config: TeacherConfig | None, student: BackboneConfig, pooling: Pooling,
               tokenizer: TextTokenizer, default_pooling) -> FrozenTeacher:
    """The built teacher of ``config``: the student's own starting model (``student``, a copy of its ``pooling``)
    when ``config`` names no backbone, else that backbone with its family's default pooling."""
    backbone = (config or TeacherConfig()).backbone
    own = copy.deepcopy(pooling) if backbone is None else default_pooling(backbone)
    return FrozenTeacher(backbone or student, own, tokenizer).build()


def paired_layers(student_layers: tuple[int, ...], teacher: FrozenTeacher, mll: MLL) -> dict[int, int]:
    """Student MLL layer -> the teacher's layer it is distilled from by ``kd_feature_weight``: the i-th MLL
    layer of each (the same layer when the depths agree)."""
    theirs = mll.resolve(teacher.depth)
    if len(theirs) != len(student_layers):
        raise ValueError(f"--model.loss.kd_feature_weight pairs the i-th MLL layer of the student {student_layers} "
                         f"with the teacher's {theirs} (depth {teacher.depth}): their counts differ; "
                         "give --model.mll.layers that both depths hold, or a teacher of the student's depth")
    return dict(zip(student_layers, theirs))


def teacher_vectors(loss: ContrastiveLoss, teacher: FrozenTeacher | None, batch: dict,
                    last: tuple) -> tuple[torch.Tensor, ...] | None:
    """The teacher's unit vectors of (queries[, positives]) for the vector distillation terms, by ``kd_teacher``:
    the frozen model, the vectors stored in the batch, or the student's own last layer (detached).

    A bitext batch's positives may take their queries' vectors (``kd_bitext_target=query``) or none (``none``:
    the queries alone are distilled); a teacher of one group only leaves the positives out of both terms.
    """
    if not loss.distills_vectors:
        return None
    target = loss.kd_bitext_target if batch["task"] == "bitext" else "positive"
    if loss.kd_teacher == "model":
        query = teacher.embed(batch["query"])
        if target == "positive":
            return query, teacher.embed(batch["positive"])
    elif loss.kd_teacher == "batch":
        if "teacher_query" not in batch:
            raise KeyError("--model.loss.kd_teacher=batch but the batch has no 'teacher_query' vectors")
        query = batch["teacher_query"]
        if target == "positive":
            return (query,)
    else:
        query, positive = (F.normalize(x.detach(), dim=-1) for x in last[:2])
        if target == "positive":
            return query, positive
    return (query, query) if target == "query" else (query,)


def feature_distillation(teacher: FrozenTeacher, pairs: dict[int, int], batch: dict,
                         embeddings: dict[int, tuple]) -> torch.Tensor:
    """The authors' distillation: raw features of queries, positives and negatives against the teacher's
    paired layer (``pairs``), summed over groups, averaged over this step's layers."""
    layers = list(embeddings)
    wanted = sorted({pairs[layer] for layer in layers})
    groups = [key for key in ("query", "positive", "negatives") if key in batch]
    features = {key: teacher.features(batch[key], wanted) for key in groups}
    total = 0.0
    for layer in layers:
        query, positive, negatives = embeddings[layer]
        student = (query, positive) + ((negatives,) if negatives is not None and "negatives" in features else ())
        theirs = [features[key][pairs[layer]] for key in groups[:len(student)]]
        if len(student) == 3:  # [B*N, H] -> [B, N, H], as the student's negatives
            theirs[2] = theirs[2].reshape(*negatives.shape[:2], -1)
        total = total + feature_distillation_loss(student, tuple(theirs))
    return total / len(layers)
