"""Constants a model computes from its width, found on the model itself: a module's number that is a power of the
hidden size (LongCat-Flash's ``mla_scale_q_lora = (hidden / q_lora) ** 0.5``, Gemma 4's router's ``hidden ** -0.5``
and its per-layer projection's) changes when the width grows, and so does everything it multiplies. Growth keeps
the function by multiplying the weight behind the product by the inverse change, ``(source hidden / target
hidden) ** power`` (a table's ``scales``, as its ``embed_scale`` does for an embedding).

The number is found by comparing every module's float attributes in the tiny model and in the model built twice as
wide; the weight it multiplies, by running the module on the inputs the model gave it with the number multiplied by
``c`` and one projection's weight divided by ``c`` at a time: the projection whose division gives back the module's
output is the one the number multiplies.
"""

from __future__ import annotations

import math

_C = 3.0  # the probe's factor (no power of two: a scale by it cannot coincide with a doubled width's)


def _floats(module) -> dict[str, float]:
    return {k: v for k, v in vars(module).items() if isinstance(v, float) and not k.startswith("_") and v}


def width_scales(model, model_type: str, small: dict, keys: dict, ids) -> dict[str, float]:
    """``{projection module name: power}``: for each number of the tiny ``model`` (of ``model_type`` at the config
    ``small``) that is ``hidden ** power`` times a constant, the projection (a module name of ``model``) whose weight
    the number multiplies. A number no projection undoes is left out (what it does then shows in the proof's
    logit gap)."""
    import torch

    from .probe import build_model, perturbed

    wide_modules = dict(build_model(model_type, perturbed(small, keys, "hidden"), "meta").named_modules())
    found = {}
    for name, module in model.named_modules():
        other = wide_modules.get(name)
        if other is None:
            continue
        for attr, v in _floats(module).items():
            w = getattr(other, attr, None)
            if not isinstance(w, float) or w == v or w / v <= 0:
                continue
            power = round(math.log(w / v) / math.log(2), 4)
            if power in (0.5, -0.5, 1.0, -1.0):  # (a head size's or a rank's power would not be the width's)
                found.setdefault(name, []).append((attr, power))
    calls = {}  # each module's first call in one run of the model: its inputs (copied: the run goes on), to call
    # it again alone

    def copied(x):
        return x.clone() if isinstance(x, torch.Tensor) else x

    def keep(name):
        def hook(mod, args, kwargs):
            calls.setdefault(name, (tuple(copied(a) for a in args), {k: copied(v) for k, v in kwargs.items()}))
        return hook

    hooks = [model.get_submodule(name).register_forward_pre_hook(keep(name), with_kwargs=True) for name in found]
    try:
        with torch.no_grad():
            model(ids, use_cache=False)  # (no cache: each module is called again on the same inputs)
    finally:
        for handle in hooks:
            handle.remove()
    out = {}
    for name, attrs in found.items():
        if name not in calls:
            continue
        for attr, power in attrs:
            try:
                linear = _undoing(model.get_submodule(name), attr, *calls[name])
            except Exception:  # noqa: BLE001  (a module that cannot be called again alone: no scale found)
                linear = None
            if linear is not None:
                out[f"{name}.{linear}" if name else linear] = power
    return out


def _undoing(module, attr: str, args, kwargs) -> str | None:
    """The projection inside ``module`` whose weight divided by ``_C`` undoes ``attr`` multiplied by ``_C``."""
    import torch

    def output():
        out = module(*args, **kwargs)
        out = out[0] if isinstance(out, tuple) else getattr(out, "last_hidden_state", out)
        return out.detach().clone()

    with torch.no_grad():
        before = output()
        value = getattr(module, attr)
        setattr(module, attr, value * _C)
        try:
            if torch.allclose(output(), before, atol=1e-6, rtol=1e-5):
                return None  # (the number does not act on this input)
            for sub, lin in module.named_modules():
                if not isinstance(lin, torch.nn.Linear) or not sub:
                    continue
                lin.weight.div_(_C)
                try:
                    if torch.allclose(output(), before, atol=1e-5, rtol=1e-4):
                        return sub
                finally:
                    lin.weight.mul_(_C)
        finally:
            setattr(module, attr, value)
    return None
