"""Worker of test_authors_parity.py (torchrun, 2 gloo ranks): one DDP step under the authors' loss settings.

Tiny Qwen3 with MEL (pinned at rank 16), MLL and MRL on; in-batch positives gathered without gradient, nothing
masked, one hard negative per query. Saves this rank's loss and the gradients after DDP's averaging.
"""

from __future__ import annotations

import os
import sys

import torch

from tests.distributed.common import one_ddp_step, rank_rows
from tests.distributed.gather_worker import PinnedRank, Record
from tests.distributed.test_authors_parity import authors_module, batch_of


def main(out: str) -> None:
    rank = int(os.environ["RANK"])
    module = authors_module()
    batch = rank_rows(batch_of(module), rank)
    record = Record()
    one_ddp_step(module, batch, [record, PinnedRank()])
    torch.save({"loss": record.loss, "grads": record.grads}, os.path.join(out, f"rank{rank}.pt"))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
