"""The streaming LightningDataModule: two training stages in one ``fit``, held-out validation per source."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import lightning as L
from torch.utils.data import DataLoader

from mlembed.batch import TASKS
from mlembed.data.batching import DEFAULT_NEGATIVES, NEGATIVE_DRAWS, Collator
from mlembed.data.loader import ResumableLoader
from mlembed.data.sources import held_out_specs, resolve_sources
from mlembed.data.stream import EpochStream, ShardReader, StagePlan, TrainStream
from mlembed.text import DEFAULT_TEMPLATE, TextTokenizer


@dataclass
class StageSettings:
    """One training stage: its shards, length, batch size, mixing and instruction handling."""

    shards: list[str] = field(default_factory=list)
    """Shard directories (holding manifest.json), ``source=pattern`` pairs, or patterns / URLs named
    ``<source>-<digits>.tar`` (``data/wiki-{000000..000009}.tar``, ``pipe:curl -s URL``)."""
    steps: int = 0
    """Training batches drawn in this stage (0 skips it, unless ``epochs`` is set)."""
    epochs: float = 0.0
    """Passes over this stage's shards instead of a fixed ``steps`` (0: use ``steps``). An epoch holds each
    source's ``samples // (batch_size x devices x nodes)`` batches (the manifest's counts), drawn in a seeded
    order without replacement, so sources take turns in proportion to their size until every batch is used (the
    authors' epoch). The steps follow from the data and the global batch, and the log states them at start.
    Within a source, rows come from its shuffled stream, split over the loader slots by shard: the batch counts
    are exact, but a slot may wrap into its share's next pass a few batches early (a few per cent of a source
    can repeat while others wait for the next epoch)."""
    batch_size: int = 32
    """Rows per batch, per device."""
    weights: dict[str, float] | None = None
    """Source -> mixing weight. When set it is the whole mixture (sources it does not name are left out);
    unset, sources are weighted by their manifest sample counts (so it is required for shards without one)."""
    instructions: bool = False
    """Prepend each sample's instruction to its query (stage 2 of the method; stage 1 runs without)."""
    templates: dict[str, str] = field(default_factory=dict)
    """Task -> template with ``{instruction}`` and ``{query}``; default ``Instruct: {instruction}\\nQuery: {query}``."""
    num_negatives: dict[str, int] = field(default_factory=dict)
    """Task -> hard negatives per query; unset tasks use 9 clustering, 1 classification, 7 others (retrieval, sts,
    bitext: the reference counts sts and bitext sources as retrieval)."""
    negative_draw: str = "row"
    """How each batch's hard negatives are picked among a row's mined ones: ``row`` (every row draws its own) or
    ``batch`` (the reference's: one random draw of positions per batch, shared by its rows; classification sources
    take the first ones)."""
    val_shards: list[str] = field(default_factory=list)
    """Held-out shards of this stage, validated once per validation run, the loss per source (same forms as
    ``shards``). Empty: the held-out shards that ``mlembed shards --val-fraction`` wrote beside ``shards``, if any."""
    val_batch_size: int | None = None
    """Rows per validation batch (default: ``batch_size``)."""

    def check(self, flag: str) -> None:
        """Validate, naming the CLI flag (``--data.stage1``) in every error."""
        if self.steps < 0:
            raise ValueError(f"{flag}.steps ({self.steps}) must not be negative")
        if self.epochs < 0:
            raise ValueError(f"{flag}.epochs ({self.epochs}) must not be negative")
        if self.epochs > 0 and self.steps > 0:
            raise ValueError(f"{flag}.epochs ({self.epochs}) and {flag}.steps ({self.steps}) are both set: a stage's "
                             "length is one or the other (set the unused one to 0)")
        if self.steps > 0 and not self.shards:
            raise ValueError(f"{flag}.shards is empty but {flag}.steps is {self.steps}")
        if self.epochs > 0 and not self.shards:
            raise ValueError(f"{flag}.shards is empty but {flag}.epochs is {self.epochs}")
        if self.epochs > 0 and self.weights:
            raise ValueError(f"{flag}.weights set with {flag}.epochs: an epoch draws every source's batches by its "
                             "size, so weights would not mix it; choose the sources with shards, or use steps")
        if self.batch_size < 1:
            raise ValueError(f"{flag}.batch_size ({self.batch_size}) must be at least 1")
        if self.val_batch_size is not None and self.val_batch_size < 1:
            raise ValueError(f"{flag}.val_batch_size ({self.val_batch_size}) must be at least 1")
        if self.negative_draw not in NEGATIVE_DRAWS:
            raise ValueError(f"{flag}.negative_draw ({self.negative_draw!r}) must be one of {', '.join(NEGATIVE_DRAWS)}")
        for task, n in self.num_negatives.items():
            if task not in TASKS:
                raise ValueError(f"{flag}.num_negatives names unknown task {task!r} (tasks: {', '.join(TASKS)})")
            if n < 0:
                raise ValueError(f"{flag}.num_negatives[{task}] ({n}) must not be negative")
        for task, template in self.templates.items():
            if task not in TASKS:
                raise ValueError(f"{flag}.templates names unknown task {task!r}")
            if "{query}" not in template:
                raise ValueError(f"{flag}.templates[{task}] must contain {{query}}: {template!r}")


@dataclass
class LoaderSettings:
    """How batches are streamed (shared by both stages)."""

    seed: int = 0
    """Seed of shuffling, source mixing and negative sampling (same run + seed = same batches)."""
    num_workers: int = 0
    """Loader worker processes per device (tokenization runs in them). Keep it fixed across a resume."""
    shuffle_buffer: int = 1000
    """Samples held in each source stream's shuffle buffer."""
    bucket_batches: int = 16
    """Batches per length-bucketing pool: samples are sorted by length within a pool of this many batches
    before being cut into batches (1 turns bucketing off)."""

    def check(self, flag: str = "--data.loader") -> None:
        """Validate, naming the CLI flag in every error."""
        if self.num_workers < 0:
            raise ValueError(f"{flag}.num_workers ({self.num_workers}) must not be negative")
        if self.shuffle_buffer < 1:
            raise ValueError(f"{flag}.shuffle_buffer ({self.shuffle_buffer}) must be at least 1")
        if self.bucket_batches < 1:
            raise ValueError(f"{flag}.bucket_batches ({self.bucket_batches}) must be at least 1")


class ShardDataModule(L.LightningDataModule):
    """Streams homogeneous, length-bucketed, tokenized batches from webdataset shards in two stages.

    Stage 1 (``stage1.steps`` batches) then stage 2 (``stage2.steps``) run in one ``fit``; ``total_steps``
    is their sum, the value for ``trainer.max_steps`` (optimizer steps times ``accumulate_grad_batches``).
    Every batch carries ``stage`` and ``source`` (see ``mlembed/batch.py``).
    """

    def __init__(self, stage1: StageSettings, stage2: StageSettings | None = None,
                 loader: LoaderSettings | None = None, tokenizer: TextTokenizer | None = None,
                 build_demo: str | None = None, instruction_template: str = DEFAULT_TEMPLATE,
                 verify: str = "full", skip_damaged: bool = False):
        """Args:
            stage1: The retrieval pre-heat stage.
            stage2: The multi-task stage with instructions (optional).
            loader: Streaming settings.
            tokenizer: The model's tokenizer (the CLI links it from the model; tests pass one).
            build_demo: Build the embedded demo data (``mlembed.demo.data``) into this directory before
                training when it is not complete there yet (configs/demo.yaml: ``data/demo``).
            instruction_template: How an instruction goes before a query in tasks without their own template in
                ``templates``. The CLI links it from the model's, so training formats queries exactly as the
                trained model's ``embed(instruction=...)`` does.
            verify: How shards with a manifest are checked as they are read: ``full`` (the default: the number of
                samples at the end of each shard, and the SHA-256 the writer recorded, hashed as the bytes are
                parsed; shards written before checksums were recorded get the count check) or ``count`` (the
                count alone). Both cost nothing measurable (``benchmarks/bench_loader_tokens.py``, section 2). A
                mismatch stops the run naming the shard.
            skip_damaged: Skip damaged shards instead of stopping: each is named in a warning and counted in the
                ``train/damaged_shards`` metric. The samples a shard yielded before its damage showed are kept.
        """
        super().__init__()
        self.build_demo = build_demo
        self.stage1, self.stage2 = stage1, stage2
        self.loader = loader or LoaderSettings()
        self.verify, self.skip_damaged = verify, skip_damaged
        ShardReader(verify, skip_damaged)  # checks --data.verify now, not in a loader worker
        # Saved in checkpoints (as plain dicts, which load with weights_only), so that a resume can check that
        # the negatives and instructions did not change.
        self.save_hyperparameters({"stage1": asdict(stage1), "stage2": None if stage2 is None else asdict(stage2),
                                   "loader": asdict(self.loader), "build_demo": build_demo})
        self.tokenizer = tokenizer
        self.instruction_template = instruction_template
        self.stage1.check("--data.stage1")
        if self.stage2 is not None:
            self.stage2.check("--data.stage2")
        self.loader.check()
        if not any(s.epochs > 0 for _, s in self.stages) and self.total_steps < 1:
            raise ValueError("--data.stage1.steps + --data.stage2.steps must be at least 1")
        self._epoch_plans: dict[tuple[int, int], dict[str, int]] = {}

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node before any dataloader exists, so ranks never race.
        if self.build_demo:
            from mlembed.demo.data import build_demo

            build_demo(self.build_demo)

    @property
    def stages(self) -> list[tuple[int, StageSettings]]:
        """``(number, settings)`` of the configured stages."""
        return [(1, self.stage1)] + ([(2, self.stage2)] if self.stage2 is not None else [])

    @property
    def total_steps(self) -> int:
        """Training batches of both stages (for the attached trainer's world size): ``trainer.max_steps``."""
        return self.steps_for(self._rank()[1])

    def steps_for(self, world: int) -> int:
        """Training batches of both stages on ``world`` processes (stages given in epochs depend on it)."""
        return sum(self.stage_steps(number, settings, world) for number, settings in self.stages)

    def stage_steps(self, number: int, settings: StageSettings, world: int) -> int:
        """Batches of one stage: its ``steps``, or ``epochs`` times the batches of one epoch over its shards."""
        if settings.epochs <= 0:
            return settings.steps
        per_epoch = sum(self.epoch_batches(number, settings, world).values())
        return int(round(settings.epochs * per_epoch))

    def epoch_batches(self, number: int, settings: StageSettings, world: int) -> dict[str, int]:
        """Source -> its batches in one epoch of stage ``number`` on ``world`` processes (``epochs`` stages)."""
        key = (number, world)
        if key not in self._epoch_plans:
            flag = f"--data.stage{number}"
            sources = resolve_sources(settings.shards, None, flag, mixing=False)  # an epoch mixes by size alone
            unknown = [s.name for s in sources if s.samples is None]
            if unknown:
                raise ValueError(f"{flag}.epochs needs each source's sample count from a shard manifest, but "
                                 f"{', '.join(unknown)} has none; give its directory, or set {flag}.steps")
            step = settings.batch_size * world
            batches = {s.name: s.samples // step for s in sources}
            if not sum(batches.values()):
                raise ValueError(f"{flag}.epochs: no source of {flag}.shards holds a whole global batch of {step} "
                                 f"samples ({settings.batch_size} per process x {world} processes)")
            self._epoch_plans[key] = {name: n for name, n in batches.items() if n > 0}
        return self._epoch_plans[key]

    def stage_at(self, step: int) -> int:
        """The stage of global batch ``step``."""
        return 1 if step < self.stage_steps(1, self.stage1, self._rank()[1]) else 2

    def describe(self, world: int) -> str:
        """One line per stage: its length, and for a stage in epochs how that follows from the data."""
        lines = []
        for number, settings in self.stages:
            steps = self.stage_steps(number, settings, world)
            if settings.epochs > 0:
                batches = self.epoch_batches(number, settings, world)
                lines.append(f"stage {number}: {settings.epochs:g} epochs x {sum(batches.values()):,} batches "
                             f"({len(batches)} sources, global batch {settings.batch_size} x {world} processes) = "
                             f"{steps:,} steps")
            elif steps:
                lines.append(f"stage {number}: {steps:,} steps")
        return "\n".join(lines)

    def _collator(self, number: int, settings: StageSettings) -> Collator:
        if self.tokenizer is None:
            raise ValueError("ShardDataModule has no tokenizer: link it from the model (--data.tokenizer)")
        return Collator(
            self.tokenizer, stage=number, instructions=settings.instructions,
            templates={t: settings.templates.get(t, self.instruction_template) for t in TASKS},
            num_negatives={**DEFAULT_NEGATIVES, **settings.num_negatives}, negative_draw=settings.negative_draw,
        )

    def plans(self, val: bool = False) -> list[StagePlan]:
        """The stage plans for training (``val=False``) or validation."""
        out = []
        for number, settings in self.stages:
            specs = settings.val_shards if val else settings.shards
            split = "train"
            if val and not specs and (settings.steps > 0 or settings.epochs > 0):
                specs, split = held_out_specs(settings.shards), "val"  # the build's own held-out shards
            elif val and specs and held_out_specs(specs) == specs:
                split = "val"  # val_shards named a --val-fraction build: its held-out shards, not its training ones
            steps = 0 if val else self.stage_steps(number, settings, self._rank()[1])
            if not specs or (not val and steps == 0):
                continue
            flag = f"--data.stage{number}"
            sources = resolve_sources(specs, None if val else settings.weights, flag, mixing=not val, split=split)
            if settings.instructions and not val:
                _check_instructions(sources, flag)
            batch_size = (settings.val_batch_size or settings.batch_size) if val else settings.batch_size
            epoch = None
            if settings.epochs > 0 and not val:
                epoch = self.epoch_batches(number, settings, self._rank()[1])
            out.append(StagePlan(number, steps if not val else settings.steps, batch_size, sources,
                                 self._collator(number, settings), epoch))
        return out

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_stream(self, rank: int = 0, world: int = 1) -> TrainStream:
        """The training stream of one rank (tests build several to simulate ranks)."""
        return TrainStream(
            self.plans(), seed=self.loader.seed, workers=self.loader.num_workers, rank=rank, world=world,
            shuffle_buffer=self.loader.shuffle_buffer, bucket_batches=self.loader.bucket_batches,
            reader=ShardReader(self.verify, self.skip_damaged),
        )

    def val_stream(self, rank: int = 0, world: int = 1) -> EpochStream:
        """One pass over the held-out shards of both stages."""
        return EpochStream(self.plans(val=True), rank=rank, world=world,
                           bucket_batches=self.loader.bucket_batches, seed=self.loader.seed,
                           reader=ShardReader(self.verify, self.skip_damaged))

    def train_dataloader(self) -> ResumableLoader:
        rank, world = self._rank()
        return ResumableLoader(self.train_stream(rank, world), num_workers=self.loader.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        if not self.plans(val=True):
            return []
        rank, world = self._rank()
        return DataLoader(self.val_stream(rank, world), batch_size=None, num_workers=self.loader.num_workers)

    def test_dataloader(self) -> DataLoader:
        """The held-out shards (``val_shards``) for ``python -m mlembed test``: the loss per source."""
        return self._held_out("test")

    def predict_dataloader(self) -> DataLoader:
        """The held-out shards for ``python -m mlembed predict``: the queries' embeddings, batch by batch."""
        return self._held_out("predict")

    def _held_out(self, subcommand: str) -> DataLoader:
        if not self.plans(val=True):
            raise ValueError(f"`{subcommand}` reads the held-out shards: set --data.stage1.val_shards or "
                             "--data.stage2.val_shards, or build the shards with --val-fraction")
        return self.val_dataloader()


def _check_instructions(sources: list, flag: str) -> None:
    """Refuse ``instructions: true`` on shards whose manifests say that no record has an instruction.

    It would do nothing, silently: the released F2LLM data, for one, carries no instruction field (whatever
    instruction a source has is already part of its query text). Shards without a manifest, or written before
    instructions were counted, are not checked.
    """
    counts = [info.instructions for source in sources for info in source.checks.values()]
    covered = all(len(source.checks) == len(source.urls) for source in sources)
    if counts and covered and None not in counts and sum(counts) == 0:
        raise ValueError(f"{flag}.instructions is true but no record of {flag}.shards has an instruction (their "
                         f"manifests count 0), so it would change nothing; set {flag}.instructions=false, or write "
                         "the shards from records with an 'instruction' field")
