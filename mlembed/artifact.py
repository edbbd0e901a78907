"""The exported artifact: the (rank, depth, dim) point type, its resolution against a model, the manifest.

One module for everything both sides of an export agree on: ``mlembed.export`` writes an artifact,
``mlembed.loading`` reads it, and ``mlembed.callbacks.ModelExport`` checks before training that it will be able
to write one. It imports nothing of mlembed's, so none of them imports another to share these facts.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

MANIFEST = "mlembed.json"
"""The file that marks a directory as an mlembed export and records its point."""
FACTORIZED_WEIGHTS = "model.safetensors"
"""Efficiency-mode weights: the backbone with its token embedding as MEL factors. The export's config.json names
its own modelling code (``auto_map``), so ``AutoModel.from_pretrained(DIR, trust_remote_code=True)`` builds the
factorised model, and without ``trust_remote_code`` transformers refuses with a line that says so (it never
silently fills the embedding at random)."""
FACTORIZED_WEIGHTS_BEFORE = "model.factorized.safetensors"
"""Where exports written before the custom code kept these weights (still read by ``mlembed.load``)."""
REMOTE_MODEL_TYPE = "mlembed_factorized"
"""config.json's ``model_type`` of an efficiency export (its own, so that transformers never builds the base
architecture from it without the export's code)."""
REMOTE_BASE_KEY = "base_model"
"""config.json's entry for the base architecture's own config, read by that code and by ``mlembed.load``."""
REMOTE_RANK_KEY = "mlembed_rank"
"""config.json's entry for the factors' rank, read by the export's modelling code."""
REMOTE_TRAINED_KEYS = {"rank": "mlembed_ranks", "depth": "mlembed_depths"}
"""config.json's entries for the trained ranks and depths an efficiency export serves per call (its code warns
about any other value)."""
REMOTE_POINT_KWARGS = ("mlembed_rank", "mlembed_depth")
"""The keywords of the export's model (and of sentence-transformers' ``encode``) that choose the point per call."""
RUN_LOG_KEY = "mlembed_run_log"
"""The checkpoint entry in which ``mlembed.callbacks.RunLog`` records the run's logs and working directory (read
by the model card of an export made from the checkpoint)."""
MODES = ("compat", "efficiency")
#: sentence-transformers' name of each pooling (by mlembed class name) a compat export can express.
ST_POOLING = {"LastTokenPooling": "lasttoken", "MeanPooling": "mean", "ClsPooling": "cls"}


class Point(NamedTuple):
    """A (rank, depth, dim) point of the 3D Matryoshka grid.

    ``None`` is the full value of that axis: the whole width, every layer, or the full rank (for ``rank`` it
    also means MEL is off, where there is no rank to choose). A point is a tuple, so ``(64, None, None)`` in a
    table of points compares equal to ``Point(64, None, None)``.
    """

    rank: int | None
    depth: int | None
    dim: int | None


@dataclass(frozen=True)
class PointGrid:
    """The rank, depth and dim values a model was trained to serve (the axes of its evaluation grid).

    ``ranks`` is ``(None,)`` when MEL is off (the ordinary embedding matrix is used).
    """

    ranks: tuple[int | None, ...]
    depths: tuple[int, ...]
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelShape:
    """The limits of the axes of one model: what a point is checked against."""

    max_rank: int | None
    """The MEL factors' rank (None: MEL off, the embedding is an ordinary matrix)."""
    depth: int
    hidden_size: int
    pooling: str
    """Class name of the pooling (a compat export needs one sentence-transformers can express)."""


def cli_flag(name: str) -> str:
    """How ``mlembed export`` names a setting in its errors: ``--rank``."""
    return f"--{name}"


def resolve_point(shape: ModelShape, *, rank: int | None, depth: int | None, dim: int | None,
                  flag: Callable[[str], str] = cli_flag) -> Point:
    """Fill in defaults (full rank, depth and width) and check each value, naming it as ``flag(name)`` does.

    The one rule for "the full point": the factors' rank, every layer and the hidden size.
    """
    if shape.max_rank is None and rank is not None:
        raise ValueError(f"{flag('rank')} {rank} given, but the model was trained with MEL off (no factors): "
                         f"leave {flag('rank')} out")
    if shape.max_rank is not None:
        rank = shape.max_rank if rank is None else rank
        if not 1 <= rank <= shape.max_rank:
            raise ValueError(f"{flag('rank')} {rank} is outside [1, {shape.max_rank}] (the trained maximum rank)")
    depth = shape.depth if depth is None else depth
    if not 1 <= depth <= shape.depth:
        raise ValueError(f"{flag('depth')} {depth} is outside [1, {shape.depth}] (the model's number of layers)")
    dim = shape.hidden_size if dim is None else dim
    if not 1 <= dim <= shape.hidden_size:
        raise ValueError(f"{flag('dim')} {dim} is outside [1, {shape.hidden_size}] (the model's hidden size)")
    return Point(rank, depth, dim)


def warn_untrained(grid: PointGrid, *, rank: int | None = None, depth: int | None = None, dim: int | None = None,
                   flag: Callable[[str], str] = cli_flag) -> None:
    """One warning for each value inside the model's range that it was never trained at (naming the trained ones).

    Such a point is allowed (an export at rank 12 of a model trained at ranks 8, 16, 32 works), but nothing in the
    training held its quality up. ``None`` (the full value) is always served. Python shows a warning once per text.
    """
    for name, value, trained in (("rank", rank, grid.ranks), ("depth", depth, grid.depths), ("dim", dim, grid.dims)):
        served = [v for v in trained if v is not None]
        if value is not None and served and value not in served:
            warnings.warn(f"{flag(name)} {value} was never trained: this model was trained at {name}s "
                          f"{', '.join(map(str, served))}, so the quality there is untested", UserWarning, stacklevel=3)


def check_exportable(shape: ModelShape, modes: Sequence[str], *, rank: int | None, depth: int | None,
                     dim: int | None, flag: Callable[[str], str] = cli_flag) -> Point:
    """The resolved point, after refusing what no export in ``modes`` could write (before anything is written)."""
    bad = [mode for mode in modes if mode not in MODES]
    if bad:
        raise ValueError(f"{flag('mode')} {bad[0]!r} must be one of {MODES}")
    if "efficiency" in modes and shape.max_rank is None:
        raise ValueError(f"{flag('mode')} efficiency needs MEL factors, but the model was trained with MEL off: "
                         f"use {flag('mode')} compat")
    if "compat" in modes and shape.pooling not in ST_POOLING:
        raise ValueError(f"{flag('mode')} compat: pooling {shape.pooling} has no sentence-transformers equivalent "
                         f"(supported: {', '.join(ST_POOLING)}); use {flag('mode')} efficiency")
    return resolve_point(shape, rank=rank, depth=depth, dim=dim, flag=flag)


@dataclass
class ExportManifest:
    """What ``mlembed.json`` records: the exported point and how texts become vectors."""

    mode: str
    rank: int | None
    """MEL rank of the token embedding (None: the model was trained without MEL)."""
    depth: int
    dim: int
    hidden_size: int
    pooling: str
    """Dotted path of the mlembed pooling class."""
    instruction_template: str
    max_seq_length: int
    append_eos: bool
    """Whether the texts end with EOS (last-token pooling); the exported tokenizer appends it by itself."""
    eos_in_tokenizer: bool
    """True when the saved tokenizer's post-processor appends the EOS (so loaders must not add another)."""
    ranks: list[int] = field(default_factory=list)
    """Trained MEL ranks up to ``rank`` (the efficiency export serves all of them)."""
    depths: list[int] = field(default_factory=list)
    """Trained MLL depths up to ``depth``."""
    dims: list[int] = field(default_factory=list)
    """Trained MRL dims up to ``dim``."""
    format_version: int = 1

    def write(self, directory: Path) -> None:
        """Write ``mlembed.json`` into ``directory``."""
        (Path(directory) / MANIFEST).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, directory: str | os.PathLike) -> ExportManifest:
        """Read ``mlembed.json`` of an export, naming the path when it is missing or unreadable."""
        path = Path(directory) / MANIFEST
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{directory} is not an mlembed export: {path} is missing") from err
        except (json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"{path} is not a valid mlembed export manifest: {err}") from err

    @property
    def grid(self) -> PointGrid:
        """The trained points the export serves (its own point when it records none)."""
        return PointGrid(ranks=tuple(self.ranks) or (self.rank,), depths=tuple(self.depths) or (self.depth,),
                         dims=tuple(self.dims) or (self.dim,))
