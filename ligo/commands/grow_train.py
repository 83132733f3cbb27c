"""ligo grow-train: grow (with an operator fit) then train, from flags or one recipe file.

The recipe (YAML or JSON) has the keys: source, target, out, data, width, depth, per_layer, seed,
seq_len, batch_size,
fit (training-config keys for the operator fit; its steps may be 0) and train (training-config keys).
Flags given on the command line override the recipe. Outputs: OUT/grown (the grown model), OUT/trained
(the run: log, checkpoints, final model) and OUT/recipe.json (the recipe as run).
"""

from __future__ import annotations

from pathlib import Path

from ..arch import LigoError
from ..checkpoint import parse_mapping
from .common import parse_target
from .train_flags import add_train_flags, train_overrides

RECIPE_KEYS = {"source", "target", "out", "data", "width", "depth", "per_layer", "seed", "seq_len", "batch_size",
               "fit", "train"}


def add_parser(sub, name):
    p = sub.add_parser(name, help="grow then train, from flags or a recipe file", description=__doc__)
    p.add_argument("source", nargs="?", help="source model directory (or 'source' in the recipe)")
    p.add_argument("--config", help="recipe file (YAML or JSON); flags override it")
    p.add_argument("--target", help="target config (JSON file or object)")
    p.add_argument("--out", help="output directory")
    p.add_argument("--data", help="training data (default: the Python standard library's source)")
    p.add_argument("--width", choices=["split", "copy", "random"], help="width init (default split)")
    p.add_argument("--depth", choices=["stack", "interleave", "identity"], help="depth init (default identity)")
    p.add_argument("--per-layer", action="store_true", default=None, help="per-layer width maps")
    p.add_argument("--seed", type=int, help="seed (default 0)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default 128)")
    p.add_argument("--batch-size", type=int, help="sequences per micro-batch (default 8)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--resume", action="store_true", help="resume the training stage from OUT/trained")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    shared = ("seq_len", "batch_size", "seed", "trackers", "mixed_precision")
    add_train_flags(p, prefix="fit-", title="operator fit (fit-steps 0: no fit)", exclude=shared + ("save_every",
                                                                                                   "keep_last"))
    add_train_flags(p, prefix="", title="training", exclude=shared[:3])
    return p


def load_recipe(path: str | None) -> dict:
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise LigoError(f"recipe file {p} does not exist; check the path")
    data = parse_mapping(p.read_text(), f"recipe file {p}", RECIPE_KEYS)
    for key in ("fit", "train"):
        if key in data and not isinstance(data[key], dict):
            raise LigoError(f"recipe file {p}: '{key}' must be a mapping of training-config keys")
    return data


def run(args) -> int:
    import shutil

    from ..checkpoint import check_output_dir, write_json
    from ..data import load_blocks
    from ..grow import Grower, load_tokenizer
    from ..loop import latest_checkpoint
    from ..loop import TrainConfig
    from ..operator import GrowthPlan
    from ..train import train

    recipe = load_recipe(args.config)
    for key in ("source", "target", "out", "data", "width", "depth", "per_layer", "seed", "seq_len", "batch_size"):
        value = getattr(args, key)
        if value is not None:
            recipe[key] = value
    for key in ("source", "target", "out"):
        if not recipe.get(key):
            raise LigoError(f"no {key} given; pass it as a flag or put '{key}' in the --config recipe")
    if not isinstance(recipe["target"], dict):
        recipe["target"] = parse_target(str(recipe["target"]))
    shared = {"seq_len": recipe.get("seq_len", 128), "batch_size": recipe.get("batch_size", 8),
              "seed": recipe.get("seed", 0), "progress": not args.no_progress}
    fit_dict = {"steps": 0, "weight_decay": 0.0, "lr": 1e-3, "warmup": 10, **recipe.get("fit", {}),
                **train_overrides(args, "fit_")}
    fit_steps = fit_dict.pop("steps")
    if not isinstance(fit_steps, int) or fit_steps < 0:
        raise LigoError(f"fit steps must be a non-negative integer, got {fit_steps!r}")
    fit_cfg = TrainConfig.from_dict({**shared, **fit_dict, "steps": max(fit_steps, 1),
                                     "warmup": min(fit_dict["warmup"], max(fit_steps, 1))}, where="fit")
    train_cfg = TrainConfig.from_dict({**shared, **recipe.get("train", {}), **train_overrides(args)}, where="train")
    recipe["fit"] = {**fit_dict, "steps": fit_steps}
    recipe["train"] = {k: v for k, v in vars(train_cfg).items()}

    out = Path(recipe["out"])
    if not args.resume:
        check_output_dir(out, args.overwrite)
    created = not out.exists()
    grown = out / "grown"
    try:
        blocks = None
        if not (args.resume and (grown / "config.json").exists()):
            grower = Grower(recipe["source"], recipe["target"],
                            GrowthPlan(width=recipe.get("width", "split"), depth=recipe.get("depth", "identity"),
                                       per_layer=bool(recipe.get("per_layer", False)), seed=recipe.get("seed", 0)))
            # read the data once, before any work, so bad data fails fast and leaves nothing behind
            blocks = load_blocks(recipe.get("data"), load_tokenizer(grower.source.path), shared["seq_len"])
            if fit_steps:
                grower.fit(recipe.get("data"), fit_cfg, blocks=blocks)
            out.mkdir(parents=True, exist_ok=True)
            grower.save(grown, overwrite=True)
            write_json(out / "recipe.json", recipe)
        result = train(grown, recipe.get("data"), out / "trained", train_cfg, resume=args.resume, overwrite=True,
                       blocks=blocks)
    except BaseException:
        # a failure before the first training checkpoint leaves nothing behind; after it, the work is kept
        if created and out.exists() and latest_checkpoint(out / "trained") is None:
            shutil.rmtree(out, ignore_errors=True)
        raise
    if not result.loop.accelerator.is_main_process:
        return 0
    if result.loop.status == "preempted":
        print(f"preempted at step {result.loop.steps}; rerun with --resume")
        return 0
    print(f"grown model in {grown}; trained {result.loop.steps} steps, held-out loss {result.loop.final_val:.4f}; "
          f"final model in {out / 'trained'}")
    return 0
