"""SVDInit: factorise the backbone's token embedding into MEL's A and B before training starts."""

from __future__ import annotations

import time

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


class SVDInit(Callback):
    """Builds the model and sets MEL's factors from the truncated SVD of the loaded embedding matrix.

    It runs in ``setup``, i.e. before Lightning wraps the model (FSDP) and builds the optimizer, so the SVD sees
    whole (unsharded) weights and the optimizer sees the factors. It does nothing when MEL is off, and when a
    run resumes from a checkpoint (the checkpoint's factors are restored instead).
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or not getattr(pl_module, "mel", None) or not pl_module.mel.enabled:
            return
        pl_module.configure_model()
        factors = pl_module.encoder.factorized_embedding
        if factors is None or bool(factors.initialized) or trainer.ckpt_path is not None:
            return
        start = time.perf_counter()
        pl_module.init_mel_from_svd()
        rank_zero_info(
            f"SVDInit: factorised the {factors.A.shape[0]} x {factors.B.shape[1]} embedding at rank "
            f"{factors.max_rank} in {time.perf_counter() - start:.1f} s"
        )
