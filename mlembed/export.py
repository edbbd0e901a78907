"""Export a trained model at one (rank, depth, dim) point of its 3D Matryoshka grid.

Two layouts (``--mode``):

- ``compat``: an ordinary Hugging Face model directory (the MEL factors multiplied back into a dense embedding
  matrix, the layers above ``depth`` dropped) that ``transformers.AutoModel`` loads without mlembed, plus the
  sentence-transformers files, so ``SentenceTransformer(DIR)`` embeds exactly like mlembed.
- ``efficiency``: the factors ``A[:, :k]`` and ``B[:k]`` instead of the dense matrix (``k x (vocab + hidden)``
  numbers instead of ``vocab x hidden``); only ``mlembed.load`` reads it.

Both hold the tokenizer and ``mlembed.json`` (the point and how texts are turned into vectors), from which
``mlembed.load(DIR)`` rebuilds the encoder. The export is written into a temporary directory next to the
target and renamed at the end, so a crash never leaves a half-written export and an existing one is untouched
until the new one is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from mlembed.artifact import (
    FACTORIZED_WEIGHTS,
    MANIFEST,
    MODES,
    REMOTE_BASE_KEY,
    REMOTE_MODEL_TYPE,
    REMOTE_POINT_KWARGS,
    REMOTE_RANK_KEY,
    REMOTE_TRAINED_KEYS,
    ST_POOLING,
    ExportManifest,
    Point,
    check_exportable,
    warn_untrained,
)
from mlembed.axes.mel import FactorizedEmbedding
from mlembed.card import TrainingRecord, prompts, write_card
from mlembed.encoder import Encoder
from mlembed.loading import encoder_from_checkpoint, read_checkpoint
from mlembed.paths import check_output, staged_directory

#: The legacy (sentence-transformers 2.x - 6.x) pooling-config key of each mode.
ST_POOLING_KEYS = {"cls": "cls_token", "mean": "mean_tokens", "max": "max_tokens",
                   "mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "lasttoken": "lasttoken"}
#: Probe texts whose token ids must match between mlembed and the exported tokenizer.
REMOTE_CODE = Path(__file__).parent / "remote" / "modeling_mlembed.py"
"""The modelling code an efficiency export carries (it imports only torch and transformers)."""
PROBES = ("Hello world", "Où est la gare ?", "a " * 600)


# -- public API -------------------------------------------------------------------------------------
def export(
    source: Encoder | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    mode: str = "compat",
    rank: int | None = None,
    depth: int | None = None,
    dim: int | None = None,
    overwrite: bool = False,
    record: TrainingRecord | None = None,
) -> Path:
    """Export ``source`` at (rank, depth, dim) into ``out_dir``, with its model card.

    Args:
        source: a trained Encoder (an EmbeddingModule's ``encoder``; the module itself is accepted too), or
            the path of a Lightning checkpoint.
        out_dir: the export directory; it must not exist or be empty unless ``overwrite``.
        mode: ``compat`` (dense Hugging Face + sentence-transformers directory) or ``efficiency`` (MEL factors).
        rank: MEL rank k (default: the trained maximum; must be None when MEL is off).
        depth: number of layers kept (default: all).
        dim: embedding size D (MRL prefix; default: the hidden size).
        overwrite: replace a non-empty ``out_dir``.
        record: what the run recorded, for the model card and the prompts (default: read from the checkpoint
            when ``source`` is one; none for an encoder or module given without it).

    Returns:
        The export directory.
    """
    if mode not in MODES:
        raise ValueError(f"--mode {mode!r} must be one of {MODES}")
    out = Path(out_dir)
    check_target(out, overwrite)
    encoder, found = _encoder_of(source)
    point = check_exportable(encoder.shape(), (mode,), rank=rank, depth=depth, dim=dim)
    warn_untrained(encoder.points(), rank=rank, depth=depth, dim=dim)
    with staged_directory(out) as staging:
        _write_export(encoder, point, mode, staging, record or found, name=out.name)
    return out


def _encoder_of(source) -> tuple[Encoder, TrainingRecord | None]:
    """The encoder to export, and the run's record when ``source`` is a checkpoint (read once for both)."""
    if isinstance(source, Encoder):
        return source.build(), None
    if isinstance(getattr(source, "encoder", None), Encoder):  # an EmbeddingModule
        source.configure_model()
        return source.encoder, None
    checkpoint = read_checkpoint(source)
    return encoder_from_checkpoint(checkpoint, source), TrainingRecord.from_checkpoint(source, checkpoint)


@contextlib.contextmanager
def deployable(encoder: Encoder, point: Point, *, dense: bool) -> Iterator[nn.Module]:
    """The encoder's Hugging Face model as deployed at ``point``, without copying any layer.

    Inside the context the model has ``point.depth`` layers (its config, per-layer lists included, says so:
    ``Backbone.truncated``) and a token embedding at ``point.rank``: a dense ``nn.Embedding`` (``dense``) or
    factors truncated to the rank. Everything is restored on exit, so training or evaluation goes on as before.
    """
    model = encoder.backbone.model
    original = model.get_input_embeddings()
    with encoder.backbone.truncated(point.depth):
        try:
            model.set_input_embeddings(_embedding_at(original, point.rank, dense))
            yield model
        finally:
            model.set_input_embeddings(original)


# -- pieces of an export ----------------------------------------------------------------------------
def _write_export(encoder: Encoder, point: Point, mode: str, directory: Path, record: TrainingRecord | None, *,
                  name: str) -> None:
    """Every file of the export: weights and config, tokenizer, sentence-transformers files (with the trained
    instructions as prompts), manifest, model card."""
    try:
        prompt_map = prompts(record, encoder.instruction_template)
    except Exception as err:  # a record the card cannot read must not cost the export (the end of a long fit)
        warnings.warn(f"the trained instructions could not be read for the export's prompts: {err}", stacklevel=2)
        prompt_map, record = {}, None
    st = type(encoder.pooling).__name__ in ST_POOLING  # sentence-transformers has no other pooling
    with deployable(encoder, point, dense=mode == "compat") as model:
        if mode == "compat":
            model.save_pretrained(directory)
        else:
            _write_factorized(model, directory)
        if st:
            _write_sentence_transformers(encoder, point, directory, per_call=mode == "efficiency", prompts=prompt_map)
    eos_in_tokenizer = _write_tokenizer(encoder, directory)
    manifest = _manifest(encoder, point, mode, eos_in_tokenizer)
    manifest.write(directory)
    _declare_points(directory, manifest)
    backbone = encoder.backbone.config
    named = ((record.model.get("backbone") or {}).get("pretrained") if record else None) or backbone.pretrained
    card = {"name": name, "trained": encoder.points(), "base": backbone.pretrained if backbone.is_hub_id else None,
            "backbone": named or f"{(backbone.config or {}).get('model_type', 'a')} model, randomly initialised",
            "sentence_transformers": st, "prompt_map": prompt_map}
    try:
        write_card(directory, manifest, record, **card)
    except Exception as err:  # as above: the card then says only what the export itself knows
        warnings.warn(f"the model card could not use the run's record ({err}); it was written without it",
                      stacklevel=2)
        write_card(directory, manifest, None, **card)


def _declare_points(directory: Path, manifest: ExportManifest) -> None:
    """Serving metadata: the points the export was trained to serve, where serving stacks and its code read them.

    ``config.json``'s ``matryoshka_dimensions`` (the exported width among them, trained or not) and
    ``is_matryoshka`` are what stacks that honour a request's ``dimensions`` read (vLLM's OpenAI-compatible
    embeddings endpoint, for one); a width not listed there is refused by them rather than served untrained. An
    efficiency export also lists its trained ranks and depths, which its modelling code serves per call.
    """
    path = directory / "config.json"
    config = json.loads(path.read_text())
    dims = sorted({*manifest.dims, manifest.dim})
    config["is_matryoshka"] = len(dims) > 1
    config["matryoshka_dimensions"] = dims
    if manifest.mode == "efficiency":
        grid = manifest.grid
        config[REMOTE_TRAINED_KEYS["rank"]] = sorted(grid.ranks)
        config[REMOTE_TRAINED_KEYS["depth"]] = sorted(grid.depths)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@torch.no_grad()
def _embedding_at(embedding: nn.Module, rank: int | None, dense: bool) -> nn.Module:
    """The token embedding at ``rank``: dense matrix A_k B_k, or factors cut to k (detached copies)."""
    if not isinstance(embedding, FactorizedEmbedding):
        return embedding  # MEL off: the ordinary matrix is already what gets deployed
    if dense:
        return nn.Embedding.from_pretrained(embedding.materialize(rank).detach().clone(), freeze=False)
    vocab, hidden = embedding.A.shape[0], embedding.B.shape[1]
    cut = FactorizedEmbedding(vocab, hidden, rank, dtype=embedding.A.dtype)
    cut.A.copy_(embedding.A[:, :rank])
    cut.B.copy_(embedding.B[:rank])
    cut.initialized.fill_(True)
    return cut


def _write_factorized(model: nn.Module, directory: Path) -> None:
    """Efficiency mode: the config and every weight, the token embedding as its factors A and B, and the modelling
    code that builds that model in plain transformers (``trust_remote_code=True``), named in ``auto_map``."""
    embedding = model.get_input_embeddings()
    base = model.config.to_dict()
    base.pop("transformers_version", None)
    dtype = str(base.get("dtype") or base.get("torch_dtype") or "float32").removeprefix("torch.")
    config = {"model_type": REMOTE_MODEL_TYPE, "architectures": ["MLEmbedFactorizedModel"],
              "auto_map": {"AutoConfig": f"{REMOTE_CODE.stem}.MLEmbedFactorizedConfig",
                           "AutoModel": f"{REMOTE_CODE.stem}.MLEmbedFactorizedModel"},
              REMOTE_BASE_KEY: base, REMOTE_RANK_KEY: int(embedding.A.shape[1]), "dtype": dtype,
              **{key: base[key] for key in ("hidden_size", "num_hidden_layers", "vocab_size") if key in base}}
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shutil.copyfile(REMOTE_CODE, directory / REMOTE_CODE.name)
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(directory / FACTORIZED_WEIGHTS), metadata={"format": "pt", "mlembed": "factorized"})


def _write_tokenizer(encoder: Encoder, directory: Path) -> bool:
    """Save the tokenizer so that it alone yields mlembed's token ids; returns whether it appends the EOS.

    mlembed appends the EOS itself for last-token pooling; sentence-transformers and plain transformers only
    run the tokenizer, so the saved tokenizer's post-processor appends it instead (truncation then keeps room
    for it, as mlembed does). The result is checked against mlembed's own tokenization on a few probes.
    """
    from mlembed.text import load_tokenizer

    text_tokenizer = encoder.text_tokenizer
    tok = load_tokenizer(text_tokenizer.path)  # a fresh copy: the module's own tokenizer stays as it is
    tok.padding_side = "right"  # positions of right-padded rows match mlembed's (it right-pads)
    tok.model_max_length = text_tokenizer.max_seq_length
    if text_tokenizer.append_eos:
        _append_eos_in_post_processor(tok, text_tokenizer.path)
    expected = text_tokenizer(list(PROBES))
    got = tok(list(PROBES), truncation=True, max_length=text_tokenizer.max_seq_length, padding=True,
              return_tensors="pt")
    if not torch.equal(expected["input_ids"][expected["attention_mask"].bool()],
                       got["input_ids"][got["attention_mask"].bool()]):
        raise RuntimeError(f"the exported tokenizer of {text_tokenizer.path} does not reproduce mlembed's token ids")
    tok.save_pretrained(directory)
    return text_tokenizer.append_eos


def _append_eos_in_post_processor(tok, path: str) -> None:
    from tokenizers import processors

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or tok.eos_token is None:
        raise ValueError(f"cannot export the tokenizer at {path}: last-token pooling needs a fast tokenizer with EOS")
    eos = tok.eos_token
    appender = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, tok.eos_token_id)]
    )
    existing = backend.post_processor
    backend.post_processor = appender if existing is None else processors.Sequence([existing, appender])


def _write_sentence_transformers(encoder: Encoder, point: Point, directory: Path, *, per_call: bool,
                                 prompts: dict[str, str]) -> None:
    """The sentence-transformers layout: Transformer (root) -> Pooling [-> Dense] -> Normalize.

    The module-type names and files are the long-standing ones that sentence-transformers 2.x to 6.x all read.
    Below the hidden size a bias-free identity ``Dense`` keeps the first ``dim`` features BEFORE ``Normalize``,
    so ``encode(texts)`` gives mlembed's unit vectors at the exported width. (sentence-transformers applies its
    own ``truncate_dim`` after every module, so a narrower width asked of ``encode`` needs
    ``normalize_embeddings=True`` to be unit length again; ``truncate_dim`` is still written, for tools that read
    the width from it.) ``per_call`` (the efficiency export) declares the keywords of the export's code that choose
    the rank and depth, so that ``encode(texts, mlembed_rank=..., mlembed_depth=...)`` passes them to the model.
    ``prompts`` (``{source: the text before a query}``) are the instructions the model was trained with.
    """
    hidden = encoder.backbone.hidden_size
    names = ["Pooling"] + (["Dense"] if point.dim < hidden else []) + ["Normalize"]
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    if per_call:
        modules[0]["kwargs"] = list(REMOTE_POINT_KWARGS)
    modules += [{"idx": i, "name": str(i), "path": f"{i}_{name}", "type": f"sentence_transformers.models.{name}"}
                for i, name in enumerate(names, start=1)]
    mode = ST_POOLING[type(encoder.pooling).__name__]  # check_exportable refused any other pooling
    pooling = {"word_embedding_dimension": hidden}
    pooling |= {f"pooling_mode_{key}": name == mode for name, key in ST_POOLING_KEYS.items()}
    config = {"similarity_fn_name": "cosine", "prompts": prompts, "default_prompt_name": None}
    files = {
        "modules.json": modules,
        "sentence_bert_config.json": {"max_seq_length": encoder.text_tokenizer.max_seq_length, "do_lower_case": False},
        "config_sentence_transformers.json": config,
        "1_Pooling/config.json": pooling,
        f"{len(names)}_Normalize/config.json": {},
    }
    if point.dim < hidden:
        config["truncate_dim"] = point.dim
        files["2_Dense/config.json"] = {"in_features": hidden, "out_features": point.dim, "bias": False,
                                        "activation_function": "torch.nn.modules.linear.Identity"}
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2) + "\n")
    if point.dim < hidden:
        keep = {"linear.weight": torch.eye(point.dim, hidden)}  # [dim, hidden]: the first dim features
        save_file(keep, str(directory / "2_Dense" / "model.safetensors"))
        torch.save(keep, directory / "2_Dense" / "pytorch_model.bin")  # for releases that predate safetensors


def _manifest(encoder: Encoder, point: Point, mode: str, eos_in_tokenizer: bool) -> ExportManifest:
    trained = encoder.points()
    pooling = type(encoder.pooling)
    return ExportManifest(
        mode=mode,
        rank=point.rank,
        depth=point.depth,
        dim=point.dim,
        hidden_size=encoder.backbone.hidden_size,
        pooling=f"{pooling.__module__}.{pooling.__qualname__}",
        instruction_template=encoder.instruction_template,
        max_seq_length=encoder.text_tokenizer.max_seq_length,
        append_eos=encoder.text_tokenizer.append_eos,
        eos_in_tokenizer=eos_in_tokenizer,
        ranks=[r for r in trained.ranks if r is not None and r <= (point.rank or 0)],
        depths=[d for d in trained.depths if d <= point.depth],
        dims=[d for d in trained.dims if d <= point.dim],
    )


# -- files and directories --------------------------------------------------------------------------
def check_target(out: Path, overwrite: bool, flag: str = "--out", switch: str = "pass --overwrite") -> None:
    """Refuse ``out`` unless it is absent, empty, or (``overwrite``) an export: one holding ``mlembed.json``."""
    check_output(out, flag, overwrite, owned=lambda path: (path / MANIFEST).is_file(),
                 what=f"export (an export holds {MANIFEST})", switch=switch)


def directory_bytes(directory: str | os.PathLike) -> int:
    """Total size in bytes of the files under ``directory``."""
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())
