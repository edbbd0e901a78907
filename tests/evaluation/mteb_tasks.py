"""Two small mteb tasks built from in-memory data: a retrieval task and an STS task (English, test split).

They subclass the installed mteb's own task classes and carry valid TaskMetadata, so ``mteb.evaluate`` runs them
as it runs its registered tasks, with no download.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset, DatasetDict
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata

#: Question -> the passage that answers it (each passage answers exactly one question).
QA = [
    ("how do I change the password of my account",
     "Open the account settings, choose Security, and type the new password twice."),
    ("which city is the capital of Italy", "Rome has been the capital of Italy since 1871."),
    ("how many legs does an insect have", "Every adult insect walks on six jointed legs."),
    ("at what temperature does water freeze", "At sea level, pure water turns to ice at zero degrees Celsius."),
    ("what do koalas eat", "Koalas feed almost entirely on eucalyptus leaves."),
    ("who painted the Mona Lisa", "The Mona Lisa was painted by Leonardo da Vinci in the early 1500s."),
    ("how long does the earth take to orbit the sun", "The Earth completes one orbit around the Sun in about 365 days."),
    ("what is the largest ocean on earth", "The Pacific is the largest and deepest of the world's oceans."),
    ("how do bees make honey", "Bees collect nectar from flowers and evaporate it into honey inside the hive."),
    ("which instrument has 88 keys", "A standard piano keyboard has 88 black and white keys."),
]
#: Sentence pairs with a similarity from 0 (unrelated) to 5 (same meaning): paraphrases in other words, and
#: pairs that share words but not meaning, so that word overlap alone does not rank them.
PAIRS = [
    ("The physician examined the patient.", "A doctor checked the sick man.", 4.6),
    ("I purchased a car yesterday.", "Yesterday I bought an automobile.", 4.8),
    ("The bank of the river was muddy.", "The bank raised its interest rates.", 0.4),
    ("She plays the piano beautifully.", "Her piano playing is lovely.", 4.5),
    ("The meeting was postponed.", "The gathering was moved to a later date.", 4.3),
    ("He is reading a book in the park.", "He is reading the newspaper on the train.", 1.8),
    ("The apple fell from the tree.", "Apple released a new phone.", 0.3),
    ("Kids are laughing in the playground.", "Children giggle in the school yard.", 4.2),
    ("The flight was cancelled because of fog.", "The fog made the morning cold.", 1.2),
    ("A cat is drinking milk.", "A cat is chasing a mouse.", 1.6),
]
COMMON = {
    "description": "A small in-memory task for offline tests of mlembed's mteb adapter.",
    "reference": "https://example.org/mlembed-tests",
    "dataset": {"path": "mlembed/offline-test", "revision": "1"},
    "category": "t2t",
    "modalities": ["text"],
    "eval_splits": ["test"],
    "eval_langs": ["eng-Latn"],
    "date": ("2026-01-01", "2026-01-31"),
    "domains": ["Written"],
    "task_subtypes": [],
    "license": "cc-by-4.0",
    "annotations_creators": "human-annotated",
    "dialect": [],
    "sample_creation": "created",
    "bibtex_citation": "",
}


class OfflineRetrieval(AbsTaskRetrieval):
    """Find the passage that answers each question (nDCG@10)."""

    metadata = TaskMetadata(name="MLEmbedOfflineRetrieval", type="Retrieval", main_score="ndcg_at_10", **COMMON)

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        queries = Dataset.from_list([{"id": f"q{i}", "text": q} for i, (q, _) in enumerate(QA)])
        corpus = Dataset.from_list([{"id": f"d{i}", "text": d, "title": ""} for i, (_, d) in enumerate(QA)])
        relevant = {f"q{i}": {f"d{i}": 1} for i in range(len(QA))}
        split = RetrievalSplitData(queries=queries, corpus=corpus, relevant_docs=relevant, top_ranked=None)
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


class OfflineSTS(AbsTaskSTS):
    """Spearman correlation of cosine similarities with the pairs' scores."""

    metadata = TaskMetadata(name="MLEmbedOfflineSTS", type="STS", main_score="cosine_spearman", **COMMON)
    min_score = 0
    max_score = 5

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        columns = {"sentence1": [a for a, _, _ in PAIRS], "sentence2": [b for _, b, _ in PAIRS],
                   "score": [s for _, _, s in PAIRS]}
        self.dataset = DatasetDict({"test": Dataset.from_dict(columns)})
        self.data_loaded = True


def offline_tasks() -> list:
    """Fresh task objects (mteb keeps loaded data on the object)."""
    return [OfflineRetrieval(), OfflineSTS()]
