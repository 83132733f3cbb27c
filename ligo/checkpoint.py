"""Reading and writing Hugging Face checkpoints safely.

Weights are read from safetensors only (ligo never unpickles a user file), outputs are written to a
temporary sibling directory and renamed into place, so an interrupted or failed run never leaves a
partial output under the requested name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from .arch import ArchSpec, Dims, LigoError, Match, get_spec

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "vocab.txt", "tokenizer.model", "added_tokens.json", "generation_config.json",
                   "chat_template.jinja")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
RECIPE_NAME = "ligo_recipe.json"


@dataclass
class Checkpoint:
    """A loaded source model: its config, table, sizes and weights, without instantiating it."""

    path: Path
    config: dict
    spec: ArchSpec
    dims: Dims
    state: dict[str, torch.Tensor]
    layout: dict[str, Match]

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.state.values())).dtype

    @property
    def has_head(self) -> bool:
        """True for a model with its LM head (keys carry the base prefix), False for a bare encoder/decoder."""
        return any(k.startswith(self.spec.base_prefix) for k in self.state)


def read_config(path: str | Path) -> dict:
    p = Path(path)
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
    except OSError as exc:
        raise LigoError(f"cannot read {p}: {exc.strerror}") from None
    if not isinstance(config, dict):
        raise LigoError(f"{p} must hold a JSON object")
    return config


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as exc:
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


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in _weight_files(path):
        if not f.exists():
            raise LigoError(f"weight shard {f} is missing; the checkpoint is incomplete")
        try:
            state.update(load_file(f))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise LigoError(f"{f} is not a readable safetensors file ({str(exc).splitlines()[0]}); the file is "
                            "truncated or corrupt, so re-download or re-save it") from None
    return state


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a local HF checkpoint directory: config.json plus safetensors weights."""
    p = Path(path)
    if not p.exists():
        raise LigoError(f"model directory {p} does not exist; check the path")
    if not p.is_dir():
        raise LigoError(f"{p} is not a directory; pass the directory that holds config.json and the weights")
    config = read_config(p)
    spec = get_spec(config.get("model_type"))
    dims = spec.dims(config)
    state = read_weights(p)
    layout = spec.layout(state.keys(), dims)
    for key, m in layout.items():
        sizes = [[dims.axis_size(t) for t in axis] for axis in m.entry.axes]
        expect = [-1 if -1 in axis else sum(axis) for axis in sizes]
        got = list(state[key].shape)
        if len(got) != len(expect) or any(e not in (-1, g) for e, g in zip(expect, got)):
            raise LigoError(f"weight {key} has shape {got}, but config.json implies {expect}; the weights do not "
                            "match the config")
    return Checkpoint(p, config, spec, dims, state, layout)


# -- output ---------------------------------------------------------------------------------
def check_output_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse an existing or unwritable output path before any work is done."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise LigoError(f"output {out} already exists; choose another path or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise LigoError(f"output {out} exists and is not a directory; remove it or choose another path")
    parent = out.parent if str(out.parent) else Path(".")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    try:  # a real write probe: os.access says yes to root even where writes fail
        os.rmdir(tempfile.mkdtemp(prefix=".ligo-probe-", dir=probe))
    except OSError as exc:
        raise LigoError(f"cannot write to {probe} ({exc.strerror}); choose an output path in a writable "
                        "directory") from None
    return out


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; on success rename it to ``out``, on failure remove it."""
    out = check_output_dir(out, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise LigoError(f"cannot create {out} ({exc.strerror}); choose an output path in a writable directory") from None
    try:
        yield tmp
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_weights(state: dict[str, torch.Tensor], out: Path, max_shard_size: str | int = "5GB") -> None:
    from huggingface_hub import save_torch_state_dict
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    try:
        save_torch_state_dict(state, out, max_shard_size=max_shard_size, metadata={"format": "pt"})
    except OSError as exc:
        raise LigoError(f"could not write the weights to {out}: {exc.strerror or exc}; free some disk space "
                        "or choose another output path") from None


def copy_tokenizer(src: Path, out: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
            copied.append(name)
    return copied


def parse_mapping(text: str, where: str, allowed: set[str]) -> dict:
    """A YAML (or JSON, which YAML reads too) mapping with only ``allowed`` keys, or one clear error."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LigoError(f"{where} cannot be parsed ({str(exc).splitlines()[0]}); fix its syntax") from None
    if not isinstance(data, dict):
        raise LigoError(f"{where} must hold a mapping of keys to values")
    unknown = set(data) - allowed
    if unknown:
        raise LigoError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return data


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
