"""Test doubles of the Encoder protocol and small evaluation files in the demo's formats."""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule
from transformers import BertConfig, BertModel

from mlembed.artifact import PointGrid


class TableEncoder:
    """Embeds each text as a fixed vector from a table (for metrics whose answer is known by hand).

    ``embed`` records every call as ``(texts, rank, depth, instruction)``.
    """

    def __init__(self, table: Mapping[str, Sequence[float]], points: PointGrid | None = None) -> None:
        self.table = {k: torch.tensor(v, dtype=torch.float32) for k, v in table.items()}
        width = len(next(iter(self.table.values())))
        self._points = points or PointGrid(ranks=(None,), depths=(1,), dims=(width,))
        self.calls: list[tuple[list[str], int | None, int | None, str | None]] = []

    def points(self) -> PointGrid:
        return self._points

    def embed(self, texts, *, rank=None, depth=None, instruction=None, batch_size=64) -> torch.Tensor:
        self.calls.append((list(texts), rank, depth, instruction))
        return torch.stack([self.table[t] for t in texts])

    def num_parameters(self, *, rank=None, depth=None) -> int:
        return 1000 * (rank or 1) + 10 * (depth or 1)


class TinyEncoder(LightningModule):
    """A tiny random BERT implementing the Encoder protocol, trainable in a real Trainer.

    Words are hashed to ids; ``rank`` k embeds tokens with the rank-k truncated SVD of the embedding matrix
    (A[:, :k] @ B[:k]), ``depth`` l mean-pools hidden_states[l], dims are prefixes of the pooled vector. It also
    has the optional ``embed_layers`` (several depths from one pass).
    """

    def __init__(self, vocab: int = 257, hidden: int = 32, layers: int = 3, ranks=(8, 16, 32), dims=(8, 16, 32)):
        super().__init__()
        config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                            intermediate_size=2 * hidden, max_position_embeddings=64, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.vocab, self.layers = vocab, layers
        self._points = PointGrid(ranks=tuple(ranks), depths=tuple(range(1, layers + 1)), dims=tuple(dims))
        self.calls: list[tuple[int, int | None, int | None]] = []  # embed: (texts, rank, depth)
        self.layer_calls: list[tuple[int, int | None, tuple[int, ...]]] = []  # embed_layers: (texts, rank, depths)
        self.modes_seen: list[bool] = []  # self.training at each embed call

    @property
    def encoder(self) -> TinyEncoder:
        """What GridEvaluation scores: a LightningModule's ``encoder`` (this double is its own)."""
        return self

    def points(self) -> PointGrid:
        return self._points

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [[zlib.crc32(w.encode()) % (self.vocab - 1) + 1 for w in t.lower().split()][:32] or [1] for t in texts]
        ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return ids.to(self.device), (ids > 0).long().to(self.device)

    def pooled(self, texts: Sequence[str], rank: int | None, depth: int | None) -> torch.Tensor:
        return self.pooled_layers(texts, rank, [depth or self.layers])[depth or self.layers]

    def pooled_layers(self, texts: Sequence[str], rank: int | None, depths: Sequence[int]) -> dict[int, torch.Tensor]:
        ids, mask = self.tokenize(texts)
        weight = self.bert.embeddings.word_embeddings.weight  # [vocab, hidden]
        if rank is None:
            tokens = weight[ids]
        else:
            u, s, vh = torch.linalg.svd(weight, full_matrices=False)
            tokens = (u[:, :rank] * s[:rank])[ids] @ vh[:rank]  # [B, T, k] @ [k, hidden]
        states = self.bert(inputs_embeds=tokens, attention_mask=mask, output_hidden_states=True).hidden_states
        # hidden_states[l]: [B, T, hidden] after l layers
        return {d: (states[d] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True) for d in depths}

    def embed(self, texts, *, rank=None, depth=None, instruction=None, batch_size=64) -> torch.Tensor:
        self.calls.append((len(texts), rank, depth))
        self.modes_seen.append(self.training)
        if instruction:
            texts = [f"{instruction} {t}" for t in texts]
        with torch.no_grad():
            return torch.cat([self.pooled(texts[i : i + batch_size], rank, depth)
                              for i in range(0, len(texts), batch_size)]).float().cpu()

    def embed_layers(self, texts, *, rank=None, depths, instruction=None, batch_size=64) -> dict[int, torch.Tensor]:
        """Every depth in ``depths`` from one pass (the optional LayerEncoder extension)."""
        self.layer_calls.append((len(texts), rank, tuple(depths)))
        self.modes_seen.append(self.training)
        if instruction:
            texts = [f"{instruction} {t}" for t in texts]
        with torch.no_grad():
            chunks = [self.pooled_layers(texts[i : i + batch_size], rank, depths) for i in range(0, len(texts), batch_size)]
        return {d: torch.cat([c[d] for c in chunks]).float().cpu() for d in depths}

    def num_parameters(self, *, rank=None, depth=None) -> int:
        total = sum(p.numel() for p in self.bert.parameters())
        vocab, hidden = self.bert.embeddings.word_embeddings.weight.shape
        if rank is not None:
            total += rank * (vocab + hidden) - vocab * hidden
        if depth is not None:
            total -= sum(p.numel() for layer in self.bert.encoder.layer[depth:] for p in layer.parameters())
        return total

    def training_step(self, batch, batch_idx):
        queries, positives = batch
        q = torch.nn.functional.normalize(self.pooled(queries, None, None), dim=-1)
        p = torch.nn.functional.normalize(self.pooled(positives, None, None), dim=-1)
        return torch.nn.functional.cross_entropy(q @ p.T / 0.05, torch.arange(len(q)))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


LANGS = {"de": ["Hallo Welt", "Guten Morgen", "Die Katze schläft", "Wo ist der Bahnhof", "Ich trinke Tee"],
         "fr": ["Bonjour le monde", "Bonjour", "Le chat dort", "Où est la gare", "Je bois du thé"],
         "es": ["Hola mundo", "Buenos días", "El gato duerme", "Dónde está la estación", "Bebo té"]}
ENGLISH = ["Hello world", "Good morning", "The cat sleeps", "Where is the station", "I drink tea"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def demo_dir(tmp_path: Path) -> Path:
    """A directory like the demo builder's: ``eval/bitext.jsonl`` and ``eval/dialogue.jsonl`` (3 languages)."""
    bitext = [{"id": f"{lang}:{i}", "lang": lang, "src": en, "tgt": tgt}
              for lang, texts in LANGS.items() for i, (en, tgt) in enumerate(zip(ENGLISH, texts))]
    dialogue = [{"id": f"{lang}:{i}", "lang": lang, "query": f"{q}?", "positive": f"{q}!"}
                for lang, texts in LANGS.items() for i, q in enumerate(texts)]
    write_jsonl(tmp_path / "demo" / "eval" / "bitext.jsonl", bitext)
    write_jsonl(tmp_path / "demo" / "eval" / "dialogue.jsonl", dialogue)
    return tmp_path / "demo"


@pytest.fixture
def tiny_encoder() -> TinyEncoder:
    return TinyEncoder()
