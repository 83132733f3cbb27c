"""ligo grow: grow a checkpoint into a larger shape, optionally fitting the operator first.

With --optimizer-state, SOURCE is a `ligo train` run folder: its newest checkpoint (weights, AdamW
moments, step counters, schedule position, RNG states, log and FLOPs ledger) is grown into a new run
folder that `ligo train --out OUT --resume --steps N` continues.
"""

from __future__ import annotations

import sys

from ..config import MAX_SHARD_SIZE, GrowthPlan, GrowthStage, TrainConfig, fit_config
from .flags import add_data_flags, data_config, add_fit_flags, add_plan_flags, add_target_flag, \
    given, parse_target, target_file


def add_parser(sub, name):
    p = sub.add_parser(name, help="grow a model (or a training run) into a larger shape (LiGO)", description=__doc__)
    p.add_argument("source", nargs="?", help="source model directory (config.json + safetensors + tokenizer), or "
                   "with --optimizer-state the --out folder of a `ligo train` run (omit with --from-mergekit)")
    p.add_argument("--from-mergekit", metavar="CONFIG", help="grow as a mergekit passthrough config says (its slices of "
                   "one model's layers become a depth map, its dtype the output's): the same tensors mergekit writes; "
                   "no SOURCE, --target or --depth then")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="the grown weights' dtype on disk "
                   "(default: the source's)")
    p.add_argument("--optimizer-state", choices=["grow", "reset"], help="SOURCE is a training run: grow its newest "
                   "checkpoint with its AdamW state (grow: through the operator; reset: fresh) into a run folder "
                   "that `ligo train --out OUT --resume --steps N` continues")
    p.add_argument("--out", required=True, help="output directory for the grown model")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (kept until the new one "
                   "is complete)")
    p.add_argument("--max-shard-size", default=MAX_SHARD_SIZE, help="largest safetensors shard, like 5GB or 500MB "
                   "(default 5GB)")
    p.add_argument("--device", help="where to grow: cpu, cuda, cuda:1 (default: the CPU, where growth without a fit "
                   "streams; with --fit-steps, cuda when available)")
    p.add_argument("--arch", help="read the source with this architecture table (e.g. llama) instead of its own "
                   "(default: its model_type's table; a type without one gets a table read off transformers' class "
                   "and proved by growing a tiny model)")
    p.add_argument("--check-blocks", type=int, help="with --data: measure the grown model's start "
                   "loss beside the source's on this many held-out blocks, and warn when it starts more than 1 nat "
                   "above (0: no check; default 16)")
    p.add_argument("--in-memory", action="store_true", help="gather the grown model in memory before writing it "
                   "(default without a fit on the CPU: stream, reading the source tensor by tensor and writing each "
                   "shard as it fills; the files are the same)")
    p.add_argument("--seed", type=int, default=0, help="seed of the operator's init and of the fit (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar for the fit")
    add_target_flag(p, required=False)
    add_data_flags(p)
    add_plan_flags(p)
    add_fit_flags(p, aliases={"seq_len": ["--seq-len"], "batch_size": ["--batch-size"]})
    return p


def run(args) -> int:
    from ..checkpoint import TOKENIZER_CORE
    from ..growth import START_GAP_WARNING
    from ..pipelines import grow
    from ..plans import depth_init, width_init

    # a live run grows losslessly by default (split + identity, as `ligo train --grow-at`): its
    # optimizer state then carries on; a finished model takes the plan's auto, resolved from the source
    live = {"width": GrowthStage.width, **({"depth": GrowthStage.depth} if args.depth_map is None else {})} \
        if args.optimizer_state else {}
    from_mergekit = _from_mergekit(args)
    plan = GrowthPlan.from_dict({**live, **given(args, GrowthPlan), **from_mergekit, "seed": args.seed},
                                where="growth plan")
    fit = fit_config({**given(args, TrainConfig, prefix="fit-"), "seed": args.seed,
                      "progress": not args.no_progress}, where="fit")
    if args.optimizer_state:
        return _grow_run(args, plan, fit)
    if args.check_blocks is not None and data_config(args).data is None:
        from ..errors import LigoError

        raise LigoError("--check-blocks measures the grown model's start loss on held-out blocks of --data; give "
                        "--data, or drop --check-blocks")
    check = {} if args.check_blocks is None else {"check_blocks": args.check_blocks}
    seq_len = given(args, TrainConfig, prefix="fit-").get("seq_len")  # --seq-len: the fit's, and the start check's
    import torch

    dtype = getattr(torch, args.dtype) if args.dtype else None
    result = grow(args.source, parse_target(args.target) if args.target is not None else {}, args.out, plan=plan,
                  data=data_config(args), fit=fit, dtype=dtype,
                  overwrite=args.overwrite, max_shard_size=args.max_shard_size,
                  device=_device(args.device, fit is not None),
                  stream=not args.in_memory, arch=args.arch, check_seq_len=seq_len, inputs=[target_file(args.target)],
                  **check)
    from ..launch import is_main_process

    if not is_main_process():  # under a multi-process launch the main process reports
        return 0
    record = result.record
    if record.fit is not None:
        print(f"fit: {record.fit.steps} steps, held-out loss {record.fit.start_val_loss:.4f} -> "
              f"{record.fit.final_val_loss:.4f}")
        _fit_advice(record.fit, result.plan)
    t, src, tgt, plan = result.timings, result.source_dims, result.target_dims, result.plan
    experts = f", {tgt.experts} experts ({tgt.experts_per_token} per token)" if tgt.experts > 1 else ""
    what = (f"upcycled {record.upcycled_from} into {record.model_type}" if record.upcycled_from
            else f"grew {record.vision_language or record.model_type}")
    print(f"{what} {src.layers}L-{src.hidden} -> {tgt.layers}L-{tgt.hidden}{experts} (width {plan.width}, depth "
          f"{plan.depth}) into {result.out}  [load {t.load_s:.1f}s, build {t.build_s:.1f}s, grow "
          f"{t.materialize_s:.1f}s, save {t.save_s:.1f}s]")
    check = record.start_check
    if check:
        print(f"start loss on {check.tokens:,} held-out tokens of --data: source {check.source_loss:.4f}, "
              f"grown {check.grown_loss:.4f} ({check.gap:+.4f} nats)")
        if check.gap > START_GAP_WARNING:
            print(f"warning: the grown model starts {check.gap:.2f} nats above its source, so it has lost much of "
                  f"what the source knew (plan: width {plan.width}, depth {plan.depth}); grow with --width split "
                  "--depth identity (lossless), or fit the operator with --fit-steps N", file=sys.stderr)
    if width_init(plan.width).lossless and depth_init(plan.depth).repeats_are_identity:
        for gap in record.not_lossless_because:  # the plan is meant to be lossless: say where it is not
            print(f"note: not exactly lossless: {gap}", file=sys.stderr)
    _note_dropped(plan, src, tgt)
    if result.left_out_layers:
        print(f"note: the source's {result.left_out_layers} layer(s) after its last (multi-token prediction) are left "
              "out, as transformers leaves them out when it loads the model", file=sys.stderr)
    if not set(result.tokenizer_files) & set(TOKENIZER_CORE):
        print(f"warning: {args.source} has no tokenizer files, so {result.out} has none either; copy the "
              "source's tokenizer there before training it", file=sys.stderr)
    return 0


def _grow_run(args, plan, fit) -> int:
    """ligo grow RUN --optimizer-state: the run's newest checkpoint grown into a run folder that continues it."""
    from ..rungrowth import grow_run

    if args.device not in (None, "cpu"):
        from ..errors import LigoError

        raise LigoError(f"--device {args.device}: a live run is grown on the CPU (its checkpoint and optimizer "
                        "state are read there); drop --device, or grow a finished model with --device")
    target = parse_target(args.target) if args.target is not None else {}  # (a depth map says the layers)
    out = grow_run(args.source, target, args.out, plan, optimizer_state=args.optimizer_state,
                   fit=fit, overwrite=args.overwrite, data=data_config(args), inputs=[target_file(args.target)])
    from ..rundir import latest_checkpoint
    from ..sharding import SHARDS

    sharded = (latest_checkpoint(out) / SHARDS).is_dir()  # (it trains sharded again: under a launch)
    print(f"grew the run {args.source} (optimizer state: {args.optimizer_state}) into {out}; continue it with: "
          + ("torchrun --nproc_per_node N -m " if sharded else "") + f"ligo train --out {out} --resume --steps N")
    return 0


def _from_mergekit(args) -> dict:
    """``--from-mergekit CONFIG``: its source, dtype and depth map (as plan fields); otherwise SOURCE and --target
    are required."""
    from ..errors import LigoError

    if not args.from_mergekit:
        if not args.source or (args.target is None and args.depth_map is None):
            raise LigoError("give SOURCE and --target (or --depth-map, which says the target's layers), or "
                            "--from-mergekit CONFIG.yml")
        return {}
    if args.source or args.target is not None or args.depth or args.depth_map is not None or args.optimizer_state:
        raise LigoError("--from-mergekit says the source, its layers and the dtype: drop SOURCE, --target, --depth, "
                        "--depth-map and --optimizer-state")
    from ..mergekit import read_passthrough

    args.source, depth_map, dtype = read_passthrough(args.from_mergekit, args.arch)
    if dtype is not None and args.dtype is None:
        args.dtype = str(dtype).removeprefix("torch.")
    return {"depth_map": depth_map, "width": args.width or "copy"}


def _note_dropped(plan, src, tgt) -> None:
    """The source layers a depth map left out (with --drop-layers; without, such a map is refused), named."""
    from ..maps import depth_plan, layer_list

    dropped = depth_plan(plan.depth, src.layers, tgt.layers, plan.depth_map).left_out(src.layers)
    if dropped:
        print(f"note: the depth map leaves out source layer(s) {layer_list(dropped)} (--drop-layers)", file=sys.stderr)


def _fit_advice(fit, plan) -> None:
    """A fit that never improved on its start kept the start: say why that usually happens and what to change."""
    if fit.best_step != 0 or not fit.steps:
        return
    hint = ("--width-lr fan_in (each width map's step divided by its fan-in: with the same step for every entry, "
            "a map hundreds of units wide changes each unit by more than its own size in one step; see "
            "docs/benchmarks.md), or a smaller --fit-lr" if plan.width_lr == "uniform" else
            "a smaller --fit-lr, or no fit: a lossless start is often a minimum the fit cannot improve")
    print(f"note: no fit step improved on the start (the held-out loss only rose), so the operator keeps its start "
          f"and the fit's compute bought nothing; try {hint}", file=sys.stderr)


def _device(name: str | None, fit: bool) -> str:
    """Growth without a fit is a gather that streams on the CPU; a fit trains, on a GPU when there is one."""
    from ..hf import check_device

    return check_device(name, default_cuda=fit)
