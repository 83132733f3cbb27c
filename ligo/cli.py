"""The ``ligo`` console script: a thin layer over the Python API, one module per subcommand.

Each command module has ``add_parser`` and ``run``; ``run`` parses, makes one API call and prints.
Nothing heavy (torch, transformers) is imported until a command runs, so ``--help`` and
``--version`` answer at once. Errors are mapped here, in one place: a :class:`LigoError` or an
environment failure (disk full, permission denied) is one line and exit status 2. SIGTERM (and
Ctrl-C) inside a training loop checkpoints the step in progress; every command then ends the same way:
``preempted at RUN step N; continue with: ligo ... --resume`` and exit status 143. SIGTERM outside a
loop is exit 143 too (Ctrl-C: 130), with temporary files removed and resumable work kept. Anything
else is a bug, reported in one line with exit status 1 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import traceback

from . import __version__
from .errors import LigoError, Preempted, as_user_error

# The one list of commands: name -> module in ligo.commands (each has ``add_parser`` and ``run``).
COMMANDS = {
    "grow": "grow",
    "train": "train",
    "grow-train": "grow_train",
    "eval": "evaluation",
    "inspect": "inspect",
    "plan": "plan",
    "bench": "bench",
    "demo": "demo",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``ligo CMD: error: ...``) like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


class Terminated(BaseException):
    """SIGTERM outside a training loop: unwinds like Ctrl-C, so temporary outputs are removed."""


_TERMINATED: list[bool] = []  # set by the handler: a SIGTERM arrived (even if a C extension lost the exception)


def _terminate(*_):
    _TERMINATED.append(True)
    raise Terminated()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of ``command`` alone when it names one (its module is the only one imported:
    ``ligo grow`` does not build the parsers of seven other commands)."""
    parser = _Parser(prog="ligo", description="Grow pretrained transformers with a learned linear growth operator "
                     "(LiGO), train them, and measure the compute saved.")
    parser.add_argument("--version", action="version", version=f"ligo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for name, module in COMMANDS.items():
        if command in COMMANDS and name != command:
            continue
        mod = importlib.import_module(f"ligo.commands.{module}")
        p = mod.add_parser(sub, name)
        p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
        p.set_defaults(_run=mod.run)
    return parser


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as tlog

    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.ERROR)  # e.g. "Removed shared tensor" on tied models


def main(argv: list[str] | None = None) -> int:
    # torch's CPU allocator backs its large tensors with transparent huge pages (Linux, where THP is "madvise"):
    # growth allocates a fresh float32 tensor per weight, and faulting them in 4 KiB pages took 44.4 s -> 25.3 s
    # off a wide growth when backed by huge pages (docs/benchmarks.md); the user's own setting wins
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    # the handler first: a SIGTERM while the parser is built (slow on a loaded machine) unwinds the same way
    _TERMINATED.clear()
    old = signal.signal(signal.SIGTERM, _terminate) if _main_thread() else None
    try:
        return _main(argv)
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _main(argv: list[str] | None) -> int:
    try:
        words = sys.argv[1:] if argv is None else argv
        args = build_parser(words[0] if words else None).parse_args(argv)
    except Terminated:
        print("ligo: terminated", file=sys.stderr)
        return 143
    try:
        _quiet_libraries()
        return int(args._run(args) or 0)
    except Preempted as stop:
        from .launch import is_main_process

        if is_main_process():
            print(f"ligo {args.command}: preempted at {stop.run} step {stop.step}; continue with: "
                  f"{_resume_command(argv)}", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"ligo {args.command}: interrupted{_how_to_continue(args, argv)}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"ligo {args.command}: terminated{_how_to_continue(args, argv)}", file=sys.stderr)
        return 143
    except Exception as exc:
        if _TERMINATED:  # raised inside a C extension (safetensors, torch), which turned it into another error
            print(f"ligo {args.command}: terminated{_how_to_continue(args, argv)}", file=sys.stderr)
            return 143
        error = as_user_error(exc, args.command)
        if args.debug:
            traceback.print_exc()
        if _peer_lost(exc):  # under torchrun / accelerate launch: another rank was killed or failed
            print(f"ligo {args.command}: error: another process of this launch stopped, so this one cannot go on "
                  f"({_first_line(exc)}); the checkpoints written so far are intact: launch all processes again "
                  f"with --resume ({_resume_command(argv)})", file=sys.stderr)
            return 2
        if isinstance(error, LigoError):
            print(f"ligo {args.command}: error: {error}", file=sys.stderr)
            return 2
        print(f"ligo {args.command}: unexpected error: {type(exc).__name__}: {_first_line(exc)} (rerun with --debug for "
              "the traceback and report it)", file=sys.stderr)
        return 1


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


_PEER_LOST = ("connection reset by peer", "connection closed by peer", "broken pipe", "nccl communicator",
              "socket timeout", "connection refused")


def _peer_lost(exc: BaseException) -> bool:
    """A collective of a multi-process launch failed because another process went away (gloo/NCCL)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) < 2:
        return False
    from .launch import PeerLost

    if isinstance(exc, PeerLost):
        return True
    text = str(exc).lower()
    return type(exc).__name__ in ("RuntimeError", "DistBackendError", "DistNetworkError", "DistError") and (
        any(p in text for p in _PEER_LOST) or "gloo" in text)


def _how_to_continue(args, argv: list[str] | None) -> str:
    """After a stop outside a training loop (growing, evaluating, reporting): for a command that resumes, the
    line that continues it when it left work to continue (its output, or the staging folder replacing it)."""
    from pathlib import Path

    from .launch import is_main_process
    from .outputs import STAGING, sibling

    out = getattr(args, "out", None)
    if not hasattr(args, "resume") or not out or not is_main_process():
        return ""
    out = Path(out)
    kept = sibling(out, STAGING).is_dir() or (out.is_dir() and any(out.iterdir()) and not getattr(args, "overwrite", 0))
    return f"; continue with: {_resume_command(argv)}" if kept else "; nothing was kept, so run it again"


def _resume_command(argv: list[str] | None) -> str:
    """The command line that continues this one: the same, with --resume (and without --overwrite)."""
    import shlex

    words = [w for w in (sys.argv[1:] if argv is None else argv) if w != "--overwrite"]
    return shlex.join(["ligo", *words, *([] if "--resume" in words else ["--resume"])])


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
