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


# How long a process waits at a barrier around a checkpoint for the other processes of its launch (seconds); a
# peer that never arrives has died (a SIGKILL, an out-of-memory kill) or hangs. LIGO_PEER_TIMEOUT overrides it.
PEER_TIMEOUT_S = 900.0


class PeerLost(RuntimeError):
    """Another process of this launch did not reach a barrier: it stopped, so this one cannot go on."""


def barrier(what: str) -> None:
    """Wait for every process of this launch at ``what`` (a checkpoint), for at most ``LIGO_PEER_TIMEOUT`` seconds
    (:data:`PEER_TIMEOUT_S`). The wait polls the barrier from Python rather than blocking inside the backend, so a
    SIGTERM is answered at once, a peer's death that the backend reports ends the wait with its error, and one
    that it does not see (a collective that has not noticed its peer die) ends it at the deadline: never a
    process blocked until the launcher kills it without a word."""
    import time

    import torch.distributed as dist

    if world_size() < 2 or not dist.is_available() or not dist.is_initialized():
        return
    timeout = float(os.environ.get("LIGO_PEER_TIMEOUT") or PEER_TIMEOUT_S)
    work = dist.barrier(async_op=True)
    deadline = time.monotonic() + timeout
    while not work.is_completed():
        if time.monotonic() > deadline:
            raise PeerLost(f"no other process reached {what} within {timeout:g} s (LIGO_PEER_TIMEOUT)")
        time.sleep(0.005)
    work.wait()  # the backend's own error, if the barrier failed (a peer's connection closed)


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
