"""FLOP counting: an analytic count per token, checked against ``torch.utils.flop_counter`` in the tests,
and the devices' peak throughput for MFU."""

from __future__ import annotations

import torch
from torch import nn

from .spaces import FIXED, Dims, Entry

# Dense bf16 peak TFLOP/s (no sparsity) by device-name fragment, most specific first.
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0), ("B200", 2250.0),
               ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0), ("RTX 4090", 165.0),
               ("V100", 125.0))


def matmul_params(model: nn.Module) -> float:
    """Weights that take part in a matrix product per token (linear layers, MoE routers and the LM head, tied
    or not); of a mixture of experts' weights, the share one token uses (``experts_per_token / experts``)."""
    from .moe import active_fraction

    total = 0.0
    active = active_fraction(model)
    for module in model.modules():
        name = type(module).__name__
        if isinstance(module, nn.Linear) or name == "Conv1D" or (name.endswith("Router") and module.weight.dim() == 2):
            total += module.weight.numel()
        for p in module.parameters(recurse=False):
            if id(p) in active:
                total += p.numel() * active[id(p)]
    return total


# the chunk length of the chunked Gated DeltaNet algorithm (transformers' PyTorch path and the FLA kernels)
DELTA_CHUNK = 64


def mixer_flops(dims: Dims, seq_len: int, layers=None) -> float:
    """The forward FLOPs per token of the token mixers' products that involve no weight, summed over ``layers`` (all
    by default), as torch's counter counts them: attention scores and their weighted sum over the full sequence in
    a layer that attends (multi-head latent attention: scores over ``qk_nope + head_dim``, values of ``v_head``).
    In a Gated DeltaNet layer, per value head, the chunked delta rule's (chunk ``C``): keys
    with keys and with queries within a chunk, ``4 C dk``, the intra-chunk attention over the corrected values,
    ``2 C dv``, reading, correcting and writing the ``dk x dv`` state, ``6 dk dv`` (its triangular solves, about
    ``C (dk + dv)`` more, are no matrix product). In a Mamba-2 layer, per head, the chunked scan's (chunk ``C``
    from the config): ``C`` with ``B`` and the scores with the inputs within a chunk, ``2 C (n + p)`` (state size
    ``n``, head size ``p``), writing and reading the ``p x n`` states, ``4 p n``. Depthwise convolutions, 2 FLOPs
    a channel and tap (under 2% of such a layer), are left out."""
    attention = 2 * seq_len * dims.heads * ((dims.mla_q_unit + dims.v_head) if dims.v_head else 2 * dims.head_dim)
    recurrent = dims.lin_heads * (4 * DELTA_CHUNK * dims.lin_k_dim + 2 * DELTA_CHUNK * dims.lin_v_dim +
                                  6 * dims.lin_k_dim * dims.lin_v_dim)
    recurrent += dims.mamba_heads * (2 * dims.mamba_chunk * (dims.ssm_state + dims.mamba_head_dim) +
                                     4 * dims.mamba_head_dim * dims.ssm_state)
    attends = set(range(dims.layers) if dims.attention_layers is None else dims.attention_layers)
    recurs = set(dims.recurrent_layers)  # (Falcon-H1's layers do both)
    return float(sum(attention * (i in attends) + recurrent * (i in recurs)
                     for i in (range(dims.layers) if layers is None else layers)))


def forward_flops_per_token(model: nn.Module, dims: Dims, seq_len: int) -> float:
    """2 FLOPs per matmul weight, plus the token mixers' own (:func:`mixer_flops`)."""
    return 2.0 * matmul_params(model) + mixer_flops(dims, seq_len)


def train_flops_per_token(model: nn.Module, dims: Dims, seq_len: int, layer_of=None) -> float:
    """A training step costs three forwards: forward, and backward (grads wrt inputs and weights).

    With frozen parameters (``requires_grad`` off) the backward is counted as it runs: a weight's gradient only
    for trainable weights, the gradient wrt a module's input only where the gradient still has to flow, that
    is above the lowest trainable parameter (``layer_of(name)``: a parameter's layer, None outside the layers:
    the embeddings below them, the rest above)."""
    forward = forward_flops_per_token(model, dims, seq_len)
    if all(p.requires_grad for p in model.parameters()) or layer_of is None:
        return 3.0 * forward
    from .moe import active_fraction

    active = active_fraction(model)

    def position(name: str) -> int:
        layer = layer_of(name)
        return layer if layer is not None else -1 if "embed" in name.rsplit(".", 2)[-2] else dims.layers

    trainable = [position(n) for n, p in model.named_parameters() if p.requires_grad]
    lowest = min(trainable, default=dims.layers + 1)
    weights = inputs = 0.0
    for name, module in model.named_modules():
        cls = type(module).__name__
        dense = isinstance(module, nn.Linear) or cls == "Conv1D" or (cls.endswith("Router") and module.weight.dim() == 2)
        for pname, p in module.named_parameters(recurse=False):
            share = 1.0 if dense and pname == "weight" else active.get(id(p), 0.0)
            if not share:
                continue
            n = 2.0 * p.numel() * share
            weights += n if p.requires_grad else 0.0
            inputs += n if position(f"{name}.{pname}") >= lowest and position(f"{name}.{pname}") > -1 else 0.0
    return forward + weights + inputs + 2 * mixer_flops(dims, seq_len, range(max(lowest, 0), dims.layers))


def step_flops(model: nn.Module, dims: Dims, cfg, layer_of=None) -> float:
    """Training FLOPs of one optimizer step of ``cfg`` (a TrainConfig): the one count used everywhere."""
    return train_flops_per_token(model, dims, cfg.seq_len, layer_of) * cfg.tokens_per_step


def measured_flops(fn) -> int:
    """FLOPs of running ``fn()`` (and its backward, if it returns a tensor), by the PyTorch counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = fn()
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.backward()
    return counter.get_total_flops()


def device_peak_tflops(device: torch.device) -> float | None:
    """The dense bf16 peak of a known GPU, else None (give ``--peak-tflops`` for MFU elsewhere)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for fragment, peak in PEAK_TFLOPS if fragment in name), None)


def build_flops(op) -> int:
    """FLOPs of building the target's weights once from a :class:`ligo.operator.GrowthOperator`, forward and
    backward (what ``torch.utils.flop_counter`` counts for its forward and backward; tested to match)."""
    total = 0

    def axes(shape: list[int], entry: Entry, lead: int, grad: bool) -> int:
        flops = 0
        for a, tokens in enumerate(entry.axes):
            grown = [t for t in tokens if t not in FIXED]
            others = 1
            for i, size in enumerate(shape):
                others *= size if i != a + lead else 1
            for tok in grown:  # a fused axis grows each part separately
                (n1, unit), (n2, _) = op.src.units(tok), op.tgt.units(tok)
                # forward, the map's grad, and the input's grad when the input has one
                flops += 2 * others * n2 * unit * n1 * (3 if grad else 2)
            if grown:
                shape[a + lead] = sum(op.tgt.axis_size(t) for t in tokens)
                grad = True
        return flops

    for key, entry in op.singles:
        total += axes(list(op.source_tensor(key).shape), entry, 0, False)
    for e in op.layer_entries:
        src = op.source_layers(e)
        per_layer = src[0].numel()
        rows, cols = len(op.tgt_rows(e)), len(op.src_rows(e))  # the layers holding e (all, or those of its kind)
        total += 2 * 2 * rows * cols * per_layer  # depth mix, forward and the map's grad
        total += axes([rows, *src.shape[1:]], e, 1, True)
    return total
