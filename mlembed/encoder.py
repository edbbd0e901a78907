"""Encoder: the network that turns texts into vectors at any (rank, depth, dim) point it was trained for.

It is a plain ``nn.Module`` (backbone, pooling, MEL factors, tokenizer, the grid of points it serves) with the
inference API (``embed``, ``encode``, ``num_parameters``). Training injects it into ``EmbeddingModule``, which
adds the objective and the Lightning hooks; ``mlembed.load`` and ``mlembed export`` build and use it alone, so
inference and export never import Lightning.

``PointEncoder`` is the protocol evaluation code depends on: an Encoder implements it, and so does
``mlembed.load(...)``'s result, so the evaluation serves checkpoints, exported directories and test doubles.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from mlembed.artifact import ModelShape, PointGrid
from mlembed.axes.mel import FactorizedEmbedding, check_rank
from mlembed.backbone import Backbone, BackboneConfig, count_parameters
from mlembed.pooling import LastTokenPooling, MeanPooling, Pooling
from mlembed.text import DEFAULT_TEMPLATE, TextTokenizer

#: The encoder's state-dict prefix inside ``EmbeddingModule``; checkpoints written before the encoder split
#: kept the backbone at the top of the state dict instead.
ENCODER_PREFIX = "encoder."


class Encoder(nn.Module):
    """Backbone + pooling (+ MEL factors) + tokenizer: texts in, pooled vectors out, at any trained point.

    Args:
        backbone: which Hugging Face model (hub id, local path or config) and how texts are tokenized.
        pooling: how token states become one vector; default last token for decoders, mean for encoders.
        max_rank: rank of the MEL factors that replace the token embedding (None: the ordinary matrix).
        instruction_template: how an instruction is put before a query (``{instruction}``, ``{query}``); the
            same constant the training data uses by default.
        grid: the points the model serves: a ``PointGrid``, or what resolves one against the backbone once it is
            built (``resolve(depth, hidden_size)``: an ``mlembed.spec.EncoderSpec``); None: its full point only.
    """

    def __init__(
        self,
        backbone: BackboneConfig,
        pooling: Pooling | None = None,
        *,
        max_rank: int | None = None,
        instruction_template: str = DEFAULT_TEMPLATE,
        grid: PointGrid | GridSource | None = None,
    ) -> None:
        super().__init__()
        self.backbone_config = backbone
        self.backbone = Backbone(backbone)
        self.pooling = pooling if pooling is not None else default_pooling(backbone)
        self.text_tokenizer = TextTokenizer(
            backbone.tokenizer_path, backbone.max_seq_length, append_eos=self.pooling.needs_eos
        )
        self.max_rank = max_rank
        self.instruction_template = instruction_template
        self.grid: PointGrid | None = grid if isinstance(grid, PointGrid) else None
        """The points this model serves (resolved when the backbone is built); None: its full point only."""
        self._grid_source = None if isinstance(grid, PointGrid) else grid

    # -- construction -------------------------------------------------------------------------------
    def build(self) -> Encoder:
        """Load or create the backbone, resolve the grid against it and install the MEL factors (idempotent)."""
        backbone = self.build_backbone()
        if self.grid is None and self._grid_source is not None:
            self.grid = self._grid_source.resolve(backbone.depth, backbone.hidden_size)
        if self.max_rank is not None and self.factorized_embedding is None:
            self._install_factors()
        return self

    def _install_factors(self) -> FactorizedEmbedding:
        """Put MEL factors of rank ``max_rank`` in place of the ordinary token embedding (not yet initialised)."""
        check_rank(self.max_rank, self.backbone.hidden_size, self.backbone.vocab_size)
        original = self.backbone.model.get_input_embeddings()
        factors = FactorizedEmbedding(
            original.num_embeddings, original.embedding_dim, self.max_rank, dtype=original.weight.dtype
        )
        factors.to(original.weight.device)
        factors.source_weight = original.weight.detach()
        self.backbone.model.set_input_embeddings(factors)
        return factors

    def factorize_by_svd(self, ranks: Sequence[int]) -> Encoder:
        """Score a model trained without MEL at ``ranks``: its token embedding becomes the SVD factors of its values.

        Rank k is then the direct SVD truncation of the trained matrix, the baseline that MEL is measured against
        (the same training without the rank axis, truncated). The factors have the full rank (hidden size, at
        most the vocabulary), so the full rank reproduces the model (to float32 rounding: the SVD runs in float64,
        A and B are stored in the model's dtype, so a bf16 model's full rank is close, not equal); ``ranks`` (and the
        full rank) become the grid's ranks. Parameters are counted as factors at every rank, the full one included
        (vocab x hidden + hidden x hidden).

        Raises:
            ValueError: the model already has MEL factors (its ranks were trained), or a rank is out of range.
        """
        self.build()
        if self.factorized_embedding is not None:
            raise ValueError("--svd-ranks: the model was trained with MEL, so its ranks are trained ones, not an SVD "
                             "truncation (score them with --ranks, or --rank under --mteb)")
        full = min(self.backbone.hidden_size, self.backbone.vocab_size)
        for rank in ranks:
            if not 1 <= rank <= full:
                raise ValueError(f"--svd-ranks {rank}: outside [1, {full}] (the embedding matrix's full rank)")
        self.max_rank = full
        factors = self._install_factors()
        factors.init_from(factors.source_weight)
        points = self.points()
        self.grid = PointGrid(ranks=tuple(sorted({*ranks, full})), depths=points.depths, dims=points.dims)
        return self

    @torch.no_grad()
    def start_from(self, previous: Encoder) -> None:
        """Take the trained weights of ``previous`` (an earlier stage's encoder) as this encoder's starting point.

        Every weight but the token embedding is copied as it is (the backbones must have the same shape). The
        token embedding follows the axes of each side: factors to factors of the same rank are copied; a dense
        trained matrix into a model with MEL becomes the matrix its SVD factors are taken from (``SVDInit``
        factorises the embedding as trained so far, not the starting model's); factors into a model without MEL
        become the dense matrix A @ B.
        """
        self.build()
        previous.build()
        mine, theirs = self.factorized_embedding, previous.factorized_embedding
        skip = _embedding_keys(previous)
        state = {k: v for k, v in previous.backbone.state_dict().items() if k not in skip}
        expected = set(self.backbone.state_dict()) - _embedding_keys(self)
        if set(state) != expected:
            raise ValueError(f"--model.init_from: its backbone is another architecture ({len(set(state) ^ expected)} "
                             "weights differ by name)")
        try:
            self.backbone.load_state_dict(state, strict=False)
        except RuntimeError as err:  # a shape mismatch
            raise ValueError(f"--model.init_from: its backbone has other sizes: {str(err).splitlines()[-1]}") from None
        if mine is not None and theirs is not None:
            if mine.max_rank != theirs.max_rank:
                raise ValueError(f"--model.init_from: its MEL factors have rank {theirs.max_rank}, this model's "
                                 f"--model.mel.rank is {mine.max_rank}")
            mine.load_state_dict(theirs.state_dict())
            mine.source_weight = None
        elif mine is not None:
            mine.source_weight = previous.backbone.model.get_input_embeddings().weight.detach().clone()
            mine.initialized.fill_(False)
        else:
            dense = theirs.materialize() if theirs is not None else \
                previous.backbone.model.get_input_embeddings().weight
            self.backbone.model.get_input_embeddings().weight.copy_(dense)

    def build_backbone(self) -> Backbone:
        """Load or create the Hugging Face model alone, with its ordinary token embedding (idempotent)."""
        if self.backbone.model is None:
            self.backbone.build()
            # from_pretrained returns a model in eval mode and modules keep their own mode: follow ours, so
            # fine-tuning has the dropout its config asks for (random-init tiny test configs set it to 0).
            self.backbone.train(self.training)
            self._check_vocabulary()
        return self.backbone

    def _check_vocabulary(self) -> None:
        """Refuse a tokenizer whose ids run past the token-embedding matrix.

        Without this, the first batch holding such an id fails deep inside the embedding lookup ("index out of
        range in self") or, on GPU, with a device-side assert. A tokenizer smaller than the matrix is fine:
        models such as Qwen pad their vocabulary to a round number of rows.
        """
        tokens = len(self.text_tokenizer.tokenizer)
        rows = self.backbone.model.get_input_embeddings().num_embeddings
        if tokens > rows:
            raise ValueError(
                f"--model.backbone.tokenizer {self.text_tokenizer.path!r} has a vocabulary of {tokens} tokens, "
                f"but the backbone's token embedding has only {rows} rows: use the backbone's own tokenizer, or "
                f"a model with at least {tokens} rows (--model.backbone.config.vocab_size, or "
                "--model.backbone.pretrained)"
            )

    def init_factors_from_svd(self) -> None:
        """Set the MEL factors from the SVD of the loaded embedding matrix (once; a no-op when already set)."""
        self.build()
        factors = self.factorized_embedding
        if factors is None:
            raise RuntimeError("MEL is off (--model.mel.enabled=False): there is no embedding to factorise")
        if factors.source_weight is None:
            if bool(factors.initialized):
                return
            raise RuntimeError("the original embedding matrix is gone; load the factors from a checkpoint")
        factors.init_from(factors.source_weight)

    # -- facts --------------------------------------------------------------------------------------
    @property
    def factorized_embedding(self) -> FactorizedEmbedding | None:
        """The MEL factors, or None when the token embedding is an ordinary matrix."""
        emb = self.backbone.model.get_input_embeddings() if self.backbone.model is not None else None
        return emb if isinstance(emb, FactorizedEmbedding) else None

    def shape(self) -> ModelShape:
        """The limits of this model's axes (what an exported point is checked against)."""
        self.build()
        factors = self.factorized_embedding
        return ModelShape(max_rank=None if factors is None else factors.max_rank, depth=self.backbone.depth,
                          hidden_size=self.backbone.hidden_size, pooling=type(self.pooling).__name__)

    def points(self) -> PointGrid:
        """The ranks, depths and dims this model was trained for (its full point when none were recorded)."""
        if self.grid is not None:
            return self.grid
        shape = self.shape()
        return PointGrid(ranks=(shape.max_rank,), depths=(shape.depth,), dims=(shape.hidden_size,))

    @property
    def device(self) -> torch.device:
        """Where the weights live (read from the buffers too: under FSDP the parameters are flat shards held by
        the wrapper outside its forward)."""
        for tensor in (*self.parameters(), *self.buffers()):
            return tensor.device
        return torch.device("cpu")

    # -- MEL rank -----------------------------------------------------------------------------------
    @property
    def mel_rank(self) -> int | None:
        """The rank the token embedding uses now (None when MEL is off)."""
        factors = self.factorized_embedding
        return None if factors is None else factors.active_rank

    @mel_rank.setter
    def mel_rank(self, rank: int | None) -> None:
        factors = self.factorized_embedding
        if factors is None:
            if rank is not None:
                raise ValueError(f"rank {rank} asked for, but MEL is off (--model.mel.enabled=False)")
            return
        rank = factors.max_rank if rank is None else int(rank)
        if not 1 <= rank <= factors.max_rank:
            raise ValueError(f"rank {rank} is outside [1, --model.mel.rank={factors.max_rank}]")
        factors.active_rank = rank

    @contextlib.contextmanager
    def at_rank(self, rank: int | None) -> Iterator[None]:
        """Temporarily embed tokens at ``rank`` (None: full rank)."""
        before = self.mel_rank
        self.mel_rank = rank
        try:
            yield
        finally:
            if before is not None:
                self.mel_rank = before

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, inputs: dict[str, torch.Tensor], layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Pooled, un-normalised embeddings [B, H] of ``inputs`` at each layer in ``layers``."""
        mask = inputs["attention_mask"]
        states = self.backbone(inputs["input_ids"], mask, layers)
        return {layer: self.pooling(h, mask) for layer, h in states.items()}

    # -- inference ----------------------------------------------------------------------------------
    def embed(
        self,
        texts: Sequence[str],
        *,
        rank: int | None = None,
        depth: int | None = None,
        instruction: str | None = None,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """Pooled embeddings [N, hidden] (not normalised) at (rank, depth); see :class:`PointEncoder`."""
        self.build()
        depth = self.backbone.depth if depth is None else depth
        return self.embed_layers(texts, rank=rank, depths=[depth], instruction=instruction, batch_size=batch_size)[depth]

    def embed_layers(
        self,
        texts: Sequence[str],
        *,
        rank: int | None = None,
        depths: Sequence[int],
        instruction: str | None = None,
        batch_size: int = 64,
        forward: Callable[[dict[str, torch.Tensor], Sequence[int]], dict[int, torch.Tensor]] | None = None,
    ) -> dict[int, torch.Tensor]:
        """``{depth: pooled embeddings [N, hidden]}`` of several depths from one forward pass.

        Each entry equals ``embed(texts, rank=rank, depth=depth)``: the depth-l model is the first l layers
        (plus the final norm), so the grid encodes a text once per rank instead of once per (rank, depth).
        ``forward`` runs each chunk instead of this module (under FSDP: the sharded root, whose forward gathers
        the weights; every process must then make the same number of calls).
        """
        self.build()
        depths = sorted(set(depths))
        if instruction:
            texts = [self.instruction_template.format(instruction=instruction, query=t) for t in texts]
        # Longest first, so each chunk pads little; the order is restored at the end.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = {d: torch.empty(len(texts), self.backbone.hidden_size) for d in depths}
        device = self.device
        was_training = self.training
        self.eval()
        try:
            with self.at_rank(rank), torch.no_grad():
                for start in range(0, len(order), batch_size):
                    idx = order[start : start + batch_size]
                    inputs = self.text_tokenizer([texts[i] for i in idx])
                    inputs = {k: v.to(device) for k, v in inputs.items()}
                    for d, pooled in (forward or self)(inputs, depths).items():
                        out[d][idx] = pooled.float().cpu()
        finally:
            self.train(was_training)
        return out

    def encode(
        self,
        texts: Sequence[str],
        *,
        rank: int | None = None,
        depth: int | None = None,
        dim: int | None = None,
        instruction: str | None = None,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """L2-normalised embeddings [N, dim] at (rank, depth, dim)."""
        vectors = self.embed(texts, rank=rank, depth=depth, instruction=instruction, batch_size=batch_size)
        return truncate_normalize(vectors, dim)

    def num_parameters(self, *, rank: int | None = None, depth: int | None = None) -> int:
        """Parameters of the deployable model at (rank, depth): factors at rank k, layers 1..depth."""
        self.build()
        model, layers = self.backbone.model, self.backbone.layer_list()
        total = count_parameters(model)
        factors = self.factorized_embedding
        if factors is not None:
            k = factors.max_rank if rank is None else rank
            total += (k - factors.max_rank) * (factors.A.shape[0] + factors.B.shape[1])
        elif rank is not None:
            raise ValueError(f"rank {rank} asked for, but MEL is off")
        if depth is not None:
            total -= sum(count_parameters(layer) for layer in list(layers)[depth:])
        return total



def _embedding_keys(encoder: Encoder) -> set[str]:
    """The backbone state keys of the token embedding (dense matrix or MEL factors)."""
    embedding = encoder.backbone.model.get_input_embeddings()
    prefix = next(name for name, module in encoder.backbone.named_modules() if module is embedding) + "."
    return {key for key in encoder.backbone.state_dict() if key.startswith(prefix)}


def encoder_state_keys(state: dict[str, torch.Tensor], *, prefix: str) -> dict[str, torch.Tensor]:
    """``state`` with every encoder key under ``prefix`` (``""``: the encoder's own keys, for ``Encoder``).

    Accepts both layouts: this module's (``encoder.backbone...``) and that of checkpoints written before the
    encoder split (``backbone.model...`` at the top).
    """
    # Every entry of EmbeddingModule's state is the encoder's (the teacher is outside the module tree).
    return {prefix + key.removeprefix(ENCODER_PREFIX): value for key, value in state.items()}


def default_pooling(config: BackboneConfig) -> Pooling:
    """Last-token pooling for decoders, mean pooling for masked-LM encoders (read from the config only)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if config.pretrained is not None:
        model_type = AutoConfig.from_pretrained(config.pretrained, **config.from_pretrained_kwargs()).model_type
    else:
        model_type = config.config["model_type"]
    return MeanPooling() if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else LastTokenPooling()


class GridSource(Protocol):
    """What gives an encoder its grid once the backbone's size is known (``mlembed.spec.EncoderSpec``)."""

    def resolve(self, depth: int, hidden_size: int) -> PointGrid:
        """The points served by a backbone of ``depth`` layers and width ``hidden_size``."""


@runtime_checkable
class PointEncoder(Protocol):
    """What evaluation needs of a model: texts embedded at any point of its 3D Matryoshka grid."""

    def points(self) -> PointGrid:
        """The ranks, depths and dims the model was trained for (the evaluation grid's axes)."""
        ...

    def embed(
        self,
        texts: Sequence[str],
        *,
        rank: int | None = None,
        depth: int | None = None,
        instruction: str | None = None,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """Pooled embeddings [N, hidden] at full width, NOT normalised, float32 on CPU.

        ``rank=None`` means full rank, ``depth=None`` the full depth. Callers cut a dim prefix and L2-normalise
        it themselves, so one call serves every dim.
        """
        ...

    def num_parameters(self, *, rank: int | None = None, depth: int | None = None) -> int:
        """Parameters of the deployable model at (rank, depth) (factors at rank k, first ``depth`` layers)."""
        ...


def truncate_normalize(embeddings: torch.Tensor, dim: int | None) -> torch.Tensor:
    """Cut the first ``dim`` features (MRL prefix) and L2-normalise: [N, H] -> [N, dim]."""
    cut = embeddings if dim is None else embeddings[:, :dim]
    return torch.nn.functional.normalize(cut.float(), dim=-1)
