"""FLOP counting: an analytic count per token, checked against ``torch.utils.flop_counter`` in the tests."""

from __future__ import annotations

import torch
from torch import nn

from .arch import Dims


def matmul_params(model: nn.Module) -> int:
    """Weights that take part in a matrix product per token (linear layers and the LM head, tied or not)."""
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            total += module.weight.numel()
    return total


def forward_flops_per_token(model: nn.Module, dims: Dims, seq_len: int) -> float:
    """2 FLOPs per matmul weight, plus attention scores and their weighted sum over the full sequence."""
    attention = 4 * seq_len * dims.heads * dims.head_dim * dims.layers
    return 2.0 * matmul_params(model) + attention


def train_flops_per_token(model: nn.Module, dims: Dims, seq_len: int) -> float:
    """A training step costs three forwards: forward, and backward (grads wrt inputs and weights)."""
    return 3.0 * forward_flops_per_token(model, dims, seq_len)


def measured_flops(fn) -> int:
    """FLOPs of running ``fn()`` (and its backward, if it returns a tensor), by the PyTorch counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = fn()
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.backward()
    return counter.get_total_flops()
