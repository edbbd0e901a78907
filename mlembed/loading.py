"""``mlembed.load``: one encoder from a Lightning checkpoint, a compat export or an efficiency export.

Loading lives in ``mlembed/loading.py``, not ``load.py``: a submodule named ``load`` would replace the function
``mlembed.load`` with itself the first time anything imported it.

Every source becomes an :class:`~mlembed.encoder.Encoder` (so there is one encoding code path: same tokenization,
pooling and depth truncation as in training), wrapped in an ``Embedder`` that serves one (rank, depth, dim) point
by default and implements the ``mlembed.encoder.PointEncoder`` protocol for evaluation. Nothing here imports
Lightning: a checkpoint's hyperparameters (dataclasses from ``Trainer.fit``, plain dicts from LightningCLI) are
read directly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mlembed.artifact import (
    FACTORIZED_WEIGHTS,
    FACTORIZED_WEIGHTS_BEFORE,
    REMOTE_BASE_KEY,
    ExportManifest,
    PointGrid,
    resolve_point,
    warn_untrained,
)
from mlembed.axes.mel import MEL
from mlembed.backbone import BackboneConfig
from mlembed.encoder import Encoder, encoder_state_keys, truncate_normalize
from mlembed.sharded import consolidate, is_sharded_checkpoint
from mlembed.spec import EncoderSpec, pooling_from
from mlembed.text import TextTokenizer


class Embedder:
    """A loaded model serving the point (rank, depth, dim), and any smaller point its source holds.

    ``embed(rank=None, depth=None)`` means this object's rank and depth (the model as loaded); smaller values
    are served when the source has them (a checkpoint or an efficiency export: every rank and depth below;
    a compat export: every depth below, its one rank; a model without MEL loaded with ``svd_ranks``: those ranks,
    as direct SVD truncations).

    Args:
        encoder: the Encoder doing the work (built and in eval mode).
        rank: the default MEL rank (None: MEL off).
        depth: the default depth.
        dim: the default embedding size of ``encode``.
    """

    def __init__(self, encoder: Encoder, *, rank: int | None, depth: int, dim: int) -> None:
        self.encoder, self.rank, self.depth, self.dim = encoder, rank, depth, dim
        self.encoder.eval()

    def __repr__(self) -> str:
        return f"Embedder(rank={self.rank}, depth={self.depth}, dim={self.dim})"

    @property
    def dense(self) -> bool:
        """Whether the token embedding is an ordinary matrix (compat export or MEL off), not factors."""
        return self.encoder.factorized_embedding is None

    def points(self) -> PointGrid:
        """The trained (rank, depth, dim) values this object can serve (none above its own point)."""
        trained = self.encoder.points()
        if self.dense:
            ranks = (self.rank,)
        else:
            ranks = tuple(r for r in trained.ranks if r <= self.rank) or (self.rank,)
        return PointGrid(
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
        """Pooled embeddings [N, hidden], not normalised (the PointEncoder protocol)."""
        return self.encoder.embed(
            texts, rank=self._encoder_rank(rank), depth=self._depth(depth), instruction=instruction,
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
        return self.encoder.embed_layers(
            texts, rank=self._encoder_rank(rank), depths=[self._depth(d) for d in depths], instruction=instruction,
            batch_size=batch_size,
        )

    def encode(self, texts: Sequence[str], instruction: str | None = None, batch_size: int = 64, *,
               rank: int | None = None, depth: int | None = None, dim: int | None = None) -> torch.Tensor:
        """L2-normalised embeddings [N, dim] at (rank, depth, dim): each defaults to this object's own.

        Any point up to this object's own is served per call, from the same weights (no reload, no copy); a
        point outside that range is refused, one inside it but never trained gets one warning.
        """
        dim = self._dim(dim)  # the range first: a value outside it is refused, not warned about
        self._encoder_rank(rank), self._depth(depth)
        warn_untrained(self.encoder.points(), rank=rank, depth=depth, dim=dim if dim != self.dim else None,
                       flag=_argument)
        vectors = self.embed(texts, rank=rank, depth=depth, instruction=instruction, batch_size=batch_size)
        return truncate_normalize(vectors, dim)

    def num_parameters(self, *, rank: int | None = None, depth: int | None = None) -> int:
        """Parameters of the deployed model at (rank, depth) (the dense matrix when this object is dense)."""
        return self.encoder.num_parameters(rank=self._encoder_rank(rank), depth=self._depth(depth))

    def _encoder_rank(self, rank: int | None) -> int | None:
        if rank is None or rank == self.rank:
            return None if self.dense else self.rank
        if self.dense and self.rank is None:
            raise ValueError(f"rank {rank} asked for, but this model was trained without MEL (no factors): "
                             "--svd-ranks scores the direct SVD truncation of its embedding matrix")
        if self.dense:
            raise ValueError(f"rank {rank} asked for, but this model's embedding is dense at rank {self.rank} "
                             "(load an efficiency export or the checkpoint to choose the rank)")
        if not 1 <= rank <= self.rank:
            raise ValueError(f"rank {rank} is outside [1, {self.rank}] (the rank this model was loaded at)")
        return rank

    def _dim(self, dim: int | None) -> int:
        dim = self.dim if dim is None else dim
        if not 1 <= dim <= self.dim:
            raise ValueError(f"dim {dim} is outside [1, {self.dim}] (the embedding size this model was loaded at)")
        return dim

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
    svd_ranks: Sequence[int] | None = None,
) -> Embedder:
    """Load an encoder from a Lightning checkpoint or an export directory (compat or efficiency).

    Args:
        source: a ``.ckpt`` file (or a sharded checkpoint directory), or a directory written by ``mlembed export``.
        rank: MEL rank (default: the checkpoint's maximum, or the export's rank).
        depth: number of layers (default: all the source has).
        dim: embedding size of ``encode`` (default: the checkpoint's hidden size, or the export's dim).
        device: where the model runs.
        svd_ranks: for a model trained without MEL (its checkpoint or compat export): serve these ranks
            as the direct SVD truncation of its embedding matrix (:meth:`Encoder.factorize_by_svd`), the baseline
            of a MEL ablation. ``rank`` then defaults to the full rank.

    Returns:
        An Embedder; ``encode(texts)`` gives L2-normalised [N, dim] vectors.
    """
    embedder = _load(Path(source), rank, depth, dim, device, svd_ranks)
    warn_untrained(embedder.encoder.points(), rank=rank, depth=depth, dim=dim, flag=_argument)
    return embedder


def _argument(name: str) -> str:
    """How ``mlembed.load`` and ``encode`` name a point's value in their messages: ``dim``."""
    return name


def _load(path: Path, rank: int | None, depth: int | None, dim: int | None, device: str | torch.device,
          svd_ranks: Sequence[int] | None) -> Embedder:
    if not path.is_dir() or is_sharded_checkpoint(path):
        encoder = load_checkpoint(path)
        if svd_ranks:
            _factorize(encoder, svd_ranks, path)
        encoder.to(device)
        point = resolve_point(encoder.shape(), rank=rank, depth=depth, dim=dim)
        return Embedder(encoder, rank=point.rank, depth=point.depth, dim=point.dim)
    encoder, manifest = load_export(path)
    if svd_ranks:
        if manifest.rank is not None:
            raise ValueError(f"--svd-ranks: {path} is an export of a model trained with MEL (rank {manifest.rank}): "
                             "its ranks are trained ones; score its checkpoint or an efficiency export with --ranks")
        _factorize(encoder, svd_ranks, path)
    encoder.to(device)
    dim = manifest.dim if dim is None else dim
    if encoder.factorized_embedding is not None:
        point = resolve_point(encoder.shape(), rank=rank, depth=depth, dim=dim)
        return Embedder(encoder, rank=point.rank, depth=point.depth, dim=point.dim)
    # A compat export: its one (dense) rank is the exported one.
    if rank is not None and rank != manifest.rank:
        raise ValueError(f"rank {rank} asked for, but {path} is a compat export, dense at rank {manifest.rank}")
    point = resolve_point(encoder.shape(), rank=None, depth=depth, dim=dim)
    return Embedder(encoder, rank=manifest.rank, depth=point.depth, dim=point.dim)


def _factorize(encoder: Encoder, ranks: Sequence[int], path: Path) -> None:
    try:
        encoder.factorize_by_svd(ranks)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def load_checkpoint(path: str | os.PathLike) -> Encoder:
    """The trained Encoder of a Lightning checkpoint (plain ``Trainer.fit`` or LightningCLI), without Lightning.

    ``path`` is a checkpoint file or the directory of a sharded (FSDP) checkpoint, whose model shards are merged
    in memory. Checkpoints of the layout before the encoder split (state keys ``backbone.*``) load too.
    """
    return encoder_from_checkpoint(read_checkpoint(path), path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The entries of a Lightning checkpoint file, or of a sharded checkpoint directory with its shards merged."""
    path = Path(path)
    if path.is_dir() and not is_sharded_checkpoint(path):
        raise FileNotFoundError(f"checkpoint {path} is a directory but not a sharded Lightning checkpoint")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return consolidate(path) if path.is_dir() else torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch.load raises many kinds; all mean the file is unusable
        raise ValueError(f"checkpoint {path} could not be read as an mlembed EmbeddingModule: {err}") from err


def encoder_from_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> Encoder:
    """The trained Encoder that a checkpoint's entries (:func:`read_checkpoint`) hold; ``path`` names it in errors."""
    try:
        encoder = encoder_from_hparams(checkpoint["hyper_parameters"])
        encoder.load_state_dict(encoder_state_keys(checkpoint["state_dict"], prefix=""), strict=True)
    except Exception as err:  # the settings raise many kinds; all mean the file is unusable
        raise ValueError(f"checkpoint {path} could not be read as an mlembed EmbeddingModule: {err}") from err
    factors = encoder.factorized_embedding
    if factors is not None:
        if not bool(factors.initialized):
            raise ValueError(f"checkpoint {path} holds MEL factors that were never initialised")
        factors.source_weight = None  # the matrix built before restoring; the factors replace it
    return encoder.eval()


def encoder_from_hparams(hparams: dict[str, Any]) -> Encoder:
    """The (built, untrained) Encoder and trained grid that an EmbeddingModule's saved settings describe."""
    return EncoderSpec.from_hparams(hparams).build()


def load_export(directory: str | os.PathLike) -> tuple[Encoder, ExportManifest]:
    """Rebuild the Encoder of an ``mlembed export`` directory; returns it and the export's manifest."""
    directory = Path(directory)
    manifest = ExportManifest.read(directory)
    if manifest.mode == "compat":
        backbone = BackboneConfig(pretrained=str(directory), max_seq_length=manifest.max_seq_length)
        encoder = _export_encoder(backbone, manifest, max_rank=None)
    elif manifest.mode == "efficiency":
        encoder = _efficiency_encoder(directory, manifest)
    else:
        raise ValueError(f"{directory}: unknown export mode {manifest.mode!r} in its manifest")
    if manifest.eos_in_tokenizer:
        # The exported tokenizer appends the EOS itself; mlembed must not append a second one.
        encoder.text_tokenizer = TextTokenizer(str(directory), manifest.max_seq_length, append_eos=False)
    return encoder.eval(), manifest


def _export_encoder(backbone: BackboneConfig, manifest: ExportManifest, *, max_rank: int | None) -> Encoder:
    """A built Encoder for an export, reporting the export's trained points."""
    grid = manifest.grid
    mel = MEL(enabled=False) if max_rank is None else MEL(rank=max_rank, ranks=[r for r in grid.ranks if r] or None)
    spec = EncoderSpec(backbone, pooling_from({"class_path": manifest.pooling}), mel=mel,
                       instruction_template=manifest.instruction_template,
                       grid=PointGrid(ranks=grid.ranks if max_rank is not None else (None,), depths=grid.depths,
                                      dims=grid.dims))
    return spec.build()


def _efficiency_encoder(directory: Path, manifest: ExportManifest) -> Encoder:
    from safetensors.torch import load_file
    from transformers import AutoConfig

    weights = directory / FACTORIZED_WEIGHTS
    if not weights.is_file() and (directory / FACTORIZED_WEIGHTS_BEFORE).is_file():
        weights = directory / FACTORIZED_WEIGHTS_BEFORE  # an export written before the custom code
    if not weights.is_file():
        raise FileNotFoundError(f"{directory} is an efficiency export without its weights file {weights.name}")
    written = json.loads((directory / "config.json").read_text())
    # The base architecture's config: under the custom code's entry, or the whole file (exports before it).
    hf_config = AutoConfig.for_model(**written.get(REMOTE_BASE_KEY, written))
    options = hf_config.to_diff_dict()
    options["model_type"] = hf_config.model_type
    dtype = str(getattr(hf_config, "dtype", None) or "float32").removeprefix("torch.")
    backbone = BackboneConfig(config=options, tokenizer=str(directory), max_seq_length=manifest.max_seq_length,
                              dtype=dtype)
    encoder = _export_encoder(backbone, manifest, max_rank=manifest.rank)  # random weights, all replaced below
    model = encoder.backbone.model
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as err:
        raise ValueError(f"{weights} does not match the model described by {directory / 'config.json'}: {err}") from err
    encoder.factorized_embedding.source_weight = None
    return encoder
