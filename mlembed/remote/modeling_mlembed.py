"""The modelling code an mlembed efficiency export carries, so that it loads without mlembed installed.

``mlembed export --mode efficiency`` copies this file beside the weights and names it in ``config.json``'s
``auto_map``; then, in any environment with torch and transformers:

    AutoModel.from_pretrained(DIR, trust_remote_code=True)
    SentenceTransformer(DIR, trust_remote_code=True)

build the exported architecture (its layers as exported) with the token embedding kept as its two MEL factors,
``A`` (vocab x rank) and ``B`` (rank x hidden): the memory saving of the export is kept in the loaded model. This
file imports nothing of mlembed, on purpose: it is read by a plain transformers process.
"""

from __future__ import annotations

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

    @property
    def weight(self) -> torch.Tensor:
        """The dense matrix A @ B (built on demand: for code that reads an embedding's ``weight``)."""
        return self.A @ self.B

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.A) @ self.B


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
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, FactorizedTokenEmbedding):  # overwritten by the export's weights
            nn.init.normal_(module.A, std=0.02)
            nn.init.normal_(module.B, std=0.02)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
