"""Growing a live training run: a checkpoint's weights and AdamW state through one operator.

The newest checkpoint of a ``ligo train`` run becomes a checkpoint of the grown model that
``ligo train --resume`` continues, with the log, the FLOPs ledger, the step counters, the schedule
position and the RNG states carried over:

* weights: the operator, exactly as ``ligo grow`` applies it to a finished model;
* first moments m: the operator applied to the source's m (linear, like the weights);
* second moments v: ``v' = (|Op|(sqrt v) / |Op|(1))**2`` -- the operator with the absolute values of its
  maps applied to sqrt(v), normalised by the same applied to ones. It is non-negative by construction,
  and where a grown weight is ``a * W`` of one source weight (a Net2Net copy, a split share, a stacked
  layer) it gives ``v' = v`` and ``m' = a m``: the Adam update of the grown weight is ``a`` times the
  source's, so the update keeps its size relative to the weight. For mixtures it is the
  coefficient-weighted mean of the sources' sqrt(v). Entries the operator sets to zero (the new
  layers' output projections under identity depth) start with ``m = v = 0``;
* ``optimizer_state="reset"``: a fresh AdamW state (no moments, step counts from zero) at the same
  schedule position.

A sharded run's checkpoint (``--fsdp``) is read whole in one process (its shards gathered: that process holds the
model and its AdamW state, then the grown ones) and the grown checkpoint is written sharded again, as one shard,
which a launch of any size resumes (:mod:`ligo.sharding`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .checkpoint import Checkpoint, load_tokenizer, read_config
from .records import GrowthRecord, Ledger
from .writer import save_weights, write_model
from .config import GrowthPlan, GrowthStage, TrainConfig
from .errors import LigoError
from .sharding import SHARDS
from .outputs import writes_out
from .rundir import CARRIED_PREFIXES, CHECKPOINTS, LOG_FILE, MANIFEST, MASTERS_FILE, OPTIMIZER_FILE, STATE_FILE, WEIGHTS_FILE, file_digests, check_pickles, latest_checkpoint, \
    read_state

OPTIMIZER_STATES = ("grow", "reset")


def _torch_load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def open_run(run_dir: Path) -> tuple[Path, dict, dict]:
    """(newest complete checkpoint, its trainer state, the run's manifest), all checked."""
    run_dir = Path(run_dir)
    if not (run_dir / MANIFEST).exists() and not (run_dir / CHECKPOINTS).is_dir():
        raise LigoError(f"{run_dir} is not a ligo train run directory (no {MANIFEST}, no {CHECKPOINTS}/); pass the "
                        "--out folder of a `ligo train` run")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        partial = sorted((run_dir / CHECKPOINTS).glob(".step-*")) if (run_dir / CHECKPOINTS).is_dir() else []
        raise LigoError(f"{run_dir} holds no complete checkpoint" + (" (one is being written or was cut short)"
                                                                    if partial else "") +
                        "; train it with --save-every N first, or wait for its checkpoint")
    state = read_state(ckpt)
    check_pickles(ckpt)
    try:
        manifest = json.loads((run_dir / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        manifest = {}
    return ckpt, state, manifest


def _model_dir(run_dir: Path, state: dict, manifest: dict) -> Path | None:
    """The HF folder whose config (and tokenizer) the checkpoint's weights belong to."""
    for candidate in (state.get("model"), manifest.get("model")):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def run_config(run_dir: Path, state: dict, manifest: dict) -> dict:
    model_dir = _model_dir(run_dir, state, manifest)
    if model_dir is not None:
        return read_config(model_dir)
    if manifest.get("from_config"):
        return read_config(manifest["from_config"])
    if isinstance(manifest.get("config"), dict):
        return manifest["config"]
    raise LigoError(f"cannot tell which model the run in {run_dir} trains (its {MANIFEST} names no readable model or "
                    "config); it was not written by this version of ligo")


def _slots(state: dict, config: dict, spec, weight_decay: float) -> list[list[str]]:
    """The parameter name of every optimizer slot: recorded in the checkpoint, or rebuilt for old ones."""
    if state.get("param_names"):
        return state["param_names"]
    from .hf import meta_model
    from .loop import param_groups

    model = meta_model(spec.objective, config)
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in param_groups(model, weight_decay)]


def grow_checkpoint(run_dir: Path, target: dict, plan: GrowthPlan | None = None, *, optimizer_state: str = "grow",
                    fit: TrainConfig | None = None, blocks=None, data=None) -> "GrownRun":
    """Grow the newest checkpoint of ``run_dir``: the grown model and the grown run's state, to write."""
    from .tables import get_spec
    from .growth import Grower
    from .modelcard import model_name

    if optimizer_state not in OPTIMIZER_STATES:
        raise LigoError(f"--optimizer-state must be grow or reset, got {optimizer_state!r}")
    ckpt, state, manifest = open_run(run_dir)
    config = run_config(run_dir, state, manifest)
    spec = get_spec(config.get("model_type"))
    check_live_growth(spec, target, run_dir)
    cfg = state.get("config") or {}
    if optimizer_state == "grow" and cfg.get("optimizer") == "muon":
        raise LigoError(f"{run_dir} trains with Muon, whose momentum of a weight matrix is no per-unit quantity the "
                        "operator can grow as it grows AdamW's moments; grow it with --optimizer-state reset")
    sharded = (ckpt / SHARDS).is_dir()
    if not sharded and not (ckpt / WEIGHTS_FILE).exists():
        raise LigoError(f"{ckpt} has no {WEIGHTS_FILE}; only single-file checkpoints of `ligo train` can be grown")
    from .checkpoint import check_finite, read_weights, weights_dtype

    if sharded:
        weights, optim, slots = _read_sharded(ckpt, config, spec)
    else:
        weights = read_weights(ckpt)
        optim = _torch_load(ckpt / OPTIMIZER_FILE) if (ckpt / OPTIMIZER_FILE).exists() else None
        slots = _slots(state, config, spec, cfg.get("weight_decay", 0.1))
    masters = _torch_load(ckpt / MASTERS_FILE) if (ckpt / MASTERS_FILE).exists() else None
    dims = spec.dims(config)
    layout = spec.layout(weights.keys(), dims, config)
    check_finite(weights, ckpt, layout)
    by_slot = [n for group in slots for n in group]
    if masters is not None:  # bf16 weights with fp32 masters: the masters are the precise weights
        weights = {**weights, **dict(zip(by_slot, masters["masters"]))}
    source = Checkpoint(ckpt, config, spec, dims, weights, layout, weights_dtype(weights, layout, config),
                        has_head=True)
    model_dir = _model_dir(run_dir, state, manifest)
    plan = plan or GrowthStage().plan()
    grower = Grower(source, target, plan, tokenizer=load_tokenizer(model_dir) if model_dir and fit else None)
    fit_flops = 0.0
    if fit is not None:
        grower.fit(data, cfg=fit, blocks=blocks)  # data: what the fit's blocks were read from (recorded)
        fit_flops = grower.fit_record.flops
    op = grower.operator
    grown = op.materialize(dtype=grower.dtype)
    # the run's source: the model it trained (its checkpoint folder is no model's name), and the run's name
    record = grower.record().replace(source=model_name(model_dir or run_dir, config), run=model_name(run_dir),
                                     step=state["step"], optimizer_state=optimizer_state,
                                     ledger=Ledger(fit_flops=fit_flops, train_flops=state["flops"]))
    new_slots = _slots({}, grower.target_config, spec, cfg.get("weight_decay", 0.1))
    if optimizer_state == "grow":
        if optim is None:
            raise LigoError(f"{ckpt} has no optimizer state to grow; pass --optimizer-state reset")
        optimizer = _grow_optimizer(op, optim, by_slot, new_slots)
    else:
        groups = optim["param_groups"] if optim else [{} for _ in new_slots]
        optimizer = {"state": {}, "param_groups": _reindex(groups, new_slots)}
    grown_masters = None
    if masters is not None:
        full = op.materialize(dtype=torch.float32)
        grown_masters = {"masters": [full[n] for group in new_slots for n in group]}
    return GrownRun(grown, grower.hf_config(), grower.target_config, spec, record, model_dir, optimizer,
                    {**state, "flops": state["flops"] + fit_flops, "param_names": new_slots}, fit_flops,
                    grown_masters, sharded)


@dataclass
class GrownRun:
    """A training run's newest checkpoint, grown: the model (weights, config, recipe) and the run's state
    (AdamW state, fp32 master weights when the run keeps bf16 weights, the trainer state)."""

    state: dict  # the grown weights
    config: Any  # the grown model's transformers config
    target_config: dict
    spec: Any
    record: GrowthRecord
    model_dir: Path | None  # the run's model folder (its tokenizer)
    optimizer: dict
    trainer_state: dict
    fit_flops: float
    masters: dict | None = None
    sharded: bool = False  # the run trains sharded (--fsdp): its grown checkpoint is written as shards too


def check_live_growth(spec, target: dict, where) -> None:
    """A live run (its checkpoint: weights and optimizer state) grows as a dense model into a dense model."""
    from .moe import upcycle_table

    if "experts" in spec.config or upcycle_table(spec, target) is not None:
        raise LigoError(f"{where}: growing a live run of a mixture of experts, or into one, is not supported (a run's "
                        "checkpoint holds the experts as transformers does, fused); let the run finish, grow its "
                        "final model with `ligo grow`, and continue with `ligo train`")


def _reindex(groups: list[dict], slots: list[list[str]]) -> list[dict]:
    if len(groups) != len(slots):
        raise LigoError("the checkpoint's optimizer groups do not match the model's parameter groups; grow the run "
                        "with --optimizer-state reset")
    out, i = [], 0
    for g, names in zip(groups, slots):
        out.append({**{k: v for k, v in g.items() if k != "params"}, "params": list(range(i, i + len(names)))})
        i += len(names)
    return out


def _grow_optimizer(op, optim: dict, old_slots: list[str], new_slots: list[list[str]]) -> dict:
    """AdamW moments through the operator: m linearly, v by the rule in the module's docstring."""
    per_name = {old_slots[int(i)]: s for i, s in optim["state"].items()}
    missing = [k for k, _ in op.singles if k not in per_name] + [
        key for e in op.layer_entries if (key := op.spec.layer_key(op.prefix, e, op.src_rows(e)[0])) not in per_name]
    if missing:
        raise LigoError(f"the checkpoint's optimizer has no moments for {missing[:3]} (was it saved before the first "
                        "step?); grow the run with --optimizer-state reset")
    m = op.materialize(dtype=torch.float32, state={k: s["exp_avg"] for k, s in per_name.items()})
    root_v = op.materialize(dtype=torch.float32, absolute=True,
                            state={k: s["exp_avg_sq"].float().clamp_min(0).sqrt() for k, s in per_name.items()})
    norm = op.materialize(dtype=torch.float32, absolute=True,
                          state={k: torch.ones_like(s["exp_avg_sq"], dtype=torch.float32) for k, s in per_name.items()})
    step = next(iter(per_name.values()))["step"]
    state, i = {}, 0
    for names in new_slots:
        for name in names:
            v = torch.where(norm[name] > 0, root_v[name] / norm[name].clamp_min(1e-30), torch.zeros_like(norm[name]))
            dtype = per_name[next(iter(per_name))]["exp_avg"].dtype
            state[i] = {"step": step.clone(), "exp_avg": m[name].to(dtype), "exp_avg_sq": (v * v).to(dtype)}
            i += 1
    return {"state": state, "param_groups": _reindex(optim["param_groups"], new_slots)}


def _read_sharded(ckpt: Path, config: dict, spec) -> tuple[dict, dict, list[list[str]]]:
    """A sharded checkpoint as an unsharded one reads: (weights without tied copies, the optimizer state by slot
    index, the parameter name of every slot)."""
    from .sharding import SHARDS, read_shards

    weights, optim = read_shards(ckpt / SHARDS)
    aliases = _tied_aliases(config, spec)
    weights = {k: v for k, v in weights.items() if k not in aliases}
    slots = [list(g["params"]) for g in optim["param_groups"]]
    names = [n for group in slots for n in group]
    state = {i: optim["state"][n] for i, n in enumerate(names) if n in optim["state"]}
    return weights, {"state": state, "param_groups": _reindex(optim["param_groups"], slots)}, slots


def _tied_aliases(config: dict, spec) -> dict[str, str]:
    """The second names of tied weights (a tied head's ``lm_head.weight``) -> the name the parameter goes by."""
    from .hf import meta_model

    model = meta_model(spec.objective, config)
    first = {id(p): n for n, p in reversed(list(model.named_parameters(remove_duplicate=False)))}
    return {n: first[id(p)] for n, p in model.named_parameters(remove_duplicate=False) if first[id(p)] != n}


def _write_sharded(grown: GrownRun, dest: Path) -> None:
    """The grown weights and optimizer state as the shards a sharded run resumes from (tied weights under each of
    their names, the optimizer state by parameter name, as torch's distributed state dict holds them)."""
    from .sharding import SHARDS, write_shards

    weights = {k: v.contiguous() for k, v in grown.state.items()}
    for alias, name in _tied_aliases(grown.target_config, grown.spec).items():
        weights[alias] = weights[name]
    names = grown.trainer_state["param_names"]
    flat = [n for group in names for n in group]
    optim = {"state": {flat[int(i)]: s for i, s in grown.optimizer["state"].items()},
             "param_groups": [{**{k: v for k, v in g.items() if k != "params"}, "params": list(group)}
                              for g, group in zip(grown.optimizer["param_groups"], names)]}
    write_shards(dest / SHARDS, weights, optim)


def write_checkpoint(grown: GrownRun, ckpt_src: Path, dest: Path, model_dir: Path) -> None:
    """The grown checkpoint into ``dest`` (a folder that does not exist yet), digests last."""
    dest.mkdir(parents=True)
    if grown.sharded:
        _write_sharded(grown, dest)
    else:
        save_weights({k: v.contiguous() for k, v in grown.state.items()}, dest, max_shard_size=10**15)  # one file
        torch.save(grown.optimizer, dest / OPTIMIZER_FILE)
    if grown.masters is not None:
        torch.save(grown.masters, dest / MASTERS_FILE)
    for f in ckpt_src.iterdir():  # RNG states (and a GradScaler's) carry over as they are
        if f.name.startswith(CARRIED_PREFIXES):
            shutil.copy2(f, dest / f.name)
    state = {**grown.trainer_state, "model": str(model_dir)}
    state["files"] = file_digests(dest)
    (dest / STATE_FILE).write_text(json.dumps(state))


@writes_out
def grow_run(run_dir: str | Path, target: dict, out: str | Path, plan: GrowthPlan | None = None, *,
             optimizer_state: str = "grow", fit: TrainConfig | None = None, overwrite: bool = False,
             data=None, inputs=()) -> Path:
    """``ligo grow RUN_DIR --optimizer-state ...``: a new run directory holding the grown run. The fit (if
    any) reads ``data`` (a DataConfig), or the run's own data when it names none."""
    from .config import DataConfig
    from .data import load_blocks
    from .outputs import check_output, staged

    run_dir = Path(run_dir)
    check_output(out, overwrite=overwrite, inputs=[run_dir, *inputs])
    blocks = None
    if fit is not None:
        ckpt, state, manifest = open_run(run_dir)
        model_dir = _model_dir(run_dir, state, manifest)
        if model_dir is None:
            raise LigoError(f"the run in {run_dir} names no model folder with a tokenizer; grow it without a fit")
        data = data if data is not None and DataConfig.of(data).data is not None else _data(manifest)
        blocks = load_blocks(data, load_tokenizer(model_dir), fit.seq_len)
    grown = grow_checkpoint(run_dir, target, plan, optimizer_state=optimizer_state, fit=fit, blocks=blocks,
                            data=DataConfig.of(data) if fit is not None else None)
    ckpt, state, manifest = open_run(run_dir)
    with staged(out, overwrite, inputs=[run_dir, *inputs]) as tmp:
        final = Path(out).resolve()
        write_model(tmp / "model", weights=grown.state, config=grown.config,
                    tokenizer=_tokenizer_dir(grown, manifest), recipe=grown.record)
        write_checkpoint(grown, ckpt, tmp / CHECKPOINTS / ckpt.name, final / "model")
        log = [line for line in (run_dir / LOG_FILE).read_text().splitlines()
               if line.strip() and json.loads(line)["step"] <= state["step"]] if (run_dir / LOG_FILE).exists() else []
        (tmp / LOG_FILE).write_text("".join(line + "\n" for line in log))
        (tmp / MANIFEST).write_text(json.dumps({**manifest, "ligo_version": __version__, "model": str(final / "model"),
                                                "tokenizer": str(final / "model"), "from_config": None,
                                                "grown_from": str(run_dir)}, indent=2) + "\n")
    return Path(out)


def _data(manifest: dict):
    from .config import DataConfig

    saved = manifest.get("data")
    return DataConfig.from_dict(saved) if isinstance(saved, dict) else DataConfig.of(saved)


def grow_in_place(run_dir: Path, target: dict, plan: GrowthPlan | None, *, optimizer_state: str = "grow",
                  fit: TrainConfig | None = None, blocks=None, info: dict | None = None) -> Path:
    """Mid-run growth: the grown version of the newest checkpoint of ``run_dir`` is added as
    ``step-N-grown`` (it sorts after ``step-N``, so ``--resume`` takes it), with the grown model folder
    ``grown-at-N`` beside it. A kill before its final rename leaves ``step-N``: growing again gives the
    same result. ``info`` is added to the grown checkpoint's state.

    Under a launch of several processes the main process grows and writes, and the others wait for it (every
    process takes part in a fit, which is a training loop of its own)."""
    from .launch import barrier, is_main_process, process_state, world_size

    ckpt, state, manifest = open_run(run_dir)
    name = f"step-{state['step']:07d}"
    model_dir = (run_dir / f"grown-at-{state['step']:07d}").resolve()
    if fit is not None or is_main_process():
        grown = grow_checkpoint(run_dir, target, plan, optimizer_state=optimizer_state, fit=fit, blocks=blocks)
        grown.trainer_state.update(info or {})
    if is_main_process():
        write_model(model_dir, weights=grown.state, config=grown.config, tokenizer=_tokenizer_dir(grown, manifest),
                    recipe=grown.record, overwrite=True)  # (a folder left by a kill is grown again)
        tmp_ckpt = ckpt.parent / f".{name}-grown.tmp"
        shutil.rmtree(tmp_ckpt, ignore_errors=True)
        write_checkpoint(grown, ckpt, tmp_ckpt, model_dir)
        os.replace(tmp_ckpt, ckpt.parent / f"{name}-grown")
    if world_size() > 1:
        process_state()  # (the launch's process group: a resumed run may not have made it yet)
        barrier(f"the growth at step {state['step']}")
    return model_dir


def _tokenizer_dir(grown: GrownRun, manifest: dict) -> Path | None:
    for candidate in (grown.model_dir, manifest.get("tokenizer")):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None
