"""EmbeddingModule: the LightningModule of 3D-ML. It runs steps and logs; the maths lives in the axes and losses.

The network itself is an :class:`mlembed.encoder.Encoder` (``self.encoder``): this module resolves the axes
against it, adds the objective, the optimizer and the hooks, and the callbacks an enabled axis needs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import torch
from lightning.pytorch import Callback, LightningModule

from mlembed.axes.mel import MEL
from mlembed.axes.mll import MLL, MLLLoss
from mlembed.axes.mrl import MRL, MRLLoss
from mlembed.backbone import BackboneConfig
from mlembed.batch import uses_in_batch_negatives
from mlembed.encoder import ENCODER_PREFIX, default_pooling, encoder_state_keys
from mlembed.gradcache import CachedStep, GradCache, apply_cached_update, chunk_embedder
from mlembed.loading import load_checkpoint
from mlembed.losses import ContrastiveLoss, gather_rows
from mlembed.optim import OptimizerConfig
from mlembed.pooling import Pooling
from mlembed.spec import EncoderSpec
from mlembed.teacher import TeacherConfig, feature_distillation, paired_layers, teacher_of, teacher_vectors
from mlembed.text import DEFAULT_TEMPLATE


class EmbeddingModule(LightningModule):
    """Trains a text-embedding encoder with any combination of the MEL, MLL and MRL axes.

    The settings build the :class:`~mlembed.encoder.Encoder` (``backbone``, ``pooling``, ``mel.rank``,
    ``instruction_template``) and the objective around it; keeping them flat keeps every flag
    (``--model.backbone.*``, ``--model.mel.*``) and every saved checkpoint of earlier versions valid.

    Args:
        backbone: which Hugging Face model (hub id, local path or config) and how texts are tokenized.
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
        init_from: a checkpoint of an earlier stage (file or sharded directory) whose weights start this fit: the
            next stage of a chained schedule, with its own axes, distillation, data and a fresh learning-rate
            schedule (warmup and cosine restart; the optimizer state starts anew). Where MEL turns on here but was
            off there, the factors come from the SVD of the embedding as trained so far (see
            ``Encoder.start_from``). Not a resume: ``--ckpt_path`` continues a stage where it stopped.
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
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        with warnings.catch_warnings():
            # Lightning advises against nn.Modules in hyperparameters because their weights are saved twice; the
            # pooling strategies hold no weights: their class and settings are what load_from_checkpoint rebuilds.
            warnings.filterwarnings("ignore", message="Attribute 'pooling' is an instance of `nn.Module`")
            self.save_hyperparameters()
        self.mel, self.mll, self.mrl = mel, mll, mrl
        self.loss_fn, self.optimizer_config = loss, optimizer
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"--model.on_nonfinite ({on_nonfinite!r}) must be raise or skip")
        self.on_nonfinite = on_nonfinite
        self.nonfinite_skipped = 0
        self.damaged_shards: set[str] = set()
        """Shards the loader skipped as damaged (``--data.skip_damaged``), logged as ``train/damaged_shards``."""
        self.grad_cache = grad_cache
        self.teacher_config = teacher
        self.init_from = init_from
        if teacher is not None and loss.kd_teacher != "model":
            raise ValueError("--model.teacher is set but --model.loss.kd_teacher is not 'model': set both, or neither")
        if grad_cache is not None:
            self.automatic_optimization = False  # the cached backward runs chunk by chunk inside training_step
        self.spec = EncoderSpec(backbone, pooling, mel, mll, mrl, instruction_template)
        """Everything that makes the encoder (the control arm rebuilds from it with the axes off)."""
        self.encoder = self.spec.encoder()
        # The axes resolved against the backbone in configure_model().
        self.mll_loss: MLLLoss | None = None
        self.mrl_loss: MRLLoss | None = None
        self.ranks: tuple[int, ...] = ()
        self.active_layers: tuple[int, ...] = ()
        """The MLL layers this step trains (all of them unless a LayerSchedule callback sets a subset)."""

    @classmethod
    def from_spec(cls, spec: EncoderSpec, **settings) -> EmbeddingModule:
        """A module whose encoder is made from ``spec``; ``settings`` are the constructor's others (loss, ...)."""
        return cls(spec.backbone, pooling=spec.pooling, mel=spec.mel, mll=spec.mll, mrl=spec.mrl,
                   instruction_template=spec.instruction_template, **settings)

    # -- construction -------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Build the encoder and resolve the axes against it (idempotent)."""
        if self.mll_loss is not None:
            return
        self.encoder.train(self.training)
        backbone = self.encoder.build_backbone()
        self.mll_loss = self.mll.bind(backbone.depth)
        self.mrl_loss = self.mrl.bind(backbone.hidden_size)
        self.encoder.build()  # the MEL factors, once the other axes fit the backbone
        if self.init_from:  # the next stage of a chained schedule starts from the last one's weights
            try:
                previous = load_checkpoint(self.init_from)
            except (FileNotFoundError, ValueError) as err:
                raise type(err)(f"--model.init_from: {err}") from None
            self.encoder.start_from(previous)
        self.active_layers = self.layers
        self.ranks = self.mel.resolve_ranks() if self.mel.enabled else ()
        if self.loss_fn.kd_teacher == "model" and self.loss_fn.distills:
            # Set past nn.Module's registration: the frozen teacher is in no optimizer, checkpoint or FSDP unit.
            object.__setattr__(self, "frozen_teacher", teacher_of(
                self.teacher_config, self.encoder.backbone_config, self.encoder.pooling, self.encoder.text_tokenizer,
                default_pooling))
            if self.loss_fn.kd_feature_weight > 0:
                self.teacher_layers = paired_layers(self.layers, self.frozen_teacher, self.mll)

    @property
    def layers(self) -> tuple[int, ...]:
        """The MLL layers (ascending; empty before configure_model)."""
        return self.mll_loss.layers if self.mll_loss is not None else ()

    @property
    def dims(self) -> tuple[int, ...]:
        """The MRL dims, largest first (empty before configure_model)."""
        return self.mrl_loss.dims if self.mrl_loss is not None else ()

    @property
    def dim_weights(self) -> tuple[float, ...]:
        """The MRL weights, one per entry of ``dims``."""
        return self.mrl_loss.weights if self.mrl_loss is not None else ()

    def configure_callbacks(self) -> list[Callback]:
        """The callbacks the enabled axes need (each axis names its own), unless the trainer has one of the type.

        So ``--model.mel.enabled=true`` alone is a complete MEL run (SVD init, one rank drawn per step), and a
        preset or YAML that lists one of these callbacks (or a subclass of it) keeps its own.
        """
        present = self.trainer.callbacks if self._trainer is not None else []
        needed = [c for axis in (self.mel, self.mll, self.mrl) if axis.enabled for c in axis.callbacks()]
        # One the user gave, of the type or a subclass of it, stands in for the default.
        return [c for c in needed if not any(isinstance(given, type(c)) for given in present)]

    def init_mel_from_svd(self) -> None:
        """Factorise the original embedding matrix (the SVDInit callback calls this before training)."""
        self.configure_model()
        self.encoder.init_factors_from_svd()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Checkpoints written before the encoder split keep the backbone at the top of the state dict."""
        if "state_dict" in checkpoint:  # a sharded (FSDP) checkpoint restores its weights separately
            checkpoint["state_dict"] = encoder_state_keys(checkpoint["state_dict"], prefix=ENCODER_PREFIX)

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, inputs: dict[str, torch.Tensor], layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """The encoder's pooled embeddings: what a wrapper of this module (the FSDP root) runs when called."""
        return self.encoder(inputs, layers)

    def model_step(self, batch: dict, layers: Sequence[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one batch over ``layers`` x MRL dims, and the terms to log (shared by train and val)."""
        queries = self(batch["query"], layers)  # layer -> [B, H]
        docs = self(_stack_inputs(batch["positive"], batch.get("negatives")), layers)  # [B + B*N, H]
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
            "process_index": self.global_rank,
            "teacher": teacher_vectors(self.loss_fn, getattr(self, "frozen_teacher", None), batch,
                                       embeddings[max(layers)]),
        }
        terms: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

        def per_layer(query, positive, negs, *, layer: int) -> torch.Tensor:
            total, per_dim = self.mrl_loss(query, positive, negs, base=self.loss_fn, **context)
            terms.update({(layer, dim): t for dim, t in per_dim.items()})
            return total

        loss, layer_losses = self.mll_loss(embeddings, per_layer)
        logs = {**MLLLoss.logged(layer_losses), **MRLLoss.logged(terms)}
        if self.loss_fn.kd_feature_weight > 0:
            features = feature_distillation(self.frozen_teacher, self.teacher_layers, batch, embeddings)
            loss = loss + self.loss_fn.kd_feature_weight * features
            logs["loss/kd_feature"] = features.detach()
        return loss, logs

    def gather(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        """All devices' rows of ``x`` [B, ...] -> [W*B, ...], with the gradient ``mode`` asks for."""
        world = 1 if self._trainer is None else self.trainer.world_size
        return gather_rows(x, mode, world_size=world, rank=self.global_rank, all_gather=self.all_gather)

    # -- Lightning hooks ------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        layers = self.active_layers or self.layers
        cached = self.cached_step(batch, layers, self.grad_cache.chunk_size) if self.grad_cache else None
        loss, logs = cached.loss() if cached is not None else self.model_step(batch, layers)
        if not torch.isfinite(loss):
            return self._nonfinite(loss, batch)
        if cached is not None:
            apply_cached_update(self, cached, self.grad_cache.gradient_clip_val)
        extra = {"mel_rank": float(self.encoder.mel_rank or 0), "stage": float(batch.get("stage", 1)),
                 "num_layers": float(len(self.active_layers or self.layers))}
        if "damaged_shards" in batch:  # --data.skip_damaged: the shards skipped so far, by any loader worker
            self.damaged_shards.update(batch["damaged_shards"])
            extra["damaged_shards"] = float(len(self.damaged_shards))
        self.log_dict({f"train/{k}": v for k, v in {**logs, **extra}.items()}, batch_size=_batch_size(batch))
        self.log("train/loss", loss, prog_bar=True, batch_size=_batch_size(batch))
        return loss

    # -- gradient caching (manual optimization; the mechanics are in mlembed.gradcache) ----------------
    def cached_step(self, batch: dict, layers: Sequence[int], chunk_size: int) -> CachedStep:
        """model_step with gradient caching: call ``.loss()``, then ``.backward(self.manual_backward)``."""
        return CachedStep(
            embed=chunk_embedder(self, layers),
            inputs=(batch["query"], _stack_inputs(batch["positive"], batch.get("negatives"))),
            objective=lambda queries, docs: self.loss_on_embeddings(batch, queries, docs, layers),
            chunk_size=chunk_size,
        )

    def _nonfinite(self, loss: torch.Tensor, batch: dict) -> None:
        where = (f"step {self.global_step}, source {batch.get('source')!r}, ids {list(batch.get('ids', []))[:4]}, "
                 f"MEL rank {self.encoder.mel_rank}, layers {self.active_layers}")
        if self.on_nonfinite == "raise":
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at {where}; no update was applied and no checkpoint "
                "written for it. Lower the lr, check the data, or set --model.on_nonfinite=skip"
            )
        self.nonfinite_skipped += 1
        self.log("train/nonfinite_skipped", float(self.nonfinite_skipped), batch_size=_batch_size(batch))
        return None  # Lightning skips backward and the optimizer step for this batch

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        with self.encoder.at_rank(None):
            loss, _ = self.model_step(batch, self.layers)
        size = _batch_size(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=size, sync_dist=True, add_dataloader_idx=False)
        if "source" in batch:
            self.log(f"val/loss/{batch['source']}", loss, batch_size=size, add_dataloader_idx=False)
        return loss

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        with self.encoder.at_rank(None):
            loss, _ = self.model_step(batch, self.layers)
        self.log("test/loss", loss, batch_size=_batch_size(batch), sync_dist=True, add_dataloader_idx=False)
        return loss

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        with self.encoder.at_rank(None):
            depth = self.encoder.backbone.depth
            return self(batch["query"], [depth])[depth]

    def configure_optimizers(self) -> dict:
        # trainer.model, not self: under FSDP only the wrapped module's (flat) parameters are real.
        return self.optimizer_config.build(self.trainer.model.parameters(), int(self.trainer.estimated_stepping_batches))

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Free the gradients as soon as the step has used them. Lightning zeroes them only inside the next
        # step's closure, after its forward: the next forward would hold them as well (one model's worth of
        # memory at the step's peak). Numerically the same: they are zeroed before the next backward either way.
        optimizer.zero_grad(set_to_none=True)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # FSDP precision plugins reject Lightning's clipping; FSDP itself clips across shards.
        if gradient_clip_val is None:
            return
        model = self.trainer.model
        if hasattr(model, "clip_grad_norm_"):
            model.clip_grad_norm_(gradient_clip_val)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)


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
