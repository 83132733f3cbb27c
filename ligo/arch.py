"""Architecture tables: what every weight of a supported model family is, as data.

Each model family has one JSON table in ``ligo/archs/``, listing the Hugging Face ``model_type``s it
serves. A table names every weight of the model (layer weights with an ``{i}`` template), and for each
axis of each weight the *space* it lives in (the vocabulary of spaces is :data:`SPACES`). The growth operator derives everything it does from these tables; there is no
per-model code anywhere else. See ``docs/architectures.md`` for the format and how to add one.

Axis tokens (a ``+`` joins spaces concatenated along one axis, as in GPT-2's fused ``c_attn``):

=========  ================================================================================
``res``    residual stream, written (embeddings, block outputs, norms inside the stream)
``res.in`` residual stream, read (Q/K/V/FFN inputs, the final norm in front of the LM head)
``q``      query heads, written by the query projection (grown by whole heads)
``k``/``v`` key / value heads, written by the key / value projections (grown by whole heads)
``o.in``   per-query-head attention outputs, read by the output projection
``qkv``    whole heads of a per-head interleaved query/key/value projection (GPT-NeoX: each head's
           q, k and v slices side by side), grown with the query heads
``ffn``    FFN hidden units, written (up/gate/fc-in); ``ffn.in``: read (down/fc-out)
``exp``    the experts of a mixture-of-experts layer, as the leading axis of an expert's weights that
           read the residual stream (gate/up); ``exp.out``: of those that write it (down). A table entry
           with an ``{e}`` in its name is one tensor per expert (checkpoint keys ``experts.{e}.w1.weight``),
           held stacked over the experts
``router`` the experts, as the rows of the router (its scores per expert)
``vocab``  vocabulary; ``pos`` positions; ``type`` token types; ``hd`` the inside of one head (a
           per-head norm over ``head_dim``): never grown
=========  ================================================================================

Besides the weights, a table states the family's numerics that growth must keep (see
``docs/architectures.md``): ``norms`` (RMSNorm or LayerNorm, a gain offset such as Gemma's ``1 + w``,
which weights are the gains of norms over the residual stream), ``embed_scale`` (an embedding multiplied
by a power of the hidden size inside the model, as Gemma's ``sqrt(hidden)``) and ``layer_lists``
(per-layer config lists that follow the depth plan, as ``layer_types`` or ``no_rope_layers``).
A mixture-of-experts table adds ``router`` (whether the top-k weights are renormalized), ``fused`` (how
transformers holds the per-expert checkpoint tensors in memory: stacked over the experts, parts
concatenated), ``upcycle`` (the dense families it turns into this MoE family, with the checkpoint key of
each dense FFN weight) and ``requires`` (config values ligo needs, as "every layer sparse").
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import LigoError

DOCS_ADDING = "docs/architectures.md"


@dataclass(frozen=True)
class Space:
    """A grown weight space: the map tokens that write (produce) its units and read (consume) them."""

    name: str
    write: tuple[str, ...]
    read: tuple[str, ...]
    count: str              # the Dims field giving the number of units
    unit: str | None        # the Dims field giving a unit's size (head_dim for heads), None for neurons
    in_layers: bool         # the space lives inside each layer (its maps may differ per layer group)


# The one vocabulary of spaces, shared by the operator (which maps exist and how they pair up) and the
# diagnostics (which weights show whether a space's units are duplicates).
SPACES = (
    Space("res", ("res",), ("res.in",), "hidden", None, False),
    Space("ffn", ("ffn",), ("ffn.in",), "ffn", None, True),
    Space("heads", ("q", "qkv"), ("o.in",), "heads", "head_dim", True),
    Space("kv_heads", ("k", "v"), (), "kv_heads", "head_dim", True),
    # an expert is a unit whose write vector is its weights and whose read vector is its router row
    Space("experts", ("exp", "exp.out"), ("router",), "experts", None, True),
)
SPACE_OF = {tok: s for s in SPACES for tok in s.write + s.read}
# token -> (count dim, unit-size dim); a GPT-NeoX head's fused q/k/v slices make one unit of 3 x head_dim
GROWN = {tok: (s.count, "qkv_unit" if tok == "qkv" else s.unit) for tok, s in SPACE_OF.items()}
WRITE_TOKENS = tuple(t for s in SPACES for t in s.write)
LAYER_TOKENS = tuple(t for s in SPACES if s.in_layers for t in s.write + s.read)
READ_PARTNER = {r: s.write[0] for s in SPACES for r in s.read}        # a read map and its space's write map
FIXED = {"vocab": "vocab", "pos": "positions", "type": None, "hd": "head_dim"}
GENERIC_SIZES = ("layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "experts", "experts_per_token")
_TABLE_KEYS = {"model_type", "model_types", "objective", "rope", "config", "base_prefix", "layer_prefix", "globals",
               "layer", "head", "tied", "identity_zero", "layer_lists", "ignore", "norms", "embed_scale", "renamed",
               "router", "fused", "upcycle", "requires"}
EXPERT_TOKENS = ("exp", "exp.out")  # the leading axis of a per-expert entry
_NORM_KEYS = {"type", "offset", "gains", "stream"}
_EMBED_SCALE_KEYS = {"weight", "power", "tied_norm"}
NORM_TYPES = ("rms", "layer")
_CONFIG_KEYS = {"layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "ffn_default_factor",
                "vocab", "positions", "tie", "experts", "experts_per_token"}
_REQUIRED_CONFIG = {"layers", "hidden", "heads", "ffn", "vocab"}
OBJECTIVES = ("causal-lm", "masked-lm")


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
    experts: int = 1                # experts per MoE layer (1: a dense model)
    experts_per_token: int = 1
    router_normalized: bool = True  # the top-k router weights are renormalized to sum to one

    @property
    def qkv_unit(self) -> int:
        return 3 * self.head_dim

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

    @property
    def per_expert(self) -> bool:
        """One checkpoint tensor per expert (``{e}`` in the name), held stacked over the experts."""
        return "{e}" in self.name

    def key_name(self, expert: int | None = None) -> str:
        return self.name.replace("{e}", str(expert)) if self.per_expert else self.name


@dataclass(frozen=True)
class Match:
    entry: Entry
    layer: int | None
    expert: int | None = None


@dataclass
class ArchSpec:
    """One architecture family's table: the HF ``model_type``s it serves and every weight's spaces."""

    model_types: tuple[str, ...]
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
    norms: dict = field(default_factory=lambda: {"type": "layer", "offset": 0.0, "gains": [], "stream": "pre"})
    embed_scale: dict | None = None
    renamed: dict = field(default_factory=dict)  # checkpoint key -> the model's parameter name, where they differ
    router: dict = field(default_factory=dict)   # {"normalized": true or the config key saying so}
    fused: dict = field(default_factory=dict)    # layer parameter -> the checkpoint entries it holds (see module doc)
    upcycle: dict = field(default_factory=dict)  # {"from": [dense model_types], "layer": {dense name: entry name}}
    requires: dict = field(default_factory=dict)  # config key -> the value ligo needs
    source: str = ""
    model_type: str = ""  # the type this spec was looked up for (the family's first by default)
    _patterns: list[tuple[re.Pattern, Entry | None]] = field(default_factory=list, repr=False)

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "ArchSpec":
        where = f"architecture table {source}"
        if not isinstance(data, dict):
            raise LigoError(f"{where} must be a JSON object; see {DOCS_ADDING}")
        unknown = set(data) - _TABLE_KEYS
        if unknown:
            raise LigoError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_TABLE_KEYS)}")
        missing = {"objective", "config", "base_prefix", "layer_prefix", "globals", "layer"} - set(data)
        if missing:
            raise LigoError(f"{where}: missing key(s) {sorted(missing)}; see {DOCS_ADDING}")
        if ("model_type" in data) == ("model_types" in data):
            raise LigoError(f"{where}: give either model_type (one type) or model_types (a family's list)")
        types = [data["model_type"]] if "model_type" in data else data["model_types"]
        if not isinstance(types, list) or not types or not all(isinstance(t, str) and t for t in types):
            raise LigoError(f"{where}: model_types must be a non-empty list of model_type names")
        if data["objective"] not in OBJECTIVES:
            raise LigoError(f"{where}: objective must be one of {OBJECTIVES}, got {data['objective']!r}")
        cfg = data["config"]
        if set(cfg) - _CONFIG_KEYS or _REQUIRED_CONFIG - set(cfg) or not all(
                isinstance(v, (str, int)) or (isinstance(v, list) and v and all(isinstance(x, str) for x in v))
                for v in cfg.values()):
            raise LigoError(f"{where}: config keys must include {sorted(_REQUIRED_CONFIG)} and may add "
                            f"{sorted(_CONFIG_KEYS - _REQUIRED_CONFIG)}, each naming a config key (or a list of "
                            f"aliases); got {sorted(cfg)}")
        if "{i}" not in data["layer_prefix"]:
            raise LigoError(f"{where}: layer_prefix must contain '{{i}}', got {data['layer_prefix']!r}")
        entries = []
        for scope in ("globals", "layer", "head"):
            for name, axes in data.get(scope, {}).items():
                if not isinstance(axes, list) or not axes:
                    raise LigoError(f"{where}: {scope}.{name}: axes must be a non-empty list")
                parsed = tuple(tuple(str(a).split("+")) for a in axes)
                if ("{e}" in name) != (parsed[0][0] in EXPERT_TOKENS) or ("{e}" in name and scope != "layer"):
                    raise LigoError(f"{where}: {scope}.{name}: a per-expert weight is a layer weight with '{{e}}' in "
                                    f"its name and {' or '.join(EXPERT_TOKENS)} as its first axis, and only it")
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
        names = {e.name for e in entries}
        norms = data.get("norms", {"type": "layer", "offset": 0.0, "gains": []})
        if (not isinstance(norms, dict) or set(norms) - _NORM_KEYS or norms.get("type") not in NORM_TYPES
                or not isinstance(norms.get("offset", 0.0), (int, float)) or not isinstance(norms.get("gains", []), list)
                or norms.get("stream", "pre") not in ("pre", "post")):
            raise LigoError(f"{where}: norms must be a mapping with type ({' or '.join(NORM_TYPES)}) and optionally "
                            "offset (a number: the gain is offset + weight), gains (the norm weights) and stream "
                            "(pre, or post when the residual stream itself is normalized after each layer)")
        norms = {"type": norms["type"], "offset": float(norms.get("offset", 0.0)), "gains": list(norms.get("gains", [])),
                 "stream": norms.get("stream", "pre")}
        for g in norms["gains"]:
            if g not in names:
                raise LigoError(f"{where}: norms.gains names {g!r}, which is no weight of the table")
        scale = data.get("embed_scale")
        if scale is not None and (not isinstance(scale, dict) or set(scale) - _EMBED_SCALE_KEYS
                                  or scale.get("weight") not in names or not isinstance(scale.get("power"), (int, float))
                                  or scale.get("tied_norm", scale.get("weight")) not in names):
            raise LigoError(f"{where}: embed_scale must be a mapping with weight (the embedding it scales), power (the "
                            "model multiplies it by hidden_size ** power) and optionally tied_norm (the norm in front "
                            "of a head tied to it); each must name a weight of the table")
        renamed = data.get("renamed", {})
        if not isinstance(renamed, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in renamed.items()):
            raise LigoError(f"{where}: renamed must map checkpoint keys to the model's parameter names (strings)")
        moe = {k: data.get(k, {}) for k in ("router", "fused", "upcycle", "requires")}
        if any(not isinstance(v, dict) for v in moe.values()):
            raise LigoError(f"{where}: router, fused, upcycle and requires must be mappings; see {DOCS_ADDING}")
        if "experts" in cfg and "normalized" not in moe["router"]:
            raise LigoError(f"{where}: an MoE table (config.experts) must say in router.normalized whether the "
                            "top-k weights are renormalized: true, false, or the config key that says so")
        for param, parts in moe["fused"].items():
            if not isinstance(parts, list) or not parts or any(p not in names for p in parts):
                raise LigoError(f"{where}: fused.{param} must list weights of the table, got {parts!r}")
        for dense, moe_name in moe["upcycle"].get("layer", {}).items():
            if moe_name not in names:
                raise LigoError(f"{where}: upcycle.layer maps {dense!r} to {moe_name!r}, which is no weight of the table")
        spec = cls(model_types=tuple(types), objective=data["objective"], rope=bool(data.get("rope")),
                   config=dict(cfg), base_prefix=data["base_prefix"], layer_prefix=data["layer_prefix"],
                   entries=entries, tied=dict(data.get("tied", {})),
                   identity_zero=list(data.get("identity_zero", [])),
                   layer_lists=list(data.get("layer_lists", [])), ignore=list(data.get("ignore", [])),
                   norms=norms, embed_scale=scale, renamed=dict(renamed), source=source, **moe,
                   model_type=types[0])
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
                name = re.escape(e.name).replace(re.escape("{e}"), r"(?P<e>\d+)")
                pats.append((re.compile(base + layer + name), e))
            else:
                pats.append((re.compile(re.escape(e.name)), e))
        for ign in self.ignore:
            pats.append((re.compile(base + re.escape(ign).replace(re.escape("{i}"), r"\d+")), None))
        self._patterns = pats

    # -- config ------------------------------------------------------------------------------
    def config_key(self, name: str, config: dict | None = None) -> str | None:
        """The config key of a generic size: the table's, or of a table's list of aliases (``num_experts``,
        ``num_local_experts``) the first that ``config`` holds."""
        key = self.config.get(name)
        if isinstance(key, list):
            return next((k for k in key if config is not None and k in config), key[0])
        return key

    def dims(self, config: dict, where: str = "config") -> Dims:
        """Read the sizes of a model from its config dict."""
        k = {name: self.config_key(name, config) for name in self.config}

        def get(name, default=None):
            key = k.get(name)
            value = config.get(key) if key else None
            if value is None:
                return default
            if name == "tie":
                return value
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LigoError(f"{where}: {key} must be a positive integer, got {value!r}")
            return value

        for name in sorted(_REQUIRED_CONFIG - {"ffn"}):
            if get(name) is None:
                raise LigoError(f"{where} of model_type {self.model_type!r} lacks {k[name]!r}; a "
                                f"{self.model_type} config needs {sorted(v for v in k.values() if isinstance(v, str))}")
        hidden, heads = get("hidden"), get("heads")
        ffn = get("ffn")
        if ffn is None:
            ffn = int(k.get("ffn_default_factor", 4)) * hidden
        head_dim = get("head_dim")
        if head_dim is None:
            if hidden % heads:
                raise LigoError(f"{k['hidden']}={hidden} is not divisible by {k['heads']}={heads}; "
                                "pick a head count that divides the hidden size")
            head_dim = hidden // heads
        for key, value in self.requires.items():
            if config.get(key, value) != value:
                raise LigoError(f"{where}: ligo grows {self.model_type} models with {key}={value!r}, not "
                                f"{config[key]!r} (every layer a mixture of experts); set {key} to {value!r}")
        experts, per_token = get("experts", 1), get("experts_per_token", 1)
        if per_token > experts:
            raise LigoError(f"{where}: {k.get('experts_per_token')}={per_token} is larger than "
                            f"{k.get('experts')}={experts}; a token cannot use more experts than there are")
        normalized = self.router.get("normalized", True)
        if isinstance(normalized, str):
            normalized = config.get(normalized, False)
        return Dims(layers=get("layers"), hidden=hidden, heads=heads, kv_heads=get("kv_heads", heads),
                    head_dim=head_dim, ffn=ffn, vocab=get("vocab"), positions=get("positions"),
                    tie=bool(get("tie", True)), experts=experts, experts_per_token=per_token,
                    router_normalized=bool(normalized))

    def target_config(self, source_config: dict, target: dict, known_keys: set[str] | frozenset = frozenset()
                      ) -> dict:
        """The source config with ``target`` written over it, every key and size checked.

        ``target`` may use the model's own config keys (``hidden_size``) or the table's generic size
        names (``hidden``, ``layers``, ``heads``, ``kv_heads``, ``head_dim``, ``ffn``), which are
        written through the keys this table declares. A key that is neither a generic name, nor in the
        source config, nor in ``known_keys`` (the config class's own keys) is an error: a typo must
        never be ignored or written into the grown config.
        """
        if not isinstance(target, dict):
            raise LigoError("the target must be a JSON object of sizes, e.g. {\"hidden\": 1024, \"layers\": 24}")
        if target.get("model_type", self.model_type) != self.model_type:
            raise LigoError(f"target model_type {target['model_type']!r} differs from the source's "
                            f"{self.model_type!r}; growth keeps the architecture, so use a "
                            f"{self.model_type!r} target config")
        generic = {name: self.config_key(name, source_config) for name in self.config if name != "ffn_default_factor"}
        aliases = {a: name for name, v in self.config.items() if isinstance(v, list) for a in v}
        aliases.update({v: name for name, v in generic.items()})
        allowed = set(generic) | set(source_config) | set(known_keys) | set(aliases) | {"model_type"}
        unknown = sorted(key for key in target if key not in allowed)
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, sorted(set(generic) | set(generic.values())), n=2, cutoff=0.5)
                hints.append(f"{key!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
            raise LigoError(f"unknown target key(s) {', '.join(hints)}; use the generic sizes "
                            f"{', '.join(n for n in GENERIC_SIZES if n in generic)} or keys of the "
                            f"{self.model_type} config")
        out = dict(source_config)
        written: dict[str, str] = {}
        for key, value in target.items():
            name = key if key in generic else aliases.get(key)
            if name is not None:
                key = generic[name]
                if value is None and name not in _REQUIRED_CONFIG - {"ffn"}:
                    pass  # a full config's null (GPT-2's n_inner): the size is derived, as in the source
                elif name == "tie":
                    if not isinstance(value, bool):
                        raise LigoError(f"target {key} must be true or false, got {value!r}")
                elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise LigoError(f"target {key} must be a positive integer, got {value!r}")
                if key in written and out[key] != value:
                    raise LigoError(f"the target sets {key} twice with different values (as {written[key]!r} and "
                                    f"as {name if written[key] != name else key!r}); give it once")
                written[key] = name
            out[key] = value
        out["model_type"] = self.model_type
        # per-layer lists the target leaves out get one entry per target layer (the source's pattern repeated;
        # growth then rewrites them by its depth plan), so the target config is valid on its own
        src_layers, layers = source_config.get(generic["layers"]), out.get(generic["layers"])
        for key in self.layer_lists:
            old = source_config.get(key)
            if key not in target and isinstance(old, list) and old and len(old) == src_layers and \
                    isinstance(layers, int) and layers != src_layers:
                out[key] = [old[i % len(old)] for i in range(layers)]
        return out

    def shape(self, entry: Entry, dims: Dims) -> list[int]:
        """The tensor shape of ``entry`` in a model of sizes ``dims`` (-1 where any size goes); a per-expert
        entry's stacked over its experts (its leading axis)."""
        sizes = [[dims.axis_size(t) for t in axis] for axis in entry.axes]
        return [-1 if -1 in axis else sum(axis) for axis in sizes]

    def key_shape(self, entry: Entry, dims: Dims) -> list[int]:
        """The shape of one checkpoint tensor of ``entry`` (one expert's, for a per-expert entry)."""
        shape = self.shape(entry, dims)
        return shape[1:] if entry.per_expert else shape

    # -- weights -----------------------------------------------------------------------------
    def match(self, key: str) -> list[Match | None]:
        """All table entries (None for ignore patterns) whose template matches a state-dict key."""
        found = []
        for pat, entry in self._patterns:
            m = pat.fullmatch(key)
            if m:
                layer, expert = m.groupdict().get("i"), m.groupdict().get("e")
                found.append(None if entry is None else Match(entry, None if layer is None else int(layer),
                                                              None if expert is None else int(expert)))
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
            if m.expert is not None and m.expert >= dims.experts:
                raise LigoError(f"weight {key!r} is expert {m.expert}, but the config has {dims.experts} experts; "
                                "the checkpoint does not match its config.json")
            out[key] = m
        by_entry: dict[str, set] = {}
        for m in out.values():
            if m.entry.scope == "layer":
                by_entry.setdefault(m.entry.name, set()).add((m.layer, m.expert))
        for name, found in by_entry.items():
            experts = range(dims.experts) if "{e}" in name else [None]
            if found != {(i, x) for i in range(dims.layers) for x in experts}:
                where = "layers and experts" if "{e}" in name else "layers"
                raise LigoError(f"layer weight {name!r} is present in {len(found)} of its "
                                f"{dims.layers * len(experts)} {where}; the checkpoint is incomplete")
        return out

    def layer_key(self, prefix: str, entry: Entry, layer: int, expert: int | None = None) -> str:
        return prefix + self.layer_prefix.format(i=layer) + entry.key_name(expert)

    def layer_keys(self, prefix: str, entry: Entry, layer: int, dims: Dims) -> list[str]:
        """The checkpoint keys of ``entry`` in one layer: one, or one per expert."""
        if not entry.per_expert:
            return [self.layer_key(prefix, entry, layer)]
        return [self.layer_key(prefix, entry, layer, x) for x in range(dims.experts)]


_REGISTRY: dict[str, ArchSpec] = {}


def _register(spec: ArchSpec) -> None:
    for mt in spec.model_types:
        _REGISTRY[mt] = spec


def _builtin_tables() -> None:
    if _REGISTRY:
        return
    for item in sorted(resources.files("ligo.archs").iterdir(), key=lambda p: p.name):
        if item.name.endswith(".json"):
            _register(ArchSpec.from_dict(json.loads(item.read_text()), source=f"ligo/archs/{item.name}"))


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
    _register(spec)
    return spec


def supported_types() -> list[str]:
    _builtin_tables()
    return sorted(_REGISTRY)


def spec_for(model_type: str | None, keys, config: dict, arch: str | None = None) -> ArchSpec:
    """The table of a checkpoint: its ``model_type``'s, or with ``arch`` the named table (serving the
    checkpoint's own model_type). An unknown type whose weights and config fit a table is refused with
    that table named, to pass as ``arch``."""
    if arch is not None:
        _builtin_tables()
        if arch not in _REGISTRY:
            raise LigoError(f"--arch {arch}: there is no architecture table for {arch!r} (tables serve "
                            f"{', '.join(supported_types())})")
        table = get_spec(arch)
        spec = replace(table, model_type=model_type or table.model_type)
        try:
            spec.layout(keys, spec.dims(config))
        except LigoError as exc:
            raise LigoError(f"--arch {arch}: the {arch} table ({table.source}) does not fit this {model_type} "
                            f"checkpoint: {exc}; give the table that describes it, or write one ({DOCS_ADDING})"
                            ) from None
        return spec
    try:
        return get_spec(model_type)
    except LigoError as exc:
        fits = []  # (entries of the table the checkpoint lacks, table): the closest table first
        for spec in {id(s): s for s in _REGISTRY.values()}.values():
            try:
                layout = spec.layout(keys, spec.dims(config))
            except (LigoError, TypeError, ValueError):
                continue
            fits.append((len({e.name for e in spec.entries} - {m.entry.name for m in layout.values()}),
                         spec.model_types[0]))
        if not fits:
            raise
        fits = [name for missing, name in sorted(fits) if missing == min(fits)[0]]
        raise LigoError(f"model_type {model_type!r} is not supported, but its weights and config fit the "
                        f"{' and '.join(fits)} table: grow it with --arch {fits[0]} (ligo checks names and shapes, "
                        "not numerics such as the norm type: compare the lossless plan's logits with the source's), "
                        f"or write a table for it ({DOCS_ADDING})") from exc


def get_spec(model_type: str | None) -> ArchSpec:
    """The table serving ``model_type``, as a spec whose ``model_type`` is that type."""
    _builtin_tables()
    if model_type not in _REGISTRY:
        raise LigoError(f"model_type {model_type!r} is not supported (supported: {', '.join(supported_types())}); "
                        f"to add it, write an architecture table as described in {DOCS_ADDING}")
    spec = _REGISTRY[model_type]
    if spec.model_type != model_type:
        spec = replace(spec, model_type=model_type)
    return spec
