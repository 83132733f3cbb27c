"""The ``ligo`` console script: a thin layer over the Python API, one module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback

from . import __version__
from .arch import LigoError

# The one list of commands: name -> module in ligo.commands (each has ``add_parser`` and ``run``).
COMMANDS = {
    "grow": "grow",
    "train": "train",
    "grow-train": "grow_train",
    "inspect": "inspect",
    "bench": "bench",
    "demo": "demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ligo", description="Grow pretrained transformers with a learned "
                                     "linear growth operator (LiGO), train them, and measure the compute saved.")
    parser.add_argument("--version", action="version", version=f"ligo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
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
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return int(args._run(args) or 0)
    except LigoError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"ligo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ligo {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: still one line unless --debug
        if args.debug:
            traceback.print_exc()
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"ligo {args.command}: unexpected error: {type(exc).__name__}: {msg} (rerun with --debug for the "
              "traceback and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
