"""Hard negatives for (query, positive) records, in bounded memory: what ``mlembed mine`` runs.

The steps, each resumable from its last finished piece (a killed run, run again with the same settings, continues
where it stopped and writes the same files as an uninterrupted run):

1. **Read** the records (JSONL or parquet: ``query`` and ``positive``, optionally ``source`` and ``instruction``;
   every field is kept). The corpus is every positive plus the ``--corpus`` passages, deduplicated by text.
2. **Embed** the corpus and the distinct queries, in chunks of texts sorted by length, into float16
   memory-mapped matrices in the work folder (``OUT/.mine-work``): memory holds one chunk, never the corpus.
3. **Search**: each block of queries is scored against the corpus in blocks, keeping a running top-k (k: the
   candidate window ``range_max``), so peak memory is one block of scores, whatever the corpus and query counts.
   A query's own positives and any passage equal to its text are never candidates. By default a query only sees
   the passages of its own source (``per_source``: batches are drawn from one source, so negatives should be too).
   Ties are broken by the lower corpus index (the corpus is in order of first appearance), so the result is the
   exact top-k of the full score matrix.
4. **Rescore** (optional): the window is scored again by a second scorer (the full point of the same 3D-ML model
   when the search ran at a cheaper ``point``, or a separate model), whose scores then order and filter the
   candidates: the false-negative filter.
5. **Select** with sentence-transformers' meanings: margins against the query's (lowest) positive score, a score
   ceiling and floor, ``range_min`` skipped, then the top candidates or a seeded random draw among them.

Scores are cosine similarities of the float16-stored unit vectors, computed in float64 (exact for float16
components, so independent of the block a score was computed in) and kept as float32.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from mlembed.data.records import RecordError, read_rows, text_field

WORK = ".mine-work"
"""The work folder inside the output directory (embeddings, search blocks, progress); removed when done."""
SUMMARY = "mine.json"
"""Written last into the output directory: the settings, counts and score statistics of a finished run."""
SAMPLING = ("top", "random")


@dataclass
class MineSettings:
    """How negatives are chosen (the names and meanings of sentence-transformers' ``mine_hard_negatives``)."""

    num_negatives: int = 7
    """Negatives per query (the method uses 7 for retrieval, 9 for clustering)."""
    range_min: int = 0
    """Skip this many of the best remaining candidates (after the filters), as near-duplicates of the positive."""
    range_max: int | None = None
    """The candidate window: the best ``range_max`` passages per query (default: ``range_min + num_negatives``,
    times ten when a margin or a score limit is set, since those remove candidates)."""
    max_score: float | None = None
    """Drop candidates scoring above this (likely unlabelled positives)."""
    min_score: float | None = None
    """Drop candidates scoring below this."""
    absolute_margin: float | None = None
    """Drop candidates with ``score + margin > positive score``."""
    relative_margin: float | None = None
    """Drop candidates with ``score > positive score - |positive score| * margin`` (0.05: TopK-PercPos 95%)."""
    sampling: str = "top"
    """``top``: the best remaining candidates; ``random``: a seeded draw among them."""
    per_source: bool = True
    """Candidates from the query's own source only (passages of ``--corpus`` without a source are everyone's)."""
    seed: int = 0
    """Seed of the random draw (each query draws from its own stream, so the result does not depend on blocks)."""

    def window(self) -> int:
        """The resolved ``range_max``."""
        if self.range_max is not None:
            return self.range_max
        filtered = any(v is not None for v in (self.max_score, self.min_score, self.absolute_margin,
                                               self.relative_margin))
        return self.range_min + self.num_negatives * (10 if filtered else 1)

    def check(self) -> None:
        """Refuse settings that cannot mine, naming the flag."""
        if self.num_negatives < 1:
            raise ValueError(f"--num-negatives ({self.num_negatives}) must be at least 1")
        if self.range_min < 0:
            raise ValueError(f"--range-min ({self.range_min}) must not be negative")
        if self.num_negatives > self.window() - self.range_min:
            raise ValueError(f"--num-negatives {self.num_negatives} does not fit the window: --range-max "
                             f"{self.window()} minus --range-min {self.range_min} leaves "
                             f"{max(0, self.window() - self.range_min)} candidates")
        if self.sampling not in SAMPLING:
            raise ValueError(f"--sampling {self.sampling!r} must be one of {', '.join(SAMPLING)}")
        for name in ("absolute_margin", "relative_margin"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"--{name.replace('_', '-')} ({value}) must not be negative")


@dataclass
class SearchSettings:
    """How much is held at once (the memory bound) and where the model runs."""

    batch_size: int = 64
    """Texts per forward pass."""
    chunk: int = 4096
    """Texts embedded between two saves of the embedding progress."""
    query_block: int = 1024
    """Queries scored together."""
    corpus_block: int = 8192
    """Corpus rows scored at a time against a query block (scores held: query_block x corpus_block doubles)."""
    faiss: bool = False
    """Search with a faiss flat inner-product index (``pip install faiss-cpu``) instead of torch: the same exact
    scores; faiss holds the source's corpus in float32 (memory linear in the corpus), and where several candidates
    tie at the window's edge, which of them faiss keeps is its own choice."""


class TextEncoder(Protocol):
    """What mining needs of a model: unit vectors of texts (queries with their instruction, if any).

    ``encode`` gets its texts longest first and should batch them in that order (one batch's texts are then of
    about one length, and pad little). An encoder may also have:

    - ``token_lengths(texts) -> list[int]``: each text's tokens, so "longest" counts tokens, not characters (in a
      corpus of many scripts, characters per token vary several-fold; without it, characters are counted);
    - ``query_is_passage(instruction) -> bool``: True when a query with that instruction is embedded exactly as
      a passage of the same text, so a query text that is also in the corpus reuses the passage's vector
      instead of a second forward pass (without it, every query is embedded).
    """

    name: str

    def encode(self, texts: Sequence[str], instruction: str | None = None) -> torch.Tensor:
        """L2-normalised vectors [N, dim]."""
        ...


# -- the records and the corpus ------------------------------------------------------------------------------
@dataclass
class Pairs:
    """The input records and what mining derives from them.

    ``queries`` are the distinct (source group, instruction, query text) keys in order of first appearance; every
    row points at one; a query's positives are the positives of all its rows.
    """

    files: list[Path]
    rows: list[list[dict]]
    """The decoded rows of each input file, every field kept."""
    corpus: list[str] = field(default_factory=list)
    corpus_index: dict[str, int] = field(default_factory=dict)
    """Passage text -> its corpus id."""
    groups: dict[str, list[int]] = field(default_factory=dict)
    """Source group -> its corpus ids, ascending (``""`` holds everything when mining across sources)."""
    queries: list[tuple[str, str | None, str]] = field(default_factory=list)
    row_query: list[list[int]] = field(default_factory=list)
    """For each file, each row's distinct query."""
    positives: list[list[int]] = field(default_factory=list)
    """For each distinct query, the corpus ids of its positives."""
    excluded: list[set[int]] = field(default_factory=list)
    """For each distinct query, the corpus ids it may never get: the positives of every record of its source with
    the same query text (whatever its instruction), and a passage equal to the query text."""


def read_pairs(files: Sequence[str | os.PathLike], corpus_files: Sequence[str | os.PathLike], *,
               per_source: bool) -> Pairs:
    """Read and check the records and the extra corpus; one ``RecordError`` line for the first bad record."""
    pairs = Pairs(files=[Path(f) for f in files], rows=[])
    ids = pairs.corpus_index
    members: dict[str, set[int]] = {}
    query_ids: dict[tuple[str, str | None, str], int] = {}

    def corpus_id(text: str) -> int:
        if text not in ids:
            ids[text] = len(pairs.corpus)
            pairs.corpus.append(text)
        return ids[text]

    for path in pairs.files:
        rows, mapping = [], []
        for line, obj in read_rows(path):
            if isinstance(obj, RecordError):
                raise obj
            if not isinstance(obj, dict):
                raise RecordError(str(path), line, f"a record must be a JSON object, got {type(obj).__name__}")
            query = text_field(obj, "query", str(path), line)
            positive = text_field(obj, "positive", str(path), line)
            source = text_field(obj, "source", str(path), line) if obj.get("source") is not None else ""
            instruction = text_field(obj, "instruction", str(path), line) if obj.get("instruction") else None
            group = source if per_source else ""
            key = (group, instruction, query)
            if key not in query_ids:
                query_ids[key] = len(pairs.queries)
                pairs.queries.append(key)
                pairs.positives.append([])
            q = query_ids[key]
            p = corpus_id(positive)
            if p not in pairs.positives[q]:
                pairs.positives[q].append(p)
            members.setdefault(group, set()).add(p)
            rows.append(obj)
            mapping.append(q)
        if not rows:
            raise ValueError(f"--input {path} holds no records")
        pairs.rows.append(rows)
        pairs.row_query.append(mapping)
    groups = {q[0] for q in pairs.queries}
    shared: set[int] = set()
    for path in corpus_files:
        for line, obj in _corpus_rows(Path(path)):
            text = obj if isinstance(obj, str) else text_field(obj, "text", str(path), line)
            source = obj.get("source") if isinstance(obj, dict) else None
            if per_source and source:
                if str(source) in groups:  # a source without queries would never search it
                    members[str(source)].add(corpus_id(text))
            else:
                shared.add(corpus_id(text))
    if not pairs.corpus:
        raise ValueError("the corpus is empty: --input holds no positives and --corpus no passages")
    pairs.groups = {g: sorted(members.get(g, set()) | shared) for g in sorted(groups)}
    same_text: dict[tuple[str, str], set[int]] = {}
    for (group, _, query), positives in zip(pairs.queries, pairs.positives, strict=True):
        same_text.setdefault((group, query), set()).update(positives)
    pairs.excluded = [same_text[(group, query)] | ({ids[query]} if query in ids else set())
                      for group, _, query in pairs.queries]
    return pairs


def _corpus_rows(path: Path):
    """``(line, text or row)`` of a corpus file: plain text (one passage a line), or JSONL / parquet with ``text``."""
    if path.suffix in (".jsonl", ".json", ".parquet"):
        for line, obj in read_rows(path, flag="--corpus"):
            if isinstance(obj, RecordError):
                raise obj
            if not isinstance(obj, dict):
                raise RecordError(str(path), line, f"a corpus row must be a JSON object, got {type(obj).__name__}")
            yield line, obj
        return
    if not path.exists():
        raise FileNotFoundError(f"--corpus {path}: no such file")
    with path.open(encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if text.strip():
                yield line, text.rstrip("\n")


# -- embedding into memory-mapped matrices ------------------------------------------------------------------
EMBED_LAYOUT = "corpus, then the queries that are not passages; chunks in token-length order"
"""What the work folder's embeddings hold (a folder saved by a version that embedded otherwise starts again)."""


def embed_to_memmap(encoder: TextEncoder, texts: Sequence[str], instructions: Sequence[str | None], path: Path,
                    *, chunk: int, progress: Callable | None = None) -> np.memmap:
    """Unit vectors of ``texts`` as a float16 [N, dim] ``.npy`` memmap at ``path``, resumable by chunk.

    Texts go in order of instruction, then longest first in tokens (little padding per batch); each chunk is
    written to its rows, flushed, and only then counted in ``path.done``, so a killed run re-embeds at most one
    chunk.
    """
    lengths = _lengths(encoder, texts)
    order = sorted(range(len(texts)), key=lambda i: (instructions[i] or "", -lengths[i], i))
    chunks: list[list[int]] = []
    for i in order:  # a chunk holds one instruction: it is cut where the instruction changes, or when full
        if not chunks or len(chunks[-1]) == chunk or instructions[chunks[-1][0]] != instructions[i]:
            chunks.append([])
        chunks[-1].append(i)
    done_file = path.with_suffix(".done")
    done = int(done_file.read_text()) if done_file.is_file() and path.is_file() else 0
    matrix = None
    if done:
        matrix = np.load(path, mmap_mode="r+")
        if matrix.shape[0] != len(texts):  # saved for another set of texts: start again
            done, matrix = 0, None
    for n, ids in enumerate(chunks):
        if n < done:
            continue
        vectors = encoder.encode([texts[i] for i in ids], instruction=instructions[ids[0]])
        if matrix is None:
            matrix = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(len(texts), vectors.shape[1]))
        matrix[np.asarray(ids)] = vectors.to(torch.float16).numpy()
        del vectors
        _release_memory()
        matrix.flush()
        _write_atomic(done_file, str(n + 1))
        if progress is not None:
            progress(len(ids))
    if matrix is None:  # nothing to embed (empty) cannot happen: read_pairs refuses an empty corpus
        raise ValueError("nothing to embed")
    return matrix


def _lengths(encoder: TextEncoder, texts: Sequence[str], step: int = 8192) -> list[int]:
    """Each text's length in the encoder's tokens (in characters when it cannot tell), a slice at a time."""
    count = getattr(encoder, "token_lengths", None)
    if count is None:
        return [len(t) for t in texts]
    out: list[int] = []
    for start in range(0, len(texts), step):
        out += count(texts[start:start + step])
    return out


def _embed_queries(encoder: TextEncoder, pairs: Pairs, corpus: np.ndarray, work: Path, chunk: int, bar,
                   log: Callable[[str], None]) -> np.ndarray:
    """The queries' unit vectors as a float16 memmap (``queries.npy``): a query embedded exactly as a passage (see
    ``TextEncoder``) whose text is in the corpus takes the passage's vector; the others are embedded (resumable,
    into ``queries-own.npy``)."""
    same = getattr(encoder, "query_is_passage", None)
    index = pairs.corpus_index if same is not None else {}
    reused = {q: index[text] for q, (_, instruction, text) in enumerate(pairs.queries)
              if text in index and same(instruction)}
    own = [q for q in range(len(pairs.queries)) if q not in reused]
    if reused:
        log(f"{len(reused):,} of the {len(pairs.queries):,} queries are passages too: their passage vectors are reused")
    matrix = np.lib.format.open_memmap(work / "queries.npy", mode="w+", dtype=np.float16,
                                       shape=(len(pairs.queries), corpus.shape[1]))
    if reused:
        rows, ids = np.fromiter(reused, dtype=np.int64), np.fromiter(reused.values(), dtype=np.int64)
        for start in range(0, len(rows), chunk):  # a chunk at a time: memory stays bounded
            matrix[rows[start:start + chunk]] = corpus[ids[start:start + chunk]]
    if own:
        with bar(len(own), "embedding the queries") as b:
            vectors = embed_to_memmap(encoder, [pairs.queries[q][2] for q in own],
                                      [pairs.queries[q][1] for q in own], work / "queries-own.npy", chunk=chunk,
                                      progress=b.update)
        rows = np.asarray(own, dtype=np.int64)
        for start in range(0, len(rows), chunk):
            matrix[rows[start:start + chunk]] = vectors[start:start + chunk]
    matrix.flush()
    return matrix


def _release_memory() -> None:
    """Give the memory a chunk's forward passes freed back to the system (glibc keeps it otherwise, and the next
    chunk's activations then land on top of it: the peak grows with each phase instead of staying one chunk's)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: nothing to trim
            pass


# -- the search ----------------------------------------------------------------------------------------------
def search_block(queries: torch.Tensor, corpus: np.ndarray, corpus_ids: np.ndarray, excluded: list[set[int]],
                 k: int, corpus_block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` (score, corpus id) of each query over ``corpus_ids``, best first, ties to the lower id.

    ``corpus`` is the whole float16 matrix; only ``corpus_block`` of its rows are turned into float32 and scored
    at a time. ``excluded[i]`` are the corpus ids query ``i`` may not get. Rows with fewer than ``k`` candidates
    are filled with ``-inf`` scores and id ``-1``.
    """
    n = queries.shape[0]
    queries64 = queries.double()
    banned_rows = np.asarray([row for row, banned in enumerate(excluded) for _ in banned], dtype=np.int64)
    banned_ids = np.asarray([c for banned in excluded for c in sorted(banned)], dtype=np.int64)
    best_scores = torch.full((n, 0), float("-inf"))
    best_ids = torch.full((n, 0), -1, dtype=torch.long)
    for start in range(0, len(corpus_ids), corpus_block):
        ids = corpus_ids[start:start + corpus_block]
        block = torch.from_numpy(np.asarray(corpus[ids], dtype=np.float64))
        # In float64, the products of float16 components are exact and so, in practice, are their sums: a score
        # does not depend on the block or the column it was computed in, and equal vectors tie exactly.
        scores = (queries64 @ block.T).float()  # [n, block]
        if len(banned_rows):  # the excluded ids that fall in this block (ids ascend: a binary search finds them)
            at = np.minimum(np.searchsorted(ids, banned_ids), len(ids) - 1)
            hit = ids[at] == banned_ids
            scores[torch.from_numpy(banned_rows[hit]), torch.from_numpy(at[hit])] = float("-inf")
        top_scores, top_ids = _block_top(scores, torch.from_numpy(ids.astype(np.int64)), k)
        best_scores, best_ids = _merge(best_scores, best_ids, top_scores, top_ids, k)
    if best_scores.shape[1] < k:  # a corpus smaller than the window
        pad = k - best_scores.shape[1]
        best_scores = torch.cat([best_scores, torch.full((n, pad), float("-inf"))], dim=1)
        best_ids = torch.cat([best_ids, torch.full((n, pad), -1, dtype=torch.long)], dim=1)
    best_ids[best_scores == float("-inf")] = -1
    return best_scores, best_ids


def faiss_search(index, queries: torch.Tensor, corpus_ids: np.ndarray, excluded: list[set[int]],
                 k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``search_block`` through a faiss index over ``corpus_ids`` (the same output: best first, ties to the lower id
    among those faiss returned, excluded ids dropped, ``-inf`` / ``-1`` where fewer than ``k``)."""
    extra = max((len(banned) for banned in excluded), default=0)
    found_scores, found = index.search(queries.numpy(), min(k + extra, len(corpus_ids)))
    n = queries.shape[0]
    best_scores = torch.full((n, k), float("-inf"))
    best_ids = torch.full((n, k), -1, dtype=torch.long)
    for row in range(n):
        picks = [(float(s), int(corpus_ids[i])) for s, i in zip(found_scores[row], found[row], strict=True)
                 if i >= 0 and int(corpus_ids[i]) not in excluded[row]]
        picks.sort(key=lambda pick: (-pick[0], pick[1]))
        for j, (score, c) in enumerate(picks[:k]):
            best_scores[row, j], best_ids[row, j] = score, c
    return best_scores, best_ids


def _faiss_index(corpus: np.ndarray, corpus_ids: np.ndarray, block: int):
    try:
        import faiss
    except ImportError:
        raise ValueError("--faiss needs faiss: pip install faiss-cpu (or faiss-gpu)") from None
    index = faiss.IndexFlatIP(corpus.shape[1])
    for start in range(0, len(corpus_ids), block):  # added a block at a time: no float32 copy of the whole corpus
        index.add(np.ascontiguousarray(corpus[corpus_ids[start:start + block]], dtype=np.float32))
    return index


def _block_top(scores: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``k`` columns of each row, with ties at the cut resolved to the lower id (ids ascend)."""
    if scores.shape[1] <= k:
        return scores, ids.expand(scores.shape[0], -1)
    values, cols = scores.topk(k, dim=1)
    kth = values[:, -1:]
    # topk keeps an arbitrary subset of the values equal to the k-th: redo those rows with a stable sort.
    uneven = ((scores == kth).sum(1) != (values == kth).sum(1)) & torch.isfinite(kth[:, 0])
    for row in uneven.nonzero().flatten().tolist():
        order = torch.sort(scores[row], descending=True, stable=True).indices[:k]
        values[row], cols[row] = scores[row, order], order
    return values, ids[cols]


def _merge(a_scores, a_ids, b_scores, b_ids, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``k`` of two candidate lists per row, ordered by score (descending), then id (ascending)."""
    scores, ids = torch.cat([a_scores, b_scores], dim=1), torch.cat([a_ids, b_ids], dim=1)
    by_id = torch.argsort(ids, dim=1, stable=True)
    scores, ids = scores.gather(1, by_id), ids.gather(1, by_id)
    by_score = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, by_score), ids.gather(1, by_score)


# -- selection -----------------------------------------------------------------------------------------------
@dataclass
class Counters:
    """What the filters removed and how many queries got fewer negatives than asked (summed over queries)."""

    candidates: int = 0
    absolute_margin: int = 0
    relative_margin: int = 0
    max_score: int = 0
    min_score: int = 0
    short: int = 0
    """Queries that got fewer than ``num_negatives``."""


def select(scores: Sequence[float], ids: Sequence[int], positive_score: float, settings: MineSettings,
           rng: random.Random, counters: Counters) -> list[tuple[int, float]]:
    """The negatives ``(corpus id, score)`` of one query from its window (best first; ``-1`` ids are empty)."""
    kept: list[tuple[int, float]] = []
    for c, s in zip(ids, scores, strict=True):
        if c < 0:
            continue
        counters.candidates += 1
        if settings.absolute_margin is not None and s + settings.absolute_margin > positive_score:
            counters.absolute_margin += 1
            continue
        if settings.relative_margin is not None and s > positive_score - abs(positive_score) * settings.relative_margin:
            counters.relative_margin += 1
            continue
        if settings.max_score is not None and s > settings.max_score:
            counters.max_score += 1
            continue
        if settings.min_score is not None and s < settings.min_score:
            counters.min_score += 1
            continue
        kept.append((c, s))
    kept = kept[settings.range_min:]
    if settings.sampling == "random" and len(kept) > settings.num_negatives:
        chosen = sorted(rng.sample(range(len(kept)), settings.num_negatives))
        kept = [kept[i] for i in chosen]  # still best first
    kept = kept[: settings.num_negatives]
    if len(kept) < settings.num_negatives:
        counters.short += 1
    return kept


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def fingerprint(*parts: object) -> str:
    """A short hash of the settings and inputs a work folder belongs to (a resume needs the same)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_identity(path: Path) -> dict:
    """What identifies an input file's contents cheaply: its resolved path, size and modification time."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def model_identity(name: str, **more: object) -> dict:
    """What names a model for a resume: its path's files (size and time: a checkpoint rewritten since differs),
    or its hub id, and ``more`` (the point, the device)."""
    from mlembed.paths import resolve_path

    path = Path(resolve_path(name))  # a pkg:// name by the files it stands for (called after the model loaded)
    if path.is_file():
        files = [file_identity(path)]
    elif path.is_dir():
        files = [file_identity(f) for f in sorted(path.iterdir()) if f.is_file()]
    else:
        files = []
    return {"name": name, "files": files, **more}


def remove_work(directory: Path) -> None:
    """Delete the work folder of a finished run."""
    shutil.rmtree(directory / WORK, ignore_errors=True)


def settings_dict(settings: MineSettings) -> dict:
    """The settings as written into ``mine.json``, the window resolved."""
    return {**asdict(settings), "range_max": settings.window()}


# -- models --------------------------------------------------------------------------------------------------
class PointEncoder:
    """An ``mlembed.load`` model at one (rank, depth, dim) point (None: the model's own value)."""

    def __init__(self, embedder, point: tuple[int | None, int | None, int | None], batch_size: int) -> None:
        self.embedder, self.point, self.batch_size = embedder, point, batch_size
        rank, depth, dim = point
        self.name = f"mlembed model at rank {rank or 'full'}, depth {depth or 'full'}, dim {dim or 'full'}"

    def query_is_passage(self, instruction: str | None) -> bool:
        return instruction is None  # an instruction goes before the query's text, never a passage's

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self.embedder.encoder.text_tokenizer.ids(texts)]

    def encode(self, texts: Sequence[str], instruction: str | None = None) -> torch.Tensor:
        rank, depth, dim = self.point
        texts = list(texts)
        return torch.cat([  # a batch per call: the model's own order (characters) would undo the token order
            self.embedder.encode(texts[i:i + self.batch_size], instruction=instruction, batch_size=self.batch_size,
                                 rank=rank, depth=depth, dim=dim) for i in range(0, len(texts), self.batch_size)])


class SentenceTransformerEncoder:
    """A sentence-transformers model (queries are embedded as they are: its prompts are its own business)."""

    def __init__(self, model, batch_size: int) -> None:
        self.model, self.batch_size, self.name = model, batch_size, "sentence-transformers model"

    def query_is_passage(self, instruction: str | None) -> bool:
        return True  # queries and passages both go through ``encode``, the instruction unused

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        limit = self.model.max_seq_length
        encoded = self.model.tokenizer(list(texts), add_special_tokens=True, truncation=limit is not None,
                                       max_length=limit)["input_ids"]
        return [len(ids) for ids in encoded]

    def encode(self, texts: Sequence[str], instruction: str | None = None) -> torch.Tensor:
        texts = list(texts)
        batches = [  # a batch per call: sentence-transformers' own order (characters) would undo the token order
            self.model.encode(texts[i:i + self.batch_size], batch_size=self.batch_size, convert_to_tensor=True,
                              normalize_embeddings=True, show_progress_bar=False)
            for i in range(0, len(texts), self.batch_size)]
        return torch.cat(batches).float().cpu()


def is_mlembed_model(path: Path) -> bool:
    """Whether ``path`` is something ``mlembed.load`` reads: a checkpoint or an export directory."""
    from mlembed.artifact import MANIFEST
    from mlembed.sharded import is_sharded_checkpoint

    return path.suffix == ".ckpt" or (path / MANIFEST).is_file() or (path.is_dir() and is_sharded_checkpoint(path))


def load_text_encoder(name: str, *, point: tuple | None = None, device: str = "cpu", batch_size: int = 64,
                      flag: str = "--model") -> tuple[TextEncoder, object | None]:
    """The model ``name`` (an mlembed checkpoint or export, else a sentence-transformers model) as a TextEncoder,
    and the mlembed model it wraps (None for sentence-transformers), so a second point can share its weights.
    ``pkg://package/path`` names a model inside an installed package; hub ids are sentence-transformers' to
    resolve."""
    from mlembed.paths import resolve_path

    try:
        path = Path(resolve_path(name, flag))
    except FileNotFoundError as err:
        raise ValueError(str(err)) from None
    try:
        if is_mlembed_model(path):
            import mlembed

            embedder = mlembed.load(path, device=device)
            encoder = PointEncoder(embedder, point or (None, None, None), batch_size)
            if point:
                encoder.encode(["probe"])  # a point outside the model is refused now, not after the corpus
            return encoder, embedder
        if point:
            raise ValueError(f"--point needs an mlembed model (a checkpoint or an export); {name} is not one")
        from sentence_transformers import SentenceTransformer

        return SentenceTransformerEncoder(SentenceTransformer(str(path), device=device), batch_size), None
    except ValueError as err:
        if str(err).startswith("--point"):
            raise
        if point and "outside" in str(err):
            raise ValueError(f"--point {','.join(str(v or 'full') for v in point)}: {err}") from None
        raise ValueError(f"{flag} {name} could not be loaded: {_first_line(err)}") from None
    except Exception as err:  # transformers and sentence-transformers raise many kinds for a model they cannot read
        raise ValueError(f"{flag} {name} could not be loaded: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# -- the whole run -------------------------------------------------------------------------------------------
def mine(encoder: TextEncoder, inputs: Sequence[str | os.PathLike], output: str | os.PathLike, *,
         corpus_files: Sequence[str | os.PathLike] = (), settings: MineSettings | None = None,
         search: SearchSettings | None = None, rescorer: TextEncoder | None = None, overwrite: bool = False,
         identity: object = None, rescorer_identity: object = None, progress: bool | None = None,
         log: Callable[[str], None] = print, keep_work: bool = False, pairs: Pairs | None = None) -> dict:
    """Mine negatives for the records of ``inputs`` into ``output`` (one JSONL file per input, then ``mine.json``).

    Args:
        encoder: the model whose vectors retrieve the candidates.
        inputs: JSONL or parquet records with ``query`` and ``positive``.
        output: the output directory (never an input's folder; its ``.mine-work`` folder makes a killed run
            resumable).
        corpus_files: more passages (text lines, or JSONL / parquet with ``text`` and optional ``source``).
        settings: the selection settings.
        search: block sizes and batch size.
        rescorer: the second scorer of the false-negative filter (None: the retrieval scores decide).
        overwrite: replace a finished run's files in ``output``, or an unfinished run of another model or input.
        identity: what names the retrieval model (its files, point, device): a resume keeps the embeddings only
            when it is the same.
        rescorer_identity: the same for the rescorer.
        progress: show a progress bar per phase (None: when stderr is a terminal).
        log: where the one-line phase messages go.
        keep_work: keep the work folder (the float16 embeddings and the search blocks) after a finished run.
        pairs: ``read_pairs`` of the same inputs, when the caller read them already (to refuse bad input before
            loading a model).

    Returns:
        The summary written to ``mine.json``.
    """
    from tqdm import tqdm

    settings, search = settings or MineSettings(), search or SearchSettings()
    settings.check()
    out = Path(output)
    inputs = [Path(p) for p in inputs]
    corpus_files = [Path(p) for p in corpus_files]
    check_paths(inputs, corpus_files, out)
    if pairs is None:  # bad input: refused before anything is written
        pairs = read_pairs(inputs, corpus_files, per_source=settings.per_source)
    window = check_window(settings, pairs)
    # What each phase's saved work depends on: the embeddings on the model and the inputs, the search (and the
    # rescoring) on the window and the blocks too. The selection is recomputed on every run and depends on none.
    files = [file_identity(p) for p in [*inputs, *corpus_files]]
    keys = {"embed": fingerprint(EMBED_LAYOUT, identity, files, settings.per_source, search.batch_size, search.chunk),
            "search": fingerprint(window, search.query_block, search.corpus_block, search.faiss,
                                  rescorer is not None and rescorer_identity)}
    work = out / WORK
    resumed = _prepare(out, work, keys, overwrite)
    log(f"mine: {sum(map(len, pairs.rows)):,} records, {len(pairs.queries):,} distinct queries, "
        f"{len(pairs.corpus):,} distinct passages in {len(pairs.groups)} source group(s)"
        + (f" (resuming: {resumed})" if resumed else ""))

    def bar(total: int, what: str):
        return tqdm(total=total, desc=what, unit="text", disable=None if progress is None else not progress,
                    leave=False)

    with bar(len(pairs.corpus), "embedding the corpus") as b:
        corpus = embed_to_memmap(encoder, pairs.corpus, [None] * len(pairs.corpus), work / "corpus.npy",
                                 chunk=search.chunk, progress=b.update)
    queries = _embed_queries(encoder, pairs, corpus, work, search.chunk, bar, log)
    blocks = _search(pairs, corpus, queries, window, search, work, bar)
    scorer = _Rescorer(pairs, blocks, rescorer, search, work, bar) if rescorer is not None else None
    chosen_ids = np.full((len(pairs.queries), settings.num_negatives), -1, dtype=np.int64)
    chosen_scores = np.zeros((len(pairs.queries), settings.num_negatives), dtype=np.float32)
    positive_scores = np.zeros(len(pairs.queries), dtype=np.float32)
    counters = Counters()
    for path, block in blocks:  # one block of windows in memory at a time
        block_scores, block_ids = torch.load(path)
        for i, q in enumerate(block):
            ids = [int(c) for c in block_ids[i].tolist() if c >= 0]
            scores = block_scores[i].tolist()[: len(ids)]
            if scorer is not None:
                scores, ids, positive = scorer.rescore(q, ids)
            else:
                vector = queries[q].astype(np.float64)
                positive = float(np.float32(min(float(vector @ corpus[p].astype(np.float64))
                                                for p in pairs.positives[q])))
            picks = select(scores, ids, positive, settings, random.Random(f"{settings.seed}:{q}"), counters)
            positive_scores[q] = positive
            for j, (c, score) in enumerate(picks):
                chosen_ids[q, j], chosen_scores[q, j] = c, score
    summary = _write(out, work, pairs, chosen_ids, chosen_scores, positive_scores, counters, settings, encoder,
                     rescorer)
    if not keep_work:
        remove_work(out)
    return summary


def check_window(settings: MineSettings, pairs: Pairs) -> int:
    """The window, once checked against the corpus it searches."""
    window = settings.window()
    if window >= len(pairs.corpus):
        given = "--range-max" if settings.range_max is not None else "the default window (--range-max)"
        raise ValueError(f"{given} {window} is not smaller than the corpus ({len(pairs.corpus)} distinct passages; "
                         "a query's own positive is never its candidate): lower --range-max or add --corpus")
    return window


def check_paths(inputs: Sequence[Path], corpus_files: Sequence[Path], out: Path) -> None:
    """Refuse an output directory that is, or holds, an input (mining never writes into or over its input)."""
    target = out.resolve()
    for flag, paths in (("--input", inputs), ("--corpus", corpus_files)):
        for path in paths:
            resolved = path.resolve()
            if resolved == target or target in resolved.parents:
                raise ValueError(f"--output {out} holds {flag} {path}: write the mined records to another directory")


def _prepare(out: Path, work: Path, keys: dict[str, str], overwrite: bool) -> str:
    """Make ``out`` ready; what an unfinished run there lets this one keep ("" when it starts afresh).

    A finished run's ``mine.json`` moves into the work folder when ``--overwrite`` replaces it, so that a killed
    overwrite resumes like any other run and never leaves a directory that looks finished.
    """
    from mlembed.paths import check_output

    state = work / "state.json"
    if state.is_file() and not (out / SUMMARY).is_file():  # a run that did not finish
        saved = json.loads(state.read_text())
        if saved.get("embed") == keys["embed"]:
            if saved.get("search") == keys["search"]:
                return "the embeddings and the searched blocks"
            for stale in [work / "search", *work.glob("rescore-*")]:  # other blocks or window: searched again
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
            _write_atomic(state, json.dumps(keys))
            return "the embeddings"
        if not overwrite:
            raise FileExistsError(f"--output {out} holds an unfinished mine of another model or other inputs; pass "
                                  "--overwrite to start again, or run it with the same ones to resume")
    check_output(out, "--output", overwrite, owned=lambda p: (p / SUMMARY).is_file() or (p / WORK).is_dir(),
                 what=f"mined records (a {SUMMARY})")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if (out / SUMMARY).is_file():  # --overwrite of a finished run
        os.replace(out / SUMMARY, work / "previous.json")
    _write_atomic(state, json.dumps(keys))
    return ""


def _search(pairs: Pairs, corpus: np.ndarray, queries: np.ndarray, window: int, search: SearchSettings,
            work: Path, bar) -> list[tuple[Path, list[int]]]:
    """Search every block of queries (a saved file each, skipped when a killed run saved it); ``(file, queries)``."""
    blocks = work / "search"
    blocks.mkdir(exist_ok=True)
    out: list[tuple[Path, list[int]]] = []
    with bar(len(pairs.queries), "searching") as b:
        for g, (group, members) in enumerate(pairs.groups.items()):
            corpus_ids = np.asarray(members, dtype=np.int64)
            ids = [q for q, key in enumerate(pairs.queries) if key[0] == group]
            index = None
            for n, start in enumerate(range(0, len(ids), search.query_block)):
                block = ids[start:start + search.query_block]
                path = blocks / f"{g:05d}-{n:06d}.pt"
                if not path.is_file():
                    excluded = [pairs.excluded[q] for q in block]
                    vectors = torch.from_numpy(np.asarray(queries[np.asarray(block)], dtype=np.float32))
                    if search.faiss:
                        if index is None:
                            index = _faiss_index(corpus, corpus_ids, search.corpus_block)
                        found = faiss_search(index, vectors, corpus_ids, excluded, window)
                    else:
                        found = search_block(vectors, corpus, corpus_ids, excluded, window, search.corpus_block)
                    tmp = path.with_suffix(".tmp")
                    torch.save(found, tmp)
                    os.replace(tmp, path)
                out.append((path, block))
                b.update(len(block))
    return out


class _Rescorer:
    """The second scorer: every passage of any window (and every positive) and every query, embedded by it once,
    then each query's window scored again, best first (ties to the lower id)."""

    def __init__(self, pairs: Pairs, blocks, rescorer: TextEncoder, search: SearchSettings, work: Path, bar) -> None:
        needed: set[int] = {p for positives in pairs.positives for p in positives}
        for path, _ in blocks:  # one block of windows in memory at a time
            needed.update(int(c) for c in torch.load(path)[1].flatten().tolist() if c >= 0)
        self.needed = np.asarray(sorted(needed), dtype=np.int64)
        self.pairs = pairs
        with bar(len(self.needed), "rescoring: passages") as b:
            self.passages = embed_to_memmap(rescorer, [pairs.corpus[c] for c in self.needed.tolist()],
                                            [None] * len(self.needed), work / "rescore-corpus.npy",
                                            chunk=search.chunk, progress=b.update)
        with bar(len(pairs.queries), "rescoring: queries") as b:
            self.queries = embed_to_memmap(rescorer, [q[2] for q in pairs.queries], [q[1] for q in pairs.queries],
                                           work / "rescore-queries.npy", chunk=search.chunk, progress=b.update)

    def rescore(self, q: int, ids: list[int]) -> tuple[list[float], list[int], float]:
        """The window's scores and ids by the second scorer, best first, and the query's positive score."""
        vector = self.queries[q].astype(np.float64)
        rows = np.searchsorted(self.needed, np.asarray(ids + self.pairs.positives[q], dtype=np.int64))
        values = (np.asarray(self.passages[rows], dtype=np.float64) @ vector).astype(np.float32).tolist()
        scores, positive = values[: len(ids)], min(values[len(ids):])
        order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))
        return [scores[i] for i in order], [ids[i] for i in order], positive


def _write(out: Path, work: Path, pairs: Pairs, chosen_ids: np.ndarray, chosen_scores: np.ndarray,
           positive_scores: np.ndarray, counters: Counters, settings: MineSettings, encoder: TextEncoder,
           rescorer: TextEncoder | None) -> dict:
    """The mined records (one JSONL file per input, rows in input order), then ``mine.json`` (last: it marks a
    finished run)."""
    names = [path.stem + ".jsonl" for path in pairs.files]
    if len(set(names)) < len(names):  # inputs of the same name in different folders
        names = [f"{i:02d}-{name}" for i, name in enumerate(names)]
    for name, rows, mapping in zip(names, pairs.rows, pairs.row_query, strict=True):
        path = out / name
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            for row, q in zip(rows, mapping, strict=True):
                negatives = [pairs.corpus[c] for c in chosen_ids[q].tolist() if c >= 0]
                # default=str: parquet values JSON has no type for (timestamps, decimals) are kept as text
                handle.write(json.dumps({**row, "negatives": negatives}, ensure_ascii=False, default=str) + "\n")
        os.replace(tmp, path)
    previous = work / "previous.json"
    if previous.is_file():  # an --overwrite: the earlier run's files that this run did not write again go
        for name in json.loads(previous.read_text()).get("files", []):
            if isinstance(name, str) and name == Path(name).name and name not in names and (out / name).is_file():
                (out / name).unlink()
    negative_scores = chosen_scores[chosen_ids >= 0].tolist()
    summary = {
        "files": names, "records": sum(map(len, pairs.rows)), "queries": len(pairs.queries),
        "passages": len(pairs.corpus), "groups": {g: len(m) for g, m in pairs.groups.items()},
        "settings": settings_dict(settings), "retrieval": encoder.name,
        "rescoring": None if rescorer is None else rescorer.name,
        "negatives": len(negative_scores), "skipped": asdict(counters),
        "scores": {"positive": _stats(positive_scores.tolist()), "negative": _stats(negative_scores)},
    }
    _write_atomic(out / SUMMARY, json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return summary


def _stats(values: Sequence[float]) -> dict:
    if not values:
        return {"count": 0}
    array = np.asarray(values, dtype=np.float64)
    return {"count": int(array.size), "mean": float(array.mean()), "median": float(np.median(array)),
            "min": float(array.min()), "max": float(array.max())}
