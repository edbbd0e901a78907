"""The model card (``README.md``) and the sentence-transformers prompts of an export, from what the run recorded.

Nothing here is a constant about the model: the card is written from the export's manifest (its point and the
points it serves), the run's saved settings (the module's and the data module's hyperparameters, the steps
taken), the shard manifests those settings name (sources, sizes, languages, instructions), the grid the run
scored (``grid/grid.csv`` and its Pareto plot) and the run's saved config (``config.yaml``, copied beside the
card as the command that reproduces it). What the run did not record, the card says it does not know.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlembed.artifact import RUN_LOG_KEY, ExportManifest, PointGrid

RUN_CONFIG = "config.yaml"
"""What ``mlembed fit`` (LightningCLI) saves in the run's log folder: the whole config of the run."""
TRAINING_CONFIG = "training_config.yaml"
"""The run's config, copied into the export."""
GRID_PLOT = "pareto_params.png"
"""The grid's plot of score against parameters, copied into the export beside the card."""
CARD = "README.md"


@dataclass
class TrainingRecord:
    """What a run recorded about itself.

    Args:
        model: the module's saved hyperparameters, as plain data.
        data: the data module's saved hyperparameters (None: trained without ``ShardDataModule``).
        steps: optimizer steps taken.
        log_dir: the run's log folder (its ``config.yaml``), when known.
        workdir: where the run's relative paths (its shard directories) are resolved.
        grid_dir: where the run's ``GridEvaluation`` wrote its final grid, when it had one.
        checkpoint: the checkpoint the export was made from (for the reproduce command).
    """

    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] | None = None
    steps: int | None = None
    log_dir: Path | None = None
    workdir: Path | None = None
    checkpoint: Path | None = None
    grid_dir: Path | None = None
    _manifests: list | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, checkpoint: dict[str, Any]) -> TrainingRecord:
        """The record of a Lightning checkpoint: its hyperparameters, step, and the run folder and grid that
        ``RunLog`` recorded (for checkpoints written before it did: the folder the checkpoint lies in)."""
        path = Path(path)
        run = checkpoint.get(RUN_LOG_KEY) or {}
        workdir = Path(run["cwd"]) if run.get("cwd") else None
        record = cls(model=plain(checkpoint.get("hyper_parameters") or {}),
                     data=plain(checkpoint.get("datamodule_hyper_parameters")) or None,
                     steps=checkpoint.get("global_step"), workdir=workdir, checkpoint=path)
        if run.get("log_dir") or "grid" in run:
            record.log_dir = record.resolve(run["log_dir"]) if run.get("log_dir") else None
            record.grid_dir = record.resolve(run["grid"]) if run.get("grid") else None
        elif path.parent.name == "checkpoints":
            record.log_dir = path.parent.parent
            record.grid_dir = record.log_dir / "grid"
        return record

    @classmethod
    def from_trainer(cls, trainer, module) -> TrainingRecord:
        """The record of the run in memory (the ``ModelExport`` callback at the end of fit; call it on every rank,
        as ``trainer.log_dir`` is a collective)."""
        datamodule = getattr(trainer, "datamodule", None)
        log_dir = trainer.log_dir or trainer.default_root_dir
        grids = [c.grid_dir for c in trainer.callbacks if getattr(c, "grid_dir", None) is not None]
        return cls(model=plain(dict(module.hparams)),
                   data=plain(dict(datamodule.hparams)) if datamodule is not None else None,
                   steps=trainer.global_step, log_dir=Path(log_dir) if log_dir else None, workdir=Path.cwd(),
                   grid_dir=Path(grids[0]) if grids else None)

    def resolve(self, path: str) -> Path:
        """A path the run named, as seen from here."""
        candidate = Path(path)
        if not candidate.is_absolute() and self.workdir is not None:
            candidate = self.workdir / candidate
        return candidate

    def stages(self) -> list[tuple[int, dict[str, Any]]]:
        """``(number, settings)`` of the recorded training stages."""
        data = self.data or {}
        return [(n, data[f"stage{n}"]) for n in (1, 2) if isinstance(data.get(f"stage{n}"), dict)]

    def manifests(self) -> list[tuple[int, str, Any]]:
        """``(stage, directory, ShardManifest)`` of every recorded shard directory that has a manifest (read once:
        the card asks for them in several sections)."""
        from mlembed.data.manifest import MANIFEST_NAME, ShardManifest

        if self._manifests is not None:
            return self._manifests
        out = []
        for number, stage in self.stages():
            for entry in stage.get("shards") or []:
                directory = self.resolve(str(entry))
                if (directory / MANIFEST_NAME).is_file():
                    out.append((number, str(entry), ShardManifest.load(directory)))
        self._manifests = out
        return out


def plain(value: Any) -> Any:
    """Settings as plain data: dataclasses and mappings as dicts, sequences as lists, other objects by class."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return f"{type(value).__module__}.{type(value).__qualname__}"


# -- prompts ----------------------------------------------------------------------------------------------
def prompts(record: TrainingRecord | None, instruction_template: str) -> dict[str, str]:
    """``{source: prompt}``: what sentence-transformers puts before a query to reproduce the trained instruction.

    For every source of a stage that trained with instructions, its most frequent recorded instruction, formatted
    by the template the stage used for its task (``templates``, else the model's ``instruction_template``). A template that does not end
    with ``{query}`` cannot be a prefix, so its tasks get no prompt.
    """
    if record is None:
        return {}
    out: dict[str, str] = {}
    for number, _, shards in record.manifests():
        stage = dict(record.stages())[number]
        if not stage.get("instructions"):
            continue
        tasks = {source: info["task"] for source, info in shards.sources().items()}
        for source, counts in shards.instructions().items():
            template = (stage.get("templates") or {}).get(tasks.get(source)) or instruction_template
            head, marker, tail = template.partition("{query}")
            if marker and not tail:
                instruction = max(sorted(counts), key=counts.get)
                out[source] = head.format(instruction=instruction)
    return dict(sorted(out.items()))


# -- the card --------------------------------------------------------------------------------------------
def write_card(directory: Path, manifest: ExportManifest, record: TrainingRecord | None, *, name: str,
               trained: PointGrid, base: str | None, backbone: str, sentence_transformers: bool,
               prompt_map: dict[str, str]) -> Path:
    """Write ``README.md`` (and copy the run's config and grid plot) into the export ``directory``.

    Args:
        directory: the export being written (a staging directory, renamed when complete).
        manifest: its manifest.
        name: the export's final directory name, as the card calls the model.
        trained: every point the model was trained for (the export serves those up to its own).
        record: what the run recorded (None: the model came without a run, e.g. an encoder built in Python).
        base: the starting model's hub id, for the front matter (None when it is a local path or random).
        backbone: how the starting model was named (a hub id, a path, or its architecture).
        sentence_transformers: whether the export holds the sentence-transformers files.
        prompt_map: ``{source: prompt}`` (:func:`prompts`), listed on the card.
    """
    sections = [
        _front_matter(record, base, sentence_transformers),
        _summary(name, manifest, backbone),
        _loading(name, manifest, sentence_transformers),
        _points(directory, manifest, record),
        _data(record),
        _prompts(prompt_map, sentence_transformers),
        _settings(record, trained),
        _reproduce(directory, name, manifest, record),
    ]
    path = directory / CARD
    path.write_text("\n".join(s for s in sections if s), encoding="utf-8")
    return path


def _front_matter(record: TrainingRecord | None, base: str | None, st: bool) -> str:
    languages: dict[str, int] = {}
    for _, _, shards in record.manifests() if record else []:
        for tag, count in shards.languages().items():
            primary = tag.replace("_", "-").split("-")[0].lower()
            languages[primary] = languages.get(primary, 0) + count
    lines = ["---", f"library_name: {'sentence-transformers' if st else 'transformers'}",
             f"pipeline_tag: {'sentence-similarity' if st else 'feature-extraction'}",
             "tags:", *(f"- {t}" for t in ["mlembed", "matryoshka", "3d-matryoshka", "feature-extraction",
                                           *(["sentence-transformers"] if st else [])])]
    if base:
        lines.append(f"base_model: {base}")
    if languages:
        lines += ["language:", *(f"- {tag}" for tag in sorted(languages, key=lambda t: (-languages[t], t)))]
    lines += ["# license: choose the license of this model (and check the base model's and the data's)", "---", ""]
    return "\n".join(lines)


def _summary(name: str, manifest: ExportManifest, backbone: str) -> str:
    rank = "MEL off (an ordinary token embedding)" if manifest.rank is None else f"rank {manifest.rank}"
    kind = ("the token embedding kept as its two low-rank factors (loads with `trust_remote_code=True`, or "
            "without it through `mlembed.load`)" if manifest.mode == "efficiency"
            else "a plain Hugging Face model (the factors multiplied back into a dense embedding)")
    return (f"# {name}\n\nA text-embedding model trained with 3D Matryoshka Learning (mlembed) from "
            f"`{backbone}`, exported at {rank}, depth {manifest.depth} (layers) and {manifest.dim} dimensions, in "
            f"`{manifest.mode}` mode: {kind}. Vectors are L2-normalised; compare them by cosine similarity.\n")


def _loading(name: str, manifest: ExportManifest, st: bool) -> str:
    remote = ", trust_remote_code=True" if manifest.mode == "efficiency" else ""
    pooling = manifest.pooling.rsplit(".", 1)[-1]
    pooled = {"MeanPooling": "(states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)",
              "ClsPooling": "states[:, 0]",
              "LastTokenPooling": "states[torch.arange(len(states)), mask.sum(1) - 1]"}.get(
        pooling)
    texts = '["Hello world", "Bonjour le monde"]'
    lines = ["## Load it", "", "Three ways, each giving the same unit vectors:", "", "```python"]
    if st:
        lines += ["from sentence_transformers import SentenceTransformer", "",
                  f'model = SentenceTransformer("{name}"{remote})',
                  f"st_vectors = model.encode({texts})", ""]
    if pooled:
        lines += ["import torch", "import torch.nn.functional as F",
                  "from transformers import AutoModel, AutoTokenizer", "",
                  f'tokenizer = AutoTokenizer.from_pretrained("{name}"{remote})',
                  f'model = AutoModel.from_pretrained("{name}"{remote})',
                  f'batch = tokenizer({texts}, padding=True, truncation=True, return_tensors="pt")',
                  "with torch.no_grad():",
                  "    states, mask = model(**batch).last_hidden_state, batch[\"attention_mask\"]",
                  f"hf_vectors = F.normalize(({pooled})[:, :{manifest.dim}], dim=-1)", ""]
    lines += ["import mlembed  # pip install mlembed", "", f'model = mlembed.load("{name}")',
              f"ml_vectors = model.encode({texts})", "```", ""]
    if manifest.instruction_template:
        lines += [f"Queries of tasks trained with an instruction take it through the template "
                  f"`{_inline(manifest.instruction_template)}`: `model.encode(queries, instruction=...)` in mlembed"
                  + (", `prompt_name=` (the prompts below) in sentence-transformers" if st else "")
                  + "; documents go in as they are.", ""]
    return "\n".join(lines)


def _points(directory: Path, manifest: ExportManifest, record: TrainingRecord | None) -> str:
    grid = manifest.grid
    if manifest.mode == "compat":  # dense at its one rank: the smaller ranks went when the factors were multiplied
        grid = PointGrid(ranks=(manifest.rank,), depths=grid.depths, dims=grid.dims)
    values = lambda xs: ", ".join("full" if x is None else str(x) for x in xs)  # noqa: E731
    lines = ["## The points it serves", "",
             "One loaded model serves every trained point below its own, per call, from the same weights:", "",
             "| axis | trained values served |", "|---|---|",
             f"| MEL rank (token embedding) | {values(grid.ranks)} |", f"| MLL depth (layers) | {values(grid.depths)} |",
             f"| MRL dim (embedding size) | {values(grid.dims)} |", ""]
    if manifest.mode == "efficiency":
        lines += ["`mlembed.load(DIR).encode(texts, rank=.., depth=.., dim=..)`; with the model's own code, "
                  "`model(**batch, mlembed_rank=.., mlembed_depth=..)` or sentence-transformers' "
                  "`encode(texts, mlembed_rank=.., mlembed_depth=.., truncate_dim=.., normalize_embeddings=True)`. "
                  "Serving stacks read the widths from `config.json`'s `matryoshka_dimensions`.", ""]
    else:
        lines += ["`mlembed.load(DIR).encode(texts, depth=.., dim=..)`; sentence-transformers' `truncate_dim` and "
                  "serving stacks' `dimensions` (from `config.json`'s `matryoshka_dimensions`) choose the width.", ""]
    lines += _scores(directory, manifest, record)
    return "\n".join(lines)


def _scores(directory: Path, manifest: ExportManifest, record: TrainingRecord | None) -> list[str]:
    """The grid's scores at the points this export serves, and its plot, when the run scored a grid."""
    grid_dir = record.grid_dir if record is not None else None
    table = grid_dir / "grid.csv" if grid_dir is not None else None
    if table is None or not table.is_file():
        return ["No evaluation grid was recorded with this run (`mlembed evaluate --model DIR --grid` scores "
                "one).", ""]
    scores: dict[tuple, dict] = {}
    tasks: set[str] = set()
    with table.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            point = tuple(None if row[axis] == "" else int(row[axis]) for axis in ("rank", "depth", "dim"))
            scores[point] = {"score": float(row["score"]), "params": int(row["params"])}
            tasks.add(row["task"])
    served = [p for p in scores if _within(p, manifest)]
    if not served:
        return [f"The run's grid ({table}) scored no point this export serves.", ""]
    lines = [f"Scores of the run's evaluation grid, scored at the end of the run, at these points (the mean of each "
             f"task's main metric over {', '.join(sorted(tasks))}; `{table.name}` of the run):", "",
             "| rank | depth | dim | parameters | score |", "|---|---|---|---|---|"]
    order = lambda p: tuple((1, 0) if v is None else (0, v) for v in p)  # noqa: E731
    for point in sorted(served, key=order, reverse=True):
        cells = ["full" if v is None else str(v) for v in point]
        lines.append(f"| {' | '.join(cells)} | {scores[point]['params'] / 1e6:.1f} M | {scores[point]['score']:.4f} |")
    lines.append("")
    plot = grid_dir / GRID_PLOT
    if plot.is_file():
        shutil.copyfile(plot, directory / GRID_PLOT)
        lines += [f"![score against parameters over the run's grid]({GRID_PLOT})", ""]
    return lines


def _within(point: tuple, manifest: ExportManifest) -> bool:
    rank, depth, dim = point
    limits = ((rank, manifest.rank), (depth, manifest.depth), (dim, manifest.dim))
    if manifest.mode == "compat" and rank != manifest.rank:  # a dense export serves its own rank only
        return False
    return all(v is None or limit is None or v <= limit for v, limit in limits) and (
        rank is None or manifest.rank is not None)


def _data(record: TrainingRecord | None) -> str:
    if record is None or not record.stages():
        return "## Training data\n\nNot recorded (the model was not trained by `mlembed fit` with shards).\n"
    lines = ["## Training data", "", "| stage | source | task | samples | with instruction |", "|---|---|---|---|---|"]
    found = {(number, entry) for number, entry, _ in record.manifests()}
    languages: dict[str, int] = {}
    for number, _, shards in record.manifests():
        instructions = {s.source: 0 for s in shards.shards}
        for shard in shards.shards:
            if shard.split == "train":
                instructions[shard.source] += shard.instructions or 0
        for source, info in sorted(shards.sources().items()):
            lines.append(f"| {number} | {source} | {info['task']} | {info['samples']:,} | "
                         f"{instructions.get(source, 0):,} |")
        for tag, count in shards.languages().items():
            languages[tag] = languages.get(tag, 0) + count
    missing = [f"stage {n}: `{e}`" for n, stage in record.stages() for e in stage.get("shards") or []
               if (n, str(e)) not in found]
    lines.append("")
    if missing:
        lines += [f"Shards without a manifest here (not counted): {', '.join(missing)}.", ""]
    if languages:
        ranked = sorted(languages, key=lambda t: (-languages[t], t))
        lines += [f"Languages ({len(ranked)}, by samples naming them): "
                  + ", ".join(f"{t} ({languages[t]:,})" for t in ranked) + ".", ""]
    return "\n".join(lines)


def _prompts(table: dict[str, str], st: bool) -> str:
    if not table:
        return ""
    lines = ["## Prompts", "", "The instruction each source was trained with (its most frequent one), as the text "
             "put before a query"
             + (" (sentence-transformers: `model.encode(queries, prompt_name=SOURCE)`):" if st else ":"), "",
             "| source | prompt |", "|---|---|"]
    lines += [f"| {source} | `{_inline(prompt)}` |" for source, prompt in table.items()]
    return "\n".join(lines) + "\n"


def _settings(record: TrainingRecord | None, trained: PointGrid) -> str:
    if record is None or not record.model:
        return ""
    model = record.model
    lines = ["## Training settings", ""]
    backbone = model.get("backbone") or {}
    lines.append(f"- starting model: `{backbone.get('pretrained') or 'random initialisation'}`"
                 + (f", max_seq_length {backbone['max_seq_length']}" if backbone.get("max_seq_length") else ""))
    values = {"mel": ("ranks", trained.ranks), "mll": ("depths", trained.depths), "mrl": ("dims", trained.dims)}
    for axis, (label, served) in values.items():
        settings = model.get(axis) or {}
        if settings.get("enabled") is False:
            lines.append(f"- {axis.upper()}: off")
        else:
            extra = f", weights {settings['weights']}" if settings.get("weights") else ""
            lines.append(f"- {axis.upper()}: {label} {', '.join(str(v) for v in served if v is not None)}{extra}")
    if model.get("loss"):
        lines.append("- loss: " + _pairs(model["loss"], model["loss"].keys()))
    if model.get("teacher"):
        lines.append(f"- teacher: `{_inline(str(model['teacher']))}`")
    if model.get("optimizer"):
        lines.append("- optimizer: " + _pairs(model["optimizer"], model["optimizer"].keys()))
    for number, stage in record.stages():
        lines.append(f"- stage {number}: " + _pairs(stage, ("steps", "epochs", "batch_size", "instructions",
                                                            "num_negatives", "weights")))
    if record.steps is not None:
        lines.append(f"- optimizer steps taken: {record.steps:,}")
    return "\n".join(lines) + "\n"


def _pairs(settings: dict, keys: Iterable[str]) -> str:
    shown = [f"{key} {_inline(str(settings[key]))}" for key in keys
             if key in settings and settings[key] not in (None, {}, [], "") and key != "enabled"
             and not (key == "epochs" and not settings[key])]  # a stage given in steps
    return ", ".join(shown) or "defaults"


def _reproduce(directory: Path, name: str, manifest: ExportManifest, record: TrainingRecord | None) -> str:
    lines = ["## Reproduce", ""]
    config = record.log_dir / RUN_CONFIG if record is not None and record.log_dir is not None else None
    point = " ".join(f"--{name} {value}" for name, value in (("rank", manifest.rank), ("depth", manifest.depth),
                                                             ("dim", manifest.dim)) if value is not None)
    checkpoint = record.checkpoint if record is not None and record.checkpoint else "CHECKPOINT"
    if config is not None and config.is_file():
        shutil.copyfile(config, directory / TRAINING_CONFIG)
        lines += [f"The run's whole config is `{TRAINING_CONFIG}` (saved by `mlembed fit`; it names its data "
                  "as the run saw it):", "", "```bash", f"python -m mlembed fit --config {TRAINING_CONFIG}",
                  f"python -m mlembed export --ckpt {checkpoint} --out {name} --mode {manifest.mode} "
                  f"{point}", "```", ""]
    else:
        lines += ["The run's config was not saved with it (trained outside `mlembed fit`); the settings above are "
                  "what its checkpoint recorded.", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """Text for inside backticks on one line."""
    return text.replace("\n", "\\n").replace("`", "'")
