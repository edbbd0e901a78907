"""The modelling code an mlembed efficiency export carries, so that it loads without mlembed installed.

``mlembed export --mode efficiency`` copies this file beside the weights and names it in ``config.json``'s
``auto_map``; then, in any environment with torch and transformers:

    AutoModel.from_pretrained(DIR, trust_remote_code=True)
    SentenceTransformer(DIR, trust_remote_code=True)

build the exported architecture (its layers as exported) with the token embedding kept as its two MEL factors,
``A`` (vocab x rank) and ``B`` (rank x hidden): the memory saving of the export is kept in the loaded model. This
file imports nothing of mlembed, on purpose: it is read by a plain transformers process.

One loaded model serves every smaller trained point, per call and from the same weights:
``model(**batch, mlembed_rank=64, mlembed_depth=2)`` runs the leading 64 ranks of the factors and the first two
layers (the final norm, where the architecture has one, still applies), as mlembed trained that point; the
sentence-transformers files declare both keywords, so ``SentenceTransformer.encode(texts, mlembed_rank=64,
mlembed_depth=2, truncate_dim=128)`` does the same. Values outside the export are refused; values inside it that
were never trained get one warning naming the trained ones.
"""

from __future__ import annotations

import contextlib
import threading
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

RANK_KEY = "mlembed_rank"
"""The config entry holding the rank of the factors."""
MODEL_TYPE = "mlembed_factorized"
"""The export's own ``model_type``."""
BASE_KEY = "base_model"
"""The config entry holding the exported base architecture's own config (with its ``model_type``)."""
_POINT_LOCK = threading.RLock()
"""Held by every forward: a call at a smaller point changes the shared model while it runs."""
TRAINED_KEYS = {"rank": "mlembed_ranks", "depth": "mlembed_depths"}
"""The config entries listing the trained ranks and depths the export serves (for the untrained-point warning)."""


class MLEmbedFactorizedConfig(PretrainedConfig):
    """The export's config: the base architecture's config and the rank of the factors.

    Its own ``model_type`` is not the base architecture's on purpose: a plain ``AutoModel.from_pretrained(DIR)``
    would otherwise build the base architecture without asking for this code and fill the token embedding at
    random; this way transformers refuses and names ``trust_remote_code``.
    """

    model_type = MODEL_TYPE

    def __init__(self, base_model: dict | None = None, mlembed_rank: int | None = None, **kwargs) -> None:
        self.base_model = dict(base_model or {})
        self.mlembed_rank = mlembed_rank
        for key in ("hidden_size", "num_hidden_layers", "vocab_size"):  # what tools read off a config
            if key in self.base_model:
                kwargs.setdefault(key, self.base_model[key])
        super().__init__(**kwargs)


class FactorizedTokenEmbedding(nn.Module):
    """A token embedding stored as two factors: ``embedding(ids) = A[ids] @ B``."""

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.rank = num_embeddings, embedding_dim, rank
        self.A = nn.Parameter(torch.empty(num_embeddings, rank))
        self.B = nn.Parameter(torch.empty(rank, embedding_dim))
        # Saved by mlembed's factors beside A and B (whether they were set from the SVD); read for completeness.
        self.register_buffer("initialized", torch.ones((), dtype=torch.bool))
        self.active_rank = rank
        """The leading ranks used by ``forward`` (MEL's nested factors: any prefix is a trained-for model)."""

    @property
    def weight(self) -> torch.Tensor:
        """The dense matrix A @ B (built on demand: for code that reads an embedding's ``weight``)."""
        return self.A @ self.B

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        k = self.active_rank
        if k == self.rank:
            return F.embedding(input_ids, self.A) @ self.B
        return F.embedding(input_ids, self.A)[..., :k] @ self.B[:k]


class MLEmbedFactorizedModel(PreTrainedModel):
    """The exported base model with a factorised token embedding; its outputs are the base model's."""

    config_class = MLEmbedFactorizedConfig
    base_model_prefix = "model"
    _supports_sdpa = True  # attention runs in the base model, which gets the caller's choice
    supports_gradient_checkpointing = True

    def __init__(self, config: MLEmbedFactorizedConfig) -> None:
        super().__init__(config)
        base = dict(config.base_model)
        for key in ("dtype", "torch_dtype"):  # the caller's dtype (from_pretrained's dtype=) decides, as usual
            base.pop(key, None)
        inner = AutoConfig.for_model(base.pop("model_type"), **base)
        attention = getattr(config, "_attn_implementation", None)
        self.model = AutoModel.from_config(inner, **({"attn_implementation": attention} if attention else {}))
        self._no_split_modules = list(getattr(self.model, "_no_split_modules", None) or [])
        dense = self.model.get_input_embeddings()
        self.model.set_input_embeddings(
            FactorizedTokenEmbedding(dense.num_embeddings, dense.embedding_dim, int(getattr(config, RANK_KEY))))
        self._as_loaded = None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, FactorizedTokenEmbedding):  # overwritten by the export's weights
            nn.init.normal_(module.A, std=0.02)
            nn.init.normal_(module.B, std=0.02)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def forward(self, input_ids=None, attention_mask=None, mlembed_rank: int | None = None,
                mlembed_depth: int | None = None, **kwargs):
        """The base model's outputs at (``mlembed_rank``, ``mlembed_depth``); None: the export's own value.

        Calls are serialised (one lock per process): a call at a smaller point changes the model for its duration,
        and another thread's call must never see it that way.
        """
        with _POINT_LOCK, self.at_point(rank=mlembed_rank, depth=mlembed_depth):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    @contextlib.contextmanager
    def at_point(self, *, rank: int | None = None, depth: int | None = None):
        """Run the leading ``rank`` ranks of the factors and the first ``depth`` layers inside the context.

        No weight is copied: the factors are sliced and the layer list is swapped for its prefix (with the config's
        layer count and per-layer lists to match), then everything is put back to the model as loaded (found once,
        on the first call at a point, so what is restored never depends on another call).
        """
        if rank is None and depth is None:  # the export's own point: nothing to change
            yield self
            return
        with _POINT_LOCK:
            embedding = self.get_input_embeddings()
            rank = self._checked("rank", rank, embedding.rank)
            parent, attr, layers, full = self._full_model()
            depth = self._checked("depth", depth, len(layers))
            config = self.model.config
            changes = {"num_hidden_layers": depth}
            if full.get("layer_types") is not None:
                changes["layer_types"] = list(full["layer_types"])[:depth]
            embedding.active_rank = rank
            if depth < len(layers):
                setattr(parent, attr, nn.ModuleList(list(layers)[:depth]))
            for key, value in changes.items():
                setattr(config, key, value)
            try:
                yield self
            finally:
                embedding.active_rank = embedding.rank
                setattr(parent, attr, layers)
                for key, value in full.items():
                    setattr(config, key, value)

    def _full_model(self) -> tuple[nn.Module, str, nn.ModuleList, dict]:
        """The layer list and the depth fields of the config as loaded (found on first use, then kept)."""
        if self._as_loaded is None:
            parent, attr, layers = self._layer_list()
            config = self.model.config
            full = {"num_hidden_layers": config.num_hidden_layers}
            if isinstance(getattr(config, "layer_types", None), (list, tuple)):
                full["layer_types"] = list(config.layer_types)
            self._as_loaded = (parent, attr, layers, full)  # a tuple: not registered as a submodule
        return self._as_loaded

    def _checked(self, name: str, value: int | None, full: int) -> int:
        if value is None:
            return full
        value = int(value)
        if not 1 <= value <= full:
            raise ValueError(f"mlembed_{name} {value} is outside [1, {full}] (this export's {name})")
        trained = [v for v in getattr(self.config, TRAINED_KEYS[name], None) or [] if v]
        if trained and value not in trained and value != full:
            warnings.warn(f"mlembed_{name} {value} was never trained: this model was trained at {name}s "
                          f"{', '.join(map(str, trained))}, so the quality there is untested", UserWarning,
                          stacklevel=4)
        return value

    def _layer_list(self) -> tuple[nn.Module, str, nn.ModuleList]:
        """The base model's list of transformer layers, found by its length (the same for every architecture).

        The rule mlembed's own backbone uses to cut depth in training; written again here because this file must
        run where mlembed is not installed.
        """
        target = int(self.model.config.num_hidden_layers)
        for name, module in self.model.named_modules():
            if isinstance(module, nn.ModuleList) and len(module) == target and len(module) > 0:
                parent, _, attr = name.rpartition(".")
                return self.model.get_submodule(parent), attr, module
        raise ValueError(f"could not find the layer list of {type(self.model).__name__}")
