"""An efficiency export loads without mlembed: its own modelling code (``auto_map``) builds the factorised model in
plain transformers and in sentence-transformers, in a fresh interpreter where importing mlembed is blocked.

The vectors equal ``mlembed.load(DIR).encode`` to 1e-5 on multilingual text, for an encoder (tiny BERT, mean
pooling) and a decoder (tiny Qwen3 with the real Qwen3 tokenizer, last-token pooling with the EOS the exported
tokenizer appends); the loaded token embedding is the two factors at the exported rank.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

import mlembed
from mlembed.artifact import (
    REMOTE_BASE_KEY,
    REMOTE_MODEL_TYPE,
    REMOTE_POINT_KWARGS,
    REMOTE_RANK_KEY,
    REMOTE_TRAINED_KEYS,
    ExportManifest,
)
from mlembed.export import REMOTE_CODE, export
from tests.test_export import POINT, TEXTS, fit_checkpoint

SMALL = {"rank": 8, "depth": 1}  # a trained point below the export's, served per call by the same loaded model

SCRIPT = r"""
import importlib.abc, json, sys

class NoMlembed(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "mlembed" or name.startswith("mlembed."):
            raise ImportError(f"{name} is blocked in this interpreter")

sys.meta_path.insert(0, NoMlembed())
try:
    import mlembed  # noqa: F401
    raise SystemExit("mlembed was importable")
except ImportError:
    pass

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

directory, pooling, dim, texts = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
small = json.loads(sys.argv[5])  # a smaller point, chosen per call: {"mlembed_rank": .., "mlembed_depth": ..}
try:
    AutoModel.from_pretrained(directory)
    refused = ""
except Exception as err:  # transformers' refusal to run the export's code unasked
    refused = str(err)
model = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=True)
batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
mask = batch["attention_mask"]

def vectors_at(**point):
    with torch.no_grad():
        states = model(**batch, **point).last_hidden_state
    if pooling == "mean":
        pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    else:  # the last real token of each right-padded row
        pooled = states[torch.arange(len(texts)), mask.sum(1) - 1]
    return F.normalize(pooled[:, :dim], dim=-1)

vectors = vectors_at()
small_vectors = vectors_at(**small)
again = vectors_at()  # the model is back at its own point after a per-call one
try:  # a call at a point that fails inside the base model (a token id past the vocabulary)
    model(input_ids=torch.full((1, 3), 10**8), attention_mask=torch.ones(1, 3, dtype=torch.long), **small)
    failed = False
except (IndexError, RuntimeError):
    failed = True
after_error = vectors_at()  # ... leaves the model as loaded too
refusals = []
for point in ({"mlembed_depth": 99}, {"mlembed_rank": 0}):
    try:
        vectors_at(**point)
    except ValueError as err:
        refusals.append(str(err))
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    vectors_at(mlembed_rank=small["mlembed_rank"] + 1)
embedding = model.get_input_embeddings()
st = SentenceTransformer(directory, trust_remote_code=True, device="cpu")
narrow = SentenceTransformer(directory, trust_remote_code=True, device="cpu", truncate_dim=dim // 2)
print("RESULT " + json.dumps({
    "refused": refused,
    "class": type(model).__name__,
    "factors": [list(embedding.A.shape), list(embedding.B.shape)],
    "parameters": sum(p.numel() for p in model.parameters()),
    "depth": model.model.config.num_hidden_layers,
    "vectors": vectors.tolist(),
    "st": st.encode(texts, convert_to_numpy=True).tolist(),
    "small": small_vectors.tolist(),
    "again": again.tolist(),
    "failed": failed,
    "after_error": after_error.tolist(),
    "st_small": st.encode(texts, convert_to_numpy=True, normalize_embeddings=True, truncate_dim=dim // 2,
                          **small).tolist(),
    "refusals": refusals,
    "warnings": [str(w.message) for w in caught],
    "st_narrow": narrow.encode(texts, convert_to_numpy=True, normalize_embeddings=True).tolist(),
}))
"""


@pytest.fixture(scope="module", params=[("bert", "mean"), ("qwen3", "last")], ids=["bert", "qwen3"])
def exported(request, tmp_path_factory):
    kind, pooling = request.param
    root = tmp_path_factory.mktemp(f"remote-{kind}")
    _, ckpt = fit_checkpoint(kind, root)
    return pooling, export(ckpt, root / "efficiency", mode="efficiency", **POINT)


def test_the_efficiency_export_loads_in_plain_transformers_and_sentence_transformers_without_mlembed(exported):
    pooling, directory = exported
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(directory), pooling, str(POINT["dim"]),
                           json.dumps(TEXTS), json.dumps({"mlembed_rank": SMALL["rank"], "mlembed_depth": SMALL["depth"]})],
                          capture_output=True, text=True, cwd=directory.parent, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert "trust_remote_code" in report["refused"]  # asked without it: transformers says what to pass
    model = mlembed.load(directory)
    vocab, hidden = model.encoder.backbone.vocab_size, model.encoder.backbone.hidden_size
    assert report["class"] == "MLEmbedFactorizedModel" and report["depth"] == POINT["depth"]
    assert report["factors"] == [[vocab, POINT["rank"]], [POINT["rank"], hidden]]  # the saving, kept when loaded
    assert report["parameters"] == model.encoder.num_parameters(rank=POINT["rank"], depth=POINT["depth"])
    expected = model.encode(TEXTS)
    torch.testing.assert_close(torch.tensor(report["vectors"]), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(report["st"]), expected, rtol=0, atol=1e-5)
    narrow = model.encode(TEXTS, dim=POINT["dim"] // 2)
    torch.testing.assert_close(torch.tensor(report["st_narrow"]), narrow, rtol=0, atol=1e-5)
    # One loaded model, a smaller point per call (no reload): the same vectors as mlembed at that point.
    small = model.encode(TEXTS, **SMALL)
    assert (small - expected).abs().max() > 1e-3  # a different model, not the full point again
    torch.testing.assert_close(torch.tensor(report["small"]), small, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(report["again"]), expected, rtol=0, atol=0)
    torch.testing.assert_close(torch.tensor(report["again"]), torch.tensor(report["vectors"]), rtol=0, atol=0)
    assert report["failed"]
    torch.testing.assert_close(torch.tensor(report["after_error"]), torch.tensor(report["vectors"]), rtol=0, atol=0)
    small_narrow = model.encode(TEXTS, **SMALL, dim=POINT["dim"] // 2)
    torch.testing.assert_close(torch.tensor(report["st_small"]), small_narrow, rtol=0, atol=1e-5)
    assert report["refusals"] == [f"mlembed_depth 99 is outside [1, {POINT['depth']}] (this export's depth)",
                                  f"mlembed_rank 0 is outside [1, {POINT['rank']}] (this export's rank)"]
    assert report["warnings"] == ["mlembed_rank 9 was never trained: this model was trained at ranks 8, 16, so the "
                                  "quality there is untested"]


def test_the_export_names_its_code_and_the_code_reads_the_rank_mlembed_writes(exported):
    _, directory = exported
    config = json.loads((directory / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "modeling_mlembed.MLEmbedFactorizedConfig",
                                  "AutoModel": "modeling_mlembed.MLEmbedFactorizedModel"}
    assert config[REMOTE_RANK_KEY] == POINT["rank"] and config[REMOTE_BASE_KEY]["num_hidden_layers"] == POINT["depth"]
    assert config["model_type"] != config[REMOTE_BASE_KEY]["model_type"]  # no silent fallback to the base class
    assert (directory / REMOTE_CODE.name).read_text() == REMOTE_CODE.read_text()
    assert f'RANK_KEY = "{REMOTE_RANK_KEY}"' in REMOTE_CODE.read_text()
    assert f'BASE_KEY = "{REMOTE_BASE_KEY}"' in REMOTE_CODE.read_text()
    assert f'MODEL_TYPE = "{REMOTE_MODEL_TYPE}"' in REMOTE_CODE.read_text() and config["model_type"] == REMOTE_MODEL_TYPE
    code = importlib.util.spec_from_file_location("exported_code", REMOTE_CODE)
    module = importlib.util.module_from_spec(code)
    code.loader.exec_module(module)
    assert module.TRAINED_KEYS == REMOTE_TRAINED_KEYS and tuple(
        f"mlembed_{name}" for name in module.TRAINED_KEYS) == REMOTE_POINT_KWARGS
    manifest = ExportManifest.read(directory)
    assert config[REMOTE_TRAINED_KEYS["rank"]] == manifest.ranks and config[REMOTE_TRAINED_KEYS["depth"]] == manifest.depths
    modules = json.loads((directory / "modules.json").read_text())
    assert modules[0]["kwargs"] == list(REMOTE_POINT_KWARGS)  # sentence-transformers passes them to the model
    assert "mlembed" not in {line.split()[1].split(".")[0] for line in REMOTE_CODE.read_text().splitlines()
                             if line.startswith(("import ", "from "))}


def test_a_compat_export_stays_plain(tmp_path):
    _, ckpt = fit_checkpoint("bert", tmp_path)
    compat = export(ckpt, tmp_path / "compat", mode="compat", **POINT)
    config = json.loads((compat / "config.json").read_text())
    assert "auto_map" not in config and REMOTE_TRAINED_KEYS["rank"] not in config
    assert "kwargs" not in json.loads((compat / "modules.json").read_text())[0]
    assert not (compat / REMOTE_CODE.name).exists()


def test_an_export_written_before_the_custom_code_still_loads(exported):
    _, directory = exported
    old = directory.parent / "before"
    old.mkdir()
    for path in directory.iterdir():
        if path.is_file() and path.name != REMOTE_CODE.name:
            (old / ("model.factorized.safetensors" if path.name == "model.safetensors" else path.name)).write_bytes(
                path.read_bytes())
    config = json.loads((old / "config.json").read_text())[REMOTE_BASE_KEY]  # the base model's config, as before
    (old / "config.json").write_text(json.dumps(config))
    torch.testing.assert_close(mlembed.load(old).encode(TEXTS), mlembed.load(directory).encode(TEXTS), rtol=0,
                               atol=0)
