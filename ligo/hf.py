"""The Hugging Face side of a model, in one place: its Auto class (a vision-language checkpoint's, for the types
``ligo/archs/_wrappers.json`` names), its config object, and the model on the meta device (shapes without memory,
for FLOPs and parameter counts). Never remote code."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import torch

from .errors import LigoError


@lru_cache(maxsize=1)
def wrapper_types() -> dict[str, dict]:
    """The vision-language checkpoints whose language model ligo grows, and how each holds it
    (``ligo/archs/_wrappers.json``; read by :mod:`ligo.wrappers`)."""
    data = json.loads(resources.files("ligo.archs").joinpath("_wrappers.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def is_wrapper(model_type: str | None) -> bool:
    return model_type in wrapper_types()


def model_class(objective: str, model_type: str | None = None):
    """The Auto class of a model: a causal or masked LM, or the image-text-to-text model of a vision-language
    checkpoint (``model_type``: one ligo grows the language model of)."""
    import transformers

    if is_wrapper(model_type):
        return transformers.AutoModelForImageTextToText
    return transformers.AutoModelForCausalLM if objective == "causal-lm" else transformers.AutoModelForMaskedLM


_FLOATS = {"Infinity": float("inf"), "-Infinity": float("-inf"), "NaN": float("nan")}


def special_floats(value):
    """A config.json value with the floats JSON cannot hold decoded (transformers writes Granite 4's infinite
    ``time_step_limit`` as ``{"__float__": "Infinity"}``)."""
    if isinstance(value, dict):
        if set(value) == {"__float__"} and value["__float__"] in _FLOATS:
            return _FLOATS[value["__float__"]]
        return {k: special_floats(v) for k, v in value.items()}
    return [special_floats(v) for v in value] if isinstance(value, list) else value


def config_object(model_type: str, config: dict):
    """The config object of ``model_type`` from a dict, as the tiny models and the inference read it (no check:
    a config the class refuses raises its own error)."""
    import transformers

    data = {k: special_floats(v) for k, v in config.items()
            if k not in ("model_type", "transformers_version", "auto_map", "architectures", "_name_or_path")}
    cfg = transformers.AutoConfig.for_model(model_type, **data)
    if getattr(cfg, "is_heterogeneous", False):  # (settings by layer: its global values are what ligo reads)
        cfg.allow_global_per_layer_attribute_access = True
    return cfg


def build_config(config: dict):
    """A transformers config object from a dict (the model type's own class; never remote code)."""
    import transformers

    from huggingface_hub.errors import StrictDataclassError

    data = {k: special_floats(v) for k, v in config.items() if k not in ("model_type", "transformers_version", "auto_map")}
    try:
        return transformers.AutoConfig.for_model(config["model_type"], **data)
    except (ValueError, TypeError, KeyError, StrictDataclassError) as exc:
        cause = exc.__cause__ if isinstance(exc, StrictDataclassError) and exc.__cause__ else exc
        why = " ".join(str(cause).split())[:240] or type(cause).__name__
        raise LigoError(f"invalid {config['model_type']} config: {why}; check its sizes and settings") from None


def known_config_keys(model_type: str) -> set[str]:
    """Every key the model type's config class writes (what a full target config.json may hold)."""
    import transformers

    try:
        return set(transformers.AutoConfig.for_model(model_type).to_dict())
    except (ValueError, TypeError, KeyError):
        return set()


def meta_model(objective: str, config: dict | object):
    """The model of ``config`` (a dict or a config object) on the meta device: no memory, no init."""
    hf_config = build_config(config) if isinstance(config, dict) else config
    with torch.device("meta"):
        return model_class(objective).from_config(hf_config)


def check_memory(need: int, what: str, fix: str, device: str | torch.device = "cpu") -> None:
    """The one memory check of every command that builds a model: refuse, before anything is allocated, work that
    needs ``need`` bytes (``what`` says for what) where ``device`` has less available (a typo of a few zeros in a
    size would otherwise allocate until the machine runs out)."""
    from .launch import available_memory

    free = available_memory(torch.device(device))
    if free is not None and need > free:
        raise LigoError(f"{what}: {need / 1e9:.1f} GB, but this machine has {free / 1e9:.1f} GB of memory available; "
                        f"{fix}")


def loaded_on_meta(objective: str, config: dict):
    """The model that a checkpoint of ``config`` loads as (a vision-language checkpoint's multimodal class, from its
    own config, not the text config inside it), on the meta device: no memory, no init."""
    hf_config = build_config(config)
    with torch.device("meta"):
        return model_class(objective, config.get("model_type")).from_config(hf_config)


def check_model_memory(objective: str, config: dict, fix: str) -> int:
    """Refuse a model whose float32 weights (what training builds first, on the CPU) cannot fit in this machine's
    memory; its parameters are counted on the meta device, as transformers builds it from ``config``. Returns
    their number."""
    n = sum(p.numel() for p in loaded_on_meta(objective, config).parameters())
    check_memory(4 * n, f"the model has {n:,} parameters to build in float32", fix)
    return n



def check_device(name: str | None, default_cuda: bool = True) -> str:
    """A device name torch can use on this machine, or one clear error (None: CUDA when available, else the
    CPU; with ``default_cuda=False``, the CPU)."""
    if name is None:
        return "cuda" if default_cuda and torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise LigoError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LigoError(f"--device {name}: this machine has no CUDA GPU that torch can use; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise LigoError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s); use cuda:0..")
    if device.type not in ("cpu", "cuda"):
        raise LigoError(f"--device {name}: ligo grows and evaluates on cpu or cuda; use one of them")
    return name
