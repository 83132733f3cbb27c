"""Architecture tables read off transformers' own classes (:func:`infer_table`); :mod:`ligo.prove` proves them.

For a ``model_type`` without a hand table, the table is derived from the model itself:

1. **A tiny model of the user's own config** (:func:`ligo.probe.tiny_config`): its sizes shrunk (2 layers, 64 wide,
   4 heads of 16, 2 kv heads, FFN 128, 256 tokens, 4 experts; one layer of each kind its per-layer lists name), the
   rest as the config says.
2. **Shapes** (:func:`ligo.probe.probe`): the checkpoint transformers saves of it, and of the model at sizes that
   change one at a time (hidden, heads, kv heads, head size, FFN, vocabulary, positions, experts and their FFNs);
   which axis of which weight follows which size places each axis in a space (:mod:`ligo.spaces`); an axis that
   follows several sizes is a fused one, decomposed into its parts (``q+k+v``, ``ffn+ffn``).
3. **Data flow** (:func:`ligo.roles.layer_roles`): the tiny model is run once with hooks, which say what shapes cannot: which
   projections write the residual stream (their output is their block's), which norm feeds the head, which norm
   normalizes a projection's output, whether each layer ends in a norm, by how much the embedding's rows are
   multiplied on their way to the first layer; a fresh model's gains say whether a norm stores ``1 + w``.

A layer module inference cannot read (multi-head latent attention's per-head parts, a short convolution's fused
input) borrows its weights' axes from a hand table whose module of the same name holds them (:mod:`ligo.borrow`).
Where shapes cannot decide (a fused projection's layout), :func:`infer_table` returns the candidates in order, and
:func:`ligo.prove.table_for` keeps the first whose lossless growth reproduces the tiny model. A structure the rules
do not cover raises :class:`ligo.probe.NotInferred`, naming the weight or the operation.
"""

from __future__ import annotations

import json
import re

from .borrow import lend
from .inferkinds import kind_key, layer_kinds_of, per_layer_lists, split_by_kind
from .kinds import marked
from .probe import EXPERT, SIZE_KEYS, TINY, NotInferred, axis_sizes, build_model, decompose, expert_axes, heeded, \
    move_off_init, oriented_experts, own_head_dim, per_layer_input_key, perturbed, probe, saved_shapes, shared_count, \
    tiny_config, tiny_model, unweighted_buffers, value
from .roles import is_norm, layer_roles, linear_axes, merged_roles
from .spaces import FIXED
from .widthscale import width_scales

RULES = 8  # the revision of the inference rules: a proved table is cached by it (and by ligo's version)



# -- the table ------------------------------------------------------------------------------------------------------
def infer_table(model_type: str, config: dict, donors=()) -> tuple[dict, list[dict]]:
    """A table for ``model_type`` read off its class (see the module docstring), and the candidates for what shapes
    cannot decide (each a table to prove, the first the most likely); ``donors``: hand tables that may lend a layer
    module inference cannot read (:mod:`ligo.borrow`). Raises :class:`NotInferred`."""
    small, keys = tiny_config(model_type, config)
    base, changed = probe(model_type, small, keys)
    keys = heeded(base, changed, small, keys)
    model, prefix, layer_attr, layer_list = tiny_model(model_type, small, keys)
    origin = _origins(model, base)  # a checkpoint key -> the tensor the model holds it in
    fresh, ids = _moved_gains(model)
    mem_layer = re.compile(re.escape(f"{prefix}.{layer_attr}") + r"\.(\d+)\.(.+)")
    scaled = {(mm.group(2) if (mm := mem_layer.fullmatch(n)) else n): p  # (a layer's: by its name in the layer)
              for n, p in width_scales(model, model_type, small, keys, ids).items()}
    base_prefix, layer_prefix, layer_re = _saved_prefixes(base, origin, mem_layer, prefix)
    kinds = layer_kinds_of(base, layer_re, small)  # (None: every layer alike)
    shaped = kinds["shaped"] if kinds else set()
    rows = sorted({min(r) for r in kinds["rows"].values()}) if kinds else [0]
    roles = merged_roles([layer_roles(model, layer_list, ids, row) for row in rows])
    modules = dict(model.named_modules())
    tied = {_saved_name(h, origin): _saved_name(e, origin) for h, e in _tied(model, modules, roles).items()}
    glob, layer, head, norms, zero, by_module, lent = {}, {}, {}, [], set(), {}, {"axes": {}, "config": {}}
    for name in _reading_order(base, layer_re, origin, modules, rows):
        shape, m, mem = base[name], layer_re.fullmatch(name), origin[name]
        module_name, _, leaf = mem.rpartition(".")
        rel = m.group(2) if m else name.removeprefix(base_prefix) if name.startswith(base_prefix) else name
        if m and ((expert := EXPERT.fullmatch(rel)) or len(shape) >= 3 and "experts" in axis_sizes(name, 0, base,
                                                                                                   changed)):
            entry = f"{expert['pre']}.{{e}}.{expert['rest']}" if expert else rel  # (one expert's, or all stacked)
            size = value(small, keys, "moe_ffn") if isinstance(keys.get("moe_ffn"), str) else value(small, keys, "ffn")
            layer[kind_key(entry, shape, shaped)] = expert_axes(name, shape, base, changed, size, stacked=not expert)
            continue
        module = modules[module_name]
        mod_rel = (mm.group(2) if (mm := mem_layer.fullmatch(mem)) else mem).rpartition(".")[0]  # (as the model has it)
        by_module[mod_rel] = rel.rpartition(".")[0]
        source = roles["norm_source"].get(mod_rel) if m and is_norm(module) else None
        # the projection a norm normalizes the output of, in this layer (not another kind's: OLMo-hybrid's)
        src_module = modules.get(f"{prefix}.{layer_attr}.{mm.group(1)}.{source}") if source and mm else None
        if src_module is not None and f"{by_module.get(source)}.weight" in layer and len(shape) == 1:
            axes = [layer[f"{by_module[source]}.weight"][linear_axes(src_module)[0]]]
        else:
            axes = _axes_or_lent(lent, donors, m, layer_re, name, shape, module, module_name, mod_rel, leaf, base,
                                 changed, small, keys, roles)
        if is_norm(module) and leaf == "weight":
            norms.append((rel, module, fresh[mem], axes, mod_rel if m else "<outer>" + module_name))
        if m and linear_axes(module) is not None and axes and axes[0] == "res":
            zero.add(rel.rpartition(".")[0])  # a new identity layer's writers of the stream start at zero
        key = kind_key(rel, shape, shaped) if m else rel  # (a weight of another shape in each kind: each read)
        (layer if m else glob if name.startswith(base_prefix) else head)[key] = axes
    layer.update({n: a for n, a in lent["axes"].items() if n in layer})  # (a lent module: all its weights)
    for entry in oriented_experts(layer):  # (the module a table zeroes: a weight's, or a stacked parameter itself)
        zero.add(entry.rpartition(".")[0] if entry.rpartition(".")[2] in ("weight", "bias") else entry)
    every = dict(layer)  # (every layer weight, of any kind)
    layer, kind_layers = split_by_kind(layer, kinds)
    layer_attr = layer_prefix.removesuffix("{i}.").rstrip(".")  # (the checkpoint's names from here on)
    roles = {**roles, "head_norm": _saved_name(f"{roles['head_norm']}.weight", origin).removesuffix(".weight")
             if roles["head_norm"] else None}
    table = {"model_type": model_type, "objective": "causal-lm", "rope": any("rope" in k or "rotary" in k
                                                                             for k in small),
             "config": {k: v for k, v in keys.items() if k in ("layers", "hidden", "heads", "kv_heads", "head_dim",
                                                               "ffn", "vocab", "positions", "tie")},
             "base_prefix": base_prefix, "layer_prefix": layer_prefix, "globals": glob, "layer": layer,
             "head": head, "tied": tied, "identity_zero": marked(sorted(zero), kind_layers),
             "layer_lists": per_layer_lists(model_type, config, small, keys),
             "ignore": unweighted_buffers(model, f"{prefix}.", layer_attr),
             "norms": _norms(norms, roles)}
    table["norms"]["gains"] = marked(table["norms"]["gains"], kind_layers)
    table["config"].update(_ffn_config(model_type, config, small, keys, base, changed,
                                       {f"{base_prefix}{layer_attr}.0.{n}": axes for n, axes in layer.items()}))
    table["config"].update({g: k for g, k in lent["config"].items() if g not in table["config"]})
    if kind_layers:
        table["kinds"] = kind_layers
    _measured(table, small, keys, base, scaled, by_module)
    if any(axes and axes[0] in ("exp", "exp.out") for axes in every.values()):
        table["config"].update(_experts_config(keys, small, every))
        table["router"] = {"normalized": "norm_topk_prob" if "norm_topk_prob" in small else True}
    scale = _embed_scale(model_type, small, keys, roles, table)
    if scale is not None:
        table["embed_scale"] = scale
    return table, _candidates(table)


def _moved_gains(model):
    """The tiny model's fresh weights, and token ids to run it on, after moving its gains and biases off their
    initial values (so that a norm's gain and an offset gain are told apart, and no weight is a neutral one)."""
    import torch

    fresh = {n: t.detach().clone() for n, t in model.state_dict().items()}
    move_off_init(model)
    return fresh, torch.randint(0, TINY["vocab"], (1, 12), generator=torch.Generator().manual_seed(0))


def _axes_or_lent(lent: dict, donors, m, layer_re, name, shape, module, module_name, mod_rel, leaf, base, changed,
                  small, keys, roles) -> list[str]:
    """The axes of one weight (:func:`_axes`), or where inference cannot read a layer weight, its module's weights'
    axes as a hand table holds them (:func:`ligo.borrow.lend`), gathered in ``lent`` with that table's config keys."""
    try:
        return _axes(name, shape, module, module_name, mod_rel, leaf, bool(m), base, changed, small, keys, roles)
    except NotInferred:
        held = {x.group(2) for n in base if (x := layer_re.fullmatch(n)) and x.group(1) == m.group(1)} if m else ()
        found = lend(m.group(2), held, donors, small) if m else None
        if found is None:
            raise
        lent["axes"].update(found[0])
        lent["config"].update(found[1])
        return found[0][m.group(2)]


_QKV = {"q": re.compile(r"(q|query|q_proj|q_gate_proj|wq|to_q)"), "k": re.compile(r"(k|key|k_proj|wk|to_k)"),
        "v": re.compile(r"(v|value|v_proj|wv|to_v)")}


def _which_head_proj(mod_rel: str) -> str | None:
    """q, k or v by a projection's own name (``self_attn.k_proj`` -> k), None when the name does not say."""
    last = mod_rel.split(".")[-1].lower()
    return next((t for t, pat in _QKV.items() if pat.fullmatch(last)), None)


def _axes(name, shape, module, mod_name, mod_rel, leaf, in_layer, base, changed, small, keys, roles) -> list[str]:
    """The axis tokens of one weight (a projection's, a norm's, an embedding's, a scalar)."""
    lin = linear_axes(module)
    if lin is None and len(shape) == 2 and "experts" in axis_sizes(name, 0, base, changed):
        lin = (0, 1)  # a router of its own class: a projection from the stream to a score per expert
    tokens = []
    for axis, dim in enumerate(shape):
        write = lin is None or axis == lin[0] or leaf == "bias"  # (a bias is its projection's output)
        follows = axis_sizes(name, axis, base, changed)
        if not follows:  # no grown size changes it (the probes say): kept at the source's size
            tokens.append("one" if dim == 1 else "kept")
        elif follows == {"vocab"}:
            tokens.append("vocab")
        elif follows == {"layers"} and dim % value(small, keys, "layers") == 0:
            tokens.append("bylayer")  # one slice a layer (Gemma 4's per-layer embeddings): follows the depth plan
        elif follows == {"positions"}:
            tokens.append("pos" if dim == value(small, keys, "positions") else "kept")  # (BioGPT's offset rows)
        elif "experts" in follows:  # the router: a score per expert (its rows, or a bias per expert), and after
            zero = value(small, keys, "zero_experts")  # them one per expert that computes nothing (LongCat-Flash)
            tokens.append("router+zexp" if isinstance(zero, int) and zero and dim == value(small, keys, "experts") + zero
                          else "router")
        elif follows in ({"moe_ffn"}, {"shared_ffn"}) or (follows == {"ffn"} and isinstance(keys.get("moe_ffn"),
                                                                                           str)):
            size = next(iter(follows))
            space = {"moe_ffn": "ffn", "shared_ffn": "sffn", "ffn": "dffn"}[size]
            unit = value(small, keys, size)
            if size == "moe_ffn" and not EXPERT.fullmatch(name) and (count := shared_count(small)):
                space, unit = "sffn", unit * small[count]  # no expert's, as wide as a count of experts: the shared ones
            parts = max(1, dim // unit) if unit else 1  # (gate and up fused)
            tokens.append("+".join([space if write else space + ".in"] * parts))
        elif follows == {"ffn"}:
            parts = next((o[2] for o in decompose(name, axis, base, changed, small, keys) if o[2] and not any(
                o[:2]) and not o[3]), 1)
            tokens.append("+".join(["ffn" if write else "ffn.in"] * parts))
        elif lin is not None and not in_layer and not write and tokens and tokens[0] != "vocab" and \
                follows == {"hidden"}:
            tokens.append("res.in")  # a projection outside the layers that is no head reads the stream (Gemma 4's)
        elif follows <= {"head_dim", "heads"} and "hidden" not in follows:
            tokens.append("hd")  # the inside of one head (a per-head norm)
        else:
            tokens.append(_head_or_stream(name, axis, dim, follows, lin, write, mod_name, mod_rel, in_layer, base,
                                          changed, small, keys, roles))
    if in_layer and (own_head_dim(small, name) or 0) not in (0, value(small, keys, "head_dim")):
        tokens = ["+".join(_OWN_HEADS.get(t, t) for t in axis.split("+")) for axis in tokens]
    return tokens


_OWN_HEADS = {"q": "q2", "k": "k2", "v": "v2", "o.in": "o2.in"}  # heads of a size their layer's settings give


def _head_or_stream(name, axis, dim, follows, lin, write, mod_name, mod_rel, in_layer, base, changed, small, keys,
                    roles) -> str:
    """An axis that follows the width: the residual stream (written or read), the query heads, the kv heads, or a
    fused projection of several, told apart by the sizes it follows and by what the projection reads and writes."""
    options = [o for o in decompose(name, axis, base, changed, small, keys) if not o[2]]
    stream_like = (0, 0, 0, 1) in options
    if dim == small[keys["heads"]] and "heads" in follows and (lin is None or write):
        return "q.head"  # one value (or one row) per query head (an attention sink, a per-head output gate)
    if lin is None:  # a norm's gain or bias, a scalar per unit, an embedding
        if stream_like:
            return "res.in" if mod_name == roles["head_norm"] else "res"
        if (1, 0, 0, 0) in options:
            return "q"  # a norm over the whole query projection (OLMo 2's)
        if (0, 1, 0, 0) in options:
            return "k"
        streams = next((o[3] for o in options if not any(o[:3]) and o[3] >= 2), 0)
        if streams and axis > 0:  # a matrix that reads several residual streams flattened (hyper-connections)
            return "+".join(["res.in"] * streams)
        raise NotInferred(f"{name}: an axis of {dim} that follows {', '.join(sorted(follows))}, in no projection")
    if not in_layer:  # the head: it reads the stream through the write map where a norm with a gain feeds it (the
        if stream_like:  # gain, read side, takes the shares); else through the read map
            return "res" if write or roles["head_gain"] else "res.in"
        raise NotInferred(f"{name} is a projection outside the layers whose axis of {dim} is not the stream's")
    if not write:  # what a projection reads: the heads' outputs (the one that writes the stream), or the stream
        if "ffn" not in keys and follows == {"hidden"} and any(o[3] >= 2 and not any(o[:3]) for o in options) \
                and "att" not in mod_rel:
            return "ffn.in"
        if (1, 0, 0, 0) in options and (mod_rel in roles["writes"] or not stream_like):
            return "o.in"
        if stream_like and mod_rel in roles["writes"] and mod_rel not in roles["reads"]:
            return "o.in"  # (Helium's o_proj is declared hidden -> hidden: it reads the heads' outputs all the same)
        if stream_like:
            return "res.in"
        if mod_rel in roles["writes"] and "heads" in follows:
            return "o.in"  # (heads of a value size of their own: latent attention's, by a name no hand table uses)
        raise NotInferred(f"{name} reads an axis of {dim} (following {', '.join(sorted(follows)) or 'no size'}) that "
                          "is neither the stream nor the heads' outputs")
    if "ffn" not in keys and follows == {"hidden"} and any(o[3] >= 2 and not any(o[:3]) for o in options) and \
            "att" not in mod_rel:
        return "ffn"  # an FFN whose size the class derives from the width (BLOOM's 4 x hidden): no config key
    if stream_like and (mod_rel in roles["writes"] or "att" not in mod_rel):
        return "res"  # (a shared expert's down projection writes the stream through the MoE block's sum)
    by_name = _which_head_proj(mod_rel)  # (where the sizes cannot tell q from k and v: its name)
    probed_kv = isinstance(keys.get("kv_heads"), str)  # (then a kv part only where the kv heads moved the axis)
    heads_like = {(a, b) for a, b, _, e in options if (a or b) and not e and (not b or "kv_heads" in follows
                                                                              or not probed_kv)}
    heads_like |= {(1, 0)} if stream_like else set()
    if by_name == "q" and (1, 0) in heads_like:
        return "q"
    if by_name == "q" and heads_like == {(2, 0)}:
        return "q.gate"  # each head's query rows, then its output gate's (Qwen3.5's, MiniCPM 5's; the proof checks)
    if by_name in ("k", "v") and (0, 1) in heads_like | ({(0, 1)} if (1, 0) in heads_like and not
                                                          _grouped(small, keys) else set()):
        return by_name
    for parts, token in (((1, 2), "q+k+v"), ((3, 0), "q+k+v"), ((0, 2), "k+v"), ((1, 0), "q"), ((0, 1), "k")):
        if parts in heads_like:
            return token
    if "heads" in follows and "kv_heads" not in follows and dim == small[keys["heads"]] * small.get("v_head_dim", 0):
        return "q.v"  # a row block per head of latent attention's value size (an output gate over the values)
    raise NotInferred(f"{name}: an axis of {dim} that follows {', '.join(sorted(follows))} is no layout of heads "
                      "inference knows")


def _grouped(small: dict, keys: dict) -> bool:
    """The tiny model has fewer kv heads than query heads (so sizes tell k and v from q)."""
    kv = value(small, keys, "kv_heads")
    return isinstance(kv, int) and kv < small[keys["heads"]]


def _norms(norms: list, roles: dict) -> dict:
    """The norms' numerics: LayerNorm or RMSNorm (as they compute, :func:`ligo.roles.layer_roles`), a gain stored as ``1 + w`` (as
    measured, or where a fresh model's gains are zero), whether the stream is normalized after each layer; every
    norm weight is a gain.
    A norm over axes that never grow (a sparse-attention indexer's key norm) is the same function after growth,
    whatever it computes: only the others must agree."""
    grown = [(n, m, w, key) for n, m, w, axes, key in norms if any(t not in FIXED for t in axes)]
    kept = {key for _, _, _, axes, key in norms if all(t in FIXED for t in axes)}  # (weightless norms are measured)
    kinds = {kind.removesuffix("+1") for key, kind in roles["norm_kinds"].items() if key not in kept} or {"rms"}
    measured = {key: kind.endswith("+1") for key, kind in roles["norm_kinds"].items()}  # (else: gains fresh at 0)
    zeros = {measured.get(key, bool((w == 0).all())) for _, _, w, key in grown} or {False}
    if len(kinds) > 1 or len(zeros) > 1:
        raise NotInferred("its norms differ in what they compute (LayerNorm and RMSNorm) or in how they store their "
                          "gains (" + ", ".join(f"{n}: {type(m).__name__}" for n, m, *_ in grown) + ")")
    return {"type": kinds.pop(), "offset": 1.0 if zeros.pop() else 0.0, "gains": [n for n, *_ in norms],
            "stream": "post" if roles["post"] else "pre"}


def _reading_order(base: dict, layer_re, origin: dict, modules: dict, rows: list[int]) -> list[str]:
    """The weights a table names (those outside the layers, the first layer of each kind's (``rows``), expert 0's),
    projections first: a norm over a projection's output (OLMo 2's q_norm) takes that projection's space; one weight
    of the layers once, from the first layer that holds it."""
    def a_norms(n: str) -> bool:
        module = modules.get(origin[n].rpartition(".")[0])
        return module is not None and is_norm(module)

    seen, out = set(), []
    for n in sorted(base, key=lambda n: (int(m.group(1)) if (m := layer_re.fullmatch(n)) else -1)):
        m = layer_re.fullmatch(n)
        if (m and int(m.group(1)) not in rows) or ((x := EXPERT.fullmatch(n)) and x["e"] != "0"):
            continue
        rel = (m.group(2), tuple(base[n])) if m else None  # (a weight of another shape in another kind: read too)
        if rel is None or rel not in seen:
            out.append(n)
            seen.add(rel)
    return sorted(out, key=a_norms)


def _origins(model, saved) -> dict[str, str]:
    """Each checkpoint key's tensor in the model, as transformers maps it when it loads (a renamed module, a fused
    projection split in the checkpoint, experts stacked in the model and one a key in the checkpoint)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:  # (a transformers without its conversion mapping: names as they are)
        return {k: k for k in saved}
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    state = model.state_dict()
    out = {}
    for key in saved:
        name = rename_source_key(key, renamings, converters, model.base_model_prefix, state)[0]
        if name not in state:
            raise NotInferred(f"{key}, a weight its checkpoints hold, is no tensor transformers loads it into")
        out[key] = name
    return out


def _saved_name(mem: str, origin: dict) -> str:
    """The checkpoint key of one of the model's tensors (the first that maps to it)."""
    return next((k for k, v in origin.items() if v == mem), mem)


def _saved_prefixes(base: dict, origin: dict, mem_layer, prefix: str) -> tuple[str, str, object]:
    """The checkpoint's base prefix and layer prefix (``{i}`` for the index), and a pattern of its layer keys:
    read off two keys whose tensors are one weight of layers 0 and 1."""
    by_mem = {}
    for key, mem in origin.items():
        if (m := mem_layer.fullmatch(mem)) and m.group(1) in ("0", "1") and not EXPERT.fullmatch(key):
            by_mem.setdefault(m.group(2), {})[m.group(1)] = key
    pair = next((v for v in by_mem.values() if len(v) == 2), None)
    if pair is None:
        raise NotInferred("its checkpoints name no weight of its first two layers alike")
    a, b = pair["0"], pair["1"]
    cut = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    template = a[:cut] + "{i}."
    top = template.split(".")[0] + "."
    embed = next((k for k, mem in origin.items() if mem.startswith(f"{prefix}.") and not mem_layer.fullmatch(mem)), "")
    base_prefix = top if embed.startswith(top) and top != template else ""
    pattern = re.compile(re.escape(template).replace(re.escape("{i}"), r"(\d+)") + r"(.+)")
    return base_prefix, template.removeprefix(base_prefix), pattern


def _experts_config(keys: dict, small: dict, layer: dict) -> dict:
    """A mixture of experts' config keys: the experts, those a token uses, the experts' FFN size (the key their FFN
    axis follows), a shared expert's."""
    out = {n: keys[n] for n in ("experts", "experts_per_token", "shared_ffn", "zero_experts")
           if isinstance(keys.get(n), str)}
    if "shared_ffn" not in out and any("sffn" in a for axes in layer.values() for a in axes):
        out["shared_experts"] = shared_count(small)  # (the shared experts' FFN: this many experts' sizes)
    if "experts" not in out or "experts_per_token" not in out:
        raise NotInferred("its config names no experts or experts per token that ligo knows")
    if isinstance(keys.get("moe_ffn"), str):  # the experts' own size; the config's FFN size is the dense one
        out["ffn"] = keys["moe_ffn"]
        if any("dffn" in a for axes in layer.values() for a in axes):
            out["dense_ffn"] = keys["ffn"]
    return out


def _tied(model, modules: dict, roles: dict) -> dict:
    """The head tied to the embedding, as a table says it (``{head weight: embedding weight}``), or nothing."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or head.weight is not embed.weight:
        return {}
    if not roles["head_gain"]:
        raise NotInferred("its head is tied to its embedding and no norm with a gain feeds the head, so no width "
                          "growth keeps both the embedding's writes and the head's reads")
    # named_parameters lists a tied tensor once (under the embedding): the head's own name is its module's
    head_name = next(n for n, m in modules.items() if m is head) + ".weight"
    return {head_name: next(n for n, p in model.named_parameters() if p is head.weight)}


def _ffn_config(model_type: str, config: dict, small: dict, keys: dict, base: dict, changed: dict,
                layer: dict) -> dict:
    """The FFN size's config entries where the class derives it from the width: none where the config states it;
    GPT-2's null n_inner (a factor measured on the class); no key at all (BLOOM, MPT: the factor the shapes show)."""
    if "ffn" not in keys and isinstance(keys.get("moe_ffn"), str):
        return {}  # (experts only: their own size key is the FFN's, :func:`_experts_config`)
    if "ffn" not in keys:
        sizes = {base[n][i] for n, axes in layer.items() for i, a in enumerate(axes) if a in ("ffn", "ffn.in")}
        if len(sizes) != 1 or next(iter(sizes)) % small[keys["hidden"]]:
            raise NotInferred("its config names no FFN size that ligo knows (" + ", ".join(SIZE_KEYS["ffn"]) +
                              "), and its FFN is no whole multiple of the width")
        return {"ffn": SIZE_KEYS["ffn"][0], "ffn_default_factor": sizes.pop() // small[keys["hidden"]]}
    if config.get(keys["ffn"]) is None:
        return {"ffn_default_factor": _ffn_factor(model_type, small, keys, base, changed)}
    return {}


def _ffn_factor(model_type: str, small: dict, keys: dict, base: dict, changed: dict) -> int:
    """The FFN size as a multiple of the width, where the config leaves it null: measured on the class."""
    derived = saved_shapes(build_model(model_type, {**small, keys["ffn"]: None}, "cpu"))
    for name, shape in base.items():
        for axis, dim in enumerate(shape):
            if axis_sizes(name, axis, base, changed) == {"ffn"} and dim == small[keys["ffn"]]:
                size = derived[name][axis]
                if size % small[keys["hidden"]] == 0:
                    return size // small[keys["hidden"]]
    raise NotInferred("its FFN size is not in its config and is no whole multiple of the width")


def _embed_scale(model_type: str, small: dict, keys: dict, roles: dict, table: dict) -> dict | None:
    """An embedding the model multiplies by hidden ** power: measured at the tiny width and at twice it."""
    import math

    import torch

    if roles["embed_scale"] is None or abs(roles["embed_scale"] - 1) < 1e-6:
        return None
    wide = perturbed(small, keys, "hidden")
    torch.manual_seed(0)
    model = build_model(model_type, wide, "cpu").eval()
    prefix = table["base_prefix"].rstrip(".")
    layers = getattr(getattr(model, prefix), table["layer_prefix"].split(".")[0])
    ids = torch.randint(0, TINY["vocab"], (1, 12), generator=torch.Generator().manual_seed(0))
    other = layer_roles(model, layers, ids)["embed_scale"]
    if other is None:
        return None
    power = math.log(other / roles["embed_scale"]) / math.log(2)
    if abs(power) < 1e-3:
        return None  # a constant multiplier (Granite's): growth keeps it
    embed = next(n for n, axes in table["globals"].items() if axes == ["vocab", "res"])
    out = {"weight": embed, "power": round(power, 4)}
    if table["tied"] and roles["head_norm"]:
        out["tied_norm"] = roles["head_norm"].removeprefix(table["base_prefix"]) + ".weight"
    return out


def _measured(table: dict, small: dict, keys: dict, base: dict, scaled: dict, by_module: dict) -> None:
    """The table's ``scales`` (each number computed from the width, by the weight it multiplies, named as the
    checkpoint names it) and the config key of an axis packed one slice a layer."""
    scales = {f"{by_module[m]}.weight": p for m, p in scaled.items() if m in by_module}
    table.update({"scales": scales} if scales else {})
    packed = {base[table["base_prefix"] + n][a] for n, axes in table["globals"].items() for a, t in enumerate(axes)
              if t == "bylayer"}
    table["config"].update(per_layer_input_key(small, keys, packed))


def _candidates(table: dict) -> list[dict]:
    """The table, then its variants where shapes cannot decide: a fused q/k/v projection whose heads are
    interleaved (each head's q, k and v side by side), fused gate/up units interleaved in pairs."""
    out = [table]
    swaps = [("q+k+v", "qkv"), ("ffn+ffn", "ffn.pair")]
    for old, new in swaps:
        if any(old in axes for scope in ("globals", "layer", "head") for axes in table[scope].values()):
            variant = json.loads(json.dumps(table))
            for scope in ("globals", "layer", "head"):
                variant[scope] = {k: [new if a == old else a for a in axes] for k, axes in variant[scope].items()}
            out.append(variant)
    return out
