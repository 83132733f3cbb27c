"""ligo eval: downstream zero/few-shot evaluation of a local model through lm-evaluation-harness.

TASKS are lm-eval task names (installed or cached where you run it) or local task YAML files. Needs
the optional extra: pip install 'ligo[eval]'.
"""

from __future__ import annotations


def add_parser(sub, name):
    p = sub.add_parser(name, help="downstream evaluation with lm-evaluation-harness", description=__doc__)
    p.add_argument("model", help="model directory (a causal LM)")
    p.add_argument("--tasks", nargs="+", required=True, help="lm-eval task names or task YAML files")
    p.add_argument("--limit", type=float, help="examples per task (an integer), or a fraction of each task")
    p.add_argument("--num-fewshot", type=int, help="few-shot examples (default: each task's own)")
    p.add_argument("--batch-size", type=int, default=8, help="default 8")
    p.add_argument("--device", help="default: cuda when available, else cpu")
    p.add_argument("--json", help="also write the results to this file")
    return p


def run(args) -> int:
    import json
    from pathlib import Path

    from ..downstream import evaluate

    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    result = evaluate(args.model, args.tasks, limit=limit, batch_size=args.batch_size, device=args.device,
                      num_fewshot=args.num_fewshot)
    print("| task | metric | value |\n|---|---|---|")
    for task, metrics in result["tasks"].items():
        for metric, value in metrics.items():
            print(f"| {task} | {metric} | {value:.4f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0
