"""The Hugging Face backbone: built from a hub id, a local path or a config, returning the hidden states asked for.

Nothing of a model's internals is re-implemented: the backbone runs the model's own forward with
``output_hidden_states`` and only finds (generically) the layer list and the final norm. That is what lets
one code path serve Qwen3, Llama, BERT and XLM-R, and survive transformers upgrades.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlembed.paths import resolve_model, split_hub_id, with_revision

#: Attribute names under which architectures keep the norm applied after their last layer.
FINAL_NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "final_norm")


@dataclass
class BackboneConfig:
    """Which Hugging Face model to train; swapping the backbone is a change of these fields only."""

    pretrained: str | None = None
    """The pretrained Hugging Face model: a hub id (``Qwen/Qwen3-0.6B``, resolved by transformers through the
    hub cache, ``HF_HOME`` / ``HF_HUB_CACHE``, and ``HF_HUB_OFFLINE``), a local directory, or ``pkg://pkg/path``."""
    config: dict[str, Any] | None = None
    """Config of a randomly initialised model instead: keyword arguments with ``model_type`` (e.g. a tiny
    Qwen3 for tests); applied on top of ``pretrained``'s config when both are given."""
    tokenizer: str | None = None
    """The tokenizer, named like ``pretrained`` (a hub id may pin its own revision: ``ORG/NAME@REVISION``);
    default: ``pretrained``'s, at ``revision``."""
    revision: str | None = None
    """Branch, tag or commit of the hub id ``pretrained`` (and of its tokenizer) given to ``from_pretrained``;
    null: the repository's default branch. A commit hash makes the run reproducible."""
    max_seq_length: int = 512
    """Texts are cut to this many tokens (EOS included)."""
    dtype: str = "float32"
    """Dtype of the weights as loaded; keep float32 with bf16-mixed so the optimizer holds fp32 masters."""
    attn_implementation: str | None = "sdpa"
    """Attention kernel passed to transformers (``sdpa``, ``eager``, ``flash_attention_2``)."""
    gradient_checkpointing: bool = False
    """Recompute layer activations in backward (memory for time)."""
    final_norm: str | None = "auto"
    """Attribute of the model's final norm, applied to intermediate layers for MLL; ``auto`` finds it, null
    means none."""
    seed: int = 0
    """Seed of the random initialisation when ``config`` is given without ``pretrained``."""

    def __post_init__(self) -> None:
        if self.pretrained is None and self.config is None:
            raise ValueError("set --model.backbone.pretrained (a hub id or a local model directory) or "
                             "--model.backbone.config")
        if self.config is not None and self.pretrained is None and "model_type" not in self.config:
            raise ValueError("--model.backbone.config needs a 'model_type' (e.g. qwen3, bert) to build a model")
        if self.tokenizer is None and self.pretrained is None:
            raise ValueError("--model.backbone.tokenizer is required when the model is built from a config")
        if self.revision is not None and self.pretrained is None:
            raise ValueError(f"--model.backbone.revision {self.revision!r} pins --model.backbone.pretrained, which is "
                             "not set (pin a tokenizer as --model.backbone.tokenizer=ORG/NAME@REVISION)")
        # Names are resolved (and an unresolvable one refused, in one line) before anything is built.
        if self.pretrained is not None:
            self.pretrained = resolve_model(self.pretrained, "--model.backbone.pretrained", self.revision,
                                            needs="config.json")
            if self.revision is not None and not self.is_hub_id:
                raise ValueError(f"--model.backbone.revision {self.revision!r} pins a hub id, but "
                                 f"--model.backbone.pretrained {self.pretrained!r} is a local directory")
        if self.tokenizer is not None and self.tokenizer != self.pretrained:
            self.tokenizer = resolve_model(self.tokenizer, "--model.backbone.tokenizer")

    @property
    def is_hub_id(self) -> bool:
        """Whether ``pretrained`` names a hub repository (rather than a local directory)."""
        return (self.pretrained is not None and not Path(self.pretrained).exists()
                and split_hub_id(self.pretrained) is not None)

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of every ``from_pretrained`` of ``pretrained`` (AutoConfig, AutoModel): the revision."""
        return {} if self.revision is None else {"revision": self.revision}

    @property
    def tokenizer_path(self) -> str:
        """The tokenizer's name for ``mlembed.text.load_tokenizer``: ``tokenizer``, else ``pretrained``, with
        ``@revision`` when the tokenizer is the pinned hub id's."""
        if self.tokenizer is not None and self.tokenizer != self.pretrained:
            return self.tokenizer
        return with_revision(str(self.pretrained), self.revision)


class Backbone(nn.Module):
    """Wraps a Hugging Face base model (no head); ``forward`` returns the hidden states of chosen layers."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config
        self.model: nn.Module | None = None
        self._final_norm_name: str | None = None

    # -- construction -------------------------------------------------------------------------------
    def build(self) -> None:
        """Load or create the model once (idempotent: Lightning may call configure_model several times)."""
        if self.model is not None:
            return
        from transformers import AutoConfig, AutoModel

        cfg = self.config
        dtype = getattr(torch, cfg.dtype)
        kwargs = {} if cfg.attn_implementation is None else {"attn_implementation": cfg.attn_implementation}
        if cfg.pretrained is not None:
            hub = cfg.from_pretrained_kwargs()
            hf_config = AutoConfig.from_pretrained(cfg.pretrained, **hub, **(cfg.config or {}))
            model = AutoModel.from_pretrained(cfg.pretrained, config=hf_config, dtype=dtype, **hub, **kwargs)
        else:
            options = dict(cfg.config)
            try:
                hf_config = AutoConfig.for_model(options.pop("model_type"), **options)
            except ValueError as err:
                raise ValueError(f"--model.backbone.config: {err}") from err
            with _seeded(cfg.seed):
                model = AutoModel.from_config(hf_config, dtype=dtype, **kwargs)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = model
        self._final_norm_name = self._find_final_norm()

    def _find_final_norm(self) -> str | None:
        if self.config.final_norm is None:
            return None
        if self.config.final_norm != "auto":
            if not isinstance(getattr(self.model, self.config.final_norm, None), nn.Module):
                raise ValueError(f"--model.backbone.final_norm {self.config.final_norm!r} is not a module of the model")
            return self.config.final_norm
        return next((n for n in FINAL_NORM_NAMES if isinstance(getattr(self.model, n, None), nn.Module)), None)

    # -- facts about the model ----------------------------------------------------------------------
    @property
    def hf_config(self):
        """The Hugging Face config of the built model."""
        self._require_built()
        return self.model.config

    @property
    def depth(self) -> int:
        """Number of transformer layers."""
        return len(self.layer_list())

    @property
    def hidden_size(self) -> int:
        """Width of the hidden states (the full embedding size)."""
        return int(self.hf_config.hidden_size)

    @property
    def vocab_size(self) -> int:
        """Rows of the token-embedding matrix."""
        return int(self.hf_config.vocab_size)

    def layer_list(self) -> nn.ModuleList:
        """The model's list of transformer layers, found by shape rather than by architecture-specific name."""
        self._require_built()
        return self._layer_list_location()[2]

    def _layer_list_location(self) -> tuple[nn.Module, str, nn.ModuleList]:
        target = int(self.model.config.num_hidden_layers)
        for name, module in self.model.named_modules():
            if isinstance(module, nn.ModuleList) and len(module) == target and len(module) > 0:
                parent_name, _, attr = name.rpartition(".")
                return self.model.get_submodule(parent_name), attr, module
        raise ValueError(f"could not find the layer list of {type(self.model).__name__}")

    def final_norm(self) -> nn.Module | None:
        """The norm after the last layer, or None when the architecture has none (BERT)."""
        return None if self._final_norm_name is None else getattr(self.model, self._final_norm_name)

    def _require_built(self) -> None:
        if self.model is None:
            raise RuntimeError("the backbone is not built yet: call EmbeddingModule.configure_model() first")

    # -- running ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def truncated(self, depth: int | None) -> Iterator[None]:
        """Run only the first ``depth`` layers (the depth-``depth`` model of MLL; no copy of any weight)."""
        full = self.depth
        if depth is None or depth == full:
            yield
            return
        if not 1 <= depth <= full:
            raise ValueError(f"depth {depth} is outside [1, {full}]")
        parent, attr, layers = self._layer_list_location()
        config = self.model.config
        saved = {key: getattr(config, key) for key in depth_config(config, depth)}
        setattr(parent, attr, nn.ModuleList(list(layers)[:depth]))
        for key, value in depth_config(config, depth).items():
            setattr(config, key, value)
        try:
            yield
        finally:
            setattr(parent, attr, layers)
            for key, value in saved.items():
                setattr(config, key, value)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[int]
    ) -> dict[int, torch.Tensor]:
        """Hidden states [B, T, H] of each layer in ``layers`` (1-based), final norm applied to all.

        The deepest layer asked for is the model's own last hidden state (normed by the model); shallower ones
        go through the same final norm, so the depth-l slice of training equals the depth-l model at inference.
        Layers above the deepest one asked for are not computed.
        """
        self._require_built()
        deepest = max(layers)
        # Positions from the mask, so left-padded rows get the same positions as right-padded ones.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        with self.truncated(deepest), self._captured(set(layers) - {deepest}) as captured:
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,  # the cache breaks activation checkpointing on padded batches
                return_dict=True,
            )
        norm = self.final_norm()
        states = {deepest: out.last_hidden_state}
        for layer, hidden in captured.items():  # [B, T, H], before the final norm
            states[layer] = hidden if norm is None else norm(hidden)
        return {layer: states[layer] for layer in layers}

    @contextlib.contextmanager
    def _captured(self, layers: set[int]) -> Iterator[dict[int, torch.Tensor]]:
        """Record the outputs of ``layers`` (1-based) during one forward, with hooks on those layers only.

        Not ``output_hidden_states``: transformers 5 records hidden states with hooks that it installs on the
        layers present at the first such call, so a first call on a depth-truncated model leaves the deeper
        layers unrecorded for good (wrong states or an IndexError at full depth later). Hooks of our own, put
        on and taken off around each forward, do not depend on what ran before.
        """
        captured: dict[int, torch.Tensor] = {}
        layer_list = self.layer_list() if layers else []

        def keep(layer: int):
            def hook(_module, _args, output):
                captured[layer] = output[0] if isinstance(output, (tuple, list)) else output
            return hook

        handles = [layer_list[layer - 1].register_forward_hook(keep(layer)) for layer in sorted(layers)]
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()


def depth_config(config, depth: int) -> dict[str, Any]:
    """Config fields that change for a depth-``depth`` model: the layer count and per-layer lists."""
    changes: dict[str, Any] = {"num_hidden_layers": depth}
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, (list, tuple)):
        changes["layer_types"] = list(layer_types)[:depth]
    return changes


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch for a random initialisation without disturbing the caller's RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def count_parameters(module: nn.Module) -> int:
    """Number of elements of the module's parameters."""
    return sum(p.numel() for p in module.parameters())
