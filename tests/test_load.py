"""mlembed.load: checkpoints (Trainer.fit and LightningCLI), compat and efficiency exports give one encoder."""

from __future__ import annotations

import re

import pytest
import torch
from torch.utils.data import DataLoader

import mlembed
from mlembed.encoder import PointEncoder
from mlembed.export import export
from tests.helpers import make_batch
from tests.test_export import TEXTS, fit_checkpoint

POINT = {"rank": 16, "depth": 2, "dim": 32}
INSTRUCTION = "Find the translation"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The trained tiny Qwen3 module, its checkpoint, and its compat and efficiency exports at POINT."""
    root = tmp_path_factory.mktemp("load")
    module, ckpt = fit_checkpoint("qwen3", root)
    compat = export(module, root / "compat", **POINT)
    efficiency = export(module, root / "efficiency", mode="efficiency", **POINT)
    return module, ckpt, compat, efficiency


def test_checkpoint_compat_and_efficiency_agree(sources):
    module, ckpt, compat, efficiency = sources
    expected = module.encoder.encode(TEXTS, **POINT, instruction=INSTRUCTION)
    for source in (ckpt, compat, efficiency):
        encoder = mlembed.load(source, **POINT) if source == ckpt else mlembed.load(source)
        got = encoder.encode(TEXTS, instruction=INSTRUCTION, batch_size=2)
        assert got.shape == (len(TEXTS), POINT["dim"])
        assert torch.allclose(got.norm(dim=-1), torch.ones(len(TEXTS)))
        assert torch.allclose(got, expected, atol=1e-5), source
        assert isinstance(encoder, PointEncoder)
        assert encoder.num_parameters(depth=1) < encoder.num_parameters()


def test_points_and_smaller_points(sources):
    module, ckpt, compat, efficiency = sources
    factorized, dense = mlembed.load(efficiency), mlembed.load(compat)
    assert factorized.points().ranks == (8, 16) and dense.points().ranks == (16,)
    assert factorized.points().depths == (1, 2) and factorized.points().dims == (8, 16, 32)
    # The efficiency export serves every smaller rank and depth, exactly as the checkpoint does.
    assert torch.allclose(factorized.embed(TEXTS, rank=8, depth=1), module.encoder.embed(TEXTS, rank=8, depth=1), atol=1e-5)
    assert torch.allclose(dense.embed(TEXTS, depth=1), module.encoder.embed(TEXTS, rank=16, depth=1), atol=1e-5)
    assert factorized.num_parameters(rank=8, depth=1) == module.encoder.num_parameters(rank=8, depth=1)
    with pytest.raises(ValueError, match="dense at rank 16"):
        dense.embed(TEXTS, rank=8)
    with pytest.raises(ValueError, match="depth 3"):
        factorized.embed(TEXTS, depth=3)
    with pytest.raises(ValueError, match="rank 32"):
        factorized.embed(TEXTS, rank=32)
    with pytest.raises(ValueError, match="compat export"):
        mlembed.load(compat, rank=8)
    with pytest.raises(ValueError, match="--rank 33"):
        mlembed.load(ckpt, rank=33)


def test_checkpoint_defaults_to_the_full_model(sources):
    module, ckpt, _, _ = sources
    encoder = mlembed.load(ckpt)
    assert (encoder.rank, encoder.depth, encoder.dim) == (32, 3, 64)
    assert encoder.points() == module.encoder.points()
    assert torch.allclose(encoder.encode(TEXTS), module.encoder.encode(TEXTS), atol=1e-6)


def test_lightning_cli_checkpoint(tmp_path):
    from lightning.pytorch.cli import LightningCLI

    from mlembed.module import EmbeddingModule
    from tests.conftest import MINILM_DIR, tiny_bert_config

    args = {
        "model": {
            "backbone": {"config": tiny_bert_config(30522, 2, 64), "tokenizer": str(MINILM_DIR), "max_seq_length": 32},
            "mel": {"rank": 32, "min_rank": 8},
        },
        "trainer": {
            "max_steps": 1, "accelerator": "cpu", "logger": False, "enable_progress_bar": False,
            "enable_model_summary": False, "enable_checkpointing": False, "default_root_dir": str(tmp_path),
            "callbacks": [{"class_path": "mlembed.callbacks.SVDInit"}],
        },
    }
    cli = LightningCLI(EmbeddingModule, run=False, args=args, save_config_kwargs={"overwrite": True})
    cli.trainer.fit(cli.model, DataLoader([make_batch(cli.model)], batch_size=None))
    ckpt = tmp_path / "cli.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    assert isinstance(torch.load(ckpt, weights_only=False)["hyper_parameters"]["backbone"], dict)  # CLI-style
    encoder = mlembed.load(ckpt, rank=8)
    assert torch.allclose(encoder.encode(TEXTS), cli.model.encoder.encode(TEXTS, rank=8), atol=1e-6)


def test_bad_sources_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        mlembed.load(tmp_path / "missing.ckpt")
    with pytest.raises(FileNotFoundError, match=rf"checkpoint {re.escape(str(tmp_path))}/missing\.ckpt does not exist"):
        mlembed.load(tmp_path / "missing.ckpt")
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="corrupt.ckpt"):
        mlembed.load(corrupt)
    with pytest.raises(ValueError, match=rf"checkpoint {re.escape(str(corrupt))} could not be read as an mlembed "
                                         r"EmbeddingModule: invalid load key"):
        mlembed.load(corrupt)
    with pytest.raises(FileNotFoundError, match="mlembed.json"):
        mlembed.load(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(tmp_path))} is not an mlembed export: "
                                                rf"{re.escape(str(tmp_path))}/mlembed\.json is missing"):
        mlembed.load(tmp_path)


@pytest.fixture(scope="module")
def without_mel(tmp_path_factory):
    """A tiny BERT trained with MEL off, and its checkpoint."""
    return fit_checkpoint("bert", tmp_path_factory.mktemp("dense"), mel=False)


def svd_truncated(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    return ((u[:, :rank] * s[:rank]) @ vh[:rank]).to(matrix.dtype)


def test_a_model_trained_without_mel_serves_ranks_by_direct_svd_truncation(without_mel, sources):
    module, ckpt = without_mel
    with pytest.raises(ValueError, match="rank 8 asked for, but this model was trained without MEL.*--svd-ranks"):
        mlembed.load(ckpt).embed(TEXTS, rank=8)
    encoder = mlembed.load(ckpt, svd_ranks=[16, 8])
    hidden = module.encoder.backbone.hidden_size
    assert encoder.points().ranks == (8, 16, hidden) and encoder.rank == hidden
    assert encoder.points().depths == module.encoder.points().depths
    # The full rank is the trained model itself.
    assert torch.allclose(encoder.encode(TEXTS), module.encoder.encode(TEXTS), atol=1e-5)
    # Rank 8 is the trained model with its embedding matrix replaced by the matrix's best rank-8 fit.
    truncated = module.encoder.backbone.model.get_input_embeddings().weight.detach()
    expected_model = mlembed.load(ckpt)
    with torch.no_grad():
        expected_model.encoder.backbone.model.get_input_embeddings().weight.copy_(svd_truncated(truncated, 8))
    got = encoder.embed(TEXTS, rank=8, depth=2)
    assert torch.allclose(got, expected_model.embed(TEXTS, depth=2), atol=1e-4)
    assert not torch.allclose(got, encoder.embed(TEXTS, depth=2), atol=1e-2)  # the truncation changes the model
    assert encoder.num_parameters(rank=8) < encoder.num_parameters()
    # The compat export of the model serves the same truncations.
    compat = mlembed.load(export(module, ckpt.parent / "compat"), svd_ranks=[8])
    assert compat.points().ranks == (8, hidden)
    assert torch.allclose(compat.embed(TEXTS, rank=8, depth=2), got, atol=1e-5)
    # A model trained with MEL has its own ranks (checkpoint or export); a rank beyond the matrix's is refused.
    with pytest.raises(ValueError, match=r"qwen3\.ckpt: --svd-ranks: the model was trained with MEL"):
        mlembed.load(sources[1], svd_ranks=[8])
    for mel_export in sources[2:]:
        with pytest.raises(ValueError, match=r"--svd-ranks: .* is an export of a model trained with MEL \(rank 16\)"):
            mlembed.load(mel_export, svd_ranks=[8])
    with pytest.raises(ValueError, match=rf"--svd-ranks {hidden + 1}: outside \[1, {hidden}\]"):
        mlembed.load(ckpt, svd_ranks=[hidden + 1])
