"""The shard manifest: samples per source, task and shard, plus what was skipped while writing.

The DataModule reads it for mixing weights (sources are drawn in proportion to their size) and for the
sample counts of finite passes; its presence also marks a finished shard build (it is written last).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

MANIFEST_NAME = "manifest.json"
"""File name of the manifest inside a shard directory."""
INSTRUCTION_TEXTS = 16
"""How many distinct instructions a shard's manifest entry keeps (a source has one or a few)."""


@dataclass
class ShardInfo:
    """One finished shard."""

    path: str
    """File name, relative to the manifest's directory."""
    source: str
    """The one source every sample of the shard comes from."""
    task: str
    """The task of that source."""
    samples: int
    """Number of samples in the shard."""
    instructions: int | None = None
    """Samples that carry an instruction (absent in manifests written before it was counted)."""
    split: str = "train"
    """``train``, or ``val``: a held-out shard of the source (``--val-fraction``), kept under ``val/``."""
    sha256: str | None = None
    """SHA-256 of the shard file, computed while it was written (absent in manifests written before checksums
    were recorded: those shards are checked by sample count only)."""
    instruction_texts: dict[str, int] | None = None
    """The shard's distinct instructions and how many samples carry each (the first ``INSTRUCTION_TEXTS`` of
    them): the prompts a trained model's export declares. Absent in manifests written before they were kept."""
    languages: dict[str, int] | None = None
    """Samples per language tag, of the records that named their languages (absent when none did)."""


SHARD_FIELDS = frozenset(f.name for f in fields(ShardInfo))


@dataclass
class ShardManifest:
    """Everything the loader needs to know about a directory of shards without opening them."""

    shards: list[ShardInfo] = field(default_factory=list)
    """Every finished shard, in writing order."""
    invalid: int = 0
    """Records skipped with ``--skip-invalid``."""
    invalid_reasons: dict[str, int] = field(default_factory=dict)
    """Skipped records per reason (the reason text without file and line)."""
    invalid_examples: list[str] = field(default_factory=list)
    """The first few skipped records as ``file:line: reason``."""
    sampling: dict | None = None
    """How the rows were chosen (``--max-per-source``, ``--seed``, ``--val-fraction``), when they were."""

    def sources(self, split: str = "train") -> dict[str, dict]:
        """``{source: {"task", "samples", "shards": [paths]}}`` summed over the shards of ``split``."""
        out: dict[str, dict] = {}
        for shard in self.shards:
            if shard.split != split:
                continue
            entry = out.setdefault(shard.source, {"task": shard.task, "samples": 0, "shards": []})
            entry["samples"] += shard.samples
            entry["shards"].append(shard.path)
        return out

    def instructions(self, split: str = "train") -> dict[str, dict[str, int]]:
        """``{source: {instruction: samples}}`` of the instructions the shards of ``split`` recorded."""
        out: dict[str, dict[str, int]] = {}
        for shard in self.shards:
            if shard.split == split and shard.instruction_texts:
                counts = out.setdefault(shard.source, {})
                for text, count in shard.instruction_texts.items():
                    counts[text] = counts.get(text, 0) + count
        return out

    def languages(self, split: str = "train") -> dict[str, int]:
        """Samples per language tag over the shards of ``split`` (records that named no language are not counted)."""
        out: dict[str, int] = {}
        for shard in self.shards:
            if shard.split == split:
                for tag, count in (shard.languages or {}).items():
                    out[tag] = out.get(tag, 0) + count
        return out

    def tasks(self) -> dict[str, int]:
        """Training samples per task."""
        out: dict[str, int] = {}
        for shard in self.shards:
            if shard.split == "train":
                out[shard.task] = out.get(shard.task, 0) + shard.samples
        return out

    def to_json(self) -> dict:
        """The manifest as written to disk (sources and tasks included for people reading it)."""
        data = asdict(self)
        data["sources"] = self.sources()
        data["tasks"] = self.tasks()
        data["samples"] = sum(s.samples for s in self.shards if s.split == "train")
        if self.languages():
            data["languages"] = self.languages()
        if any(s.split == "val" for s in self.shards):
            data["val_sources"] = self.sources("val")
        return data

    def save(self, directory: str | Path) -> Path:
        """Write ``manifest.json`` atomically (temporary file, then rename) and return its path."""
        path = Path(directory) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> ShardManifest:
        """Read ``directory/manifest.json``."""
        path = Path(directory) / MANIFEST_NAME
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: a shard directory without a manifest is an unfinished build "
                "(rerun `python -m mlembed shards`), or pass shard patterns instead of the directory"
            )
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            # Fields a later version added are skipped, so an older mlembed still reads the shards.
            shards=[ShardInfo(**{k: v for k, v in s.items() if k in SHARD_FIELDS}) for s in data["shards"]],
            invalid=data.get("invalid", 0),
            invalid_reasons=data.get("invalid_reasons", {}), invalid_examples=data.get("invalid_examples", []),
            sampling=data.get("sampling"),
        )
