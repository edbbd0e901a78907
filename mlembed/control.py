"""The control arm of an ablation: the same training without the Matryoshka axes, truncated the same way.

A 3D-ML run is only evidence when it beats two things at each reduced point: the starting model truncated there
(the baseline grid) and a plain contrastive fine-tune on the same data, steps and learning rate, truncated there
too. The plain fine-tune trains the ordinary embedding matrix, the last layer and the full width only, with no
distillation; for scoring, its trained embedding matrix is factorised by SVD (its ranks are a direct SVD
truncation, as the baseline's are), its depths are plain layer truncation and its dims plain prefixes.
"""

from __future__ import annotations

import copy
import dataclasses

from lightning.pytorch import Trainer

from mlembed.module import EmbeddingModule
from mlembed.spec import EncoderSpec


def plain_copy(module: EmbeddingModule) -> EmbeddingModule:
    """A new module from ``module``'s settings with MEL, MLL, MRL and distillation switched off."""
    spec = module.spec
    return _rebuild(module, spec.replace(mel=dataclasses.replace(spec.mel, enabled=False),
                                         mll=dataclasses.replace(spec.mll, enabled=False),
                                         mrl=dataclasses.replace(spec.mrl, enabled=False)))


def truncatable(plain: EmbeddingModule, like: EmbeddingModule) -> EmbeddingModule:
    """``plain``'s trained weights in a module with ``like``'s axes, so it can be scored at ``like``'s points.

    With MEL on in ``like``, the factors come from the SVD of ``plain``'s trained embedding matrix: rank k is the
    direct SVD truncation of the fine-tuned model.
    """
    out = _rebuild(like, like.spec)
    out.configure_model()
    weights = plain.encoder.backbone.model.state_dict()
    factors = out.encoder.factorized_embedding
    if factors is None:
        out.encoder.backbone.model.load_state_dict(weights)
        return out
    matrix = plain.encoder.backbone.model.get_input_embeddings().weight.detach()
    embedding_keys = {key for key, value in weights.items() if value is matrix or value.data_ptr() == matrix.data_ptr()}
    missing, unexpected = out.encoder.backbone.model.load_state_dict(
        {k: v for k, v in weights.items() if k not in embedding_keys}, strict=False)
    if set(unexpected) or any(not key.endswith((".A", ".B", ".initialized")) for key in missing):
        raise RuntimeError(f"control arm: the weights do not fit the factorised model ({missing}, {unexpected})")
    factors.source_weight = matrix.clone()
    out.init_mel_from_svd()
    return out


def train_control(trainer: Trainer, module: EmbeddingModule) -> tuple[EmbeddingModule, int]:
    """Fine-tune :func:`plain_copy` of ``module`` as ``trainer`` trained ``module``, then make it truncatable.

    The same data (``trainer.datamodule``, whose streams depend only on their seed), the same number of optimizer
    steps, accumulation, precision, clipping and optimizer settings; no callbacks, logger or checkpoints.

    Returns:
        The truncatable control model and the optimizer steps it trained.
    """
    if trainer.world_size > 1:
        raise ValueError("GridEvaluation control=true trains the control arm on one device: run it on one device")
    datamodule = trainer.datamodule
    if datamodule is None:
        raise ValueError("GridEvaluation control=true needs the fit's data in a LightningDataModule")
    plain = plain_copy(module)
    control = Trainer(
        accelerator=trainer.accelerator, devices=1, precision=trainer.precision_plugin.precision,
        max_steps=trainer.max_steps, accumulate_grad_batches=trainer.accumulate_grad_batches,
        gradient_clip_val=trainer.gradient_clip_val, gradient_clip_algorithm=trainer.gradient_clip_algorithm,
        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[],
    )
    try:
        control.fit(plain, datamodule=datamodule)
    finally:
        datamodule.trainer = trainer
    return truncatable(plain, module), control.global_step


def _rebuild(module: EmbeddingModule, spec: EncoderSpec) -> EmbeddingModule:
    """A new module of ``spec`` (with its own copy of the pooling) and ``module``'s other settings, and no teacher
    of any kind: the control arm is a plain contrastive fine-tune."""
    loss = dataclasses.replace(module.loss_fn, kd_weight=0.0, kd_similarity_weight=0.0, kd_teacher="self")
    return EmbeddingModule.from_spec(
        spec.replace(pooling=copy.deepcopy(module.encoder.pooling)), loss=loss, optimizer=module.optimizer_config,
        on_nonfinite=module.on_nonfinite, grad_cache=module.grad_cache,
    )
