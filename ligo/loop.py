"""The one training loop: fitting a growth operator and training a model are two uses of it.

Built on accelerate in the shape of its ``by_feature`` examples: ``prepare``, ``accumulate``,
``backward``, ``gather_for_metrics``, ``save_state``/``load_state`` and ``skip_first_batches``. It runs
unchanged in one process or under ``torchrun`` / ``accelerate launch`` (several processes, data parallel or, with
``fsdp``, sharded: :mod:`ligo.sharding`). The run directory (log, checkpoints, resume checks) is
:class:`ligo.rundir.RunDir`.

The fast path: fused AdamW on GPUs, ``torch.compile`` (default on CUDA), bf16 autocast (default on
GPUs that have it), pinned-memory batches copied asynchronously, and no host synchronisation inside
a step: the loss is read back every ``log_every`` steps (and before evaluations and checkpoints),
where the NaN check runs and the throughput (tokens/s, TFLOP/s, MFU) is logged.
"""

from __future__ import annotations

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
from .launch import any_process, check_batch, has_accelerator_device, is_main_process
from .moe import lm_loss_only
from .optim import MasterWeights, make_optimizer, optimizer_step, precision
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

    def weights(self) -> dict:
        """The trained model's state dict, gathered from every process (a collective: every process calls it; a
        sharded model's weights arrive on the main process only)."""
        from .sharding import full_state_dict, is_sharded

        if is_sharded(self.model):
            return full_state_dict(self.model)
        return self.accelerator.get_state_dict(self.model)

    @property
    def throughput(self) -> dict:
        """Tokens/s, TFLOP/s and MFU of the last logged window."""
        last = next((r for r in reversed(self.history) if "tok_s" in r), {})
        return {k: last.get(k) for k in ("tok_s", "tflops", "mfu")}


def param_groups(model: nn.Module, weight_decay: float, muon: bool = False) -> list[dict]:
    """AdamW groups: matrices decay; biases and norm gains do not. A model may define its own
    ``param_groups(weight_decay)`` (the operator fit does: per-map learning-rate scales, no decay);
    a group's ``lr_scale`` multiplies the scheduled learning rate. With ``muon``, the weight matrices other than the
    embeddings and the head are a group of their own that Muon updates (``"muon": True``)."""
    own = getattr(model, "param_groups", None)
    if callable(own):
        return own(weight_decay)
    ends = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None} \
        if muon and hasattr(model, "get_input_embeddings") else set()
    decay, no_decay, matrices = [], [], []
    for p in model.parameters():
        if p.requires_grad:
            if muon and p.dim() == 2 and id(p) not in ends:
                matrices.append(p)
            else:
                (decay if p.dim() >= 2 and weight_decay > 0 else no_decay).append(p)
    return [g for g in ({"params": matrices, "weight_decay": weight_decay, "muon": True},
                        {"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
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


def make_accelerator(cfg: TrainConfig, run_dir: Path | None):
    """An Accelerator for one loop. Precision is applied by the loop itself (autocast), so several loops
    with different precisions can run in one process without touching accelerate's singletons."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise LigoError("accelerate launch was configured with its own FSDP (distributed_type: FSDP); ligo shards the "
                        "model itself, the same way on CPUs and GPUs: launch with a multi-GPU config "
                        "(examples/accelerate/fsdp.yaml) and pass --fsdp")
    if cfg.trackers:
        _check_trackers(cfg.trackers)
    # Without an accelerator device, ask for CPU explicitly: that is what makes accelerate see a
    # multi-process CPU launch (torchrun) as distributed instead of running each rank alone.
    return Accelerator(cpu=not has_accelerator_device(), mixed_precision="no",
                       gradient_accumulation_steps=cfg.grad_accum, log_with=cfg.trackers or None,
                       project_dir=str(run_dir) if run_dir else None,
                       dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()))


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
    evaluation (step 0 included). SIGTERM or Ctrl-C ends the step, checkpoints and returns "preempted". A
    config without a peak LR trains at ``LR_FROM_SCRATCH`` (``ligo.train`` chooses by what the model is).
    """
    if cfg.lr is None:
        from .config import LR_FROM_SCRATCH

        cfg = cfg.replace(lr=LR_FROM_SCRATCH)
    loop = _Loop(model, train_data, val_data, cfg, collate=collate, eval_collate=eval_collate,
                 run_dir=Path(run_dir) if run_dir else None, desc=desc, checkpoint_info=checkpoint_info,
                 on_step=on_step, on_eval=on_eval)
    loop.start(resume, float(flops_offset), data_digest, manifest)
    status = loop.run(flops_per_step, stop_at)
    return LoopResult(steps=loop.step, status=status, history=loop.history, evals=loop.evals, flops=loop.flops,
                      wall=loop.wall, model=loop.model, accelerator=loop.accelerator)


class _Loop:
    """One run of the loop: the prepared model, optimizer and data, and where the run stands."""

    def __init__(self, model, train_data, val_data, cfg: TrainConfig, *, collate, eval_collate, run_dir, desc,
                 checkpoint_info, on_step, on_eval):
        from accelerate.utils import set_seed

        self.cfg, self.train_data, self.collate, self.run_dir, self.desc = cfg, train_data, collate, run_dir, desc
        self.checkpoint_info, self.on_step, self.on_eval = checkpoint_info or {}, on_step, on_eval
        self.accelerator = accelerator = make_accelerator(cfg, run_dir)
        self.device, nproc = accelerator.device, accelerator.num_processes
        check_batch(cfg.batch_size)
        if len(train_data) < cfg.batch_size:
            raise LigoError(f"the training split holds {len(train_data)} blocks, fewer than one batch of "
                            f"{cfg.batch_size}; give more data or a smaller batch size / seq_len")
        set_seed(cfg.seed)
        if cfg.fsdp:
            from .sharding import check_shardable

            check_shardable(model, cfg, accelerator)
        if cfg.grad_checkpointing:
            enable_grad_checkpointing(model)
        _, self.autocast, self.scaler = precision(cfg, self.device)
        self.per_proc = cfg.batch_size // nproc
        self.masters = None
        if cfg.weights_dtype == "bfloat16":
            model = model.to(device=self.device, dtype=torch.bfloat16)
            self.masters = MasterWeights(param_groups(model, cfg.weight_decay, cfg.optimizer == "muon"))
            accelerator.register_for_checkpointing(self.masters)
        if cfg.fsdp:  # sharded before the optimizer is built: it holds the shards (each rank its own)
            from .sharding import shard_model

            model = shard_model(model, self.device)
        self.eval_kwargs = lm_loss_only(model)  # held-out losses without an MoE's router loss
        groups = self.masters.groups if self.masters else param_groups(model, cfg.weight_decay, cfg.optimizer == "muon")
        names = {id(p): n for n, p in model.named_parameters()}  # which parameter each optimizer slot belongs to
        self.slots = [[names.get(id(p)) for p in g["params"]] for g in (self.masters.model_groups if self.masters
                                                                         else groups)]
        optimizer = make_optimizer(groups, cfg, self.device)
        # a sharded model is FSDP2's already, and its optimizer steps the shards: accelerate would wrap them again
        self.model, self.optimizer = (model, optimizer) if cfg.fsdp else accelerator.prepare(model, optimizer)
        self.trained = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.scaler is not None:
            accelerator.register_for_checkpointing(self.scaler)
        self.forward = compiled(self.model, cfg, self.device)
        self.rundir = RunDir(run_dir, accelerator, shards=(self.model, self.optimizer) if cfg.fsdp else None)
        self.val_batches = _val_batches(val_data, eval_collate or collate, cfg, self.per_proc, nproc, accelerator)

    def evaluate(self) -> float:
        self.model.eval()
        with torch.no_grad(), self.autocast():
            losses = [self.accelerator.gather_for_metrics(self.forward(**b, **self.eval_kwargs).loss.detach().float()
                                                          .reshape(1))
                      for b in self.val_batches]
        self.model.train()
        return torch.cat(losses).mean().item()

    def batches(self, epoch: int, skip: int):
        cfg, data = self.cfg, self.train_data
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        data = data[order][: len(data) - len(data) % cfg.batch_size]  # whole global batches
        loader = self.accelerator.prepare_data_loader(DataLoader(
            list(data), batch_size=self.per_proc, shuffle=False, collate_fn=self.collate,
            pin_memory=self.device.type == "cuda"))
        return self.accelerator.skip_first_batches(loader, skip) if skip else loader

    def start(self, resume: bool, flops_offset: float, data_digest: str | None, manifest: dict | None) -> None:
        """Where the run starts: step 0 (evaluated: the first point of every curve) or its newest checkpoint."""
        cfg, run = self.cfg, self.rundir
        self.step, self.epoch, self.batch_in_epoch, self.flops, self.wall = 0, 0, 0, flops_offset, 0.0
        self.history, self.evals, self.digest = [], [], data_digest
        if resume:
            state = run.restore(cfg.to_dict(), data_digest)
            self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
            self.flops, self.wall, self.evals = state["flops"], state["wall"], state["evals"]
            self.history = [r for r in run.read_log() if r["step"] <= self.step]
            run.start_log(self.history)
        else:
            run.start_log([])
            run.write_manifest(manifest or {})
        if cfg.trackers:
            self.accelerator.init_trackers(self.desc, config=cfg.to_dict())
        if self.step == 0:
            self.evals.append({"step": 0, "flops": self.flops, "wall": 0.0, "val_loss": self.evaluate()})
            if self.on_eval:
                self.on_eval(0, self.evals[0]["val_loss"], self.model)

    def run(self, flops_per_step: float, stop_at: int | None) -> str:
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.accelerator
        self.best, self.bad_evals = min((e["val_loss"] for e in self.evals), default=math.inf), 0
        self.flops_per_step = flops_per_step
        peak = device_peak_tflops(self.device) if cfg.peak_tflops is None else cfg.peak_tflops
        self.meter = _Meter(cfg, flops_per_step, peak, acc.num_processes, self.wall)
        self.bar = tqdm(total=cfg.steps, initial=self.step, desc=self.desc, dynamic_ncols=True, leave=False,
                        disable=not (cfg.progress and is_main_process()))
        status, self.pending, self.step_loss = "running", [], torch.zeros((), device=self.device)
        self.model.train()
        with Preemption(enabled=self.run_dir is not None) as preempt:
            while status == "running" and self.step < cfg.steps:
                step_start = time.perf_counter()
                for batch in self.batches(self.epoch, self.batch_in_epoch):
                    if not self._micro_step(batch):
                        continue
                    self.wall += time.perf_counter() - step_start
                    # (a signal may reach one process only, or each at another step: they stop together)
                    status = self._after_step(stop_at, any_process(preempt.requested))
                    if status != "running" or self.step >= cfg.steps:
                        break
                    step_start = time.perf_counter()  # evaluation and checkpoints are not training time
                else:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.bar.close()
        if cfg.trackers:
            acc.end_training()
        return "done" if status == "running" else status

    def _micro_step(self, batch) -> bool:
        """Forward, backward and (on the last micro-batch of a step) the update; True when a step ended."""
        cfg, acc = self.cfg, self.accelerator
        self.lr = lr = cfg.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        with acc.accumulate(self.model):
            with self.autocast():
                loss = self.forward(**batch).loss
            acc.backward(self.scaler.scale(loss) if self.scaler else loss)
            optimizer_step(acc, self.optimizer, self.scaler, self.masters, self.trained, cfg.clip)
        self.step_loss += loss.detach().float() / cfg.grad_accum
        self.batch_in_epoch += 1
        return acc.sync_gradients

    def _after_step(self, stop_at: int | None, preempted: bool) -> str:
        """Count the step; log, evaluate and checkpoint when due. Returns the run's status."""
        cfg, acc, step = self.cfg, self.accelerator, self.step + 1
        self.step, self.flops = step, self.flops + self.flops_per_step
        self.pending.append({"step": step, "loss": acc.reduce(self.step_loss, reduction="mean"), "lr": self.lr,
                             "tokens": step * cfg.tokens_per_step, "flops": self.flops, "wall": self.wall})
        self.step_loss = torch.zeros((), device=self.device)
        eval_due = bool(cfg.eval_every and step % cfg.eval_every == 0) or step in (cfg.steps, stop_at)
        save_due = bool(cfg.save_every and step % cfg.save_every == 0) or preempted or step == stop_at
        status = "running"
        if eval_due or save_due or step % cfg.log_every == 0 or step == cfg.steps:
            status = self._report(eval_due)
        if self.on_step:
            self.on_step(step, acc.unwrap_model(self.model))
        if save_due:
            self.rundir.save({"step": step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                           "flops": self.flops, "wall": self.wall, "evals": self.evals, "config": cfg.to_dict(),
                           "data": self.digest, "param_names": self.slots, **self.checkpoint_info}, cfg.keep_last)
        return "preempted" if preempted else "paused" if step == stop_at else status

    def _report(self, eval_due: bool) -> str:
        """Read the pending losses back, evaluate when due, and log; "stopped" when patience ran out."""
        cfg, status = self.cfg, "running"
        rows, self.wall = self.meter.flush(self.pending, self.desc, self.run_dir), self.pending[-1]["wall"]
        self.pending = []
        if eval_due:
            val = rows[-1]["val_loss"] = self.evaluate()
            self.evals.append({"step": self.step, "flops": self.flops, "wall": self.wall, "val_loss": val})
            self.best, self.bad_evals = (val, 0) if val < self.best else (self.best, self.bad_evals + 1)
            if self.on_eval:
                self.on_eval(self.step, val, self.model)
            if cfg.patience and self.bad_evals >= cfg.patience:
                status = "stopped"
        self.history.extend(rows)
        self.rundir.append_log(rows)
        if cfg.trackers:
            for r in rows:
                self.accelerator.log({k: v for k, v in r.items() if k != "step" and v is not None}, step=r["step"])
        self.bar.update(len(rows))
        self.bar.set_postfix(self.meter.postfix(rows[-1]), refresh=False)
        return status


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
