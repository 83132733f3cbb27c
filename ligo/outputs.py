"""Where outputs go: one policy for every command that writes a directory.

* Everything is checked before any work: the name fits the file system, the parent is writable, an
  existing output is only replaced with ``--overwrite``, and an output is never one of the inputs or
  a folder holding one (replacing it would delete them).
* An existing output is never removed before its replacement is complete. A finished artifact
  (``ligo grow``) is written into a temporary sibling and renamed into place (:func:`staged`). A
  run that writes as it goes (``train``, ``grow-train``, ``bench``) writes into the output when it
  is new, or into a *staging* sibling ``.NAME.ligo-new`` when it replaces one; the staging folder
  takes the output's name when the run finishes (:class:`RunOutput`), and ``--resume`` continues it.
* Temporary siblings carry the writing process's id; ones left by a killed process are removed the
  next time anything is written to the same output.
* Folders are created with the user's umask (not 0700).
* One process writes an output at a time: a second ``grow``, ``train``, ``grow-train``, ``bench`` or ``eval
  --json`` into the same output is refused while the first runs (an advisory lock, taken before the output is
  checked and held until the command is done with it; released when the process ends, even by kill -9; rank 0
  of a multi-process launch holds it). :func:`claimed` holds it for a block, :func:`writes_out` for a call.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator

from .errors import LigoError, as_user_error

STAGING = "ligo-new"


def _short(name: str) -> str:
    """A file-name stem that leaves room for a suffix: long names are cut and given a digest."""
    if len(name.encode()) <= 120:
        return name
    return name.encode()[:100].decode(errors="ignore") + "-" + hashlib.sha256(name.encode()).hexdigest()[:12]


def cache_dir() -> Path:
    """ligo's cache folder: ``$LIGO_CACHE``, else ``~/.cache/ligo``."""
    return Path(os.environ.get("LIGO_CACHE") or Path.home() / ".cache" / "ligo")


def sibling(out: Path, tag: str) -> Path:
    return out.parent / f".{_short(out.name)}.{tag}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(out: Path) -> None:
    """Remove temporary siblings of ``out`` (``.NAME.tmp-PID-*``) whose process is gone."""
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        return
    prefix = f".{_short(out.name)}.tmp-"
    for p in parent.iterdir():
        if not p.name.startswith(prefix):
            continue
        pid = p.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def make_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) with the user's umask; environment failures as one line."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise as_user_error(exc, f"creating {path}") or exc from None
    return path


def _overlaps(out: Path, inputs) -> Path | None:
    """An input that ``out`` is, or that lies inside ``out``."""
    target = out.resolve()
    for item in inputs:
        if item is None:
            continue
        p = Path(item).resolve()
        if p == target or target in p.parents:
            return Path(item)
    return None


def check_output(out: str | Path, *, overwrite: bool = False, inputs=(), resume: bool = False) -> Path:
    """Refuse an output that cannot or must not be written, before any work is done."""
    out = Path(out)
    try:
        limit = os.pathconf(_existing_parent(out), "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    for part in out.parts:
        if len(part.encode()) > limit:
            raise LigoError(f"output name {part[:40]}... is {len(part.encode())} bytes, longer than this file "
                            f"system allows ({limit}); choose a shorter --out")
    if out.exists() and not out.is_dir():
        raise LigoError(f"output {out} exists and is not a directory; remove it or choose another path")
    hit = _overlaps(out, inputs)
    if hit is not None and (overwrite or not resume):
        raise LigoError(f"--out {out} is (or holds) the input {hit}; writing there would destroy it, so choose "
                        "another output path")
    if out.exists() and any(out.iterdir()) and not (overwrite or resume):
        hint = f", or --resume to continue the unfinished run in {sibling(out, STAGING)}" if sibling(
            out, STAGING).exists() else ""
        raise LigoError(f"output {out} already exists; choose another path or pass --overwrite{hint}")
    check_writable(_existing_parent(out), "an output path")
    remove_stale_temps(out)
    return out


def check_writable(folder: Path, what: str = "an output path") -> None:
    """Refuse a folder this process cannot create files in, by creating one (os.access says yes to root even
    where writes fail: a read-only mount)."""
    try:
        tmp = folder / f".ligo-probe-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        tmp.rmdir()
    except OSError as exc:
        raise LigoError(f"cannot write to {folder} ({exc.strerror}); choose {what} in a writable "
                        "directory") from None


def _existing_parent(out: Path) -> Path:
    probe = out.parent if str(out.parent) else Path(".")
    while not probe.exists():
        probe = probe.parent
    return probe


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _normalize_modes(root: Path) -> None:
    """Folders 0777 and files 0666 minus the umask: some writers (mkdtemp, huggingface_hub) use 0700/0600."""
    mask = _umask()
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def _swap_into_place(new: Path, out: Path) -> None:
    """Rename ``new`` to ``out``; an existing ``out`` is moved aside first and removed last."""
    if out.exists():
        trash = sibling(out, f"tmp-{os.getpid()}-old-{secrets.token_hex(3)}")
        os.replace(out, trash)
        os.replace(new, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(new, out)


@contextlib.contextmanager
def staged(out: str | Path, overwrite: bool = False, inputs=()) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; on success rename it to ``out``, on failure remove it."""
    with claimed(out):
        out = check_output(out, overwrite=overwrite, inputs=inputs)
        make_dir(out.parent if str(out.parent) else Path("."))
        tmp = sibling(out, f"tmp-{os.getpid()}-{secrets.token_hex(4)}")
        make_dir(tmp)
        try:
            yield tmp
            _normalize_modes(tmp)
            _swap_into_place(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


_HELD: dict[str, list[int]] = {}  # output path -> [the lock file this process holds for it, how many hold it]


def lock_output(out: str | Path) -> None:
    """Hold the lock of ``out`` until as many :func:`unlock_output` (or the end of this process), or refuse:
    another process writes there. Taken before the output is checked, so that a writer that finished meanwhile
    is seen."""
    import fcntl
    import tempfile

    from .launch import is_main_process

    if not is_main_process():  # the other ranks of a launch write through rank 0
        return
    key = str(Path(out).resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        return
    name = hashlib.sha256(key.encode()).hexdigest()[:32]
    for root in (cache_dir() / "locks",
                 Path(tempfile.gettempdir()) / f"ligo-locks-{os.getuid()}"):
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd = os.open(root / name, os.O_CREAT | os.O_RDWR, 0o600)
            break
        except OSError:
            continue
    else:
        return  # nowhere to keep a lock (read-only home and temp): run without one
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 64).decode(errors="ignore").strip()
        os.close(fd)
        raise LigoError(f"another ligo process{f' (pid {owner})' if owner else ''} is writing {out}; wait for it to "
                        "finish, or write elsewhere") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _HELD[key] = [fd, 1]


def unlock_output(out: str | Path) -> None:
    key = str(Path(out).resolve())
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _HELD[key]
        os.close(held[0])  # closing releases the lock


@contextlib.contextmanager
def claimed(out: str | Path | None) -> Iterator[None]:
    """Hold the lock of ``out`` (None: nothing) for the block: no other process writes it meanwhile."""
    if out is None:
        yield
        return
    lock_output(out)
    try:
        yield
    finally:
        unlock_output(out)


def writes_out(fn):
    """A function that checks its output (its ``out`` argument) at the start and writes it at the end holds the
    output's lock for the whole call, so that a second process cannot pass the same check meanwhile."""
    import functools
    import inspect

    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with claimed(signature.bind(*args, **kwargs).arguments.get("out")):
            return fn(*args, **kwargs)

    return call


def resumed_settings(out: Path) -> dict:
    """The training settings of the newest checkpoint of the run in ``out`` (its unfinished replacement first)."""
    from .rundir import STATE_FILE, latest_checkpoint

    for run_dir in (sibling(Path(out), STAGING), Path(out)):
        ckpt = latest_checkpoint(run_dir)
        if ckpt is not None:
            try:
                return json.loads((ckpt / STATE_FILE).read_text()).get("config") or {}
            except (OSError, ValueError):
                return {}  # read_state names the problem when the run is resumed
    return {}


class RunOutput:
    """The directory of a run that writes as it goes: the output itself when it is new, a staging
    sibling when it replaces an existing one (renamed over it by :meth:`commit`)."""

    def __init__(self, out: str | Path, *, overwrite: bool = False, resume: bool = False, inputs=()):
        lock_output(out)  # before the checks: a run that finished meanwhile is seen
        try:
            self.final = check_output(out, overwrite=overwrite, resume=resume, inputs=inputs)
        except BaseException:
            unlock_output(out)
            raise
        staging = sibling(self.final, STAGING)
        if resume:
            self.work = staging if staging.is_dir() else self.final
        elif self.final.exists() and any(self.final.iterdir()):
            shutil.rmtree(staging, ignore_errors=True)  # an abandoned replacement: --overwrite starts afresh
            self.work = staging
        else:
            self.work = self.final
        self.created = not self.work.exists()

    @property
    def replacing(self) -> bool:
        return self.work != self.final

    def open(self) -> Path:
        return make_dir(self.work)

    def commit(self) -> Path:
        """The run finished: the staging folder (if any) becomes the output."""
        if self.replacing:
            _swap_into_place(self.work, self.final)
            self.work = self.final
        return self.final

    def release(self) -> None:
        """Let other processes write this output (the run ended, one way or another)."""
        unlock_output(self.final)

    def discard(self) -> None:
        """The run failed before it had anything worth keeping: remove what it created."""
        if self.created and self.work.exists():
            shutil.rmtree(self.work, ignore_errors=True)

    def resumable(self) -> bool:
        """Does the unfinished work hold anything ``--resume`` would use (a checkpoint, a model, a finished run)?"""
        from .rundir import latest_checkpoint

        if not self.work.exists():
            return False
        if any(self.work.rglob("result.json")) or any(self.work.rglob("config.json")):
            return True
        return any(latest_checkpoint(ck.parent) is not None for ck in self.work.rglob("checkpoints"))
