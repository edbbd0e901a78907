"""``mlembed.load``: one encoder from a Lightning checkpoint, a compat export or an efficiency export.

Loading lives in ``mlembed/loading.py``, not ``load.py``: a submodule named ``load`` would replace the function
``mlembed.load`` with itself the first time anything imported it.

Every source becomes an ``EmbeddingModule`` (so there is one encoding code path: same tokenization, pooling
and depth truncation as in training), wrapped in an ``Embedder`` that serves one (rank, depth, dim) point by
default and implements the ``mlembed.encoder.Encoder`` protocol for evaluation.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mlembed.encoder import MatryoshkaPoints, truncate_normalize
from mlembed.module import EmbeddingModule
from mlembed.sharded import consolidate, is_sharded_checkpoint

if TYPE_CHECKING:
    from mlembed.export import Manifest


class Embedder:
    """A loaded model serving the point (rank, depth, dim), and any smaller point its source holds.

    ``embed(rank=None, depth=None)`` means this object's rank and depth (the model as loaded); smaller values
    are served when the source has them (a checkpoint or an efficiency export: every rank and depth below;
    a compat export: every depth below, its one rank).

    Args:
        module: the EmbeddingModule doing the work (built and in eval mode).
        rank: the default MEL rank (None: MEL off).
        depth: the default depth.
        dim: the default embedding size of ``encode``.
    """

    def __init__(self, module: EmbeddingModule, *, rank: int | None, depth: int, dim: int) -> None:
        self.module, self.rank, self.depth, self.dim = module, rank, depth, dim
        self.module.eval()

    def __repr__(self) -> str:
        return f"Embedder(rank={self.rank}, depth={self.depth}, dim={self.dim})"

    @property
    def dense(self) -> bool:
        """Whether the token embedding is an ordinary matrix (compat export or MEL off), not factors."""
        return self.module.factorized_embedding is None

    def points(self) -> MatryoshkaPoints:
        """The trained (rank, depth, dim) values this object can serve (none above its own point)."""
        trained = self.module.points()
        if self.dense:
            ranks = (self.rank,)
        else:
            ranks = tuple(r for r in trained.ranks if r <= self.rank) or (self.rank,)
        return MatryoshkaPoints(
            ranks=ranks,
            depths=tuple(d for d in trained.depths if d <= self.depth) or (self.depth,),
            dims=tuple(d for d in trained.dims if d <= self.dim) or (self.dim,),
        )

    def embed(
        self,
        texts: Sequence[str],
        *,
        rank: int | None = None,
        depth: int | None = None,
        instruction: str | None = None,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """Pooled embeddings [N, hidden], not normalised (the Encoder protocol)."""
        return self.module.embed(
            texts, rank=self._module_rank(rank), depth=self._depth(depth), instruction=instruction,
            batch_size=batch_size,
        )

    def embed_layers(
        self,
        texts: Sequence[str],
        *,
        rank: int | None = None,
        depths: Sequence[int],
        instruction: str | None = None,
        batch_size: int = 64,
    ) -> dict[int, torch.Tensor]:
        """``{depth: embed(texts, rank=rank, depth=depth)}`` from one forward pass (the grid's fast path)."""
        return self.module.embed_layers(
            texts, rank=self._module_rank(rank), depths=[self._depth(d) for d in depths], instruction=instruction,
            batch_size=batch_size,
        )

    def encode(self, texts: Sequence[str], instruction: str | None = None, batch_size: int = 64) -> torch.Tensor:
        """L2-normalised embeddings [N, dim] at this object's (rank, depth, dim)."""
        vectors = self.embed(texts, instruction=instruction, batch_size=batch_size)
        return truncate_normalize(vectors, self.dim)

    def num_parameters(self, *, rank: int | None = None, depth: int | None = None) -> int:
        """Parameters of the deployed model at (rank, depth) (the dense matrix when this object is dense)."""
        return self.module.num_parameters(rank=self._module_rank(rank), depth=self._depth(depth))

    def _module_rank(self, rank: int | None) -> int | None:
        if rank is None or rank == self.rank:
            return None if self.dense else self.rank
        if self.dense:
            raise ValueError(f"rank {rank} asked for, but this model's embedding is dense at rank {self.rank} "
                             "(load an efficiency export or the checkpoint to choose the rank)")
        if not 1 <= rank <= self.rank:
            raise ValueError(f"rank {rank} is outside [1, {self.rank}] (the rank this model was loaded at)")
        return rank

    def _depth(self, depth: int | None) -> int:
        depth = self.depth if depth is None else depth
        if not 1 <= depth <= self.depth:
            raise ValueError(f"depth {depth} is outside [1, {self.depth}] (the depth this model was loaded at)")
        return depth


def load(
    source: str | os.PathLike,
    rank: int | None = None,
    depth: int | None = None,
    dim: int | None = None,
    device: str | torch.device = "cpu",
) -> Embedder:
    """Load an encoder from a Lightning checkpoint or an export directory (compat or efficiency).

    Args:
        source: a ``.ckpt`` file, or a directory written by ``mlembed export``.
        rank: MEL rank (default: the checkpoint's maximum, or the export's rank).
        depth: number of layers (default: all the source has).
        dim: embedding size of ``encode`` (default: the checkpoint's hidden size, or the export's dim).
        device: where the model runs.

    Returns:
        An Embedder; ``encode(texts)`` gives L2-normalised [N, dim] vectors.
    """
    from mlembed.export import resolve_point

    path = Path(source)
    if not path.is_dir() or is_sharded_checkpoint(path):
        module = load_checkpoint(path).to(device)
        point = resolve_point(module, rank=rank, depth=depth, dim=dim)
        return Embedder(module, rank=point.rank, depth=point.depth, dim=point.dim)
    module, manifest = load_export(path)
    module.to(device)
    dim = manifest.dim if dim is None else dim
    if module.factorized_embedding is not None:
        point = resolve_point(module, rank=rank, depth=depth, dim=dim)
        return Embedder(module, rank=point.rank, depth=point.depth, dim=point.dim)
    # A compat export: its one (dense) rank is the exported one.
    if rank is not None and rank != manifest.rank:
        raise ValueError(f"rank {rank} asked for, but {path} is a compat export, dense at rank {manifest.rank}")
    point = resolve_point(module, rank=None, depth=depth, dim=dim)
    return Embedder(module, rank=manifest.rank, depth=point.depth, dim=point.dim)


def load_checkpoint(path: str | os.PathLike) -> EmbeddingModule:
    """Restore an EmbeddingModule from a Lightning checkpoint (plain ``Trainer.fit`` or LightningCLI).

    Lightning rebuilds the module from the saved hyperparameters: dataclass objects for ``Trainer.fit``,
    jsonargparse through the checkpoint's instantiator for LightningCLI. ``path`` is a checkpoint file or the
    directory of a sharded (FSDP) checkpoint, whose model shards are merged in memory.
    """
    path = Path(path)
    if path.is_dir() and not is_sharded_checkpoint(path):
        raise FileNotFoundError(f"checkpoint {path} is a directory but not a sharded Lightning checkpoint")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        source = _merged(path) if path.is_dir() else path
        module = EmbeddingModule.load_from_checkpoint(source, map_location="cpu", weights_only=False)
    except Exception as err:  # torch.load and Lightning raise many kinds; all mean the file is unusable
        raise ValueError(f"checkpoint {path} could not be read as an mlembed EmbeddingModule: {err}") from err
    factors = module.factorized_embedding
    if factors is not None:
        if not bool(factors.initialized):
            raise ValueError(f"checkpoint {path} holds MEL factors that were never initialised")
        factors.source_weight = None  # the random matrix built before restoring; the factors replace it
    return module.eval()


def _merged(directory: Path) -> io.BytesIO:
    """The sharded checkpoint ``directory`` as the bytes of a one-file checkpoint (what Lightning loads)."""
    buffer = io.BytesIO()
    torch.save(consolidate(directory), buffer)
    buffer.seek(0)
    return buffer


def load_export(directory: str | os.PathLike) -> tuple[EmbeddingModule, Manifest]:
    """Rebuild an EmbeddingModule from an ``mlembed export`` directory; returns it and the export's Manifest."""
    from mlembed.export import Manifest

    directory = Path(directory)
    manifest = Manifest.read(directory)
    if manifest.mode == "compat":
        module = _compat_module(directory, manifest)
    elif manifest.mode == "efficiency":
        module = _efficiency_module(directory, manifest)
    else:
        raise ValueError(f"{directory}: unknown export mode {manifest.mode!r} in its manifest")
    if manifest.eos_in_tokenizer:
        from mlembed.text import TextTokenizer

        # The exported tokenizer appends the EOS itself; mlembed must not append a second one.
        module.text_tokenizer = TextTokenizer(str(directory), manifest.max_seq_length, append_eos=False)
    return module.eval(), manifest


def _module_for(backbone, manifest: Manifest, *, mel_rank: int | None) -> EmbeddingModule:
    """An EmbeddingModule whose axes hold the export's trained points (so ``points()`` reports them)."""
    import importlib

    from mlembed.axes.mel import MEL
    from mlembed.axes.mll import MLL
    from mlembed.axes.mrl import MRL

    module_name, _, class_name = manifest.pooling.rpartition(".")
    pooling = getattr(importlib.import_module(module_name), class_name)()
    mel = MEL(enabled=False) if mel_rank is None else MEL(rank=mel_rank, ranks=manifest.ranks or [mel_rank])
    module = EmbeddingModule(
        backbone,
        pooling=pooling,
        mel=mel,
        mll=MLL(layers=manifest.depths or [manifest.depth]),
        mrl=MRL(dims=manifest.dims or [manifest.hidden_size]),
        instruction_template=manifest.instruction_template,
    )
    return module


def _compat_module(directory: Path, manifest: Manifest) -> EmbeddingModule:
    from mlembed.backbone import BackboneConfig

    backbone = BackboneConfig(pretrained=str(directory), max_seq_length=manifest.max_seq_length)
    module = _module_for(backbone, manifest, mel_rank=None)
    module.configure_model()
    return module


def _efficiency_module(directory: Path, manifest: Manifest) -> EmbeddingModule:
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from mlembed.backbone import BackboneConfig
    from mlembed.export import FACTORIZED_WEIGHTS

    weights = directory / FACTORIZED_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{directory} is an efficiency export without its weights file {weights.name}")
    hf_config = AutoConfig.from_pretrained(directory)
    options = hf_config.to_diff_dict()
    options["model_type"] = hf_config.model_type
    dtype = str(getattr(hf_config, "dtype", None) or "float32").removeprefix("torch.")
    backbone = BackboneConfig(config=options, tokenizer=str(directory), max_seq_length=manifest.max_seq_length,
                              dtype=dtype)
    module = _module_for(backbone, manifest, mel_rank=manifest.rank)
    module.configure_model()  # random weights, all replaced below
    model = module.backbone.model
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as err:
        raise ValueError(f"{weights} does not match the model described by {directory / 'config.json'}: {err}") from err
    module.factorized_embedding.source_weight = None
    return module
