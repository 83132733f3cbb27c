"""mergekit's ``passthrough`` configs as ligo depth maps: ``ligo grow --from-mergekit CONFIG.yml``.

A passthrough merge stacks slices of layers of one model (SOLAR's depth up-scaling, Goliath-style frankenmerges);
that is a depth map of ligo's operator (:func:`ligo.maps.depth_plan`), written with the same bytes mergekit
writes. Read: ``slices`` (each one ``sources`` entry with ``model`` and ``layer_range`` [start, end)),
``merge_method: passthrough``, ``dtype``, and a slice's ``parameters: {scale: ...}`` that zeroes the output
projections (the way mergekit users insert LLaMA-Pro identity blocks: those layers become ``new``). Anything
else is refused in one line: ligo does one model's depth, not merges of several.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .settings import read_yaml
from .errors import LigoError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_KEYS = {"slices", "merge_method", "dtype", "base_model", "tokenizer_source", "out_dtype"}


def read_passthrough(path: str | Path, identity_zero: list[str] | None = None) -> tuple[str, str, torch.dtype | None]:
    """(the source model, the depth map, the output dtype or None) of a mergekit passthrough config.
    ``identity_zero``: the modules a slice must zero to be read as identity blocks (the table's; checked later
    when None)."""
    where = f"mergekit config {path}"
    data = read_yaml(path, "mergekit config", "check the path")
    if not isinstance(data, dict):
        raise LigoError(f"{where} must hold a mapping (slices, merge_method, dtype)")
    if data.get("merge_method") != "passthrough":
        raise LigoError(f"{where}: merge_method {data.get('merge_method')!r} is not supported; ligo reads passthrough "
                        "merges of one model (depth up-scaling), not merges of several models' weights")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise LigoError(f"{where}: key(s) {unknown} are not read by ligo (it reads slices, merge_method, dtype)")
    slices = data.get("slices")
    if not isinstance(slices, list) or not slices:
        raise LigoError(f"{where}: slices must be a non-empty list of slices, each with sources: [{{model, layer_range}}]")
    models, items = set(), []
    for i, sl in enumerate(slices):
        sources = sl.get("sources") if isinstance(sl, dict) else None
        if not isinstance(sources, list) or len(sources) != 1 or not isinstance(sources[0], dict):
            raise LigoError(f"{where}: slice {i + 1} must have exactly one source (model and layer_range)")
        src = sources[0]
        rng = src.get("layer_range")
        if not (isinstance(rng, list) and len(rng) == 2 and all(isinstance(x, int) for x in rng) and rng[0] < rng[1]):
            raise LigoError(f"{where}: slice {i + 1}: layer_range must be [start, end) with start < end, got {rng!r}")
        models.add(str(src.get("model")))
        new = _zeroed(where, i, src.get("parameters") or sl.get("parameters"), identity_zero)
        items += [f"new:{layer}" for layer in range(*rng)] if new else [f"{rng[0]}-{rng[1] - 1}"]
    if len(models) != 1:
        raise LigoError(f"{where}: the slices take layers from {len(models)} models ({', '.join(sorted(models))}); "
                        "ligo grows one model: give every slice the same model")
    dtype = data.get("out_dtype") or data.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise LigoError(f"{where}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return models.pop(), ",".join(items), DTYPES.get(dtype)


def _zeroed(where: str, i: int, parameters, identity_zero) -> bool:
    """Whether a slice's parameters zero the output projections (identity blocks); other parameters are refused."""
    if not parameters:
        return False
    scale = parameters.get("scale") if isinstance(parameters, dict) and set(parameters) == {"scale"} else None
    rules = scale if isinstance(scale, list) else None
    zeroed = {r.get("filter") for r in rules or [] if isinstance(r, dict) and r.get("value") == 0 and r.get("filter")}
    rest = [r for r in rules or [] if not (isinstance(r, dict) and r.get("filter") in zeroed)]
    if rules is None or not zeroed or any(not isinstance(r, dict) or r.get("value") != 1 or r.get("filter")
                                          for r in rest):
        raise LigoError(f"{where}: slice {i + 1}: parameters other than a scale of 0 on the output projections "
                        "(an identity block) are not supported")
    if identity_zero is not None and zeroed != {m.rsplit(".", 1)[-1] for m in identity_zero}:
        raise LigoError(f"{where}: slice {i + 1} zeroes {sorted(zeroed)}; an identity block of this model zeroes "
                        f"{sorted(m.rsplit('.', 1)[-1] for m in identity_zero)}")
    return True
