"""The one writer of a model folder: weights, config, tokenizer, recipe and model card, written atomically.

``ligo grow``, the growth of a live run, the end of a training run and every benchmark run write their models
through :func:`write_model`, under one policy:

* a new model folder appears whole or not at all: it is written into a temporary sibling that takes its name
  when complete (an existing folder is replaced only with ``overwrite``, and only then);
* a run's final model is written into the run's folder (beside its log and checkpoints): its files are
  written aside first, then moved in with ``config.json`` last, so a folder with a ``config.json`` always
  holds a complete model;
* the recipe is written last, from the finished files (a start check may read the model first), and the
  model card is made from it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import TOKENIZER_FILES, parse_size
from .config import MAX_SHARD_SIZE
from .errors import LigoError, as_user_error
from .records import GrowthRecord, Record, TrainingRecord


def write_model(out: str | Path, *, weights, config, tokenizer, recipe: Record | Callable[[Path], Record],
                growth: GrowthRecord | None = None, into_run: bool = False, overwrite: bool = False, inputs=(),
                max_shard_size: str | int = MAX_SHARD_SIZE) -> list[str]:
    """Write a model into ``out``; returns the tokenizer files written.

    ``weights``: a state dict (safetensors shards of ``max_shard_size``) or a function writing them into a
    folder (streaming growth; ``save_pretrained``, which writes the config too: ``config`` None).
    ``config``: a transformers config. ``tokenizer``: a tokenizer, a folder to copy one from, or None.
    ``recipe``: the record (:mod:`ligo.records`), or a function making it from the folder once the rest is there.
    ``growth``: the growth record of the model a trained model came from (its card says so). ``into_run``: ``out`` is a run
    folder that exists (its final model). ``inputs``: paths ``out`` must not be or hold."""
    from .outputs import staged

    parse_size(max_shard_size)  # a bad size fails before any work
    if into_run:
        tmp = Path(out) / ".final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            files = _write(tmp, weights, config, tokenizer, recipe, growth, max_shard_size)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        names = sorted(p.name for p in tmp.iterdir())
        for name in [n for n in names if n != "config.json"] + ["config.json"]:
            os.replace(tmp / name, Path(out) / name)
        tmp.rmdir()
        return files
    with staged(out, overwrite, inputs=inputs) as tmp:
        return _write(tmp, weights, config, tokenizer, recipe, growth, max_shard_size)


def _write(folder: Path, weights, config, tokenizer, recipe, growth, max_shard_size) -> list[str]:
    from .modelcard import write_model_card

    folder.mkdir(parents=True, exist_ok=True)
    if callable(weights):
        weights(folder)
    else:
        save_weights(weights, folder, max_shard_size)
    if config is not None:
        config.save_pretrained(folder)
    if isinstance(tokenizer, (str, Path)):
        files = copy_tokenizer(Path(tokenizer), folder)
    elif tokenizer is not None:
        tokenizer.save_pretrained(folder)
        files = sorted(p.name for p in folder.iterdir() if "token" in p.name)
    else:
        files = []
    recipe = recipe(folder) if callable(recipe) else recipe
    recipe.save(folder)
    write_model_card(folder, recipe.to_dict(), stage="trained" if isinstance(recipe, TrainingRecord) else "grown",
                     growth=growth.to_dict() if growth is not None else None)
    return files


# -- the files: safetensors shards (whole, or tensor by tensor as a stream), the tokenizer --------------------
_SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


class _ShardFile:
    """One safetensors file written tensor by tensor: the header first (every shape is known), then each
    tensor's bytes at its offset as it arrives. The bytes are those of safetensors' ``save_file`` for the
    same tensors (one floating dtype: tensors sorted by name, compact JSON, padded to 8 bytes)."""

    def __init__(self, path: Path, shapes: dict[str, torch.Tensor], metadata: dict):
        dtype = _SAFETENSORS_DTYPES[next(iter(shapes.values())).dtype]
        header, start = {"__metadata__": metadata}, 0
        self.offsets = {}
        for name in sorted(shapes):
            t = shapes[name]
            size = t.numel() * t.element_size()
            header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [start, start + size]}
            self.offsets[name] = (start, size)
            start += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * ((8 - len(text) % 8) % 8)
        self.base = 8 + len(text)
        self.left = {name: size for name, (_, size) in self.offsets.items()}  # bytes still to write
        self.rows = {name: t.shape[0] if t.dim() else 1 for name, t in shapes.items()}
        self.file = open(path, "wb")
        self.file.write(len(text).to_bytes(8, "little") + text)
        self.file.truncate(self.base + start)

    def write(self, name: str, tensor: torch.Tensor, rows: slice | None = None) -> bool:
        """Write one tensor, or the slice ``rows`` of its first axis; True when the file is complete (and
        closed)."""
        start, size = self.offsets[name]
        data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()  # (a scalar too)
        if rows is not None:
            row_bytes = size // self.rows[name]
            start, size = start + rows.start * row_bytes, (rows.stop - rows.start) * row_bytes
        if data.nbytes != size:
            raise LigoError(f"internal error: {name} has {data.nbytes} bytes, its shard expected {size}")
        self.file.seek(self.base + start)
        self.file.write(memoryview(data))
        self.left[name] -= size
        if not self.left[name]:
            del self.left[name]
        if not self.left:
            self.file.close()
        return not self.left

    def close(self) -> None:
        self.file.close()


def save_weights_streaming(tensors, shapes: dict[str, torch.Tensor], out: Path,
                           max_shard_size: str | int = MAX_SHARD_SIZE) -> None:
    """Write tensors that arrive one at a time (``(key, rows, tensor)``: a whole tensor when ``rows`` is None,
    else the slice of its first axis; every key of ``shapes``, a dict of meta tensors giving each key's shape
    and dtype) as safetensors shards, each piece written into its shard file at once, so no shard (and no
    whole embedding) is gathered in memory. The files and the index are byte for byte those
    :func:`save_weights` writes for the same state (a state of mixed dtypes is gathered shard by shard)."""
    from huggingface_hub import constants, split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    split = split_torch_state_dict_into_shards(shapes, max_shard_size=parse_size(max_shard_size))
    direct = len({t.dtype for t in shapes.values()}) == 1 and next(iter(shapes.values())).dtype in _SAFETENSORS_DTYPES
    files: dict[str, _ShardFile] = {}
    pending: dict[str, dict[str, torch.Tensor]] = {}
    try:
        for key, rows, tensor in tensors:
            name = split.tensor_to_filename[key]
            if direct:
                if name not in files:
                    files[name] = _ShardFile(out / name, {k: shapes[k] for k in split.filename_to_tensors[name]},
                                             {"format": "pt"})
                if files[name].write(key, tensor.to(shapes[key].dtype), rows):
                    del files[name]
                continue
            shard = pending.setdefault(name, {})
            if rows is not None:  # gather the slices of a tensor of mixed-dtype shards
                shard.setdefault(key, torch.empty(shapes[key].shape, dtype=shapes[key].dtype))[rows] = tensor
                if rows.stop < shapes[key].shape[0]:
                    continue
            else:
                shard[key] = tensor.contiguous()
            if len(shard) == len(split.filename_to_tensors[name]):
                save_file(pending.pop(name), out / name, metadata={"format": "pt"})
        if split.is_sharded:
            index = {"metadata": {**split.metadata, "format": "pt"}, "weight_map": split.tensor_to_filename}
            path = out / (constants.SAFETENSORS_WEIGHTS_FILE_PATTERN.format(suffix="") + ".index.json")
            path.write_text(json.dumps(index, indent=2))
    except Exception as exc:  # a full disk, a file-size limit
        error = as_user_error(exc, f"writing the weights to {out}")
        if error is None:
            raise
        raise error from None
    finally:
        for f in files.values():
            f.close()
    if pending or files:
        raise LigoError(f"internal error: shards {sorted(set(pending) | set(files))} were not completed")


def save_weights(state: dict[str, torch.Tensor], out: Path, max_shard_size: str | int = MAX_SHARD_SIZE) -> None:
    from huggingface_hub import save_torch_state_dict
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    try:
        save_torch_state_dict(state, out, max_shard_size=parse_size(max_shard_size), metadata={"format": "pt"})
    except Exception as exc:  # safetensors raises its own error types for a full disk
        error = as_user_error(exc, f"writing the weights to {out}")
        if error is None:
            raise
        raise error from None


def copy_tokenizer(src: Path, out: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
            copied.append(name)
    return copied
