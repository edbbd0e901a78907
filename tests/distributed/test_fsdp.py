"""FSDP on 2 CPU processes with MEL + MLL + MRL: trains, writes a sharded checkpoint, and Lightning's
consolidated checkpoint loads into a fresh EmbeddingModule that embeds exactly as the sharded model did."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from mlembed.module import EmbeddingModule
from tests.distributed.common import ROOT, full_batch, launch

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    launch("fsdp_worker.py", out)
    return out, torch.load(out / "probe.pt", weights_only=False)


@pytest.fixture(scope="module")
def consolidated(fsdp_run) -> str:
    """The run's sharded checkpoint through Lightning's own consolidation."""
    return consolidate(fsdp_run[0] / "sharded.ckpt")


def consolidate(sharded) -> str:
    """Lightning's own consolidation (the command docs/scale-out.md gives), run as a user would."""
    # The module's hyperparameters are dataclasses: the sharded metadata needs a full (not weights-only) load.
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    done = subprocess.run([sys.executable, "-m", "lightning.pytorch.utilities.consolidate_checkpoint", str(sharded)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return f"{sharded}.consolidated"


def test_fsdp_wraps_every_layer_checkpoints_them_and_samples_mel_ranks(fsdp_run):
    out, probe = fsdp_run
    assert probe["fsdp_units"] == 1 + 3  # the root (embeddings, MEL factors, pooler) + one per layer
    assert probe["checkpointed"] == 3
    assert len(probe["ranks"]) == 3 and set(probe["ranks"]) <= {8, 16, 32}
    assert (out / "sharded.ckpt").is_dir() and len(list((out / "sharded.ckpt").glob("*.distcp"))) == 2


def test_consolidated_checkpoint_loads_into_a_fresh_module_with_the_same_embeddings(fsdp_run, consolidated):
    out, probe = fsdp_run
    module = EmbeddingModule.load_from_checkpoint(consolidated, weights_only=False).eval()
    factors = module.encoder.factorized_embedding
    assert tuple(factors.A.shape) == (30522, 32) and bool(factors.initialized)
    batch = full_batch(module)
    depth = module.encoder.backbone.depth
    with torch.no_grad():
        got = module.encoder(batch["query"], [depth])[depth]
    torch.testing.assert_close(got, probe["embeddings"], atol=1e-5, rtol=1e-5)
    # and training did move them: the same model at initialisation embeds differently
    fresh = EmbeddingModule(module.encoder.backbone_config, mel=module.mel, mll=module.mll, mrl=module.mrl)
    fresh.configure_model()
    fresh.init_mel_from_svd()
    with torch.no_grad():
        before = fresh.eval().encoder(batch["query"], [depth])[depth]
    assert (before - probe["embeddings"]).abs().max() > 1e-3


def test_mlembed_reads_the_sharded_directory_itself_exactly_as_lightning_consolidates_it(fsdp_run, consolidated,
                                                                                        tmp_path):
    from mlembed.cli.export import main as export_main
    from mlembed.encoder import encoder_state_keys
    from mlembed.loading import load, load_checkpoint

    out, probe = fsdp_run
    sharded = out / "sharded.ckpt"
    # The module's keys (encoder.backbone...) as the Encoder names them (backbone...).
    reference = encoder_state_keys(torch.load(consolidated, map_location="cpu", weights_only=False)["state_dict"],
                                   prefix="")
    module = load_checkpoint(sharded)  # no consolidation step: the shards are merged in memory
    state = module.state_dict()
    assert set(state) == set(reference)
    for key, tensor in reference.items():
        torch.testing.assert_close(state[key], tensor, atol=0, rtol=0, msg=key)
    # the user's commands take the directory too: export, and mlembed.load for evaluation
    assert export_main(["--ckpt", str(sharded), "--out", str(tmp_path / "export"), "--mode", "efficiency"]) == 0
    depth = module.backbone.depth  # module: the Encoder load_checkpoint returned
    batch = full_batch(module)
    with torch.no_grad():
        got = load(sharded).encoder(batch["query"], [depth])[depth]
    torch.testing.assert_close(got, probe["embeddings"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("damage", ["missing shard", "truncated index"])
def test_a_damaged_sharded_checkpoint_is_named_and_nothing_is_written(fsdp_run, tmp_path, capsys, damage):
    import shutil

    from mlembed.cli.export import main as export_main

    broken = shutil.copytree(fsdp_run[0] / "sharded.ckpt", tmp_path / "broken.ckpt")
    if damage == "missing shard":
        (broken / "__1_0.distcp").unlink()
        expected = str(broken / "__1_0.distcp")
    else:
        index = broken / ".metadata"
        index.write_bytes(index.read_bytes()[:100])
        expected = ".metadata could not be read"
    assert export_main(["--ckpt", str(broken), "--out", str(tmp_path / "export")]) == 2
    message = capsys.readouterr().err
    assert str(broken) in message and expected in message, message
    assert not (tmp_path / "export").exists()
