"""Flags shared by several subcommands, and their translation into API objects."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..arch import LigoError
from ..operator import DEPTH_INITS, WIDTH_INITS
from ..loop import TrainConfig


def add_growth_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("growth")
    g.add_argument("--target", required=True, help="target config: a JSON file or an inline JSON object; keys are "
                   "the model's config keys or ligo's generic names (hidden, layers, heads, kv_heads, ffn)")
    g.add_argument("--width", choices=WIDTH_INITS, default="split", help="width init: split (lossless, "
                   "symmetry-breaking; default), copy (Net2Net, lossless), random (the paper's)")
    g.add_argument("--depth", choices=DEPTH_INITS, default="identity", help="depth init (default: identity)")
    g.add_argument("--per-layer", action="store_true", help="separate width maps per layer for layer spaces")
    g.add_argument("--seed", type=int, default=0, help="seed for the operator's init and the fit")
    g.add_argument("--fit-steps", type=int, default=0, help="operator fit steps on --data (0: no fit)")
    g.add_argument("--fit-lr", type=float, default=1e-3, help="operator fit peak LR (no weight decay)")
    g.add_argument("--fit-warmup", type=int, default=10, help="operator fit warmup steps")


def add_data_flags(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=required, help="text file, .jsonl ({'text': ...} per line) or directory; "
                   "default: the Python standard library's source")
    g.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    g.add_argument("--batch-size", type=int, default=8, help="sequences per micro-batch, all processes (default 8)")


def parse_target(text: str) -> dict:
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LigoError(f"--target is not valid JSON ({exc.msg}); pass a JSON object or a file") from None
        if not isinstance(value, dict):
            raise LigoError("--target must be a JSON object")
        return value
    from ..checkpoint import read_config

    return read_config(Path(text))


def fit_config(args: argparse.Namespace) -> TrainConfig | None:
    if args.fit_steps < 0:
        raise LigoError(f"--fit-steps must be >= 0, got {args.fit_steps}")
    if not args.fit_steps:
        return None
    return TrainConfig(steps=args.fit_steps, lr=args.fit_lr, warmup=min(args.fit_warmup, args.fit_steps),
                       weight_decay=0.0, batch_size=args.batch_size, seq_len=args.seq_len, seed=args.seed,
                       eval_every=max(1, args.fit_steps // 4), schedule="cosine")
