"""Are the grown units used? Per space: how many units duplicate another, and how far apart they are.

A unit is a residual dimension, an FFN neuron, an attention head or an expert (its weights written, its
router row read). Its *write* vector gathers every
weight slice that produces it (embedding columns, output-projection rows, norm gains, biases); its
*read* vector every slice that consumes it. Copies made by Net2Net have equal write vectors; if they
stay equal through training, the grown width computes nothing new (the symmetry trap).
"""

from __future__ import annotations

import torch
from einops import rearrange

from .arch import SPACE_OF, SPACES, ArchSpec, Dims, Match


def _unit_vectors(state: dict, layout: dict[str, Match], dims: Dims, token: str) -> dict[int | None, torch.Tensor]:
    """Per layer (None for the residual stream, shared by all layers): [units, features] for one map token."""
    n, unit = dims.units(token)
    parts: dict[int | None, list[torch.Tensor]] = {}
    experts: dict[tuple[int | None, str], dict[int, torch.Tensor]] = {}  # an expert's weights: one key per expert
    for key, m in layout.items():
        for axis, tokens in enumerate(m.entry.axes):
            if token not in tokens:
                continue
            if m.entry.per_expert and axis == 0:
                experts.setdefault((m.layer, m.entry.name), {})[m.expert] = state[key].float().flatten()
                continue
            w = state[key].float()
            offset = sum(dims.axis_size(t) for t in tokens[: tokens.index(token)])
            # one row per unit: its features along the other axes, with its head_dim slice for a head
            axis -= int(m.entry.per_expert)  # a per-expert tensor lacks the experts axis
            w = rearrange(w.narrow(axis, offset, n * unit).movedim(axis, 0), "(n u) ... -> n (... u)", u=unit)
            layer = m.layer if SPACE_OF[token].in_layers else None
            parts.setdefault(layer, []).append(w)
    for (layer, _), rows in sorted(experts.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        parts.setdefault(layer, []).append(torch.stack([rows[x] for x in range(n)]))
    return {k: torch.cat(v, dim=1) for k, v in parts.items()}


def _gather(state: dict, layout: dict[str, Match], dims: Dims, tokens: tuple[str, ...]) -> dict:
    found = [_unit_vectors(state, layout, dims, t) for t in tokens]
    layers = set().union(*found) if found else set()
    return {k: torch.cat([f[k] for f in found if k in f], dim=1) for k in layers}


def _nearest(vecs: torch.Tensor) -> tuple[int, float]:
    """(units equal to another unit, smallest distance between two units relative to the mean norm)."""
    d = torch.cdist(vecs.double(), vecs.double(), compute_mode="donot_use_mm_for_euclid_dist")
    d.fill_diagonal_(float("inf"))
    nearest = d.min(dim=1).values
    scale = vecs.double().norm(dim=1).mean().clamp_min(1e-30)
    return int((nearest == 0).sum()), float(nearest.min() / scale)


def unit_report(state: dict, layout: dict[str, Match], spec: ArchSpec, dims: Dims) -> dict[str, dict]:
    """For each grown space: units, duplicated units (write side and both sides) and nearest distances."""
    report: dict[str, dict] = {}
    for space in SPACES:
        write = _gather(state, layout, dims, space.write)
        read = _gather(state, layout, dims, space.read)
        if not write:
            continue
        dup_w = dup_both = 0
        min_w = float("inf")
        for layer, w in write.items():
            both = torch.cat([w, read[layer]], dim=1) if layer in read else w
            a, dist = _nearest(w)
            b, _ = _nearest(both)
            dup_w, dup_both, min_w = dup_w + a, dup_both + b, min(min_w, dist)
        n, _ = dims.units(space.write[0])
        report[space.name] = {"units": n * len(write), "duplicate_writes": dup_w, "duplicates": dup_both,
                         "min_rel_distance": min_w}
    return report
