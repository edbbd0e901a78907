"""Every export carries a model card (README.md) written from what the run recorded, and the instructions the model
was trained with as sentence-transformers prompts.

The recorded run is the tiny Qwen3 config through both stages on the demo data, scored on a small grid, made by
``mlembed fit`` in another directory; the export is made from its checkpoint here, as a user would after the run.
"""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch
import yaml
from sentence_transformers import SentenceTransformer

import mlembed
from mlembed.card import GRID_PLOT, TRAINING_CONFIG
from mlembed.data.manifest import ShardManifest
from mlembed.demo.data import LANGID_INSTRUCTION
from mlembed.export import export
from tests.test_export import fit_checkpoint

QUERIES = ["Où est la gare ?", "hello world", "Где вокзал?"]


@pytest.fixture(scope="module")
def recorded(workdir, tiny_qwen3_run, tmp_path_factory):
    """The tiny run's checkpoint exported (efficiency, rank 32, depth 2) from a directory other than the run's."""
    checkpoint = next((workdir / "runs" / "tiny_qwen3").glob("**/checkpoints/*.ckpt"))
    out = export(checkpoint, tmp_path_factory.mktemp("card") / "tiny-eff", mode="efficiency", rank=32, depth=2)
    manifests = {n: ShardManifest.load(workdir / "data" / "demo" / f"stage{n}" / "train") for n in (1, 2)}
    return {"checkpoint": checkpoint, "log_dir": checkpoint.parent.parent, "out": out, "manifests": manifests,
            "card": (out / "README.md").read_text()}


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_the_card_states_the_model_its_data_and_settings_from_the_record(recorded):
    card, manifests = recorded["card"], recorded["manifests"]
    front = front_matter(card)
    assert front["library_name"] == "sentence-transformers" and front["pipeline_tag"] == "sentence-similarity"
    assert {"mlembed", "matryoshka"} <= set(front["tags"])
    assert "base_model" not in front  # a randomly initialised backbone has none
    assert "license" not in front  # the user's to choose
    languages = {tag.split("-")[0].lower() for manifest in manifests.values() for tag in manifest.languages()}
    assert set(front["language"]) == languages and len(languages) > 50  # the demo's Django locales and more
    assert "\n# tiny-eff\n" in card  # the export's own name, not its staging directory
    for number, manifest in manifests.items():
        for source, info in manifest.sources().items():
            assert f"| {number} | {source} | {info['task']} | {info['samples']:,} |" in card
    assert "- MEL: ranks 16, 32, 64\n" in card  # the config's ranks
    assert "- MLL: depths 1, 2, 4\n" in card  # resolved from the defaults for 4 layers
    assert "- stage 2: steps 2, batch_size 16, instructions True" in card
    assert "- optimizer steps taken: 4\n" in card


def test_the_card_shows_the_grid_at_the_points_the_export_serves_and_how_to_reproduce(recorded):
    card, log_dir, out = recorded["card"], recorded["log_dir"], recorded["out"]
    rows = list(csv.DictReader((log_dir / "grid" / "grid.csv").open()))
    served = {(r["rank"], r["depth"], r["dim"]): float(r["score"]) for r in rows
              if int(r["rank"]) <= 32 and int(r["depth"]) <= 2}
    assert len(served) == 2 * 2 * 4  # ranks 16, 32 x depths 1, 2 x dims 8..64
    for (rank, depth, dim), score in served.items():
        assert re.search(rf"^\| {rank} \| {depth} \| {dim} \| [\d.]+ M \| {score:.4f} \|$", card, re.M)
    assert not re.search(r"^\| 64 \| ", card, re.M)  # a rank the export does not hold
    assert (out / GRID_PLOT).read_bytes() == (log_dir / "grid" / GRID_PLOT).read_bytes()
    assert f"![score against parameters over the run's grid]({GRID_PLOT})" in card
    assert (out / TRAINING_CONFIG).read_bytes() == (log_dir / "config.yaml").read_bytes()
    assert (f"python -m mlembed export --ckpt {recorded['checkpoint']} --out tiny-eff --mode efficiency "
            "--rank 32 --depth 2 --dim 64") in card


def test_a_compat_export_of_the_run_lists_only_its_one_rank(recorded, tmp_path):
    out = export(recorded["checkpoint"], tmp_path / "tiny-compat", mode="compat", rank=32, depth=2)
    card = (out / "README.md").read_text()
    assert "| MEL rank (token embedding) | 32 |" in card  # dense at rank 32: rank 16 is gone
    assert re.search(r"^\| 32 \| 2 \| 64 \| ", card, re.M) and not re.search(r"^\| 16 \| ", card, re.M)
    assert "training_config.yaml" in card and (out / "training_config.yaml").is_file()


def test_the_trained_instructions_are_sentence_transformers_prompts_giving_mlembeds_vectors(recorded):
    out, manifests = recorded["out"], recorded["manifests"]
    prompts = json.loads((out / "config_sentence_transformers.json").read_text())["prompts"]
    expected = {source: f"Instruct: {text}\nQuery: " for source, counts in manifests[2].instructions().items()
                for text in counts}
    assert prompts == expected and expected["langid"] == f"Instruct: {LANGID_INSTRUCTION}\nQuery: "
    shown = {source: prompt.replace("\n", "\\n") for source, prompt in prompts.items()}  # one line each
    assert all(f"| {source} | `{prompt}` |" in recorded["card"] for source, prompt in shown.items())
    st = SentenceTransformer(str(out), trust_remote_code=True, device="cpu")
    got = torch.tensor(st.encode(QUERIES, prompt_name="langid"))
    torch.testing.assert_close(got, mlembed.load(out).encode(QUERIES, instruction=LANGID_INSTRUCTION), rtol=0, atol=1e-5)


def test_the_cards_code_runs_and_its_three_ways_agree(recorded, monkeypatch):
    code = recorded["card"].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(recorded["out"].parent)  # the card names the model by its directory
    namespace: dict = {}
    exec(code, namespace)
    reference = namespace["ml_vectors"]
    torch.testing.assert_close(torch.as_tensor(namespace["st_vectors"]), reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(namespace["hf_vectors"].detach(), reference, rtol=0, atol=1e-5)


def test_a_model_trained_outside_the_cli_gets_a_card_that_says_what_is_not_recorded(tmp_path):
    _, checkpoint = fit_checkpoint("bert", tmp_path)  # plain Trainer.fit, no data module, no saved config
    out = export(checkpoint, tmp_path / "plain", mode="compat")
    card = (out / "README.md").read_text()
    assert front_matter(card)["library_name"] == "sentence-transformers" and "language" not in front_matter(card)
    assert "Not recorded (the model was not trained by `mlembed fit` with shards)" in card
    assert "The run's config was not saved with it" in card and not (out / TRAINING_CONFIG).exists()
    assert "- optimizer steps taken: 2\n" in card and "No evaluation grid was recorded" in card
    assert json.loads((out / "config_sentence_transformers.json").read_text())["prompts"] == {}
