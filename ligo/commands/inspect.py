"""ligo inspect: what ligo sees in a model directory, and what growing it to a target would take."""

from __future__ import annotations

import json


def add_parser(sub, name):
    p = sub.add_parser(name, help="show a model's table entry, sizes, parameters and unit duplicates",
                       description=__doc__)
    p.add_argument("model", help="model directory")
    p.add_argument("--target", help="also report the operator for growing into this target (JSON file or object)")
    p.add_argument("--units", action="store_true", help="report duplicated units per space (the symmetry check)")
    p.add_argument("--table", action="store_true", help="list every weight of the architecture table with the "
                   "spaces of its axes")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def run(args) -> int:
    from dataclasses import asdict

    from ..checkpoint import describe_checkpoint, load_checkpoint
    from ..diagnostics import unit_report
    from ..growth import Grower
    from .flags import parse_target

    # the weights are read only when they are needed: for the unit report, or to build an operator
    ck = load_checkpoint(args.model) if (args.units or args.target) else describe_checkpoint(args.model)
    d = ck.dims
    info = {
        "model_type": ck.spec.model_type, "table": ck.spec.source, "objective": ck.spec.objective,
        "has_lm_head": ck.has_head, "dtype": str(ck.dtype).removeprefix("torch."),
        "parameters": sum(ck.state[k].numel() for k in ck.layout), "dims": asdict(d),
        "spaces": {"residual": d.hidden, "query heads": f"{d.heads} x {d.head_dim}",
                   "kv heads": f"{d.kv_heads} x {d.head_dim}", "ffn": d.ffn, "vocab": d.vocab,
                   **({"experts": f"{d.experts} ({d.experts_per_token} per token)"} if d.experts > 1 else {}),
                   **({"dense layers' ffn": d.dense_ffn} if d.dense_ffn else {}),
                   **({"shared experts' ffn": f"{d.shared_experts} x {d.ffn}"} if d.shared_experts else {})},
    }
    spec = ck.spec
    info["numerics"] = {"norms": spec.norms["type"], "gain_offset": spec.norms["offset"],
                        "embed_scale": spec.embed_scale, "layer_lists": [k for k in spec.layer_lists if k in ck.config]}
    if args.table:
        info["table_entries"] = {f"{e.scope}{f'[{e.kind}]' if e.kind else ''}:{e.name}": ["+".join(axis) for axis in e.axes]
                                 for e in spec.entries}
    if args.target:
        g = Grower(ck, parse_target(args.target))
        info["target_dims"] = asdict(g.target_dims)
        info["operator_parameters"] = g.operator.num_parameters()
        info["operator_maps"] = {k: list(v.shape) for k, v in
                                 [*g.operator.width.items(), *(("depth." + k, v) for k, v in g.operator.depth.items())]}
    if args.units:
        info["units"] = unit_report(ck.state, ck.layout, ck.spec, d)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.model}: {info['model_type']} ({info['objective']}, table {info['table']}), "
          f"{info['parameters']:,} parameters, {info['dtype']}, LM head: {'yes' if ck.has_head else 'no'}")
    print(f"  layers {d.layers}, residual {d.hidden}, heads {d.heads} (kv {d.kv_heads}) x head_dim {d.head_dim}, "
          f"ffn {d.ffn}, vocab {d.vocab}, tied embeddings: {d.tie}"
          + (f"; experts {d.experts}, {d.experts_per_token} per token, top-k weights "
             f"{'renormalized' if d.router_normalized else 'not renormalized'}" if d.experts > 1 else ""))
    if d.kinds:
        counts = {k: d.kinds.count(k) for k in dict.fromkeys(d.kinds)}
        print("  layer kinds: " + ", ".join(f"{n} {k}" for k, n in counts.items())
              + f" ({', '.join(f'{k}: {v}' for k, v in spec.kinds['by'].items())})")
    num = info["numerics"]
    print(f"  norms: {'RMSNorm' if num['norms'] == 'rms' else 'LayerNorm'}"
          + (f" (gain = {num['gain_offset']:g} + weight)" if num["gain_offset"] else "")
          + (f"; embeddings x hidden^{spec.embed_scale['power']:g}" if spec.embed_scale else "")
          + (f"; per-layer lists: {', '.join(num['layer_lists'])}" if num["layer_lists"] else ""))
    if args.table:
        for name, axes in info["table_entries"].items():
            print(f"    {name:48s} [{', '.join(axes)}]")
    if args.target:
        t = g.target_dims
        print(f"  target: layers {t.layers}, residual {t.hidden}, heads {t.heads} (kv {t.kv_heads}), ffn {t.ffn}; "
              f"operator: {info['operator_parameters']:,} parameters")
        for k, shape in info["operator_maps"].items():
            print(f"    {k:28s} {'x'.join(map(str, shape))}")
    if args.units:
        print("  units (duplicate_writes: equal write vectors; duplicates: equal on both sides):")
        for space, r in info["units"].items():
            print(f"    {space:4s} {r['units']:6d} units, {r['duplicate_writes']:5d} duplicate writes, "
                  f"{r['duplicates']:5d} duplicates, nearest distance {r['min_rel_distance']:.3g}")
    return 0
