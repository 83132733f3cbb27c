"""The vocabulary the architecture tables, the operator and the diagnostics share: the grown spaces and the
axis tokens that place every weight axis in one, and the sizes of a model (:class:`Dims`) and its weights'
table entries (:class:`Entry`, :class:`Match`).

Axis tokens (a ``+`` joins spaces concatenated along one axis, as in GPT-2's fused ``c_attn``):

=========  ================================================================================
``res``    residual stream, written (embeddings, block outputs, norms inside the stream)
``res.in`` residual stream, read (Q/K/V/FFN inputs, the final norm in front of the LM head)
``q``      query heads, written by the query projection (grown by whole heads)
``k``/``v`` key / value heads, written by the key / value projections (grown by whole heads)
``o.in``   per-query-head attention outputs, read by the output projection
``qkv``    whole heads of a per-head interleaved query/key/value projection (GPT-NeoX: each head's
           q, k and v slices side by side), grown with the query heads
``ffn``    FFN hidden units, written (up/gate/fc-in); ``ffn.in``: read (down/fc-out)
``ffn.pair`` FFN hidden units written as interleaved (gate, up) pairs, two rows a unit (GPT-OSS's fused
           ``gate_up_proj``): the ``ffn`` map, a unit two entries wide
``q.head`` one value per query head (GPT-OSS's attention sinks): the ``q`` map, a unit one entry wide
``q.mla``  whole query heads of multi-head latent attention (DeepSeek-V3): each head's no-rope and rope query
           rows (``qk_nope + head_dim``); ``q.kv``: each head's no-rope key rows and value rows written by the
           key-value up-projection (``qk_nope + v_head``); ``o.v``: per-head value outputs (``v_head`` each) read by
           the output projection. The query heads' map (``o.v``: its read side), each with its unit size
``ql``     the query latent of multi-head latent attention (``q_lora_rank`` units: the down-projection's rows and
           the RMSNorm over them), ``ql.in`` read by the up-projection; ``kvl``/``kvl.in`` the key-value latent
           (``kv_lora_rank``), likewise; ``krope`` the one rotary key shared by every head (never grown)
``q.gate`` whole query heads written with their output gate, each head's ``head_dim`` query rows then its
           ``head_dim`` gate rows (Qwen3.5's gated attention): the ``q`` map, a unit two head_dims wide
``dffn``   the FFN hidden units of the dense layers of a model whose other layers are mixtures of experts (GLM-4.5's
           first layers, Llama 4's dense layers), when their size differs from the experts'; ``dffn.in``: read
``sffn``   the hidden units of the shared experts beside the routed ones (their FFN, ``shared_experts`` x the
           experts' FFN size, or the size the config gives); ``sffn.in``: read
``exp``    the experts of a mixture-of-experts layer, as the leading axis of an expert's weights that
           read the residual stream (gate/up); ``exp.out``: of those that write it (down). A table entry
           with an ``{e}`` in its name is one tensor per expert (checkpoint keys ``experts.{e}.w1.weight``),
           held stacked over the experts
``router`` the experts, as the rows of the router (its scores per expert); ``zexp`` the rows after them for
           experts that compute nothing (LongCat-Flash's zero-computation experts: never grown)
``conv``   the channels of a gated short convolution (LFM2: its input projection's three streams, its depthwise
           filters, one per channel), as many as the residual stream but a space of their own; ``conv.in``: read
           by its output projection
``lv``     the value heads of a linear-attention layer (Gated DeltaNet), written by their value rows and
           output gates (grown by whole heads); ``lv.head``: one value (or one row) per value head, its decay
           ``A_log``, ``dt_bias`` and the rows of the ``a`` and ``b`` projections; ``lv.in``: read by the output
           projection
``lk``     the key heads of a linear-attention layer (their query and key rows), each serving a group of value
           heads as a kv head serves query heads
``lk.qkvz`` whole key-head groups of a projection packed per group (Qwen3-Next's ``in_proj_qkvz``: a key head's
           query and key rows, then its value heads' value rows and output-gate rows): the ``lk`` map, a unit
           ``2 dk + 2 g dv`` wide (``g`` value heads a group); ``lk.ba``: likewise ``in_proj_ba``, ``2 g`` rows a
           group. Packed groups keep their size: key and value heads grow by the same factor
``mh``     the heads of a Mamba-2 layer: their input channels and gate channels written by its packed input
           projection and filtered by its depthwise convolution, and the gated norm's gain (grown by whole heads);
           ``mh.head``: one value (or one row) per head, its ``dt`` row, ``dt_bias``, ``A_log`` and ``D``;
           ``mh.in``: read by the output projection
``mmp``    the hidden units of a vision-language projector between its two layers (Mistral 3: as many as the
           text model's hidden size), written; ``mmp.in``: read
``vocab``  vocabulary; ``pos`` positions; ``type`` token types; ``hd`` the inside of one head (a
           per-head norm over ``head_dim``), ``lhd`` the inside of one linear-attention value head, ``vis`` a vision tower's
           features (read by a projector), ``ssm`` a Mamba-2 layer's
           ``B`` or ``C`` channels (groups x state size), ``q2``/``k2``/``v2``/``o2.in`` the heads of the layers whose own settings give
           them another head size (Gemma 4's full attention: a unit ``head_dim2`` wide; ``q2``/``o2.in`` the heads'
           maps, ``k2``/``v2`` the kv heads of the space ``kv_heads2``, a count of those layers' own or ``kv_heads``), ``hd2`` the
           inside of one such head; ``bylayer`` an axis packed one slice a layer (Gemma 4's per-layer embeddings and
           their projection): the slices follow the depth plan (a target layer takes its source layer's), never
           grown in width; ``kept`` any axis that no grown size changes (an inferred
           table's: kept at the source's size): never grown
=========  ================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Space:
    """A grown weight space: the map tokens that write (produce) its units and read (consume) them."""

    name: str
    write: tuple[str, ...]
    read: tuple[str, ...]
    count: str              # the Dims field giving the number of units
    unit: str | None        # the Dims field giving a unit's size (head_dim for heads), None for neurons
    in_layers: bool         # the space lives inside each layer (its maps may differ per layer group)


# The one vocabulary of spaces, shared by the operator (which maps exist and how they pair up) and the
# diagnostics (which weights show whether a space's units are duplicates).
SPACES = (
    Space("res", ("res",), ("res.in",), "hidden", None, False),
    Space("ffn", ("ffn", "ffn.pair"), ("ffn.in",), "ffn", None, True),
    Space("dense_ffn", ("dffn",), ("dffn.in",), "dense_ffn", None, True),
    Space("shared_ffn", ("sffn",), ("sffn.in",), "shared_ffn", None, True),
    Space("heads", ("q", "qkv", "q.head", "q.gate", "q.mla", "q.kv", "q.v", "q2"), ("o.in", "o.v", "o2.in"), "heads",
          "head_dim", True),
    Space("kv_heads", ("k", "v"), (), "kv_heads", "head_dim", True),
    # the kv heads of the layers whose own settings give them another head size and count (Gemma 4's full attention)
    Space("kv_heads2", ("k2", "v2"), (), "kv_heads2", "head_dim2", True),
    # an expert is a unit whose write vector is its weights and whose read vector is its router row
    Space("experts", ("exp", "exp.out"), ("router",), "experts", None, True),
    # the channels of a short convolution layer (LFM2): as many as the residual stream, grown apart from it
    Space("conv", ("conv",), ("conv.in",), "hidden", None, True),
    # a linear-attention layer's value heads and the key heads that each serve a group of them (Gated DeltaNet)
    Space("lin_heads", ("lv", "lv.head"), ("lv.in",), "lin_heads", "lin_v_dim", True),
    Space("lin_kv_heads", ("lk", "lk.qkvz", "lk.ba"), (), "lin_kv_heads", "lin_k_dim", True),
    # the latent ranks of multi-head latent attention (their RMSNorms normalize each latent as a whole)
    Space("q_latent", ("ql",), ("ql.in",), "q_lora", None, True),
    Space("kv_latent", ("kvl",), ("kvl.in",), "kv_lora", None, True),
    # the hidden units of a vision-language projector (Mistral 3), as many as the text model's residual stream
    Space("projector", ("mmp",), ("mmp.in",), "hidden", None, False),
    # a Mamba-2 layer's heads (their groups, which share B and C, never grow)
    Space("mamba_heads", ("mh", "mh.head"), ("mh.in",), "mamba_heads", "mamba_head_dim", True),
)
# a space whose units come in groups, each served by one unit of another space (grouped-query attention)
GROUPED_BY = {"heads": "kv_heads", "lin_heads": "lin_kv_heads", "mamba_heads": "mamba_groups"}
SPACE_OF = {tok: s for s in SPACES for tok in s.write + s.read}
# tokens whose unit is not their space's: a GPT-NeoX head's fused q/k/v slices make one unit of 3 x head_dim, a
# GPT-OSS FFN unit is a (gate, up) pair, a sink is one value per head
_UNIT = {"qkv": "qkv_unit", "ffn.pair": "pair", "q.head": None, "q.gate": "gate_unit", "lv.head": None,
         "lk.qkvz": "qkvz_unit", "lk.ba": "ba_unit", "mh.head": None, "q.mla": "mla_q_unit", "q.kv": "mla_kv_unit",
         "o.v": "v_head", "q.v": "v_head", "q2": "head_dim2", "o2.in": "head_dim2"}
# token -> (count dim, unit-size dim)
GROWN = {tok: (s.count, _UNIT[tok] if tok in _UNIT else s.unit) for tok, s in SPACE_OF.items()}
# tokens that apply another token's map with their own unit size (one map per space side, however it is laid out)
MAP_OF = {"ffn.pair": "ffn", "q.head": "q", "q.gate": "q", "lv.head": "lv", "lk.qkvz": "lk", "lk.ba": "lk",
          "mh.head": "mh", "q.mla": "q", "q.kv": "q", "o.v": "o.in", "q.v": "q", "q2": "q",
          "o2.in": "o.in"}
PACKED_GROUPS = ("lk.qkvz", "lk.ba")  # tokens whose unit holds a whole group: the group's size may not change
WRITE_TOKENS = tuple(t for s in SPACES for t in s.write)
LAYER_TOKENS = tuple(t for s in SPACES if s.in_layers for t in s.write + s.read)
READ_PARTNER = {r: s.write[0] for s in SPACES for r in s.read}        # a read map and its space's write map
# never grown; kernel: a convolution's kernel (and its group axis of one); one: an axis of one (a scalar gate's row)
FIXED = {"vocab": "vocab", "pos": "positions", "type": None, "kept": None, "hd": "head_dim", "lhd": "lin_v_dim", "kernel": None,
         "one": None, "ssm": "ssm_size", "krope": "head_dim", "vis": None,
         "zexp": "zero_experts", "hd2": "head_dim2", "bylayer": "bylayer"}
EXPERT_TOKENS = ("exp", "exp.out")  # the leading axis of a per-expert entry


@dataclass(frozen=True)
class Dims:
    """The sizes of one model, read from its config through the table's config keys."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    positions: int | None
    tie: bool
    experts: int = 1                # experts per MoE layer (1: a dense model)
    experts_per_token: int = 1
    router_normalized: bool = True  # the top-k router weights are renormalized to sum to one
    router_sigmoid: bool = False    # each expert scored by a sigmoid (GLM-4.5, DeepSeek-V3), not a softmax over all
    expert_groups: int = 1          # experts chosen within groups (DeepSeek-V3's n_group)
    kv_heads2: int = 0              # the kv heads of the layers whose own settings give another count (Gemma 4
    #                                 31B's full attention: num_global_key_value_heads); kv_heads where none does
    head_dim2: int = 0              # the head size of the layers whose own settings give another (Gemma 4's full
    # attention: transformers' per_layer_config; 0: none)
    per_layer_input: int = 0        # the size of each layer's slice of an axis packed one slice a layer (Gemma 4's
    # per-layer embeddings, hidden_size_per_layer_input)
    zero_experts: int = 0           # router rows past the experts for experts that compute nothing (LongCat-Flash's
    # zero-computation experts: a token routed to one keeps its input, weighted)
    dense_ffn: int = 0              # the FFN size of the dense layers beside MoE layers (0: none of their own)
    shared_experts: int = 0         # shared experts beside the routed ones (their FFN: this x ffn)
    shared_ffn_size: int = 0        # the shared expert's FFN size, where the config gives it (Qwen3-Next)
    kinds: tuple[str, ...] = ()     # each layer's kind, for a model whose layers differ (empty: all alike)
    attention_layers: tuple[int, ...] | None = None  # the layers that attend (None: all; a hybrid's others convolve
    # or run a linear recurrence)
    recurrent_layers: tuple[int, ...] = ()  # the layers that run a recurrence (Gated DeltaNet, Mamba-2)
    lin_heads: int = 0              # a linear-attention layer's value heads (Gated DeltaNet; 0: none)
    lin_kv_heads: int = 0           # its key heads, each serving lin_heads / lin_kv_heads value heads
    lin_k_dim: int = 0              # a key head's size
    lin_v_dim: int = 0              # a value head's size
    qk_nope: int = 0                # multi-head latent attention: a head's query/key rows without rotary embedding
    v_head: int = 0                 # its value size (head_dim is its rotary part)
    q_lora: int = 0                 # the query latent's rank (0: none, queries projected directly)
    kv_lora: int = 0                # the key-value latent's rank
    mamba_heads: int = 0            # a Mamba-2 layer's heads (0: none)
    mamba_head_dim: int = 0         # a head's channels
    mamba_groups: int = 0           # groups of heads sharing B and C
    ssm_state: int = 0              # the state size of a group
    mamba_expand: int = 0           # the layer's channels as a multiple of hidden (they must be heads x head size)
    mamba_chunk: int = 0            # the chunk length of the chunked scan
    mamba_inner: int = 0            # the layer's channels where the config states them (heads x head size)

    @property
    def shared_ffn(self) -> int:
        return self.shared_ffn_size or self.shared_experts * self.ffn

    @property
    def bylayer(self) -> int:
        return self.layers * self.per_layer_input

    @property
    def mla_q_unit(self) -> int:
        return self.qk_nope + self.head_dim

    @property
    def mla_kv_unit(self) -> int:
        return self.qk_nope + self.v_head

    @property
    def ssm_size(self) -> int:
        return self.mamba_groups * self.ssm_state

    @property
    def lin_group(self) -> int:
        return self.lin_heads // self.lin_kv_heads if self.lin_kv_heads else 0

    @property
    def qkvz_unit(self) -> int:
        return 2 * self.lin_k_dim + 2 * self.lin_group * self.lin_v_dim

    @property
    def ba_unit(self) -> int:
        return 2 * self.lin_group

    @property
    def qkv_unit(self) -> int:
        return 3 * self.head_dim

    @property
    def gate_unit(self) -> int:
        return 2 * self.head_dim

    @property
    def pair(self) -> int:
        return 2

    def units(self, token: str) -> tuple[int, int]:
        """(number of units, unit size) of a grown map token."""
        count, size = GROWN[token]
        return getattr(self, count), (getattr(self, size) if size else 1)

    def axis_size(self, token: str) -> int:
        if token in GROWN:
            n, d = self.units(token)
            return n * d
        dim = FIXED[token]
        return getattr(self, dim) if dim else -1  # -1: any size (token types)


def unmarked(name: str) -> str:
    """A table name without its kind's mark: ``self_attn.q_proj@full.weight`` (a weight that has another shape in
    each kind of layer) is the checkpoint's ``self_attn.q_proj.weight``; a module ``self_attn.q_proj@full`` is
    ``self_attn.q_proj``."""
    head, at, rest = name.partition("@")
    return head + ("." + rest.partition(".")[2] if "." in rest else "") if at else name


@dataclass(frozen=True)
class Entry:
    """One weight of the table: its name (relative to its scope) and its axes."""

    name: str
    axes: tuple[tuple[str, ...], ...]
    scope: str  # "globals", "layer" or "head"
    kind: str | None = None  # a layer weight of the layers of this kind only (None: of every layer)

    @property
    def module(self) -> str:
        """What the weight belongs to (one depth map each): the module of a ``.weight`` or ``.bias``, else the
        parameter itself, its ``_bias`` with it (GPT-OSS's experts hold ``gate_up_proj`` and ``down_proj`` with
        their biases in one module, and only ``down_proj`` writes the residual stream)."""
        head, _, last = self.name.rpartition(".")
        return head if last in ("weight", "bias") else self.name.removesuffix("_bias")

    @property
    def grown(self) -> bool:
        return any(t in GROWN for axis in self.axes for t in axis)

    @property
    def per_expert(self) -> bool:
        """One checkpoint tensor per expert (``{e}`` in the name), held stacked over the experts."""
        return "{e}" in self.name

    @property
    def template(self) -> str:
        """The checkpoint's name of the weight: the name without a kind's mark (:func:`unmarked`)."""
        return unmarked(self.name)

    def key_name(self, expert: int | None = None) -> str:
        return self.template.replace("{e}", str(expert)) if self.per_expert else self.template


@dataclass(frozen=True)
class Match:
    entry: Entry
    layer: int | None
    expert: int | None = None
