"""Proving a table: growing a tiny model of the type through it must keep the model's function; and the one entry
point for a model_type without a hand table (:func:`table_for`), with its cache.

The proof (:func:`reproduction_gap`): a tiny random model of the type, built from the user's own config shrunk
(:func:`ligo.probe.tiny_config`), its norms moved away from their init, is grown through the table with the lossless
plan (split width, identity depth), twice wide with twice the heads and 1.5 times wide (where the plan is lossless at
that ratio: LayerNorm and norms over whole projections are exact only at integer ratios), with one layer more (none
for a post-norm model), and its logits on the same tokens must be the source's within :data:`TOLERANCE`.

A proved table is cached (``$LIGO_CACHE/tables``) by model_type, transformers' and ligo's versions, the revision of
the inference rules (:data:`ligo.infer.RULES`) and the tiny config, so the
next grow of that type starts at once; its ``source`` says how it was made and proved (the recipe of what it grows
records it). A type that nothing reproduces is refused with what was tried and how far each was off.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from .errors import LigoError
from . import __version__
from .infer import RULES, infer_table
from .probe import TINY, NotInferred, build_model, move_off_init, tiny_config

TOLERANCE = 1e-4  # the largest logit difference of a lossless growth (fp32 rounding)


def signature(model_type: str, config: dict) -> str:
    """What a proved table is cached by: the type, transformers' version and the tiny config."""
    import transformers

    small, _ = tiny_config(model_type, config)
    text = json.dumps([model_type, transformers.__version__, __version__, RULES, small], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def reproduction_gap(model_type: str, config: dict, spec) -> float | None:
    """The largest logit difference between a tiny random ``model_type`` and itself grown through ``spec`` with the
    lossless plan (2x and 1.5x wide, one identity layer more); None when no growth could be made. Both models go
    through checkpoint files, as a user's do: the table reads the keys transformers saves (which it converts, for
    its mixtures of experts, from the tensors it holds) and transformers loads what the table writes."""
    import tempfile

    import torch
    from safetensors.torch import load_file

    small, _ = tiny_config(model_type, config)
    torch.manual_seed(0)
    source = build_model(model_type, small, "cpu").eval()
    move_off_init(source)  # (norms away from their init, where their numerics differ; no neutral scalar)
    ids = torch.randint(0, TINY["vocab"], (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = source(input_ids=ids).logits
    worst, made = 0.0, 0
    with tempfile.TemporaryDirectory() as tmp:
        source.save_pretrained(f"{tmp}/source")
        state = {k: v for f in sorted(Path(f"{tmp}/source").glob("*.safetensors")) for k, v in load_file(f).items()}
        dims = spec.dims(small)
        layout = spec.layout(state.keys(), dims, small)
        for factor in (2.0, 1.5):
            if not _grown(spec, model_type, small, dims, layout, state, factor, f"{tmp}/{factor}"):
                continue
            try:
                model = transformers_model(f"{tmp}/{factor}")
            except Exception:  # noqa: BLE001  (a size the class refuses, e.g. an odd kv head count: not this ratio)
                if factor == 2.0:
                    raise
                continue
            with torch.no_grad():
                worst = max(worst, float((model(input_ids=ids).logits - expected).abs().max()))
            made += 1
    return worst if made else None


def _grown(spec, model_type: str, small: dict, dims, layout: dict, state: dict, factor: float, out: str) -> bool:
    """The tiny model grown ``factor`` times wide (and one layer deeper) through ``spec``, written into ``out`` as a
    checkpoint; False where the plan cannot be lossless at that ratio by design, or the family cannot take the shape."""
    import transformers
    from safetensors.torch import save_file

    from .config import GrowthPlan
    from .hf import known_config_keys, special_floats
    from .kinds import followed, kinds_config, own_sizes
    from .maps import depth_plan, lossless_gaps
    from .operator import GrowthOperator

    target = {}
    for n in ("hidden", "heads", "kv_heads", "ffn"):
        key = spec.config_key(n, small)
        if key and isinstance(small.get(key), int):
            target[key] = int(small[key] * factor)
    layers = spec.config_key("layers", small)
    # (a new layer is no identity where each layer ends in a norm)
    target[layers] = small[layers] + (spec.norms.get("stream") != "post")
    try:
        tgt_config = spec.target_config(small, target, known_config_keys(model_type))
        plan = GrowthPlan(width="split", depth="identity", width_lr="uniform")
        depth = depth_plan("identity", dims.layers, spec.dims(tgt_config).layers, kinds=dims.kinds)
        sizes = own_sizes(tgt_config)
        for key in spec.layer_lists:
            if (new := followed(small.get(key), dims.layers, depth.sources, sizes)) is not None and key not in target:
                tgt_config[key] = new
        if dims.kinds:  # a layer keeps its source layer's kind, as the config says it (as the Grower does)
            tgt_config.update({k: v for k, v in kinds_config(spec.kinds, [dims.kinds[j] for j in depth.sources],
                                                             model_type).items() if k not in spec.layer_lists})
        tgt_dims = spec.dims(tgt_config)
        if factor != 2.0 and lossless_gaps(spec, plan, dims, tgt_dims, depth):
            return False  # not lossless by design at this ratio (LayerNorm, a norm over whole projections): said
        grown = GrowthOperator(spec, dims, tgt_dims, layout, state, plan, depth=depth).materialize()
    except LigoError:
        return False  # (a shape this family cannot take, e.g. an odd head count)
    Path(out).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in grown.items()}, f"{out}/model.safetensors", metadata={"format": "pt"})
    transformers.AutoConfig.for_model(model_type, **{k: special_floats(v) for k, v in tgt_config.items()
                                                     if k != "model_type"}).save_pretrained(out)
    return True


def transformers_model(path: str):
    """A checkpoint folder loaded by transformers (float32, eager attention, no remote code)."""
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager",
                                                             trust_remote_code=False, local_files_only=True).eval()


# -- the one entry point: a proved table for a model_type without one ---------------------------------------------
def table_for(model_type: str, config: dict, candidates: Iterable = (), *, read, donors: Iterable = ()):
    """The table of ``model_type``: a proved one from the cache, else inferred (and each hand table of
    ``candidates``, whose names and shapes fit) and proved now, then cached. ``read``: the table reader
    (:func:`ligo.tables.read_table`, which calls this); ``donors``: the hand tables that may lend inference a layer
    module (:mod:`ligo.borrow`). Raises one :class:`LigoError` saying what was tried and how
    far each was off."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    read_table = read
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise LigoError(f"model_type {model_type!r} is not supported: ligo has no table for it, and transformers "
                        f"{'knows no such model type' if not _known(model_type) else 'has no causal-LM class for it'}"
                        " to read one off (what ligo grows: docs/architectures.md)")

    key = signature(model_type, config)
    cached = _cache_dir() / f"{model_type}-{key}.json"
    if cached.exists():
        try:
            data = json.loads(cached.read_text())
            return read_table(data["table"], source=data["source"])
        except (OSError, ValueError, KeyError, LigoError):
            pass  # a stale or broken cache entry: infer again
    tried = []
    options: list[tuple[str, object]] = []
    try:
        table, variants = infer_table(model_type, config, donors)
        options += [(f"inferred{'' if i == 0 else ' (variant ' + str(i) + ')'}", read_table(t, source="inferred"))
                    for i, t in enumerate(variants)]
    except NotInferred as exc:
        tried.append(f"inference: {exc}")
    except Exception as exc:  # noqa: BLE001  (any failure while reading the model is a verdict, not a crash)
        tried.append(f"inference could not read it ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
    from dataclasses import replace

    options += [(f"the {spec.model_types[0]} table", replace(spec, model_type=model_type)) for spec in candidates]
    for what, spec in options:
        spec = replace(spec, model_type=model_type)
        try:
            gap = reproduction_gap(model_type, config, spec)
        except Exception as exc:  # noqa: BLE001
            tried.append(f"{what}: could not be checked ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
            continue
        if gap is None:
            tried.append(f"{what}: transformers could not build a grown {model_type} to check it")
        elif gap <= TOLERANCE:
            import transformers

            made = f"{what} from transformers {transformers.__version__}'s {model_type} class" if \
                what.startswith("inferred") else f"{what} ({spec.source})"
            source = (f"{made}, proved: lossless growth of a tiny random {model_type} (2x and 1.5x wide, one layer "
                      f"more) kept its logits within {gap:.2g}")
            data = {"table": _as_table(spec, model_type), "source": source}
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_suffix(".tmp")
                tmp.write_text(json.dumps(data, indent=1))
                tmp.replace(cached)
            except OSError:
                pass  # a read-only cache: proved again next time
            return read_table(data["table"], source=source)
        else:
            tried.append(f"{what}: its lossless growth moves a tiny random {model_type}'s logits by up to {gap:.3g}")
    raise LigoError(f"model_type {model_type!r} has no table, and none could be made that reproduces it: "
                    + "; ".join(tried) + " (docs/architectures.md says how to write one)")


def _as_table(spec, model_type: str) -> dict:
    """A spec written back as the JSON table it was read from (for the cache and ``ligo inspect --table``)."""
    return table_json(spec, model_type)


def table_json(spec, model_type: str | None = None) -> dict:
    """The JSON table of a spec (the format ``docs/architectures.md`` describes)."""
    def axes(e):
        return ["+".join(a) for a in e.axes]

    out = {"model_type": model_type or spec.model_type, "objective": spec.objective, "rope": spec.rope,
           "config": spec.config, "base_prefix": spec.base_prefix, "layer_prefix": spec.layer_prefix,
           "globals": {e.name: axes(e) for e in spec.entries if e.scope == "globals"},
           "layer": {e.name: axes(e) for e in spec.entries if e.scope == "layer" and e.kind is None},
           "head": {e.name: axes(e) for e in spec.entries if e.scope == "head"},
           "tied": spec.tied, "identity_zero": spec.identity_zero, "layer_lists": spec.layer_lists,
           "ignore": spec.ignore, "norms": spec.norms}
    def kinds_json(rules: dict) -> dict:
        return {"by": rules["by"], "layers": {kind: {e.name: axes(e) for e in spec.entries if e.kind == kind}
                                              for kind in rules["names"]},
                **{k: rules[k] for k in ("index_lists", "aliases", "pattern", "last") if rules.get(k)},
                **({"also": kinds_json(rules["also"])} if rules.get("also") else {})}

    if spec.kinds:
        out["kinds"] = kinds_json(spec.kinds)
    optional = {"embed_scale": spec.embed_scale, "scales": spec.scales, "router": spec.router, "fused": spec.fused, "upcycle": spec.upcycle,
                "requires": spec.requires, "renamed": spec.renamed, "transposable": spec.transposable,
                "trailing_layers": spec.trailing_layers, "ffn_rule": spec.ffn_rule}
    return {**out, **{k: v for k, v in optional.items() if v}}


def _cache_dir() -> Path:
    from .outputs import cache_dir

    return cache_dir() / "tables"


def _known(model_type: str) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return model_type in CONFIG_MAPPING_NAMES
