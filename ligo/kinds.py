"""Layers of several kinds: how a table's ``kinds`` rules read each layer's kind from a config, how a grown
config says the kinds its depth plan gave (docs/architectures.md, "Layers of several kinds"), and a config's
settings by layer following the depth plan. Which rule a model's config says its kinds by, for a table inferred from
the model, is read in :mod:`ligo.inferkinds`. ``rules`` is a
table's ``kinds`` as :class:`ligo.arch.ArchSpec` holds it: ``{"by": {rule: config key}, "names": [...],
"index_lists": {...}, "aliases": {...}, "pattern": {...} or None, "also": a second rule or None, "last": a config key
counting the last layers or None}``, empty for a table whose layers are all alike. Along two rules a layer's kind is
its two kinds joined, ``conv/dense`` (:data:`SEP`)."""

from __future__ import annotations

from .errors import LigoError
from .spaces import unmarked

SEP = "/"  # joins a layer's kinds along two rules
LAST = "_last"  # marks the kind of a layer among the last ones a config counts (``kinds.last``)


def kind_parts(kind: str) -> list[str]:
    """The kinds a layer's kind joins (one, along one rule)."""
    return kind.split(SEP)


def layer_kinds(rules: dict, config: dict, layers: int, where: str = "config") -> tuple[str, ...]:
    """Each layer's kind along the table's rules (two rules: the two kinds joined); a layer among the last ones
    that ``kinds.last`` counts has its kind marked :data:`LAST` (Gemma 4's layers that reuse keys and values)."""
    kinds = _rule_kinds(rules, config, layers, where)
    if rules and rules.get("also"):
        kinds = tuple(a + SEP + b for a, b in zip(kinds, _rule_kinds(rules["also"], config, layers, where)))
    if rules and rules.get("last"):
        key, value = rules["last"], config.get(rules["last"])
        last = 0 if value is None else value
        if not isinstance(last, int) or isinstance(last, bool) or not 0 <= last < layers:
            raise LigoError(f"{where}: {key} must be a layer count from 0 to {layers - 1}, got {value!r}")
        kinds = tuple(kind + LAST if i >= layers - last else kind for i, kind in enumerate(kinds))
    return kinds


def _rule_kinds(rules: dict, config: dict, layers: int, where: str = "config") -> tuple[str, ...]:
    """Each layer's kind, as the config says it (empty for a table whose layers are all alike). Rules
    (``kinds.by``): ``first_k`` (the first k layers are of the first kind, the rest of the second: GLM-4.5's
    ``first_k_dense_replace``), ``indices`` (the listed layers are of the second kind, the others of the
    first: Llama 4's ``moe_layers``), ``list`` (a per-layer list of kind names: ``layer_types``)."""
    if not rules:
        return ()
    (rule, key), = rules["by"].items()
    names, value = rules["names"], listed_kinds(rules, config) if rule == "list" else config.get(key)
    if rule == "first_k":
        k = 0 if value is None else value
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= layers:
            raise LigoError(f"{where}: {key} must be a layer count from 0 to {layers}, got {value!r}")
        return tuple(names[0] if i < k else names[1] for i in range(layers))
    if rule == "indices":
        if not isinstance(value, list) or not all(isinstance(i, int) and 0 <= i < layers for i in value):
            raise LigoError(f"{where}: {key} must list layer indices from 0 to {layers - 1}, got {value!r}")
        return tuple(names[1] if i in value else names[0] for i in range(layers))
    aliases = rules.get("aliases", {})
    value = [aliases.get(v, v) for v in value] if isinstance(value, list) else value
    if not isinstance(value, list) or len(value) != layers or any(v not in names for v in value):
        raise LigoError(f"{where}: {key} must give each of the {layers} layers one of {names}, got {value!r}")
    return tuple(value)


def listed_kinds(rules: dict, config: dict) -> list | None:
    """The per-layer list of kind names a config gives (rule ``list``), or the one its pattern string spells
    (``kinds.pattern``: Nemotron-H's released configs say ``M-M-*-``), None where it gives neither."""
    if not rules or "list" not in rules["by"]:
        return None
    value, pattern = config.get(rules["by"]["list"]), rules.get("pattern")
    if value is None and pattern and isinstance(config.get(pattern["key"]), str):
        value = [pattern["chars"].get(c, c) for c in config[pattern["key"]]]
    return value if isinstance(value, list) else None


def kinds_config(rules: dict, kinds: list[str], model_type: str) -> dict:
    """The config entries that say ``kinds`` (the target's, after the depth plan) along the table's rules."""
    if rules and rules.get("last"):  # (the marked layers: the last ones, counted)
        last = sum(1 for kind in kinds if kind.endswith(LAST))
        if last and not all(kind.endswith(LAST) for kind in kinds[-last:]):
            raise LigoError(f"this depth plan puts a layer among the {model_type} layers its config counts last "
                            f"({rules['last']}: layers that reuse earlier layers' keys and values) before others, "
                            "which the config cannot say; keep those layers last (--depth identity, or a --depth-map "
                            "that ends with them)")
        inner = kinds_config({**rules, "last": None}, [kind.removesuffix(LAST) for kind in kinds], model_type)
        return {**inner, rules["last"]: last}
    if rules and rules.get("also"):
        ones, twos = zip(*(kind_parts(kind) for kind in kinds))
        return {**_rule_config(rules, list(ones), model_type), **_rule_config(rules["also"], list(twos), model_type)}
    return _rule_config(rules, kinds, model_type)


def _rule_config(rules: dict, kinds: list[str], model_type: str) -> dict:
    """The config entry that says ``kinds`` (the target's, after the depth plan), or an error when the
    config cannot say that order (the first k layers of one kind, the rest of another)."""
    if not rules:
        return {}
    (rule, key), = rules["by"].items()
    names = rules["names"]
    if rule == "first_k":
        k = sum(1 for kind in kinds if kind == names[0])
        if any(kind != names[0] for kind in kinds[:k]):
            raise LigoError(f"this depth plan puts a {names[0]} layer after a {names[1]} layer, which a "
                            f"{model_type} config cannot say (its first {key} layers are {names[0]}, the "
                            f"rest {names[1]}); grow it with --depth identity or interleave, or a --depth-map "
                            f"that keeps the {names[0]} layers first")
        return {key: k}
    def indices(of: str) -> list[int]:
        return [i for i, kind in enumerate(kinds) if kind == of]

    lists = {k: indices(of) for k, of in rules["index_lists"].items()}
    pattern = rules.get("pattern")
    if pattern:  # the pattern string says the same kinds (a stale one would win over the list)
        chars = {kind: c for c, kind in pattern["chars"].items()}
        lists[pattern["key"]] = "".join(chars[kind] for kind in kinds)
    return {key: indices(names[1]) if rule == "indices" else list(kinds), **lists}


def marked(names, table: dict | None) -> list:
    """``names`` (a table's modules or weights: identity_zero, norm gains), each of another shape in each kind named
    once a kind, in order."""
    found = set()
    while table:
        found |= {m for names_ in table["layers"].values() for n in names_ if "@" in n
                  for m in (n, n.rpartition(".")[0] if n.rpartition(".")[2] in ("weight", "bias") else n)}
        table = table.get("also")
    return [m for z in names for m in (sorted(m for m in found if unmarked(m) == z) or [z])]


def by_index(value) -> bool:
    """A config's settings by layer index (``{"5": {"head_dim": 512}}``)."""
    return isinstance(value, dict) and bool(value) and all(str(i).isdigit() and isinstance(v, dict)
                                                           for i, v in value.items())


def overridden(config: dict, attr: str):
    """The value that the config's settings by layer index (transformers' ``per_layer_config``) give ``attr``, None
    where none does; several values are refused (one size of its own is what the tables describe)."""
    found = {c[attr] for c in (config.get("per_layer_config") or {}).values() if isinstance(c, dict) and attr in c}
    if len(found) > 1:
        raise LigoError(f"the config's per_layer_config gives {attr} {len(found)} values ({sorted(found)}); ligo "
                        f"grows layers with at most one {attr} of their own")
    return found.pop() if found else None


def layer_values(value, layers: int) -> list | str | None:
    """A per-layer config value one entry a layer: a list (or a pattern string) as it is, settings by layer index
    as a list (None for a layer without any); None for anything else or another count of layers."""
    if by_index(value):
        return [value.get(str(i), value.get(i)) for i in range(layers)] if all(int(i) < layers for i in value) \
            else None
    return value if isinstance(value, (list, str)) and value and len(value) == layers else None


GROWN_OWN = ("num_key_value_heads",)  # sizes of a layer's own settings that growth changes (the head size is kept)


def own_sizes(config: dict) -> dict:
    """The grown sizes a config's settings by layer give (:data:`GROWN_OWN`): ``{"num_key_value_heads": 8}``."""
    return {attr: v for attr in GROWN_OWN if (v := overridden(config, attr)) is not None}


def with_own_sizes(value, sizes: dict):
    """Settings by layer index with each of ``sizes`` set in every layer's settings that give it."""
    if not by_index(value) or not sizes:
        return value
    return {i: {**c, **{a: n for a, n in sizes.items() if a in c}} for i, c in value.items()}


def followed(value, layers: int, sources: list[int], sizes: dict | None = None):
    """A per-layer config value of ``layers`` layers as the depth plan's target layers have it (each takes its source
    layer's entry, ``sources``), in the value's own form, a layer's own settings with the target's grown ``sizes``
    (:func:`own_sizes`); None where ``value`` is no per-layer value."""
    values = layer_values(value, layers)
    return None if values is None else with_own_sizes(config_value(value, [values[j] for j in sources]), sizes)


def config_value(old, values: list):
    """``values`` (one a layer) in the form of the config value ``old``: a list, a pattern string, or settings by
    layer index (the layers without any left out)."""
    if by_index(old):
        return {str(i): v for i, v in enumerate(values) if v is not None}
    return "".join(values) if isinstance(old, str) else list(values)
