"""Applying the growth operator's maps to the source's weights (or to any state shaped like them: optimizer
moments): the target's tensors, all layers at once for the fit, one target layer at a time to materialize, or
from a source read on demand to stream. The maths is in :mod:`ligo.operator`'s docstring.

A width map that is a selection (every row one entry: copies, split shares) is applied as an index and a
product, with the values of the matrix product; a dense map (random mixtures, and every map while the fit
takes gradients) as an einsum.

Streaming and in-memory growth write the same bytes by construction: each output is computed with the same
operations, in the same order, on operands of the same shape in *fresh* memory (:func:`_fresh`). A gather and an
elementwise product are exact wherever their operands lie, but a matrix product's kernel (MKL's, on some x86
processors) chooses its path, and so its order of summation, by the operands' alignment as well as their shape:
a tensor that safetensors maps from a file lies at whatever offset the file gives it, a fresh one where torch's
allocator puts every tensor (64-byte aligned). So what is read from a file is copied before it is used.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from einops import rearrange

from .spaces import FIXED, READ_PARTNER, Entry

_CHUNK_ELEMENTS = 1 << 24  # an embedding or head is grown in slices of rows of about this many elements


def expand_axis(op, w: torch.Tensor, axis: int, tokens: tuple[str, ...], groups: torch.Tensor | None,
                 absolute: bool, gain: bool = False, keep: bool = False) -> torch.Tensor:
    """Grow one axis of ``w``. ``groups``: the map group of each row of a leading layer dimension
    (None for a weight outside the layers); ``gain``: ``w`` is a norm's gain; ``keep``: a gather by one keeps
    ``w``'s dtype (materializing: the values are the same), else it gives float32 as a product by one does."""
    if len(tokens) > 1:  # fused axis: grow each part, concatenate
        parts = w.split([op.src.axis_size(t) for t in tokens], dim=axis)
        return torch.cat([expand_axis(op, p, axis, (t,), groups, absolute, gain, keep)
                          for p, t in zip(parts, tokens)], dim=axis)
    tok = tokens[0]
    if tok == "bylayer":  # one slice a layer: a target layer takes its source layer's (exact, a gather)
        size = w.shape[axis] // op.src.layers
        out = torch.cat([w.narrow(axis, j * size, size) for j in op.layer_sources], dim=axis)
        return out if keep else out.float()
    if tok in FIXED:
        return w
    present = [int(g) for g in torch.unique(groups)] if groups is not None else []
    if len(present) > 1 and not torch.is_grad_enabled():  # each group by its own map: a selection where it is one
        parts = [expand_axis(op, w[groups == g], axis, tokens, groups[groups == g], absolute, gain, keep)
                 for g in present]
        return _reassembled(parts, groups, present)
    _, unit = op.src.units(tok)
    name = op.map_name(tok, gain)
    sel = None if torch.is_grad_enabled() else op.selection(name, absolute)
    if sel is None and not torch.is_grad_enabled() and len(present) == 1:
        sel = op.selection(name, absolute, group=present[0])  # (its layers' group may be a selection alone)
    if sel is not None:  # a selection: gather the source units, scale them (no matrix product)
        index, coef = sel
        if index.dim() == 2:  # one selection per group: this group's
            index, coef = (index[0], coef[0]) if len(index) == 1 else (index[present[0]], coef[present[0]])
        return _gather(w, axis, index, coef, unit, keep)
    w = rearrange(w.float().movedim(axis, -1), "... (unit d) -> ... unit d", d=unit)
    m = op.map(tok, absolute, gain)
    if m.dim() == 2 or len(m) == 1:
        w = torch.einsum("...sd,ts->...td", w, m if m.dim() == 2 else m[0])
    else:  # one map per group of layers
        w = _reassembled([torch.einsum("...sd,ts->...td", w[groups == g], m[g]) for g in present], groups, present)
    return rearrange(w, "... unit d -> ... (unit d)").movedim(-1, axis)


def _reassembled(parts: list[torch.Tensor], groups: torch.Tensor, present: list[int]) -> torch.Tensor:
    """The layers grown group by group (``parts``, in the order of ``present``) back in their order: float32
    where the parts' dtypes differ (a gather by one keeps the source's dtype, a product gives float32)."""
    order = torch.cat([torch.nonzero(groups == g).flatten() for g in present])
    return torch.cat([p.float() for p in parts] if len({p.dtype for p in parts}) > 1 else parts)[torch.argsort(order)]

def _gather(w: torch.Tensor, axis: int, index: torch.Tensor, coef: torch.Tensor, unit: int,
            keep: bool) -> torch.Tensor:
    """``w`` with the units of ``axis`` (``unit`` rows each) replaced by the source units ``index``, scaled by
    ``coef``. With ``keep``, whole rows are copied in ``w``'s dtype where every coefficient is one (exact: the
    values the float32 product gives) and an identity selection returns ``w`` itself; else every gather is
    scaled (a product by one gives float32, as the fit's arithmetic expects)."""
    n1 = w.shape[axis] // unit
    ones = keep and bool((coef == 1).all())
    if ones and len(index) == n1 and bool((index == torch.arange(n1, device=index.device)).all()):
        return w
    if unit > 1:  # a unit is ``unit`` consecutive entries of the axis (a head's rows)
        index = (index[:, None] * unit + torch.arange(unit, device=index.device)).flatten()
        coef = coef.repeat_interleave(unit)
    out = _index_select(w, axis, index)  # (fresh memory: a gather, or a concatenation of slices)
    if not ones:
        shape = [1] * w.dim()
        shape[axis] = -1
        # float32 first, then the product in place: the values of ``out * coef`` (computed in float32), but torch
        # multiplies a bfloat16 tensor by a float32 vector along its last axis at a fifth of this speed
        out = torch.empty_like(out, dtype=torch.float32).copy_(out) if out.dtype != torch.float32 else out
        out.mul_(coef.view(shape))
    return out


def _index_select(w: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
    """``w.index_select(axis, index)``, by the fast kernels. A copy map's index is a few runs of consecutive units
    (``0..n1-1`` then ``0..k-1``; whole heads of a group): those runs are copied as slices, at memory speed (a
    gather of columns runs at a fifth of it). Else the axes before and after are flattened first: torch's gather
    is ten times slower on the last axis of a 3-d tensor than on a 2-d one (no transposed copy)."""
    if len(index) > 1:
        cuts = torch.nonzero(torch.diff(index) != 1).flatten() + 1
        if len(cuts) < max(1, len(index) // 16):
            bounds = [0, *cuts.tolist(), len(index)]
            return torch.cat([w.narrow(axis, int(index[a]), b - a) for a, b in zip(bounds, bounds[1:])], dim=axis)
    shape = list(w.shape)
    before, after = math.prod(shape[:axis]), math.prod(shape[axis + 1:])
    flat = w.reshape(before, shape[axis], after)
    if after == 1:
        out = flat.view(before, shape[axis]).index_select(1, index)
    elif before == 1:
        out = flat.view(shape[axis], after).index_select(0, index)
    else:
        out = flat.index_select(1, index)
    shape[axis] = len(index)
    return out.view(shape)


def expand(op, w: torch.Tensor, entry: Entry, groups: torch.Tensor | None, absolute: bool,
           keep: bool = False) -> torch.Tensor:
    for a, tokens in enumerate(entry.axes):
        w = expand_axis(op, w, a + int(groups is not None), tokens, groups, absolute, entry.name in op.gains, keep)
    if entry.name in op.scales:  # (a kept dtype is the source's: the product is float32, as the fit's)
        return (w.float() if keep else w) * op.scales[entry.name]
    return w

def _offset(op, entry: Entry, weights: bool) -> float:
    """What a stored weight is offset by (a norm gain stored as ``gain - 1``): growth acts on the gain
    itself, depth mix included. Optimizer moments (``weights=False``) have no offset."""
    return op.spec.norms["offset"] if weights and entry.name in op.gains else 0.0

def pieces(op, layer_by_layer: bool = False, state: dict | None = None, absolute: bool = False,
            read=None) -> Iterator[tuple[str, slice | None, torch.Tensor]]:
    """The target's tensors one at a time (float32, or the source's dtype where they are only gathered: the
    same values), tied duplicates left out, as ``(key, rows, tensor)``:
    ``rows`` is None for a whole tensor, or the slice of its first axis that this piece holds.

    ``state``: a source-shaped state to grow instead of the source weights (e.g. optimizer
    moments, keyed like the checkpoint); ``absolute``: apply the maps' absolute values; ``read``: a
    function ``read(key, rows=None)`` returning a checkpoint tensor (or a slice of rows of its first
    axis), to read the source on demand (streaming growth).
    Each layer entry is computed for all target layers at once (fast, for the fit), or one target
    layer at a time from only the source layers its depth row uses (``layer_by_layer``: least
    memory, for materializing large models; the same arithmetic whichever way the source is read).
    With ``layer_by_layer`` a weight outside the layers whose first axis is never grown (embeddings,
    heads: vocab rows) comes in slices of rows."""
    held = op.stacked(state) if state is not None else None
    op.forget_selections()  # the maps may have been fitted since the last call

    # Materializing (layer by layer), tensors keep the source's dtype while they are only gathered (exact: the
    # values of the float32 products), and are computed in float32 as soon as anything is multiplied or summed;
    # for the fit they are float32 from the start. A fresh copy either way, so streaming and in-memory growth
    # compute the same bits from the same memory layout.
    def single(key: str, rows: slice | None = None) -> torch.Tensor:
        if read is not None:
            t = read(key, rows)
            return _fresh(t) if layer_by_layer else t.float()
        t = (held[("w_", key)] if held is not None else op.source_tensor(key))[slice(None) if rows is None else rows]
        return _fresh(t) if layer_by_layer else t.to(torch.float32, copy=True)

    def layers(e: Entry, index: list[int] | None) -> torch.Tensor:
        """The source layers of ``e`` at the depth map's columns ``index`` (None: all)."""
        if read is not None:
            return _read_layers(op, read, e, index)
        t = held[("l_", e.name)] if held is not None else op.source_layers(e)
        t = t if index is None else t[index]
        return t if layer_by_layer else t.float()

    def mix(coef: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """The depth mix; one source layer with coefficient one is that layer itself (exact)."""
        if coef.shape == (1, 1) and not torch.is_grad_enabled() and float(coef) == 1.0:
            return src  # (a fresh tensor: read, stacked or indexed)
        return torch.einsum("ij,j...->i...", coef, src.float())

    def grow_single(w: torch.Tensor, entry: Entry) -> torch.Tensor:
        grown = expand(op, w, entry, None, absolute, keep=layer_by_layer)
        offset = _offset(op, entry, state is None)
        if offset:  # E (w + o) - o, computed so that it is exactly E w where E's rows sum to one
            grown = grown + offset * (expand(op, torch.ones_like(w), entry, None, absolute) - 1)
        return grown

    shapes = op.target_shapes() if layer_by_layer else {}
    for key, entry in op.singles:
        if not (layer_by_layer and len(entry.axes) > 1 and all(t in FIXED for t in entry.axes[0])):
            yield key, None, grow_single(single(key), entry)
            continue
        shape = shapes[key]
        step = max(1, _CHUNK_ELEMENTS // max(1, math.prod(shape[1:])))
        for start in range(0, shape[0], step):
            rows = slice(start, min(start + step, shape[0]))
            yield key, rows, grow_single(single(key, rows), entry)
    for e in op.layer_entries:
        offset = _offset(op, e, state is None)
        depth = op.depth_map(e.module)  # its rows: the target layers holding e; its columns: the source layers
        depth, rows = (depth.abs() if absolute else depth), op.tgt_rows(e)
        shape = op.source_layers(e).shape[1:]
        groups = op.layer_group[torch.tensor(rows, dtype=torch.long, device=op.layer_group.device)]
        for chunk, coef, index in _steps(depth, layer_by_layer):
            src = layers(e, index) if index != [] else torch.zeros(0, *shape, device=depth.device)
            mixed = mix(coef, src)
            grown = expand(op, mixed, e, groups[chunk], absolute, keep=layer_by_layer)
            if offset:
                ones = torch.einsum("ij,j...->i...", coef, torch.ones_like(src, dtype=torch.float32))
                grown = grown + offset * (expand(op, ones, e, groups[chunk], absolute) - 1)
            if state is None and not absolute:  # (weights, not moments: the inits' own additions)
                grown = _initialized(op, e, rows[chunk], grown, lambda: op.router_noise(e, chunk, read), layer_by_layer)
            del mixed, src
            yield from _named(op, e, rows[chunk], grown)
            del grown


def _initialized(op, e: Entry, rows: list[int], grown: torch.Tensor, noise, layer_by_layer: bool) -> torch.Tensor:
    """``grown`` (target layers ``rows`` of entry ``e``) with what the plan adds to the weights: the router's noise
    (``noise()``), the plan's perturbation, and the values a new identity layer needs (no zero expert chosen, the
    layer's own output scalar at one)."""
    if e.name in op.noise:
        grown = grown + noise()
    if op.plan.perturb and layer_by_layer:
        grown = _perturbed(op, e, rows, grown)
    if e.name in op.unchosen:
        grown = _unchosen(op, rows, grown)
    if e.name in op.unit_scalars:
        grown = _new_at(op, rows, grown, 1.0)
    return grown


def _unchosen(op, rows: list[int], grown: torch.Tensor) -> torch.Tensor:
    """``grown`` (target layers ``rows`` of a per-expert bias over the experts, then the experts that compute
    nothing) with the latter's entries at -1e4 in the new identity layers: no token chooses them there (a bias that
    steers the choice: scores lie in [0, 1]; one added to the logits: exp(-1e4) is zero in float32)."""
    return _new_at(op, rows, grown, -1e4, slice(op.tgt.experts, None))


def _new_at(op, rows: list[int], grown: torch.Tensor, value: float, part: slice = slice(None)) -> torch.Tensor:
    """``grown`` (target layers ``rows`` of one entry) with ``part`` of its first axis set to ``value`` in the new
    identity layers."""
    new = [k for k, row in enumerate(rows) if row in op.identity_rows]
    if not new:
        return grown
    grown = grown.float().clone()
    grown[new, part] = value
    return grown


def _perturbed(op, e: Entry, rows: list[int], grown: torch.Tensor) -> torch.Tensor:
    """``grown`` (target layers ``rows`` of entry ``e``) with the plan's muP-scaled noise added: std ``perturb /
    sqrt(fan_in)``, the fan-in the size of the axis the weight reads (a weight that reads no space, a norm's gain or
    a bias, is left as it is). Each target layer's noise is drawn from its own seed, so streaming and in-memory
    growth add the same numbers."""
    import zlib

    axis = next((a for a, tokens in enumerate(e.axes) if any(t in READ_PARTNER for t in tokens)), None)
    if axis is None:
        return grown
    std = op.plan.perturb / math.sqrt(grown.shape[1 + axis])
    noise = [torch.randn(grown.shape[1:], generator=torch.Generator().manual_seed(
        op.plan.seed * 1_000_003 + zlib.crc32(f"{e.name}/{row}".encode())), dtype=torch.float32) for row in rows]
    return grown.float() + std * torch.stack(noise).to(grown.device)


def _read_layers(op, read, e: Entry, index: list[int] | None) -> torch.Tensor:
    """The source layers of ``e`` at its depth map's columns ``index`` (None: all), read on demand; one layer
    (materializing row by row) is the tensor read, not a stacked copy."""
    rows = op.src_rows(e)
    found = [op.layer(read, e, rows[j]) for j in (range(len(rows)) if index is None else index)]
    return _fresh(found[0])[None] if len(found) == 1 else torch.stack(found)


def _fresh(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values in memory of its own, where torch's allocator puts every tensor: what the in-memory path
    computes from (see the module docstring: a matrix product's bits may depend on its operands' alignment)."""
    return t.clone(memory_format=torch.contiguous_format)


def _steps(depth: torch.Tensor, layer_by_layer: bool) -> list[tuple[slice, torch.Tensor, list[int] | None]]:
    """How a layer entry is computed: ``(rows of its depth map, their coefficients, the source columns they
    read)``; all rows at once (columns None: all), or one row at a time from only the columns it uses."""
    if not layer_by_layer:
        return [(slice(None), depth, None)]
    index = [torch.nonzero(depth[r]).flatten().tolist() for r in range(depth.shape[0])]
    return [(slice(r, r + 1), depth[r, cols][None], cols) for r, cols in enumerate(index)]


def _named(op, e: Entry, rows: list[int], grown: torch.Tensor) -> Iterator[tuple[str, None, torch.Tensor]]:
    """The grown layers of entry ``e`` (target layers ``rows``) under their checkpoint keys."""
    for i, w in zip(rows, grown):
        if e.per_expert:
            for x, key in enumerate(op.spec.layer_keys(op.prefix, e, i, op.tgt)):
                yield key, None, w[x].clone()  # its own storage, saved as its own tensor
        else:
            yield op.spec.layer_key(op.prefix, e, i), None, w

def grown(op, dtype: torch.dtype | None = None, **kwargs) -> Iterator[tuple[str, torch.Tensor]]:
    """:meth:`_pieces` with the slices of rows put together: whole tensors (the pieces cast to ``dtype``)."""
    shapes = op.target_shapes()
    key, out = None, None
    for name, rows, v in pieces(op, **kwargs):
        if rows is None:
            yield name, v
            continue
        if name != key:
            key, out = name, torch.empty(shapes[name], dtype=dtype or torch.float32, device=v.device)
        out[rows] = v
        if rows.stop == shapes[name][0]:
            yield name, out
            key, out = None, None
