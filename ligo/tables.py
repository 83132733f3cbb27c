"""Architecture tables: their format, declared as typed data whose types are its checks, and the registry of
the built-in tables (``ligo/archs/*.json``) and of those a user registers. :mod:`ligo.arch` has what a table
says (:class:`ligo.arch.ArchSpec`); docs/architectures.md has the format in words and how to add a family.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Literal, Optional, Union

from .arch import ADD_HINT, DOCS_ADDING, GENERIC_SIZES, KIND_RULES, REQUIRED_CONFIG, ArchSpec
from .errors import LigoError
from .settings import from_mapping, required, setting
from .spaces import EXPERT_TOKENS, FIXED, GROWN, Entry

OBJECTIVES = ("causal-lm", "masked-lm")
_CONFIG_KEYS = {*GENERIC_SIZES, "ffn_default_factor", "vocab", "positions", "tie"}
Axes = list[Union[str, int]]  # a weight's axes: one token (or ``+``-joined tokens) per axis


# -- the table format, declared as typed data: its types are its checks (ligo.settings.validate) --------------------
@dataclass
class TableFile:
    """An architecture table as its JSON file gives it (docs/architectures.md has the format)."""

    objective: Literal["causal-lm", "masked-lm"] = required("the pretraining objective")
    config: dict[str, Union[str, int, list[str]]] = required("generic size name -> the config key (or aliases) "
                                                             "holding it, or the size itself where the family fixes "
                                                             "it; ffn_default_factor: a number")
    base_prefix: str = required("the prefix of the base model's keys in the LM-head model (model.)")
    layer_prefix: str = required("the prefix of a layer's keys, with {i} for its index (layers.{i}.)")
    globals: dict[str, Axes] = required("the weights outside the layers: name -> axes")
    layer: dict[str, Axes] = required("the weights of every layer: name -> axes ({e}: one per expert)")
    model_type: Optional[str] = setting(None, "the one model_type the table serves")
    model_types: Optional[list[str]] = setting(None, "the model_types of the family the table serves")
    rope: bool = setting(False, "attention with rotary embeddings (heads grown whole)")
    head: dict[str, Axes] = setting({}, "the LM head's weights (outside the base model)")
    tied: dict[str, str] = setting({}, "a head weight -> the weight it is tied to")
    identity_zero: list[str] = setting([], "the modules zeroed in a new layer of identity depth")
    layer_lists: list[str] = setting([], "per-layer config lists that follow the depth plan")
    ignore: list[str] = setting([], "checkpoint keys that are not weights (buffers)")
    norms: dict = setting({}, "the norms' numerics (see Norms)")
    embed_scale: Optional[dict] = setting(None, "an embedding the model scales by a power of hidden (see EmbedScale)")
    scales: dict[str, float] = setting({}, "weights whose product the model multiplies by hidden ** power: name -> "
                                           "power (grown, multiplied by (source / target hidden) ** power)")
    renamed: dict[str, str] = setting({}, "checkpoint key -> the model's parameter name, where they differ")
    router: dict = setting({}, "MoE: {normalized: true, false or the config key saying so; scores: softmax (the "
                               "default) or sigmoid}")
    fused: dict[str, list[str]] = setting({}, "MoE: a layer parameter -> the per-expert entries it holds fused")
    upcycle: dict = setting({}, "MoE: {from: [dense model_types], layer: {dense name: entry name}, new: {entry name: "
                                "zeros or random}: modules upcycling creates}")
    requires: dict = setting({}, "config key -> the value ligo needs")
    kinds: Optional[dict] = setting(None, "layers of several kinds (see Kinds): the weights only some layers hold")
    trailing_layers: Optional[str] = setting(None, "the config key counting the layers after the last that the "
                                                   "checkpoint may hold and transformers does not load (MTP): left out")
    ffn_rule: Optional[dict] = setting(None, "an FFN size the model derives from the config's (LFM2's SwiGLU "
                                             "rounding, see FfnRule)")
    transposable: list[str] = setting([], "stacked expert weights a checkpoint may hold with their last two axes "
                                          "swapped, as transformers reads them too (Qwen3-VL-MoE's released layout)")


@dataclass
class Kinds:
    by: dict[str, str] = required("how the config says each layer's kind: {first_k, indices or list: config key}")
    layers: dict[str, dict[str, Axes]] = required("kind name -> the weights the layers of that kind hold beside the "
                                                  "common ones (first_k and indices: two kinds, in order)")
    index_lists: dict[str, str] = setting({}, "config keys that list the indices of the layers of a kind (key -> "
                                               "kind), rewritten with the kinds after the depth plan")
    aliases: dict[str, str] = setting({}, "list: other names a config may give a kind (Granite 4's hub configs say "
                                          "mamba where transformers writes linear_attention) -> the kind")
    pattern: Optional[dict] = setting(None, "list: {key: a config key holding the kinds as a string, chars: {char: "
                                            "kind}}, read where the list is absent and written beside it")
    also: Optional[dict] = setting(None, "a second rule, as this one, along which the layers also differ (LFM2-MoE: "
                                         "its mixer by layer_types, its FFN dense or MoE by num_dense_layers)")
    last: Optional[str] = setting(None, "a config key counting the model's last layers, each of a kind of its own: "
                                        "its kind along the rule marked _last (Gemma 4's num_kv_shared_layers: "
                                        "layers that reuse the keys and values of the last earlier layer of their "
                                        "attention kind)")


@dataclass
class FfnRule:
    """The FFN's real size when ``flag`` is set: ``multiple_of`` * ceil(int(multiplier * int(2 * ffn / 3)) /
    multiple_of) (LFM2's ``block_auto_adjust_ff_dim``); the grown config states the real size with the flag off."""

    flag: str = required("the config key that turns the rule on")
    multiplier: str = required("the config key of the multiplier (null: none, and no rounding)")
    multiple_of: str = required("the config key of the rounding multiple")


@dataclass
class Norms:
    type: Literal["rms", "layer"] = setting("layer", "RMSNorm or LayerNorm")
    offset: float = setting(0.0, "the gain is offset + weight (Gemma's 1 + w)")
    gains: list[str] = setting([], "the norm weights over the residual stream")
    stream: Literal["pre", "post"] = setting("pre", "post: the residual stream is normalized after each layer")


@dataclass
class EmbedScale:
    weight: str = required("the embedding the model multiplies by hidden_size ** power")
    power: float = required("the power")
    tied_norm: Optional[str] = setting(None, "the norm in front of a head tied to the embedding")


def _entry(where: str, scope: str, name: str, axes: list, kind: str | None = None) -> Entry:
    """One weight of a table, its axes parsed into tokens (``+`` joins spaces concatenated on one axis)."""
    if not isinstance(axes, list):
        raise LigoError(f"{where}: {scope}.{name}: axes must be a list (empty for a scalar)")
    parsed = tuple(tuple(str(a).split("+")) for a in axes)
    first = parsed[0][0] if parsed else None
    if ("{e}" in name and first not in EXPERT_TOKENS) or (first in EXPERT_TOKENS and scope != "layer"):
        raise LigoError(f"{where}: {scope}.{name}: an experts weight is a layer weight with "
                        f"{' or '.join(EXPERT_TOKENS)} as its first axis: one tensor per expert with '{{e}}' in its "
                        "name, or one tensor stacked over the experts without it")
    for tok in (t for axis in parsed for t in axis):
        if tok not in GROWN and tok not in FIXED:
            raise LigoError(f"{where}: {scope}.{name}: unknown axis token {tok!r}; allowed: "
                            f"{sorted(GROWN) + sorted(FIXED)}")
    return Entry(name, parsed, scope, kind)


def read_table(data: dict, source: str = "<dict>") -> ArchSpec:
    """A table from its JSON mapping: every key and type checked by the declared format (:class:`TableFile`,
    :class:`Norms`, :class:`EmbedScale`), then every name it refers to."""
    where = f"architecture table {source}"
    if not isinstance(data, dict):
        raise LigoError(f"{where} must be a JSON object; see {DOCS_ADDING}")
    t = from_mapping(TableFile, data, where)
    if (t.model_type is None) == (t.model_types is None):
        raise LigoError(f"{where}: give either model_type (one type) or model_types (a family's list)")
    types = [t.model_type] if t.model_type is not None else t.model_types
    if not types or not all(types):
        raise LigoError(f"{where}: model_types must be a non-empty list of model_type names")
    if set(t.config) - _CONFIG_KEYS or REQUIRED_CONFIG - set(t.config) or any(v == [] for v in t.config.values()):
        raise LigoError(f"{where}: config keys must include {sorted(REQUIRED_CONFIG)} and may add "
                        f"{sorted(_CONFIG_KEYS - REQUIRED_CONFIG)}, each naming a config key (or a list of "
                        f"aliases); got {sorted(t.config)}")
    if "{i}" not in t.layer_prefix:
        raise LigoError(f"{where}: layer_prefix must contain '{{i}}', got {t.layer_prefix!r}")
    entries = [_entry(where, scope, name, axes) for scope in ("globals", "layer", "head")
               for name, axes in getattr(t, scope).items()]
    kinds = _kinds(where, t.kinds, entries) if t.kinds is not None else {}
    norms = from_mapping(Norms, t.norms or {"type": "layer"}, f"{where}: norms")
    scale = from_mapping(EmbedScale, t.embed_scale, f"{where}: embed_scale") if t.embed_scale is not None else None
    names, modules = {e.name for e in entries}, {e.module for e in entries if e.scope == "layer"}
    refs = [("identity_zero", m, modules) for m in t.identity_zero] + [("norms.gains", g, names) for g in norms.gains]
    refs += [("embed_scale", n, names) for n in ([scale.weight, scale.tied_norm] if scale else []) if n]
    refs += [(f"fused.{p}", n, names) for p, parts in t.fused.items() for n in parts or [None]]
    refs += [("upcycle.layer", n, names) for n in t.upcycle.get("layer", {}).values()]
    refs += [("upcycle.new", n, names) for n in t.upcycle.get("new", {})]
    refs += [("transposable", n, names) for n in t.transposable]
    refs += [("scales", n, names) for n in t.scales]
    for key, name, known in refs:
        if name not in known:
            raise LigoError(f"{where}: {key} names {name!r}, which is no {'layer module' if known is modules else 'weight'} "
                            f"of the table")
    if t.router.get("scores", "softmax") not in ("softmax", "sigmoid"):
        raise LigoError(f"{where}: router.scores must be softmax or sigmoid, got {t.router['scores']!r}")
    if "experts" in t.config and "normalized" not in t.router:
        raise LigoError(f"{where}: an MoE table (config.experts) must say in router.normalized whether the "
                        "top-k weights are renormalized: true, false, or the config key that says so")
    embed = None if scale is None else {k: v for k, v in vars(scale).items() if v is not None}
    ffn_rule = vars(from_mapping(FfnRule, t.ffn_rule, f"{where}: ffn_rule")) if t.ffn_rule is not None else None
    spec = ArchSpec(model_types=tuple(types), objective=t.objective, rope=t.rope, config=dict(t.config),
               base_prefix=t.base_prefix, layer_prefix=t.layer_prefix, entries=entries, tied=dict(t.tied),
               identity_zero=list(t.identity_zero), layer_lists=list(t.layer_lists), ignore=list(t.ignore),
               norms=vars(norms), embed_scale=embed, scales=dict(t.scales), renamed=dict(t.renamed), router=t.router,
               fused=t.fused,
               upcycle=t.upcycle, requires=t.requires, kinds=kinds, trailing_layers=t.trailing_layers,
               ffn_rule=ffn_rule, transposable=list(t.transposable), source=source, model_type=types[0])
    spec._compile()
    return spec


def _kinds(where: str, data: dict, entries: list[Entry]) -> dict:
    """The layer kinds of a table (its ``kinds``), their entries appended to ``entries``; returns the rule as the
    spec holds it: ``{"by": {rule: config key}, "names": [kind, ...]}``."""
    k = from_mapping(Kinds, data, f"{where}: kinds")
    if len(k.by) != 1 or next(iter(k.by)) not in KIND_RULES:
        raise LigoError(f"{where}: kinds.by must be one of {{first_k, indices, list: config key}}, got {k.by}")
    rule = next(iter(k.by))
    if rule != "list" and len(k.layers) != 2:
        raise LigoError(f"{where}: kinds.by {rule} says two kinds of layers; kinds.layers gives {len(k.layers)}")
    common = {e.module for e in entries if e.scope == "layer"}
    for kind, weights in k.layers.items():
        for name, axes in weights.items():
            entry = _entry(where, "layer", name, axes, kind)
            if entry.module in common or any(e.name == name for e in entries):
                raise LigoError(f"{where}: kinds.layers.{kind}.{name}: a module belongs to one kind, or to every layer")
            entries.append(entry)
    unknown = sorted((set(k.index_lists.values()) | set(k.aliases.values())) - set(k.layers))
    if unknown:
        raise LigoError(f"{where}: kinds.index_lists or kinds.aliases name kinds {unknown} that kinds.layers does not "
                        "give")
    also = _kinds(f"{where}: kinds.also", k.also, entries) if k.also is not None else None
    if also is not None and (also.get("also") or set(also["names"]) & set(k.layers)):
        raise LigoError(f"{where}: kinds.also is one more rule with kinds of its own names, not a third")
    return {"by": dict(k.by), "names": list(k.layers), "index_lists": dict(k.index_lists), "aliases": dict(k.aliases),
            "pattern": k.pattern, "also": also, "last": k.last}


_REGISTRY: dict[str, ArchSpec] = {}


def _register(spec: ArchSpec) -> None:
    for mt in spec.model_types:
        _REGISTRY[mt] = spec


_REFUSED: dict[str, str] = {}  # model_type -> why it has no table (ligo/archs/_refused.json)


def _builtin_tables() -> None:
    if _REGISTRY:
        return
    _REFUSED.update(json.loads(resources.files("ligo.archs").joinpath("_refused.json").read_text()))
    for item in sorted(resources.files("ligo.archs").iterdir(), key=lambda p: p.name):
        if item.name.endswith(".json") and not item.name.startswith("_"):
            _register(read_table(json.loads(item.read_text()), source=f"ligo/archs/{item.name}"))


def register_architecture(table: dict | str | Path) -> ArchSpec:
    """Add (or replace) an architecture table, from a dict or a JSON file path."""
    _builtin_tables()
    if isinstance(table, dict):
        spec = read_table(table)
    else:
        path = Path(table)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise LigoError(f"cannot read architecture table {path}: {exc}") from None
        spec = read_table(data, source=str(path))
    _register(spec)
    return spec


def supported_types() -> list[str]:
    _builtin_tables()
    return sorted(_REGISTRY)


def hand_tables() -> list[ArchSpec]:
    """Every hand table, once (a family's table serves several model_types)."""
    _builtin_tables()
    return list({id(s): s for s in _REGISTRY.values()}.values())


def spec_for(model_type: str | None, keys, config: dict, arch: str | None = None) -> ArchSpec:
    """The table of a checkpoint: its ``model_type``'s, or with ``arch`` the named table (serving the
    checkpoint's own model_type). A type without a table gets one read off transformers' class and proved by
    growing a tiny model (:func:`ligo.infer.table_for`; the hand tables whose names and shapes fit are proved
    the same way): a proved table is used without a flag, and nothing that is not proved ever is."""
    if arch is not None:
        _builtin_tables()
        if arch not in _REGISTRY:
            raise LigoError(f"--arch {arch}: there is no architecture table for {arch!r} (tables serve "
                            f"{', '.join(supported_types())})")
        table = get_spec(arch)
        spec = replace(table, model_type=model_type or table.model_type)
        try:  # (read with the table's own name: the inner message names the table that does not fit)
            table.layout(keys, spec.dims(config), config)
        except LigoError as exc:
            raise LigoError(f"--arch {arch}: the {arch} table ({table.source}) does not fit this {model_type} "
                            f"checkpoint: {str(exc).removesuffix(ADD_HINT)}; give the table that describes it, or "
                            f"write one ({DOCS_ADDING})") from None
        return spec
    _builtin_tables()
    if model_type in _REGISTRY or not model_type or refused_reason(model_type):
        return get_spec(model_type)
    from .prove import table_for

    fits = []  # (entries of the table the checkpoint lacks, table): the closest table first
    for spec in hand_tables():
        try:
            layout = spec.layout(keys, spec.dims(config), config)
        except (LigoError, TypeError, ValueError):
            continue
        fits.append((len({e.name for e in spec.entries} - {m.entry.name for m in layout.values()}), spec.source, spec))
    fitting = [spec for missing, _, spec in sorted(fits, key=lambda f: f[:2]) if missing == min(fits)[0]]
    spec = table_for(model_type, config, fitting, read=read_table,
                     donors=hand_tables())
    spec = replace(spec, model_type=model_type)
    spec.layout(keys, spec.dims(config), config)  # the checkpoint's own keys: the table must name them all
    return spec


def refused_reason(model_type: str | None) -> str | None:
    """Why a model_type that has no table is refused (``ligo/archs/_refused.json``), None when nothing is said."""
    _builtin_tables()
    return _REFUSED.get(model_type) if model_type and not model_type.startswith("_") else None


def get_spec(model_type: str | None) -> ArchSpec:
    """The table serving ``model_type``, as a spec whose ``model_type`` is that type."""
    _builtin_tables()
    if model_type not in _REGISTRY and (why := refused_reason(model_type)):
        raise LigoError(f"model_type {model_type!r} is not supported: {why} (what is: {DOCS_ADDING})")
    if model_type not in _REGISTRY:
        raise LigoError(f"model_type {model_type!r} is not supported (supported: {', '.join(supported_types())}); "
                        f"to add it, write an architecture table as described in {DOCS_ADDING}")
    spec = _REGISTRY[model_type]
    if spec.model_type != model_type:
        spec = replace(spec, model_type=model_type)
    return spec
