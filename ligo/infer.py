"""Architecture tables read off transformers' own classes (:func:`infer_table`); :mod:`ligo.prove` proves them.

For a ``model_type`` without a hand table, the table is derived from the model itself:

1. **A tiny model of the user's own config** (:func:`tiny_config`): its sizes shrunk (2 layers, 64 wide, 4 heads of 16,
   2 kv heads, FFN 128, 256 tokens; one layer of each kind its per-layer lists name), the rest as the config says.
2. **Shapes** (:func:`_probe`): the model is built on the meta device at that size and at sizes that change one
   size at a time (hidden, heads, kv heads, head size, FFN, vocabulary, positions); which axis of which weight
   follows which size places each axis in a space (:mod:`ligo.spaces`); an axis that follows several sizes is a
   fused one, decomposed into its parts (``q+k+v``, ``ffn+ffn``).
3. **Data flow** (:func:`_roles`): the tiny model is run once with hooks, which say what shapes cannot: which
   projections write the residual stream (their output is their block's), which norm feeds the head, which norm
   normalizes a projection's output, whether each layer ends in a norm, by how much the embedding's rows are
   multiplied on their way to the first layer; a fresh model's gains say whether a norm stores ``1 + w``.

Where shapes cannot decide (a fused projection's layout), :func:`infer_table` returns the candidates in order, and
:func:`ligo.prove.table_for` keeps the first whose lossless growth reproduces the tiny model. A structure the rules
do not cover raises :class:`NotInferred`, naming the weight or the operation.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import LigoError

RULES = 1  # the revision of the inference rules: a proved table is cached by it (and by ligo's version)
TINY = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "head_dim": 16, "ffn": 128, "vocab": 256, "experts": 4,
        "experts_per_token": 2, "moe_ffn": 32, "shared_ffn": 64}
# a generic size -> the config attributes that hold it in the families transformers ships (the first present wins;
# a config's attribute_map resolves the standard names, as GPT-2's n_embd for hidden_size)
SIZE_KEYS = {
    "layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "hidden": ("hidden_size", "n_embd", "d_model", "dim"),
    "heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "kv_heads": ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num"),
    "head_dim": ("head_dim", "attention_head_dim"),
    "ffn": ("intermediate_size", "ffn_hidden_size", "n_inner", "ffn_dim", "d_ff", "dff", "mlp_hidden_size"),
    "vocab": ("vocab_size",),
    "positions": ("max_position_embeddings", "n_positions", "max_sequence_length", "max_seq_len", "n_ctx"),
    "experts": ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"),
    "experts_per_token": ("num_experts_per_tok", "moe_topk", "num_selected_experts", "top_k"),
    "moe_ffn": ("moe_intermediate_size", "expert_intermediate_size"),
    "shared_ffn": ("shared_expert_intermediate_size", "shared_intermediate_size"),
}
_PROBES = ("hidden", "heads", "kv_heads", "head_dim", "ffn", "vocab", "positions", "experts", "moe_ffn", "shared_ffn")
_EXPERT = re.compile(r"(?P<pre>.*\.experts)\.(?P<e>\d+)\.(?P<rest>.+)")  # a checkpoint's per-expert key


# -- the tiny config --------------------------------------------------------------------------------------------
def _config_object(model_type: str, config: dict):
    import transformers

    data = {k: v for k, v in config.items() if k not in ("model_type", "transformers_version", "auto_map",
                                                         "architectures", "_name_or_path")}
    return transformers.AutoConfig.for_model(model_type, **data)


def size_keys(cfg) -> dict[str, str]:
    """The config key (as ``to_dict`` writes it) of each generic size the config has."""
    data = cfg.to_dict()
    amap = getattr(cfg, "attribute_map", {}) or {}
    found = {}
    for name, keys in SIZE_KEYS.items():
        for key in keys:
            real = amap.get(key, key)
            if real in data and (isinstance(data[real], int) and not isinstance(data[real], bool) or
                                 (name in ("head_dim", "ffn", "kv_heads") and data[real] is None)):
                found[name] = real
                break
    if "tie_word_embeddings" in data:
        found["tie"] = "tie_word_embeddings"
    return found


def tiny_config(model_type: str, config: dict) -> tuple[dict, dict]:
    """``config`` at a tiny size, as a dict for ``AutoConfig.for_model``, and its size keys: the config key of each
    generic size, or the size itself where the class derives it from a flag and ignores the key (a multi-query
    model's one kv head)."""
    cfg = _config_object(model_type, config)
    keys = size_keys(cfg)
    data = cfg.to_dict()
    if not {"layers", "hidden", "heads", "vocab"} <= set(keys):
        missing = sorted({"layers", "hidden", "heads", "vocab"} - set(keys))
        raise LigoError(f"its config names no {', '.join(missing)} that ligo knows")
    old_layers, old_hidden = data[keys["layers"]], data[keys["hidden"]]
    kv = data.get(keys.get("kv_heads", ""), None)
    small = dict(data)
    # other widths that are the model's width (OPT's word_embed_proj_dim) shrink with it
    small.update({k: TINY["hidden"] for k, v in data.items() if v == old_hidden and isinstance(v, int) and
                  not isinstance(v, bool) and any(w in k for w in ("dim", "size", "hidden", "embd"))})
    small.update({keys[n]: v for n, v in TINY.items() if n in keys and n not in ("kv_heads", "head_dim", "ffn")
                  and isinstance(data.get(keys[n]), int) and not isinstance(data.get(keys[n]), bool)})
    if "kv_heads" in keys and isinstance(kv, int):  # grouped as the config groups them (2 kv heads for 4, or 4)
        small[keys["kv_heads"]] = 2 if kv < data[keys["heads"]] else TINY["heads"]
    if "head_dim" in keys and isinstance(data.get(keys["head_dim"]), int):
        small[keys["head_dim"]] = TINY["head_dim"]
    if "ffn" in keys:  # (a null FFN size, derived from the width, is set: the probes change it alone)
        small[keys["ffn"]] = TINY["ffn"]
    # per-layer lists: the first layer of each kind they name, and the first layers (at least TINY["layers"])
    lists = {k: v for k, v in data.items() if isinstance(v, list) and len(v) == old_layers and old_layers > 1}
    rows = set(range(min(TINY["layers"], old_layers)))
    for values in lists.values():
        rows |= {values.index(v) for v in values if isinstance(v, (str, int, float, bool))}
    rows = sorted(rows)
    small[keys["layers"]] = len(rows)
    for k, values in lists.items():
        small[k] = [values[i] for i in rows]
    for k in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
        if isinstance(small.get(k), int) and small[k] >= TINY["vocab"]:
            small[k] = 0
    if "positions" in keys and isinstance(small.get(keys["positions"]), int):
        small[keys["positions"]] = max(64, min(small[keys["positions"]], 512))
    for k, v in data.items():  # counts of leading layers of another kind, rotary sizes: within the tiny model
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            if k in ("first_k_dense_replace", "num_dense_layers", "first_k_dense", "n_dense_layers"):
                small[k] = min(v, len(rows) - 1)
            elif k in ("rotary_dim", "rotary_emb_dim", "qk_rope_head_dim") and v > TINY["head_dim"]:
                small[k] = TINY["head_dim"] // 2
        if isinstance(v, dict) and v and all(str(i).isdigit() for i in v):  # per-layer settings by layer index
            small[k] = {i: c for i, c in v.items() if int(i) < len(rows)}
    built = _config_object(model_type, small)  # a size the class derives and ignores the key of: fixed
    for name in ("kv_heads", "head_dim"):
        key = keys.get(name)
        if isinstance(key, str) and isinstance(small.get(key), int) and getattr(built, key, None) != small[key]:
            keys[name] = small[key] = getattr(built, key)
            small.pop(key) if key not in data else None
    return small, keys


def _value(small: dict, keys: dict, name: str):
    """A size of the tiny config: its key's value, or the size the class fixes."""
    key = keys.get(name)
    return key if isinstance(key, int) else small.get(key) if key is not None else None


# -- shapes -----------------------------------------------------------------------------------------------------
def build_model(model_type: str, small: dict, device: str = "meta"):
    """The causal LM of ``model_type`` at the config mapping ``small`` (eager attention), on ``device``."""
    import torch
    import transformers

    cfg = transformers.AutoConfig.for_model(model_type, **{k: v for k, v in small.items() if k != "model_type"})
    cfg._attn_implementation = "eager"
    with torch.device(device):
        return transformers.AutoModelForCausalLM.from_config(cfg)


def _perturbed(small: dict, keys: dict, size: str) -> dict | None:
    """``small`` with one size changed (hidden with its heads, so that the head size stays), or None."""
    out = dict(small)
    kv = keys.get("kv_heads")
    grouped = isinstance(kv, str) and isinstance(small.get(kv), int)
    if size == "hidden":
        out[keys["hidden"]] = small[keys["hidden"]] * 2
        out[keys["heads"]] = small[keys["heads"]] * 2
        if grouped:
            out[kv] = small[kv] * 2
    elif size == "heads":
        out[keys["heads"]] = small[keys["heads"]] * 2
        if grouped:
            out[kv] = small[kv] * 2
    elif isinstance(keys.get(size), str) and isinstance(small.get(keys[size]), int) and size != "layers":
        if size == "kv_heads" and small[keys["kv_heads"]] * 2 > small[keys["heads"]]:
            return None
        out[keys[size]] = small[keys[size]] * 2
    else:
        return None
    return out


def _weights(model) -> dict[str, tuple]:
    """What a checkpoint of ``model`` holds that growth must carry, with the shapes: its float tensors as
    transformers saves them (the parameters and persistent float buffers, XIELU's beta and eps among them; a mixture
    of experts' tensors one per expert, as the model holds them stacked)."""
    import tempfile

    from safetensors import safe_open

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        shapes = {}
        for f in sorted(Path(tmp).glob("*.safetensors")):
            with safe_open(f, framework="pt") as handle:
                for key in handle.keys():
                    piece = handle.get_slice(key)
                    if piece.get_dtype() in ("F32", "F16", "BF16", "F64"):
                        shapes[key] = tuple(piece.get_shape())
    return shapes


def _probe(model_type: str, small: dict, keys: dict) -> tuple[dict, dict]:
    """Each parameter's shape at the tiny size and, per probed size, at that size doubled."""
    base = _weights(build_model(model_type, small, "cpu"))
    changed = {}
    for size in _PROBES:
        cfg = _perturbed(small, keys, size)
        if cfg is None:
            continue
        try:
            shapes = _weights(build_model(model_type, cfg, "cpu"))
        except Exception:  # noqa: BLE001  (a size this class cannot take: that probe says nothing)
            continue
        if shapes.keys() >= base.keys():  # (more experts save more per-expert keys: the tiny model's are compared)
            changed[size] = {k: shapes[k] for k in base}
    return base, changed


# -- data flow ----------------------------------------------------------------------------------------------------
def _is_norm(module) -> bool:
    return "norm" in type(module).__name__.lower()


def _linear_axes(module) -> tuple[int, int] | None:
    """(out axis, in axis) of a projection's weight: nn.Linear's (out, in), GPT-2's Conv1D's (in, out)."""
    import torch

    name = type(module).__name__
    if isinstance(module, torch.nn.Linear) or name.endswith("Linear"):
        return 0, 1
    if name == "Conv1D":
        return 1, 0
    return None


def _roles(model, layer_list, ids) -> dict:
    """Run ``model`` once with hooks: which projections of layer 0 read and write the residual stream, which norm
    feeds the head, whether layers end in a norm (post-norm), the embedding's scale."""
    import torch

    seen: dict[str, tuple] = {}
    hooks = []
    layer = layer_list[0]
    named = dict(layer.named_modules())

    def keep(name):
        def hook(module, args, kwargs, output):  # (layers are called with hidden_states as a keyword in places)
            x = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get("hidden_states", next(
                (v for v in kwargs.values() if isinstance(v, torch.Tensor)), None))
            y = output[0] if isinstance(output, tuple) else output
            seen[name] = (x, y if isinstance(y, torch.Tensor) else None)
        return hook

    def watch(module, name):
        hooks.append(module.register_forward_hook(keep(name), with_kwargs=True))

    for name, module in named.items():
        watch(module, name)
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    watch(embed, "<embed>")
    if head is not None:
        watch(head, "<head>")
    inner = {id(m) for m in layer_list.modules()}
    for name, module in model.named_modules():
        if _is_norm(module) and id(module) not in inner:
            watch(module, "<outer>" + name)
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()

    def same(a, b) -> bool:
        return a is not None and b is not None and a.shape == b.shape and bool(torch.allclose(a, b, atol=1e-6))

    layer_in, layer_out = seen[""]
    norm_outs = [seen[n][1] for n, m in named.items() if _is_norm(m) and n in seen]
    blocks = [seen[n][1] for n, m in named.items() if n and "." not in n and n in seen and not _is_norm(m)]
    reads, writes = set(), set()
    for name, module in named.items():
        if _linear_axes(module) is None or name not in seen:
            continue
        x, y = seen[name]
        if any(same(x, n) for n in norm_outs + [layer_in]):
            reads.add(name)
        if any(same(y, b) for b in blocks) or (x is not None and same(y, layer_out)):
            writes.add(name)
    # a norm inside the layer over a projection's output (OLMo 2's q_norm over the whole query projection)
    outputs = {n: seen[n][1] for n, m in named.items() if _linear_axes(m) is not None and n in seen}
    norm_source = {n: next((p for p, y in outputs.items() if same(seen[n][0], y)), None)
                   for n, m in named.items() if _is_norm(m) and n in seen}
    head_norm = next((n.removeprefix("<outer>") for n in seen if n.startswith("<outer>") and head is not None and
                      same(seen[n][1], seen["<head>"][0])), None)
    post = any(same(layer_out, n) for n in norm_outs)
    # the scale from the embedding's rows to the first layer's input (inside the embedding module, as Gemma's
    # scaled embedding, or after it); None where the first layer's input is no multiple of the rows
    rows = embed.weight[ids].detach()
    scale = _multiple(layer_in, rows) if layer_in is not None and layer_in.shape == rows.shape else None
    # what each norm computes: a LayerNorm subtracts the mean (a shifted input gives the same output), RMSNorm not
    kinds = set()
    every = {**{n: m for n, m in named.items() if _is_norm(m)},
             **{"<outer>" + n: m for n, m in model.named_modules() if _is_norm(m) and id(m) not in inner}}
    with torch.no_grad():
        for name, module in every.items():
            x = seen.get(name, (None, None))[0]
            if x is not None and x.dtype.is_floating_point:
                kinds.add("layer" if torch.allclose(module(x), module(x + 3.0), atol=1e-4) else "rms")
    head_gain = head_norm is not None and getattr(dict(model.named_modules())[head_norm], "weight", None) is not None
    return {"reads": reads, "writes": writes, "head_norm": head_norm, "head_gain": head_gain, "post": post,
            "embed_scale": scale,
            "norm_source": {n: p for n, p in norm_source.items() if p is not None}, "norm_kinds": kinds}


def _multiple(a, b) -> float | None:
    """c where ``a == c * b`` elementwise (to fp32 rounding), else None."""
    mask = b.abs() > 1e-3
    if not bool(mask.any()):
        return None
    ratio = a[mask] / b[mask]
    mean = float(ratio.mean())
    return mean if float(ratio.std()) <= 1e-4 * max(1.0, abs(mean)) else None


# -- the table ------------------------------------------------------------------------------------------------------
class NotInferred(LigoError):
    """The model's structure is beyond what inference reads (the reason names the weight or the operation)."""


def _decompose(name: str, axis: int, base: dict, changed: dict, small: dict, keys: dict) -> list[tuple[int, ...]]:
    """The ways an axis is a sum of units: (a, b, c, e) with size = a*heads*hd + b*kv*hd + c*ffn + e*hidden at the
    tiny size and at every probe."""
    def sizes(cfg: dict) -> tuple[int, int, int, int]:
        hidden, heads = cfg[keys["hidden"]], cfg[keys["heads"]]
        hd = _value(cfg, keys, "head_dim")
        hd = hd if isinstance(hd, int) else hidden // heads
        kv = _value(cfg, keys, "kv_heads")
        kv = kv if isinstance(kv, int) else heads
        ffn = _value(cfg, keys, "ffn")
        return heads * hd, kv * hd, ffn if isinstance(ffn, int) else 0, hidden

    points = [(sizes(small), base[name][axis])]
    points += [(sizes(_perturbed(small, keys, s)), shapes[name][axis]) for s, shapes in changed.items()]
    found = []
    for a in range(4):
        for b in range(3):
            for c in range(3):
                for e in range(5):
                    if (a, b, c, e) != (0, 0, 0, 0) and all(
                            a * q + b * kv + c * f + e * h == d for (q, kv, f, h), d in points):
                        found.append((a, b, c, e))
    return sorted(found, key=lambda t: (sum(1 for x in t if x), t[3]))


def _fixed_kv(base: dict, changed: dict, small: dict, keys: dict) -> dict:
    """The size keys with the kv heads fixed at the count every head-following axis decomposes with."""
    axes = [(n, a) for n, shape in base.items() for a in range(len(shape))
            if _follows(n, a, base, changed) & {"heads", "head_dim"}]
    for count in (1, small[keys["heads"]]):
        fixed = {**keys, "kv_heads": count}
        if all(_decompose(n, a, base, changed, small, fixed) for n, a in axes):
            return fixed
    raise NotInferred("its kv heads follow neither its config's kv key nor one kv head nor its heads")


def infer_table(model_type: str, config: dict) -> tuple[dict, list[dict]]:
    """A table for ``model_type`` read off its class (see the module docstring), and the candidates for what shapes
    cannot decide (each a table to prove, the first the most likely). Raises :class:`NotInferred`."""
    import torch

    small, keys = tiny_config(model_type, config)
    base, changed = _probe(model_type, small, keys)
    if "head_dim" in changed and changed.pop("head_dim") == base:  # a head_dim key the class ignores: the head
        keys = {k: v for k, v in keys.items() if k != "head_dim"}     # size is the width over the heads
    if "kv_heads" in changed and changed.pop("kv_heads") == base:  # a kv key the class ignores: one kv head (a
        keys = _fixed_kv(base, changed, small, keys)               # multi-query flag), or as many as the heads
    torch.manual_seed(0)
    model = build_model(model_type, small, "cpu").eval()
    prefix = getattr(model, "base_model_prefix", "") or ""
    base_model = getattr(model, prefix, None) if prefix else None
    if base_model is None:
        raise NotInferred(f"{type(model).__name__} holds no base model under {prefix!r}")
    layer_attr, layer_list = next(((n, m) for n, m in base_model.named_modules()
                                   if isinstance(m, torch.nn.ModuleList) and len(m) == small[keys["layers"]]),
                                  (None, None))
    if layer_list is None:
        raise NotInferred("no list of layers as long as the config's layer count")
    _check_saved_names(model)
    fresh = {n: t.detach().clone() for n, t in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    ids = torch.randint(0, TINY["vocab"], (1, 12), generator=torch.Generator().manual_seed(0))
    roles = _roles(model, layer_list, ids)
    modules = dict(model.named_modules())
    base_prefix, layer_prefix = prefix + ".", f"{layer_attr}.{{i}}."
    layer_re = re.compile(re.escape(base_prefix + layer_attr) + r"\.(\d+)\.(.+)")
    tied = _tied(model, modules, roles)
    _check_alike_layers(base, layer_re)
    glob, layer, head, norms, zero = {}, {}, {}, [], set()
    # projections first: a norm over a projection's output (OLMo 2's q_norm) takes that projection's space
    order = sorted((n for n in base if (not (m := layer_re.fullmatch(n)) or m.group(1) == "0") and
                    (not (x := _EXPERT.fullmatch(n)) or x["e"] == "0")),
                   key=lambda n: n in modules and _is_norm(modules[n.rpartition(".")[0]]))
    for name in order:
        shape, m = base[name], layer_re.fullmatch(name)
        module_name, _, leaf = name.rpartition(".")
        rel = m.group(2) if m else name.removeprefix(base_prefix) if name.startswith(base_prefix) else name
        if (expert := _EXPERT.fullmatch(rel)) and m:  # one expert's weight, as the checkpoint holds it
            entry, axes = f"{expert['pre']}.{{e}}.{expert['rest']}", _expert_axes(name, shape, base, changed)
            layer[entry] = axes
            if axes[0] == "exp.out":
                zero.add(entry.rpartition(".")[0])
            continue
        module = modules[module_name]
        mod_rel = rel.rpartition(".")[0]
        source = roles["norm_source"].get(mod_rel) if m and _is_norm(module) else None
        if source is not None and f"{source}.weight" in layer and len(shape) == 1:
            axes = [layer[f"{source}.weight"][_linear_axes(modules[f"{base_prefix}{layer_attr}.0.{source}"])[0]]]
        else:
            axes = _axes(name, shape, module, module_name, mod_rel, leaf, bool(m), base, changed, small, keys, roles)
        if _is_norm(module) and leaf == "weight":
            norms.append((rel, module, fresh[name]))
        if m and _linear_axes(module) is not None and axes and axes[0] == "res":
            zero.add(mod_rel)  # a new identity layer's writers of the stream start at zero
        (layer if m else glob if name.startswith(base_prefix) else head)[rel] = axes
    table = {"model_type": model_type, "objective": "causal-lm", "rope": any("rope" in k or "rotary" in k
                                                                             for k in small),
             "config": {k: v for k, v in keys.items() if k in ("layers", "hidden", "heads", "kv_heads", "head_dim",
                                                               "ffn", "vocab", "positions", "tie")},
             "base_prefix": base_prefix, "layer_prefix": layer_prefix, "globals": glob, "layer": layer,
             "head": head, "tied": tied, "identity_zero": sorted(zero),
             "layer_lists": sorted(k for k, v in small.items() if isinstance(v, list) and
                                   len(v) == small[keys["layers"]] and small[keys["layers"]] > 1),
             "ignore": _buffers(model, base_prefix, layer_attr),
             "norms": _norms(norms, roles)}
    table["config"].update(_ffn_config(model_type, config, small, keys, base, changed,
                                       {f"{base_prefix}{layer_attr}.0.{n}": axes for n, axes in layer.items()}))
    if any(axes and axes[0] in ("exp", "exp.out") for axes in layer.values()):
        table["config"].update(_experts_config(keys, small, layer))
        table["router"] = {"normalized": "norm_topk_prob" if "norm_topk_prob" in small else True}
    scale = _embed_scale(model_type, small, keys, roles, table)
    if scale is not None:
        table["embed_scale"] = scale
    return table, _candidates(table)


_QKV = {"q": re.compile(r"(q|query|q_proj|wq|to_q)"), "k": re.compile(r"(k|key|k_proj|wk|to_k)"),
        "v": re.compile(r"(v|value|v_proj|wv|to_v)")}


def _which_head_proj(mod_rel: str) -> str | None:
    """q, k or v by a projection's own name (``self_attn.k_proj`` -> k), None when the name does not say."""
    last = mod_rel.split(".")[-1].lower()
    return next((t for t, pat in _QKV.items() if pat.fullmatch(last)), None)


def _axes(name, shape, module, mod_name, mod_rel, leaf, in_layer, base, changed, small, keys, roles) -> list[str]:
    """The axis tokens of one weight (a projection's, a norm's, an embedding's, a scalar)."""
    lin = _linear_axes(module)
    if lin is None and len(shape) == 2 and "experts" in _follows(name, 0, base, changed):
        lin = (0, 1)  # a router of its own class: a projection from the stream to a score per expert
    tokens = []
    for axis, dim in enumerate(shape):
        write = lin is None or axis == lin[0] or leaf == "bias"  # (a bias is its projection's output)
        follows = _follows(name, axis, base, changed)
        if not follows:  # no grown size changes it (the probes say): kept at the source's size
            tokens.append("one" if dim == 1 else "kept")
        elif follows == {"vocab"}:
            tokens.append("vocab")
        elif follows == {"positions"}:
            tokens.append("pos" if dim == _value(small, keys, "positions") else "kept")  # (BioGPT's offset rows)
        elif "experts" in follows:  # the router: a score per expert (its rows, or a bias per expert)
            tokens.append("router")
        elif follows in ({"moe_ffn"}, {"shared_ffn"}) or (follows == {"ffn"} and isinstance(keys.get("moe_ffn"),
                                                                                           str)):
            space = {"moe_ffn": "ffn", "shared_ffn": "sffn", "ffn": "dffn"}[next(iter(follows))]
            tokens.append(space if write else space + ".in")
        elif follows == {"ffn"}:
            parts = next((o[2] for o in _decompose(name, axis, base, changed, small, keys) if o[2] and not any(
                o[:2]) and not o[3]), 1)
            tokens.append("+".join(["ffn" if write else "ffn.in"] * parts))
        elif follows <= {"head_dim", "heads"} and "hidden" not in follows:
            tokens.append("hd")  # the inside of one head (a per-head norm)
        else:
            tokens.append(_head_or_stream(name, axis, dim, follows, lin, write, mod_name, mod_rel, in_layer, base,
                                          changed, small, keys, roles))
    return tokens


def _head_or_stream(name, axis, dim, follows, lin, write, mod_name, mod_rel, in_layer, base, changed, small, keys,
                    roles) -> str:
    """An axis that follows the width: the residual stream (written or read), the query heads, the kv heads, or a
    fused projection of several, told apart by the sizes it follows and by what the projection reads and writes."""
    options = [o for o in _decompose(name, axis, base, changed, small, keys) if not o[2]]
    stream_like = (0, 0, 0, 1) in options
    if lin is None and dim == small[keys["heads"]] and "heads" in follows:
        return "q.head"  # one value per query head (an attention sink, a per-head gate)
    if lin is None:  # a norm's gain or bias, a scalar per unit, an embedding
        if stream_like:
            return "res.in" if mod_name == roles["head_norm"] else "res"
        if (1, 0, 0, 0) in options:
            return "q"  # a norm over the whole query projection (OLMo 2's)
        if (0, 1, 0, 0) in options:
            return "k"
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
        raise NotInferred(f"{name} reads an axis of {dim} that is neither the stream nor the heads' outputs")
    if "ffn" not in keys and follows == {"hidden"} and any(o[3] >= 2 and not any(o[:3]) for o in options) and \
            "att" not in mod_rel:
        return "ffn"  # an FFN whose size the class derives from the width (BLOOM's 4 x hidden): no config key
    if stream_like and (mod_rel in roles["writes"] or "att" not in mod_rel):
        return "res"  # (a shared expert's down projection writes the stream through the MoE block's sum)
    by_name = _which_head_proj(mod_rel)  # (where the sizes cannot tell q from k and v: its name)
    heads_like = {(a, b) for a, b, _, e in options if (a or b) and not e} | ({(1, 0)} if stream_like else set())
    if by_name == "q" and (1, 0) in heads_like:
        return "q"
    if by_name in ("k", "v") and (0, 1) in heads_like | ({(0, 1)} if (1, 0) in heads_like and not
                                                          _grouped(small, keys) else set()):
        return by_name
    for parts, token in (((1, 2), "q+k+v"), ((3, 0), "q+k+v"), ((0, 2), "k+v"), ((1, 0), "q"), ((0, 1), "k")):
        if parts in heads_like:
            return token
    raise NotInferred(f"{name}: an axis of {dim} that follows {', '.join(sorted(follows))} is no layout of heads "
                      "inference knows")


def _grouped(small: dict, keys: dict) -> bool:
    """The tiny model has fewer kv heads than query heads (so sizes tell k and v from q)."""
    kv = _value(small, keys, "kv_heads")
    return isinstance(kv, int) and kv < small[keys["heads"]]


def _follows(name: str, axis: int, base: dict, changed: dict) -> set[str]:
    return {s for s, shapes in changed.items() if shapes[name][axis] != base[name][axis]}


def _norms(norms: list, roles: dict) -> dict:
    """The norms' numerics: LayerNorm or RMSNorm (as they compute, :func:`_roles`), a gain stored as ``1 + w`` (a
    fresh model's gains are zero), whether the stream is normalized after each layer; every norm weight is a gain."""
    kinds = roles["norm_kinds"] or {"rms"}
    zeros = {bool((w == 0).all()) for _, _, w in norms} or {False}
    if len(kinds) > 1 or len(zeros) > 1:
        raise NotInferred("its norms differ in what they compute (LayerNorm and RMSNorm) or in how they store their "
                          "gains (" + ", ".join(f"{n}: {type(m).__name__}" for n, m, _ in norms) + ")")
    return {"type": kinds.pop(), "offset": 1.0 if zeros.pop() else 0.0, "gains": [n for n, _, _ in norms],
            "stream": "post" if roles["post"] else "pre"}


def _check_alike_layers(base: dict, layer_re) -> None:
    """Every layer holds the same weights (a table's layers of several kinds are beyond inference)."""
    held: dict[str, set] = {}
    for name in base:
        if m := layer_re.fullmatch(name):
            x = _EXPERT.fullmatch(m.group(2))
            held.setdefault(m.group(1), set()).add(f"{x['pre']}.{{e}}.{x['rest']}" if x else m.group(2))
    kinds = {frozenset(v) for v in held.values()}
    if len(kinds) > 1:
        one, other = sorted(kinds, key=len)[:2]
        raise NotInferred(f"its layers are of several kinds (some hold {sorted(other - one)[:2]}, others not), which "
                          "only a hand table describes")


def _expert_axes(name: str, shape: tuple, base: dict, changed: dict) -> list[str]:
    """One expert's weight as a checkpoint holds it: an FFN's reads (gate, up: ``exp, ffn, res.in``) or its write
    (down: ``exp.out, res, ffn.in``), its FFN axis the one the experts' FFN size changes."""
    sizes = [_follows(name, a, base, changed) for a in range(len(shape))]
    ffn = [a for a, f in enumerate(sizes) if f & {"ffn", "moe_ffn"} and "hidden" not in f]
    stream = [a for a, f in enumerate(sizes) if f == {"hidden"} or f == {"hidden", "heads"}]
    if len(shape) != 2 or len(ffn) != 1 or len(stream) != 1:
        raise NotInferred(f"{name}: an expert's weight inference cannot read (axes following {sizes})")
    return ["exp", "ffn", "res.in"] if ffn[0] == 0 else ["exp.out", "res", "ffn.in"]


def _experts_config(keys: dict, small: dict, layer: dict) -> dict:
    """A mixture of experts' config keys: the experts, those a token uses, the experts' FFN size (the key their FFN
    axis follows), a shared expert's."""
    out = {n: keys[n] for n in ("experts", "experts_per_token", "shared_ffn") if isinstance(keys.get(n), str)}
    if "experts" not in out or "experts_per_token" not in out:
        raise NotInferred("its config names no experts or experts per token that ligo knows")
    if isinstance(keys.get("moe_ffn"), str):  # the experts' own size; the config's FFN size is the dense one
        out["ffn"] = keys["moe_ffn"]
        if any("dffn" in a for axes in layer.values() for a in axes):
            out["dense_ffn"] = keys["ffn"]
    return out


def _check_saved_names(model) -> None:
    """A class that saves its weights under other names than its modules' (transformers converts them back when it
    loads) has checkpoints whose keys a table read off its modules would not name: refused."""
    import tempfile

    from safetensors import safe_open

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        saved = set()
        for f in Path(tmp).glob("*.safetensors"):
            with safe_open(f, framework="pt") as handle:
                saved |= set(handle.keys())
    other = sorted(k for k in saved - set(model.state_dict()) if not _EXPERT.fullmatch(k))
    if other:
        raise NotInferred(f"transformers saves its weights under other names than its modules' ({other[0]}, ...) "
                          "and converts them when it loads, so a table read off its modules would not name a "
                          "checkpoint's weights")


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
    derived = _weights(build_model(model_type, {**small, keys["ffn"]: None}, "cpu"))
    for name, shape in base.items():
        for axis, dim in enumerate(shape):
            if _follows(name, axis, base, changed) == {"ffn"} and dim == small[keys["ffn"]]:
                size = derived[name][axis]
                if size % small[keys["hidden"]] == 0:
                    return size // small[keys["hidden"]]
    raise NotInferred("its FFN size is not in its config and is no whole multiple of the width")


def _buffers(model, base_prefix: str, layer_attr: str) -> list[str]:
    """Persistent buffers a checkpoint may hold that are no numbers to grow (masks, indices): ignored, layer buffers
    by template."""
    out = set()
    for name, t in model.state_dict().items():
        if t.dtype.is_floating_point:
            continue  # (a weight, or a float buffer carried as one)
        rel = name.removeprefix(base_prefix)
        out.add(re.sub(rf"^{re.escape(layer_attr)}\.\d+\.", f"{layer_attr}.{{i}}.", rel))
    return sorted(out)


def _embed_scale(model_type: str, small: dict, keys: dict, roles: dict, table: dict) -> dict | None:
    """An embedding the model multiplies by hidden ** power: measured at the tiny width and at twice it."""
    import math

    import torch

    if roles["embed_scale"] is None or abs(roles["embed_scale"] - 1) < 1e-6:
        return None
    wide = _perturbed(small, keys, "hidden")
    torch.manual_seed(0)
    model = build_model(model_type, wide, "cpu").eval()
    prefix = table["base_prefix"].rstrip(".")
    layers = getattr(getattr(model, prefix), table["layer_prefix"].split(".")[0])
    ids = torch.randint(0, TINY["vocab"], (1, 12), generator=torch.Generator().manual_seed(0))
    other = _roles(model, layers, ids)["embed_scale"]
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
