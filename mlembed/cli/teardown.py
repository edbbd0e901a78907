"""The end of a distributed command: every rank leaves the process group together."""

from __future__ import annotations

import torch


def release_process_group() -> None:
    """Tear the process group down, all ranks together, before the interpreter exits.

    Left to interpreter exit, gloo can abort a finished rank ("terminate called without an active exception")
    and turn a good run into a failed exit code. The barrier first makes every rank finish its last collective,
    so no rank closes its connections while a peer still talks to it.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    try:
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()
