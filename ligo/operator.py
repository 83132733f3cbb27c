"""The learned linear growth operator (LiGO): its maths (this docstring) and the maps as it holds them.

The target's weights are a linear function of the source's. A layer weight of module ``m`` in
target layer ``i`` is

    W'_i = E_out · (sum_j  D_m[i, j] · W_j) · E_in^T        (one width map per axis of W)

where ``D_m`` (target layers x source layers) is the *depth* map of that module and the width maps
``E`` expand each axis from its source space to its target space (the spaces are ``ligo.spaces.SPACES``).
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

The parts, one concern each: the ways the maps start are registered definitions in :mod:`ligo.plans`; what a plan
keeps of the source's function, and the shapes the operator can produce, are in :mod:`ligo.maps`; this
class holds the maps (as parameters, or as selections alone when it is only materialized) and the source
weights as it reads them (its layout: the weights outside the layers, each layer entry stacked over the
source layers); :mod:`ligo.apply` applies the maps; :func:`ligo.flops.build_flops` counts their cost. The plan
arrives concrete: its ``auto`` is resolved by the caller (:meth:`ligo.config.GrowthPlan.resolved`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from .arch import ArchSpec
from .spaces import GROWN, LAYER_TOKENS, MAP_OF, READ_PARTNER, SPACE_OF, WRITE_TOKENS, Dims, Entry
from .apply import grown, pieces
from .config import GrowthPlan
from .errors import LigoError
from .maps import Depth, check_growth, checked_depth, dense, expert_scale, residual_scales
from .plans import WIDTH, depth_init, neighbour_fit, random_rows, unit_selection, width_init


ROUTER_NOISE = 0.05  # split experts of a trained router: noise of this fraction of its weights' RMS


def _param_name(token: str) -> str:
    return token.replace(".", "_").replace("{e}", "E")


# -- the operator -------------------------------------------------------------------------------
class GrowthOperator(nn.Module):
    """Learnable depth and width maps from a frozen source state dict to a target state dict."""

    def __init__(self, spec: ArchSpec, src_dims: Dims, tgt_dims: Dims, layout: dict, src_state: dict,
                 plan: GrowthPlan, compact: bool = False, router_std: float = 0.02, depth: Depth | None = None,
                 read=None):
        """``plan``: a concrete plan (its ``auto`` fields resolved by the caller, :meth:`GrowthPlan.resolved`).
        ``compact``: the operator will only be materialized, never fitted (streaming growth): each width
        map that is a selection keeps only its (unit, coefficient) form, not its dense matrix.
        ``router_std``: the scale of the noise a symmetry-breaking plan adds to the router of copied experts
        (the target config's ``initializer_range``: what a router trained from scratch starts from).
        ``depth``: the plan's depth plan, when the caller built it (:func:`ligo.maps.depth_plan`). ``read``: reads a
        source tensor by its key (streaming: the state holds shapes only), for a depth init fitted on the weights."""
        super().__init__()
        self.spec, self.src, self.tgt = spec, src_dims, tgt_dims
        if "auto" in (plan.width, plan.depth, plan.width_lr):
            raise LigoError("internal error: the operator needs a concrete plan; resolve auto first (GrowthPlan.resolved)")
        self.plan, self.init = plan, width_init(plan.width)
        check_growth(spec, src_dims, tgt_dims)
        tokens = self._collect(layout)
        # source tensors keep their dtype (bf16 stays bf16: half the memory) and are upcast to float32
        # where they are used, which is exact
        for (prefix, key), src in self.stacked(src_state).items():
            self.register_buffer(prefix + _param_name(key), src.detach(), persistent=False)
        self.tied = {k: v for k, v in spec.tied.items() if src_dims.tie and v in layout}
        depth = checked_depth(plan, src_dims, tgt_dims, depth)
        self.width = nn.ParameterDict()
        # Width maps kept as selections: ``compact`` holds the maps whose only storage is their selection
        # (streaming: their parameter is empty), ``_selections`` caches the selection form of dense maps
        # (forgotten whenever the maps may have changed)
        self.compact: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._compact_numel = 0  # the dense size the compact maps stand for (counted as parameters)
        self._selections: dict = {}
        self._init_width(tokens, self._layer_groups(depth.zero), compact)
        self._scale_residual()
        self._router_noise(router_std)
        if compact:
            for name in list(self.width):
                self._make_compact(name)
        # An embedding the model multiplies by hidden ** power: divided by the growth of that factor; the
        # norm in front of a head tied to it multiplied by it (the head's logits would shrink otherwise).
        self.scales: dict[str, float] = {}
        if spec.embed_scale is not None:
            factor = (src_dims.hidden / tgt_dims.hidden) ** spec.embed_scale["power"]
            self.scales[spec.embed_scale["weight"]] = factor
            if src_dims.tie and "tied_norm" in spec.embed_scale:
                self.scales[spec.embed_scale["tied_norm"]] = 1 / factor
        for name, power in spec.scales.items():  # a weight whose product the model multiplies by hidden ** power
            self.scales[name] = (src_dims.hidden / tgt_dims.hidden) ** power
        # a module of one kind of layers maps the target layers of that kind from the source layers of that kind
        base = torch.nn.functional.one_hot(torch.tensor(depth.sources), src_dims.layers).float()
        zero = torch.tensor(depth.zero, dtype=torch.bool)
        self.depth = nn.ParameterDict()
        for module, e in sorted({e.module: e for e in self.layer_entries}.items()):
            rows, cols = self.tgt_rows(e), self.src_rows(e)
            d = base[rows][:, cols].clone()
            if module in spec.identity_zero:  # new identity blocks: their output projections start at zero
                d[zero[rows]] = 0
            self.depth[_param_name(module)] = nn.Parameter(d)
        # a new identity layer's router never chooses an expert that computes nothing (LongCat-Flash's zero experts
        # pass the layer's input through, weighted: the layer would be no identity): their rows of a per-expert
        # bias (the choice's correction, or the scores') start far below every expert's
        self.identity_rows = {i for i, z in enumerate(depth.zero) if z}
        self.layer_sources = list(depth.sources)  # (an axis packed one slice a layer follows them)
        self.unchosen = {e.name for e in self.layer_entries if e.axes == (("router", "zexp"),)}
        # a scalar of the layer itself multiplies its output (Gemma 4's layer_scalar): one in a new identity layer
        self.unit_scalars = {e.name for e in self.layer_entries if e.axes == (("one",),) and "." not in e.name}
        self.depth_fit: dict[str, dict] = {}  # a depth init fitted on the weights: each module's coefficients
        if depth_init(plan.depth).from_weights:
            self._fit_depth(depth, read or (lambda key: src_state[key]))

    @torch.no_grad()
    def _fit_depth(self, depth: Depth, read) -> None:
        """Each new layer (a repeat of source layer j) from its neighbours, by the coefficients that predict every
        source layer of the module from its own neighbours (:func:`ligo.plans.neighbour_fit`): between j and j + 1
        where j has a successor, else after j from j - 1 and j. Norm gains are fitted as gains (offset added)."""
        offset = self.spec.norms["offset"]
        modules: dict[str, list[Entry]] = {}
        for e in self.layer_entries:
            modules.setdefault(e.module, []).append(e)
        for module, entries in modules.items():
            cols = self.src_rows(entries[0])

            def layer(j: int) -> torch.Tensor:
                return torch.cat([self.layer(read, e, cols[j]).double().flatten() +
                                  (offset if e.name in self.gains else 0.0) for e in entries])

            n, window, gram = len(cols), {}, [[0.0] * len(cols) for _ in cols]
            for j in range(n):  # layers at most two apart, three held at a time
                window[j] = layer(j)
                window.pop(j - 3, None)
                for i in range(max(0, j - 2), j + 1):
                    gram[i][j] = gram[j][i] = float(window[i] @ window[j])
            fit = self.depth_fit[module] = neighbour_fit(gram)
            d = self.depth[_param_name(module)]
            for r, row in enumerate(self.tgt_rows(entries[0])):
                if not depth.repeat[row]:
                    continue
                c = int(d.data[r].argmax())
                d.data[r].zero_()
                if c + 1 < n:
                    d.data[r, c], d.data[r, c + 1] = fit["between"][0], fit["between"][1]
                else:
                    d.data[r, c - 1], d.data[r, c] = fit["after"][0], fit["after"][1]

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
            tokens.update(MAP_OF.get(t, t) for axis in m.entry.axes for t in axis if t in GROWN)
            if m.entry.scope == "layer":
                if not m.expert and m.entry not in self.layer_entries:
                    self.layer_entries.append(m.entry)
            else:
                if any(t in LAYER_TOKENS for axis in m.entry.axes for t in axis):
                    raise LigoError(f"table {spec.source}: {key} is outside the layers but uses a layer space")
                self.singles.append((key, m.entry))
        return tokens

    def _layer_groups(self, zero: list[bool]) -> list[bool]:
        """Layer spaces (FFN, heads) have one map per *group* of target layers: one group by default, one
        per layer with per_layer, and with an init that names a ``fresh_write`` (split) a second group for the new
        identity blocks (identity depth, or ``new`` in a depth map), whose copies would otherwise stay identical
        (their outputs start at zero, so their units may start as random mixtures instead of copies without changing
        the function).
        Returns, per group, whether it is such a group of fresh layers."""
        plan, layers = self.plan, self.tgt.layers
        fresh_group = self.init.fresh_write is not None and any(zero)
        groups = list(range(layers)) if plan.per_layer else [int(z) for z in zero] if fresh_group else [0] * layers
        self.register_buffer("layer_group", torch.tensor(groups), persistent=False)
        return [fresh_group and any(z for z, g in zip(zero, groups) if g == k) for k in range(max(groups) + 1)]

    def _init_width(self, tokens: set[str], fresh: list[bool], compact: bool) -> None:
        """One width map per grown space, write maps first (an init with ``tied_read`` starts a read map as its write
        map, as the paper ties them); a selection is kept as one, without its dense matrix, when the operator is
        compact. The layer groups of fresh identity layers start their write maps by the init's ``fresh_write``."""
        plan, src_dims, tgt_dims = self.plan, self.src, self.tgt
        gen = torch.Generator().manual_seed(plan.seed)
        experts: dict = {}
        for tok in sorted(tokens, key=lambda t: (t in READ_PARTNER, t)):
            if SPACE_OF[tok].name == "experts":
                self._install_map(tok, self._expert_parts(tok, fresh, gen, experts), compact)
                continue
            partner = next((_param_name(w) for w in SPACE_OF[tok].write if _param_name(w) in self.width), None)
            if self.init.tied_read and tok in READ_PARTNER and partner in self.compact:
                self._hold_compact(_param_name(tok), self.compact[partner])
                continue
            if self.init.tied_read and tok in READ_PARTNER and partner is not None:
                self.width[_param_name(tok)] = nn.Parameter(self.width[partner].detach().clone())
                continue
            inits = [WIDTH[self.init.fresh_write] if new and tok in WRITE_TOKENS else self.init for new in fresh] \
                if tok in LAYER_TOKENS else [self.init]
            self._install_map(tok, [init.start(tok, src_dims, tgt_dims, gen, plan) for init in inits], compact)

    def _install_map(self, tok: str, parts: list, compact: bool) -> None:
        """One width map from its initial value per layer group (a selection or a dense matrix): kept as a
        selection alone when the operator is compact and every part is one (the residual stream is always
        dense: its norms' maps are derived from it)."""
        n1 = self.src.units(tok)[0]
        if compact and tok not in ("res", "res.in") and all(isinstance(p, tuple) for p in parts):
            self._hold_compact(_param_name(tok), tuple(torch.stack(x) for x in zip(*parts)) if tok in LAYER_TOKENS
                               else parts[0])
            return
        parts = [dense(*p, n1) if isinstance(p, tuple) else p for p in parts]
        self.width[_param_name(tok)] = nn.Parameter(torch.stack(parts) if tok in LAYER_TOKENS else parts[0])

    def _expert_parts(self, tok: str, fresh: list[bool], gen: torch.Generator, drawn: dict) -> list:
        """The experts' map per layer group: one map for an expert's weights and its router row, so that each
        target expert is routed as the experts it is made of. ``copy``/``split``: copies (split breaks their
        symmetry in the router, :meth:`_router_noise`); ``random``: the source experts kept, new experts random
        convex mixtures of them (as the paper's width init); the experts' outputs scaled by :func:`expert_scale`."""
        n1, n2 = self.src.experts, self.tgt.experts
        if "parts" not in drawn:
            drawn["parts"] = [torch.cat([torch.eye(n1), random_rows(n2 - n1, n1, gen).float()])
                              if (new or self.init.mixes_new) and n2 > n1
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
        if tgt.experts <= src.experts or not (self.init.breaks_symmetry or (self.init.mixes_new and src.experts == 1)):
            return
        gen = torch.Generator().manual_seed(self.plan.seed + 1)
        for e in self.layer_entries:
            if e.axes[:1] == (("router",),):
                shape = self.spec.shape(e, tgt)
                self.register_buffer("n_" + _param_name(e.name), torch.randn(len(self.tgt_rows(e)), *shape,
                                                                             generator=gen), persistent=False)
                # a trained router: noise small beside its weights (measured when the source is read), so the
                # routing barely moves
                self._noise_std[e.name] = std if src.experts == 1 else None
                self.noise.add(e.name)

    def router_noise(self, e: Entry, chunk: slice, read) -> torch.Tensor:
        """The fixed noise on the grown router of ``e`` in its target layers ``chunk`` (rows of its depth map)."""
        if self._noise_std[e.name] is None:
            src = torch.stack([self.layer(read, e, j).float() for j in self.src_rows(e)]) if read is not None \
                else self.source_layers(e).float()
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

    def stacked(self, state: dict) -> dict[tuple[str, str], torch.Tensor]:
        """A source-shaped state (checkpoint keys) as the operator holds it: weights outside the layers
        by key (``("w_", key)``), layer weights stacked over the source layers (``("l_", entry name)``)."""
        out = {("w_", key): state[key] for key, _ in self.singles}
        for e in self.layer_entries:
            out[("l_", e.name)] = torch.stack([self.layer(lambda k: state[k], e, j) for j in self.src_rows(e)])
        return out

    def src_rows(self, e: Entry) -> list[int]:
        """The source layers holding layer entry ``e`` (all, or those of its kind): its stacked rows."""
        return self.spec.kind_rows(e, self.src)

    def tgt_rows(self, e: Entry) -> list[int]:
        """The target layers holding layer entry ``e``: the rows of its depth map."""
        return self.spec.kind_rows(e, self.tgt)

    def source_tensor(self, key: str) -> torch.Tensor:
        """The source's weight ``key`` outside the layers, as the operator holds it."""
        return getattr(self, "w_" + _param_name(key))

    def source_layers(self, e: Entry) -> torch.Tensor:
        """The source's weights of layer entry ``e``, stacked over the source layers."""
        return getattr(self, "l_" + _param_name(e.name))

    def depth_map(self, module: str) -> torch.Tensor:
        """The depth map (target layers x source layers) of a layer module."""
        return self.depth[_param_name(module)]

    def layer(self, read, e: Entry, j: int) -> torch.Tensor:
        """Source layer ``j`` of entry ``e`` read with ``read(key)``: a per-expert entry's stacked over its experts."""
        keys = self.spec.layer_keys(self.prefix, e, j, self.src)
        return torch.stack([read(k) for k in keys]) if e.per_expert else read(keys[0])

    # -- the maps, as the application reads them ---------------------------------------------------
    def map_name(self, token: str, gain: bool = False) -> str:
        name = _param_name(MAP_OF.get(token, token))
        return name + "_gain" if gain and name + "_gain" in self.width else name

    def map(self, token: str, absolute: bool, gain: bool = False) -> torch.Tensor:
        name = self.map_name(token, gain)
        if name in self.compact:
            raise LigoError(f"internal error: the width map {name} was compacted for streaming and cannot be fitted")
        m = self.width[name]
        return m.abs() if absolute else m

    def selection(self, name: str, absolute: bool, group: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A width map whose every row has at most one nonzero entry (a copy, a split share, a zero row), as
        (source unit, coefficient) per target unit and group, or None for a dense map; with ``group``, that layer
        group's map alone (the copies of the source's layers beside the random mixtures of new identity layers).
        Applying it is an index and a product, with the values of the matrix product (zeros' signs aside)."""
        if name in self.compact:
            index, coef = self.compact[name]
            return index, coef.abs() if absolute else coef
        key = (name, absolute, group)
        if key not in self._selections:
            m = self.width[name].detach()
            m = m[group] if group is not None and m.dim() == 3 else m  # (a map of one group has no group axis)
            m = m.abs() if absolute else m
            if bool(((m != 0).sum(-1) <= 1).all()):
                index = m.abs().argmax(-1)
                self._selections[key] = (index, m.gather(-1, index.unsqueeze(-1)).squeeze(-1))
            else:
                self._selections[key] = None
        return self._selections[key]

    def forget_selections(self) -> None:
        """The maps may have changed (a fit step): their selection forms are computed again when needed."""
        self._selections.clear()

    def _hold_compact(self, name: str, selection: tuple[torch.Tensor, torch.Tensor]) -> None:
        index, _ = selection
        self.compact[name] = selection
        self._compact_numel += index.numel() * self.src.units(self._token_of(name))[0]
        self.width[name] = nn.Parameter(torch.empty(0))

    @staticmethod
    def _token_of(name: str) -> str:
        return next(t for t in GROWN if _param_name(t) == name.removesuffix("_gain"))

    @torch.no_grad()
    def _make_compact(self, name: str) -> None:
        """Free the dense storage of a width map that is a selection (streaming growth: nothing will be
        fitted); the operator then materializes from the selection alone. A dense map is kept."""
        if name in self.compact:
            return
        selection = self.selection(name, False)
        if selection is not None:
            self.compact[name] = selection
            self._compact_numel += self.width[name].numel()
            self.width[name].data = torch.empty(0, device=self.width[name].device)

    def singles_and_layers_keys(self) -> list[str]:
        """The keys :meth:`forward` returns (checkpoint naming), without computing anything."""
        keys = [key for key, _ in self.singles] + list(self.tied)
        return keys + [k for e in self.layer_entries for i in self.tgt_rows(e)
                       for k in self.spec.layer_keys(self.prefix, e, i, self.tgt)]

    def target_shapes(self) -> dict[str, list[int]]:
        """Every tensor :meth:`materialize` returns, with its shape, in its order (nothing computed)."""
        def shape(entry: Entry, src: torch.Size) -> list[int]:
            return [t if t > 0 else s for t, s in zip(self.spec.shape(entry, self.tgt), src)]

        out = {key: shape(e, self.source_tensor(key).shape) for key, e in self.singles}
        for e in self.layer_entries:
            size = shape(e, self.source_layers(e).shape[1:])
            size = size[1:] if e.per_expert else size
            out.update({k: size for i in self.tgt_rows(e) for k in self.spec.layer_keys(self.prefix, e, i, self.tgt)})
        return out

    # -- the application (ligo.apply) -------------------------------------------------------------
    def forward(self) -> dict[str, torch.Tensor]:
        """The target state dict (tied keys point at the same tensor)."""
        out = dict(grown(self))
        for key, target in self.tied.items():
            out[key] = out[target]
        return out

    @torch.no_grad()
    def stream(self, read, dtype: torch.dtype) -> Iterator[tuple[str, slice | None, torch.Tensor]]:
        """The target's tensors (cast to ``dtype``) as ``(key, rows, piece)``, in :meth:`materialize`'s order
        and with its arithmetic, from a source read on demand by ``read(key, rows=None)``: only the source
        tensors one piece depends on are held at a time (embeddings and heads come in slices of rows)."""
        for key, rows, v in pieces(self, layer_by_layer=True, read=read):
            yield key, rows, v.to(dtype=dtype)

    @torch.no_grad()
    def materialize(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                    state: dict | None = None, absolute: bool = False) -> dict[str, torch.Tensor]:
        """The target state dict as plain tensors, without tied duplicates, ready to save.

        Streams: only one target layer of one weight kind is held in float32 at a time; each result
        is cast to ``dtype`` and moved to ``device`` (default: where the operator is) at once.
        ``state``/``absolute``: grow another source-shaped state instead (see :func:`ligo.apply.pieces`).
        """
        return {key: v.to(device=device or v.device, dtype=dtype or v.dtype)
                for key, v in grown(self, layer_by_layer=True, state=state, absolute=absolute, dtype=dtype)}

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
        return sum(p.numel() for p in self.parameters()) + self._compact_numel
