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
    import torch.distributed as dist

    if not _launched():
        return
    _wait(dist.barrier(async_op=True), what)


def any_process(flag: bool) -> bool:
    """Whether ``flag`` holds on any process of this launch, answered the same on all of them (each calls it at the
    same point of its work). The vote travels over the CPU (gloo), so a GPU run is not synchronised by it, and its
    wait is bounded as :func:`barrier`'s. One process: ``flag`` itself."""
    import torch.distributed as dist

    if not _launched():
        return flag
    vote = torch.tensor([int(flag)])
    _wait(dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=_cpu_group(), async_op=True), "the end of the step")
    return bool(vote.item())


def _launched() -> bool:
    import torch.distributed as dist

    return world_size() > 1 and dist.is_available() and dist.is_initialized()


_CPU_GROUPS: dict = {}


def _cpu_group():
    """The launch's processes as a gloo group (the default group when it is gloo already; made once per default
    group, by every process at the same call)."""
    import torch.distributed as dist

    if dist.get_backend() == "gloo":
        return None
    key = id(dist.group.WORLD)
    if key not in _CPU_GROUPS:
        _CPU_GROUPS[key] = dist.new_group(backend="gloo")
    return _CPU_GROUPS[key]


def _wait(work, what: str) -> None:
    import time

    timeout = float(os.environ.get("LIGO_PEER_TIMEOUT") or PEER_TIMEOUT_S)
    deadline = time.monotonic() + timeout
    while not work.is_completed():
        if time.monotonic() > deadline:
            raise PeerLost(f"no other process reached {what} within {timeout:g} s (LIGO_PEER_TIMEOUT)")
        time.sleep(0.001)
    work.wait()  # the backend's own error, if the collective failed (a peer's connection closed)


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
