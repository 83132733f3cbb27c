"""The initial values of the growth operator's maps, as pure functions, and what a plan keeps.

Width maps are given per map token (a space's write or read side) as a *selection*, (source unit,
coefficient) for each target unit, wherever every row has one entry (copy, split, and random with no new
units), or as a dense matrix (target units x source units: the paper's random mixtures); the operator keeps
a selection as one where it can (see :class:`ligo.operator.GrowthOperator`). Depth maps are given as the
source layer behind each target layer, and whether it is a repeat (a new layer). The module docstring of
:mod:`ligo.operator` has the maths; :func:`lossless_gaps` says, in words, where a plan does not keep the
source's function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .arch import ArchSpec
from .spaces import GROUPED_BY, PACKED_GROUPS, SPACE_OF, WRITE_TOKENS, Dims
from .config import DEPTH_INITS, WIDTH_INITS, GrowthPlan, depth_map_items
from .errors import LigoError


def check_growth(spec: ArchSpec, src: Dims, tgt: Dims) -> None:
    """Refuse target shapes the operator cannot produce, with the fix in the message."""
    for name in ("layers", "hidden", "heads", "kv_heads", "ffn", "experts", "lin_heads", "lin_kv_heads", "shared_ffn",
                 "mamba_heads", "q_lora", "kv_lora"):
        if getattr(tgt, name) < getattr(src, name):
            raise LigoError(f"target {spec.config_key(name) or name}={getattr(tgt, name)} is smaller than the source's "
                            f"{getattr(src, name)}; ligo only grows models, so give a target at least as large")
    if tgt.head_dim != src.head_dim:
        why = "rotary pairs live inside each head" if spec.rope else "attention is grown by whole heads"
        raise LigoError(f"head_dim would change from {src.head_dim} to {tgt.head_dim} ({why}); choose the target's "
                        f"heads so that head_dim stays {src.head_dim}")
    recurrent, latent = "a recurrent state lives inside each head and group", "heads are grown whole"
    for name, what, why in (("lin_k_dim", "linear-attention k head size", recurrent),
                            ("lin_v_dim", "linear-attention v head size", recurrent),
                            ("mamba_head_dim", "Mamba head size", recurrent), ("ssm_state", "Mamba state size", recurrent),
                            ("mamba_groups", "number of Mamba groups", recurrent),
                            ("qk_nope", "no-rope query/key head size", latent), ("v_head", "value head size", latent)):
        if getattr(tgt, name) != getattr(src, name):
            raise LigoError(f"the {what} would change from {getattr(src, name)} to {getattr(tgt, name)} ({why}); "
                            f"keep {spec.config_key(name)}={getattr(src, name)}")
    if tgt.lin_group != src.lin_group and any(t in PACKED_GROUPS for e in spec.entries for a in e.axes for t in a):
        raise LigoError(f"{spec.model_type} packs each linear-attention key head with its {src.lin_group} value heads "
                        f"in one projection, so a group's size cannot change ({src.lin_group} -> {tgt.lin_group}); "
                        f"grow its key and value heads by the same factor")
    for d, tag in ((src, "source"), (tgt, "target")):
        if d.heads % d.kv_heads:
            raise LigoError(f"{tag} kv heads ({d.kv_heads}) do not divide its attention heads ({d.heads}); "
                            "pick a kv-head count that divides the head count")
        if d.lin_kv_heads and d.lin_heads % d.lin_kv_heads:
            raise LigoError(f"{tag} linear-attention key heads ({d.lin_kv_heads}) do not divide its value heads "
                            f"({d.lin_heads}); pick a key-head count that divides the value-head count")
    if tgt.vocab != src.vocab:
        raise LigoError(f"target vocab size {tgt.vocab} differs from the source's {src.vocab}; the vocabulary is "
                        "never grown, so keep the source's vocab_size (and tokenizer)")
    if src.positions is not None and tgt.positions != src.positions:
        raise LigoError(f"target positions {tgt.positions} differ from the source's {src.positions}; "
                        "positions are never grown, so keep the source's value")
    if tgt.expert_groups != src.expert_groups or tgt.experts % tgt.expert_groups:
        raise LigoError(f"the experts are chosen within {src.expert_groups} groups; keep that number, with experts that "
                        f"it divides ({tgt.experts} do not divide into {tgt.expert_groups})"
                        if tgt.experts % tgt.expert_groups else
                        f"the target's expert groups ({tgt.expert_groups}) differ from the source's "
                        f"({src.expert_groups}); keep the source's")
    if tgt.experts > src.experts and src.experts > 1 and tgt.experts % src.experts:
        raise LigoError(f"the experts would grow from {src.experts} to {tgt.experts}, which is no multiple: some experts "
                        f"would get more copies than others; choose a multiple of {src.experts}")
    if tgt.tie != src.tie:
        raise LigoError(f"target tie_word_embeddings={tgt.tie} differs from the source's {src.tie}; keep the "
                        "source's value (an untied head cannot become tied without changing the function)")


@dataclass(frozen=True)
class Depth:
    """The depth plan, per target layer: the source layer behind it, whether it repeats a source layer used
    before (a copy), and whether it is a new identity block (that layer with its output projections zeroed)."""

    sources: list[int]
    repeat: list[bool]
    zero: list[bool]

    @property
    def new_layers(self) -> list[int]:
        """The target layers growth added: the identity blocks, else the copies."""
        flags = self.zero if any(self.zero) else self.repeat
        return [i for i, f in enumerate(flags) if f]

    def left_out(self, l1: int) -> list[int]:
        """The source layers of ``l1`` that no target layer copies (an identity block's source does not count: its
        output is zero)."""
        return sorted(set(range(l1)) - {s for s, z in zip(self.sources, self.zero) if not z})

    def keeps_function(self, l1: int) -> bool:
        """The layers that are not identity blocks are the source's, once each, in order."""
        return [s for s, z in zip(self.sources, self.zero) if not z] == list(range(l1))


def depth_plan(method: str, l1: int, l2: int | None = None, depth_map: str | None = None) -> Depth:
    """The depth plan of a method (stack, interleave, identity) for ``l1`` -> ``l2`` layers, or of a depth map
    (``method`` "map"; its length gives the target's layers)."""
    if method == "map":
        src, zero = _mapped(depth_map or "", l1)
    elif method == "stack":
        src, zero = [i % l1 for i in range(l2)], None
    elif method in ("interleave", "identity"):
        src, zero = [i * l1 // l2 for i in range(l2)], None
    else:
        raise LigoError(f"unknown depth method {method!r}; choose one of {', '.join(DEPTH_INITS)} or map")
    seen: set[int] = set()
    repeat = []
    for j in src:
        repeat.append(j in seen)
        seen.add(j)
    zero = zero if zero is not None else repeat if method == "identity" else [False] * len(src)
    return Depth(src, repeat, zero)


def checked_depth(plan, src: Dims, tgt: Dims) -> Depth:
    """The plan's depth plan for ``src`` -> ``tgt``, checked against the target's layers and layer kinds."""
    depth = depth_plan(plan.depth, src.layers, tgt.layers, plan.depth_map)
    left_out = depth.left_out(src.layers)
    if left_out and plan.depth == "map" and not plan.drop_layers:
        raise LigoError(f"the depth map {plan.depth_map!r} leaves out source layer(s) {layer_list(left_out)} of "
                        f"{src.layers} (no target layer copies them), so what they learned is lost; add them to the "
                        "map, or pass --drop-layers if leaving them out is what you mean")
    if len(depth.sources) != tgt.layers:
        raise LigoError(f"the depth map gives {len(depth.sources)} layers but the target has {tgt.layers}; "
                        "leave the layers out of the target (the map says them), or make them agree")
    if src.kinds and list(tgt.kinds) != [src.kinds[j] for j in depth.sources]:
        raise LigoError(f"the target's layer kinds {list(tgt.kinds)} are not those of the layers the depth plan "
                        f"grows them from ({[src.kinds[j] for j in depth.sources]}); leave the layer kinds out "
                        "of the target: each layer keeps its source layer's kind")
    return depth


def layer_list(layers: list[int], limit: int = 12) -> str:
    """Layer numbers as a person reads them: 5, or 2, 3 and 5, or the first ``limit`` and how many more."""
    shown = ", ".join(map(str, layers[:limit]))
    return shown + (f" and {len(layers) - limit} more" if len(layers) > limit else "")


def _mapped(text: str, l1: int) -> tuple[list[int], list[bool]]:
    """A depth map's source layer and identity-block flag per target layer, checked against ``l1`` source layers."""
    items = depth_map_items(text)
    if items and items[0][0] == "expand":
        k = items[0][1]
        if k > l1:
            raise LigoError(f"depth map {text!r}: expand:{k} adds an identity block after every {k} layers, and the "
                            f"source has only {l1}, so it would add none; choose K from 1 to {l1}")
        items = [x for start in range(0, l1, k) for x in ([("layers", start, min(start + k, l1) - 1)] +
                                                          ([("new", None)] if start + k <= l1 else []))]
    src, zero = [], []
    for item in items:
        last = item[2] if item[0] == "layers" else item[1] if item[1] is not None else None
        if last is not None and last >= l1:
            raise LigoError(f"depth map {text!r}: layer {last} is out of range; the source has {l1} layers "
                            f"(0-{l1 - 1})")
        if item[0] == "new":  # an identity block: of layer k, else of the layer before (the first, at the start)
            src.append(item[1] if item[1] is not None else src[-1] if src else 0)
            zero.append(True)
            continue
        src += list(range(item[1], item[2] + 1))
        zero += [False] * (item[2] - item[1] + 1)
    if not src:
        raise LigoError(f"depth map {text!r} is empty; give the source layer behind every target layer")
    return src, zero


def unit_selection(token: str, src: Dims, tgt: Dims) -> torch.Tensor:
    """The source unit each target unit copies: units are neurons, or whole heads for attention."""
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


def residual_scales(spec: ArchSpec, plan: GrowthPlan, src: Dims, tgt: Dims) -> torch.Tensor | None:
    """Each residual unit's ``alpha`` when the stream grows by scaled copies (see the module docstring): a
    lossless width init, an RMSNorm family and a hidden size that is no integer multiple of the source's.
    None otherwise."""
    if plan.width not in ("copy", "split") or spec.norms["type"] != "rms" or tgt.hidden % src.hidden == 0:
        return None
    sel = unit_selection("res", src, tgt)
    copies = torch.bincount(sel, minlength=src.hidden).double()
    return (tgt.hidden / src.hidden / copies[sel]).sqrt()


def lossless_gaps(spec: ArchSpec, plan: GrowthPlan, src: Dims, tgt: Dims) -> list[str]:
    """Why growing ``src`` into ``tgt`` with ``plan`` (resolved) does not keep the source's function
    exactly, one sentence a reason; empty when it does (fp32 rounding aside)."""
    gaps = []
    if plan.width == "random":
        gaps.append("random-mixture width (the paper's init) does not keep the function; use --width split")
    depth = depth_plan(plan.depth, src.layers, tgt.layers, plan.depth_map)
    left_out, kept = depth.left_out(src.layers), [s for s, z in zip(depth.sources, depth.zero) if not z]
    if left_out:
        gaps.append(f"the depth map leaves out source layer(s) {layer_list(left_out)}, which changes the function")
    if any(b <= a for a, b in zip(kept, kept[1:])):
        what = "the depth map" if plan.depth == "map" else f"{plan.depth} depth"
        gaps.append(f"{what} repeats (or reorders) trained layers, which changes the function; use --depth identity, "
                    "or a depth map whose added layers are new identity blocks")
    if any(depth.zero) and spec.norms.get("stream") == "post":
        gaps.append(f"{spec.model_type} normalizes the residual stream after each layer (post-LN), so a new layer "
                    "whose output is zero is not an identity: only growth without new layers is lossless")
    if plan.width in ("copy", "split") and tgt.hidden % src.hidden and spec.norms["type"] == "layer":
        gaps.append(f"LayerNorm over a residual stream grown by a non-integer ratio ({src.hidden} -> {tgt.hidden}) "
                    f"changes the norm's mean and variance; choose a hidden size that is a multiple of {src.hidden}")
    gaps += expert_gaps(plan, src, tgt)
    for name, what in (("q_lora", "query"), ("kv_lora", "key-value")):
        if plan.width in ("copy", "split") and getattr(src, name) and getattr(tgt, name) % getattr(src, name):
            gaps.append(f"the {what} latent's RMSNorm normalizes the latent as a whole, whose statistic changes when "
                        f"it grows by a non-integer factor ({getattr(src, name)} -> {getattr(tgt, name)}); grow "
                        f"{spec.config_key(name)} by an integer factor")
    if plan.width in ("copy", "split") and src.mamba_heads and tgt.mamba_heads % src.mamba_heads:
        gaps.append(f"the Mamba layers' gated norm normalizes each group of heads together, whose statistic changes "
                    f"when heads grow by a non-integer factor ({src.mamba_heads} -> {tgt.mamba_heads}, with the hidden "
                    "size); grow the hidden size by an integer factor")
    if plan.width in ("copy", "split"):
        names = {e: t for e in spec.norms["gains"] for t in ("q", "k")
                 if any(t in axis for entry in spec.entries if entry.name == e for axis in entry.axes)}
        for name, tok in sorted(names.items()):
            (n1, _), (n2, _) = src.units(tok), tgt.units(tok)
            if n2 % n1:
                gaps.append(f"{name.split('.')[-2]} normalizes the whole {tok} projection over all heads, whose "
                            f"statistic changes when heads grow by a non-integer factor ({n1} -> {n2}); grow "
                            "heads and kv heads by an integer factor")
    return gaps


def expert_gaps(plan: GrowthPlan, src: Dims, tgt: Dims) -> list[str]:
    """Why the experts axis does not keep the source's function (see :func:`expert_scale` for the exact cases)."""
    gaps = []
    if src.experts > 1 or tgt.experts > 1:
        ratio = tgt.experts // src.experts
        if src.experts > 1 and tgt.experts_per_token != src.experts_per_token * ratio:
            gaps.append(f"a token uses {tgt.experts_per_token} of {tgt.experts} experts where the source used "
                        f"{src.experts_per_token} of {src.experts}: copied experts route as the source only with "
                        f"{src.experts_per_token * ratio} per token (every copy of each chosen expert)")
        if tgt.experts > src.experts and src.expert_groups > 1:
            gaps.append(f"experts are chosen within {src.expert_groups} groups, whose scores change when experts are "
                        "copied into them; only growth without new experts keeps the routing")
        if tgt.experts > src.experts and plan.width == "split" and not (src.experts == 1 and tgt.router_normalized):
            gaps.append("split experts start from a router with noise added, whose top-k weights keep the source's "
                        "function only when a dense model is upcycled with a renormalized router; use --width copy")
    return gaps


def expert_scale(src: Dims, tgt: Dims) -> float:
    """What the experts' outputs are multiplied by. Copies of one source expert with equal router scores keep
    the source's mixture when the top-k weights are renormalized (they sum to one), and when they are not and
    a token uses every copy of each chosen expert (the copies' shares sum to the source's weight). A dense
    model upcycled under a router that does not renormalize gives a token ``k / E`` of the copies' weight
    (uniform scores over ``E`` experts, ``k`` chosen): its experts are scaled by ``E / k``. A sigmoid router that
    does not renormalize (GLM-4.5, DeepSeek-V3 with ``norm_topk_prob`` off) gives each copy its source's whole
    weight: the copies' outputs are divided by their number."""
    if src.experts == 1 and tgt.experts > 1 and not tgt.router_normalized:
        return tgt.experts / tgt.experts_per_token
    if src.experts > 1 and tgt.experts > src.experts and tgt.router_sigmoid and not tgt.router_normalized:
        return src.experts / tgt.experts  # each copy keeps its source's own sigmoid weight: the copies share it
    return 1.0


def random_rows(n: int, n1: int, gen: torch.Generator) -> torch.Tensor:
    rows = torch.rand(n, n1, generator=gen, dtype=torch.float64)
    return rows / rows.sum(1, keepdim=True)


def width_selection(method: str, token: str, src: Dims, tgt: Dims, gen: torch.Generator,
                    split_noise: float = 0.5) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The initial width map of one map token as a selection, (source unit, coefficient) for each target
    unit, when every row has one entry (copy, split, and random with no new units); None when the map is
    dense (random mixtures). Draws the same random numbers as :func:`width_init`."""
    n1, _ = src.units(token)
    n2, _ = tgt.units(token)
    if method == "random":
        return (torch.arange(n1), torch.ones(n1)) if n2 == n1 else None
    if method not in ("copy", "split"):
        raise LigoError(f"unknown width method {method!r}; choose one of {', '.join(WIDTH_INITS)}")
    sel = unit_selection(token, src, tgt)
    if token in WRITE_TOKENS:
        coef = torch.ones(n2, dtype=torch.float64)
    else:
        if method == "copy":
            share = torch.ones(n2, dtype=torch.float64)
        else:  # unequal shares break the symmetry between copies
            share = 1 + split_noise * (2 * torch.rand(n2, generator=gen, dtype=torch.float64) - 1)
        total = torch.zeros(n1, dtype=torch.float64).index_add_(0, sel, share)
        coef = share / total[sel]
    return sel, coef.float()  # the coefficients computed in float64, rounded once


def width_init(method: str, token: str, src: Dims, tgt: Dims, gen: torch.Generator,
               split_noise: float = 0.5) -> torch.Tensor:
    """Initial width map (target units x source units) of one map token, in float32."""
    n1, _ = src.units(token)
    n2, _ = tgt.units(token)
    selection = width_selection(method, token, src, tgt, gen, split_noise)
    if selection is None:  # the paper's init: old units kept, new units random convex mixtures of old ones
        return torch.cat([torch.eye(n1), random_rows(n2 - n1, n1, gen).float()])
    return dense(*selection, n1)


def dense(index: torch.Tensor, coef: torch.Tensor, n1: int) -> torch.Tensor:
    return torch.zeros(*index.shape, n1).scatter_(-1, index.unsqueeze(-1), coef.unsqueeze(-1))
