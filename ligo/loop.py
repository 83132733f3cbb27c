"""The one training loop: fitting a growth operator and training a model are two uses of it.

Built on accelerate in the shape of its ``by_feature`` examples: ``prepare``, ``accumulate``,
``backward``, ``gather_for_metrics``, ``save_state``/``load_state`` and ``skip_first_batches``. It runs
unchanged in one process or under ``accelerate launch`` (several processes, FSDP).

A run directory holds ``log.jsonl`` (one line per optimizer step) and ``checkpoints/step-NNNNNNN``
(complete checkpoints only: each is written under a temporary name and renamed when done).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from .arch import LigoError

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
LOG_FILE = "log.jsonl"
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "no", "bf16", "fp16")


def _help(text: str, default: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class TrainConfig:
    """Hyper-parameters of one run of the loop (the operator fit uses the same class)."""

    steps: int = _help("optimizer steps", 200)
    batch_size: int = _help("sequences per micro-batch, over all processes", 8)
    grad_accum: int = _help("micro-batches per optimizer step", 1)
    seq_len: int = _help("tokens per sequence", 128)
    lr: float = _help("peak learning rate", 1e-3)
    weight_decay: float = _help("AdamW weight decay (never on biases, norms or operator maps)", 0.1)
    warmup: int = _help("linear warmup steps", 20)
    schedule: str = _help("decay after warmup: cosine, linear or constant", "cosine")
    min_lr_ratio: float = _help("final LR as a fraction of the peak", 0.1)
    clip: float = _help("gradient-norm clip (0: off)", 1.0)
    eval_every: int = _help("held-out evaluation every N steps (0: only at the end)", 50)
    eval_batches: int = _help("held-out micro-batches per evaluation", 8)
    save_every: int = _help("checkpoint every N steps (0: off)", 0)
    keep_last: int = _help("complete checkpoints kept", 2)
    seed: int = _help("random seed", 0)
    mixed_precision: str = _help("auto (what `accelerate launch` was configured with, else no), no, bf16 or fp16",
                                 "auto")
    trackers: list[str] = _help("accelerate trackers to log to (tensorboard, wandb), if installed", [])
    progress: bool = _help("show a progress bar", True)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "seq_len", "keep_last", "eval_batches"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LigoError(f"{name} must be a positive integer, got {value!r}")
        for name in ("warmup", "eval_every", "save_every", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise LigoError(f"{name} must be a non-negative integer, got {value!r}")
        for name in ("lr", "weight_decay", "min_lr_ratio", "clip"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise LigoError(f"{name} must be a non-negative number, got {value!r}")
        if self.lr <= 0:
            raise LigoError(f"lr must be positive, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise LigoError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.mixed_precision not in PRECISIONS:
            raise LigoError(f"mixed_precision must be one of {', '.join(PRECISIONS)}, got {self.mixed_precision!r}")
        self.trackers = list(self.trackers)

    @classmethod
    def from_dict(cls, data: dict, where: str = "training config") -> "TrainConfig":
        known = {f.name: f for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise LigoError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(known)}")
        for key, value in data.items():
            want = type(getattr(cls(), key))
            ok = isinstance(value, want) or (want is float and isinstance(value, int))
            if not ok or isinstance(value, bool) != (want is bool):
                raise LigoError(f"{where}: {key} must be {want.__name__}, got {value!r}")
        return cls(**data)

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based)."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.schedule == "constant":
            return self.lr
        progress = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if self.schedule == "cosine" else 1 - progress
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * shape)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.seq_len


@dataclass
class LoopResult:
    steps: int
    status: str  # "done" or "preempted"
    history: list[dict]
    evals: list[dict]
    flops: float
    wall: float
    model: Any = field(default=None, repr=False)  # the prepared model (for saving)
    accelerator: Any = field(default=None, repr=False)

    @property
    def final_val(self) -> float | None:
        return self.evals[-1]["val_loss"] if self.evals else None


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: matrices decay; biases, norm gains and embeddings-free 1-D params do not."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 and weight_decay > 0 else no_decay).append(p)
    groups = [{"params": no_decay, "weight_decay": 0.0}]
    if decay:
        groups.insert(0, {"params": decay, "weight_decay": weight_decay})
    return groups


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


def _checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE_FILE).exists())


def _digests(ckpt: Path) -> dict[str, str]:
    """sha256 of every file of a checkpoint (its state file aside): written with it, checked on resume."""
    out = {}
    for f in sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != STATE_FILE):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
        out[str(f.relative_to(ckpt))] = h.hexdigest()
    return out


def verify_checkpoint(ckpt: Path) -> dict:
    """The checkpoint's state, after checking that no file was changed, added or cut since it was written."""
    state = json.loads((ckpt / STATE_FILE).read_text())
    if "files" in state and _digests(ckpt) != state["files"]:
        raise LigoError(f"--resume: {ckpt} was modified or corrupted after it was written (file digests differ); "
                        "ligo loads only checkpoints it wrote: delete it to resume from an earlier one")
    return state


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = _checkpoints(Path(run_dir))
    return found[-1] if found else None


class _Preemption:
    """SIGTERM (cluster preemption) sets a flag; the loop checkpoints at the end of the step and stops."""

    def __init__(self) -> None:
        self.requested = False
        self._old = None

    def __enter__(self) -> "_Preemption":
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handle(self, *_: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def train_loop(model: nn.Module, train_data: torch.Tensor, val_data: torch.Tensor, cfg: TrainConfig, *,
               collate: Callable, eval_collate: Callable | None = None, flops_per_step: float = 0.0,
               flops_offset: float = 0.0, run_dir: str | Path | None = None, resume: bool = False,
               desc: str = "train", accelerator=None, after_step: Callable[[int, nn.Module], None] | None = None,
               ) -> LoopResult:
    """Train the parameters of ``model`` that require grad on ``train_data`` blocks.

    ``model(**batch)`` must return an object with ``.loss``. ``flops_per_step`` is the cost of one
    optimizer step; the log's ``flops`` column starts at ``flops_offset`` (the cost already spent).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    run_dir = Path(run_dir) if run_dir else None
    if cfg.trackers:
        _check_trackers(cfg.trackers)
    if accelerator is None:
        # Without an accelerator device, ask for CPU explicitly: that is what makes accelerate see a
        # multi-process CPU launch (torchrun) as distributed instead of running each rank alone.
        precision = None if cfg.mixed_precision == "auto" else cfg.mixed_precision
        # One process may run several loops (fit, then training) with different precisions; accelerate
        # keeps its settings in a singleton, so start each loop from a clean one (the process group,
        # held by PartialState, is kept).
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state()
        GradientState._reset_state()
        accelerator = Accelerator(cpu=not _has_device(), mixed_precision=precision,
                                  gradient_accumulation_steps=cfg.grad_accum, log_with=cfg.trackers or None,
                                  project_dir=str(run_dir) if run_dir else None)
    nproc = accelerator.num_processes
    if cfg.batch_size % nproc:
        raise LigoError(f"batch_size {cfg.batch_size} is not divisible by the {nproc} processes; "
                        "pick a multiple of the process count")
    if len(train_data) < cfg.batch_size:
        raise LigoError(f"the training split holds {len(train_data)} blocks, fewer than one batch of "
                        f"{cfg.batch_size}; give more data or a smaller batch size / seq_len")
    set_seed(cfg.seed)
    eval_collate = eval_collate or collate
    per_proc = cfg.batch_size // nproc
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    model, optimizer = accelerator.prepare(model, optimizer)

    # Held-out batches are built once, with their own seed, so every evaluation sees the same masks.
    n_val = min(len(val_data), cfg.eval_batches * per_proc * nproc)
    gen_state = torch.get_rng_state()
    torch.manual_seed(cfg.seed + 12345)
    val_batches = [eval_collate(list(val_data[i:i + per_proc * nproc])) for i in range(0, n_val, per_proc * nproc)]
    torch.set_rng_state(gen_state)

    def evaluate() -> float:
        model.eval()
        losses = []
        with torch.no_grad():
            for batch in val_batches:
                rank = accelerator.process_index
                local = {k: v[rank * per_proc:(rank + 1) * per_proc].to(accelerator.device) for k, v in batch.items()}
                if not len(local["input_ids"]):
                    continue
                loss = model(**local).loss.detach().float().reshape(1)
                losses.append(accelerator.gather_for_metrics(loss))
        model.train()
        return torch.cat(losses).mean().item()

    def loader_for(epoch: int) -> DataLoader:
        order = torch.randperm(len(train_data), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        data = train_data[order]
        n = len(data) - len(data) % cfg.batch_size  # whole global batches only
        return accelerator.prepare_data_loader(
            DataLoader(list(data[:n]), batch_size=per_proc, shuffle=False, collate_fn=collate))

    step, epoch, batch_in_epoch, flops, wall = 0, 0, 0, float(flops_offset), 0.0
    history: list[dict] = []
    evals: list[dict] = []
    if resume and run_dir is not None:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise LigoError(f"--resume: no complete checkpoint under {run_dir / CHECKPOINTS}; start without --resume")
        state = verify_checkpoint(ckpt)
        try:
            accelerator.load_state(str(ckpt))
        except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) refused an object
            raise LigoError(f"--resume: {ckpt} holds a file that is not plain tensors ({str(exc).splitlines()[0][:80]}); "
                            "ligo never unpickles code: delete that checkpoint to resume from an earlier one") from None
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        flops, wall, evals = state["flops"], state["wall"], state["evals"]
        history = [r for r in _read_log(run_dir) if r["step"] <= step]
        if accelerator.is_main_process:
            _write_log(run_dir, history)
    elif run_dir is not None and accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_log(run_dir, [])
    if cfg.trackers:
        accelerator.init_trackers(desc, config=asdict(cfg))
    if step == 0:  # the starting point of every curve
        evals.append({"step": 0, "flops": flops, "wall": 0.0, "val_loss": evaluate()})

    def save_checkpoint() -> None:
        if run_dir is None:
            return
        root = run_dir / CHECKPOINTS
        final = root / f"step-{step:07d}"
        tmp = root / f".step-{step:07d}.tmp"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(str(tmp), safe_serialization=True)
            accelerator.wait_for_everyone()  # every rank's files are written before they are hashed
            if accelerator.is_main_process:
                state = {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "flops": flops,
                         "wall": wall, "evals": evals, "config": asdict(cfg), "files": _digests(tmp)}
                (tmp / STATE_FILE).write_text(json.dumps(state))
        except OSError as exc:  # disk full, quota...: the half-written checkpoint never gets its final name
            shutil.rmtree(tmp, ignore_errors=True)
            last = latest_checkpoint(run_dir)
            raise LigoError(f"could not write the checkpoint for step {step} ({exc.strerror or exc}); free disk space "
                            "and rerun with --resume" + (f" (the last complete checkpoint is {last})" if last else "")
                            ) from None
        if accelerator.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in _checkpoints(run_dir)[:-cfg.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    bar = tqdm(total=cfg.steps, initial=step, desc=desc, disable=not (cfg.progress and accelerator.is_main_process),
               dynamic_ncols=True, leave=False)
    status = "done"
    model.train()
    window_tokens, window_start = 0, time.perf_counter()
    with _Preemption() as preempt:
        while step < cfg.steps:
            loader = loader_for(epoch)
            if batch_in_epoch:
                loader = accelerator.skip_first_batches(loader, batch_in_epoch)
            step_start = time.perf_counter()
            step_loss = torch.zeros((), device=accelerator.device)
            for batch in loader:
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr_at(step)
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.clip > 0:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                step_loss += loss.detach().float() / cfg.grad_accum
                batch_in_epoch += 1
                if not accelerator.sync_gradients:
                    continue
                mean_loss = accelerator.reduce(step_loss, reduction="mean").item()
                step_loss = torch.zeros((), device=accelerator.device)
                if not math.isfinite(mean_loss):
                    last = latest_checkpoint(run_dir) if run_dir else None
                    raise LigoError(f"{desc}: the loss became {mean_loss} at step {step + 1}; lower the learning rate "
                                    f"(now {cfg.lr:g}) or check the data" +
                                    (f"; the last good checkpoint is {last}" if last else ""))
                step += 1
                elapsed = time.perf_counter() - step_start
                wall += elapsed
                flops += flops_per_step
                window_tokens += cfg.tokens_per_step
                record = {"step": step, "loss": mean_loss, "lr": cfg.lr_at(step - 1), "tokens": step * cfg.tokens_per_step,
                          "flops": flops, "wall": wall}
                if cfg.eval_every and step % cfg.eval_every == 0 or step == cfg.steps:
                    record["val_loss"] = evaluate()
                    evals.append({k: record[k] for k in ("step", "flops", "wall", "val_loss")})
                history.append(record)
                if accelerator.is_main_process:
                    if run_dir is not None:
                        with open(run_dir / LOG_FILE, "a") as f:
                            f.write(json.dumps(record) + "\n")
                    if cfg.trackers:
                        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
                    now = time.perf_counter()
                    bar.update(1)
                    bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{window_tokens / max(now - window_start, 1e-9):.0f}",
                                    flops=f"{flops:.2e}", refresh=False)
                if after_step is not None:
                    after_step(step, accelerator.unwrap_model(model))
                step_start = time.perf_counter()
                if cfg.save_every and step % cfg.save_every == 0 or preempt.requested:
                    save_checkpoint()
                if preempt.requested:
                    status = "preempted"
                    break
                if step >= cfg.steps:
                    break
            if status == "preempted":
                break
            if step < cfg.steps:
                epoch, batch_in_epoch = epoch + 1, 0
    bar.close()
    if cfg.trackers:
        accelerator.end_training()
    return LoopResult(steps=step, status=status, history=history, evals=evals, flops=flops, wall=wall, model=model,
                      accelerator=accelerator)


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


def _has_device() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(mps and mps.is_available()) or (
        hasattr(torch, "xpu") and torch.xpu.is_available())


def _read_log(run_dir: Path) -> list[dict]:
    path = run_dir / LOG_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash
            break
    return rows


def _write_log(run_dir: Path, rows: list[dict]) -> None:
    tmp = run_dir / (LOG_FILE + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, run_dir / LOG_FILE)
