"""ligo train: continue pretraining a checkpoint, or train a config from scratch, with the one loop.

Runs unchanged under ``accelerate launch`` (several processes, FSDP); see docs/trainer.md.
"""

from __future__ import annotations

from ..config import TrainConfig
from .flags import add_data_flag, add_train_flags, given


def add_parser(sub, name):
    p = sub.add_parser(name, help="train a model (continued pretraining or from scratch)", description=__doc__)
    p.add_argument("model", nargs="?", help="model directory to continue training (omit with --from-config, or "
                   "with --resume to continue the run in --out)")
    p.add_argument("--from-config", help="train from scratch: a config.json (the baseline, same loop)")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the model directory)")
    p.add_argument("--out", required=True, help="run directory: run.json, log.jsonl, checkpoints/, and the final model")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier run (kept until "
                   "the new run finishes)")
    add_data_flag(p)
    add_train_flags(p)
    return p


def run(args) -> int:
    from ..pipelines import train

    cfg = TrainConfig.from_dict(given(args, TrainConfig))
    result = train(args.model, args.data, args.out, cfg, from_config=args.from_config, tokenizer=args.tokenizer,
                   resume=args.resume, overwrite=args.overwrite)
    loop = result.loop
    if not loop.accelerator.is_main_process:
        return 0
    if loop.status == "preempted":
        print(f"preempted at step {loop.steps}: checkpoint saved in {result.out}/checkpoints; rerun with --resume")
        return 0
    first, last = loop.evals[0]["val_loss"] if loop.evals else float("nan"), loop.final_val
    stopped = f" (stopped early: no held-out improvement in {cfg.patience} evaluations)" if loop.status == "stopped" \
        else ""
    print(f"trained {loop.steps} steps{stopped}: held-out loss {first:.4f} -> {last:.4f}, {loop.flops:.3e} FLOPs, "
          f"{loop.wall:.1f}s; model saved in {result.out}")
    return 0
