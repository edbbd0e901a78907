"""The data pipeline: shard writing, streaming, batching and the two-stage schedule.

- ``records``: the record format and its validation (``RecordError`` names file and line).
- ``shards``: records -> webdataset shards + ``manifest.json`` (``mlembed shards``, in mlembed/cli/shards.py).
- ``manifest``: samples per source, task and shard.
- ``sources``: shard directories, brace patterns and URLs -> named, weighted sources.
- ``batching``: length bucketing, hard-negative sampling, tokenized collation into the ``mlembed/batch.py`` dict.
- ``stream``: deterministic rank/worker splitting, source mixing and the stage schedule.
- ``loader``: the resumable train DataLoader.
- ``datamodule``: ``ShardDataModule`` and its settings.
- ``demo``: demo data from Django translations and the chatterbot corpus.

Submodules are imported directly (``from mlembed.data.datamodule import ShardDataModule``) so that the shard
command does not pay for importing Lightning.
"""
