"""The API's verbs: ``grow``, ``train`` and ``grow_train``, which ``ligo grow``, ``ligo train`` and ``ligo grow-train``
call (``ligo grow --optimizer-state`` calls :func:`ligo.rungrowth.grow_run`; ``bench``, ``eval``, ``plan``,
``inspect`` and ``demo`` have modules of their own), and the one grow -> fit -> train path they and the
benchmarks share (:func:`grow_and_train`).

Objects pass between the stages in memory (the tokenizer, the token blocks, the FLOPs ledger); disk
is used only for the artifacts. Every output follows one policy (``ligo.outputs``): checked before any
work, never one of the inputs, an existing output replaced only when the new one is complete.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING
from pathlib import Path

import torch


from .checkpoint import load_tokenizer, read_config, write_json
from .config import MAX_SHARD_SIZE, DataConfig, FitSpec, GrowthPlan, TrainConfig
from .errors import LigoError, Preempted, as_user_error
from .growth import GrowResult, Grower
from .launch import check_batch, is_main_process, process_state
from .outputs import RunOutput, writes_out
from .records import GrowthRecord, load_recipe

if TYPE_CHECKING:  # (training is imported where a run trains: growing alone never needs it)
    from .training import Start, TrainResult

JOB_FILE = "job.json"  # grow-train's settings as run, beside OUT/grown and OUT/trained

@dataclass
class GrowTrainResult:
    out: Path
    grown: Path
    trained: TrainResult
    growth: GrowthRecord  # the grown model's recipe (its fit, if any)


@writes_out  # a second process writing the same output is refused while this one works
def grow(source: str | Path, target: dict | str | Path, out: str | Path | None = None, *,
         plan: GrowthPlan | None = None, data: DataConfig | str | Path | None = None, fit: TrainConfig | None = None,
         overwrite: bool = False, max_shard_size: str | int = MAX_SHARD_SIZE, device: str | None = None,
         stream: bool = True, arch: str | None = None, check_blocks: int = 16, check_seq_len: int | None = None,
         dtype: torch.dtype | None = None, inputs=(), **plan_fields) -> GrowResult:
    """Grow ``source`` into ``target`` (sizes or a config); fit the operator first when ``fit`` is given.

    The plan is ``plan``, or its fields as keywords: ``grow(src, {"hidden": 1024}, "out/", width="split")``.
    Without a fit, on the CPU, growth streams (``stream``): the source is read tensor by tensor and each
    shard is written as it fills, so memory stays near one shard; ``stream=False`` gathers the grown model
    in memory first (the same bytes on disk). ``arch``: the table for a model_type ligo has none for. ``dtype``:
    the grown weights' dtype (default: the source's).
    With ``data``, the grown model's loss on ``check_blocks`` held-out blocks of it is measured beside the
    source's before the output is committed (its record's ``start_check``; 0: no check), in blocks of
    ``check_seq_len`` tokens (default: the fit's, else 128, within the model's positions). ``inputs``: other files
    the caller read (a target file, a recipe), which the output must not be or hold.
    """
    from .checkpoint import parse_size
    from .outputs import check_output

    if plan is not None and plan_fields:
        raise LigoError(f"give either plan= or plan fields ({', '.join(plan_fields)}), not both")
    plan = plan or GrowthPlan.from_dict(plan_fields, where="grow()")
    if not isinstance(check_blocks, int) or isinstance(check_blocks, bool) or check_blocks < 0:
        raise LigoError(f"--check-blocks must be a number of blocks, 0 or more (0: no start check), got {check_blocks!r}")
    data = DataConfig.of(data)
    if fit is not None:
        check_batch(fit.batch_size, "the fit's batch_size")
    if out is not None:
        parse_size(max_shard_size)
        check_output(out, overwrite=overwrite, inputs=[source, data.data, *_paths(target), *inputs])
    # without a fit the operator streams on the CPU: the source is read tensor by tensor, shards written as they fill
    grower = Grower(source, target, plan, device=device, stream=stream and fit is None and out is not None,
                    arch=arch, dtype=dtype)
    if fit is not None:
        grower.fit(data, fit)
    check = None
    if out is not None and data.data is not None and check_blocks:  # the start loss, grown vs source
        from .data import load_blocks

        seq_len = check_seq_len or (fit.seq_len if fit else 128)
        seq_len = min(seq_len, grower.source.dims.positions or seq_len)
        blocks = load_blocks(data, grower.tokenizer, seq_len, max_tokens=40 * check_blocks * seq_len)
        check = blocks.val[:check_blocks]
    path = None
    if out is not None:  # under a multi-process launch (a data-parallel fit), the main process writes it
        with process_state().main_process_first():
            path = grower.save(out, overwrite, max_shard_size, check=check) if is_main_process() else Path(out)
    return grower.result(path)


def _paths(target) -> list:
    """A target given as a file (a config.json or its folder) is an input: never inside the output."""
    return [target] if isinstance(target, (str, Path)) else []


def grow_and_train(source: str | Path, target: dict | str | Path, job: Path, plan: GrowthPlan | None,
                   train_cfg: TrainConfig, fit: FitSpec | None = None, *, data: DataConfig | None = None,
                   start: Start, resume: bool = False, device: str | None = None
                   ) -> tuple[TrainResult, GrowthRecord]:
    """The one grow -> fit -> train path, for ``ligo grow-train`` and every grown method of ``ligo bench``.

    Grows ``source`` (fitting the operator when ``fit`` is given) into ``job/grown``, unless a finished
    grown model is already there, then trains it into ``job/trained``. ``train_cfg.steps`` is the whole
    budget: the fit's FLOPs come out of it, so the training run gets the steps left (the fair protocol of
    the benchmarks). ``start`` carries what the caller holds (tokenizer, blocks, a loaded source in
    ``start.prior`` is not used). Returns the training result and the grown model's record.
    """
    import shutil

    from .flops import step_flops
    from .hf import meta_model
    from .rundir import latest_checkpoint
    from .training import Model, train_in

    grown, trained = job / "grown", job / "trained"
    record = load_recipe(grown) if (grown / "config.json").exists() else None
    if isinstance(record, GrowthRecord):  # grown (and fitted) before a stop
        model = Model.of(grown, None)
    else:
        grower = Grower(source, target, plan, device=device, tokenizer=start.tokenizer)
        if fit is not None:  # every process of a launch fits (one data-parallel fit)
            cfg = fit.config(grower, train_cfg)
            same = cfg.seq_len == train_cfg.seq_len and start.blocks is not None
            grower.fit(data, cfg, blocks=start.blocks if same else None)
        with process_state().main_process_first():  # the grown model is written once, by the first process
            if not (grown / "config.json").exists():
                grower.save(grown, overwrite=True)
        record = grower.record()
        model = Model(grown, read_config(grown), grower.spec, grower.target_dims, record)  # as the grower knows it
    fit_flops = record.fit.flops if record.fit else 0.0
    steps = train_cfg.steps
    if fit_flops:
        per_step = step_flops(meta_model(model.spec.objective, model.config), model.dims, train_cfg)
        steps -= math.ceil(fit_flops / per_step)
        if steps < 1:
            raise LigoError("the operator fit costs more than the whole training budget; use a smaller fit share "
                            "or more training steps")
    resume = resume and latest_checkpoint(trained) is not None
    if not resume and is_main_process():
        shutil.rmtree(trained, ignore_errors=True)  # what a stop before the first checkpoint left
    result = train_in(trained, model, DataConfig.of(data), train_cfg.replace(steps=steps),
                      replace(start, prior=record.carried_ledger()), resume=resume)
    return result, record


def grow_train(source: str | Path, target: dict | str | Path, out: str | Path, *, plan: GrowthPlan | None = None,
               fit: FitSpec | None = None, train_cfg: TrainConfig, data: DataConfig | str | Path | None = None,
               resume: bool = False, overwrite: bool = False, job: dict | None = None,
               device: str | None = None, inputs=()) -> GrowTrainResult:
    """Grow (and fit), then train the grown model: ``OUT/grown``, ``OUT/trained`` and ``OUT/job.json`` (``job``: the
    settings as run, which a resume must match).

    ``train_cfg.steps`` is the whole budget, the fit's FLOPs included (see :func:`grow_and_train`).
    ``--resume`` continues whichever stage is unfinished: it grows again if the grown model is not
    complete, resumes training from its newest checkpoint, or starts training if there is none; a job
    that finished, or one started with settings other than ``job``, is refused. The plan's ``auto`` fields are
    resolved from the source's training (see :meth:`GrowthPlan.resolved`). ``inputs``: other files the caller
    read (a target file, the job file), which the output must not be or hold.
    """
    from .data import load_blocks, tokens_to_read
    from .rundir import latest_checkpoint
    from .training import Start

    data = DataConfig.of(data)
    check_batch(train_cfg.batch_size)  # before any work: a batch the processes cannot share fails here, on every rank
    if fit is not None:
        check_batch(fit.settings.get("batch_size", TrainConfig.batch_size), "the fit's batch_size")
    output = RunOutput(out, overwrite=overwrite, resume=resume, inputs=[source, data.data, *_paths(target), *inputs])
    try:
        if resume:
            _check_job(output.work, job)
        tokenizer = load_tokenizer(source)
        # read the data once, before any work, so bad data fails fast and leaves nothing behind
        blocks = load_blocks(data, tokenizer, train_cfg.seq_len, max_tokens=tokens_to_read(train_cfg))
        try:
            output.open()
            if not (output.work / JOB_FILE).exists():
                write_json(output.work / JOB_FILE, job or {})
            result, growth = grow_and_train(source, target, output.work, plan, train_cfg, fit, data=data,
                                            start=Start(tokenizer=tokenizer, blocks=blocks), resume=resume,
                                            device=device)
        except BaseException as exc:
            # a failure before the first training checkpoint leaves nothing behind; after it, the work is kept
            if latest_checkpoint(output.work / "trained") is None:
                output.discard()
            if isinstance(exc, Exception) and not isinstance(exc, (LigoError, Preempted)):
                error = as_user_error(exc, "grow-train")
                if error is not None:
                    raise error from None
            raise
        output.commit()
        return GrowTrainResult(output.final, output.final / "grown", result, growth)
    finally:
        output.release()


def _check_job(folder: Path, job: dict | None) -> None:
    """--resume of a grow-train job: refuse a finished one, and one started with other settings."""
    if (folder / "trained" / "config.json").exists():
        raise LigoError(f"--resume: the job in {folder} has finished (its trained model is there); use --overwrite "
                        "to run it again, or another --out")
    try:  # (jobs of ligo 0.2 wrote recipe.json)
        path = folder / JOB_FILE if (folder / JOB_FILE).exists() else folder / "recipe.json"
        before = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    changed = sorted(k for k in set(before) | set(job or {}) if k not in ("out",) and
                     before.get(k) != (job or {}).get(k))
    if job is not None and changed:
        raise LigoError(f"--resume: the job in {folder} was started with other settings ({', '.join(changed)} changed); "
                        "give the same ones, or --overwrite to start it again")
