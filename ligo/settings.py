"""Typed settings: dataclass fields that carry their help text and range, checked when built, read from mappings
and YAML files with one clear error for a wrong key, type or range. ``ligo.config`` declares the settings of a
run with these; the architecture tables (``ligo.tables``) declare their format with them. Imports nothing heavy.
"""

from __future__ import annotations

import copy
import math
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, asdict, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

from .errors import LigoError, brief


def setting(default: Any, help: str, *, low: float | None = None, high: float | None = None,
            positive: bool = False, choices: Callable[[], tuple[str, ...]] | None = None) -> Any:
    """A dataclass field with its help text and range (``low <= value <= high``; ``positive``: > 0); ``choices``:
    the values it may take, asked when checked (a registry's names, which may grow after import)."""
    meta = {"help": help, "low": low, "high": high, "positive": positive, "choices": choices}
    if isinstance(default, (list, dict)) or is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def required(help: str) -> Any:
    """A dataclass field that a mapping must give (no default), with its help text."""
    return field(metadata={"help": help, "low": None, "high": None, "positive": False, "choices": None})


def type_ok(value: Any, annotation: Any) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(type_ok(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(type_ok(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(type_ok(k, args[0]) and type_ok(v, args[1]) for k, v in value.items())
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, annotation)


def describe(annotation: Any) -> str:
    """A type as a user reads it: 'int', 'one of cosine, linear', 'bool or none'."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("none" if a is type(None) else describe(a) for a in args)
    if origin is list:
        return f"a list of {describe(args[0])}"
    if origin is dict:
        return f"a mapping of {describe(args[0])} to {describe(args[1])}"
    return getattr(annotation, "__name__", str(annotation))


def validate(obj: Any, where: str) -> None:
    """Check every field of a settings dataclass against its type and range."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value, kind = getattr(obj, f.name), hints[f.name]
        if not type_ok(value, kind):
            raise LigoError(f"{where}: {f.name} must be {describe(kind)}, got {brief(value)}")
        choices = f.metadata.get("choices")
        if choices is not None and value is not None and value not in choices():
            raise LigoError(f"{where}: {f.name} must be one of {', '.join(choices())}, got {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            m = f.metadata
            if m.get("positive") and value <= 0:
                raise LigoError(f"{where}: {f.name} must be positive, got {brief(value)}")
            if m.get("low") is not None and value < m["low"]:
                raise LigoError(f"{where}: {f.name} must be at least {m['low']}, got {brief(value)}")
            if m.get("high") is not None and value > m["high"]:
                raise LigoError(f"{where}: {f.name} must be at most {m['high']}, got {brief(value)}")


def check_mapping(cls, data: dict, where: str) -> None:
    """Check a mapping of settings of the class ``cls`` (unknown keys, types, ranges; missing keys take their
    defaults) without building an instance."""
    if not isinstance(data, dict):
        raise LigoError(f"{where} must be a mapping of setting names to values")
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise LigoError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(known)}")
    missing = sorted(f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
                     and f.name not in data)
    if missing:
        raise LigoError(f"{where}: missing key(s) {missing}")
    obj = cls.__new__(cls)  # validate with the right field names before __post_init__ adds its own checks
    for f in fields(cls):
        if f.name in data:
            object.__setattr__(obj, f.name, data[f.name])
        else:
            object.__setattr__(obj, f.name, f.default if f.default is not MISSING else f.default_factory())
    validate(obj, where)


def from_mapping(cls, data: dict, where: str):
    """An instance of the settings class ``cls`` from a mapping; unknown keys are errors."""
    check_mapping(cls, data, where)
    return cls(**data)


class Settings:
    """What every settings dataclass shares: checked when built (``WHERE`` names it in errors), read from a
    mapping (unknown keys are errors), written back as one, copied with changes."""

    WHERE = "settings"

    def __post_init__(self) -> None:
        validate(self, self.WHERE)

    @classmethod
    def from_dict(cls, data: dict, where: str | None = None):
        return from_mapping(cls, data, where or cls.WHERE)

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes):
        return replace(self, **changes)


def read_text(path: str | Path, what: str) -> str:
    """The text of a settings file (YAML or JSON), or one clear error: a binary file is no settings file."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LigoError(f"{what} {p} is not a text file (it holds bytes that are not UTF-8 text); give the YAML or "
                        "JSON file itself") from None
    except OSError as exc:
        raise LigoError(f"{what} {p} cannot be read ({exc.strerror}); check the path") from None


def read_yaml(path: str | Path, what: str, hint: str = "check the path"):
    """A YAML (or JSON) file's content, or one clear error naming ``what`` it is: missing, binary or unparsable."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise LigoError(f"{what} {p} does not exist; {hint}")
    text = read_text(p, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LigoError(f"{what} {p} cannot be parsed ({str(exc).splitlines()[0]}); fix its syntax") from None


def parse_mapping(text: str, where: str, allowed: set[str]) -> dict:
    """A YAML (or JSON, which YAML reads too) mapping with only ``allowed`` keys, or one clear error."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LigoError(f"{where} cannot be parsed ({str(exc).splitlines()[0]}); fix its syntax") from None
    if not isinstance(data, dict):
        raise LigoError(f"{where} must hold a mapping of keys to values")
    unknown = set(data) - allowed
    if unknown:
        raise LigoError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return data


def defaults(cls) -> dict:
    return {f.name: (f.default if f.default is not MISSING else f.default_factory()) for f in fields(cls)}
