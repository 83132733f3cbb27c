"""ligo train: continue pretraining a checkpoint, or train a config from scratch, with the one loop.

Mid-run growth: --grow-at STEP --grow-target JSON (or --stages FILE, a YAML list of stages) grows the
model, with its optimizer state, after that step and continues as the grown model in the same run.
--resume continues a run from its newest checkpoint; settings not given again are the run's own.
Runs unchanged under ``torchrun`` or ``accelerate launch`` (several processes, data parallel, or sharded with
--fsdp); see docs/trainer.md.
"""

from __future__ import annotations

from ..config import GrowthStage, TrainConfig
from .flags import add_data_flags, add_flags, add_train_flags, data_config, given


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
    add_data_flags(p)
    add_train_flags(p)
    add_flags(p, GrowthStage, prefix="grow-", title="mid-run growth (one stage; --stages FILE for several)")
    p.add_argument("--stages", help="YAML or JSON file: a list of growth stages (keys as the --grow-* flags)")
    return p


def stages(args) -> list[GrowthStage]:
    """The growth stages of --stages FILE (a list, or a mapping with a 'stages' list) and of the --grow-* flags."""
    from pathlib import Path

    from ..settings import read_yaml
    from ..errors import LigoError

    found = []
    if args.stages:
        p = Path(args.stages)
        data = read_yaml(p, "stages file")
        data = data.get("stages") if isinstance(data, dict) else data
        if not isinstance(data, list):
            raise LigoError(f"stages file {p} must hold a list of stages (mappings with at, target, ...)")
        found += [GrowthStage.from_dict(st, where=f"stages file {p}, stage {i + 1}") for i, st in enumerate(data)]
    one = given(args, GrowthStage, prefix="grow-")
    if one:
        found.append(GrowthStage.from_dict(one, where="--grow-*"))
    return [st for st in found if st.at]


def run(args) -> int:
    from dataclasses import fields
    from pathlib import Path

    from ..training import Start, train
    from ..outputs import resumed_settings

    # with --resume, the run's own settings are the defaults: only what is given again is compared
    base = resumed_settings(Path(args.out)) if args.resume else {}
    known = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig.from_dict({**{k: v for k, v in base.items() if k in known}, **given(args, TrainConfig)})
    start = Start(from_config=args.from_config, tokenizer=args.tokenizer, stages=stages(args), inputs=(args.stages,))
    result = train(args.model, data_config(args), args.out, cfg, start, resume=args.resume, overwrite=args.overwrite)
    loop = result.loop
    from ..launch import is_main_process

    if not is_main_process():
        return 0
    first, last = loop.evals[0]["val_loss"] if loop.evals else float("nan"), loop.final_val
    stopped = f" (stopped early: no held-out improvement in {cfg.patience} evaluations)" if loop.status == "stopped" \
        else ""
    print(f"trained {loop.steps} steps{stopped}: held-out loss {first:.4f} -> {last:.4f}, {loop.flops:.3e} FLOPs, "
          f"{loop.wall:.1f}s; model saved in {result.out}")
    return 0
