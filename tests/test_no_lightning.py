"""Inference, export and scoring are plain PyTorch + transformers: ``mlembed.load``, ``mlembed export`` and the
evaluation core's grid never import Lightning (a deployment image need not install it), checked in a fresh
interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint_v1.ckpt"

SCRIPT = """
import json, sys
import mlembed
from mlembed.cli.export import main
from mlembed.export import export

model = mlembed.load(sys.argv[1], rank=4, depth=1)
vectors = model.encode(["hello world", "bonjour"])
export(sys.argv[1], sys.argv[2] + "/efficiency", mode="efficiency")
assert main(["--ckpt", sys.argv[1], "--out", sys.argv[2] + "/compat", "--mode", "compat", "--dim", "4"]) == 0
loaded = [mlembed.load(sys.argv[2] + "/" + mode).encode(["hello world"]).shape[1] for mode in ("efficiency", "compat")]
from mlembed.evaluation.grid import evaluate_grid
from mlembed.evaluation.sts import STSTask
toy = STSTask(["a cat", "a dog", "rain"], ["a kitten", "a puppy", "sun"], [5.0, 4.0, 1.0], name="toy")
scored = len(evaluate_grid(mlembed.load(sys.argv[1]), [toy], progress=False).points())
imported = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric"))
print(json.dumps({"shape": list(vectors.shape), "loaded": loaded, "scored": scored, "imported": imported}))
"""


def test_load_encode_and_export_never_import_lightning(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(FIXTURE), str(tmp_path)], capture_output=True,
                          text=True, cwd=Path(__file__).parents[1], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["shape"] == [2, 8] and report["loaded"] == [8, 4] and report["scored"] > 1  # the work was done ...
    assert report["imported"] == []  # ... and no Lightning module was loaded for it
