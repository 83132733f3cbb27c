"""The operator fit's model: the target whose weights are the operator's output, so that training it with the
one loop (:func:`ligo.loop.train_loop`) trains the operator's maps and nothing else (LiGO proper)."""

from __future__ import annotations

import torch
from torch import nn

from .errors import LigoError
from .moe import fused_parameters, install_fused
from .operator import GrowthOperator


class FitModule(nn.Module):
    """The target model whose weights are the operator's output: trains only the operator.

    Every forward builds the weights and installs them on the target as plain tensors (they stay until
    the next forward, so gradient checkpointing can recompute layers in the backward pass). In
    evaluation the weights are built once and reused for every held-out batch."""

    def __init__(self, operator: GrowthOperator, target_model: nn.Module):
        super().__init__()
        self.operator = operator
        # Outside the module tree: the target's own weights stay on the meta device (the operator provides
        # them), so moving, wrapping (DDP) or checkpointing this module concerns the operator alone.
        self._target = [target_model.requires_grad_(False)]
        self._cached: dict | None = None
        by_tensor: dict[int, list[str]] = {}
        for name, p in target_model.named_parameters(remove_duplicate=False):
            by_tensor.setdefault(id(p), []).append(name)
        self._ties = {name: names for names in by_tensor.values() for name in names}  # name -> names sharing it
        self._param = operator.spec.param_name  # (checkpoint keys saved under another name than the parameter's)
        built = {self._param(k) for k in operator.singles_and_layers_keys()}
        # experts held fused in memory: their parameter names and shapes, read once (installing replaces them)
        self._fused = fused_parameters(operator.spec, target_model, self._param(operator.prefix), operator.tgt.layers)
        built |= set(self._fused)
        # weights the model holds as buffers (GLM's router correction bias): installed as the parameters are
        self._buffer_names = {name for name, _ in target_model.named_buffers() if name in built}
        missing = sorted(n for n in self._ties if not set(self._ties[n]) & built)
        if missing:
            raise LigoError(f"the operator builds no weight for {missing[:3]} of the target; the architecture "
                            "table is incomplete (see docs/architectures.md)")

    @property
    def target(self) -> nn.Module:
        return self._target[0]

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        for module in self.target.modules():  # the target's real buffers follow the operator
            for name, buf in module._buffers.items():
                if buf is not None:
                    module._buffers[name] = fn(buf)
        return self

    def _install(self, weights: dict) -> None:
        if self._fused:  # experts held stacked and fused, as transformers holds them
            op = self.operator
            weights = {**weights, **install_fused(op.spec, self._fused, weights, op.prefix, op.tgt.experts)}
        for key, tensor in weights.items():
            key = self._param(key)
            if key in self._buffer_names:
                owner, _, attr = key.rpartition(".")
                module = self.target.get_submodule(owner)
                module._buffers.pop(attr, None)
                module.__dict__[attr] = tensor
                continue
            if self._fused and key not in self._ties:
                continue  # a per-expert weight, installed fused
            for name in self._ties.get(key, (key,)):
                owner, _, attr = name.rpartition(".")
                module = self.target.get_submodule(owner)
                module._parameters.pop(attr, None)
                module.__dict__[attr] = tensor  # a plain attribute, found before nn.Module.__getattr__

    def forward(self, **batch):
        if self.training or torch.is_grad_enabled():
            self._cached = None
            self._install(self.operator())
        elif self._cached is None:
            self._cached = self.operator()
            self._install(self._cached)
        return self.target(**batch)

    def train(self, mode: bool = True):
        self._cached = None
        self.target.train(mode)
        return super().train(mode)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """The operator's maps, with their LR scales; never weight decay (it pulls the maps towards zero)."""
        return self.operator.param_groups()

    def activation_checkpointing_enable(self, **kwargs) -> None:
        from .loop import enable_grad_checkpointing

        enable_grad_checkpointing(self.target)
