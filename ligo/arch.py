"""What an architecture table says (:class:`ArchSpec`): every weight of a model family, as data.

Each model family has one JSON table in ``ligo/archs/``, listing the Hugging Face ``model_type``s it
serves. A table names every weight of the model (layer weights with an ``{i}`` template), and for each
axis of each weight the *space* it lives in (the vocabulary of spaces and axis tokens is :mod:`ligo.spaces`).
The growth operator derives everything it does from these tables; there is no per-model code anywhere else.
:mod:`ligo.tables` reads and checks the tables and keeps the registry; ``docs/architectures.md`` has the
format and how to add a family. A spec reads a model's sizes from its config (:meth:`ArchSpec.dims`), merges
a target over it (:meth:`ArchSpec.target_config`) and matches checkpoint keys to entries
(:meth:`ArchSpec.layout`).

Besides the weights, a table states the family's numerics that growth must keep (see
``docs/architectures.md``): ``norms`` (RMSNorm or LayerNorm, a gain offset such as Gemma's ``1 + w``,
which weights are the gains of norms over the residual stream), ``embed_scale`` (an embedding multiplied
by a power of the hidden size inside the model, as Gemma's ``sqrt(hidden)``) and ``layer_lists``
(per-layer config lists that follow the depth plan, as ``layer_types`` or ``no_rope_layers``).
A mixture-of-experts table adds ``router`` (whether the top-k weights are renormalized), ``fused`` (how
transformers holds the per-expert checkpoint tensors in memory: stacked over the experts, parts
concatenated), ``upcycle`` (the dense families it turns into this MoE family, with the checkpoint key of
each dense FFN weight) and ``requires`` (config values ligo needs, as "every layer sparse").
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import LigoError
from .kinds import config_value, kind_parts, layer_kinds, layer_values, listed_kinds, overridden, own_sizes, \
    with_own_sizes
from .spaces import SPACES, Dims, Entry, Match

HEAD_WRITES = next(s.write for s in SPACES if s.name == "heads")  # the tokens of weights that write attention heads
RECURRENT_WRITES = ("lv", "mh")  # ... and recurrent heads (Gated DeltaNet's value heads, Mamba-2's heads)

DOCS_ADDING = "docs/architectures.md"
ADD_HINT = f"; add it to the table (see {DOCS_ADDING})"  # what a weight no entry matches calls for


# the sizes of a family's recurrent layers, 0 where it has none: Gated DeltaNet's value and key heads and their
# sizes; Mamba-2's heads, head size, groups, state size, expansion (channels = expand x hidden), chunk length and
# channels where the config states them (Falcon-H1's mamba_d_ssm = heads x head size)
RECURRENT_SIZES = ("lin_heads", "lin_kv_heads", "lin_k_dim", "lin_v_dim", "mamba_heads", "mamba_head_dim",
                   "mamba_groups", "ssm_state", "mamba_expand", "mamba_chunk", "mamba_inner")
LATENT_SIZES = ("qk_nope", "v_head", "q_lora", "kv_lora")  # multi-head latent attention's, 0 where none
GENERIC_SIZES = ("layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "experts", "experts_per_token",
                 "dense_ffn", "shared_experts", "shared_ffn", "expert_groups", "zero_experts", "per_layer_input", *LATENT_SIZES, *RECURRENT_SIZES)
KIND_RULES = ("first_k", "indices", "list")  # how a config says each layer's kind (see ligo.kinds)
REQUIRED_CONFIG = {"layers", "hidden", "heads", "ffn", "vocab"}  # the sizes every table's config names


def _own_kv_grown(source_config: dict, out: dict, kv_key: str | None):
    """The target's settings by layer (``out``'s ``per_layer_config``) with a kv head count of some layers' own
    (Gemma 4 31B's full attention) grown by the kv heads' factor; as they are where no layer has one."""
    own, value = own_sizes(source_config).get("num_key_value_heads"), out.get("per_layer_config")
    if own is None or kv_key is None:
        return value
    src_kv, kv = source_config.get(kv_key), out.get(kv_key)
    if own * kv % src_kv:
        raise LigoError(f"{kv_key} {src_kv} -> {kv} would give the layers with a kv head count of their own {own} x "
                        f"{kv} / {src_kv} kv heads; grow the kv heads by a factor that keeps it whole")
    return with_own_sizes(value, {"num_key_value_heads": own * kv // src_kv})


@dataclass
class ArchSpec:
    """One architecture family's table: the HF ``model_type``s it serves and every weight's spaces."""

    model_types: tuple[str, ...]
    objective: str
    rope: bool
    config: dict[str, Any]
    base_prefix: str
    layer_prefix: str
    entries: list[Entry]
    tied: dict[str, str]
    identity_zero: list[str]
    layer_lists: list[str]
    ignore: list[str]
    norms: dict = field(default_factory=lambda: {"type": "layer", "offset": 0.0, "gains": [], "stream": "pre"})
    embed_scale: dict | None = None
    scales: dict = field(default_factory=dict)  # weight -> the power of hidden the model multiplies its product by
    renamed: dict = field(default_factory=dict)  # checkpoint key -> the model's parameter name, where they differ
    router: dict = field(default_factory=dict)   # {"normalized": true or the config key saying so}
    fused: dict = field(default_factory=dict)    # layer parameter -> the checkpoint entries it holds (see module doc)
    upcycle: dict = field(default_factory=dict)  # {"from": [dense model_types], "layer": {dense name: entry name}}
    requires: dict = field(default_factory=dict)  # config key -> the value ligo needs
    kinds: dict = field(default_factory=dict)  # layers of several kinds: {"by": {rule: config key}, "names": [...]}
    trailing_layers: str | None = None  # config key: layers after the last that transformers does not load (MTP)
    ffn_rule: dict | None = None  # the FFN size derived from the config's (see tables.FfnRule)
    transposable: list = field(default_factory=list)  # stacked weights a checkpoint may hold transposed
    source: str = ""
    model_type: str = ""  # the type this spec was looked up for (the family's first by default)
    _patterns: list[tuple[re.Pattern, Entry | None]] = field(default_factory=list, repr=False)
    _layer_pattern: re.Pattern | None = field(default=None, repr=False)

    def _compile(self) -> None:
        layer = re.escape(self.layer_prefix).replace(re.escape("{i}"), r"(?P<i>\d+)")
        base = f"(?:{re.escape(self.base_prefix)})?"
        pats: list[tuple[re.Pattern, Entry | None]] = []
        for e in self.entries:
            if e.scope == "globals":
                pats.append((re.compile(base + re.escape(e.name)), e))
            elif e.scope == "layer":
                name = re.escape(e.template).replace(re.escape("{e}"), r"(?P<e>\d+)")
                pats.append((re.compile(base + layer + name), e))
            else:
                pats.append((re.compile(re.escape(e.name)), e))
        for ign in self.ignore:
            pats.append((re.compile(base + re.escape(ign).replace(re.escape("{i}"), r"\d+")), None))
        self._patterns = pats
        self._layer_pattern = re.compile(base + layer)

    # -- config ------------------------------------------------------------------------------
    def config_key(self, name: str, config: dict | None = None) -> str | None:
        """The config key of a generic size: the table's, or of a table's list of aliases (``num_experts``,
        ``num_local_experts``) the first that ``config`` holds."""
        key = self.config.get(name)
        if isinstance(key, list):
            return next((k for k in key if config is not None and k in config), key[0])
        return key

    def dims(self, config: dict, where: str = "config") -> Dims:
        """Read the sizes of a model from its config dict."""
        k = {name: self.config_key(name, config) for name in self.config}

        def get(name, default=None):
            key = k.get(name)
            if isinstance(key, int) and not isinstance(key, bool):
                return key  # a size the family fixes (Llama 4's one shared expert)
            value = config.get(key) if key else None
            if value is None:
                return default
            if name == "tie":
                return value
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LigoError(f"{where}: {key} must be a positive integer, got {value!r}")
            return value

        listed = listed_kinds(self.kinds, config)  # (Nemotron-H's config counts its layers by listing their kinds)
        for name in sorted(REQUIRED_CONFIG - {"ffn"} - ({"layers"} if listed is not None else set())):
            if get(name) is None:
                raise LigoError(f"{where} of model_type {self.model_type!r} lacks {k[name]!r}; a "
                                f"{self.model_type} config needs {sorted(v for v in k.values() if isinstance(v, str))}")
        hidden, heads = get("hidden"), get("heads")
        ffn = get("ffn")
        if ffn is None:
            ffn = int(k.get("ffn_default_factor", 4)) * hidden
        ffn = self.real_ffn(config, ffn)
        head_dim = get("head_dim")
        if head_dim is None:
            if hidden % heads:
                raise LigoError(f"{k['hidden']}={hidden} is not divisible by {k['heads']}={heads}; "
                                "pick a head count that divides the hidden size")
            head_dim = hidden // heads
        for key, value in self.requires.items():
            if config.get(key, value) != value:
                raise LigoError(f"{where}: ligo grows {self.model_type} models with {key}={value!r}, not "
                                f"{config[key]!r} (every layer a mixture of experts); set {key} to {value!r}")
        if k.get("experts") is not None and config.get(k["experts"]) == 0:  # no experts (Granite 4's dense models)
            experts, per_token = 1, 1
        else:
            experts, per_token = get("experts", 1), get("experts_per_token", 1)
        if per_token > experts:
            raise LigoError(f"{where}: {k.get('experts_per_token')}={per_token} is larger than "
                            f"{k.get('experts')}={experts}; a token cannot use more experts than there are")
        normalized = self.router.get("normalized", True)
        if isinstance(normalized, str):
            normalized = config.get(normalized, False)
        layers = get("layers") or len(listed)
        kinds = layer_kinds(self.kinds, config, layers, where)
        return Dims(layers=layers, hidden=hidden, heads=heads, kv_heads=get("kv_heads", heads),
                    head_dim=head_dim, ffn=ffn, vocab=get("vocab"), positions=get("positions"),
                    tie=bool(get("tie", True)), experts=experts, experts_per_token=per_token,
                    router_normalized=bool(normalized), router_sigmoid=self.router.get("scores") == "sigmoid",
                    expert_groups=get("expert_groups", 1), zero_experts=get("zero_experts", 0),
                    head_dim2=overridden(config, "head_dim") or head_dim,
                    kv_heads2=overridden(config, "num_key_value_heads") or get("kv_heads", heads),
                    per_layer_input=get("per_layer_input", 0),
                    dense_ffn=get("dense_ffn", 0),
                    shared_experts=get("shared_experts", 0), shared_ffn_size=get("shared_ffn", 0), kinds=kinds,
                    attention_layers=self.layers_writing(HEAD_WRITES, kinds, layers),
                    recurrent_layers=self.layers_writing(RECURRENT_WRITES, kinds, layers),
                    **{name: get(name, 0) for name in LATENT_SIZES + RECURRENT_SIZES})

    def layers_writing(self, tokens, kinds: tuple[str, ...], layers: int) -> tuple[int, ...]:
        """The layers holding a weight whose first axis writes one of ``tokens``: every layer, or those of the kinds
        that hold one (a hybrid's attention layers; its recurrent layers, all of Falcon-H1's)."""
        holding = {e.kind for e in self.entries if e.scope == "layer" and e.axes and any(t in tokens for t in e.axes[0])}
        if None in holding:
            return tuple(range(layers))
        return tuple(i for i, kind in enumerate(kinds) if set(kind_parts(kind)) & holding)

    def real_ffn(self, config: dict, ffn: int) -> int:
        """The FFN size the model builds from the config's ``ffn`` (the table's ``ffn_rule``, when on)."""
        rule = self.ffn_rule
        if rule is None or not config.get(rule["flag"], True):
            return ffn
        ffn, mult, multiple = int(2 * ffn / 3), config.get(rule["multiplier"]), config.get(rule["multiple_of"], 256)
        if mult is None:
            return ffn
        ffn = int(mult * ffn)
        return multiple * ((ffn + multiple - 1) // multiple)

    # -- layers of several kinds (the rules: ligo.kinds) -----------------------------------------
    def kind_rows(self, entry: Entry, dims: Dims) -> list[int]:
        """The layers holding ``entry``: every layer, or those of its kind."""
        if entry.kind is None:
            return list(range(dims.layers))
        return [i for i, kind in enumerate(dims.kinds) if entry.kind in kind_parts(kind)]

    def target_config(self, source_config: dict, target: dict, known_keys: set[str] | frozenset = frozenset()
                      ) -> dict:
        """The source config with ``target`` written over it, every key and size checked.

        ``target`` may use the model's own config keys (``hidden_size``) or the table's generic size
        names (``hidden``, ``layers``, ``heads``, ``kv_heads``, ``head_dim``, ``ffn``), which are
        written through the keys this table declares. A key that is neither a generic name, nor in the
        source config, nor in ``known_keys`` (the config class's own keys) is an error: a typo must
        never be ignored or written into the grown config.
        """
        if not isinstance(target, dict):
            raise LigoError("the target must be a JSON object of sizes, e.g. {\"hidden\": 1024, \"layers\": 24}")
        if target.get("model_type", self.model_type) != self.model_type:
            raise LigoError(f"target model_type {target['model_type']!r} differs from the source's "
                            f"{self.model_type!r}; growth keeps the architecture, so use a "
                            f"{self.model_type!r} target config")
        generic = {name: self.config_key(name, source_config) for name in self.config
                   if name != "ffn_default_factor" and not isinstance(self.config[name], int)}
        aliases = {a: name for name, v in self.config.items() if isinstance(v, list) for a in v}
        aliases.update({v: name for name, v in generic.items()})
        allowed = set(generic) | set(source_config) | set(known_keys) | set(aliases) | {"model_type"}
        unknown = sorted(key for key in target if key not in allowed)
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, sorted(set(generic) | set(generic.values())), n=2, cutoff=0.5)
                hints.append(f"{key!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
            raise LigoError(f"unknown target key(s) {', '.join(hints)}; use the generic sizes "
                            f"{', '.join(n for n in GENERIC_SIZES if n in generic)} or keys of the "
                            f"{self.model_type} config")
        out = dict(source_config)
        written: dict[str, str] = {}
        for key, value in target.items():
            name = key if key in generic else aliases.get(key)
            if name is not None:
                key = generic[name]
                if value is None and name not in REQUIRED_CONFIG - {"ffn"}:
                    pass  # a full config's null (GPT-2's n_inner): the size is derived, as in the source
                elif name == "tie":
                    if not isinstance(value, bool):
                        raise LigoError(f"target {key} must be true or false, got {value!r}")
                elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise LigoError(f"target {key} must be a positive integer, got {value!r}")
                if key in written and out[key] != value:
                    raise LigoError(f"the target sets {key} twice with different values (as {written[key]!r} and "
                                    f"as {name if written[key] != name else key!r}); give it once")
                written[key] = name
            out[key] = value
        out["model_type"] = self.model_type
        if "mamba_inner" in generic and source_config.get(generic["mamba_inner"]) is not None and \
                "mamba_inner" not in written.values():  # stated channels follow the heads
            heads, size = (out.get(generic[n]) for n in ("mamba_heads", "mamba_head_dim"))
            out[generic["mamba_inner"]] = heads * size if isinstance(heads, int) and isinstance(size, int) else None
        elif "mamba_expand" in generic and "mamba_heads" not in written.values():  # Mamba heads follow the hidden size
            expand, hidden, size = (out.get(generic[n]) for n in ("mamba_expand", "hidden", "mamba_head_dim"))
            if all(isinstance(v, int) for v in (expand, hidden, size)) and expand * hidden % size == 0:
                out[generic["mamba_heads"]] = expand * hidden // size
        if self.ffn_rule is not None and source_config.get(self.ffn_rule["flag"], True):
            # the grown config states the FFN's real size (a target's ffn is the real size too)
            key = generic["ffn"]
            if key not in written:
                out[key] = self.real_ffn(source_config, source_config.get(key))
            out[self.ffn_rule["flag"]] = False
        # per-layer lists the target leaves out get one entry per target layer (the source's pattern repeated;
        # growth then rewrites them by its depth plan), so the target config is valid on its own
        src_layers = source_config.get(generic["layers"]) or len(listed_kinds(self.kinds, source_config) or [])
        layers = out.get(generic["layers"])
        pattern = [self.kinds["pattern"]["key"]] if self.kinds and self.kinds.get("pattern") else []
        for key in self.layer_lists + pattern:  # (a kinds pattern is a string with a character a layer)
            old = source_config.get(key)
            values = layer_values(old, src_layers) if isinstance(src_layers, int) else None
            if key not in target and values is not None and isinstance(layers, int) and layers != src_layers:
                out[key] = config_value(old, [values[i % len(values)] for i in range(layers)])
        # a kv head count of some layers' own (in their settings by layer) grows as the kv heads do
        if "per_layer_config" in out and "per_layer_config" not in target:
            out["per_layer_config"] = _own_kv_grown(source_config, out, generic.get("kv_heads"))
        return out

    def shape(self, entry: Entry, dims: Dims) -> list[int]:
        """The tensor shape of ``entry`` in a model of sizes ``dims`` (-1 where any size goes); a per-expert
        entry's stacked over its experts (its leading axis)."""
        sizes = [[dims.axis_size(t) for t in axis] for axis in entry.axes]
        return [-1 if -1 in axis else sum(axis) for axis in sizes]

    def key_shape(self, entry: Entry, dims: Dims) -> list[int]:
        """The shape of one checkpoint tensor of ``entry`` (one expert's, for a per-expert entry)."""
        shape = self.shape(entry, dims)
        return shape[1:] if entry.per_expert else shape

    # -- weights -----------------------------------------------------------------------------
    def match(self, key: str) -> list[Match | None]:
        """All table entries (None for ignore patterns) whose template matches a state-dict key."""
        found = []
        for pat, entry in self._patterns:
            m = pat.fullmatch(key)
            if m:
                layer, expert = m.groupdict().get("i"), m.groupdict().get("e")
                found.append(None if entry is None else Match(entry, None if layer is None else int(layer),
                                                              None if expert is None else int(expert)))
        return found

    def trailing_count(self, config: dict | None) -> int:
        """Layers after the last that a checkpoint of this config may hold and transformers does not load."""
        value = (config or {}).get(self.trailing_layers) if self.trailing_layers else None
        return value if isinstance(value, int) and value > 0 else 0

    def layer_index(self, key: str) -> int | None:
        """The layer a checkpoint key belongs to (by the table's layer prefix), None outside the layers."""
        m = self._layer_pattern.match(key) if self._layer_pattern is not None else None
        return int(m.group("i")) if m else None

    def layout(self, keys, dims: Dims, config: dict | None = None) -> dict[str, Match]:
        """Map every key of a checkpoint to its entry; unknown or ambiguous keys are errors. With ``config``, the
        layers after the last that the table's ``trailing_layers`` counts (multi-token prediction, which
        transformers does not load) are left out."""
        out: dict[str, Match] = {}
        trailing = self.trailing_count(config)
        for key in keys:
            if trailing and (i := self.layer_index(key)) is not None and dims.layers <= i < dims.layers + trailing:
                continue  # a layer after the last that transformers does not load (multi-token prediction)
            found = self.match(key)
            if len(found) > 1 and dims.kinds:  # (a weight of another shape in each kind: the layer's kind's)
                found = [m for m in found if m is not None and m.layer is not None and m.layer < len(dims.kinds)
                         and m.entry.kind in kind_parts(dims.kinds[m.layer])] or found
            if not found:
                raise LigoError(f"weight {key!r} matches no entry of the {self.model_type!r} table "
                                f"({self.source}){ADD_HINT}")
            if len(found) > 1:
                raise LigoError(f"weight {key!r} matches {len(found)} entries of the {self.model_type!r} "
                                "table; make the templates unambiguous")
            if found[0] is None:
                continue
            m = found[0]
            if m.layer is not None and m.layer >= dims.layers:
                raise LigoError(f"weight {key!r} is in layer {m.layer}, but the config has "
                                f"{dims.layers} layers; the checkpoint does not match its config.json")
            if m.expert is not None and m.expert >= dims.experts:
                raise LigoError(f"weight {key!r} is expert {m.expert}, but the config has {dims.experts} experts; "
                                "the checkpoint does not match its config.json")
            out[key] = m
        by_entry: dict[str, set] = {}
        for m in out.values():
            if m.entry.scope == "layer":
                by_entry.setdefault(m.entry.name, set()).add((m.layer, m.expert))
        entries = {e.name: e for e in self.entries}
        for name, found in by_entry.items():
            experts = range(dims.experts) if "{e}" in name else [None]
            rows = self.kind_rows(entries[name], dims)
            if found != {(i, x) for i in rows for x in experts}:
                where = "layers and experts" if "{e}" in name else "layers"
                of_kind = f" {entries[name].kind}" if entries[name].kind else ""
                raise LigoError(f"layer weight {name!r} is present in {len(found)} layers (and experts) where the config "
                                f"has {len(rows) * len(experts)}{of_kind} {where}; the checkpoint is incomplete, or "
                                "does not match its config.json")
        return out

    def param_name(self, key: str) -> str:
        """The model's parameter name of a checkpoint key: ``renamed`` gives it where they differ, a whole key or a
        prefix (an entry ending in a dot: Nemotron-H's checkpoints say ``backbone.`` where the model says ``model.``)."""
        if key in self.renamed:
            return self.renamed[key]
        prefix = next((p for p in self.renamed if p.endswith(".") and key.startswith(p)), None)
        return key if prefix is None else self.renamed[prefix] + key[len(prefix):]

    def layer_key(self, prefix: str, entry: Entry, layer: int, expert: int | None = None) -> str:
        return prefix + self.layer_prefix.format(i=layer) + entry.key_name(expert)

    def layer_keys(self, prefix: str, entry: Entry, layer: int, dims: Dims) -> list[str]:
        """The checkpoint keys of ``entry`` in one layer: one, or one per expert."""
        if not entry.per_expert:
            return [self.layer_key(prefix, entry, layer)]
        return [self.layer_key(prefix, entry, layer, x) for x in range(dims.experts)]
