"""Worker of test_export_callback.py's FSDP test (torchrun, 2 gloo ranks): ModelExport after an FSDP fit.

The tiny model of fsdp_worker.py trains 3 steps under configs/trainer/fsdp.yaml's strategy (sharded checkpoints)
with ModelExport writing both modes to ``<out>/export``. The validation pass after the last step records the
full-point embeddings of the queries through the sharded model; rank 0 saves them as ``<out>/probe.pt``.
"""

from __future__ import annotations

import os
import sys

import torch
from lightning.pytorch import Callback, Trainer

from mlembed.callbacks import ModelExport
from tests.distributed.common import WORLD
from tests.distributed.fsdp_worker import probe_run, strategy_from_yaml


class SaveProbe(Callback):
    """Rank 0 saves the embeddings the validation pass recorded."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_validation_end(self, trainer, pl_module):
        if trainer.global_rank == 0:
            torch.save({"embeddings": pl_module.probe}, os.path.join(self.out, "probe.pt"))


def main(out: str) -> None:
    module, train, val = probe_run(int(os.environ["RANK"]))
    export = ModelExport(out_dir=os.path.join(out, "export"), mode=["compat", "efficiency"])
    trainer = Trainer(accelerator="cpu", devices=WORLD, strategy=strategy_from_yaml(), max_epochs=1,
                      precision="32-true", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, use_distributed_sampler=False, num_sanity_val_steps=0,
                      callbacks=[SaveProbe(out), export], default_root_dir=out)
    trainer.fit(module, train, val)
    # Left to interpreter exit, the gloo group sometimes aborted rank 1 ("terminate called without an active
    # exception") after a successful fit.
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
