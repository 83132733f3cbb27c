"""ligo train: continue pretraining a checkpoint, or train a config from scratch, with the one loop.

Runs unchanged under ``accelerate launch`` (several processes, FSDP); see docs/trainer.md.
"""

from __future__ import annotations

from .common import add_data_flags
from .train_flags import add_train_flags, train_overrides


def add_parser(sub, name):
    p = sub.add_parser(name, help="train a model (continued pretraining or from scratch)", description=__doc__)
    p.add_argument("model", nargs="?", help="model directory to continue training (omit with --from-config)")
    p.add_argument("--from-config", help="train from scratch: a config.json (the baseline, same loop)")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the model directory)")
    p.add_argument("--out", required=True, help="run directory: log.jsonl, checkpoints/, and the final model")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_data_flags(p)
    add_train_flags(p)
    return p


def run(args) -> int:
    from ..loop import TrainConfig
    from ..train import train

    cfg = TrainConfig.from_dict({"seq_len": args.seq_len, "batch_size": args.batch_size, **train_overrides(args),
                                 "progress": not args.no_progress})
    result = train(args.model, args.data, args.out, cfg, from_config=args.from_config, tokenizer=args.tokenizer,
                   resume=args.resume, overwrite=args.overwrite)
    loop = result.loop
    if not loop.accelerator.is_main_process:
        return 0
    if loop.status == "preempted":
        print(f"preempted at step {loop.steps}: checkpoint saved in {args.out}/checkpoints; rerun with --resume")
        return 0
    first, last = loop.evals[0]["val_loss"] if loop.evals else float("nan"), loop.final_val
    print(f"trained {loop.steps} steps: held-out loss {first:.4f} -> {last:.4f}, {loop.flops:.3e} FLOPs, "
          f"{loop.wall:.1f}s; model saved in {args.out}")
    return 0
