"""Mixtures of experts: a dense model read as a one-expert MoE (upcycling), the experts held stacked and
fused as transformers holds them in memory, and the FLOPs of the experts a token actually uses.

The maths of the experts axis is the operator's (``ligo/operator.py``: one map per layer group over the
experts, shared by an expert's weights and its router row). This module only changes how a model is
*read*: a dense Llama is the Mixtral with one expert, whose router (one row of zeros: one score, weight
one) sends every token to it, so growing it to E experts is growth along one more axis.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .arch import ArchSpec
from .tables import get_spec, supported_types
from .errors import LigoError

EXPERT_KEYS = ("experts", "experts_per_token")


def upcycle_table(source: ArchSpec, target: dict) -> ArchSpec | None:
    """The MoE table a dense source grows into when ``target`` asks for experts (or names an MoE
    model_type), else None. One clear error when the source's family has no MoE class to emit."""
    named = target.get("model_type")
    wants = any(k in target for k in EXPERT_KEYS) or (named not in (None, source.model_type))
    if not wants or "experts" in source.config:
        return None
    tables = {s.model_types[0]: s for s in map(get_spec, supported_types())}
    if named not in (None, source.model_type):
        spec = get_spec(named)
        if source.model_type not in spec.upcycle.get("from", []):
            if "experts" not in spec.config:
                return None  # not an MoE: the plain target check says what is wrong
            raise LigoError(f"a {source.model_type} model cannot be upcycled into {named} (it upcycles "
                            f"{', '.join(spec.upcycle.get('from', [])) or 'no dense family'}); choose another "
                            "target model_type, or leave it out")
        return spec
    found = [s for s in tables.values() if source.model_type in s.upcycle.get("from", [])]
    if not found:
        able = sorted({t for s in tables.values() for t in s.upcycle.get("from", [])})
        raise LigoError(f"the target asks for experts, but ligo has no mixture-of-experts class to emit for "
                        f"{source.model_type} models (it upcycles {', '.join(able)}); drop experts from the target")
    return replace(found[0], model_type=found[0].model_types[0])


def upcycled_config(spec: ArchSpec, dense: ArchSpec, config: dict, target: dict | None = None) -> dict:
    """A dense model's config as the one-expert model of the MoE table ``spec`` (complete, with the MoE
    class's defaults). Every dense setting is kept: an MoE class reads some it does not declare (Qwen3's
    head_dim). A shared expert the upcycling creates (``upcycle.new``) has the size ``target`` gives it, else the
    dense FFN's."""
    from .hf import build_config, meta_model

    out = {k: v for k, v in config.items() if k not in ("architectures", "auto_map")}
    out.update(spec.requires, model_type=spec.model_type)
    ffn = dense.dims(config).ffn
    sizes = [("experts", 1), ("experts_per_token", 1), ("ffn", ffn)]
    if spec.upcycle.get("new") and "shared_ffn" in spec.config:
        key = spec.config_key("shared_ffn")
        sizes.append(("shared_ffn", (target or {}).get(key, (target or {}).get("shared_ffn", ffn))))
    for name, value in sizes:
        out[spec.config_key(name, out)] = value
    hf = build_config(out)
    return {**hf.to_dict(), "architectures": [type(meta_model(spec.objective, hf)).__name__]}


def grown_config(spec: ArchSpec, source_config: dict, target: dict) -> tuple[ArchSpec, dict, dict]:
    """The table the grown model is read with, the source's config as that table reads it, and the target's
    config: the source's family, or the MoE family a dense source is upcycled into."""
    from .hf import known_config_keys

    moe = upcycle_table(spec, target)
    if moe is not None:
        spec, source_config = moe, upcycled_config(moe, spec, source_config, target)
        target = {k: v for k, v in target.items() if k != "model_type"}
    return spec, source_config, spec.target_config(source_config, target, known_config_keys(spec.model_type))


def upcycle(source, target: dict):
    """``source`` (a dense :class:`~ligo.checkpoint.Checkpoint`) as the one-expert model of the MoE family
    ``target`` asks for, with the target to grow it to (its model_type removed), or None when the target
    asks for no experts. Nothing is copied: the weights are the source's tensors under their MoE names,
    plus a router of zeros per layer."""
    from .checkpoint import Checkpoint

    spec = upcycle_table(source.spec, target)
    if spec is None:
        return None
    dense, renames = source.spec, spec.upcycle["layer"]
    config = upcycled_config(spec, dense, source.config, target)
    entries = {e.name: e for e in spec.entries}
    state, prefix = {}, None
    for key, m in source.layout.items():
        if m.entry.scope != "layer":
            state[key] = source.state[key]
            continue
        prefix = key[: len(key) - len(dense.layer_key("", m.entry, m.layer))]
        name = renames.get(m.entry.name, m.entry.name)
        if name not in entries:
            raise LigoError(f"cannot upcycle {source.path} into {spec.model_type}: its weight {key} has no place in a "
                            f"{spec.model_type} model (a bias or a norm {spec.model_type} lacks); grow it as "
                            f"{dense.model_type} without experts")
        state[spec.layer_key(prefix, entries[name], m.layer, 0 if entries[name].per_expert else None)] = source.state[key]
    like = next(iter(source.state.values()))
    for e in spec.entries:
        if e.scope == "layer" and e.axes[:1] == (("router",),):
            for i in range(source.dims.layers):
                state[spec.layer_key(prefix or "", e, i)] = torch.zeros(1, source.dims.hidden, dtype=like.dtype,
                                                                       device=like.device)
    dims = spec.dims(config, where=f"{source.path} upcycled to {spec.model_type}")
    state.update(_new_modules(spec, dims, prefix or "", like, float(config.get("initializer_range") or 0.02)))
    layout = spec.layout(state.keys(), dims)
    rest = {k: v for k, v in target.items() if k != "model_type"}
    return Checkpoint(source.path, config, spec, dims, state, layout, source.dtype, source.has_head), rest


def _new_modules(spec: ArchSpec, dims, prefix: str, like: torch.Tensor, std: float) -> dict:
    """The weights of the modules upcycling creates (``upcycle.new``: a shared expert beside the routed copies of the
    dense FFN): ``zeros`` where the module's output must start at zero (its down projection, its gate), else drawn
    at the config's ``initializer_range`` (so that it learns), the same draws for a given source."""
    gen = torch.Generator().manual_seed(0)
    entries = {e.name: e for e in spec.entries}
    out = {}
    for name, init in spec.upcycle.get("new", {}).items():
        e = entries[name]
        shape = [1 if s == -1 else s for s in spec.key_shape(e, dims)]
        for i in spec.kind_rows(e, dims):
            w = torch.zeros(shape) if init == "zeros" else torch.randn(shape, generator=gen) * std
            out[spec.layer_key(prefix, e, i)] = w.to(dtype=like.dtype, device=like.device)
    return out


def fused_parameters(spec: ArchSpec, model: nn.Module, prefix: str, layers: int) -> dict:
    """The parameters transformers holds fused (all experts of a layer in one tensor, gate and up
    concatenated): ``{parameter name: (layer, fused name, shape)}``, read once from the model while its
    parameters are still registered. Empty where the model holds experts under their checkpoint names."""
    params = dict(model.named_parameters())
    return {prefix + spec.layer_prefix.format(i=i) + fused: (i, fused, params[name].shape)
            for i in range(layers) for fused in spec.fused
            if (name := prefix + spec.layer_prefix.format(i=i) + fused) in params}


def install_fused(spec: ArchSpec, fused: dict, weights: dict, prefix: str, experts: int) -> dict:
    """The operator's per-expert ``weights`` put together as the parameters ``fused`` (from
    :func:`fused_parameters`) hold them: ``{parameter name: tensor}``, differentiable. A layout where the parts'
    last two axes are swapped is followed too."""
    out = {}
    for param, (i, name, shape) in fused.items():
        entries = [next(e for e in spec.entries if e.name == n) for n in spec.fused[name]]
        parts = [torch.stack([weights[spec.layer_key(prefix, e, i, x)] for x in range(experts)])
                 if e.per_expert else weights[spec.layer_key(prefix, e, i)] for e in entries]
        tensor = torch.cat(parts, dim=-2) if len(parts) > 1 else parts[0]
        if tensor.shape != shape and tensor.dim() == 3 and tensor.transpose(1, 2).shape == shape:
            tensor = torch.cat([p.transpose(1, 2) for p in parts], dim=-1)
        if tensor.shape != shape:
            raise LigoError(f"transformers holds {param} as {list(shape)}, but the table's {spec.fused[name]} make "
                            f"{list(tensor.shape)}; the table's fused entry does not match this version")
        out[param] = tensor
    return out


def active_fraction(model: nn.Module) -> dict[int, float]:
    """For each experts parameter of ``model`` (a 3-d tensor stacked over the experts), the fraction of it
    one token uses: ``experts_per_token / experts``. Empty for a dense model."""
    config = getattr(model, "config", None)
    per_token = getattr(config, "num_experts_per_tok", None)
    out = {}
    if not per_token:
        return out
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.dim() == 3 and type(module).__name__.endswith("Experts"):
                out[id(p)] = per_token / p.shape[0]
    return out


def lm_loss_only(model: nn.Module) -> dict:
    """Forward keywords that keep an MoE's router loss out of ``.loss`` (held-out losses are language-model
    losses; the router loss is a training aid). Empty for a dense model."""
    config = getattr(model, "config", None)
    if getattr(config, "router_aux_loss_coef", None) is None:
        return {}
    # (a Granite 4 config names a router loss whether or not its model has experts)
    has_experts = any(type(m).__name__.endswith("Experts") for m in model.modules())
    return {"output_router_logits": False} if has_experts else {}


def train_router(model: nn.Module) -> None:
    """Switch on an MoE's load-balancing loss for training (transformers adds ``router_aux_loss_coef`` times
    it to the loss when ``output_router_logits`` is set); nothing for a dense model."""
    if lm_loss_only(model):
        model.config.output_router_logits = True
