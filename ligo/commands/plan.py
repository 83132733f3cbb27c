"""ligo plan: when does growth pay? Power-law fits of held-out loss against tokens per parameter, per
method, over benchmark results (ligo bench's results.json), and a recommendation for a target size and a
FLOPs budget: grow or train from scratch, when and by how much, with the fits' held-out errors and
every extrapolation named (see docs/benchmarks.md#the-planner).
"""

from __future__ import annotations


def add_parser(sub, name):
    p = sub.add_parser(name, help="recommend whether, when and how much to grow, from benchmark results",
                       description=__doc__)
    p.add_argument("--results", nargs="+", required=True, help="results.json files written by ligo bench")
    p.add_argument("--target-params", type=float, required=True, help="parameters of the model to train (e.g. 1.3e9)")
    p.add_argument("--budget", type=float, required=True, help="training FLOPs of the target (e.g. 2e20)")
    p.add_argument("--source-params", type=float, help="parameters of the source model, if you have one")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def run(args) -> int:
    import json

    from ..planner import plan

    out = plan(args.results, args.target_params, args.budget, args.source_params)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for a in out["analyses"]:
        print(f"{a['experiment']}: target {a['target_params']:,} parameters, growth factor {a['growth_factor']:.1f}x, "
              f"noise floor {a['noise_floor']:.4f}")
        print("  | method | L(x) = E + A (x + x0)^-alpha | fit RMSE | held-out error | advantage over scratch at the "
              "end | growth pays until (tokens/param) |")
        for name, m in a["methods"].items():
            law, held = m["law"], m["held_out_error"]
            pays = m.get("pays_until_tokens_per_param")
            print(f"  | {name} | {law['E']:.3f} + {law['A']:.3f} (x + {law['x0']:.3g})^-{law['alpha']:.2f} | "
                  f"{law['rmse']:.4f} | "
                  f"{'—' if held is None else f'{held:+.4f}'} | {m.get('advantage_at_end', 0):+.4f} | "
                  f"{'—' if name == 'scratch' else ('beyond the fitted range' if pays is None else f'{pays:.3g}')} |")
    best = out["best"]
    print(f"\nyour run: {out['tokens_per_param']:.3g} tokens per parameter -> {out['verdict']}" +
          (f" (best: {best['method']} of {best['experiment']}, predicted {best['predicted_advantage']:+.4f} nats "
           "over scratch)" if best else ""))
    if out["when"]:
        print(f"  {out['when']}")
    for note in out["notes"]:
        print(f"  note: {note}")
    return 0
