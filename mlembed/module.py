"""EmbeddingModule: the LightningModule of 3D-ML. It runs steps and logs; the maths lives in the axes and losses."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from lightning.pytorch import LightningModule

from mlembed.axes.mel import MEL, FactorizedEmbedding
from mlembed.axes.mll import MLL
from mlembed.axes.mrl import MRL
from mlembed.backbone import Backbone, BackboneConfig, count_parameters
from mlembed.batch import uses_in_batch_negatives
from mlembed.encoder import MatryoshkaPoints
from mlembed.gradcache import CachedStep, GradCache
from mlembed.losses import ContrastiveLoss, gather_single_process
from mlembed.optim import OptimizerConfig
from mlembed.pooling import LastTokenPooling, MeanPooling, Pooling
from mlembed.teacher import FrozenTeacher, TeacherConfig
from mlembed.text import TextTokenizer

DEFAULT_TEMPLATE = "Instruct: {instruction}\nQuery: {query}"


class EmbeddingModule(LightningModule):
    """Trains a text-embedding backbone with any combination of the MEL, MLL and MRL axes.

    Args:
        backbone: which Hugging Face model (local path or config) and how texts are tokenized.
        pooling: how token states become one vector; default last token for decoders, mean for encoders.
        mel: nested-rank factorised token embedding (parameters axis).
        mll: layers that get a loss (depth axis).
        mrl: embedding prefixes that get a loss (width axis).
        loss: the base contrastive loss the axes wrap.
        optimizer: AdamW and its cosine schedule.
        instruction_template: how an instruction is put before a query (``{instruction}``, ``{query}``).
        on_nonfinite: a NaN/inf training loss either stops the run with a message naming the step and batch
            (``raise``), or skips that step's update and counts it in ``train/nonfinite_skipped`` (``skip``;
            single-device only: under DDP a skip on one rank would leave the others waiting).
        grad_cache: gradient caching (embed in chunks, loss on the whole batch): large in-batch negative counts
            on small memory. It switches the module to manual optimization (see mlembed.gradcache).
        teacher: the frozen model that ``--model.loss.kd_teacher=model`` distils from (default: the starting
            model itself; see mlembed.teacher).
    """

    def __init__(
        self,
        backbone: BackboneConfig,
        pooling: Pooling | None = None,
        mel: MEL = MEL(),  # noqa: B008 - dataclass settings are immutable in use
        mll: MLL = MLL(),  # noqa: B008
        mrl: MRL = MRL(),  # noqa: B008
        loss: ContrastiveLoss = ContrastiveLoss(),  # noqa: B008
        optimizer: OptimizerConfig = OptimizerConfig(),  # noqa: B008
        instruction_template: str = DEFAULT_TEMPLATE,
        on_nonfinite: Literal["raise", "skip"] = "raise",
        grad_cache: GradCache | None = None,
        teacher: TeacherConfig | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone_config, self.mel, self.mll, self.mrl = backbone, mel, mll, mrl
        self.loss_fn, self.optimizer_config = loss, optimizer
        self.instruction_template = instruction_template
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"--model.on_nonfinite ({on_nonfinite!r}) must be raise or skip")
        self.on_nonfinite = on_nonfinite
        self.nonfinite_skipped = 0
        self.grad_cache = grad_cache
        self.teacher_config = teacher
        if teacher is not None and loss.kd_teacher != "model":
            raise ValueError("--model.teacher is set but --model.loss.kd_teacher is not 'model': set both, or neither")
        if grad_cache is not None:
            self.automatic_optimization = False  # the cached backward runs chunk by chunk inside training_step
        self.backbone = Backbone(backbone)
        self.pooling = pooling if pooling is not None else default_pooling(backbone)
        self.text_tokenizer = TextTokenizer(
            backbone.tokenizer_path, backbone.max_seq_length, append_eos=self.pooling.needs_eos
        )
        # Resolved against the backbone in configure_model().
        self.layers: tuple[int, ...] = ()
        self.dims: tuple[int, ...] = ()
        self.dim_weights: tuple[float, ...] = ()
        self.ranks: tuple[int, ...] = ()
        self.active_layers: tuple[int, ...] = ()

    # -- construction -------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Build the backbone and resolve the axes against it (idempotent)."""
        if self.backbone.model is not None:
            return
        self.backbone.build()
        # from_pretrained returns a model in eval mode and Lightning keeps each module's mode: follow ours, so
        # fine-tuning has the dropout its config asks for (random-init tiny test configs set it to 0).
        self.backbone.train(self.training)
        self._check_vocabulary()
        hidden, depth = self.backbone.hidden_size, self.backbone.depth
        self.layers = self.mll.resolve(depth)
        self.active_layers = self.layers
        self.dims, self.dim_weights = self.mrl.resolve(hidden)
        if self.mel.enabled:
            self.mel.validate(hidden, self.backbone.vocab_size)
            self.ranks = self.mel.resolve_ranks()
            self._install_factorized_embedding()
        if self.loss_fn.kd_teacher == "model" and self.loss_fn.distills:
            # Set past nn.Module's registration: the frozen teacher is in no optimizer, checkpoint or FSDP unit.
            object.__setattr__(self, "frozen_teacher", self._build_teacher())

    def _build_teacher(self) -> FrozenTeacher:
        config = (self.teacher_config or TeacherConfig()).backbone
        pooling = copy.deepcopy(self.pooling) if config is None else default_pooling(config)
        return FrozenTeacher(config or self.backbone_config, pooling, self.text_tokenizer).build()

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

    def _install_factorized_embedding(self) -> None:
        original = self.backbone.model.get_input_embeddings()
        factors = FactorizedEmbedding(
            original.num_embeddings, original.embedding_dim, self.mel.rank, dtype=original.weight.dtype
        )
        factors.source_weight = original.weight.detach()
        self.backbone.model.set_input_embeddings(factors)

    @property
    def factorized_embedding(self) -> FactorizedEmbedding | None:
        """The MEL factors, or None when MEL is off."""
        emb = self.backbone.model.get_input_embeddings() if self.backbone.model is not None else None
        return emb if isinstance(emb, FactorizedEmbedding) else None

    def init_mel_from_svd(self) -> None:
        """Factorise the original embedding matrix (the SVDInit callback calls this before training)."""
        self.configure_model()
        factors = self.factorized_embedding
        if factors is None:
            raise RuntimeError("MEL is off (--model.mel.enabled=False): there is no embedding to factorise")
        if factors.source_weight is None:
            if bool(factors.initialized):
                return
            raise RuntimeError("the original embedding matrix is gone; load the factors from a checkpoint")
        factors.init_from(factors.source_weight)

    # -- axis state (set by callbacks) --------------------------------------------------------------
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
        """``pooled``: what a wrapper of this module (the FSDP root) runs when it is called."""
        return self.pooled(inputs, layers)

    def pooled(self, inputs: dict[str, torch.Tensor], layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Pooled, un-normalised embeddings [B, H] of ``inputs`` at each layer in ``layers``."""
        mask = inputs["attention_mask"]
        states = self.backbone(inputs["input_ids"], mask, layers)
        return {layer: self.pooling(h, mask) for layer, h in states.items()}

    def model_step(self, batch: dict, layers: Sequence[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one batch over ``layers`` x MRL dims, and the terms to log (shared by train and val)."""
        queries = self.pooled(batch["query"], layers)  # layer -> [B, H]
        docs = self.pooled(_stack_inputs(batch["positive"], batch.get("negatives")), layers)  # [B + B*N, H]
        return self.loss_on_embeddings(batch, queries, docs, layers)

    def loss_on_embeddings(
        self, batch: dict, queries: dict[int, torch.Tensor], docs: dict[int, torch.Tensor], layers: Sequence[int]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """model_step's loss from precomputed embeddings (layer -> queries [B, H], docs [B + B*N, H]).

        Shared by model_step and gradient caching, which computes the embeddings without a graph first.
        """
        size, negatives = queries[layers[0]].shape[0], int(batch.get("num_negatives", 0) or 0)
        embeddings = {
            layer: (queries[layer], docs[layer][:size], _split_negatives(docs[layer][size:], size, negatives))
            for layer in layers
        }
        context = {
            "query_hash": batch["query_hash"],
            "positive_hash": batch["positive_hash"],
            "use_in_batch": uses_in_batch_negatives(batch["task"]),
            "gather": self.gather,
            "rank": self.global_rank,
            "teacher": self._teacher(batch, embeddings[max(layers)]),
        }
        terms: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

        def per_layer(query, positive, negs, *, layer: int) -> torch.Tensor:
            total, per_dim = self.mrl(
                query, positive, negs, dims=self.dims, weights=self.dim_weights, base=self.loss_fn, **context
            )
            terms.update({(layer, dim): t for dim, t in per_dim.items()})
            return total

        loss, layer_losses = self.mll(embeddings, per_layer)
        return loss, _log_terms(loss, layer_losses, terms)

    def _teacher(self, batch: dict, last: tuple) -> tuple[torch.Tensor, ...] | None:
        if not self.loss_fn.distills:
            return None
        if self.loss_fn.kd_teacher == "model":
            return self.frozen_teacher.embed(batch["query"]), self.frozen_teacher.embed(batch["positive"])
        if self.loss_fn.kd_teacher == "batch":
            if "teacher_query" not in batch:
                raise KeyError("--model.loss.kd_teacher=batch but the batch has no 'teacher_query' vectors")
            return (batch["teacher_query"],)
        return tuple(torch.nn.functional.normalize(x.detach(), dim=-1) for x in last[:2])

    def gather(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        """All devices' rows of ``x`` [B, ...] -> [W*B, ...], with the gradient ``mode`` asks for."""
        if self._trainer is None or self.trainer.world_size == 1:
            return gather_single_process(x, mode)
        if mode == "all":
            gathered = self.all_gather(x, sync_grads=True)
        else:
            gathered = self.all_gather(x.detach())
        gathered = gathered.reshape(-1, *x.shape[1:])  # [W, B, ...] -> [W*B, ...]
        if mode == "local":
            parts = list(gathered.split(x.shape[0]))
            parts[self.global_rank] = x
            gathered = torch.cat(parts)
        return gathered

    # -- Lightning hooks ------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        layers = self.active_layers or self.layers
        cached = self.cached_step(batch, layers, self.grad_cache.chunk_size) if self.grad_cache else None
        loss, logs = cached.loss() if cached is not None else self.model_step(batch, layers)
        if not torch.isfinite(loss):
            return self._nonfinite(loss, batch)
        if cached is not None:
            self._cached_update(cached)
        extra = {"mel_rank": float(self.mel_rank or 0), "stage": float(batch.get("stage", 1)),
                 "num_layers": float(len(self.active_layers or self.layers))}
        self.log_dict({f"train/{k}": v for k, v in {**logs, **extra}.items()}, batch_size=_batch_size(batch))
        self.log("train/loss", loss, prog_bar=True, batch_size=_batch_size(batch))
        return loss

    # -- gradient caching (manual optimization) ------------------------------------------------------
    def cached_step(self, batch: dict, layers: Sequence[int], chunk_size: int) -> CachedStep:
        """model_step with gradient caching: call ``.loss()``, then ``.backward(self.manual_backward)``."""
        return CachedStep(
            embed=self._chunk_embedder(layers),
            inputs=(batch["query"], _stack_inputs(batch["positive"], batch.get("negatives"))),
            objective=lambda queries, docs: self.loss_on_embeddings(batch, queries, docs, layers),
            chunk_size=chunk_size,
        )

    def _chunk_embedder(self, layers: Sequence[int]):
        """How gradient caching embeds one chunk: ``inputs -> {layer: [rows, H]}``."""
        sharded = self._sharded_root()
        if sharded is None:
            return lambda inputs: self.pooled(inputs, layers)
        # Under FSDP every chunk goes through the root unit's forward (our ``forward``): the backward of one chunk
        # reshards the root-level parameters (embeddings, MEL factors, final norm), and only the root's forward
        # gathers them again. Each chunk is then an ordinary FSDP forward/backward pair, as in accumulation.
        return lambda inputs: sharded(inputs, layers)

    def _cached_update(self, cached: CachedStep) -> None:
        """The cached backward, then what automatic optimization would do: clip, step, schedule."""
        strategy = self.trainer.strategy
        optimizer = self.optimizers()
        optimizer.zero_grad()
        # FSDP reduce-scatters each chunk's gradient into the shards (its no_sync needs an idle root, and would
        # keep whole unsharded gradients); DDP all-reduces once, after the last chunk.
        no_sync = contextlib.nullcontext if self._sharded_root() is not None else getattr(
            strategy, "block_backward_sync", contextlib.nullcontext)
        cached.backward(self.manual_backward, no_sync)
        self.configure_gradient_clipping(optimizer, self.grad_cache.gradient_clip_val, "norm")
        optimizer.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def _sharded_root(self) -> torch.nn.Module | None:
        """The FSDP unit wrapping this module during fit, or None (one device, DDP, or no trainer)."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = self._trainer.model if self._trainer is not None else None
        return model if isinstance(model, FullyShardedDataParallel) else None

    def _nonfinite(self, loss: torch.Tensor, batch: dict) -> None:
        where = (f"step {self.global_step}, source {batch.get('source')!r}, ids {list(batch.get('ids', []))[:4]}, "
                 f"MEL rank {self.mel_rank}, layers {self.active_layers}")
        if self.on_nonfinite == "raise":
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at {where}; no update was applied and no checkpoint "
                "written for it. Lower the lr, check the data, or set --model.on_nonfinite=skip"
            )
        self.nonfinite_skipped += 1
        self.log("train/nonfinite_skipped", float(self.nonfinite_skipped), batch_size=_batch_size(batch))
        return None  # Lightning skips backward and the optimizer step for this batch

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        with self.at_rank(None):
            loss, _ = self.model_step(batch, self.layers)
        size = _batch_size(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=size, sync_dist=True, add_dataloader_idx=False)
        if "source" in batch:
            self.log(f"val/loss/{batch['source']}", loss, batch_size=size, add_dataloader_idx=False)
        return loss

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        with self.at_rank(None):
            loss, _ = self.model_step(batch, self.layers)
        self.log("test/loss", loss, batch_size=_batch_size(batch), sync_dist=True, add_dataloader_idx=False)
        return loss

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        with self.at_rank(None):
            return self.pooled(batch["query"], [self.backbone.depth])[self.backbone.depth]

    def configure_optimizers(self) -> dict:
        # trainer.model, not self: under FSDP only the wrapped module's (flat) parameters are real.
        return self.optimizer_config.build(self.trainer.model.parameters(), int(self.trainer.estimated_stepping_batches))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # FSDP precision plugins reject Lightning's clipping; FSDP itself clips across shards.
        if gradient_clip_val is None:
            return
        model = self.trainer.model
        if hasattr(model, "clip_grad_norm_"):
            model.clip_grad_norm_(gradient_clip_val)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # -- encoding (the mlembed.encoder.Encoder protocol) ---------------------------------------------
    def points(self) -> MatryoshkaPoints:
        """The ranks, depths and dims this model was trained for."""
        self.configure_model()
        return MatryoshkaPoints(
            ranks=self.ranks if self.factorized_embedding is not None else (None,),
            depths=self.layers,
            dims=tuple(sorted(self.dims)),
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
        """Pooled embeddings [N, hidden] (not normalised) at (rank, depth); see mlembed.encoder.Encoder."""
        self.configure_model()
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
    ) -> dict[int, torch.Tensor]:
        """``{depth: pooled embeddings [N, hidden]}`` of several depths from one forward pass.

        Each entry equals ``embed(texts, rank=rank, depth=depth)``: the depth-l model is the first l layers
        (plus the final norm), so the grid encodes a text once per rank instead of once per (rank, depth).
        """
        self.configure_model()
        depths = sorted(set(depths))
        if instruction:
            texts = [self.instruction_template.format(instruction=instruction, query=t) for t in texts]
        # Longest first, so each chunk pads little; the order is restored at the end.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = {d: torch.empty(len(texts), self.backbone.hidden_size) for d in depths}
        was_training = self.training
        self.eval()
        try:
            with self.at_rank(rank), torch.no_grad():
                for start in range(0, len(order), batch_size):
                    idx = order[start : start + batch_size]
                    inputs = self.text_tokenizer([texts[i] for i in idx])
                    inputs = {k: v.to(self.device) for k, v in inputs.items()}
                    for d, pooled in self.pooled(inputs, depths).items():
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
        from mlembed.encoder import truncate_normalize

        vectors = self.embed(texts, rank=rank, depth=depth, instruction=instruction, batch_size=batch_size)
        return truncate_normalize(vectors, dim)

    def num_parameters(self, *, rank: int | None = None, depth: int | None = None) -> int:
        """Parameters of the deployable model at (rank, depth): factors at rank k, layers 1..depth."""
        self.configure_model()
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


def default_pooling(config: BackboneConfig) -> Pooling:
    """Last-token pooling for decoders, mean pooling for masked-LM encoders (read from the config only)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if config.pretrained is not None:
        model_type = AutoConfig.from_pretrained(config.pretrained, **config.from_pretrained_kwargs()).model_type
    else:
        model_type = config.config["model_type"]
    return MeanPooling() if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else LastTokenPooling()


def _stack_inputs(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Rows of ``first`` then ``second`` in one padded batch, so positives and negatives share a forward."""
    if second is None:
        return first
    width = max(first["input_ids"].shape[1], second["input_ids"].shape[1])
    out = {}
    for key in ("input_ids", "attention_mask"):
        a, b = first[key], second[key]
        a = torch.nn.functional.pad(a, (0, width - a.shape[1]))
        b = torch.nn.functional.pad(b, (0, width - b.shape[1]))
        out[key] = torch.cat([a, b])  # [B + B*N, T]
    return out


def _split_negatives(rows: torch.Tensor, batch: int, per_query: int) -> torch.Tensor | None:
    """[B*N, H] -> [B, N, H] (row i's negatives are rows i*N .. i*N+N-1), or None without negatives."""
    if per_query == 0 or rows.shape[0] == 0:
        return None
    return rows.reshape(batch, per_query, rows.shape[-1])


def _batch_size(batch: dict) -> int:
    return int(batch["query"]["input_ids"].shape[0])


def _log_terms(
    loss: torch.Tensor,
    layer_losses: dict[int, torch.Tensor],
    terms: dict[tuple[int, int], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Detached values to log: each layer's loss, each dim's (unweighted, averaged over layers), each term."""
    logs = {f"loss/mll@{layer}": value.detach() for layer, value in layer_losses.items()}
    dims = sorted({dim for _, dim in terms})
    layers = sorted({layer for layer, _ in terms})
    for dim in dims:
        values = [sum(terms[(layer, dim)].values()) for layer in layers]
        logs[f"loss/mrl@{dim}"] = torch.stack(values).mean().detach()
    names = sorted({name for t in terms.values() for name in t})
    for name in names:
        values = [t[name] for t in terms.values() if name in t]
        logs[f"loss/{name}"] = torch.stack(values).mean().detach()
    return logs
