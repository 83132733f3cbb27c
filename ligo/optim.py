"""The optimizer's side of a training step: AdamW, mixed precision, and fp32 master weights for bf16
models. Used by the one training loop (:mod:`ligo.loop`)."""

from __future__ import annotations

import contextlib
import os

import torch

from .config import TrainConfig


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


def optimizer_step(accelerator, optimizer, scaler, masters, trained: list, clip: float) -> None:
    """The optimizer's part of a micro-step, on the last micro-batch of a step only (the others accumulate
    gradients): fp32 masters take the reduced gradients, clipping, the (scaled) step, and the bf16 weights
    refreshed. (accelerate's optimizer skips the other micro-batches by itself, but a sharded run steps torch's
    optimizer, and a GradScaler must not unscale gradients that are still accumulating.)"""
    if not accelerator.sync_gradients:
        return
    if masters:  # after the (DDP) gradient reduction
        masters.accumulate()
    if clip > 0:
        if scaler:
            scaler.unscale_(optimizer)
        accelerator.clip_grad_norm_(trained, clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if masters:
        masters.refresh()
