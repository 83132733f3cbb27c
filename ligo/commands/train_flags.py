"""Training flags (shared by ``ligo train`` and ``ligo grow-train``), generated from TrainConfig's fields."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

from ..loop import TrainConfig

SKIP = {"progress"}


def add_train_flags(p: argparse.ArgumentParser, prefix: str = "", title: str = "training",
                    exclude: tuple[str, ...] = ("seq_len", "batch_size")) -> None:
    """One ``--flag`` per TrainConfig field; defaults are None so that recipe files can be overridden."""
    g = p.add_argument_group(title)
    for f in fields(TrainConfig):
        if f.name in SKIP or f.name in exclude:
            continue
        flag = "--" + prefix + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else f.default_factory()
        kind = type(default)
        if kind is list:
            g.add_argument(flag, nargs="*", default=None, help=f"{f.metadata['help']} (default: none)")
        elif kind is bool:
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f.metadata["help"])
        else:
            g.add_argument(flag, type=kind, default=None, help=f"{f.metadata['help']} (default: {default})")


def train_overrides(args: argparse.Namespace, prefix: str = "") -> dict:
    """The TrainConfig fields the user set on the command line."""
    out = {}
    for f in fields(TrainConfig):
        value = getattr(args, (prefix + f.name).replace("-", "_"), None)
        if value is not None:
            out[f.name] = value
    return out
