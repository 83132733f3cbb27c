"""The learned linear growth operator (LiGO): all of the maths lives here.

The target's weights are a linear function of the source's. A layer weight of module ``m`` in
target layer ``i`` is

    W'_i = E_out · (sum_j  D_m[i, j] · W_j) · E_in^T        (one width map per axis of W)

where ``D_m`` (target layers x source layers) is the *depth* map of that module and the width maps
``E`` expand each axis from its source space to its target space (see ``ligo.arch`` for the spaces).
Attention spaces are grown by whole heads: ``E = A ⊗ I_head_dim`` with ``A`` over heads, so rotary
pairs stay intact. Each space has independent *write* (out) and *read* (in) maps, so an exactly
function-preserving start exists. The fixed growth methods are initial values of these maps:

* width ``copy``: Net2Net. Out map copies units; in map copies them with fan-in divided by the
  number of copies. Lossless (for uniform ratios where a norm sees the space).
* width ``split``: as ``copy`` but the copies' read weights are unequal shares ``a_c`` summing to 1,
  so copies receive different gradients and grow apart. Lossless too. The default.
* width ``random``: the paper's code: old units kept, new units random convex mixtures of old
  ones, one map for both sides. Not lossless.
* depth ``stack`` (target layer i <- source layer i mod L1), ``interleave`` (each source layer
  repeated in place) and ``identity`` (as interleave, but the repeats' residual-writing modules are
  zero, so new layers start as identities in pre-norm models).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .arch import FIXED, GROWN, ArchSpec, Dims, Entry, LigoError

WIDTH_INITS = ("split", "copy", "random")
DEPTH_INITS = ("stack", "interleave", "identity")
OUT_TOKENS = ("res", "ffn", "q", "k", "v")
LAYER_LOCAL = ("ffn", "ffn.in", "q", "k", "v", "o.in")
PARTNER = {"res.in": "res", "ffn.in": "ffn", "o.in": "q"}  # the read map and the write map of a space


def _param_name(token: str) -> str:
    return token.replace(".", "_")


def check_growth(spec: ArchSpec, src: Dims, tgt: Dims) -> None:
    """Refuse target shapes the operator cannot produce, with the fix in the message."""
    k = spec.config
    for name in ("layers", "hidden", "heads", "kv_heads", "ffn"):
        if getattr(tgt, name) < getattr(src, name):
            raise LigoError(f"target {k.get(name, name)}={getattr(tgt, name)} is smaller than the source's "
                            f"{getattr(src, name)}; ligo only grows models, so give a target at least as large")
    if tgt.head_dim != src.head_dim:
        why = "rotary pairs live inside each head" if spec.rope else "attention is grown by whole heads"
        raise LigoError(f"head_dim would change from {src.head_dim} to {tgt.head_dim} ({why}); choose the target's "
                        f"heads so that head_dim stays {src.head_dim}")
    for d, tag in ((src, "source"), (tgt, "target")):
        if d.heads % d.kv_heads:
            raise LigoError(f"{tag} kv heads ({d.kv_heads}) do not divide its attention heads ({d.heads}); "
                            "pick a kv-head count that divides the head count")
    if tgt.vocab != src.vocab:
        raise LigoError(f"target vocab size {tgt.vocab} differs from the source's {src.vocab}; the vocabulary is "
                        "never grown, so keep the source's vocab_size (and tokenizer)")
    if src.positions is not None and tgt.positions != src.positions:
        raise LigoError(f"target positions {tgt.positions} differ from the source's {src.positions}; "
                        "positions are never grown, so keep the source's value")
    if tgt.tie != src.tie:
        raise LigoError(f"target tie_word_embeddings={tgt.tie} differs from the source's {src.tie}; keep the "
                        "source's value (an untied head cannot become tied without changing the function)")


# -- initial values -----------------------------------------------------------------------------
def depth_plan(method: str, l1: int, l2: int) -> tuple[list[int], list[bool]]:
    """For each target layer: its source layer and whether it is a repeat (a new layer)."""
    if method == "stack":
        src = [i % l1 for i in range(l2)]
    elif method in ("interleave", "identity"):
        src = [i * l1 // l2 for i in range(l2)]
    else:
        raise LigoError(f"unknown depth method {method!r}; choose one of {', '.join(DEPTH_INITS)}")
    seen: set[int] = set()
    repeat = []
    for j in src:
        repeat.append(j in seen)
        seen.add(j)
    return src, repeat


def unit_selection(token: str, src: Dims, tgt: Dims) -> torch.Tensor:
    """The source unit each target unit copies: units are neurons, or whole heads for attention."""
    kv = torch.arange(tgt.kv_heads) % src.kv_heads
    if token in ("k", "v"):
        return kv
    if token in ("q", "o.in"):
        # Keep GQA grouping: a target query head copies a source query head of the group its
        # kv head copies; successive copies of a group cycle through that group's query heads.
        g1, g2 = src.heads // src.kv_heads, tgt.heads // tgt.kv_heads
        used = [0] * src.kv_heads
        sel = []
        for j in range(tgt.kv_heads):
            k = int(kv[j])
            for _ in range(g2):
                sel.append(k * g1 + used[k] % g1)
                used[k] += 1
        if min(used) < g1:
            raise LigoError(f"query heads per kv group shrink from {g1} to {g2} with kv heads {src.kv_heads}->"
                            f"{tgt.kv_heads}: some source heads would be dropped; grow kv heads by an integer "
                            "factor or use --width random")
        return torch.tensor(sel)
    n1, _ = src.units(token)
    n2, _ = tgt.units(token)
    return torch.arange(n2) % n1


def width_init(method: str, token: str, src: Dims, tgt: Dims, gen: torch.Generator,
               split_noise: float = 0.5) -> torch.Tensor:
    """Initial width map (target units x source units) of one map token."""
    n1, _ = src.units(token)
    n2, _ = tgt.units(token)
    sel = unit_selection(token, src, tgt)
    onehot = torch.nn.functional.one_hot(sel, n1).double()
    if method == "random":
        new = torch.rand(n2 - n1, n1, generator=gen, dtype=torch.float64)
        new = new / new.sum(1, keepdim=True)
        return torch.cat([torch.eye(n1, dtype=torch.float64), new])
    if method not in ("copy", "split"):
        raise LigoError(f"unknown width method {method!r}; choose one of {', '.join(WIDTH_INITS)}")
    if token in OUT_TOKENS:
        return onehot
    if method == "copy":
        share = torch.ones(n2, dtype=torch.float64)
    else:  # unequal shares break the symmetry between copies
        share = 1 + split_noise * (2 * torch.rand(n2, generator=gen, dtype=torch.float64) - 1)
    total = torch.zeros(n1, dtype=torch.float64).index_add_(0, sel, share)
    return onehot * (share / total[sel])[:, None]


# -- the operator -------------------------------------------------------------------------------
@dataclass
class GrowthPlan:
    """Everything that defines an operator besides the weights: recorded in the recipe."""

    width: str = "split"
    depth: str = "identity"
    per_layer: bool = False
    split_noise: float = 0.5
    seed: int = 0


class GrowthOperator(nn.Module):
    """Learnable depth and width maps from a frozen source state dict to a target state dict."""

    def __init__(self, spec: ArchSpec, src_dims: Dims, tgt_dims: Dims, layout: dict, src_state: dict,
                 plan: GrowthPlan | None = None):
        super().__init__()
        self.spec, self.src, self.tgt = spec, src_dims, tgt_dims
        self.plan = plan = plan or GrowthPlan()
        check_growth(spec, src_dims, tgt_dims)
        if plan.width not in WIDTH_INITS:
            raise LigoError(f"unknown width method {plan.width!r}; choose one of {', '.join(WIDTH_INITS)}")
        gen = torch.Generator().manual_seed(plan.seed)
        prefixes = {key[: len(key) - len(spec.layer_prefix.format(i=m.layer) + m.entry.name)]
                    for key, m in layout.items() if m.entry.scope == "layer"}
        self.prefix = prefixes.pop() if prefixes else ""
        tied = set(spec.tied) if src_dims.tie else set()
        self.singles: list[tuple[str, Entry]] = []
        self.layer_entries: list[Entry] = []
        tokens: set[str] = set()
        for key, m in sorted(layout.items()):
            if key in tied:
                continue
            tokens.update(t for axis in m.entry.axes for t in axis if t in GROWN)
            if m.entry.scope == "layer":
                if m.layer == 0:
                    self.layer_entries.append(m.entry)
            else:
                if any(t in LAYER_LOCAL for axis in m.entry.axes for t in axis):
                    raise LigoError(f"table {spec.source}: {key} is outside the layers but uses a layer space")
                self.singles.append((key, m.entry))
                # source tensors keep their dtype (bf16 stays bf16: half the memory) and are upcast
                # to float32 where they are used, which is exact
                self.register_buffer("w_" + _param_name(key), src_state[key].detach(), persistent=False)
        for e in self.layer_entries:
            stacked = torch.stack([src_state[spec.layer_key(self.prefix, e, j)].detach()
                                   for j in range(src_dims.layers)])
            self.register_buffer("l_" + _param_name(e.name), stacked, persistent=False)
        self.tied = {k: v for k, v in spec.tied.items() if src_dims.tie and v in layout}

        # Layer spaces (FFN, heads) have one map per *group* of target layers: one group by default,
        # one per layer with per_layer, and with the split init a second group for the new layers of
        # identity depth, whose copies would otherwise stay identical (their outputs start at zero,
        # so their units may start as random mixtures instead of copies without changing the function).
        sources, repeat = depth_plan(plan.depth, src_dims.layers, tgt_dims.layers)
        if plan.per_layer:
            groups = list(range(tgt_dims.layers))
        elif plan.width == "split" and plan.depth == "identity" and any(repeat):
            groups = [int(r) for r in repeat]
        else:
            groups = [0] * tgt_dims.layers
        self.register_buffer("layer_group", torch.tensor(groups), persistent=False)
        fresh = [any(r for r, g in zip(repeat, groups) if g == k) and plan.width == "split" and plan.depth == "identity"
                 for k in range(max(groups) + 1)]

        self.width = nn.ParameterDict()
        for tok in sorted(tokens, key=lambda t: (t in PARTNER, t)):  # write maps first
            partner = _param_name(PARTNER.get(tok, ""))
            if plan.width == "random" and partner in self.width:
                m = self.width[partner].detach().clone()  # the paper ties a space's read and write maps
            elif tok in LAYER_LOCAL:
                m = torch.stack([width_init("random" if new and tok in OUT_TOKENS else plan.width, tok, src_dims,
                                            tgt_dims, gen, plan.split_noise) for new in fresh]).float()
            else:
                m = width_init(plan.width, tok, src_dims, tgt_dims, gen, plan.split_noise).float()
            self.width[_param_name(tok)] = nn.Parameter(m)

        base = torch.nn.functional.one_hot(torch.tensor(sources), src_dims.layers).float()
        self.depth = nn.ParameterDict()
        for module in sorted({e.module for e in self.layer_entries}):
            d = base.clone()
            if plan.depth == "identity" and module in spec.identity_zero:
                d[torch.tensor(repeat, dtype=torch.bool)] = 0
            self.depth[_param_name(module)] = nn.Parameter(d)

    # -- application ------------------------------------------------------------------------
    def _expand_axis(self, w: torch.Tensor, axis: int, tokens: tuple[str, ...],
                     groups: torch.Tensor | None) -> torch.Tensor:
        """Grow one axis of ``w``. ``groups``: the map group of each row of a leading layer dimension
        (None for a weight outside the layers)."""
        if len(tokens) > 1:  # fused axis: grow each part, concatenate
            parts = w.split([self.src.axis_size(t) for t in tokens], dim=axis)
            return torch.cat([self._expand_axis(p, axis, (t,), groups) for p, t in zip(parts, tokens)], dim=axis)
        tok = tokens[0]
        if tok in FIXED:
            return w
        m = self.width[_param_name(tok)]
        _, unit = self.src.units(tok)
        w = w.movedim(axis, -1).unflatten(-1, (-1, unit))
        if m.dim() == 2:
            w = torch.einsum("...sd,ts->...td", w, m)
        elif len(m) == 1:
            w = torch.einsum("...sd,ts->...td", w, m[0])
        else:  # one map per group of layers
            present = [int(g) for g in torch.unique(groups)]
            parts = [torch.einsum("...sd,ts->...td", w[groups == g], m[g]) for g in present]
            order = torch.cat([torch.nonzero(groups == g).flatten() for g in present])
            w = torch.cat(parts)[torch.argsort(order)]
        return w.flatten(-2).movedim(-1, axis)

    def _expand(self, w: torch.Tensor, entry: Entry, groups: torch.Tensor | None) -> torch.Tensor:
        for a, tokens in enumerate(entry.axes):
            w = self._expand_axis(w, a + int(groups is not None), tokens, groups)
        return w

    def _grown(self, layer_by_layer: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
        """The target's weights one at a time (float32), tied duplicates left out.

        Each layer entry is computed for all target layers at once (fast, for the fit), or one target
        layer at a time (``layer_by_layer``: least memory, for materializing large models)."""
        for key, entry in self.singles:
            yield key, self._expand(getattr(self, "w_" + _param_name(key)).float(), entry, None)
        for e in self.layer_entries:
            src = getattr(self, "l_" + _param_name(e.name)).float()
            depth = self.depth[_param_name(e.module)]
            chunks = [slice(i, i + 1) for i in range(self.tgt.layers)] if layer_by_layer else [slice(None)]
            for chunk in chunks:
                mixed = torch.einsum("ij,j...->i...", depth[chunk], src)
                grown = self._expand(mixed, e, self.layer_group[chunk])
                del mixed
                for i, w in zip(range(self.tgt.layers)[chunk], grown):
                    yield self.spec.layer_key(self.prefix, e, i), w
                del grown

    def forward(self) -> dict[str, torch.Tensor]:
        """The target state dict (tied keys point at the same tensor)."""
        out = dict(self._grown())
        for key, target in self.tied.items():
            out[key] = out[target]
        return out

    @torch.no_grad()
    def materialize(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The target state dict as plain tensors, without tied duplicates, ready to save.

        Streams: only one target layer of one weight kind is held in float32 at a time.
        """
        return {key: torch.empty(v.shape, dtype=dtype or v.dtype).copy_(v)
                for key, v in self._grown(layer_by_layer=True)}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
