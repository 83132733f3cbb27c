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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .checkpoint import check_tokenizer_fits, describe_checkpoint, load_tokenizer, read_config, write_json
from .config import MAX_SHARD_SIZE, DataConfig, GrowthPlan, TrainConfig
from .errors import LigoError, Preempted, as_user_error
from .growth import GrowResult, Grower
from .hf import build_config, model_class
from .moe import train_router
from .data import tokens_to_read
from .launch import check_batch, is_main_process, process_state
from .loop import LoopResult, make_collate, train_loop
from .outputs import RunOutput
from .records import Ledger, Recipe, carried_ledger
from .rundir import MANIFEST, data_digest, latest_checkpoint

@dataclass
class TrainResult:
    out: Path
    loop: LoopResult
    ledger: Ledger


@dataclass
class GrowTrainResult:
    out: Path
    grown: Path
    trained: TrainResult
    fit: dict | None = field(default=None)


def grow(source: str | Path, target: dict | str | Path, out: str | Path | None = None, *,
         plan: GrowthPlan | None = None, data: DataConfig | str | Path | None = None, fit: TrainConfig | None = None,
         overwrite: bool = False, max_shard_size: str | int = MAX_SHARD_SIZE, device: str | None = None,
         stream: bool = True, arch: str | None = None, check_blocks: int = 16, check_seq_len: int | None = None,
         inputs=(), **plan_fields) -> GrowResult:
    """Grow ``source`` into ``target`` (sizes or a config); fit the operator first when ``fit`` is given.

    The plan is ``plan``, or its fields as keywords: ``grow(src, {"hidden": 1024}, "out/", width="split")``.
    Without a fit, on the CPU, growth streams (``stream``): the source is read tensor by tensor and each
    shard is written as it fills, so memory stays near one shard; ``stream=False`` gathers the grown model
    in memory first (the same bytes on disk). ``arch``: the table for a model_type ligo has none for.
    With ``data``, the grown model's loss on ``check_blocks`` held-out blocks of it is measured beside the
    source's before the output is committed (``recipe["start_check"]``; 0: no check), in blocks of
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
    grower = Grower(source, target, plan, device=device, stream=stream and fit is None and out is not None, arch=arch)
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
    return GrowResult(path, grower.operator, grower.target_config, grower.recipe(), grower.fit_result, grower.timings,
                      grower.tokenizer_files)


def _paths(target) -> list:
    """A target given as a file (a config.json or its folder) is an input: never inside the output."""
    return [target] if isinstance(target, (str, Path)) else []


def _manifest(output: RunOutput, model, from_config, tokenizer, data) -> tuple:
    """With --resume and no model given, what the run was started with (from its run.json)."""
    if model is not None or from_config is not None:
        return model, from_config, tokenizer, data
    try:
        m = json.loads((output.work / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        raise LigoError(f"give a model directory or --from-config (the run in {output.final} has no readable "
                        f"{MANIFEST} to resume from)") from None
    saved = m.get("data")
    if data.data is None and saved:
        data = DataConfig.from_dict(saved) if isinstance(saved, dict) else DataConfig.of(saved)
    return m.get("model"), m.get("from_config"), tokenizer or m.get("tokenizer"), data


@dataclass
class Start:
    """How a training run starts besides its checkpoint, and what its caller already holds in memory."""

    from_config: str | Path | dict | None = None  # train from scratch: a config.json (or a config mapping)
    tokenizer: Any = None  # a tokenizer directory, or the tokenizer itself (default: the model directory's)
    attn_implementation: str | None = None
    stages: list = field(default_factory=list)  # mid-run growth (:class:`ligo.config.GrowthStage`)
    blocks: Any = None  # the token blocks, already read (default: read from ``data``)
    prior: Ledger | None = None  # the FLOPs already spent (default: from the model's recipe)
    source_card: dict | None = None  # the growth recipe for the model card (default: the model's own)


def train(model: str | Path | None, data: DataConfig | str | Path | None, out: str | Path, cfg: TrainConfig,
          start: Start | None = None, *, resume: bool = False, overwrite: bool = False, inputs=()) -> TrainResult:
    """Continue pretraining ``model`` (a checkpoint dir), or train ``start.from_config`` from scratch, into ``out``.

    ``out`` receives ``run.json``, ``log.jsonl``, ``checkpoints/`` and, at the end, the trained model
    (config.json last, so a directory with a config.json always holds a complete model). ``start.stages``
    grow the model in the middle of the run: after step ``at`` the checkpoint is grown (weights and
    optimizer state) and training continues as the grown model, with one log and one FLOPs ledger.
    SIGTERM or Ctrl-C checkpoints the step in progress and raises :class:`ligo.errors.Preempted`;
    ``resume=True`` continues from wherever a stop or a kill left the run. ``inputs``: other files the caller
    read (a stages file), which the output must not be or hold.
    """
    start = start or Start()
    tokenizer = start.tokenizer if isinstance(start.tokenizer, (str, Path)) or start.tokenizer is None else None
    tokenizer_obj = None if tokenizer is not None or start.tokenizer is None else start.tokenizer
    from_config, blocks, prior = start.from_config, start.blocks, start.prior
    from .data import load_blocks
    from .flops import step_flops
    from .rundir import read_state
    from .rungrowth import grow_in_place

    cfg_path = None if isinstance(from_config, dict) else from_config
    data = DataConfig.of(data)
    check_batch(cfg.batch_size)
    output = RunOutput(out, overwrite=overwrite, resume=resume,
                       inputs=[model, cfg_path, tokenizer, data.data, *inputs])
    try:
        if resume and latest_checkpoint(output.work) is None:
            raise LigoError(f"--resume: {output.final} holds no complete checkpoint; start without --resume")
        model, from_config, tokenizer, data = _manifest(output, model, from_config, tokenizer, data) if resume else (
            model, from_config, tokenizer, data)
        if (model is None) == (from_config is None):
            raise LigoError("give either a model directory or --from-config (a config for training from scratch)")
        spec, dims, config = _describe(model, from_config, cfg_path)
        if model is not None:
            tok_dir = Path(tokenizer or model)
            prior = prior or carried_ledger(model)
        else:
            if tokenizer is None and tokenizer_obj is None:
                raise LigoError("--from-config needs --tokenizer DIR (a directory with the tokenizer files)")
            tok_dir = Path(tokenizer) if tokenizer else None
            prior = prior or Ledger()
        stages = sorted(start.stages, key=lambda st: st.at)
        _check_stages(stages, spec, config, cfg)
        tok = tokenizer_obj or load_tokenizer(tok_dir)
        check_tokenizer_fits(tok, dims.vocab, tok_dir or "the run")
        if dims.positions is not None and cfg.seq_len > dims.positions:
            raise LigoError(f"seq_len {cfg.seq_len} exceeds the model's {dims.positions} positions; lower --seq-len")
        if blocks is None:  # with streaming, read only what the run will use (and its held-out share)
            blocks = load_blocks(data, tok, cfg.seq_len, max_tokens=tokens_to_read(cfg))
        offset = prior.spent
        manifest = {"ligo_version": __version__, "model": None if model is None else str(model),
                    "from_config": str(cfg_path) if cfg_path else None, "tokenizer": str(tok_dir) if tok_dir else None,
                    "data": data.to_dict(), "stages": [st.to_dict() for st in stages],
                    "config": config if isinstance(from_config, dict) else None}  # a config given as a mapping
        collate, digest = make_collate(spec.objective, tok), data_digest(blocks.train, blocks.val)
        output.open()
        try:
            while True:  # one phase per model size; a phase ends at the next stage's step
                ck = latest_checkpoint(output.work) if resume else None
                state = read_state(ck) if ck else {}
                done, current = state.get("stages_done", []), state.get("model") or model
                upcoming = next((st for st in stages if st.at not in done), None)
                if upcoming is not None and state.get("step", 0) >= upcoming.at:  # paused there, not grown yet
                    grow_in_place(output.work, upcoming.target, upcoming.plan(cfg.seed),
                                  optimizer_state=upcoming.optimizer_state, fit=_stage_fit(upcoming, cfg),
                                  blocks=blocks,
                                  info={"stages_done": [*done, upcoming.at]})
                    resume = True
                    continue
                net_spec, net_dims, net_config = _describe(current, from_config if current is None else None, cfg_path)
                net = _build_model(net_spec, current, net_config, cfg, start.attn_implementation)
                per_step = step_flops(net, net_dims, cfg)
                result = train_loop(net, blocks.train, blocks.val, cfg, collate=collate, flops_per_step=per_step,
                                    flops_offset=offset, run_dir=output.work, resume=resume, desc="train",
                                    data_digest=digest, manifest=manifest, stop_at=upcoming.at if upcoming else None,
                                    checkpoint_info={"model": None if current is None else str(current),
                                                     "stages_done": done})
                if result.status != "paused":
                    break
                resume = True
        except BaseException:
            if latest_checkpoint(output.work) is None:  # nothing worth resuming: leave nothing behind
                output.discard()
            raise
        ledger = prior.after_run(result.flops - offset, flops_per_step=per_step, steps=result.steps, wall_s=result.wall,
                                 final_val_loss=result.final_val, throughput=result.throughput)
        if result.status == "preempted":
            raise Preempted(output.work, result.steps)
        from .modelcard import data_name, model_name

        recipe = {"ligo_version": __version__, "kind": "train", "objective": spec.objective,
                  "model_type": spec.model_type, "model": model_name(model, config if model else None),
                  "from_config": manifest["from_config"] or ("<dict>" if from_config is not None else None),
                  "data": data_name(data), "data_config": {**data.to_dict(), "data": data_name(data)},
                  "config": cfg.to_dict(),
                  "stages": manifest["stages"], "ledger": ledger.to_dict()}
        before = Recipe.load(current)
        _finish(result, tok, output, Recipe(recipe), start.source_card or (before.growth if before else None))
        return TrainResult(output.final, result, ledger)
    finally:
        output.release()


def _finish(result: LoopResult, tokenizer, output: RunOutput, recipe: Recipe, growth: dict | None) -> None:
    """Save the trained model (rank 0; the state gathered from every rank) and commit the output."""
    acc = result.accelerator
    acc.wait_for_everyone()
    state = acc.get_state_dict(result.model)
    if is_main_process():
        _save_final(acc.unwrap_model(result.model), state, tokenizer, output.work, recipe, growth)
        output.commit()
    acc.wait_for_everyone()


def _describe(model, from_config, cfg_path):
    """(spec, dims, config) of a model folder (headers only) or of a config for training from scratch."""
    from .arch import get_spec

    if model is not None:
        ck = describe_checkpoint(model)  # validates without reading the weights: from_pretrained reads them once
        if not ck.has_head:
            raise LigoError(f"{model} is a bare model without an LM head; train its *ForCausalLM/*ForMaskedLM form")
        return ck.spec, ck.dims, ck.config
    config = from_config if isinstance(from_config, dict) else read_config(from_config)
    if not config.get("model_type"):
        raise LigoError(f"the config {cfg_path or ''} has no model_type; --from-config needs a full config.json, "
                        "such as the grown model's")
    spec = get_spec(config.get("model_type"))
    return spec, spec.dims(config), config


def _check_stages(stages: list, spec, config: dict, cfg: TrainConfig) -> None:
    """Mid-run growth stages checked before any training: inside the run, in order, valid targets."""
    from .hf import known_config_keys
    from .operator import check_growth
    from .rungrowth import check_live_growth

    before, current = 0, config
    for st in stages:
        if not 0 < st.at < cfg.steps or st.at <= before:
            raise LigoError(f"growth stage at step {st.at} must lie inside the run (1..{cfg.steps - 1}) and after the "
                            "previous stage")
        if not st.target:
            raise LigoError(f"growth stage at step {st.at} has no target; give --grow-target")
        check_live_growth(spec, st.target, f"growth stage at step {st.at}")
        grown = spec.target_config(current, st.target, known_config_keys(spec.model_type))
        check_growth(spec, spec.dims(current), spec.dims(grown, where="growth stage target"))
        before, current = st.at, grown


def _stage_fit(stage, cfg: TrainConfig) -> TrainConfig | None:
    from .config import fit_config

    return fit_config({"steps": stage.fit_steps, "lr": stage.fit_lr, "seq_len": cfg.seq_len,
                       "batch_size": cfg.batch_size, "seed": cfg.seed, "mixed_precision": cfg.mixed_precision,
                       "progress": cfg.progress}, where="growth stage fit")


def _build_model(spec, model, config: dict, cfg: TrainConfig, attn_implementation: str | None):
    cls = model_class(spec.objective)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if model is not None:
        from .checkpoint import check_finite

        net = cls.from_pretrained(str(model), dtype=torch.float32, use_safetensors=True, trust_remote_code=False,
                                  local_files_only=True, **kwargs)
        check_finite(dict(net.named_parameters()), Path(model))
        train_router(net)
        return net
    torch.manual_seed(cfg.seed)
    hf_config = build_config(config)
    if attn_implementation:
        hf_config._attn_implementation = attn_implementation
    net = cls.from_config(hf_config)
    train_router(net)
    return net


def _save_final(model, state: dict, tokenizer, out: Path, recipe: Recipe, growth: dict | None) -> None:
    """Write the trained model into its run folder (config.json last), or say in one line what failed and
    whether a checkpoint is left to resume from."""
    from .writer import write_model

    try:
        write_model(out, weights=lambda folder: model.save_pretrained(folder, state_dict=state, safe_serialization=True),
                    config=None, tokenizer=tokenizer, recipe=recipe, growth=growth, into_run=True)
    except Exception as exc:
        error = as_user_error(exc, f"saving the model into {out}")
        if error is None:
            raise
        if latest_checkpoint(out) is not None:
            raise LigoError(f"{error} with --resume (the checkpoints are intact)") from None
        raise LigoError(f"{error}; no checkpoint was kept to resume from (--save-every N keeps them), so run it "
                        "again") from None


def grow_and_train(source: str | Path, target: dict | str | Path, job: Path, plan: GrowthPlan | None,
                   train_cfg: TrainConfig, fit: FitSpec | None = None, *, data: DataConfig | None = None,
                   start: Start, resume: bool = False, device: str | None = None) -> tuple[TrainResult, dict]:
    """The one grow -> fit -> train path, for ``ligo grow-train`` and every grown method of ``ligo bench``.

    Grows ``source`` (fitting the operator when ``fit`` is given) into ``job/grown``, unless a finished
    grown model is already there, then trains it into ``job/trained``. ``train_cfg.steps`` is the whole
    budget: the fit's FLOPs come out of it, so the training run gets the steps left (the fair protocol of
    the benchmarks). ``start`` carries what the caller holds (tokenizer, blocks, a loaded source in
    ``start.prior`` is not used). Returns the training result and the grown model's recipe.
    """
    from .flops import step_flops
    from .hf import meta_model

    grown, trained = job / "grown", job / "trained"
    before = Recipe.load(grown) if (grown / "config.json").exists() else None
    if before is not None:  # grown (and fitted) before a stop
        growth = before.fields
    else:
        grower = Grower(source, target, plan, device=device, tokenizer=start.tokenizer)
        if fit is not None:  # every process of a launch fits (one data-parallel fit)
            cfg = fit.config(grower, train_cfg)
            same = cfg.seq_len == train_cfg.seq_len and start.blocks is not None
            grower.fit(data, cfg, blocks=start.blocks if same else None)
        with process_state().main_process_first():  # the grown model is written once, by the first process
            if not (grown / "config.json").exists():
                grower.save(grown, overwrite=True)
        growth = grower.recipe()
    fit_flops = (growth.get("fit") or {}).get("flops", 0.0)
    steps = train_cfg.steps
    if fit_flops:
        config = read_config(grown)
        spec = describe_checkpoint(grown).spec
        steps -= math.ceil(fit_flops / step_flops(meta_model(spec.objective, config), spec.dims(config), train_cfg))
        if steps < 1:
            raise LigoError("the operator fit costs more than the whole training budget; use a smaller fit share "
                            "or more training steps")
    prior = Ledger(fit_flops=fit_flops)
    result = train(grown, data, trained, train_cfg.replace(steps=steps),
                   replace(start, prior=prior, source_card=growth),
                   resume=resume and latest_checkpoint(trained) is not None, overwrite=True)
    return result, growth


def grow_train(source: str | Path, target: dict | str | Path, out: str | Path, *, plan: GrowthPlan | None = None,
               fit: FitSpec | None = None, train_cfg: TrainConfig, data: DataConfig | str | Path | None = None,
               resume: bool = False, overwrite: bool = False, recipe: dict | None = None,
               device: str | None = None, inputs=()) -> GrowTrainResult:
    """Grow (and fit), then train the grown model: ``OUT/grown``, ``OUT/trained`` and ``OUT/recipe.json``.

    ``train_cfg.steps`` is the whole budget, the fit's FLOPs included (see :func:`grow_and_train`).
    ``--resume`` continues whichever stage is unfinished: it grows again if the grown model is not
    complete, resumes training from its newest checkpoint, or starts training if there is none; a job
    that finished, or one whose recipe differs from ``recipe``, is refused. The plan's ``auto`` fields are
    resolved from the source's training (see :meth:`GrowthPlan.resolved`). ``inputs``: other files the caller
    read (a target file, the recipe file), which the output must not be or hold.
    """
    from .data import load_blocks

    data = DataConfig.of(data)
    check_batch(train_cfg.batch_size)  # before any work: a batch the processes cannot share fails here, on every rank
    if fit is not None:
        check_batch(fit.settings.get("batch_size", TrainConfig.batch_size), "the fit's batch_size")
    output = RunOutput(out, overwrite=overwrite, resume=resume, inputs=[source, data.data, *_paths(target), *inputs])
    try:
        if resume:
            _check_job(output.work, recipe)
        tokenizer = load_tokenizer(source)
        # read the data once, before any work, so bad data fails fast and leaves nothing behind
        blocks = load_blocks(data, tokenizer, train_cfg.seq_len, max_tokens=tokens_to_read(train_cfg))
        try:
            output.open()
            if not (output.work / "recipe.json").exists():
                write_json(output.work / "recipe.json", recipe or {})
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
        return GrowTrainResult(output.final, output.final / "grown", result, growth.get("fit"))
    finally:
        output.release()


def _check_job(job: Path, recipe: dict | None) -> None:
    """--resume of a grow-train job: refuse a finished one, and one started with other settings."""
    if (job / "trained" / "config.json").exists():
        raise LigoError(f"--resume: the job in {job} has finished (its trained model is there); use --overwrite to "
                        "run it again, or another --out")
    try:
        before = json.loads((job / "recipe.json").read_text())
    except (OSError, json.JSONDecodeError):
        return
    changed = sorted(k for k in set(before) | set(recipe or {}) if k not in ("out",) and
                     before.get(k) != (recipe or {}).get(k))
    if recipe is not None and changed:
        raise LigoError(f"--resume: the job in {job} was started with other settings ({', '.join(changed)} changed); "
                        "give the same ones, or --overwrite to start it again")
