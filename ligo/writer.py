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

import os
import shutil
from pathlib import Path
from typing import Callable

from .checkpoint import copy_tokenizer, save_weights
from .config import MAX_SHARD_SIZE
from .records import Recipe


def write_model(out: str | Path, *, weights, config, tokenizer, recipe: Recipe | Callable[[Path], Recipe],
                growth: dict | None = None, into_run: bool = False, overwrite: bool = False, inputs=(),
                max_shard_size: str | int = MAX_SHARD_SIZE) -> list[str]:
    """Write a model into ``out``; returns the tokenizer files written.

    ``weights``: a state dict (safetensors shards of ``max_shard_size``) or a function writing them into a
    folder (streaming growth; ``save_pretrained``, which writes the config too: ``config`` None).
    ``config``: a transformers config. ``tokenizer``: a tokenizer, a folder to copy one from, or None.
    ``recipe``: the recipe, or a function making it from the folder once the rest is there. ``growth``: the
    growth recipe of the model a trained model came from (its card says so). ``into_run``: ``out`` is a run
    folder that exists (its final model). ``inputs``: paths ``out`` must not be or hold."""
    from .outputs import staged

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
    write_model_card(folder, recipe.fields, kind="trained" if recipe.kind == "train" else "grown", growth=growth)
    return files
