"""A model at a tiny size and the shapes of its checkpoint as its sizes change, one at a time: what
:mod:`ligo.infer` reads a table off.

:func:`tiny_config` shrinks a config (its sizes, its per-layer lists to one layer of each kind, what follows the width
or the layer count), :func:`probe` builds the tiny model and one with each size doubled and reads the shapes of the
checkpoints transformers saves of them, :func:`follows` says which sizes change an axis, :func:`decompose` how an axis
that follows several is a sum of their units.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import LigoError
from .hf import config_object, special_floats
from .kinds import by_index, own_sizes, with_own_sizes

class NotInferred(LigoError):
    """The model's structure is beyond what inference reads (the reason names the weight or the operation)."""


TINY = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "head_dim": 16, "ffn": 128, "vocab": 256, "experts": 4,
        "experts_per_token": 2, "moe_ffn": 32, "shared_ffn": 64, "zero_experts": 2}
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
    "experts_per_token": ("num_experts_per_tok", "moe_topk", "num_selected_experts", "top_k",
                          "top_k_experts"),
    "moe_ffn": ("moe_intermediate_size", "expert_intermediate_size"),
    "shared_ffn": ("shared_expert_intermediate_size", "shared_intermediate_size"),
    "zero_experts": ("zero_expert_num",),
}
PROBES = ("hidden", "heads", "kv_heads", "head_dim", "ffn", "vocab", "positions", "experts", "moe_ffn", "shared_ffn",
          "layers")
# config keys that count a model's last layers as layers of another kind (Gemma 4's layers that reuse the keys and
# values of the last earlier layer of their attention kind)
LAST_LAYERS_KEYS = ("num_kv_shared_layers",)
# config keys that count the shared experts beside the routed ones, whose FFN is this many times an expert's
# (DeepSeek's, MiniCPM 5's): two in the tiny model, so that the proof sees the count at work
SHARED_COUNT_KEYS = ("n_shared_experts", "num_shared_experts")
EXPERT = re.compile(r"(?P<pre>.*\.experts)\.(?P<e>\d+)\.(?P<rest>.+)")  # a checkpoint's per-expert key


def shared_count(config: dict) -> str | None:
    """The config key counting the shared experts (:data:`SHARED_COUNT_KEYS`), where the config has one."""
    return next((k for k in SHARED_COUNT_KEYS if isinstance(config.get(k), int) and not isinstance(config[k], bool)
                 and config[k] > 0), None)


def size_keys(cfg) -> dict[str, str]:
    """The config key (as ``to_dict`` writes it) of each generic size the config has."""
    data = cfg.to_dict()
    amap = getattr(cfg, "attribute_map", {}) or {}
    found = {}
    for name, keys in SIZE_KEYS.items():
        for key in keys:
            real = amap.get(key, key)
            if real in data and (isinstance(data[real], int) and not isinstance(data[real], bool) or
                                 (name in ("head_dim", "ffn", "kv_heads", "experts_per_token") and data[real] is None)):
                found[name] = real
                break
    if "tie_word_embeddings" in data:
        found["tie"] = "tie_word_embeddings"
    return found


def _tiny_overrides(overrides, data: dict, keys: dict):
    """A layer's own settings (transformers' ``per_layer_config``) at the tiny size: a head size of its own twice the
    tiny one (so that it stays a size of its own), a kv head count of its own two (the proof's 1.5x then grows it to
    three, as it grows the kv heads: one would make that ratio impossible and leave it unproved)."""
    if not isinstance(overrides, dict):
        return overrides
    out = dict(overrides)
    if isinstance(out.get("head_dim"), int) and out["head_dim"] != data.get(keys.get("head_dim", "")):
        out["head_dim"] = 2 * TINY["head_dim"]
    if isinstance(out.get("num_key_value_heads"), int):
        out["num_key_value_heads"] = 2
    return out


def _shrinking_with(data: dict, keys: dict) -> dict:
    """Other widths that are the model's width (OPT's word_embed_proj_dim) and other vocabularies that are its
    vocabulary (Gemma 4's per-layer embeddings'), at the tiny sizes."""
    def size(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    return {**{k: TINY["hidden"] for k, v in data.items() if size(v) and v == data[keys["hidden"]] and
               any(w in k for w in ("dim", "size", "hidden", "embd"))},
            **{k: TINY["vocab"] for k, v in data.items() if size(v) and v == data[keys["vocab"]] and "vocab" in k}}


def tiny_config(model_type: str, config: dict) -> tuple[dict, dict]:
    """``config`` at a tiny size, as a dict for ``AutoConfig.for_model``, and its size keys: the config key of each
    generic size, or the size itself where the class derives it from a flag and ignores the key (a multi-query
    model's one kv head)."""
    cfg = config_object(model_type, config)
    keys = size_keys(cfg)
    data = special_floats(cfg.to_dict())  # (Granite 4's infinite time_step_limit, as the config class takes it)
    if not {"layers", "hidden", "heads", "vocab"} <= set(keys):
        missing = sorted({"layers", "hidden", "heads", "vocab"} - set(keys))
        raise LigoError(f"its config names no {', '.join(missing)} that ligo knows")
    old_layers = data[keys["layers"]]
    kv = data.get(keys.get("kv_heads", ""), None)
    small = dict(data)
    small.update(_shrinking_with(data, keys))
    small.update({keys[n]: v for n, v in TINY.items() if n in keys and n not in ("kv_heads", "head_dim", "ffn")
                  and isinstance(data.get(keys[n]), int) and not isinstance(data.get(keys[n]), bool)})
    per_token, experts = data.get(keys.get("experts_per_token")), data.get(keys.get("experts"))
    if "experts_per_token" in keys and (isinstance(per_token, int) or per_token is None and isinstance(experts, int)
                                         and experts > 0):
        # (ZAYA's router takes one expert only; a null count beside experts is one the model cannot run without)
        small[keys["experts_per_token"]] = min(per_token or TINY["experts_per_token"], TINY["experts_per_token"])
    if "kv_heads" in keys:  # grouped as the config groups them (2 kv heads for 4, or 4; a null count: as many)
        small[keys["kv_heads"]] = 2 if isinstance(kv, int) and kv < data[keys["heads"]] else TINY["heads"]
    if "head_dim" in keys:  # (a null head size, which some classes derive and others need: the width over the heads)
        small[keys["head_dim"]] = TINY["head_dim"]
    if "ffn" in keys:  # (a null FFN size, derived from the width, is set: the probes change it alone)
        small[keys["ffn"]] = TINY["ffn"]
    if shared := shared_count(data):
        small[shared] = 2
    rows, lists, indexed = _tiny_rows(data, old_layers)
    small[keys["layers"]] = len(rows)
    for k in LAST_LAYERS_KEYS:  # (the tiny model's last layers: one of each kind among the source's last layers)
        if isinstance(data.get(k), int) and 0 < data[k] < old_layers:
            small[k] = sum(1 for i in rows if i >= old_layers - data[k])
    for k, values in lists.items():
        small[k] = [values[i] for i in rows]
    for k, listed in indexed.items():
        small[k] = [rows.index(i) for i in listed if i in rows]
    for k in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
        if isinstance(small.get(k), int) and small[k] >= TINY["vocab"]:
            small[k] = 0
    if "positions" in keys and isinstance(small.get(keys["positions"]), int):
        small[keys["positions"]] = max(64, min(small[keys["positions"]], 512))
    for heads, size, expand in (("mamba_n_heads", "mamba_d_head", "mamba_expand"),
                                ("mamba_num_heads", "mamba_head_dim", "expand")):
        if all(isinstance(data.get(k), int) for k in (heads, size, expand)) and "mamba_d_ssm" not in data:
            # (Mamba-2 heads fill expand x width, where the config does not state their channels itself)
            small[heads], small[size] = 8, data[expand] * TINY["hidden"] // 8
    for k, v in data.items():  # counts of leading layers of another kind, rotary sizes: within the tiny model
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            if k in ("first_k_dense_replace", "num_dense_layers", "first_k_dense", "n_dense_layers"):
                small[k] = min(v, len(rows) - 1)
            elif k in ("n_group", "topk_group", "num_expert_group", "topk_groups"):
                small[k] = 1  # (expert groups within the tiny model's 4 experts)
            elif k in ("rotary_dim", "rotary_emb_dim") and v > TINY["head_dim"]:
                small[k] = TINY["head_dim"] // 2
            elif k in ("qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim") and v > TINY["head_dim"]:
                small[k] = TINY["head_dim"]  # (latent attention's head parts: the tiny head size each)
            elif k == "index_topk":
                small[k] = min(v, 4)  # (a sparse-attention indexer chooses among the proof's 16 tokens)
        if isinstance(v, dict) and v and all(str(i).isdigit() for i in v):  # per-layer settings by layer index:
            small[k] = {str(rows.index(int(i))): _tiny_overrides(c, data, keys)  # the tiny model's layers, tiny sizes
                        for i, c in v.items() if int(i) in rows}
    if all(isinstance(small.get(k), int) for k in ("qk_head_dim", "qk_nope_head_dim", "qk_rope_head_dim")):
        small["qk_head_dim"] = small["qk_nope_head_dim"] + small["qk_rope_head_dim"]  # (LongCat states the sum)
    built = config_object(model_type, small)  # a size the class derives and ignores the key of: fixed
    for name in ("kv_heads", "head_dim"):
        key = keys.get(name)
        if isinstance(key, str) and isinstance(small.get(key), int) and getattr(built, key, None) != small[key]:
            keys[name] = small[key] = getattr(built, key)
            small.pop(key) if key not in data else None
    return small, keys


def _tiny_rows(data: dict, old_layers: int) -> tuple[list[int], dict, dict]:
    """The layers a tiny model keeps of a config's: the first (at least TINY["layers"]), the first of each kind the
    per-layer lists name and of each combination of kinds (MiMo's full attention beside experts; Flint's dense
    layers listed by index among its full-attention ones), so that no two rules coincide in the tiny model; where
    the config counts its last layers as another kind (:data:`LAST_LAYERS_KEYS`), the same again among those.
    Returns the rows, the per-layer lists and the index lists."""
    lists = {k: v for k, v in data.items() if isinstance(v, list) and len(v) == old_layers and old_layers > 1}
    indexed = {k: v for k, v in data.items() if "layer" in k and isinstance(v, list) and 0 < len(v) < old_layers
               and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < old_layers for i in v)}
    last = max((data[k] for k in LAST_LAYERS_KEYS if isinstance(data.get(k), int) and 0 < data[k] < old_layers),
               default=0)
    kinds = [v for v in lists.values() if all(isinstance(x, str) for x in v)]
    rows: set[int] = set()
    for part in (range(old_layers - last), range(old_layers - last, old_layers)) if last else (range(old_layers),):
        rows |= set(part[:TINY["layers"]]) if part.start == 0 else {part.start}
        for values in lists.values():
            seen = [values[i] for i in part]
            rows |= {part.start + seen.index(v) for v in seen if isinstance(v, (str, int, float, bool))}
        combos = [tuple(v[i] for v in kinds) + tuple(i in v for v in indexed.values()) for i in part]
        rows |= {part.start + combos.index(c) for c in combos} if len(kinds) + len(indexed) > 1 else set()
    return sorted(rows), lists, indexed


def value(small: dict, keys: dict, name: str):
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


def perturbed(small: dict, keys: dict, size: str) -> dict | None:
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
    elif size == "layers":  # one layer more, a copy of the last one's settings (an axis packed a slice a layer)
        layers = small[keys["layers"]]
        out[keys["layers"]] = layers + 1
        for k, v in small.items():
            if isinstance(v, list) and len(v) == layers and layers > 1:
                out[k] = v + v[-1:]
            elif by_index(v):
                out[k] = {**v, **({str(layers): v[str(layers - 1)]} if str(layers - 1) in v else {})}
            elif k in LAST_LAYERS_KEYS and isinstance(v, int) and not isinstance(v, bool) and v > 0:
                out[k] = v + 1  # (the new layer among the last ones, as the last layer is)
    elif isinstance(keys.get(size), str) and isinstance(small.get(keys[size]), int):
        if size == "kv_heads" and small[keys["kv_heads"]] * 2 > small[keys["heads"]]:
            return None
        out[keys[size]] = small[keys[size]] * 2
    else:
        return None
    own = own_sizes(small)  # (a kv head count of some layers' own doubles with the kv heads, as growth grows it)
    if grouped and out[kv] != small[kv] and "num_key_value_heads" in own:
        out["per_layer_config"] = with_own_sizes(small["per_layer_config"],
                                                 {"num_key_value_heads": 2 * own["num_key_value_heads"]})
    return out


def saved_shapes(model) -> dict[str, tuple]:
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


def probe(model_type: str, small: dict, keys: dict) -> tuple[dict, dict]:
    """Each parameter's shape at the tiny size and, per probed size, at that size doubled."""
    base = saved_shapes(build_model(model_type, small, "cpu"))
    changed = {}
    for size in PROBES:
        cfg = perturbed(small, keys, size)
        if cfg is None:
            continue
        try:
            shapes = saved_shapes(build_model(model_type, cfg, "cpu"))
        except Exception:  # noqa: BLE001  (a size this class cannot take: that probe says nothing)
            continue
        if shapes.keys() >= base.keys():  # (more experts save more per-expert keys: the tiny model's are compared)
            changed[size] = {k: shapes[k] for k in base}
    return base, changed


def decompose(name: str, axis: int, base: dict, changed: dict, small: dict, keys: dict) -> list[tuple[int, ...]]:
    """The ways an axis is a sum of units: (a, b, c, e) with size = a*heads*hd + b*kv*hd + c*ffn + e*hidden at the
    tiny size and at every probe."""
    def sizes(cfg: dict) -> tuple[int, int, int, int]:
        hidden, heads = cfg[keys["hidden"]], cfg[keys["heads"]]
        hd = own_head_dim(cfg, name) or value(cfg, keys, "head_dim")  # (a layer's own head size: Gemma 4's full ones)
        hd = hd if isinstance(hd, int) else hidden // heads
        kv = value(cfg, keys, "kv_heads")
        kv = kv if isinstance(kv, int) else heads
        ffn = value(cfg, keys, "ffn")
        return heads * hd, kv * hd, ffn if isinstance(ffn, int) else 0, hidden

    points = [(sizes(small), base[name][axis])]
    points += [(sizes(perturbed(small, keys, s)), shapes[name][axis]) for s, shapes in changed.items()]
    found = []
    for a in range(4):
        for b in range(3):
            for c in range(3):
                for e in range(5):
                    if (a, b, c, e) != (0, 0, 0, 0) and all(
                            a * q + b * kv + c * f + e * h == d for (q, kv, f, h), d in points):
                        found.append((a, b, c, e))
    return sorted(found, key=lambda t: (sum(1 for x in t if x), t[3]))


def fixed_kv(base: dict, changed: dict, small: dict, keys: dict) -> dict:
    """The size keys with the kv heads fixed at the count every head-following axis decomposes with."""
    axes = [(n, a) for n, shape in base.items() for a in range(len(shape))
            if axis_sizes(n, a, base, changed) & {"heads", "head_dim"}]
    for count in (1, small[keys["heads"]]):
        fixed = {**keys, "kv_heads": count}
        if all(decompose(n, a, base, changed, small, fixed) for n, a in axes):
            return fixed
    raise NotInferred("its kv heads follow neither its config's kv key nor one kv head nor its heads")


def move_off_init(model) -> None:
    """Move ``model``'s one-dimensional parameters (gains, biases) and the float scalars and vectors its checkpoint
    saves (Gemma 4's ``layer_scalar``, a router's correction bias) off their initial values, so that no weight is a
    neutral one: a proof then shows where growth would carry a one or a zero that is no longer one."""
    import torch

    saved = set(model.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name in saved and b.is_floating_point() and b.dim() <= 1:
                b.add_(0.1 * torch.randn_like(b))


def own_head_dim(cfg: dict, name: str) -> int | None:
    """The head size the layer of weight ``name`` (a checkpoint key; its layer the first index in it) has by its own
    settings (transformers' ``per_layer_config``), None where it has none."""
    layer, own = re.search(r"\.(\d+)\.", name), cfg.get("per_layer_config")
    own = own.get(layer.group(1), own.get(int(layer.group(1)))) if layer and isinstance(own, dict) else None
    return own.get("head_dim") if isinstance(own, dict) else None


def axis_sizes(name: str, axis: int, base: dict, changed: dict) -> set[str]:
    return {s for s, shapes in changed.items() if shapes[name][axis] != base[name][axis]}


def tiny_model(model_type: str, small: dict, keys: dict):
    """The tiny model (random, on the CPU), its base model's prefix, and the name and list of its layers."""
    import torch

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
    return model, prefix, layer_attr, layer_list


def expert_axes(name: str, shape: tuple, base: dict, changed: dict, ffn_size: int, stacked: bool = False
                 ) -> list[str]:
    """One expert's weight as a checkpoint holds it (``stacked``: all experts' in one tensor, the experts first): an
    FFN's reads (gate and up, alone or side by side: ``exp, ffn, res.in``) or its write (down: ``exp.out, res,
    ffn.in``), its FFN axis the one the experts' FFN size (``ffn_size``) changes, in whole units of it."""
    sizes = [axis_sizes(name, a, base, changed) for a in range(len(shape))][int(stacked):]
    ffn = [a for a, f in enumerate(sizes) if f & {"ffn", "moe_ffn"} and "hidden" not in f]
    stream = [a for a, f in enumerate(sizes) if f == {"hidden"} or f == {"hidden", "heads"}]
    parts = shape[int(stacked) + ffn[0]] // ffn_size if len(ffn) == 1 and ffn_size else 0
    if len(sizes) != 2 or len(ffn) != 1 or len(stream) != 1 or parts * ffn_size != shape[int(stacked) + ffn[0]]:
        raise NotInferred(f"{name}: an expert's weight inference cannot read (axes following {sizes})")
    if ffn[0] == 0:
        return ["exp", "+".join(["ffn"] * parts), "res.in"]
    return ["exp.out", "res", "+".join(["ffn.in"] * parts)]


def oriented_experts(layer: dict) -> list[str]:
    """The experts' writes, an experts module's weights turned round (in ``layer``) where they are stored input first
    (Aria's experts x hidden x 2 FFN): its fused gate and up read as a write, or most of its weights do."""
    def turn(a: str) -> str:
        return {"exp": "exp.out", "exp.out": "exp"}.get(a) or "+".join(p.removesuffix(".in") if p.endswith(".in")
                                                                       else p + ".in" for p in a.split("+"))

    groups: dict[str, list[str]] = {}
    for n, axes in layer.items():
        if axes and axes[0] in ("exp", "exp.out"):
            base = n.removesuffix(".weight").removesuffix(".bias")  # (fc1.weight: a stacked one, as saved)
            groups.setdefault(n.split(".{e}.")[0] if ".{e}." in n else base.rpartition(".")[0], []).append(n)
    for names in groups.values():
        writes = [n for n in names if layer[n][0] == "exp.out"]
        if any("+" in layer[n][2] for n in writes) or 2 * len(writes) > len(names) > 1:
            layer.update({n: [turn(a) for a in layer[n]] for n in names})
    return [n for names in groups.values() for n in names if layer[n][0] == "exp.out"]


def unweighted_buffers(model, base_prefix: str, layer_attr: str) -> list[str]:
    """Persistent buffers a checkpoint may hold that are no numbers to grow (masks, indices): ignored, layer buffers
    by template."""
    out = set()
    for name, t in model.state_dict().items():
        if t.dtype.is_floating_point:
            continue  # (a weight, or a float buffer carried as one)
        rel = name.removeprefix(base_prefix)
        out.add(re.sub(rf"^{re.escape(layer_attr)}\.\d+\.", f"{layer_attr}.{{i}}.", rel))
    return sorted(out)


def heeded(base: dict, changed: dict, small: dict, keys: dict) -> dict:
    """The size keys without those the class ignores: a head_dim key (the head size is then the width over the
    heads), a kv key (one kv head, a multi-query flag, or as many as the heads)."""
    if changed.get("head_dim") == base:  # (a probe that moved some weight stays: it tells the axes that follow it)
        keys = {k: v for k, v in keys.items() if k != "head_dim"}
        del changed["head_dim"]
    if changed.get("kv_heads") == base:
        del changed["kv_heads"]
        keys = fixed_kv(base, changed, small, keys)
    return keys


def per_layer_input_key(small: dict, keys: dict, packed: set[int]) -> dict:
    """The config key giving the slice a layer of an axis packed one slice a layer (``hidden_size_per_layer_input``)."""
    if not packed:
        return {}
    slices = {size // value(small, keys, "layers") for size in packed}
    found = sorted((("per_layer" not in k), k) for k, v in small.items() if isinstance(v, int) and
                   not isinstance(v, bool) and v in slices)
    if len(slices) > 1 or not found:
        raise NotInferred(f"an axis packed one slice a layer, of slices {sorted(slices)} no one config key gives")
    return {"per_layer_input": found[0][1]}
