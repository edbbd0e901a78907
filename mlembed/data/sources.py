"""Resolving shard locations (directories with a manifest, brace patterns, URLs) into named sources."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from webdataset.shardlists import expand_urls

from mlembed.data.manifest import MANIFEST_NAME, ShardInfo, ShardManifest

_SHARD_NAME = re.compile(r"^(?P<source>.+)-\d+\.tar$")


@dataclass
class ShardSource:
    """One source dataset: the shards that hold it and how often it is drawn."""

    name: str
    """Source name (the ``source`` field of its samples)."""
    urls: list[str] = field(default_factory=list)
    """Shard paths or URLs, in a fixed order."""
    samples: int | None = None
    """Number of samples, when a manifest says so."""
    weight: float = 0.0
    """Relative probability of drawing a batch from this source."""
    checks: dict[str, ShardInfo] = field(default_factory=dict)
    """URL -> what the manifest recorded of that shard (sample count, checksum), for shards that have a manifest.
    The reader verifies each such shard against it."""


def resolve_sources(specs: list[str], weights: dict[str, float] | None, flag: str,
                    mixing: bool = True, split: str = "train") -> list[ShardSource]:
    """Turn shard specs into sources with weights.

    Args:
        specs: Each a local directory holding ``manifest.json``, a ``source=pattern`` pair, or a pattern / URL
            (``data/wiki-{000000..000009}.tar``, ``pipe:curl -s URL``) whose file names end in
            ``<source>-<digits>.tar`` (the names ``mlembed shards`` writes).
        weights: Optional source -> weight. When given it defines the whole mixture (sources it does not name
            are left out); otherwise sources are weighted by their manifest sample counts.
        flag: The CLI flag the specs came from (``--data.stage1``), for error messages.
        mixing: Whether the sources are mixed by weight (training); off, every source gets weight 1
            (validation passes over all of them).
        split: Which shards of a directory's manifest: ``train``, or ``val`` (held out by ``--val-fraction``).

    Returns:
        The sources sorted by name, every one with a positive weight.
    """
    found: dict[str, ShardSource] = {}
    for spec in specs:
        for name, urls, samples, checks in _expand(spec, flag, split):
            source = found.setdefault(name, ShardSource(name))
            source.urls.extend(urls)
            source.checks.update(checks)
            if samples is not None:
                source.samples = (source.samples or 0) + samples
    if not found:
        raise ValueError(f"{flag}.shards is empty: give at least one shard directory or pattern")
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(found))
    if unknown:
        raise ValueError(f"{flag}.weights names unknown sources {unknown} (known: {sorted(found)})")
    for name, source in found.items():
        if not mixing:
            source.weight = 1.0
        elif name in weights:
            source.weight = float(weights[name])
            if source.weight < 0:
                raise ValueError(f"{flag}.weights[{name}] ({source.weight}) must not be negative")
        elif weights:
            source.weight = 0.0  # explicit weights define the whole mixture: unnamed sources are left out
        elif source.samples is not None:
            source.weight = float(source.samples)
        else:
            raise ValueError(f"{flag}.weights is needed: source {name!r} has no manifest to weight it by size")
    chosen = [found[n] for n in sorted(found) if found[n].weight > 0]
    if not chosen:
        raise ValueError(f"{flag}.weights leaves no source with a positive weight")
    return chosen


def _expand(spec: str, flag: str, split: str = "train"):
    """Yield ``(source, urls, samples, checks)`` for one spec (checks: url -> ShardInfo, from a manifest)."""
    if "=" in spec and not spec.startswith("pipe:") and "://" not in spec.split("=", 1)[0]:
        name, pattern = spec.split("=", 1)
        yield name, expand_urls(pattern), None, {}
        return
    path = Path(spec)
    if path.is_dir():
        if not (path / MANIFEST_NAME).exists():
            raise FileNotFoundError(f"{flag}.shards: {path} has no {MANIFEST_NAME} (unfinished shard build?)")
        manifest = ShardManifest.load(path)
        checks = {str(path / shard.path): shard for shard in manifest.shards}
        for name, entry in manifest.sources(split).items():
            urls = [str(path / p) for p in entry["shards"]]
            yield name, urls, entry["samples"], {url: checks[url] for url in urls}
        return
    grouped: dict[str, list[str]] = {}
    for url in expand_urls(spec):
        if "://" not in url and not url.startswith("pipe:") and not Path(url).exists():
            raise FileNotFoundError(f"{flag}.shards: {url} does not exist (neither a shard directory nor a shard file)")
        match = _SHARD_NAME.match(url.rstrip("/").split("/")[-1].split()[-1])
        if not match:
            raise ValueError(
                f"{flag}.shards: cannot tell the source of {url!r}; name it as 'source=pattern' "
                "or use files named <source>-<digits>.tar"
            )
        grouped.setdefault(match["source"], []).append(url)
    yield from ((name, urls, None, {}) for name, urls in grouped.items())


def held_out_specs(specs: list[str]) -> list[str]:
    """The shard directories among ``specs`` whose manifest holds held-out (``val``) shards."""
    out = []
    for spec in specs:
        path = Path(spec)
        if (path / MANIFEST_NAME).is_file() and ShardManifest.load(path).sources("val"):
            out.append(spec)
    return out
