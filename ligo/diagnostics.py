"""Are the grown units used? Per space: how many units duplicate another, and how far apart they are.

A unit is a residual dimension, an FFN neuron, an attention head or an expert (its weights written, its
router row read). Its *write* vector gathers every weight slice that produces it (embedding columns,
output-projection rows, norm gains, biases); its *read* vector every slice that consumes it. Copies made by
Net2Net have equal write vectors; if they stay equal through training, the grown width computes nothing new
(the symmetry trap).

The report streams over the weights, one slice at a time, and never builds a unit's whole vector (the
residual stream's units carry about a thousandth of the model each): its cost is linear in the model's size,
a few passes over the weights: a fifth to a quarter of one training step on 4 x 256 tokens at 135M and 360M
on one CPU thread, 20 s at 1.2B (benchmarks/unit_report_cost.py; the full distance matrix it replaced took
longer than the training at 240M).

* **Duplicates** are counted exactly: each unit's vector is projected on a fixed random direction (float64,
  slice by slice), units are sorted by the projection, and neighbours whose projections agree are compared
  exactly. Equal units are neighbours; the comparison is exact, so nothing is counted by chance.
* **The nearest distance** is searched from up to ``SAMPLE`` units (a fixed draw) to every unit, in the
  matmul form in float32; the pair found is then measured again exactly (float64) and reported relative to
  the units' mean norm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from einops import rearrange

from .arch import ArchSpec
from .spaces import SPACE_OF, SPACES, Dims, Match

SAMPLE = 128  # units whose nearest neighbour is searched, per space and layer
_TOL = 1e-9  # projections closer than this (relative) are compared exactly


def _slices(state: dict, layout: dict[str, Match], dims: Dims, tokens) -> Iterator[tuple[int | None, torch.Tensor]]:
    """(layer, [units, features]) for every weight slice of the map tokens (layer None: the residual stream,
    shared by all layers); an expert's weights are one row per expert."""
    for token in tokens:
        n, unit = dims.units(token)
        experts: dict[tuple[int | None, str], dict[int, torch.Tensor]] = {}
        for key, m in sorted(layout.items()):
            for axis, axis_tokens in enumerate(m.entry.axes):
                if token not in axis_tokens:
                    continue
                layer = m.layer if SPACE_OF[token].in_layers else None
                if m.entry.per_expert and axis == 0:
                    experts.setdefault((layer, m.entry.name), {})[m.expert] = state[key]
                    continue
                offset = sum(dims.axis_size(t) for t in axis_tokens[: axis_tokens.index(token)])
                axis -= int(m.entry.per_expert)  # a per-expert tensor lacks the experts axis
                w = state[key].narrow(axis, offset, n * unit).movedim(axis, 0)
                yield layer, rearrange(w, "(n u) ... -> n (... u)", u=unit)
        for (layer, _), rows in sorted(experts.items(), key=lambda kv: (kv[0][0] or -1, kv[0][1])):
            yield layer, torch.stack([rows[x].flatten() for x in range(n)])


def _direction(f: int) -> torch.Tensor:
    return torch.randn(f, generator=torch.Generator().manual_seed(f), dtype=torch.float64)


@dataclass
class _Units:
    """What the report keeps of one space in one layer while the slices go by."""

    rows: torch.Tensor     # the sampled units
    proj: torch.Tensor     # [n] float64: the write vectors projected on a random direction
    sq: torch.Tensor       # [n] float64: the write vectors' squared norms
    d2: torch.Tensor       # [sample, n] float32: squared distances from the sampled units
    proj_both: torch.Tensor | None = None  # the write and read vectors, projected

    @classmethod
    def new(cls, n: int, gen: torch.Generator) -> "_Units":
        rows = torch.randperm(n, generator=gen)[:SAMPLE] if n > SAMPLE else torch.arange(n)
        return cls(rows, torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64),
                   torch.zeros(len(rows), n))

    def add_write(self, w: torch.Tensor) -> None:
        w = w.float()
        self.proj += w.double() @ _direction(w.shape[1])
        sq = (w * w).sum(1)
        self.sq += sq.double()
        self.d2 += sq[self.rows, None] + sq[None, :] - 2 * (w[self.rows] @ w.T)


def _candidates(proj: torch.Tensor) -> torch.Tensor:
    """[pairs, 2]: neighbours in the order of ``proj`` whose projections agree (equal units always do)."""
    order = proj.argsort()
    a, b = order[:-1], order[1:]
    scale = proj.abs().mean().clamp_min(1e-300)
    close = (proj[a] - proj[b]).abs() <= _TOL * torch.maximum(proj[a].abs().maximum(proj[b].abs()), scale)
    return torch.stack([a[close], b[close]], dim=1)


def _exact(slices: Iterator, layer, pairs: torch.Tensor) -> torch.Tensor:
    """Squared distances (float64) between the units of each pair, over the slices of ``layer``."""
    out = torch.zeros(len(pairs), dtype=torch.float64)
    if len(pairs):
        for lay, w in slices:
            if lay == layer:
                out += (w[pairs[:, 0]].double() - w[pairs[:, 1]].double()).pow(2).sum(1)
    return out


def _count(pairs: torch.Tensor, d2: torch.Tensor) -> int:
    """Units equal to another unit, from the neighbour pairs found equal."""
    equal = pairs[d2 == 0]
    return int(torch.unique(equal.flatten()).numel()) if len(equal) else 0


def _space_report(state, layout, dims, space) -> dict | None:
    units: dict[int | None, _Units] = {}
    gen = torch.Generator().manual_seed(0)
    n, _ = dims.units(space.write[0])
    for layer, w in _slices(state, layout, dims, space.write):
        units.setdefault(layer, _Units.new(n, gen)).add_write(w)
    if not units:
        return None
    for u in units.values():
        u.proj_both = u.proj.clone()
    for layer, w in _slices(state, layout, dims, space.read):
        if layer in units:
            units[layer].proj_both += w.double() @ _direction(w.shape[1])
    dup_w = dup_both = 0
    nearest = float("inf")
    for layer, u in units.items():
        pairs_w, pairs_b = _candidates(u.proj), _candidates(u.proj_both)
        d2_w = _exact(_slices(state, layout, dims, space.write), layer, pairs_w)
        d2_b = _exact(_slices(state, layout, dims, space.write + space.read), layer, pairs_b)
        dup_w, dup_both = dup_w + _count(pairs_w, d2_w), dup_both + _count(pairs_b, d2_b)
        if bool((d2_w == 0).any()):
            nearest = 0.0
        elif len(u.proj) > 1:
            d2 = u.d2.clone()
            d2[torch.arange(len(u.rows)), u.rows] = float("inf")
            pairs = torch.stack([u.rows, d2.argmin(dim=1)], dim=1)
            found = _exact(_slices(state, layout, dims, space.write), layer, pairs).min().sqrt()
            nearest = min(nearest, float(found / u.sq.sqrt().mean().clamp_min(1e-30)))
    return {"units": n * len(units), "duplicate_writes": dup_w, "duplicates": dup_both, "min_rel_distance": nearest}


def unit_report(state: dict, layout: dict[str, Match], spec: ArchSpec, dims: Dims) -> dict[str, dict]:
    """For each grown space: units, duplicated units (write side and both sides) and nearest distances."""
    report: dict[str, dict] = {}
    for space in SPACES:
        entry = _space_report(state, layout, dims, space)
        if entry is not None:
            report[space.name] = entry
    return report
