"""Architecture tables: what every weight of a supported model family is, as data.

Each supported Hugging Face ``model_type`` has one JSON table in ``ligo/archs/``. A table names every
weight of the model (layer weights with an ``{i}`` template), and for each axis of each weight the
*space* it lives in. The growth operator derives everything it does from these tables; there is no
per-model code anywhere else. See ``docs/architectures.md`` for the format and how to add one.

Axis tokens (a ``+`` joins spaces concatenated along one axis, as in GPT-2's fused ``c_attn``):

=========  ================================================================================
``res``    residual stream, written (embeddings, block outputs, norms inside the stream)
``res.in`` residual stream, read (Q/K/V/FFN inputs, the final norm in front of the LM head)
``q``      query heads, written by the query projection (grown by whole heads)
``k``/``v`` key / value heads, written by the key / value projections (grown by whole heads)
``o.in``   per-query-head attention outputs, read by the output projection
``ffn``    FFN hidden units, written (up/gate/fc-in); ``ffn.in``: read (down/fc-out)
``vocab``  vocabulary; ``pos`` positions; ``type`` token types: never grown
=========  ================================================================================
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

DOCS_ADDING = "docs/architectures.md"

# Grown maps: token -> (dimension giving the number of units, dimension giving the unit size or None).
GROWN = {
    "res": ("hidden", None),
    "res.in": ("hidden", None),
    "ffn": ("ffn", None),
    "ffn.in": ("ffn", None),
    "q": ("heads", "head_dim"),
    "k": ("kv_heads", "head_dim"),
    "v": ("kv_heads", "head_dim"),
    "o.in": ("heads", "head_dim"),
}
FIXED = {"vocab": "vocab", "pos": "positions", "type": None}
_TABLE_KEYS = {"model_type", "objective", "rope", "config", "base_prefix", "layer_prefix", "globals",
               "layer", "head", "tied", "identity_zero", "layer_lists", "ignore"}
_CONFIG_KEYS = {"layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "ffn_default_factor",
                "vocab", "positions", "tie"}
_REQUIRED_CONFIG = {"layers", "hidden", "heads", "ffn", "vocab"}
OBJECTIVES = ("causal-lm", "masked-lm")


class LigoError(Exception):
    """A problem with the user's input: the message names it and says how to fix it."""


@dataclass(frozen=True)
class Dims:
    """The sizes of one model, read from its config through the table's config keys."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    positions: int | None
    tie: bool

    def units(self, token: str) -> tuple[int, int]:
        """(number of units, unit size) of a grown map token."""
        count, size = GROWN[token]
        return getattr(self, count), (getattr(self, size) if size else 1)

    def axis_size(self, token: str) -> int:
        if token in GROWN:
            n, d = self.units(token)
            return n * d
        dim = FIXED[token]
        return getattr(self, dim) if dim else -1  # -1: any size (token types)


@dataclass(frozen=True)
class Entry:
    """One weight of the table: its name (relative to its scope) and its axes."""

    name: str
    axes: tuple[tuple[str, ...], ...]
    scope: str  # "globals", "layer" or "head"

    @property
    def module(self) -> str:
        return self.name.rsplit(".", 1)[0]

    @property
    def grown(self) -> bool:
        return any(t in GROWN for axis in self.axes for t in axis)


@dataclass(frozen=True)
class Match:
    entry: Entry
    layer: int | None


@dataclass
class ArchSpec:
    model_type: str
    objective: str
    rope: bool
    config: dict[str, Any]
    base_prefix: str
    layer_prefix: str
    entries: list[Entry]
    tied: dict[str, str]
    identity_zero: list[str]
    layer_lists: list[str]
    ignore: list[str]
    source: str = ""
    _patterns: list[tuple[re.Pattern, Entry | None]] = field(default_factory=list, repr=False)

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "ArchSpec":
        where = f"architecture table {source}"
        unknown = set(data) - _TABLE_KEYS
        if unknown:
            raise LigoError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_TABLE_KEYS)}")
        missing = {"model_type", "objective", "config", "base_prefix", "layer_prefix", "globals", "layer"} - set(data)
        if missing:
            raise LigoError(f"{where}: missing key(s) {sorted(missing)}; see {DOCS_ADDING}")
        if data["objective"] not in OBJECTIVES:
            raise LigoError(f"{where}: objective must be one of {OBJECTIVES}, got {data['objective']!r}")
        cfg = data["config"]
        if set(cfg) - _CONFIG_KEYS or _REQUIRED_CONFIG - set(cfg):
            raise LigoError(f"{where}: config keys must include {sorted(_REQUIRED_CONFIG)} and may add "
                            f"{sorted(_CONFIG_KEYS - _REQUIRED_CONFIG)}; got {sorted(cfg)}")
        if "{i}" not in data["layer_prefix"]:
            raise LigoError(f"{where}: layer_prefix must contain '{{i}}', got {data['layer_prefix']!r}")
        entries = []
        for scope in ("globals", "layer", "head"):
            for name, axes in data.get(scope, {}).items():
                if not isinstance(axes, list) or not axes:
                    raise LigoError(f"{where}: {scope}.{name}: axes must be a non-empty list")
                parsed = tuple(tuple(str(a).split("+")) for a in axes)
                for axis in parsed:
                    for tok in axis:
                        if tok not in GROWN and tok not in FIXED:
                            raise LigoError(f"{where}: {scope}.{name}: unknown axis token {tok!r}; "
                                            f"allowed: {sorted(GROWN) + sorted(FIXED)}")
                entries.append(Entry(name, parsed, scope))
        layer_modules = {e.module for e in entries if e.scope == "layer"}
        for m in data.get("identity_zero", []):
            if m not in layer_modules:
                raise LigoError(f"{where}: identity_zero names {m!r}, which is no layer module")
        spec = cls(model_type=data["model_type"], objective=data["objective"], rope=bool(data.get("rope")),
                   config=dict(cfg), base_prefix=data["base_prefix"], layer_prefix=data["layer_prefix"],
                   entries=entries, tied=dict(data.get("tied", {})),
                   identity_zero=list(data.get("identity_zero", [])),
                   layer_lists=list(data.get("layer_lists", [])), ignore=list(data.get("ignore", [])),
                   source=source)
        spec._compile()
        return spec

    def _compile(self) -> None:
        layer = re.escape(self.layer_prefix).replace(re.escape("{i}"), r"(?P<i>\d+)")
        base = f"(?:{re.escape(self.base_prefix)})?"
        pats: list[tuple[re.Pattern, Entry | None]] = []
        for e in self.entries:
            if e.scope == "globals":
                pats.append((re.compile(base + re.escape(e.name)), e))
            elif e.scope == "layer":
                pats.append((re.compile(base + layer + re.escape(e.name)), e))
            else:
                pats.append((re.compile(re.escape(e.name)), e))
        for ign in self.ignore:
            pats.append((re.compile(base + re.escape(ign).replace(re.escape("{i}"), r"\d+")), None))
        self._patterns = pats

    # -- config ------------------------------------------------------------------------------
    def dims(self, config: dict) -> Dims:
        """Read the sizes of a model from its config dict."""
        k = self.config

        def get(name, default=None):
            key = k.get(name)
            value = config.get(key) if key else None
            return default if value is None else value

        try:
            hidden, heads = int(get("hidden")), int(get("heads"))
            ffn = get("ffn")
            if ffn is None:
                ffn = int(k.get("ffn_default_factor", 4)) * hidden
            head_dim = get("head_dim")
            if head_dim is None:
                if hidden % heads:
                    raise LigoError(f"{k['hidden']}={hidden} is not divisible by {k['heads']}={heads}; "
                                    "pick a head count that divides the hidden size")
                head_dim = hidden // heads
            pos = get("positions")
            return Dims(layers=int(get("layers")), hidden=hidden, heads=heads,
                        kv_heads=int(get("kv_heads", heads)), head_dim=int(head_dim), ffn=int(ffn),
                        vocab=int(get("vocab")), positions=None if pos is None else int(pos),
                        tie=bool(get("tie", True)))
        except (TypeError, ValueError) as exc:
            raise LigoError(f"config of model_type {self.model_type!r} lacks a size ({exc}); "
                            f"expected keys {sorted(v for v in k.values() if isinstance(v, str))}") from None

    def target_config(self, source_config: dict, target: dict) -> dict:
        """The source config with ``target`` written over it.

        ``target`` may use the model's own config keys (``hidden_size``) or the table's generic size
        names (``hidden``, ``layers``, ``heads``, ``kv_heads``, ``head_dim``, ``ffn``), which are
        written through the keys this table declares.
        """
        if target.get("model_type", self.model_type) != self.model_type:
            raise LigoError(f"target model_type {target['model_type']!r} differs from the source's "
                            f"{self.model_type!r}; growth keeps the architecture, so use a "
                            f"{self.model_type!r} target config")
        out = dict(source_config)
        for key, value in target.items():
            if key in self.config and key != "ffn_default_factor":
                key = self.config[key]
            out[key] = value
        out["model_type"] = self.model_type
        return out

    # -- weights -----------------------------------------------------------------------------
    def match(self, key: str) -> list[Match | None]:
        """All table entries (None for ignore patterns) whose template matches a state-dict key."""
        found = []
        for pat, entry in self._patterns:
            m = pat.fullmatch(key)
            if m:
                layer = m.groupdict().get("i")
                found.append(None if entry is None else Match(entry, None if layer is None else int(layer)))
        return found

    def layout(self, keys, dims: Dims) -> dict[str, Match]:
        """Map every key of a checkpoint to its entry; unknown or ambiguous keys are errors."""
        out: dict[str, Match] = {}
        for key in keys:
            found = self.match(key)
            if not found:
                raise LigoError(f"weight {key!r} matches no entry of the {self.model_type!r} table "
                                f"({self.source}); add it to the table (see {DOCS_ADDING})")
            if len(found) > 1:
                raise LigoError(f"weight {key!r} matches {len(found)} entries of the {self.model_type!r} "
                                "table; make the templates unambiguous")
            if found[0] is None:
                continue
            m = found[0]
            if m.layer is not None and m.layer >= dims.layers:
                raise LigoError(f"weight {key!r} is in layer {m.layer}, but the config has "
                                f"{dims.layers} layers; the checkpoint does not match its config.json")
            out[key] = m
        by_entry: dict[str, set] = {}
        for m in out.values():
            if m.entry.scope == "layer":
                by_entry.setdefault(m.entry.name, set()).add(m.layer)
        for name, layers in by_entry.items():
            if layers != set(range(dims.layers)):
                raise LigoError(f"layer weight {name!r} is present in layers {sorted(layers)} but not all "
                                f"{dims.layers}; the checkpoint is incomplete")
        return out

    def layer_key(self, prefix: str, entry: Entry, layer: int) -> str:
        return prefix + self.layer_prefix.format(i=layer) + entry.name


_REGISTRY: dict[str, ArchSpec] = {}


def _builtin_tables() -> None:
    if _REGISTRY:
        return
    for item in sorted(resources.files("ligo.archs").iterdir(), key=lambda p: p.name):
        if item.name.endswith(".json"):
            spec = ArchSpec.from_dict(json.loads(item.read_text()), source=f"ligo/archs/{item.name}")
            _REGISTRY[spec.model_type] = spec


def register_architecture(table: dict | str | Path) -> ArchSpec:
    """Add (or replace) an architecture table, from a dict or a JSON file path."""
    _builtin_tables()
    if isinstance(table, dict):
        spec = ArchSpec.from_dict(table)
    else:
        path = Path(table)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise LigoError(f"cannot read architecture table {path}: {exc}") from None
        spec = ArchSpec.from_dict(data, source=str(path))
    _REGISTRY[spec.model_type] = spec
    return spec


def supported_types() -> list[str]:
    _builtin_tables()
    return sorted(_REGISTRY)


def get_spec(model_type: str | None) -> ArchSpec:
    _builtin_tables()
    if model_type not in _REGISTRY:
        raise LigoError(f"model_type {model_type!r} is not supported (supported: {', '.join(supported_types())}); "
                        f"to add it, write an architecture table as described in {DOCS_ADDING}")
    return _REGISTRY[model_type]
