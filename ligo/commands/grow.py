"""ligo grow: grow a checkpoint into a larger shape, optionally fitting the operator first."""

from __future__ import annotations

from ..grow import Grower
from ..operator import GrowthPlan
from .common import add_data_flags, add_growth_flags, fit_config, parse_target


def add_parser(sub, name):
    p = sub.add_parser(name, help="grow a model into a larger shape (LiGO)", description=__doc__)
    p.add_argument("source", help="source model directory (config.json + safetensors + tokenizer)")
    p.add_argument("--out", required=True, help="output directory for the grown model")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    add_growth_flags(p)
    add_data_flags(p)
    return p


def run(args) -> int:
    from ..checkpoint import check_output_dir

    check_output_dir(args.out, args.overwrite)
    fit = fit_config(args)
    grower = Grower(args.source, parse_target(args.target),
                    GrowthPlan(width=args.width, depth=args.depth, per_layer=args.per_layer, seed=args.seed))
    if fit is not None:
        fit.progress = True
        result = grower.fit(args.data, fit)
        print(f"fit: {result.steps} steps, held-out loss {result.evals[0]['val_loss']:.4f} -> {result.final_val:.4f}")
    out = grower.save(args.out, overwrite=args.overwrite, max_shard_size=args.max_shard_size)
    t = grower.timings
    src, tgt = grower.source.dims, grower.target_dims
    print(f"grew {grower.spec.model_type} {src.layers}L-{src.hidden} -> {tgt.layers}L-{tgt.hidden} "
          f"(width {args.width}, depth {args.depth}) into {out}  [load {t['load_s']:.1f}s, build "
          f"{t['build_s']:.1f}s, grow {t['materialize_s']:.1f}s, save {t['save_s']:.1f}s]")
    return 0
