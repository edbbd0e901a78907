"""``mlembed mine`` against sentence-transformers' ``mine_hard_negatives``: same model, settings and real text.

The text is Django's translated UI strings (shipped with Django): each pair is one message in two languages (the
translation of one locale as the query, of the next locale that has it as the positive), the queries distinct and
the positives distinct. For each corpus size both miners run in a fresh process with all-MiniLM-L6-v2 as a
sentence-transformers model (loaded the same way, batch size 64, one thread each... torch's default threads),
7 negatives, a window of 70, ``relative_margin`` 0.05, top sampling, candidates from the whole corpus. Printed, in
this one run:

- samples (pairs) per second of the mining call (embedding included; model loading excluded), and the ratio;
- peak memory: the process's peak RSS above its RSS once the model was loaded, and the ratio;
- overlap: the share of sentence-transformers' negatives that mlembed also chose, row by row;
- the share of queries that are passages too (the chain makes most of them so): mlembed embeds such a query once,
  as a passage, where sentence-transformers embeds it again as a query.

Both spend nearly all their time in the model's forward passes. mlembed makes fewer of them (the reuse above) and
cheaper ones: it orders texts by their length in tokens before batching, where sentence-transformers orders them by
characters. In 98 languages, characters per token vary several-fold, so a batch ordered by characters mixes short
and long token sequences and pads them to the longest: on the 20,000 passages, 620,320 token slots for 295,034
real tokens, against 305,440 in token order (``--padding-only`` prints these counts for each size, mining nothing).

    python benchmarks/bench_mine.py [--sizes 5000 10000 20000 40000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import kib, minilm_dir

ARMS = ("sentence-transformers", "mlembed")
SETTINGS = {"num_negatives": 7, "range_max": 70, "relative_margin": 0.05}
BATCH = 64


def pairs(count: int) -> list[tuple[str, str]]:
    """``count`` (query, positive) pairs of one Django message in two languages: the queries distinct, the
    positives (the corpus) distinct."""
    from mlembed.demo.data import django_pairs

    by_message: dict[str, list[str]] = {}
    for _, rows in sorted(django_pairs().items()):
        for source, translation in rows:
            by_message.setdefault(source, []).append(translation)
    out, queries, positives = [], set(), set()
    for translations in by_message.values():  # a chain: each translation the query of the next one
        for query, positive in zip(translations, translations[1:]):
            if query not in queries and positive not in positives and query != positive:
                queries.add(query)
                positives.add(positive)
                out.append((query, positive))
    if len(out) < count:
        raise SystemExit(f"only {len(out)} distinct pairs in Django's translations; asked for {count}")
    return out[:count]


def worker(arm: str, size: int, directory: Path) -> dict:
    """Run one miner in this (fresh) process; its time, memory and chosen negatives."""
    from sentence_transformers import SentenceTransformer

    data = pairs(size)
    model = SentenceTransformer(minilm_dir(), device="cpu")
    start_rss = kib("VmRSS")
    start = time.perf_counter()
    if arm == "sentence-transformers":
        from datasets import Dataset
        from sentence_transformers.util import mine_hard_negatives

        dataset = Dataset.from_dict({"query": [q for q, _ in data], "positive": [p for _, p in data]})
        mined = mine_hard_negatives(dataset, model, num_negatives=SETTINGS["num_negatives"],
                                    range_max=SETTINGS["range_max"], relative_margin=SETTINGS["relative_margin"],
                                    sampling_strategy="top", batch_size=BATCH, output_format="n-tuple",
                                    verbose=False)
        columns = [f"negative_{i + 1}" for i in range(SETTINGS["num_negatives"])]
        chosen = {row["query"]: [row[c] for c in columns] for row in mined}
    else:
        from mlembed.mining import MineSettings, SearchSettings, SentenceTransformerEncoder, mine

        records = directory / "pairs.jsonl"
        records.write_text("".join(json.dumps({"query": q, "positive": p}) + "\n" for q, p in data))
        mine(SentenceTransformerEncoder(model, BATCH), [records], directory / "out",
             settings=MineSettings(per_source=False, **SETTINGS), search=SearchSettings(batch_size=BATCH),
             progress=False, log=lambda _: None)
        rows = [json.loads(line) for line in (directory / "out" / "pairs.jsonl").read_text().splitlines()]
        chosen = {row["query"]: row["negatives"] for row in rows}
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak": kib("VmHWM") - start_rss, "chosen": chosen}


def padding(size: int) -> str:
    """Token slots of the corpus's batches of ``BATCH`` ordered by characters and by tokens, and its real tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    texts = list(dict.fromkeys(p for _, p in pairs(size)))
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=256)["input_ids"]]

    def slots(order: list[int]) -> int:
        return sum(max(lengths[i] for i in order[s:s + BATCH]) * len(order[s:s + BATCH])
                   for s in range(0, len(order), BATCH))

    by_chars = slots(sorted(range(len(texts)), key=lambda i: -len(texts[i])))
    by_tokens = slots(sorted(range(len(texts)), key=lambda i: -lengths[i]))
    return (f"{size:>8} passages: {sum(lengths):,} real tokens; token slots in batches of {BATCH} ordered by "
            f"characters {by_chars:,}, by tokens {by_tokens:,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000, 40000],
                        help="corpus sizes (pairs; the corpus is their positives)")
    parser.add_argument("--padding-only", action="store_true",
                        help="print the padding of batches ordered by characters and by tokens, and mine nothing")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)  # ARM SIZE DIR
    args = parser.parse_args()
    if args.padding_only:
        for size in args.sizes:
            print(padding(size))
        return
    if args.worker:
        arm, size, directory = args.worker
        result = worker(arm, int(size), Path(directory))
        Path(directory, "result.json").write_text(json.dumps(result))
        return
    print(f"all-MiniLM-L6-v2 (sentence-transformers), Django translations; 7 negatives, window 70, relative "
          f"margin 0.05, batch {BATCH}, each miner in a fresh process\n")
    header = (f"{'passages':>8} | {'ST pairs/s':>10} {'mlembed':>8} {'speed x':>8} | {'ST peak MiB':>11} "
              f"{'mlembed':>8} {'memory x':>8} | {'overlap':>7} | {'queries also passages':>21}")
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        results = {}
        for arm in ARMS:
            with tempfile.TemporaryDirectory() as tmp:
                subprocess.run([sys.executable, sys.argv[0], "--worker", arm, str(size), tmp], check=True,
                               stdin=subprocess.DEVNULL)
                results[arm] = json.loads(Path(tmp, "result.json").read_text())
        st, ours = results["sentence-transformers"], results["mlembed"]
        shared = [len(set(ours["chosen"].get(q, [])) & set(negs)) / len(negs)
                  for q, negs in st["chosen"].items() if negs]
        overlap = sum(shared) / max(len(shared), 1)
        mib = 2**20
        data = pairs(size)
        passages = {p for _, p in data}
        both = sum(q in passages for q in {q for q, _ in data}) / len({q for q, _ in data})
        print(f"{size:>8} | {size / st['seconds']:>10.1f} {size / ours['seconds']:>8.1f} "
              f"{st['seconds'] / ours['seconds']:>8.2f} | {st['peak'] / mib:>11.1f} {ours['peak'] / mib:>8.1f} "
              f"{ours['peak'] / max(st['peak'], 1):>8.3f} | {overlap:>7.3f} | {both:>21.3f}", flush=True)


if __name__ == "__main__":
    main()
