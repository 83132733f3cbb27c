"""The one exception users see, and the one place where environment failures become it.

A :class:`LigoError` is a problem with the user's input or environment: its message names the
problem and the fix, and the CLI prints it as one line with exit status 2. Anything else is a bug.
"""

from __future__ import annotations

import errno

DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EFBIG: "file too large for this file system or for the file-size limit (ulimit -f)"}
# the same conditions as safetensors' Rust layer spells them in its own exceptions
_RUST_KINDS = {"StorageFull": errno.ENOSPC, "QuotaExceeded": errno.EDQUOT, "FileTooLarge": errno.EFBIG,
               "No space left": errno.ENOSPC, "File too large": errno.EFBIG, "Disk quota": errno.EDQUOT}


class LigoError(Exception):
    """A problem with the user's input: the message names it and says how to fix it."""


class Preempted(Exception):
    """A run stopped by SIGTERM or Ctrl-C after checkpointing: ``--resume`` continues it from ``step``.
    Every command ends on it the same way: one line and exit status 143 (the SIGTERM convention)."""

    def __init__(self, run, step: int):
        super().__init__(f"preempted at {run} step {step}")
        self.run, self.step = run, step


def disk_errno(exc: BaseException) -> int | None:
    """The errno of a full disk, a quota or a file-size limit behind ``exc`` (an OSError or a library's
    own exception about one), else None."""
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        return exc.errno
    text = str(exc)
    for marker, code in _RUST_KINDS.items():
        if marker in text:
            return code
    return None


_STREAM_FAILURES = ("iostream error", "PytorchStreamWriter failed", "file write failed", "unexpected pos")


def write_failure_errno(exc: BaseException, where) -> int | None:
    """The likely cause of a write that failed without an errno (torch's C++ writer says only "iostream
    error"): a file-size limit if one is set, else a full disk if little space is left."""
    import os
    import resource

    if not (isinstance(exc, RuntimeError) and any(s in str(exc) for s in _STREAM_FAILURES)):
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        return errno.EFBIG
    try:
        st = os.statvfs(where)
        if st.f_bavail * st.f_frsize < 256 << 20:
            return errno.ENOSPC
    except OSError:
        pass
    return errno.EIO


def as_user_error(exc: BaseException, doing: str, where=None) -> LigoError | None:
    """A LigoError for an environment failure while ``doing`` something (disk full, permission
    denied, name too long, ...), or None when ``exc`` is not one (a bug: let it propagate)."""
    if isinstance(exc, LigoError):
        return exc
    code = disk_errno(exc) or (write_failure_errno(exc, where) if where is not None else None)
    if code == errno.EIO:
        return LigoError(f"{doing} failed: the file could not be written ({str(exc).splitlines()[0][:80]}); check "
                         "the disk and its free space, then rerun")
    if code is not None:
        return LigoError(f"{doing} failed: {DISK_ERRNOS[code]}; free space or raise the limit, then rerun")
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = f" ({exc.filename})" if exc.filename else ""
        return LigoError(f"{doing} failed: permission denied{where}; choose a location you can write to")
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return LigoError(f"{doing} failed: a file name is too long; choose a shorter output name")
    if isinstance(exc, MemoryError):
        return LigoError(f"{doing} failed: out of memory; use a smaller target, batch or sequence length")
    return None


def brief(value, limit: int = 60) -> str:
    """A value as an error message shows it: its repr when short, else its kind and size. A YAML alias bomb expands
    a few lines into gigabytes, so an error names the field and never prints an unbounded value."""
    if isinstance(value, (list, tuple, set, dict)):
        items = list(value.items()) if isinstance(value, dict) else list(value)
        flat = [x for item in items for x in (item if isinstance(value, dict) else (item,))]
        if len(items) > 8 or not all(v is None or isinstance(v, (bool, int, float, str)) for v in flat):
            what = {dict: "mapping", set: "set"}.get(type(value), "list")
            return f"a {what} of {len(value)} item{'s' if len(value) != 1 else ''}"
    try:
        text = repr(value)
    except ValueError:  # an integer too long for Python to print
        return "a number too large to show"
    return text if len(text) <= limit else text[:limit] + "..."
