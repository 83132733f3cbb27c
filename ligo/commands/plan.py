"""ligo plan: grow your checkpoint, continue training it, or train the target from scratch? Answered from benchmark
results (ligo bench's results.json: the committed ones are in benchmarks/results/) at your budget in tokens per target
parameter, by the experiment nearest your source in growth factor and pretraining tokens per parameter: the predicted
held-out losses with their uncertainty, where the grown model overtakes the source trained on, and every
extrapolation, in the first lines. Where the evidence does not reach, the answer is "unknown beyond X". Fits that
leave their physical bounds or miss a held-out budget are shown as "no reliable fit", never as a formula
(docs/benchmarks.md#the-planner).
"""

from __future__ import annotations

REQUIRED = ("target_params", "budget", "source_params")


def add_parser(sub, name):
    from ..planner import PlanQuery
    from .flags import add_flags

    p = sub.add_parser(name, help="grow, continue the source, or train from scratch? from benchmark results",
                       description=__doc__)
    p.add_argument("--results", nargs="+", required=True,
                   help="results.json files written by ligo bench, or folders of them (benchmarks/results/: the "
                   "committed ones)")
    add_flags(p, PlanQuery, title="your run (--target-params, --budget and --source-params are required)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def run(args) -> int:
    import json

    from ..errors import LigoError
    from ..planner import PlanQuery, plan
    from .flags import given

    values = given(args, PlanQuery)
    missing = [f"--{k.replace('_', '-')}" for k in REQUIRED if k not in values]
    if missing:
        raise LigoError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required: the planner answers "
                        "for a source, a target and a budget (ligo plan --help)")
    out = plan(args.results, PlanQuery(**values))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for line in out["headline"]:
        print(line)
    for a in out["analyses"]:
        print(f"\n{a['experiment']}: source {a['source_params']:,} parameters" +
              (f" trained on {a['source_strength']:.3g} tokens per parameter" if a["source_strength"] else
               " (pretraining tokens unknown)") +
              f", target {a['target_params']:,} ({a['growth_factor']:.2f}x); budgets (tokens per target parameter) " +
              ", ".join(f"{x:.3g}" for x in a["budgets"].values()) +
              ("; no noise floor measured" if a["noise_floor"] is None else f"; noise floor {a['noise_floor']:.4f}"))
        print("  | family (its methods, LRs apart) | role | final loss per budget (the best LR) | fit L(x), x: its "
              "tokens per target parameter | held-out: predicted - measured |")
        for f in a["families"].values():
            losses = ", ".join(f"{p['loss']:.3f}" for p in f["points"])
            law = f["law"] or "no reliable fit: " + (f["why_not"] or "")
            held = "—" if f["held_out"] is None else format(f["held_out"]["error"], "+.4f")
            print(f"  | {' / '.join(f['members'])} | {f['role']} | {losses} | {law} | {held} |")
    return 0
