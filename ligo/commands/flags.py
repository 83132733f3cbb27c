"""Command-line flags generated from the settings dataclasses (``TrainConfig``, ``GrowthPlan``).

Help text, choices and the defaults shown come from the fields themselves, so ``--help`` cannot
drift from the code. Every generated flag defaults to None ("not given"), so values from a recipe file
can be overridden by exactly the flags the user typed.
"""

from __future__ import annotations

import argparse
import json
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from ..config import FIT_DEFAULTS, DataConfig, GrowthPlan, TrainConfig
from ..errors import LigoError
from ..settings import describe


def _default(f):
    """A field's default (None for a required field: no default to show)."""
    if f.default is not MISSING:
        return f.default
    return None if f.default_factory is MISSING else f.default_factory()


def add_flags(p: argparse.ArgumentParser, cls, *, prefix: str = "", title: str, exclude=(), shown: dict | None = None,
              aliases: dict | None = None, helps: dict | None = None) -> None:
    """One ``--flag`` per field of ``cls`` (a settings dataclass), in an argument group; ``helps``: a field's help
    text where the command's differs from the field's own (its default shown as given there)."""
    group = p.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in exclude:
            continue
        names = ["--" + prefix + f.name.replace("_", "-")] + list((aliases or {}).get(f.name, ()))
        kind, default = hints[f.name], (shown or {}).get(f.name, _default(f))
        dest = (prefix + f.name).replace("-", "_")
        text = f.metadata["help"]
        if f.name in (helps or {}):
            group.add_argument(*names, dest=dest, type=_typed(kind, f.name), default=None, metavar=kind.__name__.upper(),
                               help=helps[f.name])
            continue
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if origin is list:
            group.add_argument(*names, dest=dest, nargs="*", default=None, help=f"{text} (default: none)")
        elif kind is bool or (origin is typing.Union and bool in args):
            group.add_argument(*names, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                               help=f"{text}" + ("" if default is None else f" (default: {'on' if default else 'off'})"))
        elif kind is dict:
            group.add_argument(*names, dest=dest, type=_json_object(f.name), default=None, metavar="JSON", help=text)
        elif origin is typing.Literal or f.metadata.get("choices"):
            choices = args if origin is typing.Literal else f.metadata["choices"]()
            group.add_argument(*names, dest=dest, choices=choices, default=None, help=f"{text} (default: {default})")
        else:
            base = next((a for a in args if a is not type(None)), kind) if origin is typing.Union else kind
            group.add_argument(*names, dest=dest, type=_typed(base, f.name), default=None, metavar=base.__name__.upper(),
                               help=text if default is None else f"{text} (default: {default})")


def _typed(kind, name):
    def convert(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {describe(kind)}, got {text!r}") from None
    convert.__name__ = kind.__name__
    return convert


def _json_object(name):
    def convert(text: str) -> dict:
        try:
            return parse_target(text, flag="--" + name.replace("_", "-"))
        except LigoError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = "JSON object"
    return convert


def given(args: argparse.Namespace, cls, prefix: str = "") -> dict:
    """The fields of ``cls`` that the user set on the command line."""
    out = {}
    for f in fields(cls):
        value = getattr(args, (prefix + f.name).replace("-", "_"), None)
        if value is not None:
            out[f.name] = value
    return out


# -- the flag sets the commands share -------------------------------------------------------------
FIT_EXCLUDE = ("seed", "trackers", "save_every", "keep_last", "progress", "weight_decay", "freeze", "fsdp")  # (freeze,
# fsdp: the fit trains the operator's maps, not the model's layers; above one process it runs data parallel)


def add_plan_flags(p: argparse.ArgumentParser) -> None:
    add_flags(p, GrowthPlan, title="growth plan (the operator's initial value)", exclude=("seed",))


def add_fit_flags(p: argparse.ArgumentParser, aliases: dict | None = None,
                  steps_help: str = "operator fit steps on --data (default: 0, no fit)") -> None:
    add_flags(p, TrainConfig, prefix="fit-", title="operator fit (LiGO proper; --fit-steps 0: no fit)",
              exclude=FIT_EXCLUDE, shown=FIT_DEFAULTS, aliases=aliases, helps={"steps": steps_help})


def add_train_flags(p: argparse.ArgumentParser) -> None:
    add_flags(p, TrainConfig, title="training")


def add_target_flag(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--target", required=required, help="target sizes: a JSON object or a JSON file (such as a "
                   "config.json); keys are the model's config keys or the generic names hidden, layers, heads, "
                   "kv_heads, head_dim, ffn, experts, experts_per_token (experts on a dense llama, mistral or "
                   "qwen3 upcycle it into its mixture-of-experts family)")


def add_data_flags(p: argparse.ArgumentParser) -> None:
    add_flags(p, DataConfig, title="data")


def data_config(args: argparse.Namespace, extra: dict | None = None) -> DataConfig:
    return DataConfig.from_dict({**(extra or {}), **given(args, DataConfig)})


def target_file(text) -> str | None:
    """A target given as a file (a config.json or its folder): an input the output must not be or hold."""
    return text if isinstance(text, str) and text.strip() and not text.lstrip().startswith("{") else None


def parse_target(text: str, flag: str = "--target") -> dict:
    """A target: a JSON object of sizes or config keys, or the path of a config.json (or of its folder)."""
    example = "'{\"hidden\": 1024, \"layers\": 24}'"
    if not text.strip():
        raise LigoError(f"{flag} is empty; give sizes as a JSON object such as {example} or a config.json")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("{"):
            raise LigoError(f"{flag} is not valid JSON ({exc.msg}); pass a JSON object or a file") from None
    else:
        if not isinstance(value, dict):
            raise LigoError(f"{flag} {text!r} is not a JSON object; give sizes such as {example} or a config.json")
        return value
    from ..checkpoint import read_config

    return read_config(Path(text))
