"""EmbeddingModule: all 8 axis combinations train, depth-l equivalence, truncated inference, config errors."""

import itertools

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader
from transformers import AutoModel

from mlembed.axes.mel import MEL
from mlembed.axes.mll import MLL
from mlembed.axes.mrl import MRL
from mlembed.backbone import BackboneConfig, depth_config
from mlembed.module import EmbeddingModule
from tests.helpers import QUERIES, make_batch, tiny_backbone, tiny_module

COMBOS = list(itertools.product([True, False], repeat=3))


@pytest.mark.parametrize("kind", ["qwen3", "bert"])
@pytest.mark.parametrize(("mel", "mll", "mrl"), COMBOS, ids=lambda v: "on" if v else "off")
def test_every_axis_combination_lowers_the_loss_on_a_fixed_batch(kind, mel, mll, mrl):
    module = tiny_module(kind, mel=mel, mll=mll, mrl=mrl)
    batch = make_batch(module)
    optimizer = torch.optim.AdamW(module.parameters(), lr=2e-3)
    losses = []
    for _ in range(6):
        loss, logs = module.model_step(batch, module.layers)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert (f"loss/mll@{module.layers[0]}" in logs) and ("loss/mrl@8" in logs) == mrl
    assert len(module.layers) == (3 if mll else 1)
    assert (module.encoder.factorized_embedding is not None) == mel


def test_mel_trains_only_the_factors_not_the_original_matrix():
    module = tiny_module("bert", rank=32)
    names = [n for n, _ in module.named_parameters()]
    assert any(n.endswith("word_embeddings.A") for n in names) and any(n.endswith("word_embeddings.B") for n in names)
    assert not any(n.endswith("word_embeddings.weight") for n in names)
    assert module.encoder.factorized_embedding.source_weight is None  # freed after SVD init


@pytest.mark.parametrize("kind", ["qwen3", "bert"])
def test_depth_l_model_at_inference_equals_the_layer_l_embedding_of_training(kind):
    module = tiny_module(kind, layers=4).eval()
    inputs = module.encoder.text_tokenizer(QUERIES)
    with torch.no_grad(), module.encoder.at_rank(16):
        seen_in_training = module.encoder(inputs, module.layers)  # what the loss sees, layers (1, 2, 4)
        for depth in module.layers:
            at_inference = module.encoder.embed(QUERIES, rank=16, depth=depth)
            torch.testing.assert_close(at_inference, seen_in_training[depth], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["qwen3", "bert"])
def test_embed_layers_gives_every_depth_of_one_pass_equal_to_embed_at_that_depth(kind):
    module = tiny_module(kind, layers=4).eval()
    texts = QUERIES + [q + " and a longer tail of words" for q in QUERIES]  # mixed lengths across chunks
    together = module.encoder.embed_layers(texts, rank=16, depths=[4, 1, 2], batch_size=3)
    assert sorted(together) == [1, 2, 4]
    for depth, vectors in together.items():
        torch.testing.assert_close(vectors, module.encoder.embed(texts, rank=16, depth=depth, batch_size=5),
                                   atol=1e-5, rtol=1e-4)
    assert not torch.allclose(together[1], together[4])


def test_depth_l_checkpoint_loaded_with_num_hidden_layers_l_gives_the_same_embedding():
    """One model, N depths: a plain HF model built with num_hidden_layers = l reproduces layer l."""
    module = tiny_module("qwen3", mel=False, layers=4).eval()
    inputs = module.encoder.text_tokenizer(QUERIES)
    with torch.no_grad():
        trained = module.encoder(inputs, module.layers)
    hf = module.encoder.backbone.model
    for depth in (1, 2):
        config = hf.config.__class__.from_dict({**hf.config.to_dict(), **depth_config(hf.config, depth)})
        small = AutoModel.from_config(config).eval()
        missing, _ = small.load_state_dict(hf.state_dict(), strict=False)
        assert not missing
        with torch.no_grad():
            out = small(**inputs, use_cache=False).last_hidden_state
        torch.testing.assert_close(module.encoder.pooling(out, inputs["attention_mask"]), trained[depth], atol=1e-5, rtol=1e-4)


def test_encode_cuts_and_normalises_the_prefix():
    module = tiny_module("bert").eval()
    full = module.encoder.embed(QUERIES[:3], rank=8, depth=2)
    cut = module.encoder.encode(QUERIES[:3], rank=8, depth=2, dim=16)
    assert cut.shape == (3, 16)
    torch.testing.assert_close(cut, torch.nn.functional.normalize(full[:, :16], dim=-1))


def test_points_and_parameter_counts():
    module = tiny_module("bert", rank=32, layers=4, hidden=64)
    points = module.encoder.points()
    assert points.ranks == (8, 16, 32) and points.depths == (1, 2, 4) and points.dims == (8, 16, 32, 64)
    full = module.encoder.num_parameters()
    vocab = 30522
    assert full - module.encoder.num_parameters(rank=8) == (32 - 8) * (vocab + 64)
    layer = sum(p.numel() for p in module.encoder.backbone.layer_list()[0].parameters())
    assert full - module.encoder.num_parameters(depth=1) == 3 * layer


def test_mel_without_svd_init_fails_with_a_clear_error():
    module = tiny_module("bert", init=False)
    with pytest.raises(RuntimeError, match="SVDInit"):
        module.model_step(make_batch(module), module.layers)


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [({"mel": MEL(rank=128)}, r"--model.mel.rank \(128\) exceeds the backbone's hidden size 64"),
     ({"mrl": MRL(dims=[8, 128])}, r"--model.mrl.dims \[128\] exceed the backbone's hidden size 64"),
     ({"mll": MLL(layers=[1, 6])}, r"--model.mll.layers \[6\] exceed the backbone's depth 4")],
)
def test_impossible_axis_settings_fail_at_build_naming_the_flag(kwargs, flag):
    module = EmbeddingModule(tiny_backbone("bert"), **kwargs)
    with pytest.raises(ValueError, match=flag):
        module.configure_model()


def test_unknown_backbone_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--model.backbone.pretrained"):
        BackboneConfig(pretrained=str(tmp_path / "no-such-model"))
    with pytest.raises(ValueError, match="model_type"):
        BackboneConfig(config={"hidden_size": 8}, tokenizer="x")
    module = EmbeddingModule(
        BackboneConfig(config={"model_type": "no-such-arch"}, tokenizer=str(tiny_backbone("bert").tokenizer)),
        pooling=__import__("mlembed.pooling", fromlist=["MeanPooling"]).MeanPooling(),
    )
    with pytest.raises(ValueError, match="--model.backbone.config"):
        module.configure_model()


def test_configure_model_is_idempotent():
    module = tiny_module("bert")
    params = list(module.parameters())
    module.configure_model()
    assert list(module.parameters()) == params


class _GradientsAtForward(Callback):
    """Records, at the start of each step's forward, whether any gradient of the last step is still held."""

    def __init__(self):
        self.held = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.held.append(any(p.grad is not None for p in pl_module.parameters()))


class _LightningDefaultStep(EmbeddingModule):
    """The module with Lightning's own optimizer step (gradients cleared inside the next step, after its forward)."""

    def optimizer_step(self, *args, **kwargs):
        LightningModule.optimizer_step(self, *args, **kwargs)


def _fit(module: EmbeddingModule, steps: int = 3) -> _GradientsAtForward:
    seen = _GradientsAtForward()
    trainer = Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[seen])
    trainer.fit(module, DataLoader([make_batch(module)] * steps, batch_size=None))
    return seen


def test_gradients_are_freed_after_each_step_and_training_is_unchanged():
    # The next forward holds no gradient of the last step (one model's worth of memory less at the step's peak,
    # which is where Lightning's default ordering put it), and the trained weights are bit for bit the same.
    module, default = (_built(kind) for kind in (EmbeddingModule, _LightningDefaultStep))
    default.load_state_dict(module.state_dict())
    start = {name: value.clone() for name, value in module.state_dict().items()}
    torch.manual_seed(0)
    assert _fit(default).held == [False, True, True]  # the ordering this module changes
    torch.manual_seed(0)
    assert _fit(module).held == [False, False, False]
    theirs = default.state_dict()
    for name, ours in module.state_dict().items():
        torch.testing.assert_close(ours, theirs[name], rtol=0, atol=0, msg=name)
    assert any(not torch.equal(value, start[name]) for name, value in module.state_dict().items())  # it trained


def _built(kind: type) -> EmbeddingModule:
    module = kind(tiny_backbone("bert", layers=2), mel=MEL(rank=32, min_rank=8), mll=MLL(), mrl=MRL())
    module.configure_model()
    module.init_mel_from_svd()
    return module
