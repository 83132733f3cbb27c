"""What a growth plan keeps and what the operator can produce: the shapes it refuses (:func:`check_growth`), the
depth plan as the operator uses it (:class:`Depth`, :func:`depth_plan`, from a registered depth init of
:mod:`ligo.plans`), the scales that make copies exact (:func:`residual_scales`, :func:`expert_scale`), and, in
words, where a plan does not keep the source's function (:func:`lossless_gaps`). The ways the maps start are the
registered plans of :mod:`ligo.plans`; the maths is in :mod:`ligo.operator`'s docstring.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .arch import ArchSpec
from .config import GrowthPlan
from .kinds import LAST
from .spaces import PACKED_GROUPS, Dims
from .plans import depth_init, unit_selection, width_init
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


def depth_plan(method: str, l1: int, l2: int | None = None, depth_map: str | None = None, kinds=()) -> Depth:
    """The depth plan of a registered depth init (:data:`ligo.plans.DEPTH`) for ``l1`` -> ``l2`` layers, or of a
    depth map (``method`` "map"; its length gives the target's layers). ``kinds``: the source layers' kinds; where
    some are marked last (layers reusing the keys and values of the last earlier layer of their kind), a source
    layer's new identity copies come before it, so that the layer itself stays the last of its kind before them."""
    init = depth_init(method)
    src, zero = init.layout(l1, l2, depth_map)
    seen: set[int] = set()
    repeat = []
    for j in src:
        repeat.append(j in seen)
        seen.add(j)
    zero = zero if zero is not None else repeat if init.repeats_are_identity else [False] * len(src)
    if method != "map" and any(kind.endswith(LAST) for kind in kinds):
        rows = {j: [t for t, s in enumerate(src) if s == j] for j in set(src)}
        zero = [rows[j].index(t) < sum(zero[r] for r in rows[j]) for t, j in enumerate(src)]
    return Depth(src, repeat, zero)


def store_gaps(src: Dims, depth: Depth) -> list[str]:
    """Why a depth plan breaks layers that reuse the keys and values of the last earlier layer of their kind (the
    kinds marked last): that layer must be the source's, itself, in the target too."""
    kinds = src.kinds
    for kind in sorted({k.removesuffix(LAST) for k in kinds if k.endswith(LAST)}):
        store = max((i for i, k in enumerate(kinds) if k == kind), default=None)
        rows = [t for t, s in enumerate(depth.sources) if kinds[s] == kind]
        if store is not None and rows and (depth.sources[rows[-1]] != store or depth.zero[rows[-1]]):
            return [f"the last layers reuse the keys and values of the last earlier {kind} layer, source layer {store}, "
                    f"and this depth plan puts another there (target layer {rows[-1]}), so they would read its keys "
                    f"and values; use --depth identity, or a depth map whose last {kind} layer before them is "
                    f"source layer {store} itself"]
    return []


def checked_depth(plan, src: Dims, tgt: Dims, depth: Depth | None = None) -> Depth:
    """The plan's depth plan for ``src`` -> ``tgt`` (``depth``: already built), checked against the target's layers,
    the source layers a depth map leaves out, and the layer kinds."""
    depth = depth or depth_plan(plan.depth, src.layers, tgt.layers, plan.depth_map)
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


def residual_scales(spec: ArchSpec, plan: GrowthPlan, src: Dims, tgt: Dims) -> torch.Tensor | None:
    """Each residual unit's ``alpha`` when the stream grows by scaled copies (see the module docstring): a
    lossless width init, an RMSNorm family and a hidden size that is no integer multiple of the source's.
    None otherwise."""
    if not width_init(plan.width).copies or spec.norms["type"] != "rms" or tgt.hidden % src.hidden == 0:
        return None
    sel = unit_selection("res", src, tgt)
    copies = torch.bincount(sel, minlength=src.hidden).double()
    return (tgt.hidden / src.hidden / copies[sel]).sqrt()


def lossless_gaps(spec: ArchSpec, plan: GrowthPlan, src: Dims, tgt: Dims, depth: Depth | None = None) -> list[str]:
    """Why growing ``src`` into ``tgt`` with ``plan`` (resolved; ``depth``: its depth plan, already built) does not
    keep the source's function exactly, one sentence a reason; empty when it does (fp32 rounding aside)."""
    gaps, init = [], width_init(plan.width)
    if not init.lossless:
        gaps.append(f"the {plan.width} width init ({init.help.split(';')[0]}) does not keep the function; use --width "
                    "split")
    depth = depth or depth_plan(plan.depth, src.layers, tgt.layers, plan.depth_map)
    left_out, kept = depth.left_out(src.layers), [s for s, z in zip(depth.sources, depth.zero) if not z]
    if left_out:
        gaps.append(f"the depth map leaves out source layer(s) {layer_list(left_out)}, which changes the function")
    if depth_init(plan.depth).from_weights:
        gaps.append("weights depth makes each new layer a mix of its trained neighbours, which changes the function; "
                    "use --depth identity for a lossless start")
    elif any(b <= a for a, b in zip(kept, kept[1:])):
        what = "the depth map" if plan.depth == "map" else f"{plan.depth} depth"
        gaps.append(f"{what} repeats (or reorders) trained layers, which changes the function; use --depth identity, "
                    "or a depth map whose added layers are new identity blocks")
    gaps += store_gaps(src, depth)
    if any(depth.zero) and spec.norms.get("stream") == "post":
        gaps.append(f"{spec.model_type} normalizes the residual stream after each layer (post-LN), so a new layer "
                    "whose output is zero is not an identity: only growth without new layers is lossless")
    if init.copies and tgt.hidden % src.hidden and spec.norms["type"] == "layer":
        gaps.append(f"LayerNorm over a residual stream grown by a non-integer ratio ({src.hidden} -> {tgt.hidden}) "
                    f"changes the norm's mean and variance; choose a hidden size that is a multiple of {src.hidden}")
    if plan.perturb:
        gaps.append(f"noise of std {plan.perturb:g} / sqrt(fan_in) is added to every grown projection (--perturb), "
                    "which moves the start away from the source's function on purpose; use --perturb 0")
    gaps += expert_gaps(plan, src, tgt)
    for name, what in (("q_lora", "query"), ("kv_lora", "key-value")):
        if init.copies and getattr(src, name) and getattr(tgt, name) % getattr(src, name):
            gaps.append(f"the {what} latent's RMSNorm normalizes the latent as a whole, whose statistic changes when "
                        f"it grows by a non-integer factor ({getattr(src, name)} -> {getattr(tgt, name)}); grow "
                        f"{spec.config_key(name)} by an integer factor")
    if init.copies and src.mamba_heads and tgt.mamba_heads % src.mamba_heads:
        gaps.append(f"the Mamba layers' gated norm normalizes each group of heads together, whose statistic changes "
                    f"when heads grow by a non-integer factor ({src.mamba_heads} -> {tgt.mamba_heads}, with the hidden "
                    "size); grow the hidden size by an integer factor")
    if init.copies:
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
        if tgt.experts > src.experts and src.zero_experts:
            gaps.append(f"the router scores {src.zero_experts} zero-computation experts beside the experts, whose share "
                        "of its softmax changes when experts are copied; only growth without new experts keeps it")
        if tgt.experts > src.experts and src.expert_groups > 1:
            gaps.append(f"experts are chosen within {src.expert_groups} groups, whose scores change when experts are "
                        "copied into them; only growth without new experts keeps the routing")
        if tgt.experts > src.experts and width_init(plan.width).breaks_symmetry and \
                not (src.experts == 1 and tgt.router_normalized):
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


def dense(index: torch.Tensor, coef: torch.Tensor, n1: int) -> torch.Tensor:
    return torch.zeros(*index.shape, n1).scatter_(-1, index.unsqueeze(-1), coef.unsqueeze(-1))
