"""Does one of ligo's tables reproduce a model_type it has no table for? Names and shapes can agree while the
numerics differ (Cohere 2 has Llama's weight names, but LayerNorm, parallel blocks and scaled logits), so
``--arch TABLE`` is suggested only when growing a tiny random model of that type through the table with the
lossless plan (split width, identity depth), at twice the width and at 1.5 times (where RMSNorm and LayerNorm
growth differ), gives the model's own logits.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .arch import DOCS_ADDING, ArchSpec
from .config import GrowthPlan
from .errors import LigoError
from .tables import UnsupportedType, get_spec

TOLERANCE = 1e-4  # the largest logit difference of a lossless growth (fp32 rounding)


def refusal(exc: UnsupportedType) -> LigoError:
    """The one line for an unsupported model_type: the table that reproduces it, or why none does."""
    gaps = {name: reproduction_gap(exc.model_type, exc.config, name) for name in exc.candidates}
    good = [name for name, gap in gaps.items() if gap is not None and gap <= TOLERANCE]
    if good:
        return LigoError(f"model_type {exc.model_type!r} is not supported, but the {good[0]} table reproduces it (its "
                         f"lossless growth keeps a tiny random {exc.model_type}'s logits): grow it with --arch "
                         f"{good[0]}, or write a table for it ({DOCS_ADDING})")
    why = "; ".join(f"the {name} table has its weights' names and shapes but computes something else on them "
                    f"(growing a tiny random {exc.model_type} through it losslessly moves its logits by up to {gap:.3g})"
                    if gap is not None else f"the {name} table has its weights' names and shapes, but transformers "
                    f"cannot build a {exc.model_type} here to check that it computes the same"
                    for name, gap in gaps.items())
    return LigoError(f"model_type {exc.model_type!r} is not supported: {why}; write a table for it ({DOCS_ADDING})")


def reproduction_gap(model_type: str | None, config: dict, table: str) -> float | None:
    """The largest logit difference between a tiny random ``model_type`` and itself grown through ``table``
    losslessly (2x and 1.5x wide, one identity layer more); None when transformers cannot build it here."""
    import transformers

    from .growth import Grower
    from .hf import model_class

    spec = get_spec(table)
    try:
        small = _shrunk(config, spec)
        cfg = transformers.AutoConfig.for_model(model_type, **{k: v for k, v in small.items() if k != "model_type"})
        cfg._attn_implementation = "eager"
        torch.manual_seed(0)
        source = model_class(spec.objective).from_config(cfg).eval()
    except Exception:  # noqa: BLE001  (a type transformers cannot build here: no verdict)
        return None
    with torch.no_grad():
        for p in source.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))  # norms away from their init, where their numerics differ
    ids = torch.randint(0, small[spec.config_key("vocab", config)], (1, 16), generator=torch.Generator().manual_seed(0))
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        source.save_pretrained(Path(tmp) / "source")
        expected = source(input_ids=ids).logits
        for factor in (2.0, 1.5):
            target = {spec.config_key(n, config): int(small[spec.config_key(n, config)] * factor)
                      for n in ("hidden", "heads", "kv_heads", "ffn") if spec.config_key(n, config) in small}
            target[spec.config_key("layers", config)] = small[spec.config_key("layers", config)] + 1
            out = Path(tmp) / f"grown-{factor}"
            try:
                Grower(Path(tmp) / "source", target, GrowthPlan(width="split", depth="identity"), arch=table).save(out)
                grown = model_class(spec.objective).from_pretrained(out, attn_implementation="eager",
                                                                    dtype=torch.float32, trust_remote_code=False,
                                                                    local_files_only=True).eval()
            except LigoError:
                continue  # (a shape this family cannot take, e.g. an odd head count)
            worst = max(worst, float((grown(input_ids=ids).logits - expected).abs().max()))
    return worst


def _shrunk(config: dict, spec: ArchSpec) -> dict:
    """``config`` at a tiny size (2 layers, 4 heads of 16, FFN 128, 256 tokens), through the table's config keys."""
    small = dict(config)
    heads, kv = config.get(spec.config_key("heads", config)), config.get(spec.config_key("kv_heads", config))
    sizes = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2 if kv and heads and kv < heads else 4,
             "head_dim": 16, "ffn": 128, "vocab": 256}
    for name, value in sizes.items():
        key = spec.config_key(name, config)
        if key and (key in config or name != "head_dim"):
            small[key] = value
    for key in spec.layer_lists:
        if isinstance(config.get(key), list):
            small[key] = (config[key] * 2)[:2]
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if isinstance(small.get(key), int) and small[key] >= 256:
            small[key] = 0
    return small
