"""Growth plans as registered definitions: every way the operator's maps can start is one entry here.

A plan is a *width init* (how each grown space's write and read maps start: :class:`WidthInit`) and a *depth
init* (which source layer each target layer starts from, and which start as identity blocks: :class:`DepthInit`).
Each is one registered definition, as peft registers a method: its maps, what it keeps of the source's function,
its help text. The operator (:mod:`ligo.operator`), the lossless check (:func:`ligo.maps.lossless_gaps`), the
settings and the CLI flags generated from them (:class:`ligo.config.GrowthPlan`) and the docs' table of plans read
these registries; adding a plan is adding one entry (:func:`register_width`, :func:`register_depth`).

This module imports nothing heavy (``ligo --help`` reads the names and help texts): the maps are computed by
functions that import torch when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import LigoError


@dataclass(frozen=True)
class WidthInit:
    """How a width map starts. ``start(token, src, tgt, gen, plan)`` gives the initial map of one map token (a
    space's write or read side, :mod:`ligo.spaces`) from ``src`` to ``tgt`` sizes: a *selection* (the source unit
    and coefficient of each target unit, as two tensors) where every row has one entry, else a dense matrix
    (target units x source units). It draws its random numbers from ``gen``."""

    name: str
    help: str
    start: Callable[..., Any]
    copies: bool = False  # every target unit is a copy of one source unit (Net2Net's family): the units of a
    # residual stream under RMSNorm at a non-integer ratio are then scaled copies, and a norm over a whole space
    # keeps its statistic only at integer ratios (the gaps ligo.maps.lossless_gaps names)
    lossless: bool = False  # with identity depth it keeps the source's function, where lossless_gaps finds no gap
    tied_read: bool = False  # a read map starts as its space's write map (the paper ties them)
    mixes_new: bool = False  # new experts start as random mixtures of the source's (as new units do)
    fresh_write: str | None = None  # the init of the write maps of new identity layers: their outputs start at
    # zero, so their units may start as another init's without changing the function (and so grow apart)
    breaks_symmetry: bool = False  # copies get unequal shares: copied experts get router noise too


@dataclass(frozen=True)
class DepthInit:
    """How the depth maps start: ``layout(l1, l2, depth_map)`` gives the source layer behind each of the ``l2``
    target layers (from ``l1`` source layers; ``depth_map``: the user's map, for the plan that reads one), and
    which of them are new identity blocks (None: the repeats are, when ``repeats_are_identity``, else none)."""

    name: str
    help: str
    layout: Callable[[int, int | None, str | None], tuple[list[int], list[bool] | None]]
    repeats_are_identity: bool = False  # a repeated source layer starts as an identity block (output zeroed)
    needs_map: bool = False  # the layout is the user's depth map (--depth-map)
    from_weights: bool = False  # each repeat's row is fitted on the source's own layers (:func:`neighbour_fit`)


WIDTH: dict[str, WidthInit] = {}
DEPTH: dict[str, DepthInit] = {}


def register_width(init: WidthInit) -> WidthInit:
    """Add (or replace) a width init: ``--width NAME`` and ``GrowthPlan(width=NAME)`` then take it."""
    if init.name == "auto":
        raise LigoError("width init 'auto' is taken")
    WIDTH[init.name] = init
    return init


def register_depth(init: DepthInit) -> DepthInit:
    """Add (or replace) a depth init: ``--depth NAME`` and ``GrowthPlan(depth=NAME)`` then take it."""
    if init.name == "auto":
        raise LigoError("depth init 'auto' is taken")
    DEPTH[init.name] = init
    return init


def width_init(name: str) -> WidthInit:
    if name not in WIDTH:
        raise LigoError(f"unknown width init {name!r}; choose one of {', '.join(WIDTH)}")
    return WIDTH[name]


def depth_init(name: str) -> DepthInit:
    if name not in DEPTH:
        raise LigoError(f"unknown depth init {name!r}; choose one of {', '.join(DEPTH)}")
    return DEPTH[name]


def choices_help(registry: dict, what: str) -> str:
    """A settings field's help text: each registered init and what it does."""
    return f"{what}: " + "; ".join(f"{name} ({init.help})" for name, init in registry.items())


# -- the built-in width inits -------------------------------------------------------------------------------------
def unit_selection(token: str, src, tgt):
    """The source unit each target unit copies: units are neurons, or whole heads for attention (a tensor)."""
    import torch

    from .spaces import GROUPED_BY, SPACE_OF

    space = SPACE_OF[token].name
    group = GROUPED_BY.get(space)
    if group is None:
        n1, _ = src.units(token)
        n2, _ = tgt.units(token)
        return torch.arange(n2) % n1
    # Keep the grouping (GQA; a linear-attention key head serving value heads): a target head copies a source
    # head of the group its group's head copies; successive copies of a group cycle through that group's heads.
    (n1, k1), (n2, k2) = (getattr(src, space), getattr(src, group)), (getattr(tgt, space), getattr(tgt, group))
    kv = torch.arange(k2) % k1
    g1, g2 = n1 // k1, n2 // k2
    used = [0] * k1
    sel = []
    for j in range(k2):
        k = int(kv[j])
        for _ in range(g2):
            sel.append(k * g1 + used[k] % g1)
            used[k] += 1
    if min(used) < g1:
        what, of = ("query heads", "kv heads") if space == "heads" else ("value heads", "key heads")
        raise LigoError(f"{what} per group shrink from {g1} to {g2} with {of} {k1}->{k2}: some source heads would "
                        f"be dropped; grow the {of} by an integer factor or use --width random")
    return torch.tensor(sel)


def random_rows(n: int, n1: int, gen):
    """``n`` random convex mixtures of ``n1`` units (rows summing to one), in float64."""
    import torch

    rows = torch.rand(n, n1, generator=gen, dtype=torch.float64)
    return rows / rows.sum(1, keepdim=True)



def _copies(token, src, tgt, gen, plan, shares: bool):
    """Net2Net's copies: each target unit copies a source unit (whole heads, groups kept: ``unit_selection``);
    its write map carries it whole, its read map a share of it, the shares of a unit's copies summing to one
    (equal, or with ``shares`` drawn unequal by ``plan.split_noise``, so that copies get different gradients)."""
    import torch

    from .spaces import WRITE_TOKENS

    n1, _ = src.units(token)
    n2, _ = tgt.units(token)
    sel = unit_selection(token, src, tgt)
    if token in WRITE_TOKENS:
        return sel, torch.ones(n2)
    share = torch.ones(n2, dtype=torch.float64)
    if shares:
        share = 1 + plan.split_noise * (2 * torch.rand(n2, generator=gen, dtype=torch.float64) - 1)
    total = torch.zeros(n1, dtype=torch.float64).index_add_(0, sel, share)
    return sel, (share / total[sel]).float()  # computed in float64, rounded once


def _mixtures(token, src, tgt, gen, plan):
    """The paper's init: the source units kept, new units random convex mixtures of them (dense)."""
    import torch

    n1, _ = src.units(token)
    n2, _ = tgt.units(token)
    if n2 == n1:
        return torch.arange(n1), torch.ones(n1)
    return torch.cat([torch.eye(n1), random_rows(n2 - n1, n1, gen).float()])


def _zero_pad(token, src, tgt, gen, plan):
    """Zero-padding (arXiv 2605.13405's shrink / zero-pad / perturb, with ``--perturb`` the perturbation): each source
    unit kept once, whole, on both sides (whole heads, groups kept: ``unit_selection``'s first copy of it); every
    other target unit zero in the write and the read maps: a new unit starts empty and unread."""
    import torch

    sel = unit_selection(token, src, tgt)
    seen: set[int] = set()
    first = [u not in seen and not seen.add(u) for u in sel.tolist()]  # (each unit's first copy, in one pass)
    return sel, torch.tensor(first, dtype=torch.float32)


register_width(WidthInit("split", "as copy, the copies' read shares unequal (split_noise) so that they grow apart, and "
                         "the units of new identity layers random mixtures; lossless",
                         lambda *a: _copies(*a, shares=True), copies=True, lossless=True, fresh_write="random",
                         breaks_symmetry=True))
register_width(WidthInit("copy", "Net2Net: units copied, each copy reading an equal share; lossless",
                         lambda *a: _copies(*a, shares=False), copies=True, lossless=True))
register_width(WidthInit("random", "the paper's: the source's units kept, new units random convex mixtures of them, "
                         "one map for both sides; not lossless", _mixtures, tied_read=True, mixes_new=True))
register_width(WidthInit("zeropad", "the source's units kept once, new units zero in both maps (with --perturb: the "
                         "zero-pad / perturb operator); lossless inside the layers, not under a norm over the stream "
                         "(it sees the zeros)", _zero_pad))


# -- the built-in depth inits -------------------------------------------------------------------------------------
def _mapped(l1: int, l2: int | None, depth_map: str | None):
    from .depthmap import mapped_layers

    return mapped_layers(depth_map or "", l1)


register_depth(DepthInit("stack", "the source's layers repeated in order (StackBERT, G_stack)",
                         lambda l1, l2, _: ([i % l1 for i in range(l2)], None)))
register_depth(DepthInit("interleave", "each source layer repeated in place",
                         lambda l1, l2, _: ([i * l1 // l2 for i in range(l2)], None)))
register_depth(DepthInit("identity", "as interleave, the repeats new identity blocks (their output projections zero): "
                         "with a lossless width, growth keeps the function",
                         lambda l1, l2, _: ([i * l1 // l2 for i in range(l2)], None), repeats_are_identity=True))
register_depth(DepthInit("map", "the depth map (--depth-map) says", _mapped, needs_map=True))
register_depth(DepthInit("weights", "learned from the source's weights, no data (LESA-like): each new layer, placed as "
                         "interleave places it, is its neighbours mixed by the coefficients that best predict every "
                         "source layer from its own neighbours, fitted per module; not lossless",
                         lambda l1, l2, _: ([i * l1 // l2 for i in range(l2)], None), from_weights=True))


def neighbour_fit(gram) -> dict:
    """The depth coefficients a module's source layers give, from their Gram matrix ``gram[i][j] = <W_i, W_j>``
    (layers at most two apart are read): ``between`` = (a, b), the least-squares prediction of every inner layer
    from its neighbours, ``W_k ~ a W_{k-1} + b W_{k+1}``, which places a new layer between two; ``after`` = (c, d),
    the prediction of a layer from the two before it, ``W_k ~ c W_{k-2} + d W_{k-1}``, for a new layer after the
    last. The 2x2 normal equations carry a ridge of 1e-6 of their trace; with too few layers to fit, the midpoint
    (0.5, 0.5) and a copy of the last layer (0, 1)."""
    import torch

    n = len(gram)

    def solve(rows: list[tuple[int, int, int]], fallback: tuple[float, float]) -> list[float]:
        if not rows:
            return list(fallback)
        a = torch.zeros(2, 2, dtype=torch.float64)
        y = torch.zeros(2, dtype=torch.float64)
        for k, i, j in rows:  # W_k ~ x W_i + z W_j
            a += torch.tensor([[gram[i][i], gram[i][j]], [gram[j][i], gram[j][j]]], dtype=torch.float64)
            y += torch.tensor([gram[k][i], gram[k][j]], dtype=torch.float64)
        a += 1e-6 * a.trace() * torch.eye(2, dtype=torch.float64)
        return [float(v) for v in torch.linalg.solve(a, y)]

    return {"between": solve([(k, k - 1, k + 1) for k in range(1, n - 1)], (0.5, 0.5)),
            "after": solve([(k, k - 2, k - 1) for k in range(2, n)], (0.0, 1.0))}
