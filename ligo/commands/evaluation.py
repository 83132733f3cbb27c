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
    p.add_argument("--json", help="also write the results to this file (an existing file only with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace the --json file if it exists")
    return p


def run(args) -> int:
    import json
    import os
    from pathlib import Path

    from ..downstream import evaluate
    from ..outputs import claimed
    from ..errors import LigoError
    from ..hf import check_device

    if args.limit is not None and not (args.limit > 0 and (args.limit < 1 or args.limit == int(args.limit))):
        raise LigoError(f"--limit must be a number of examples (1, 2, ...) or a fraction below 1, got {args.limit:g}")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise LigoError(f"--num-fewshot must be 0 or more, got {args.num_fewshot}")
    if args.batch_size < 1:
        raise LigoError(f"--batch-size must be at least 1, got {args.batch_size}")
    with claimed(args.json):  # a second `ligo eval --json` into the same file is refused while this one runs
        if args.json:
            _check_json(Path(args.json), Path(args.model), args.overwrite)
        device = check_device(args.device)
        limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
        result = evaluate(args.model, args.tasks, limit=limit, batch_size=args.batch_size, device=device,
                          num_fewshot=args.num_fewshot)
        print("| task | metric | value |\n|---|---|---|")
        for task, metrics in result["tasks"].items():
            for metric, value in metrics.items():
                print(f"| {task} | {metric} | {value:.4f} |")
        if args.json:
            tmp = Path(args.json).with_name(f".{Path(args.json).name}.tmp-{os.getpid()}")
            try:
                tmp.write_text(json.dumps(result, indent=2) + "\n")
                tmp.replace(args.json)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
    return 0


def _check_json(path, model, overwrite: bool) -> None:
    """The --json file, checked before the evaluation: its folder exists and can be written, it is not one of the
    model's files, and an existing file is replaced only with --overwrite."""
    from ..errors import LigoError
    from ..outputs import check_writable

    if not path.parent.is_dir():
        raise LigoError(f"--json {path}: the folder {path.parent} does not exist; create it or write elsewhere")
    if path.resolve().parent == model.resolve():
        raise LigoError(f"--json {path} is inside the model directory {model}; write the results elsewhere")
    if path.is_dir():
        raise LigoError(f"--json {path} is a directory; give the path of a file to write the results to")
    if path.exists() and not overwrite:
        raise LigoError(f"--json {path} exists; pass --overwrite to replace it, or choose another file")
    check_writable(path.parent, "a --json file")
