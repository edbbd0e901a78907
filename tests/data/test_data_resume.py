"""The two-stage schedule: the switch step, the exposed step count, and exact resume in either stage."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from mlembed.data.datamodule import LoaderSettings, ShardDataModule, StageSettings


def datamodule(shard_dir, tokenizer, workers=0) -> ShardDataModule:
    return ShardDataModule(
        StageSettings([str(shard_dir)], steps=5, batch_size=3, weights={"alpha": 1.0, "gamma": 1.0}),
        StageSettings([str(shard_dir)], steps=7, batch_size=4, instructions=True),
        loader=LoaderSettings(seed=7, num_workers=workers, shuffle_buffer=16, bucket_batches=2),
        tokenizer=tokenizer,
    )


def fingerprint(batch: dict) -> tuple:
    return (batch["stage"], batch["source"], tuple(batch["ids"]), batch["query"]["input_ids"].sum().item(),
            batch.get("negatives", {}).get("input_ids", torch.zeros(1)).sum().item())


def test_stage_switches_at_the_configured_step(shard_dir, tokenizer):
    dm = datamodule(shard_dir, tokenizer)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert dm.total_steps == len(loader) == len(batches) == 12
    assert [b["stage"] for b in batches] == [1] * 5 + [2] * 7
    assert [len(b["ids"]) for b in batches] == [3] * 5 + [4] * 7  # batch size per stage
    assert {b["source"] for b in batches[:5]} <= {"alpha", "gamma"}  # stage 1's own weights
    assert [dm.stage_at(i) for i in (0, 4, 5, 11)] == [1, 1, 2, 2]


@pytest.mark.parametrize("workers,stop", [(0, 3), (0, 8), (2, 3), (2, 8)])
def test_loader_state_resumes_exactly(shard_dir, tokenizer, workers, stop):
    reference = [fingerprint(b) for b in datamodule(shard_dir, tokenizer, workers).train_dataloader()]
    first = datamodule(shard_dir, tokenizer, workers).train_dataloader()
    seen = []
    for batch in first:
        seen.append(fingerprint(batch))
        if len(seen) == stop:
            break
    state = first.state_dict()
    assert state == {"batches_yielded": stop}
    resumed = datamodule(shard_dir, tokenizer, workers).train_dataloader()  # a fresh process, in effect
    resumed.load_state_dict(state)
    assert seen + [fingerprint(b) for b in resumed] == reference


class Recorder(L.LightningModule):
    """A one-parameter module that records what it trained on."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(fingerprint(batch))
        return (self.weight * batch["query"]["input_ids"].float().mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fit(shard_dir, tokenizer, root, ckpt_path=None, callbacks=()) -> Recorder:
    dm = datamodule(shard_dir, tokenizer)
    module = Recorder()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=dm.total_steps, default_root_dir=root,
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=list(callbacks), enable_checkpointing=bool(callbacks))
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module


def test_lightning_resume_in_stage_one_and_two_continues_the_same_batches(shard_dir, tokenizer, tmp_path):
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1,
                            filename="{step}")
    full = fit(shard_dir, tokenizer, tmp_path / "a", callbacks=[saver]).seen
    assert len(full) == 12 and [s[0] for s in full] == [1] * 5 + [2] * 7
    for step in (3, 8):  # a stage-1 checkpoint and a stage-2 checkpoint
        resumed = fit(shard_dir, tokenizer, tmp_path / f"r{step}", ckpt_path=tmp_path / "ckpt" / f"step={step}.ckpt")
        assert resumed.seen == full[step:], step
