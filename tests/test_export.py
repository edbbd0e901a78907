"""mlembed export: compat dirs load in plain transformers and sentence-transformers with mlembed's vectors,
efficiency dirs match compat, and bad input fails clearly without touching an existing export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from mlembed.artifact import FACTORIZED_WEIGHTS, ExportManifest
from mlembed.callbacks import RankSampler, SVDInit
from mlembed.cli.export import main
from mlembed.export import directory_bytes, export
from mlembed.loading import load
from tests.helpers import make_batch, tiny_module

TEXTS = ["hello world", "Où est la gare ?", "the cat sat on the mat " * 8, "短い文"]
POINT = {"rank": 16, "depth": 2, "dim": 32}  # a point strictly inside every axis of the tiny models


def fit_checkpoint(kind: str, directory: Path, *, mel: bool = True):
    """Fit a tiny module (MEL + MLL + MRL, SVDInit, RankSampler) for 2 steps and save its checkpoint."""
    module = tiny_module(kind, mel=mel, rank=32, layers=3, init=False)
    loader = DataLoader([make_batch(module), make_batch(module)], batch_size=None)
    callbacks = [SVDInit(), RankSampler()] if mel else []
    trainer = Trainer(max_steps=2, accelerator="cpu", default_root_dir=directory, enable_progress_bar=False,
                      logger=False, enable_checkpointing=False, enable_model_summary=False, callbacks=callbacks)
    trainer.fit(module, train_dataloaders=loader)
    path = directory / f"{kind}.ckpt"
    trainer.save_checkpoint(path)
    return module.eval(), path


@pytest.fixture(scope="module", params=["bert", "qwen3"])
def trained(request, tmp_path_factory):
    """(kind, module, checkpoint, compat dir, efficiency dir), all at POINT."""
    root = tmp_path_factory.mktemp(request.param)
    module, ckpt = fit_checkpoint(request.param, root)
    compat = export(ckpt, root / "compat", mode="compat", **POINT)
    efficiency = export(ckpt, root / "efficiency", mode="efficiency", **POINT)
    return request.param, module, ckpt, compat, efficiency


def test_compat_matches_mlembed_in_transformers_and_sentence_transformers(trained):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    kind, module, _, compat, _ = trained
    expected = module.encoder.encode(TEXTS, **POINT)  # [N, dim]

    model = AutoModel.from_pretrained(compat).eval()
    tok = AutoTokenizer.from_pretrained(compat)
    inputs = tok(TEXTS, padding=True, truncation=True, max_length=module.encoder.text_tokenizer.max_seq_length,
                 return_tensors="pt")
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    pooled = module.encoder.pooling(hidden, inputs["attention_mask"])
    assert model.config.num_hidden_layers == POINT["depth"]
    assert torch.allclose(torch.nn.functional.normalize(pooled[:, : POINT["dim"]], dim=-1), expected, atol=1e-5)

    st = SentenceTransformer(str(compat), device="cpu")
    assert st.max_seq_length == module.encoder.text_tokenizer.max_seq_length
    assert st.truncate_dim == POINT["dim"]
    # sentence-transformers normalises before truncating: same directions, equal after re-normalising.
    raw = st.encode(TEXTS, convert_to_tensor=True)
    assert torch.allclose(torch.nn.functional.normalize(raw, dim=-1), expected, atol=1e-5)
    assert torch.allclose(st.encode(TEXTS, convert_to_tensor=True, normalize_embeddings=True), expected, atol=1e-5)
    # The exported pipeline itself gives mlembed's unit vectors at the exported width, without re-normalising.
    assert torch.allclose(raw, expected, atol=1e-5)
    assert torch.allclose(raw.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    # A narrower width asked of encode: sentence-transformers truncates after Normalize, so re-normalise.
    narrower = st.encode(TEXTS, convert_to_tensor=True, truncate_dim=8, normalize_embeddings=True)
    assert torch.allclose(narrower, module.encoder.encode(TEXTS, **{**POINT, "dim": 8}), atol=1e-5)
    pooling = json.loads((compat / "1_Pooling" / "config.json").read_text())
    mode = {"bert": "pooling_mode_mean_tokens", "qwen3": "pooling_mode_lasttoken"}[kind]
    assert [k for k, v in pooling.items() if v is True] == [mode]


def test_decoder_export_appends_eos_like_mlembed(trained):
    from transformers import AutoTokenizer

    kind, module, _, compat, _ = trained
    tok = AutoTokenizer.from_pretrained(compat)
    ids = tok(["hello world"])["input_ids"][0]
    assert ids == module.encoder.text_tokenizer(["hello world"])["input_ids"][0].tolist()
    assert (ids[-1] == tok.eos_token_id) == (kind == "qwen3")


def test_efficiency_matches_compat_and_counts_parameters(trained):
    _, module, _, compat, efficiency = trained
    dense, factorized = load(compat), load(efficiency)
    assert torch.allclose(factorized.encode(TEXTS), dense.encode(TEXTS), atol=1e-5)

    expected = module.encoder.num_parameters(rank=POINT["rank"], depth=POINT["depth"])
    assert factorized.num_parameters() == expected
    vocab, hidden = module.encoder.backbone.vocab_size, module.encoder.backbone.hidden_size
    assert dense.num_parameters() == expected + vocab * hidden - POINT["rank"] * (vocab + hidden)
    assert json.loads((efficiency / "config.json").read_text())["num_hidden_layers"] == POINT["depth"]
    assert ExportManifest.read(efficiency).rank == POINT["rank"]
    # Plain transformers must not load it half-way (the base class with a random embedding): unless the export's
    # own code is allowed, it refuses and names the flag.
    from transformers import AutoModel

    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModel.from_pretrained(efficiency, trust_remote_code=False)
    assert (efficiency / FACTORIZED_WEIGHTS).stat().st_size < (compat / "model.safetensors").stat().st_size
    assert directory_bytes(efficiency) < directory_bytes(compat)


def test_compat_loads_without_mlembed(trained, tmp_path):
    kind, module, _, compat, _ = trained
    expected = module.encoder.encode(TEXTS, **POINT)
    torch.save(expected, tmp_path / "expected.pt")
    # The pooling is written out here, by kind: mean over real tokens (bert), or the last real token (qwen3,
    # whose exported tokenizer appends the EOS token that mlembed pools).
    pool = {
        "bert": "mask = inputs['attention_mask'].unsqueeze(-1).float(); pooled = (hidden * mask).sum(1) / mask.sum(1)",
        "qwen3": "last = [max(i for i, m in enumerate(row) if m) for row in inputs['attention_mask'].tolist()]; "
                 "pooled = hidden[torch.arange(len(last)), torch.tensor(last)]",
    }[kind]
    script = f"""
import sys
sys.modules["mlembed"] = None  # any import of mlembed now fails
import torch
from transformers import AutoModel, AutoTokenizer
model, tok = AutoModel.from_pretrained({str(compat)!r}), AutoTokenizer.from_pretrained({str(compat)!r})
inputs = tok({TEXTS!r}, padding=True, truncation=True, max_length={module.encoder.text_tokenizer.max_seq_length},
             return_tensors="pt")
real = [[t for t, k in zip(ids, m) if k] for ids, m in zip(inputs["input_ids"].tolist(),
                                                         inputs["attention_mask"].tolist())]
assert all(ids[-1] == tok.eos_token_id for ids in real) == {kind == "qwen3"}  # every text ends in EOS (qwen3)
with torch.no_grad():
    hidden = model(**inputs).last_hidden_state
{pool}
got = torch.nn.functional.normalize(pooled[:, :{POINT["dim"]}], dim=-1)
assert got.shape == ({len(TEXTS)}, {POINT["dim"]}), got.shape
assert torch.allclose(got, torch.load({str(tmp_path / "expected.pt")!r}), atol=1e-5), (got, "mlembed differs")
print("ok", {kind!r})
"""
    env = {**os.environ, "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["ok", kind]


# -- bad input ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bert_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert-bad")
    return fit_checkpoint("bert", root)[1]


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def existing(tmp_path) -> Path:
    target = tmp_path / "export"
    target.mkdir()
    (target / "keep.txt").write_text("an earlier export")
    (target / "mlembed.json").write_text("{}")  # the marker: --overwrite replaces only an export
    return target


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rank": 64}, "--rank 64"),
        ({"depth": 4}, "--depth 4"),
        ({"dim": 65}, "--dim 65"),
        ({"dim": 0}, "--dim 0"),
        ({"mode": "fast"}, "--mode"),
    ],
)
def test_bad_point_is_rejected_and_dir_untouched(bert_ckpt, existing, kwargs, message):
    before = _snapshot(existing)
    with pytest.raises(ValueError, match=message):
        export(bert_ckpt, existing, overwrite=True, **kwargs)
    assert _snapshot(existing) == before
    assert sorted(p.name for p in existing.parent.iterdir()) == ["export"]  # no staging dir left behind


def test_existing_dir_needs_overwrite(bert_ckpt, existing):
    before = _snapshot(existing)
    with pytest.raises(FileExistsError, match="--overwrite"):
        export(bert_ckpt, existing)
    assert _snapshot(existing) == before
    export(bert_ckpt, existing, overwrite=True)
    assert not (existing / "keep.txt").exists() and (existing / "mlembed.json").is_file()


def test_crash_leaves_previous_export_intact(bert_ckpt, existing, monkeypatch):
    import mlembed.export as export_module

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    before = _snapshot(existing)
    monkeypatch.setattr(export_module, "_write_tokenizer", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        export(bert_ckpt, existing, overwrite=True)
    assert _snapshot(existing) == before
    assert sorted(p.name for p in existing.parent.iterdir()) == ["export"]


def test_rank_with_mel_off_and_efficiency_with_mel_off(tmp_path):
    _, ckpt = fit_checkpoint("bert", tmp_path, mel=False)
    with pytest.raises(ValueError, match="--rank 8 .*MEL off"):
        export(ckpt, tmp_path / "a", rank=8)
    with pytest.raises(ValueError, match="--mode efficiency .*MEL off"):
        export(ckpt, tmp_path / "b", mode="efficiency")
    out = export(ckpt, tmp_path / "c", depth=1)
    assert ExportManifest.read(out).rank is None
    assert load(out).points().ranks == (None,)


def test_missing_and_corrupt_checkpoint_name_the_path(tmp_path):
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        export(missing, tmp_path / "out")
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.ckpt"):
        export(corrupt, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_main(bert_ckpt, tmp_path, capsys):
    assert main(["--ckpt", str(bert_ckpt), "--out", str(tmp_path / "e"), "--mode", "efficiency", "--rank", "8"]) == 0
    assert "rank=8" in capsys.readouterr().out
    assert main(["--ckpt", str(bert_ckpt), "--out", str(tmp_path / "e"), "--rank", "8"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["--ckpt", str(bert_ckpt), "--out", str(tmp_path / "f"), "--depth", "9"]) == 2
    assert "--depth 9" in capsys.readouterr().err


def test_every_export_declares_its_trained_widths_where_serving_stacks_read_them(trained):
    _, module, _, compat, efficiency = trained
    widths = sorted(d for d in module.encoder.points().dims if d <= POINT["dim"])
    assert len(widths) > 1  # the tiny models train several MRL dims below the exported one
    for directory in (compat, efficiency):
        config = json.loads((directory / "config.json").read_text())
        assert config["matryoshka_dimensions"] == widths and config["is_matryoshka"] is True
        assert json.loads((directory / "mlembed.json").read_text())["dims"] == widths
        st = json.loads((directory / "config_sentence_transformers.json").read_text())
        assert st["truncate_dim"] == POINT["dim"]  # the exported width, below the hidden size
