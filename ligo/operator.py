"""The learned linear growth operator (LiGO): all of the maths lives here.

The target's weights are a linear function of the source's. A layer weight of module ``m`` in
target layer ``i`` is

    W'_i = E_out · (sum_j  D_m[i, j] · W_j) · E_in^T        (one width map per axis of W)

where ``D_m`` (target layers x source layers) is the *depth* map of that module and the width maps
``E`` expand each axis from its source space to its target space (the spaces are ``ligo.arch.SPACES``).
Attention spaces are grown by whole heads: ``E = A ⊗ I_head_dim`` with ``A`` over heads, so rotary
pairs stay intact. Each space has independent *write* (out) and *read* (in) maps, so an exactly
function-preserving start exists. The fixed growth methods are initial values of these maps:

* width ``copy``: Net2Net. Out map copies units; in map copies them with fan-in divided by the
  number of copies. Lossless (for LayerNorm families at integer ratios; RMSNorm: see below).
* width ``split``: as ``copy`` but the copies' read weights are unequal shares ``a_c`` summing to 1,
  so copies receive different gradients and grow apart. Lossless too.
* width ``random``: the paper's code: old units kept, new units random convex mixtures of old
  ones, one map for both sides. Not lossless.
* a residual stream under RMSNorm that grows by a non-integer ratio ``r = d2 / d1`` (576 -> 960), where
  some units have more copies than others, gets scaled copies: copy ``c`` of unit ``t`` carries
  ``alpha_c * x_t`` with ``alpha_c = sqrt(r / copies_t)``, so every unit's squares sum to ``r x_t^2`` and the
  RMS statistic is unchanged (epsilon included). Readers take ``share / alpha``, norm gains are plain
  copies, and the norm in front of the head (which reads through the write map) ``share / alpha^2``.
  ``copy``/``split`` are thus lossless at any ratio for RMSNorm families (integer ratios: ``alpha = 1``).
* a table's numerics: norm gains stored with an offset (Gemma's ``1 + w``) are grown as gains
  (``offset + w``), and an embedding the model multiplies by ``hidden ** p`` is divided by the growth of
  that factor (and the norm in front of a head tied to it multiplied by it), so the function is kept.
* depth ``stack`` (target layer i <- source layer i mod L1), ``interleave`` (each source layer
  repeated in place) and ``identity`` (as interleave, but the repeats' residual-writing modules are
  zero, so new layers start as identities in pre-norm models).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from einops import rearrange
from torch import nn

from .arch import FIXED, GROWN, LAYER_TOKENS, READ_PARTNER, SPACE_OF, WRITE_TOKENS, ArchSpec, Dims, Entry
from .config import DEPTH_INITS, WIDTH_INITS, GrowthPlan
from .errors import LigoError


ROUTER_NOISE = 0.05  # split experts of a trained router: noise of this fraction of its weights' RMS
_CHUNK_ELEMENTS = 1 << 24  # an embedding or head is grown in slices of rows of about this many elements


def _param_name(token: str) -> str:
    return token.replace(".", "_").replace("{e}", "E")


def check_growth(spec: ArchSpec, src: Dims, tgt: Dims) -> None:
    """Refuse target shapes the operator cannot produce, with the fix in the message."""
    for name in ("layers", "hidden", "heads", "kv_heads", "ffn", "experts"):
        if getattr(tgt, name) < getattr(src, name):
            raise LigoError(f"target {spec.config_key(name) or name}={getattr(tgt, name)} is smaller than the source's "
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
    if tgt.experts > src.experts and src.experts > 1 and tgt.experts % src.experts:
        raise LigoError(f"the experts would grow from {src.experts} to {tgt.experts}, which is no multiple: some experts "
                        f"would get more copies than others; choose a multiple of {src.experts}")
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
    space = SPACE_OF[token].name
    kv = torch.arange(tgt.kv_heads) % src.kv_heads
    if space == "kv_heads":
        return kv
    if space == "heads":
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
    if plan.depth != "identity" and tgt.layers > src.layers:
        gaps.append(f"{plan.depth} depth repeats trained layers, which changes the function; use --depth identity")
    if plan.depth == "identity" and tgt.layers > src.layers and spec.norms.get("stream") == "post":
        gaps.append(f"{spec.model_type} normalizes the residual stream after each layer (post-LN), so a new layer "
                    "whose output is zero is not an identity: only growth without new layers is lossless")
    if plan.width in ("copy", "split") and tgt.hidden % src.hidden and spec.norms["type"] == "layer":
        gaps.append(f"LayerNorm over a residual stream grown by a non-integer ratio ({src.hidden} -> {tgt.hidden}) "
                    f"changes the norm's mean and variance; choose a hidden size that is a multiple of {src.hidden}")
    gaps += expert_gaps(plan, src, tgt)
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
        if tgt.experts > src.experts and plan.width == "split" and not (src.experts == 1 and tgt.router_normalized):
            gaps.append("split experts start from a router with noise added, whose top-k weights keep the source's "
                        "function only when a dense model is upcycled with a renormalized router; use --width copy")
    return gaps


def expert_scale(src: Dims, tgt: Dims) -> float:
    """What the experts' outputs are multiplied by. Copies of one source expert with equal router scores keep
    the source's mixture when the top-k weights are renormalized (they sum to one), and when they are not and
    a token uses every copy of each chosen expert (the copies' shares sum to the source's weight). A dense
    model upcycled under a router that does not renormalize gives a token ``k / E`` of the copies' weight
    (uniform scores over ``E`` experts, ``k`` chosen): its experts are scaled by ``E / k``."""
    if src.experts == 1 and tgt.experts > 1 and not tgt.router_normalized:
        return tgt.experts / tgt.experts_per_token
    return 1.0


def _random_rows(n: int, n1: int, gen: torch.Generator) -> torch.Tensor:
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
        return torch.cat([torch.eye(n1), _random_rows(n2 - n1, n1, gen).float()])
    return _dense(*selection, n1)


def _dense(index: torch.Tensor, coef: torch.Tensor, n1: int) -> torch.Tensor:
    return torch.zeros(*index.shape, n1).scatter_(-1, index.unsqueeze(-1), coef.unsqueeze(-1))


# -- the operator -------------------------------------------------------------------------------
class GrowthOperator(nn.Module):
    """Learnable depth and width maps from a frozen source state dict to a target state dict."""

    def __init__(self, spec: ArchSpec, src_dims: Dims, tgt_dims: Dims, layout: dict, src_state: dict,
                 plan: GrowthPlan | None = None, tokens_per_param: float | None = None, compact: bool = False,
                 router_std: float = 0.02):
        """``compact``: the operator will only be materialized, never fitted (streaming growth): each width
        map that is a selection keeps only its (unit, coefficient) form, not its dense matrix.
        ``router_std``: the scale of the noise a symmetry-breaking plan adds to the router of copied experts
        (the target config's ``initializer_range``: what a router trained from scratch starts from)."""
        super().__init__()
        self.spec, self.src, self.tgt = spec, src_dims, tgt_dims
        # the one place a plan's auto fields are resolved: from what is known of the source's training
        self.plan = plan = (plan or GrowthPlan()).resolved(tokens_per_param)
        check_growth(spec, src_dims, tgt_dims)
        tokens = self._collect(layout)
        # source tensors keep their dtype (bf16 stays bf16: half the memory) and are upcast to float32
        # where they are used, which is exact
        for (kind, key), src in self._stacked(src_state).items():
            self.register_buffer(kind + _param_name(key), src.detach(), persistent=False)
        self.tied = {k: v for k, v in spec.tied.items() if src_dims.tie and v in layout}
        sources, repeat = depth_plan(plan.depth, src_dims.layers, tgt_dims.layers)
        self.width = nn.ParameterDict()
        self._sparse: dict = {}         # width map selections, computed when materializing (see _selection)
        self._compacted: set[str] = set()
        self._compacted_numel = 0
        self._init_width(tokens, self._layer_groups(repeat), compact)
        self._scale_residual()
        self._router_noise(router_std)
        if compact:
            for name in list(self.width):
                self._compact(name)
        # An embedding the model multiplies by hidden ** power: divided by the growth of that factor; the
        # norm in front of a head tied to it multiplied by it (the head's logits would shrink otherwise).
        self.scales: dict[str, float] = {}
        if spec.embed_scale is not None:
            factor = (src_dims.hidden / tgt_dims.hidden) ** spec.embed_scale["power"]
            self.scales[spec.embed_scale["weight"]] = factor
            if src_dims.tie and "tied_norm" in spec.embed_scale:
                self.scales[spec.embed_scale["tied_norm"]] = 1 / factor
        base = torch.nn.functional.one_hot(torch.tensor(sources), src_dims.layers).float()
        self.depth = nn.ParameterDict()
        for module in sorted({e.module for e in self.layer_entries}):
            d = base.clone()
            if plan.depth == "identity" and module in spec.identity_zero:
                d[torch.tensor(repeat, dtype=torch.bool)] = 0
            self.depth[_param_name(module)] = nn.Parameter(d)

    def _collect(self, layout: dict) -> set[str]:
        """The weights outside the layers (``singles``), one entry per layer weight, the layers' key prefix,
        and the grown spaces they use."""
        spec, tied = self.spec, set(self.spec.tied) if self.src.tie else set()
        prefixes = {key[: len(key) - len(spec.layer_key("", m.entry, m.layer, m.expert))]
                    for key, m in layout.items() if m.entry.scope == "layer"}
        self.prefix = prefixes.pop() if prefixes else ""
        self.singles: list[tuple[str, Entry]] = []
        self.layer_entries: list[Entry] = []
        tokens: set[str] = set()
        for key, m in sorted(layout.items()):
            if key in tied:
                continue
            tokens.update(t for axis in m.entry.axes for t in axis if t in GROWN)
            if m.entry.scope == "layer":
                if m.layer == 0 and not m.expert:
                    self.layer_entries.append(m.entry)
            else:
                if any(t in LAYER_TOKENS for axis in m.entry.axes for t in axis):
                    raise LigoError(f"table {spec.source}: {key} is outside the layers but uses a layer space")
                self.singles.append((key, m.entry))
        return tokens

    def _layer_groups(self, repeat: list[bool]) -> list[bool]:
        """Layer spaces (FFN, heads) have one map per *group* of target layers: one group by default, one
        per layer with per_layer, and with the split init a second group for the new layers of identity
        depth, whose copies would otherwise stay identical (their outputs start at zero, so their units may
        start as random mixtures instead of copies without changing the function). Returns, per group,
        whether it is such a group of fresh layers."""
        plan, layers = self.plan, self.tgt.layers
        fresh_group = plan.width == "split" and plan.depth == "identity" and any(repeat)
        groups = list(range(layers)) if plan.per_layer else [int(r) for r in repeat] if fresh_group else [0] * layers
        self.register_buffer("layer_group", torch.tensor(groups), persistent=False)
        return [fresh_group and any(r for r, g in zip(repeat, groups) if g == k) for k in range(max(groups) + 1)]

    def _init_width(self, tokens: set[str], fresh: list[bool], compact: bool) -> None:
        """One width map per grown space, write maps first (a random read map copies its write map, as the
        paper ties them); a selection is kept as one, without its dense matrix, when the operator is compact."""
        plan, src_dims, tgt_dims = self.plan, self.src, self.tgt
        gen = torch.Generator().manual_seed(plan.seed)
        experts: dict = {}
        for tok in sorted(tokens, key=lambda t: (t in READ_PARTNER, t)):
            if SPACE_OF[tok].name == "experts":
                self._install_map(tok, self._expert_parts(tok, fresh, gen, experts), compact)
                continue
            partner = next((_param_name(w) for w in SPACE_OF[tok].write if _param_name(w) in self.width), None)
            if plan.width == "random" and tok in READ_PARTNER and partner in self._compacted:
                self._sparse[(_param_name(tok), False)] = self._sparse[(partner, False)]
                self._compacted.add(_param_name(tok))
                self._compacted_numel += self._compacted_numel_of(partner)
                self.width[_param_name(tok)] = nn.Parameter(torch.empty(0))
                continue
            if plan.width == "random" and tok in READ_PARTNER and partner is not None:
                self.width[_param_name(tok)] = nn.Parameter(self.width[partner].detach().clone())
                continue
            inits = ["random" if new and tok in WRITE_TOKENS else plan.width for new in fresh] \
                if tok in LAYER_TOKENS else [plan.width]
            parts = [width_selection(init, tok, src_dims, tgt_dims, gen, plan.split_noise) or
                     width_init(init, tok, src_dims, tgt_dims, gen, plan.split_noise) for init in inits]
            self._install_map(tok, parts, compact)

    def _install_map(self, tok: str, parts: list, compact: bool) -> None:
        """One width map from its initial value per layer group (a selection or a dense matrix): kept as a
        selection alone when the operator is compact and every part is one (the residual stream is always
        dense: its norms' maps are derived from it)."""
        n1 = self.src.units(tok)[0]
        if compact and tok not in ("res", "res.in") and all(isinstance(p, tuple) for p in parts):
            index, coef = (torch.stack(x) for x in zip(*parts)) if tok in LAYER_TOKENS else parts[0]
            self._sparse[(_param_name(tok), False)] = (index, coef)
            self._compacted.add(_param_name(tok))
            self._compacted_numel += index.numel() * n1
            self.width[_param_name(tok)] = nn.Parameter(torch.empty(0))
            return
        parts = [_dense(*p, n1) if isinstance(p, tuple) else p for p in parts]
        self.width[_param_name(tok)] = nn.Parameter(torch.stack(parts) if tok in LAYER_TOKENS else parts[0])

    def _expert_parts(self, tok: str, fresh: list[bool], gen: torch.Generator, drawn: dict) -> list:
        """The experts' map per layer group: one map for an expert's weights and its router row, so that each
        target expert is routed as the experts it is made of. ``copy``/``split``: copies (split breaks their
        symmetry in the router, :meth:`_router_noise`); ``random``: the source experts kept, new experts random
        convex mixtures of them (as the paper's width init); the experts' outputs scaled by :func:`expert_scale`."""
        n1, n2 = self.src.experts, self.tgt.experts
        if "parts" not in drawn:
            drawn["parts"] = [torch.cat([torch.eye(n1), _random_rows(n2 - n1, n1, gen).float()])
                              if (new or self.plan.width == "random") and n2 > n1
                              else (torch.arange(n2) % n1, torch.ones(n2)) for new in fresh]
        scale = expert_scale(self.src, self.tgt) if tok == "exp.out" else 1.0
        return [(p[0], p[1] * scale) if isinstance(p, tuple) else p * scale for p in drawn["parts"]]

    def _router_noise(self, std: float) -> None:
        """Copied experts get equal router scores, and so equal gradients: a symmetry-breaking plan (``split``,
        or ``random`` when there is one source expert to mix) adds fixed noise to the grown router of every
        target layer, so that tokens prefer different copies and the copies grow apart: of ``std`` when the
        router is new (upcycling), of ``ROUTER_NOISE`` times the source router's RMS when it is trained. The
        noise is a constant of the operator (the fitted maps do not touch it)."""
        self.noise: set[str] = set()
        self._noise_std: dict[str, float | None] = {}
        src, tgt = self.src, self.tgt
        if tgt.experts <= src.experts or not (self.plan.width == "split" or (self.plan.width == "random" and
                                                                              src.experts == 1)):
            return
        gen = torch.Generator().manual_seed(self.plan.seed + 1)
        for e in self.layer_entries:
            if e.axes[0] == ("router",):
                shape = self.spec.shape(e, tgt)
                self.register_buffer("n_" + _param_name(e.name), torch.randn(tgt.layers, *shape, generator=gen),
                                     persistent=False)
                # a trained router: noise small beside its weights (measured when the source is read), so the
                # routing barely moves
                self._noise_std[e.name] = std if src.experts == 1 else None
                self.noise.add(e.name)

    def _router_noise_of(self, e: Entry, chunk: slice, read) -> torch.Tensor:
        if self._noise_std[e.name] is None:
            src = torch.stack([self._layer(read, e, j).float() for j in range(self.src.layers)]) if read is not None \
                else getattr(self, "l_" + _param_name(e.name)).float()
            self._noise_std[e.name] = ROUTER_NOISE * float(src.pow(2).mean().sqrt())
        return self._noise_std[e.name] * getattr(self, "n_" + _param_name(e.name))[chunk]

    def _scale_residual(self) -> None:
        """A residual stream of scaled copies: writers scale, readers divide, and the norms over the stream
        get maps of their own (plain copies; the head-side norm share / alpha^2)."""
        self.gains = set(self.spec.norms["gains"])
        alpha = residual_scales(self.spec, self.plan, self.src, self.tgt)
        if alpha is None:
            return
        alpha = alpha.float()[:, None]
        gain_tokens = {t for e in [e for _, e in self.singles] + self.layer_entries if e.name in self.gains
                       for axis in e.axes for t in axis if t in ("res", "res.in")}
        with torch.no_grad():
            if "res" in self.width:
                self.width["res"].mul_(alpha)
            if "res_in" in self.width:
                self.width["res_in"].div_(alpha)
        for tok in sorted(gain_tokens):
            base = (torch.nn.functional.one_hot(unit_selection("res", self.src, self.tgt), self.src.hidden).float()
                    if tok == "res" else self.width["res_in"].detach() / alpha)
            self.width[_param_name(tok) + "_gain"] = nn.Parameter(base)

    def _stacked(self, state: dict) -> dict[tuple[str, str], torch.Tensor]:
        """A source-shaped state (checkpoint keys) as the operator holds it: weights outside the layers
        by key (``("w_", key)``), layer weights stacked over the source layers (``("l_", entry name)``)."""
        out = {("w_", key): state[key] for key, _ in self.singles}
        for e in self.layer_entries:
            out[("l_", e.name)] = torch.stack([self._layer(lambda k: state[k], e, j) for j in range(self.src.layers)])
        return out

    def _layer(self, read, e: Entry, j: int) -> torch.Tensor:
        """Source layer ``j`` of entry ``e`` read with ``read(key)``: a per-expert entry's stacked over its experts."""
        keys = self.spec.layer_keys(self.prefix, e, j, self.src)
        return torch.stack([read(k) for k in keys]) if e.per_expert else read(keys[0])

    # -- application ------------------------------------------------------------------------
    def _map_name(self, token: str, gain: bool = False) -> str:
        name = _param_name(token)
        return name + "_gain" if gain and name + "_gain" in self.width else name

    def _map(self, token: str, absolute: bool, gain: bool = False) -> torch.Tensor:
        name = self._map_name(token, gain)
        if name in self._compacted:
            raise LigoError(f"internal error: the width map {name} was compacted for streaming and cannot be fitted")
        m = self.width[name]
        return m.abs() if absolute else m

    def _selection(self, name: str, absolute: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A width map whose every row has at most one nonzero entry (a copy, a split share, a zero row), as
        (source unit, coefficient) per target unit and group, or None for a dense map. Applying it is an
        index and a product, with the values of the matrix product (zeros' signs aside)."""
        key = (name, absolute)
        if key not in self._sparse:
            m = self.width[name].detach()
            m = m.abs() if absolute else m
            if bool(((m != 0).sum(-1) <= 1).all()):
                index = m.abs().argmax(-1)
                self._sparse[key] = (index, m.gather(-1, index.unsqueeze(-1)).squeeze(-1))
            else:
                self._sparse[key] = None
        return self._sparse[key]

    def _compacted_numel_of(self, name: str) -> int:
        index, _ = self._sparse[(name, False)]
        return index.numel() * self.src.units(self._token_of(name))[0]

    @staticmethod
    def _token_of(name: str) -> str:
        return next(t for t in GROWN if _param_name(t) == name.removesuffix("_gain"))

    @torch.no_grad()
    def _compact(self, name: str) -> None:
        """Free the dense storage of a width map that is a selection (streaming growth: nothing will be
        fitted); the operator then materializes from the selection alone. A dense map is kept."""
        if name not in self._compacted and self._selection(name, False) is not None:
            self._compacted_numel += self.width[name].numel()
            self.width[name].data = torch.empty(0, device=self.width[name].device)
            self._compacted.add(name)

    def _expand_axis(self, w: torch.Tensor, axis: int, tokens: tuple[str, ...], groups: torch.Tensor | None,
                     absolute: bool, gain: bool = False) -> torch.Tensor:
        """Grow one axis of ``w``. ``groups``: the map group of each row of a leading layer dimension
        (None for a weight outside the layers); ``gain``: ``w`` is a norm's gain."""
        if len(tokens) > 1:  # fused axis: grow each part, concatenate
            parts = w.split([self.src.axis_size(t) for t in tokens], dim=axis)
            return torch.cat([self._expand_axis(p, axis, (t,), groups, absolute, gain)
                              for p, t in zip(parts, tokens)], dim=axis)
        tok = tokens[0]
        if tok in FIXED:
            return w
        _, unit = self.src.units(tok)
        w = rearrange(w.movedim(axis, -1), "... (unit d) -> ... unit d", d=unit)
        name = self._map_name(tok, gain)
        sel = None if torch.is_grad_enabled() else self._selection(name, absolute)
        if sel is not None:  # a selection: gather the source units, scale them (no matrix product)
            index, coef = sel
            if index.dim() == 1 or len(index) == 1:
                index, coef = (index, coef) if index.dim() == 1 else (index[0], coef[0])
                w = w.index_select(-2, index) * coef[:, None]
            else:
                present = [int(g) for g in torch.unique(groups)]
                parts = [w[groups == g].index_select(-2, index[g]) * coef[g][:, None] for g in present]
                order = torch.cat([torch.nonzero(groups == g).flatten() for g in present])
                w = torch.cat(parts)[torch.argsort(order)]
            return rearrange(w, "... unit d -> ... (unit d)").movedim(-1, axis)
        m = self._map(tok, absolute, gain)
        if m.dim() == 2 or len(m) == 1:
            w = torch.einsum("...sd,ts->...td", w, m if m.dim() == 2 else m[0])
        else:  # one map per group of layers
            present = [int(g) for g in torch.unique(groups)]
            parts = [torch.einsum("...sd,ts->...td", w[groups == g], m[g]) for g in present]
            order = torch.cat([torch.nonzero(groups == g).flatten() for g in present])
            w = torch.cat(parts)[torch.argsort(order)]
        return rearrange(w, "... unit d -> ... (unit d)").movedim(-1, axis)

    def _expand(self, w: torch.Tensor, entry: Entry, groups: torch.Tensor | None, absolute: bool) -> torch.Tensor:
        for a, tokens in enumerate(entry.axes):
            w = self._expand_axis(w, a + int(groups is not None), tokens, groups, absolute, entry.name in self.gains)
        return w * self.scales[entry.name] if entry.name in self.scales else w

    def _offset(self, entry: Entry, weights: bool) -> float:
        """What a stored weight is offset by (a norm gain stored as ``gain - 1``): growth acts on the gain
        itself, depth mix included. Optimizer moments (``weights=False``) have no offset."""
        return self.spec.norms["offset"] if weights and entry.name in self.gains else 0.0

    def _pieces(self, layer_by_layer: bool = False, state: dict | None = None, absolute: bool = False,
                read=None) -> Iterator[tuple[str, slice | None, torch.Tensor]]:
        """The target's tensors one at a time (float32), tied duplicates left out, as ``(key, rows, tensor)``:
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
        held = self._stacked(state) if state is not None else None
        if not self._compacted:
            self._sparse.clear()  # the maps may have been fitted since the last call

        def single(key: str, rows: slice | None = None) -> torch.Tensor:
            # a fresh float32 copy either way: the same memory layout gives the same kernels, so streaming
            # and in-memory growth compute the same bits
            if read is not None:
                return read(key, rows).to(torch.float32, copy=True)
            t = held[("w_", key)] if held is not None else getattr(self, "w_" + _param_name(key))
            return (t if rows is None else t[rows]).to(torch.float32, copy=True)

        def layers(e: Entry, index: list[int] | None) -> torch.Tensor:
            if read is not None:
                return torch.stack([self._layer(read, e, j).float() for j in index])
            t = held[("l_", e.name)] if held is not None else getattr(self, "l_" + _param_name(e.name))
            return (t if index is None else t[index]).float()

        def grow_single(w: torch.Tensor, entry: Entry) -> torch.Tensor:
            grown = self._expand(w, entry, None, absolute)
            offset = self._offset(entry, state is None)
            if offset:  # E (w + o) - o, computed so that it is exactly E w where E's rows sum to one
                grown = grown + offset * (self._expand(torch.ones_like(w), entry, None, absolute) - 1)
            return grown

        shapes = self.target_shapes() if layer_by_layer else {}
        for key, entry in self.singles:
            if not (layer_by_layer and all(t in FIXED for t in entry.axes[0]) and len(entry.axes) > 1):
                yield key, None, grow_single(single(key), entry)
                continue
            shape = shapes[key]
            step = max(1, _CHUNK_ELEMENTS // max(1, math.prod(shape[1:])))
            for start in range(0, shape[0], step):
                rows = slice(start, min(start + step, shape[0]))
                yield key, rows, grow_single(single(key, rows), entry)
        for e in self.layer_entries:
            offset = self._offset(e, state is None)
            depth = self.depth[_param_name(e.module)]
            depth = depth.abs() if absolute else depth
            shape = getattr(self, "l_" + _param_name(e.name)).shape[1:]
            if layer_by_layer:
                steps = []
                for i in range(self.tgt.layers):
                    index = torch.nonzero(depth[i]).flatten().tolist()
                    steps.append((slice(i, i + 1), depth[i, index][None], index))
            else:
                steps = [(slice(None), depth, None)]
            for chunk, coef, index in steps:
                src = layers(e, index) if index != [] else torch.zeros(0, *shape, device=depth.device)
                mixed = torch.einsum("ij,j...->i...", coef, src)
                grown = self._expand(mixed, e, self.layer_group[chunk], absolute)
                if offset:
                    ones = torch.einsum("ij,j...->i...", coef, torch.ones_like(src))
                    grown = grown + offset * (self._expand(ones, e, self.layer_group[chunk], absolute) - 1)
                if e.name in self.noise and state is None and not absolute:
                    grown = grown + self._router_noise_of(e, chunk, read)
                del mixed, src
                for i, w in zip(range(self.tgt.layers)[chunk], grown):
                    if e.per_expert:
                        for x, key in enumerate(self.spec.layer_keys(self.prefix, e, i, self.tgt)):
                            yield key, None, w[x].clone()  # its own storage, saved as its own tensor
                    else:
                        yield self.spec.layer_key(self.prefix, e, i), None, w
                del grown

    def _grown(self, dtype: torch.dtype | None = None, **kwargs) -> Iterator[tuple[str, torch.Tensor]]:
        """:meth:`_pieces` with the slices of rows put together: whole tensors (the pieces cast to ``dtype``)."""
        shapes = self.target_shapes()
        key, out = None, None
        for name, rows, v in self._pieces(**kwargs):
            if rows is None:
                yield name, v
                continue
            if name != key:
                key, out = name, torch.empty(shapes[name], dtype=dtype or torch.float32, device=v.device)
            out[rows] = v
            if rows.stop == shapes[name][0]:
                yield name, out
                key, out = None, None

    def singles_and_layers_keys(self) -> list[str]:
        """The keys :meth:`forward` returns (checkpoint naming), without computing anything."""
        keys = [key for key, _ in self.singles] + list(self.tied)
        return keys + [k for e in self.layer_entries for i in range(self.tgt.layers)
                       for k in self.spec.layer_keys(self.prefix, e, i, self.tgt)]

    def target_shapes(self) -> dict[str, list[int]]:
        """Every tensor :meth:`materialize` returns, with its shape, in its order (nothing computed)."""
        def shape(entry: Entry, src: torch.Size) -> list[int]:
            return [t if t > 0 else s for t, s in zip(self.spec.shape(entry, self.tgt), src)]

        out = {key: shape(e, getattr(self, "w_" + _param_name(key)).shape) for key, e in self.singles}
        for e in self.layer_entries:
            size = shape(e, getattr(self, "l_" + _param_name(e.name)).shape[1:])
            size = size[1:] if e.per_expert else size
            out.update({k: size for i in range(self.tgt.layers) for k in self.spec.layer_keys(self.prefix, e, i, self.tgt)})
        return out

    def forward(self) -> dict[str, torch.Tensor]:
        """The target state dict (tied keys point at the same tensor)."""
        out = dict(self._grown())
        for key, target in self.tied.items():
            out[key] = out[target]
        return out

    @torch.no_grad()
    def stream(self, read, dtype: torch.dtype) -> Iterator[tuple[str, slice | None, torch.Tensor]]:
        """The target's tensors (cast to ``dtype``) as ``(key, rows, piece)``, in :meth:`materialize`'s order
        and with its arithmetic, from a source read on demand by ``read(key, rows=None)``: only the source
        tensors one piece depends on are held at a time (embeddings and heads come in slices of rows)."""
        for key, rows, v in self._pieces(layer_by_layer=True, read=read):
            yield key, rows, v.to(dtype=dtype)

    @torch.no_grad()
    def materialize(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                    state: dict | None = None, absolute: bool = False) -> dict[str, torch.Tensor]:
        """The target state dict as plain tensors, without tied duplicates, ready to save.

        Streams: only one target layer of one weight kind is held in float32 at a time; each result
        is cast to ``dtype`` and moved to ``device`` (default: where the operator is) at once.
        ``state``/``absolute``: grow another source-shaped state instead (see :meth:`_grown`).
        """
        return {key: v.to(device=device or v.device, dtype=dtype or v.dtype)
                for key, v in self._grown(layer_by_layer=True, state=state, absolute=absolute, dtype=dtype)}

    def build_flops(self) -> int:
        """FLOPs of building the target's weights once, forward and backward (what
        ``torch.utils.flop_counter`` counts for :meth:`forward` and its backward; tested to match)."""
        total = 0

        def axes(shape: list[int], entry: Entry, lead: int, grad: bool) -> int:
            flops = 0
            for a, tokens in enumerate(entry.axes):
                grown = [t for t in tokens if t not in FIXED]
                others = 1
                for i, size in enumerate(shape):
                    others *= size if i != a + lead else 1
                for tok in grown:  # a fused axis grows each part separately
                    (n1, unit), (n2, _) = self.src.units(tok), self.tgt.units(tok)
                    # forward, the map's grad, and the input's grad when the input has one
                    flops += 2 * others * n2 * unit * n1 * (3 if grad else 2)
                if grown:
                    shape[a + lead] = sum(self.tgt.axis_size(t) for t in tokens)
                    grad = True
            return flops

        for key, entry in self.singles:
            total += axes(list(getattr(self, "w_" + _param_name(key)).shape), entry, 0, False)
        for e in self.layer_entries:
            src = getattr(self, "l_" + _param_name(e.name))
            per_layer = src[0].numel()
            total += 2 * 2 * self.tgt.layers * self.src.layers * per_layer  # depth mix, forward and the map's grad
            total += axes([self.tgt.layers, *src.shape[1:]], e, 1, True)
        return total

    def param_groups(self) -> list[dict]:
        """AdamW groups for the fit: no weight decay anywhere; each width map's LR scaled by the plan's
        ``width_lr`` (``fan_in``: 1 / its number of source units), the depth maps' by ``depth_lr_scale``."""
        groups = [{"params": [m], "weight_decay": 0.0,
                   "lr_scale": 1.0 / m.shape[-1] if self.plan.width_lr == "fan_in" else 1.0, "name": f"width.{n}"}
                  for n, m in self.width.items()]
        if len(self.depth):
            groups.append({"params": list(self.depth.values()), "weight_decay": 0.0,
                           "lr_scale": self.plan.depth_lr_scale, "name": "depth"})
        return groups

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters()) + self._compacted_numel
