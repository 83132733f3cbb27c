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
    if any(g.get("muon") for g in groups):
        return MuonAdamW(groups, lr=cfg.lr)
    fused = device.type == "cuda" and all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=fused or None)


NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Muon's quintic Newton-Schulz iteration (Keller Jordan's, as torch's)


def orthogonalized(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """The nearest semi-orthogonal matrix to ``g`` (its singular values pushed towards one), by Newton-Schulz."""
    a, b, c = NS_COEFFICIENTS
    x = g.float() / (g.norm() + eps)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class MuonAdamW(torch.optim.Optimizer):
    """Muon for the groups marked ``muon`` (2-d weight matrices: Nesterov momentum 0.95, orthogonalized, scaled by
    ``0.2 sqrt(max(rows, cols))`` so that its update RMS matches AdamW's and one peak LR serves both, decoupled
    weight decay), AdamW (betas 0.9, 0.95) for the rest: one optimizer, one state dict, one LR schedule."""

    def __init__(self, groups: list[dict], lr: float, betas=(0.9, 0.95), momentum: float = 0.95, eps: float = 1e-8):
        super().__init__(groups, {"lr": lr, "betas": betas, "momentum": momentum, "eps": eps, "weight_decay": 0.0,
                                  "muon": False})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] = state.get("step", torch.tensor(0.0)) + 1
                if wd:
                    p.mul_(1 - lr * wd)
                if group["muon"]:
                    buf = state.setdefault("momentum_buffer", torch.zeros_like(p))
                    buf.lerp_(p.grad, 1 - group["momentum"])
                    update = orthogonalized(p.grad.lerp(buf, group["momentum"]))
                    p.add_(update.to(p.dtype), alpha=-lr * 0.2 * max(p.shape) ** 0.5)
                    continue
                (b1, b2), t = group["betas"], float(state["step"])
                m = state.setdefault("exp_avg", torch.zeros_like(p))
                v = state.setdefault("exp_avg_sq", torch.zeros_like(p))
                m.lerp_(p.grad, 1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                denom = (v / (1 - b2 ** t)).sqrt_().add_(group["eps"])
                p.addcdiv_(m, denom, value=-lr / (1 - b1 ** t))
        return loss


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
