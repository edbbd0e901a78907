"""build_tasks: built-in and user tasks, the caps, and clear errors for bad specs."""

from __future__ import annotations

import pytest

from mlembed.demo.tasks import build_tasks
from mlembed.evaluation.bitext import BitextTask
from mlembed.evaluation.retrieval import RetrievalTask
from mlembed.evaluation.sts import STSTask
from mlembed.evaluation.suite import EvalCaps
from tests.evaluation.conftest import write_jsonl


def test_demo_tasks_from_the_data_dir(demo_dir):
    lee, bitext, dialogue = build_tasks(["lee", "bitext", "dialogue"], data_dir=demo_dir)
    assert isinstance(lee, STSTask) and len(lee.scores) == 1225
    assert isinstance(bitext, BitextTask) and bitext.languages() == ["de", "es", "fr"]
    assert isinstance(dialogue, RetrievalTask) and sorted(dialogue.sets) == ["de", "es", "fr"]
    assert dialogue.query_instruction  # the demo's dialogue instruction, as in training
    assert build_tasks(["dialogue"], data_dir=demo_dir, instructions=False)[0].query_instruction is None


def test_caps_limit_languages_and_pairs(demo_dir):
    caps = EvalCaps(max_pairs_per_language=2, max_queries_per_language=3, max_languages=2, max_sts_pairs=10,
                    seed=1)
    lee, bitext, dialogue = build_tasks(["lee", "bitext", "dialogue"], data_dir=demo_dir, caps=caps)
    assert len(lee.scores) == 10
    assert bitext.languages() == ["de", "es"]  # equal counts: by name
    assert len(bitext.src) == 4
    assert sum(len(s.queries) for s in dialogue.sets.values()) == 2 * 3
    only_fr = build_tasks(["bitext"], data_dir=demo_dir, caps=EvalCaps(languages=("fr",)))[0]
    assert only_fr.languages() == ["fr"]


def test_fast_dev_run_caps_shrink_every_task_and_keep_smaller_caps(demo_dir):
    smoke = EvalCaps(max_sts_pairs=None, max_pairs_per_language=3, seed=4).smoke(2)
    assert (smoke.max_pairs_per_language, smoke.max_queries_per_language, smoke.max_languages,
            smoke.max_sts_pairs, smoke.max_passages, smoke.seed) == (3, 8, 2, 32, 8, 4)
    lee, bitext, dialogue = build_tasks(["lee", "bitext", "dialogue"], data_dir=demo_dir, caps=EvalCaps().smoke(1))
    assert len(lee.scores) == 16 and len(bitext.languages()) == 2 and len(bitext.src) == 2 * 4
    assert sum(len(s.queries) for s in dialogue.sets.values()) == 2 * 4


def test_caps_sample_is_seeded(demo_dir):
    def draw(seed):
        return build_tasks(["bitext"], data_dir=demo_dir, caps=EvalCaps(max_pairs_per_language=2, seed=seed))[0].src

    assert draw(3) == draw(3)

    # The seed picks the sample: another seed draws other pairs (as many, from the same file).
    def pairs(seed):
        task = build_tasks(["bitext"], data_dir=demo_dir, caps=EvalCaps(max_pairs_per_language=2, seed=seed))[0]
        return list(zip(task.langs, task.src, task.tgt))

    full = build_tasks(["bitext"], data_dir=demo_dir, caps=EvalCaps(max_pairs_per_language=None))[0]
    assert pairs(3) == pairs(3) and pairs(3) != pairs(4)
    assert len(pairs(4)) == 6 and set(pairs(4)) <= set(zip(full.langs, full.src, full.tgt))
    assert len({tuple(pairs(seed)) for seed in range(10)}) > 2  # not just two fixed samples

    def sts(seed):
        return build_tasks(["lee"], caps=EvalCaps(max_sts_pairs=10, seed=seed))[0].text1

    assert sts(3) == sts(3) and sts(3) != sts(4)


def test_user_tasks_are_named_after_their_files(tmp_path):
    write_jsonl(tmp_path / "mine.jsonl", [{"text1": "a", "text2": "b", "score": 1}, {"text1": "c", "text2": "d",
                                                                                    "score": 2}])
    write_jsonl(tmp_path / "pairs.jsonl", [{"query": "q", "positive": "p"}])
    sts, pairs = build_tasks([f"sts:{tmp_path / 'mine.jsonl'}", f"pairs:{tmp_path / 'pairs.jsonl'}"])
    assert (sts.name, pairs.name) == ("mine", "pairs")


@pytest.mark.parametrize(("specs", "message"), [  # the flag and the spec, then the reason (regular expressions)
    (["nope"], r"--tasks 'nope': unknown task; built-ins are \[.*'lee'.*\], or KIND:PATH"),
    (["foo:bar.jsonl"], r"--tasks 'foo:bar\.jsonl': unknown kind 'foo'; use one of \['sts', 'bitext', 'pairs', "),
    (["bitext"], r"--tasks bitext: reads DATA_DIR/eval/bitext\.jsonl, but --data-dir is not set"),
    (["lee", "lee"], r"--tasks: two tasks are named \['lee'\]; rename a file"),
])
def test_bad_specs_fail_clearly(specs, message):
    with pytest.raises(ValueError, match=message):
        build_tasks(specs)


def test_caps_validate_and_name_the_flag():
    with pytest.raises(ValueError, match=r"--max-languages \(0\) must be at least 1"):
        EvalCaps(max_languages=0)
