"""Where this process stands in a launch (``torchrun``, ``accelerate launch``), asked one way everywhere, and
what memory its device has left.

The launchers set ``RANK`` and ``WORLD_SIZE`` before ligo starts, so these answers need no process group and
hold before, during and after training. :func:`process_state` is accelerate's view of the same launch, for
what needs a barrier (``main_process_first``).
"""

from __future__ import annotations

import os
from pathlib import Path

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


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device`` (None when unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
