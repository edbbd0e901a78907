"""EncoderSpec: everything that makes an Encoder (backbone, pooling, the three axes, the instruction template).

The one way an encoder is made: the LightningModule makes its own from its settings, ``mlembed.load`` from a
checkpoint's saved settings or an export's manifest, and the control arm from the trained model's spec with the
axes switched off. The spec also knows the grid of points its axes train: the encoder receives it as a
constructor argument and resolves it against the backbone when the backbone is built, so the encoder itself
never reads the axes' training settings.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any

from mlembed.artifact import PointGrid
from mlembed.axes.mel import MEL
from mlembed.axes.mll import MLL
from mlembed.axes.mrl import MRL
from mlembed.backbone import BackboneConfig
from mlembed.encoder import Encoder
from mlembed.pooling import Pooling
from mlembed.text import DEFAULT_TEMPLATE


@dataclass
class EncoderSpec:
    """The settings of one encoder.

    Args:
        backbone: which Hugging Face model and how texts are tokenized.
        pooling: how token states become one vector (None: last token for decoders, mean for encoders).
        mel, mll, mrl: the three axes' settings (the ranks, layers and dims the model is trained to serve).
        instruction_template: how an instruction is put before a query.
        grid: the points as an export recorded them; None: the ones the axes train.
    """

    backbone: BackboneConfig
    pooling: Pooling | None = None
    mel: MEL = field(default_factory=MEL)
    mll: MLL = field(default_factory=MLL)
    mrl: MRL = field(default_factory=MRL)
    instruction_template: str = DEFAULT_TEMPLATE
    grid: PointGrid | None = None

    @property
    def max_rank(self) -> int | None:
        """The rank of the MEL factors that replace the token embedding (None: the ordinary matrix)."""
        return self.mel.rank if self.mel.enabled else None

    def resolve(self, depth: int, hidden_size: int) -> PointGrid:
        """The points served by a backbone of ``depth`` layers and width ``hidden_size``: the recorded grid, or the
        MEL ranks (``(None,)`` when off), the MLL layers (the depths served) and the MRL dims, each ascending."""
        if self.grid is not None:
            return self.grid
        ranks = self.mel.resolve_ranks() if self.mel.enabled else (None,)
        dims, _ = self.mrl.resolve(hidden_size)
        return PointGrid(ranks=ranks, depths=self.mll.resolve(depth), dims=tuple(sorted(dims)))

    def encoder(self) -> Encoder:
        """The encoder, not yet built (no weights loaded): ``.build()`` loads them and resolves the grid."""
        return Encoder(self.backbone, self.pooling, max_rank=self.max_rank,
                       instruction_template=self.instruction_template, grid=self)

    def build(self) -> Encoder:
        """The built encoder (weights loaded or created, MEL factors installed, not initialised)."""
        return self.encoder().build()

    def replace(self, **changes: Any) -> EncoderSpec:
        """A copy with ``changes`` (``mel=...``, ``grid=...``)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hparams(cls, hparams: dict[str, Any]) -> EncoderSpec:
        """The spec that an EmbeddingModule's saved settings (a checkpoint's ``hyper_parameters``) describe."""
        return cls(
            backbone=_settings(hparams["backbone"], BackboneConfig),
            pooling=pooling_from(hparams.get("pooling")),
            mel=_settings(hparams.get("mel"), MEL),
            mll=_settings(hparams.get("mll"), MLL),
            mrl=_settings(hparams.get("mrl"), MRL),
            instruction_template=hparams.get("instruction_template") or DEFAULT_TEMPLATE,
        )


def _settings(value: Any, cls: type) -> Any:
    """A settings dataclass from what a checkpoint holds: the object itself, its fields as a dict, or None."""
    if value is None:
        return cls()
    if isinstance(value, dict):
        return cls(**value)
    return value


def pooling_from(value: Any) -> Pooling | None:
    """The pooling of a checkpoint or export: a Pooling object, LightningCLI's ``{class_path, init_args}``, or
    None."""
    if value is None or isinstance(value, Pooling):
        return value
    module_name, _, class_name = value["class_path"].rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)(**(value.get("init_args") or {}))

