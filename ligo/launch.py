"""Where this process stands in a launch (``torchrun``, ``accelerate launch``), asked one way everywhere.

The launchers set ``RANK`` and ``WORLD_SIZE`` before ligo starts, so these answers need no process group and
hold before, during and after training. :func:`process_state` is accelerate's view of the same launch, for
what needs a barrier (``main_process_first``).
"""

from __future__ import annotations

import os

import torch

from .errors import LigoError


def world_size() -> int:
    """The processes of this launch (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main_process() -> bool:
    """Rank 0 of a multi-process launch, or a single process: the one that writes and reports."""
    return os.environ.get("RANK", "0") in ("0", "")


def has_accelerator_device() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(mps and mps.is_available()) or (
        hasattr(torch, "xpu") and torch.xpu.is_available())


def process_state():
    """accelerate's PartialState for this launch, with the loop's device choice (for its barriers)."""
    from accelerate import PartialState

    return PartialState(cpu=not has_accelerator_device())


def check_batch(batch_size: int, what: str = "batch_size") -> None:
    """Refuse a batch that the processes of this launch cannot share, before any work."""
    if batch_size % world_size():
        raise LigoError(f"{what} {batch_size} is not divisible by the {world_size()} processes; "
                        "pick a multiple of the process count")
