"""Reading a model's layer kinds off its weights, for a table inferred from the model (:mod:`ligo.infer`): which
rule its config says them by (a per-layer list, two lists, layers listed by index, the first layers counted by a
key), and the table's ``kinds`` entry that rule gives. Growing with a table reads the kinds through
:mod:`ligo.kinds`; this module is imported only where a table is inferred."""

from __future__ import annotations

from .kinds import LAST, SEP, by_index
from .hf import config_object
from .probe import EXPERT, LAST_LAYERS_KEYS, NotInferred


def infer_rules(held: dict[int, frozenset], config: dict) -> dict | None:
    """The rule a config says its layers' kinds by, read off the weights each layer holds (``held``: layer ->
    the names of its weights): None where every layer holds the same ones, else ``{"rules": [(rule, key, {kind:
    the weights it alone holds}, aliases)], "rows": {kind: [layers]}}``, one rule or two (``also``), or None where
    no rule below parts the layers as their weights do. Tried in order: one per-layer list of the config (values
    whose layers hold the same weights are one kind, the others its aliases: LFM3's full and sliding attention);
    two lists, a weight following one of them (Kimi-Linear's ``layer_types`` and ``mlp_layer_types``); the layers of
    one kind listed by index (``attn_layer_indices``); the first layers counted by a key (``first_k_dense_replace``,
    ``moe_layer_start_index``)."""
    common = frozenset.intersection(*held.values())
    if len(set(held.values())) == 1:
        return None
    layers = sorted(held)
    if (found := _by_last(held, common, config)) is not None:
        return found
    lists = {k: v for k, v in config.items() if isinstance(v, list) and len(v) == len(layers) and len(set(v)) > 1
             and all(isinstance(x, str) for x in v)}
    tries = [[k] for k in lists] + [[a, b] for i, a in enumerate(lists) for b in list(lists)[i + 1:]]
    for keys in tries:
        if (found := _by_lists(held, common, {k: lists[k] for k in keys})) is not None:
            return found
    order = sorted(set(held.values()), key=lambda h: min(i for i in layers if held[i] == h))
    for key, listed in config.items():  # the layers of one kind listed by index (Bamba's attn_layer_indices)
        if len(order) == 2 and isinstance(listed, list) and listed and all(isinstance(i, int) for i in listed):
            for first, second in (order, order[::-1]):
                rows = [i for i in layers if held[i] == second]
                if sorted(set(listed)) == rows:
                    return {"rules": [("indices", key, {"rest": first - common, "listed": second - common}, {})],
                            "rows": {"rest": [i for i in layers if held[i] == first], "listed": rows}}
    if len(order) == 2:
        count = sum(1 for i in layers if held[i] == order[0])
        words = ("first", "dense", "start", "k_")  # in that order: "first_k_dense_replace" before "topk_group"
        keys = [(min(j for j, w in enumerate(words) if w in k), k) for k, v in config.items()
                if v == count and isinstance(v, int) and not isinstance(v, bool) and any(w in k for w in words)]
        key = min(keys)[1] if keys else None
        if key is not None and all(held[i] == order[0] for i in range(count)):
            rows = {"first": list(range(count)), "rest": list(range(count, len(layers)))}
            return {"rules": [("first_k", key, {"first": order[0] - common, "rest": order[1] - common}, {})],
                    "rows": rows}
    return None


def _by_last(held: dict, common: frozenset, config: dict) -> dict | None:
    """The kinds of a model whose config counts its last layers as another kind (:data:`ligo.probe.LAST_LAYERS_KEYS`):
    each layer's kind along one of the config's per-layer lists (its value), marked :data:`ligo.kinds.LAST` among the
    last layers, where the layers of each such kind hold the same weights (Gemma 4's shared-KV layers hold no keys
    or values, of either attention kind). None where no key and list part the layers so."""
    layers = sorted(held)
    for key in LAST_LAYERS_KEYS:
        last = config.get(key)
        if not isinstance(last, int) or isinstance(last, bool) or not 0 < last < len(layers):
            continue
        tail = set(layers[len(layers) - last:])
        if {held[i] for i in tail} & {held[i] for i in layers if i not in tail}:
            continue  # (the last layers hold what others do: the count parts nothing)
        for list_key, listed in config.items():
            if not isinstance(listed, list) or len(listed) != len(layers) or not all(isinstance(v, str) for v in listed):
                continue
            kind_of = {i: listed[i] + (LAST if i in tail else "") for i in layers}
            by_kind: dict[str, frozenset] = {}
            if all(by_kind.setdefault(kind_of[i], held[i]) == held[i] for i in layers):
                return {"rules": [("list", list_key, {kind: h - common for kind, h in by_kind.items()}, {})],
                        "rows": {kind: [i for i in layers if kind_of[i] == kind] for kind in by_kind}, "last": key}
    return None


def _by_lists(held: dict, common: frozenset, lists: dict[str, list]) -> dict | None:
    """The kinds along one or two per-layer lists, if each weight outside ``common`` is held by exactly the layers
    whose value along one list is one of a set of values (a set of several values: one kind, by aliases)."""
    owner: dict[str, tuple[str, frozenset]] = {}
    for name in frozenset.union(*held.values()) - common:
        rows = {i for i, h in held.items() if name in h}
        for key, listed in lists.items():
            values = frozenset(listed[i] for i in rows)
            if {i for i in held if listed[i] in values} == rows:
                owner[name] = (key, values)
                break
        else:
            return None
    rules, names = [], {}
    for key, listed in lists.items():
        groups = {values for k, values in owner.values() if k == key}
        groups |= {frozenset([v]) for v in listed if not any(v in g for g in groups)}  # (kinds holding nothing alone)
        if len(groups) < 2 or sum(map(len, groups)) != len(set(listed)):
            return None  # (a list that parts nothing, or values in two groups at once)
        kinds, aliases = {}, {}
        for group in sorted(groups, key=lambda g: min(listed.index(v) for v in g)):
            name = next(v for v in listed if v in group)
            kinds[name] = frozenset(n for n, o in owner.items() if o == (key, group))
            aliases.update({v: name for v in group if v != name})
            names[key] = {**names.get(key, {}), **{v: name for v in group}}
        rules.append(("list", key, kinds, aliases))
    if len({name for _, _, kinds, _ in rules for name in kinds}) != sum(len(kinds) for _, _, kinds, _ in rules):
        return None  # (two lists naming a kind alike: the table could not tell them apart)
    rows: dict[str, list[int]] = {}
    for i in sorted(held):
        rows.setdefault(SEP.join(names[k][lists[k][i]] for k in lists), []).append(i)
    return {"rules": rules, "rows": rows}


def layer_kinds_of(base: dict, layer_re, small: dict) -> dict | None:
    """Layers of several kinds (dense beside mixture-of-experts layers, or layers of another mixer): the weights
    each layer holds, and the rule the config says them by (:func:`infer_rules`), or None where every
    layer holds the same weights."""
    named: dict[int, dict[str, tuple]] = {}
    for name in base:
        if m := layer_re.fullmatch(name):
            x = EXPERT.fullmatch(m.group(2))
            named.setdefault(int(m.group(1)), {})[f"{x['pre']}.{{e}}.{x['rest']}" if x else m.group(2)] = base[name]
    shapes: dict[str, set] = {}
    for entries in named.values():
        for n, shape in entries.items():
            shapes.setdefault(n, set()).add(tuple(shape))
    shaped = {n for n, s in shapes.items() if len(s) > 1}  # (of another shape in each kind: Kimi-Linear's q_proj)
    held = {i: frozenset(kind_key(n, shape, shaped) for n, shape in entries.items()) for i, entries in named.items()}
    found = infer_rules(held, small)
    if found is not None and found.get("last"):  # (kinds holding the same weights: each marked with its kind)
        shaped |= {n for n in shapes if not all(n in entries for entries in named.values())}
        held = {i: frozenset(kind_key(n, shape, shaped) for n, shape in entries.items()) for i, entries in named.items()}
        found = infer_rules(held, small)
    if found is not None:
        found["shaped"] = shaped
    if found is None and len(set(held.values())) > 1:
        groups = sorted(set(held.values()), key=len)
        raise NotInferred(f"its layers are of several kinds (some hold {sorted(groups[1] - groups[0])[:2]}, others "
                          "not) by a rule its config does not say in a way inference reads")
    return found


def kind_key(name: str, shape, shaped: set) -> str:
    """A layer weight's name as layers are told apart by, with its shape where that differs between kinds."""
    return f"{name}#{'x'.join(map(str, shape))}" if name in shaped else name


def kind_name(key: str, kind: str) -> str:
    """A table's name of a weight of one kind (:func:`kind_key`): marked with its kind where it has another shape in
    another kind (``self_attn.q_proj@full_attention.weight``; the checkpoint's name is the one without the mark)."""
    name, shaped, _ = key.partition("#")
    if not shaped:
        return name
    head, _, leaf = name.rpartition(".")
    return f"{head}@{kind}.{leaf}" if leaf in ("weight", "bias") else f"{name}@{kind}"


def split_by_kind(layer: dict, kinds: dict | None) -> tuple[dict, dict | None]:
    """The layers' weights: those every kind holds, and the table's ``kinds`` (each rule's kinds with the weights
    it alone holds, read off the first layer of each kind, whose entries ``layer`` has as it read them)."""
    if not kinds:
        return layer, None
    alone = {n for _, _, by_kind, _ in kinds["rules"] for names in by_kind.values() for n in names}
    table = None
    for rule, key, by_kind, aliases in reversed(kinds["rules"]):
        table = {"by": {rule: key}, "layers": {kind: {kind_name(n, kind): a for n, a in layer.items() if n in names}
                                                for kind, names in by_kind.items()},
                 **({"aliases": aliases} if aliases else {}), **({"also": table} if table else {})}
    if kinds.get("last"):
        table["last"] = kinds["last"]
    return {n: a for n, a in layer.items() if n not in alone}, table


def per_layer_lists(model_type: str, config: dict, small: dict, keys: dict) -> list[str]:
    """The config's lists with one entry a layer (they follow the depth plan): as long as the layers in the user's
    config and in the tiny one, and in the class's default config too where it gives the list (Bamba's two-entry
    ``time_step_limit`` is no list of layers, in a two-layer model either); and its settings by layer index
    (transformers' ``per_layer_config``: Gemma 4's full-attention layers' head size)."""
    default = config_object(model_type, {}).to_dict()
    layers = keys["layers"]
    return sorted(k for k, v in small.items() if isinstance(v, list) and isinstance(config.get(k), list)
                  and len(config[k]) == config.get(layers) and len(v) == small[layers] > 1
                  and (not isinstance(default.get(k), list) or len(default[k]) == default.get(layers))
                  or by_index(v) and by_index(config.get(k)))
