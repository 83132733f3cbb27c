"""mergekit's ``passthrough`` configs as ligo depth maps: ``ligo grow --from-mergekit CONFIG.yml``.

A passthrough merge stacks slices of layers of one model (SOLAR's depth up-scaling, Goliath-style frankenmerges);
that is a depth map of ligo's operator (:func:`ligo.maps.depth_plan`), written with the same bytes mergekit
writes. Read: ``slices`` (each one ``sources`` entry with ``model`` and ``layer_range`` [start, end)),
``merge_method: passthrough``, ``dtype`` (or ``out_dtype``), ``base_model`` and ``tokenizer_source`` when they
name the slices' model, and a ``scale`` parameter (on a source or a slice) evaluated as mergekit evaluates it:
conditions ``{filter, value}`` in order, the first whose filter is in a tensor's name (or none, or ``*``)
giving its factor, and lists of numbers interpolated over the slice's layers. A layer whose factors are 0 on
exactly its output projections (the table's ``identity_zero``) and 1 elsewhere is an identity block
(``new:K``), one whose factors are all 1 a copy; any other factor is refused naming the rule that gives it.
Anything else is refused in one line, before anything is expanded or read beyond the source's headers: ligo
does one model's depth, not merges of several.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import LigoError, brief
from .settings import read_yaml

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_KEYS = {"slices", "merge_method", "dtype", "base_model", "tokenizer_source", "out_dtype"}
_SLICE_KEYS = {"sources", "parameters"}
_SOURCE_KEYS = {"model", "layer_range", "parameters"}


def read_passthrough(path: str | Path, arch: str | None = None) -> tuple[str, str, torch.dtype | None]:
    """(the source model, the depth map, the output dtype or None) of a mergekit passthrough config, checked
    against the source's config and weight names (``arch``: the table to read it with, as ``ligo grow --arch``)."""
    from .checkpoint import describe_checkpoint

    where = f"mergekit config {path}"
    data = read_yaml(path, "mergekit config", "check the path")
    if not isinstance(data, dict):
        raise LigoError(f"{where} must hold a mapping (slices, merge_method, dtype)")
    if data.get("merge_method") != "passthrough":
        raise LigoError(f"{where}: merge_method {brief(data.get('merge_method'))} is not supported; ligo reads "
                        "passthrough merges of one model (depth up-scaling), not merges of several models' weights")
    _known_keys(where, data, _KEYS, "the config", "slices, merge_method, dtype, base_model, tokenizer_source")
    slices = data.get("slices")
    if not isinstance(slices, list) or not slices:
        raise LigoError(f"{where}: slices must be a non-empty list of slices, each with sources: [{{model, layer_range}}]")
    models, ranges = set(), []
    for i, sl in enumerate(slices):
        sources = sl.get("sources") if isinstance(sl, dict) else None
        if not isinstance(sources, list) or len(sources) != 1 or not isinstance(sources[0], dict):
            raise LigoError(f"{where}: slice {i + 1} must have exactly one source (model and layer_range)")
        src = sources[0]
        _known_keys(where, sl, _SLICE_KEYS, f"slice {i + 1}", "sources, parameters")
        _known_keys(where, src, _SOURCE_KEYS, f"slice {i + 1}'s source", "model, layer_range, parameters")
        if not isinstance(src.get("model"), str) or not src["model"]:
            raise LigoError(f"{where}: slice {i + 1}: model must be the path of the model's folder, got "
                            f"{brief(src.get('model'))}")
        rng = src.get("layer_range")
        if not (isinstance(rng, list) and len(rng) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                and x >= 0 for x in rng) and rng[0] < rng[1]):
            raise LigoError(f"{where}: slice {i + 1}: layer_range must be [start, end) of two layer numbers with "
                            f"0 <= start < end, got {brief(rng)}")
        models.add(src["model"])
        ranges.append((i, rng[0], rng[1], [src.get("parameters"), sl.get("parameters")]))
    if len(models) != 1:
        raise LigoError(f"{where}: the slices take layers from {len(models)} models "
                        f"({', '.join(brief(m) for m in sorted(models)[:4])}); ligo grows one model: give every slice "
                        "the same model")
    model = models.pop()
    for key in ("base_model", "tokenizer_source"):
        value = data.get(key)
        if value is not None and not (key == "tokenizer_source" and value == "base") and not _same(value, model):
            raise LigoError(f"{where}: {key} {brief(value)} is not the model the slices take their layers from "
                            f"({brief(model)}); ligo grows one model, with its own config and tokenizer: drop "
                            f"{key}, or make it that model")
    dtype = data.get("out_dtype") if data.get("out_dtype") is not None else data.get("dtype")
    if dtype is not None and not (isinstance(dtype, str) and dtype in DTYPES):
        raise LigoError(f"{where}: dtype {brief(dtype)} is not one of {', '.join(DTYPES)}")
    scopes = [[_scale(where, i, params) for params in scope] for i, _, _, scope in ranges]  # checked before the source
    source = describe_checkpoint(model, arch=arch)  # its headers: the layers and the names of their weights
    layers = source.dims.layers
    for i, a, b, _ in ranges:  # every range checked before any is expanded
        if b > layers:
            raise LigoError(f"{where}: slice {i + 1}: layer_range [{a}, {b}]: layer {b - 1} is out of range; the "
                            f"source has {layers} layers (0-{layers - 1})")
    return model, _depth_map(where, source, ranges, scopes), DTYPES.get(dtype)


def _known_keys(where: str, data: dict, known: set, what: str, reads: str) -> None:
    unknown = sorted(str(k)[:40] for k in set(data) - known)
    if unknown:
        raise LigoError(f"{where}: key(s) {unknown[:6]} of {what} are not read by ligo (it reads {reads})")


def _same(value, model: str) -> bool:
    """Whether a config's model reference names ``model`` (the same string, or the same folder)."""
    if not isinstance(value, str):
        return False
    try:
        return value == model or Path(value).resolve() == Path(model).resolve()
    except (OSError, ValueError):
        return False


def _scale(where: str, i: int, parameters):
    """A source's or slice's ``scale`` setting, checked to be one ligo evaluates (None: none given)."""
    if parameters is None:
        return None
    if not isinstance(parameters, dict) or set(parameters) - {"scale"}:
        names = sorted(str(k)[:40] for k in parameters) if isinstance(parameters, dict) else brief(parameters)
        raise LigoError(f"{where}: slice {i + 1}: parameters {names} are not supported; ligo reads a scale (of 0 on "
                        "the output projections: an identity block)")
    setting = parameters.get("scale")
    rules = [setting] if isinstance(setting, dict) else setting
    if isinstance(rules, list) and rules and any(isinstance(r, dict) for r in rules):
        for rule in rules:
            if not (isinstance(rule, dict) and "value" in rule and set(rule) <= {"filter", "value"}
                    and (rule.get("filter") is None or isinstance(rule["filter"], str)) and _number(rule["value"])):
                raise LigoError(f"{where}: slice {i + 1}: scale rule {brief(rule)} is no {{filter, value}} with a "
                                "number as its value; write each rule as {filter: NAME, value: NUMBER}")
        return rules
    if setting is None or _number(setting) or (isinstance(setting, list) and all(_number(v) for v in setting)):
        return setting
    raise LigoError(f"{where}: slice {i + 1}: scale {brief(setting)} is no number, list of numbers or list of "
                    "{filter, value} rules")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _factor(name: str, setting, t: float):
    """(the factor mergekit's ``evaluate_setting`` gives tensor ``name`` at position ``t`` of its slice, the rule
    that gives it): None where no rule matches (the tensor is left as it is)."""
    if setting is None or _number(setting):
        return setting, setting
    if setting and all(_number(v) for v in setting):  # numbers: interpolated over the slice's layers
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1, frac = min(len(setting) - 1, i0 + 1), scaled - int(scaled)
        return (1 - frac) * setting[i0] + frac * setting[i1], setting
    for rule in setting:
        if rule.get("filter") in (None, "*") or rule["filter"] in name:
            return _factor(name, rule["value"], t)[0], rule
    return None, None


def _resolved(name: str, scopes: list, t: float):
    """The factor of tensor ``name`` from the first scope (the source's parameters, then the slice's) that gives one."""
    for setting in scopes:
        value, rule = _factor(name, setting, t)
        if value is not None:
            return value, rule
    return None, None


def _depth_map(where: str, source, ranges: list, scopes: list) -> str:
    """The depth map of the slices: a plain slice as a range, a scaled one layer by layer (a copy, or an identity
    block when its factors zero exactly the output projections)."""
    spec = source.spec
    keys_of: dict[int, list] = {}
    for key, m in source.layout.items():
        if m.layer is not None:
            keys_of.setdefault(m.layer, []).append((key, m))
            continue
        # mergekit scales the weights before the layers (the embeddings) by the first slice's parameters, those after
        # them (the final norm, the head) by the last slice's
        first = m.entry.scope == "globals" and ("embed" in m.entry.name or m.entry.axes[0][0] in ("vocab", "pos",
                                                                                                "type"))
        i = ranges[0 if first else -1][0]
        value, rule = _resolved(key, scopes[0 if first else -1], 0.0)
        if value not in (None, 1):
            raise LigoError(f"{where}: slice {i + 1}: scale {brief(rule)} scales {key} (outside the layers) by "
                            f"{value:g}; ligo scales no weight outside the layers: give that rule a filter that names "
                            "only the output projections")
    zero_names = sorted({m.rsplit(".", 1)[-1] for m in spec.identity_zero})
    items, out = [], 0
    for (i, a, b, _), scope in zip(ranges, scopes):
        if all(s is None for s in scope):
            items.append(f"{a}-{b - 1}")
            out += b - a
            continue
        for idx, j in enumerate(range(a, b)):
            t = idx / (b - a - 1) if b - a > 1 else 1.0
            zeroed, block = {}, {}
            for key, m in sorted(keys_of.get(j, []), key=lambda km: km[0]):
                name = key[: len(key) - len(spec.layer_key("", m.entry, j, m.expert))] + spec.layer_key(
                    "", m.entry, out, m.expert)  # mergekit names a tensor by its output layer
                value, rule = _resolved(name, scope, t)
                if m.entry.module in spec.identity_zero:
                    block[name] = key
                if value in (None, 1):
                    continue
                if value != 0:
                    raise LigoError(f"{where}: slice {i + 1}: scale {brief(rule)} scales {name} by {value:g}; ligo "
                                    f"writes a layer scaled by 0 on its output projections ({', '.join(zero_names)}: "
                                    "an identity block) and by 1 elsewhere, not other factors")
                zeroed[name] = rule
            extra, missing = [n for n in zeroed if n not in block], [n for n in block if n not in zeroed]
            if zeroed and extra:
                raise LigoError(f"{where}: slice {i + 1}: scale {brief(zeroed[extra[0]])} zeroes {extra[0]} (source "
                                f"layer {j}), which no identity block zeroes; ligo reads a slice scaled by 0 on "
                                f"exactly its output projections ({', '.join(zero_names)}): give the rule a filter "
                                "that names only those")
            if zeroed and missing:
                raise LigoError(f"{where}: slice {i + 1}: scale {brief(next(iter(zeroed.values())))} zeroes part of "
                                f"source layer {j}'s output projections but not {missing[0]}; an identity block zeroes "
                                f"all of {', '.join(zero_names)}: add a rule for it")
            items.append(f"new:{j}" if zeroed else str(j))
            out += 1
    return ",".join(items)
