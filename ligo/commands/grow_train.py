"""ligo grow-train: grow a checkpoint (optionally fitting the operator), then train it, from flags or a job file.

The job file (YAML or JSON) holds source, target, out, the data (data, data_config, data_split,
text_column, streaming, num_proc), the growth plan (width, depth, per_layer, split_noise, width_lr,
depth_lr_scale), seed, seq_len, batch_size, and two mappings of training-config keys: fit (the
operator fit: its steps, or its share of the training budget such as 0.02; none by default) and
train. Flags given on the command line override the job file. --steps is the whole budget: a fit's FLOPs come
out of it and the grown model trains for the steps left (as in ligo bench). Outputs: OUT/grown (the grown model),
OUT/trained (the run: log, checkpoints, final model) and OUT/job.json (the job as run; each model's own
ligo_recipe.json says how it was made).
--resume continues whichever stage is unfinished (a finished job, or changed settings, are refused).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from ..config import PLAN_KEYS, DataConfig, GrowthPlan, TrainConfig, fit_share
from ..errors import LigoError
from .flags import add_data_flags, add_fit_flags, add_plan_flags, add_target_flag, add_train_flags, \
    given, parse_target, target_file

DATA_KEYS = {f.name for f in fields(DataConfig)}
JOB_KEYS = {"source", "target", "out", "seed", "seq_len", "batch_size", "fit", "train"} | PLAN_KEYS | DATA_KEYS


def add_parser(sub, name):
    p = sub.add_parser(name, help="grow then train, from flags or a job file", description=__doc__)
    p.add_argument("source", nargs="?", help="source model directory (or 'source' in the job file)")
    p.add_argument("--config", help="job file (YAML or JSON); flags override it")
    add_target_flag(p, required=False)
    p.add_argument("--out", help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (kept until the new run "
                   "finishes)")
    p.add_argument("--resume", action="store_true", help="continue an unfinished run in --out")
    p.add_argument("--device", help="where to grow and fit: cpu or cuda (default: cpu; training itself runs where "
                   "accelerate puts it)")
    add_data_flags(p)
    add_plan_flags(p)
    add_fit_flags(p, steps_help="operator fit steps on --data (default: 0, no fit; or --fit-share)")
    p.add_argument("--fit-share", type=float, help="operator fit length as a share of the training budget's FLOPs, e.g. 0.02 "
                   "(default: no fit; the unfitted operator measured best, see docs/benchmarks.md)")
    add_train_flags(p)
    return p


def load_job(path: str | None) -> dict:
    if not path:
        return {}
    from ..settings import parse_mapping, read_text

    p = Path(path)
    if not p.is_file():
        raise LigoError(f"job file {p} does not exist; check the path")
    data = parse_mapping(read_text(p, "job file"), f"job file {p}", JOB_KEYS)
    for key in ("fit", "train"):
        if key in data and not isinstance(data[key], dict):
            raise LigoError(f"job file {p}: '{key}' must be a mapping of training-config keys")
    return data


def run(args) -> int:
    from ..hf import check_device
    from ..config import FitSpec, inherited
    from ..pipelines import grow_train

    job = load_job(args.config)
    for key in ("source", "target", "out"):
        if getattr(args, key) is not None:
            job[key] = getattr(args, key)
    job.update(given(args, GrowthPlan))
    job.update(given(args, DataConfig))
    data = DataConfig.from_dict({k: job[k] for k in DATA_KEYS if k in job}, where="job data")
    for key in ("source", "target", "out"):
        if key == "target" and job.get("depth_map") is not None and job.get("target") in (None, {}):
            job["target"] = {}  # the depth map says the target's layers (as for ligo grow)
        elif not job.get(key):
            hint = " (or --depth-map, which says the target's layers)" if key == "target" else ""
            raise LigoError(f"no {key} given; pass it as a flag{hint} or put '{key}' in the --config job file")
    inputs = [args.config]  # the job file, and a target file: inputs that --overwrite must never delete
    if not isinstance(job["target"], dict):
        inputs.append(target_file(str(job["target"])))
        job["target"] = parse_target(str(job["target"]))
    flags = given(args, TrainConfig)
    shared = {k: flags.pop(k) if k in flags else job[k] for k in ("seq_len", "batch_size", "seed")
              if k in job or k in flags}
    train_cfg = TrainConfig.from_dict({**shared, **job.get("train", {}), **flags}, where="train")
    fit_values = {**inherited(train_cfg), **job.get("fit", {}),
                  **given(args, TrainConfig, prefix="fit-"), "progress": train_cfg.progress}
    share = fit_values.pop("share", None)
    if args.fit_share is not None:  # the flag over the job's share or steps
        share = args.fit_share
        fit_values.pop("steps", None)
    fit = FitSpec(fit_values, share) if fit_share(share) or fit_values.get("steps") else None
    plan = GrowthPlan.from_dict({**{k: job[k] for k in PLAN_KEYS if k in job}, "seed": train_cfg.seed})
    job.update(seed=train_cfg.seed, seq_len=train_cfg.seq_len, batch_size=train_cfg.batch_size,
                  fit=fit.to_dict() if fit else {"steps": 0}, train=train_cfg.to_dict())
    result = grow_train(job["source"], job["target"], job["out"], plan=plan, fit=fit, train_cfg=train_cfg,
                        data=data, resume=args.resume, overwrite=args.overwrite, job=job,
                        device=check_device(args.device, default_cuda=False), inputs=inputs)
    loop = result.trained.loop
    from ..launch import is_main_process

    if not is_main_process():
        return 0
    print(f"grown model in {result.grown}; trained {loop.steps} steps, held-out loss {loop.final_val:.4f}; "
          f"final model in {result.out / 'trained'}")
    return 0
