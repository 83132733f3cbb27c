"""The one training loop: fitting a growth operator and training a model are two uses of it.

Built on accelerate in the shape of its ``by_feature`` examples: ``prepare``, ``accumulate``,
``backward``, ``gather_for_metrics``, ``save_state``/``load_state`` and ``skip_first_batches``. It runs
unchanged in one process or under ``accelerate launch`` (several processes, FSDP). The run directory
(log, checkpoints, resume checks) is :class:`ligo.rundir.RunDir`.

The fast path: fused AdamW on GPUs, ``torch.compile`` (default on CUDA), bf16 autocast (default on
GPUs that have it), pinned-memory batches copied asynchronously, and no host synchronisation inside
a step: the loss is read back every ``log_every`` steps (and before evaluations and checkpoints),
where the NaN check runs and the throughput (tokens/s, TFLOP/s, MFU) is logged.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from .config import TrainConfig
from .errors import LigoError
from .flops import device_peak_tflops
from .rundir import Preemption, RunDir, latest_checkpoint


@dataclass
class LoopResult:
    steps: int
    status: str  # "done", "stopped" (patience ran out), "paused" (at stop_at) or "preempted"
    history: list[dict]
    evals: list[dict]
    flops: float
    wall: float
    model: Any = field(default=None, repr=False)  # the prepared model (for saving)
    accelerator: Any = field(default=None, repr=False)

    @property
    def final_val(self) -> float | None:
        return self.evals[-1]["val_loss"] if self.evals else None

    @property
    def throughput(self) -> dict:
        """Tokens/s, TFLOP/s and MFU of the last logged window."""
        last = next((r for r in reversed(self.history) if "tok_s" in r), {})
        return {k: last.get(k) for k in ("tok_s", "tflops", "mfu")}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: matrices decay; biases and norm gains do not. A model may define its own
    ``param_groups(weight_decay)`` (the operator fit does: per-map learning-rate scales, no decay);
    a group's ``lr_scale`` multiplies the scheduled learning rate."""
    own = getattr(model, "param_groups", None)
    if callable(own):
        return own(weight_decay)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 and weight_decay > 0 else no_decay).append(p)
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
            if g["params"]]


def causal_collate(batch: list[torch.Tensor]) -> dict:
    ids = torch.stack(batch)
    return {"input_ids": ids, "labels": ids.clone()}


def make_collate(objective: str, tokenizer=None, seed: int | None = None) -> Callable:
    if objective == "causal-lm":
        return causal_collate
    from transformers import DataCollatorForLanguageModeling

    if tokenizer is None or tokenizer.mask_token_id is None:
        raise LigoError("masked-LM training needs a tokenizer with a mask token; add one to the model's tokenizer")
    mlm = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=seed)
    return lambda batch: mlm([{"input_ids": b} for b in batch])


def has_accelerator_device() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(mps and mps.is_available()) or (
        hasattr(torch, "xpu") and torch.xpu.is_available())


def make_accelerator(cfg: TrainConfig, run_dir: Path | None):
    """An Accelerator for one loop. Precision is applied by the loop itself (autocast), so several loops
    with different precisions can run in one process without touching accelerate's singletons."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    if cfg.trackers:
        _check_trackers(cfg.trackers)
    # Without an accelerator device, ask for CPU explicitly: that is what makes accelerate see a
    # multi-process CPU launch (torchrun) as distributed instead of running each rank alone.
    return Accelerator(cpu=not has_accelerator_device(), mixed_precision="no",
                       gradient_accumulation_steps=cfg.grad_accum, log_with=cfg.trackers or None,
                       project_dir=str(run_dir) if run_dir else None,
                       dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()))


def precision(cfg: TrainConfig, device: torch.device):
    """(name, autocast context factory, GradScaler or None) for ``cfg.mixed_precision`` on ``device``."""
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = os.environ.get("ACCELERATE_MIXED_PRECISION") or (
            "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mp)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    return mp, autocast, (torch.amp.GradScaler(device.type) if mp == "fp16" else None)


def make_optimizer(groups: list[dict], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    fused = device.type == "cuda" and all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=fused or None)


class MasterWeights:
    """bf16 model weights with fp32 master copies: gradients are accumulated into the masters (fp32),
    the optimizer (and its state) works on the masters, and the model's weights are refreshed from them
    after every step. Checkpointed with the run (``state_dict``)."""

    def __init__(self, groups: list[dict]):
        self.model_groups = groups
        self.params = [p for g in groups for p in g["params"]]
        self.masters = [p.detach().float().clone().requires_grad_(True) for p in self.params]
        index = {id(p): m for p, m in zip(self.params, self.masters)}
        self.groups = [dict(g, params=[index[id(p)] for p in g["params"]]) for g in groups]

    def accumulate(self) -> None:
        """Move the model's gradients into the masters (after every backward)."""
        for p, m in zip(self.params, self.masters):
            if p.grad is not None:
                m.grad = p.grad.float() if m.grad is None else m.grad.add_(p.grad)
                p.grad = None

    @torch.no_grad()
    def refresh(self) -> None:
        for p, m in zip(self.params, self.masters):
            p.copy_(m)

    def state_dict(self) -> dict:
        return {"masters": [m.detach() for m in self.masters]}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for m, saved in zip(self.masters, state["masters"]):
                m.copy_(saved)
        self.refresh()


def train_loop(model: nn.Module, train_data: torch.Tensor, val_data: torch.Tensor, cfg: TrainConfig, *,
               collate: Callable, eval_collate: Callable | None = None, flops_per_step: float = 0.0,
               flops_offset: float = 0.0, run_dir: str | Path | None = None, resume: bool = False,
               desc: str = "train", data_digest: str | None = None, manifest: dict | None = None,
               stop_at: int | None = None, checkpoint_info: dict | None = None,
               on_step: Callable[[int, nn.Module], None] | None = None,
               on_eval: Callable[[int, float, nn.Module], None] | None = None) -> LoopResult:
    """Train the parameters of ``model`` that require grad on ``train_data`` blocks.

    ``model(**batch)`` must return an object with ``.loss``. ``flops_per_step`` is the cost of one
    optimizer step; the log's ``flops`` column starts at ``flops_offset`` (the cost already spent).
    ``stop_at``: pause after that step with a checkpoint (status "paused"; the schedule is still that of
    ``cfg.steps``), as mid-run growth does. ``checkpoint_info`` is stored in every checkpoint's state.
    ``on_step(step, model)`` runs after every step, ``on_eval(step, val_loss, model)`` after every
    evaluation (step 0 included).
    """
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    accelerator = make_accelerator(cfg, Path(run_dir) if run_dir else None)
    device, nproc = accelerator.device, accelerator.num_processes
    if cfg.batch_size % nproc:
        raise LigoError(f"batch_size {cfg.batch_size} is not divisible by the {nproc} processes; "
                        "pick a multiple of the process count")
    if len(train_data) < cfg.batch_size:
        raise LigoError(f"the training split holds {len(train_data)} blocks, fewer than one batch of "
                        f"{cfg.batch_size}; give more data or a smaller batch size / seq_len")
    set_seed(cfg.seed)
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(model)
    mp, autocast, scaler = precision(cfg, device)
    per_proc = cfg.batch_size // nproc
    masters = None
    if cfg.weights_dtype == "bfloat16":
        model = model.to(device=device, dtype=torch.bfloat16)
        masters = MasterWeights(param_groups(model, cfg.weight_decay))
        accelerator.register_for_checkpointing(masters)
    groups = masters.groups if masters else param_groups(model, cfg.weight_decay)
    names = {id(p): n for n, p in model.named_parameters()}  # which parameter each optimizer slot belongs to
    slots = [[names.get(id(p)) for p in g["params"]] for g in (masters.model_groups if masters else groups)]
    model, optimizer = accelerator.prepare(model, make_optimizer(groups, cfg, device))
    trained = [p for g in optimizer.param_groups for p in g["params"]]
    if scaler is not None:
        accelerator.register_for_checkpointing(scaler)
    forward = compiled(model, cfg, device)
    run = RunDir(run_dir, accelerator)
    val_batches = _val_batches(val_data, eval_collate or collate, cfg, per_proc, nproc, accelerator)

    def evaluate() -> float:
        model.eval()
        with torch.no_grad(), autocast():
            losses = [accelerator.gather_for_metrics(forward(**b).loss.detach().float().reshape(1)) for b in val_batches]
        model.train()
        return torch.cat(losses).mean().item()

    def batches(epoch: int, skip: int):
        order = torch.randperm(len(train_data), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        data = train_data[order][: len(train_data) - len(train_data) % cfg.batch_size]  # whole global batches
        loader = accelerator.prepare_data_loader(DataLoader(list(data), batch_size=per_proc, shuffle=False,
                                                            collate_fn=collate, pin_memory=device.type == "cuda"))
        return accelerator.skip_first_batches(loader, skip) if skip else loader

    step, epoch, batch_in_epoch, flops, wall, history, evals = 0, 0, 0, float(flops_offset), 0.0, [], []
    if resume:
        state = run.restore(cfg.to_dict(), data_digest)
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        flops, wall, evals = state["flops"], state["wall"], state["evals"]
        history = [r for r in run.read_log() if r["step"] <= step]
        run.start_log(history)
    else:
        run.start_log([])
        run.write_manifest(manifest or {})
    if cfg.trackers:
        accelerator.init_trackers(desc, config=cfg.to_dict())
    if step == 0:  # the starting point of every curve
        evals.append({"step": 0, "flops": flops, "wall": 0.0, "val_loss": evaluate()})
        if on_eval:
            on_eval(0, evals[0]["val_loss"], model)
    best, bad_evals = min((e["val_loss"] for e in evals), default=math.inf), 0
    meter = _Meter(cfg, flops_per_step, device_peak_tflops(device) if cfg.peak_tflops is None else cfg.peak_tflops,
                   nproc, wall)
    bar = tqdm(total=cfg.steps, initial=step, desc=desc, disable=not (cfg.progress and accelerator.is_main_process),
               dynamic_ncols=True, leave=False)
    status, pending, step_loss = "running", [], torch.zeros((), device=device)
    model.train()
    with Preemption(enabled=run_dir is not None) as preempt:
        while status == "running" and step < cfg.steps:
            step_start = time.perf_counter()
            for batch in batches(epoch, batch_in_epoch):
                lr = cfg.lr_at(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                with accelerator.accumulate(model):
                    with autocast():
                        loss = forward(**batch).loss
                    accelerator.backward(scaler.scale(loss) if scaler else loss)
                    _update(accelerator, optimizer, scaler, masters, trained, cfg.clip)
                step_loss += loss.detach().float() / cfg.grad_accum
                batch_in_epoch += 1
                if not accelerator.sync_gradients:
                    continue
                step += 1
                flops += flops_per_step
                wall += time.perf_counter() - step_start
                pending.append({"step": step, "loss": accelerator.reduce(step_loss, reduction="mean"), "lr": lr,
                                "tokens": step * cfg.tokens_per_step, "flops": flops, "wall": wall})
                step_loss = torch.zeros((), device=device)
                eval_due = bool(cfg.eval_every and step % cfg.eval_every == 0) or step in (cfg.steps, stop_at)
                save_due = bool(cfg.save_every and step % cfg.save_every == 0) or preempt.requested or step == stop_at
                if eval_due or save_due or step % cfg.log_every == 0 or step == cfg.steps:
                    rows, wall = meter.flush(pending, desc, run_dir), pending[-1]["wall"]
                    pending = []
                    if eval_due:
                        val = rows[-1]["val_loss"] = evaluate()
                        evals.append({"step": step, "flops": flops, "wall": wall, "val_loss": val})
                        best, bad_evals = (val, 0) if val < best else (best, bad_evals + 1)
                        if on_eval:
                            on_eval(step, val, model)
                        if cfg.patience and bad_evals >= cfg.patience:
                            status = "stopped"
                    history.extend(rows)
                    run.append_log(rows)
                    if cfg.trackers:
                        for r in rows:
                            accelerator.log({k: v for k, v in r.items() if k != "step" and v is not None},
                                            step=r["step"])
                    bar.update(len(rows))
                    bar.set_postfix(meter.postfix(rows[-1]), refresh=False)
                if on_step:
                    on_step(step, accelerator.unwrap_model(model))
                if save_due:
                    run.save({"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "flops": flops,
                              "wall": wall, "evals": evals, "config": cfg.to_dict(), "data": data_digest,
                              "param_names": slots, **(checkpoint_info or {})}, cfg.keep_last)
                if preempt.requested:
                    status = "preempted"
                elif step == stop_at:
                    status = "paused"
                if status != "running" or step >= cfg.steps:
                    break
                step_start = time.perf_counter()  # evaluation and checkpoints are not training time
            else:
                epoch, batch_in_epoch = epoch + 1, 0
    bar.close()
    if cfg.trackers:
        accelerator.end_training()
    return LoopResult(steps=step, status="done" if status == "running" else status, history=history, evals=evals,
                      flops=flops, wall=wall, model=model, accelerator=accelerator)


def _update(accelerator, optimizer, scaler, masters, trained: list, clip: float) -> None:
    """The optimizer's part of a micro-step (accelerate skips the step between accumulation steps):
    fp32 masters take the reduced gradients, clipping, the (scaled) step, and the bf16 weights refreshed."""
    if masters and accelerator.sync_gradients:  # after the (DDP) gradient reduction
        masters.accumulate()
    if accelerator.sync_gradients and clip > 0:
        if scaler:
            scaler.unscale_(optimizer)
        accelerator.clip_grad_norm_(trained, clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if masters and accelerator.sync_gradients:
        masters.refresh()


class _Meter:
    """Reads the pending losses back (one host sync), checks them, and measures the window's throughput."""

    def __init__(self, cfg: TrainConfig, flops_per_step: float, peak_tflops: float | None, nproc: int, wall: float):
        self.cfg, self.flops_per_step, self.peak, self.nproc, self.wall = cfg, flops_per_step, peak_tflops, nproc, wall

    def flush(self, pending: list[dict], desc: str, run_dir) -> list[dict]:
        host = time.perf_counter()
        losses = torch.stack([p["loss"] for p in pending]).tolist()
        pending[-1]["wall"] += time.perf_counter() - host  # the device caught up with the host here
        rows = [dict(p, loss=v) for p, v in zip(pending, losses)]
        for r in rows:
            if not math.isfinite(r["loss"]):
                last = latest_checkpoint(run_dir) if run_dir else None
                raise LigoError(f"{desc}: the loss became {r['loss']} at step {r['step']}; lower the learning rate "
                                f"(now {self.cfg.lr:g}) or check the data" +
                                (f"; the last good checkpoint is {last}" if last else ""))
        seconds = max(rows[-1]["wall"] - self.wall, 1e-9)
        self.wall = rows[-1]["wall"]
        tflops = len(rows) * self.flops_per_step / seconds / 1e12
        rows[-1].update(tok_s=len(rows) * self.cfg.tokens_per_step / seconds, tflops=tflops,
                        mfu=tflops / (self.peak * self.nproc) if self.peak else None)
        return rows

    @staticmethod
    def postfix(row: dict) -> dict:
        out = {"loss": f"{row['loss']:.3f}", "tok/s": f"{row['tok_s']:.0f}", "TFLOP/s": f"{row['tflops']:.1f}"}
        if row.get("mfu") is not None:
            out["MFU"] = f"{100 * row['mfu']:.0f}%"
        return out


def _val_batches(val_data, collate, cfg: TrainConfig, per_proc: int, nproc: int, accelerator) -> list[dict]:
    """This rank's held-out batches, built once with their own seed (every evaluation sees the same
    masks) and moved to the device once."""
    n_val = min(len(val_data), cfg.eval_batches * per_proc * nproc)
    rank = accelerator.process_index
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 12345)
        full = [collate(list(val_data[i:i + per_proc * nproc])) for i in range(0, n_val, per_proc * nproc)]
    local = [{k: v[rank * per_proc:(rank + 1) * per_proc] for k, v in b.items()} for b in full]
    return [{k: v.to(accelerator.device) for k, v in b.items()} for b in local if len(b["input_ids"])]


def compiled(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """``torch.compile(model)`` when asked (default: on CUDA), else the model itself."""
    if not (cfg.compile if cfg.compile is not None else device.type == "cuda"):
        return model
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++")):
        raise LigoError("--compile on the CPU needs a C++ compiler (g++ or clang++) for torch.compile; install one "
                        "or train without --compile")
    return torch.compile(model)


def enable_grad_checkpointing(model: nn.Module) -> None:
    """Recompute each layer's activations in the backward pass (transformers' own switch: named
    ``activation_checkpointing_enable`` from 5.2x, ``gradient_checkpointing_enable`` before)."""
    fn = getattr(model, "activation_checkpointing_enable", None)
    if fn is not None:
        return fn(activation_checkpointing_kwargs={"use_reentrant": False})
    fn = getattr(model, "gradient_checkpointing_enable", None)
    if fn is None:
        raise LigoError(f"{type(model).__name__} does not support gradient checkpointing; train without it")
    fn(gradient_checkpointing_kwargs={"use_reentrant": False})


def _check_trackers(names: list[str]) -> None:
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    known = {t.value for t in LoggerType} - {"all"}
    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    for name in names:
        if name not in known:
            raise LigoError(f"unknown tracker {name!r}; choose from {', '.join(sorted(known))}")
        if name not in available:
            raise LigoError(f"tracker {name!r} is not installed; pip install {name} (or drop --trackers {name})")
