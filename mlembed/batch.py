"""The batch contract between the data pipeline and the module.

A batch is a plain dict (Lightning moves nested dicts of tensors to the device and leaves strings alone):

```
{
  "query":     {"input_ids": LongTensor [B, Tq], "attention_mask": LongTensor [B, Tq]},
  "positive":  {"input_ids": LongTensor [B, Tp], "attention_mask": LongTensor [B, Tp]},
  "negatives": {"input_ids": LongTensor [B * N, Tn], "attention_mask": ...}   # absent when N == 0
  "num_negatives": int N,                     # hard negatives per query (same for every row)
  "query_hash":    LongTensor [B],            # mlembed.text.text_hash of the query text (no instruction)
  "positive_hash": LongTensor [B],            # text_hash of the positive text
  "task":   str,                              # retrieval | classification | clustering | sts | bitext
  "source": str,                              # the ONE source dataset every row comes from
  "stage":  int,                              # 1 or 2 (two-stage schedule)
  "ids":    list[str],                        # sample ids, for exactly-once checks and debugging
  "teacher_query": FloatTensor [B, Dt],       # optional: precomputed teacher embeddings for distillation
}
```
Negatives of row i are rows ``i*N .. i*N+N-1`` of ``negatives``.
"""

from __future__ import annotations

TASKS = ("retrieval", "classification", "clustering", "sts", "bitext")
"""Task types a source can have."""

IN_BATCH_TASKS = ("retrieval", "bitext", "sts")
"""Tasks whose in-batch negatives are meaningful (others only use their hard negatives).

The reference turns the in-batch term on for retrieval-type sources only; translation pairs (bitext) and
paraphrase pairs (sts) are retrieval-shaped (one correct partner among many), so they get it too.
"""


def uses_in_batch_negatives(task: str) -> bool:
    """Whether the in-batch InfoNCE term applies to a batch of this task type."""
    return task in IN_BATCH_TASKS


def count_texts(batch: dict) -> int:
    """Texts embedded by a batch (queries, positives and negatives): the unit of ThroughputMonitor's samples."""
    total = int(batch["query"]["input_ids"].shape[0]) + int(batch["positive"]["input_ids"].shape[0])
    if "negatives" in batch:
        total += int(batch["negatives"]["input_ids"].shape[0])
    return total


def count_tokens(batch: dict) -> int:
    """Real (unpadded) tokens of a batch, for tokens/s."""
    parts = [batch[key]["attention_mask"] for key in ("query", "positive", "negatives") if key in batch]
    return int(sum(int(mask.sum()) for mask in parts))
