"""ligo bench: run a benchmark experiment: growth methods against an LR-tuned scratch run and against each
other, at equal total FLOPs, at one or more budgets, with a noise floor (see docs/benchmarks.md).

EXPERIMENT is a YAML file (see benchmarks/experiments/) or the name of an embedded one ('demo').
Writes results.json, table.md and loss-vs-FLOPs / loss-vs-wall plots into --out. A long experiment
can be spread over several sessions: --resume keeps finished runs and resumes an interrupted one, and
--methods runs the most important methods first (the others join later with --resume).
"""

from __future__ import annotations


def add_parser(sub, name):
    p = sub.add_parser(name, help="run a benchmark experiment", description=__doc__)
    p.add_argument("experiment", help="experiment YAML file, or an embedded name (demo)")
    p.add_argument("--out", help="output directory (default: bench-results/NAME)")
    p.add_argument("--data", help="text file, directory or jsonl to use instead of the experiment's corpus "
                   "(default: Python source on this machine, see the experiment's `corpus`)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and steps: checks the pipeline in seconds")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted run of the same experiment in --out; methods added or changed "
                        "in the file since run (again), the rest are kept")
    p.add_argument("--methods", nargs="+", metavar="NAME",
                   help="run only these methods of the experiment (and scratch, the reference); the others can "
                        "be added later into the same --out with --resume")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier run (kept until "
                   "the new one is complete)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run(args) -> int:
    from pathlib import Path

    from ..bench import load_experiment, run_experiment

    exp = load_experiment(args.experiment, smoke=args.smoke, methods=args.methods)
    out = args.out = args.out or f"bench-results/{exp.name}{'-smoke' if args.smoke else ''}"  # (as the CLI reports it)
    run_experiment(exp, out, data=args.data, progress=not args.no_progress, resume=args.resume,
                   overwrite=args.overwrite)
    print((Path(out) / "table.md").read_text())
    print(f"results in {out}/ (results.json, table.md, loss_vs_flops*.png, loss_vs_wall*.png)")
    return 0
