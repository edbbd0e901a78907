"""The multi-node commands of README/docs/scale-out.md, run on one machine as 2 "nodes" of 1 CPU process each.

torchrun (c10d rendezvous, started once per node) and SLURM (the variables ``srun`` sets, one task per device)
must give the same run as Lightning starting 2 processes itself: the same losses, stages and MEL ranks at every
step, and a sharded checkpoint with one shard per rank.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.distributed.common import environment
from tests.distributed.test_fsdp_resume import STRATEGY
from tests.robustness.callbacks import read_steps
from tests.robustness.tiny_run import checkpoint_every_step, fit_args, record_steps

pytestmark = pytest.mark.distributed

NODES = 2
STEPS = ["--data.stage1.steps=3", "--data.stage2.steps=3", STRATEGY]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def fit_flags(tiny_shards, root) -> list[str]:
    return fit_args(tiny_shards, root, *STEPS, record_steps(root / "steps.jsonl"), checkpoint_every_step(root / "ckpt"))


def wait_all(processes: list[subprocess.Popen]) -> None:
    """Wait for every node; fail with the output of the first that failed."""
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-3000:]


@pytest.fixture(scope="module")
def lightning_started(tiny_shards, tmp_path_factory):
    """The reference: one command, Lightning starts both processes (``--trainer.devices 2``)."""
    root = tmp_path_factory.mktemp("lightning")
    done = subprocess.run([sys.executable, "-m", "mlembed", *fit_flags(tiny_shards, root), "--trainer.devices=2"],
                          cwd=root, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return read_steps(root / "steps.jsonl")


def torchrun_nodes(tiny_shards, root) -> None:
    """``torchrun --nnodes 2 ... -m mlembed fit ... --trainer.num_nodes 2``, started once per node."""
    endpoint = f"localhost:{free_port()}"
    processes = [
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", f"--nnodes={NODES}", "--nproc_per_node=1",
                          "--rdzv_backend=c10d", "--rdzv_id=mlembed-test", f"--rdzv_endpoint={endpoint}",
                          "-m", "mlembed", *fit_flags(tiny_shards, root), f"--trainer.num_nodes={NODES}",
                          "--trainer.devices=1"],
                         cwd=root, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(NODES)
    ]
    wait_all(processes)


def slurm_nodes(tiny_shards, root) -> None:
    """What ``srun python -m mlembed fit ... --trainer.num_nodes $SLURM_NNODES`` starts: one task per device."""
    job = {"SLURM_NTASKS": str(NODES), "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": str(NODES),
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "mlembed", "SLURM_NODELIST": "localhost",
           "MASTER_PORT": str(free_port())}
    processes = [
        subprocess.Popen([sys.executable, "-m", "mlembed", *fit_flags(tiny_shards, root),
                          f"--trainer.num_nodes={NODES}", "--trainer.devices=1"],
                         cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=environment(**job, SLURM_PROCID=str(node), SLURM_LOCALID="0", SLURM_NODEID=str(node)))
        for node in range(NODES)
    ]
    wait_all(processes)


@pytest.mark.parametrize("launch", [torchrun_nodes, slurm_nodes], ids=["torchrun", "slurm"])
def test_multi_node_launch_trains_exactly_like_the_lightning_started_run(tiny_shards, lightning_started, tmp_path,
                                                                         launch):
    launch(tiny_shards, tmp_path)
    steps = read_steps(tmp_path / "steps.jsonl")
    assert [r["stage"] for r in lightning_started] == [1, 1, 1, 2, 2, 2]
    assert [(r["step"], r["stage"], r["rank"]) for r in steps] == [
        (r["step"], r["stage"], r["rank"]) for r in lightning_started]
    assert [r["loss"] for r in steps] == pytest.approx([r["loss"] for r in lightning_started], rel=1e-4, abs=1e-5)
    assert len(list((tmp_path / "ckpt" / "last.ckpt").glob("*.distcp"))) == NODES
