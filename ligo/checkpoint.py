"""Reading and writing Hugging Face checkpoints safely.

Weights are read from safetensors only (ligo never unpickles a user file); tokenizers and configs are
read from local directories only (never looked up on a hub, never with remote code). Loading checks
that every weight matches the architecture table and its config, and that no weight holds NaN or inf.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .arch import ArchSpec
from .tables import spec_for
from .spaces import Dims, Match
from .errors import LigoError
from .hf import is_wrapper, loaded_on_meta

if TYPE_CHECKING:
    from .wrappers import Wrapper

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "vocab.txt", "tokenizer.model", "added_tokens.json", "generation_config.json",
                   "chat_template.jinja")
TOKENIZER_CORE = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")  # without one, there is no tokenizer
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


@dataclass
class Checkpoint:
    """A loaded source model: its config, table, sizes and weights, without instantiating it."""

    path: Path
    config: dict
    spec: ArchSpec
    dims: Dims
    state: dict[str, torch.Tensor]
    layout: dict[str, Match]
    dtype: torch.dtype
    has_head: bool
    wrapper: Wrapper | None = None  # the vision-language checkpoint this is the language model of (ligo.wrappers)
    transposed: frozenset = frozenset()  # keys held with their last two axes swapped, read in the table's layout


def check_regular_files(path: str | Path) -> None:
    """Refuse a FIFO, socket or device where a file is read (in a folder: any of its files): opening one
    would block, or read forever, before any signal could be handled."""
    import stat

    p = Path(path)
    items = list(p.iterdir()) if p.is_dir() else [p]
    for f in items:
        try:
            mode = f.stat().st_mode
        except OSError:
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
            raise LigoError(f"{f} is {kind}, not a regular file; ligo reads models and data from regular files only, "
                            "so replace it with the file itself")


def read_config(path: str | Path) -> dict:
    p = Path(path)
    check_regular_files(p)
    if p.is_dir():
        p = p / "config.json"
    if not p.exists():
        where = "directory" if p.parent.exists() else "path"
        raise LigoError(f"{p} not found" + (f"; the {where} is not a Hugging Face model (it needs config.json)"
                                             if p.parent.exists() else "; check the path"))
    try:
        config = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise LigoError(f"{p} is not valid JSON ({exc.msg} at line {exc.lineno}); fix or regenerate it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LigoError(f"cannot read {p}: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(config, dict):
        raise LigoError(f"{p} must hold a JSON object")
    return config


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise LigoError(f"{index} is not a valid safetensors index ({exc}); regenerate the checkpoint") from None
        return [path / n for n in names]
    single = path / "model.safetensors"
    if single.exists():
        return [single]
    pickled = sorted(f.name for f in path.iterdir() if f.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise LigoError(f"{path} holds only pickle weights ({', '.join(pickled)}); ligo never unpickles files, "
                        "since loading a pickle can run arbitrary code. Convert them to safetensors "
                        "(model.save_pretrained(dir, safe_serialization=True)) from code you trust")
    raise LigoError(f"{path} has no model.safetensors; save the model with save_pretrained first")


def _unreadable(f: Path, exc: Exception) -> LigoError:
    return LigoError(f"{f} is not a readable safetensors file ({str(exc).splitlines()[0]}); the file is truncated or "
                     "corrupt, so re-download or re-save it")


def read_weights(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in _weight_files(path):
        if not f.exists():
            raise LigoError(f"weight shard {f} is missing; the checkpoint is incomplete")
        try:
            state.update(load_file(f, device=str(device)))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise _unreadable(f, exc) from None
    return state


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def read_headers(path: Path) -> dict[str, torch.Tensor]:
    """Every stored tensor as an empty tensor of its shape and dtype on the meta device (no data read)."""
    from safetensors import SafetensorError, safe_open

    out: dict[str, torch.Tensor] = {}
    for f in _weight_files(path):
        if not f.exists():
            raise LigoError(f"weight shard {f} is missing; the checkpoint is incomplete")
        try:
            with safe_open(f, framework="pt") as handle:
                for key in handle.keys():
                    sl = handle.get_slice(key)
                    out[key] = torch.empty(sl.get_shape(), dtype=_DTYPES.get(sl.get_dtype(), torch.float32),
                                           device="meta")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise _unreadable(f, exc) from None
    return out


def weights_dtype(state: dict[str, torch.Tensor], layout: dict, config: dict) -> torch.dtype:
    """The dtype of a model's floating-point weights (by parameter count), never of an integer buffer
    such as BERT's stored ``position_ids``; the config's dtype when no weight is floating."""
    counts: Counter = Counter()
    for key in layout:
        t = state[key]
        if t.is_floating_point():
            counts[t.dtype] += t.numel()
    if counts:
        return counts.most_common(1)[0][0]
    named = config.get("dtype") or config.get("torch_dtype")
    return getattr(torch, named) if isinstance(named, str) and isinstance(getattr(torch, named, None),
                                                                          torch.dtype) else torch.float32


def check_finite(state: dict[str, torch.Tensor], where: Path, keys=None) -> None:
    """Refuse weights holding NaN or inf: depth mixing would spread them through whole layers."""
    for key in keys if keys is not None else state:
        t = state[key]
        # a sum is finite for finite weights (one fast pass in the weights' dtype; the exact test only if not)
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t.sum())) and \
                not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise LigoError(f"weight {key} in {where} holds {bad} NaN/inf value(s) of {t.numel()}; the checkpoint is "
                            "corrupt or was saved after training diverged: use an earlier checkpoint")


def describe_checkpoint(path: str | Path, device: str | torch.device = "meta", arch: str | None = None) -> Checkpoint:
    """A local HF checkpoint directory, checked against its architecture table and config. With the
    default ``device="meta"`` only the safetensors headers are read (``state`` holds empty tensors);
    with a real device the weights are loaded and checked to be finite. ``arch``: the table to read it
    with when its model_type has none (``llama`` for a Llama clone)."""
    p = Path(path)
    if not p.exists():
        raise LigoError(f"model directory {p} does not exist; check the path")
    if not p.is_dir():
        if p.suffix.lower() == ".gguf" or _starts_with(p, b"GGUF"):
            raise LigoError(f"{p} is a GGUF file (llama.cpp's format), which ligo reads once converted into a "
                            f"checkpoint folder: python -c \"from ligo.gguf import convert_gguf; convert_gguf('{p}', "
                            f"'{p.stem}-hf')\", then pass that folder")
        raise LigoError(f"{p} is not a directory; pass the directory that holds config.json and the weights")
    config = read_config(p)
    _refuse_quantized(p, config)
    headers = read_headers(p)
    wrapper, names = None, None
    if is_wrapper(config.get("model_type")):  # a vision-language checkpoint: its language model, the rest kept
        from .wrappers import check_parts, text_view

        outer = config
        config, wrapper, names = text_view(config, headers.keys(), str(p / "config.json"))
        check_parts(outer, {k: v.shape for k, v in headers.items()}, wrapper, names, str(p),
                    lambda whole: loaded_on_meta("causal-lm", whole))
        headers = {names[k]: v for k, v in headers.items() if k in names}
    # (the projector is the wrapper's, added to the text table: an inferred table is checked on the text's own keys)
    spec = spec_for(config.get("model_type"), [k for k in headers if not wrapper or k not in wrapper.projector],
                    config, arch)
    if wrapper is not None:
        from .wrappers import with_projector

        spec = with_projector(spec, wrapper)
    dims = spec.dims(config, where=str(p / "config.json"))
    if wrapper is None:
        config, dims = _untie_a_stored_head(p, config, spec, dims, headers)
    state = headers if str(device) == "meta" else read_weights(p, device)
    if wrapper is not None and str(device) != "meta":
        wrapper.kept = {k: t for k, t in state.items() if k not in names}
        state = {names[k]: t for k, t in state.items() if k in names}
    layout = spec.layout(state.keys(), dims, config)
    transposed = set()
    for key, m in layout.items():
        expect, got = spec.key_shape(m.entry, dims), list(state[key].shape)
        if len(got) != len(expect) or any(e not in (-1, g) for e, g in zip(expect, got)):
            if m.entry.name in spec.transposable and len(got) == 3 and got == [expect[0], expect[2], expect[1]]:
                state[key] = state[key].transpose(1, 2).contiguous()  # (Qwen3-VL-MoE's released layout)
                transposed.add(key)
                continue
            raise LigoError(f"weight {key} has shape {got}, but config.json implies {expect}; the weights do not "
                            "match the config")
    if str(device) != "meta":
        check_finite(state, p, layout)
    has_head = any(k.startswith(spec.base_prefix) for k in state) if spec.base_prefix else any(
        m.entry.scope == "head" for m in layout.values())
    return Checkpoint(p, config, spec, dims, state, layout, weights_dtype(state, layout, config), has_head, wrapper,
                      frozenset(transposed))


def _starts_with(p: Path, magic: bytes) -> bool:
    """Whether ``p`` is a regular file that starts with ``magic``."""
    try:
        if not p.is_file():
            return False
        with open(p, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


def _refuse_quantized(p: Path, config: dict) -> None:
    """Quantized weights (GPT-OSS's MXFP4 blocks and scales, bitsandbytes, GPTQ...) are not the model's weights
    as numbers: refused with how to get floats."""
    quant = config.get("quantization_config")
    if not quant:
        return
    method = quant.get("quant_method", "unknown") if isinstance(quant, dict) else "unknown"
    how = ("load it with transformers.Mxfp4Config(dequantize=True) and save_pretrained" if method == "mxfp4" else
           "load it with transformers (dequantized) and save_pretrained in bfloat16 or float32")
    raise LigoError(f"{p} holds quantized weights ({method}); ligo grows floating-point weights: {how}, then grow that")


def _untie_a_stored_head(p: Path, config: dict, spec: ArchSpec, dims: Dims, headers: dict) -> tuple[dict, Dims]:
    """A config that ties the head to the embedding while the weights hold a head of their own that differs
    from it: transformers then does not tie them (it warns) and computes with the stored head, so ligo reads
    the model as untied too (and writes ``tie_word_embeddings: false`` into what it grows from it). A stored
    head equal to the embedding is the tied model saved with both names: it stays tied."""
    if not dims.tie or "tie" not in spec.config:
        return config, dims
    for head, embedding in spec.tied.items():
        if head in headers and embedding in headers:
            reader = LazyWeights(p)
            if not torch.equal(reader(head), reader(embedding)):
                config = {**config, spec.config_key("tie", config): False}
                return config, spec.dims(config, where=str(p / "config.json"))
    return config, dims


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", arch: str | None = None) -> Checkpoint:
    """Read a local HF checkpoint directory: config.json plus safetensors weights, all checked."""
    return describe_checkpoint(path, device, arch)


def load_tokenizer(path: str | Path):
    """The tokenizer saved in a local directory (never looked up on a hub, never remote code)."""
    from transformers import AutoTokenizer

    p = Path(path)
    if not p.is_dir():
        raise LigoError(f"tokenizer directory {p} does not exist; pass a local directory holding the tokenizer "
                        "files (ligo never looks tokenizers up on a hub)")
    check_regular_files(p)
    try:
        return AutoTokenizer.from_pretrained(str(p), trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise LigoError(f"cannot load a tokenizer from {p} ({str(exc).splitlines()[0][:120]}); save the "
                        "source's tokenizer beside its weights") from None


def check_tokenizer_fits(tokenizer, vocab: int, where) -> None:
    """A tokenizer whose ids the model's embedding cannot hold (more tokens than its vocab_size) is refused."""
    if len(tokenizer) > vocab:
        raise LigoError(f"the tokenizer of {where} has {len(tokenizer)} tokens but the model's vocab_size is {vocab}; "
                        "use the model's own tokenizer")


def parse_size(text: str | int) -> int:
    """Bytes from ``5GB``, ``500MB``, ``2GiB`` or a plain integer (the largest safetensors shard)."""
    if isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(text), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise LigoError(f"--max-shard-size {text!r} is not a size; write it like 5GB, 500MB or 2GiB")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])


class LazyWeights:
    """A checkpoint's tensors read one at a time on demand (never the whole model in memory), each checked
    to be finite as it is read. A tensor is read as safetensors maps it (no copy): its part of the file stays
    mapped while the tensor lives, and no longer."""

    def __init__(self, path: Path):
        from safetensors import SafetensorError, safe_open

        self.path = path
        self.where: dict[str, Path] = {}
        for f in _weight_files(path):
            if not f.exists():
                raise LigoError(f"weight shard {f} is missing; the checkpoint is incomplete")
            try:
                with safe_open(f, framework="pt") as handle:
                    self.where.update(dict.fromkeys(handle.keys(), f))
            except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
                raise _unreadable(f, exc) from None

    def __call__(self, key: str, rows: slice | None = None) -> torch.Tensor:
        """The tensor ``key``, or the slice ``rows`` of its first axis."""
        from safetensors import SafetensorError, safe_open

        f = self.where[key]
        try:
            with safe_open(f, framework="pt") as handle:
                tensor = handle.get_tensor(key) if rows is None else handle.get_slice(key)[rows]
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise _unreadable(f, exc) from None
        check_finite({key: tensor}, self.path)
        return tensor


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
