"""Grow with a fitted LiGO operator, then continue pretraining the grown model.

    python examples/grow_then_train.py --source path/to/model --data corpus/ --fit-steps 100 --steps 2000
    python examples/grow_then_train.py --smoke          # tiny random source, stdlib text, a few steps

The operator starts from the paper's init (random width, stacked depth), is fitted on the pretraining
loss (only its maps train; the source is frozen), materialized once, and the grown model is trained
through the same loop. The trained model's recipe carries the FLOPs ledger: source, fit and training.
"""

import argparse
import json
import tempfile
from pathlib import Path

from ligo import Grower, GrowthPlan, TrainConfig
from ligo import train

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--source", help="a local checkpoint directory (default with --smoke: a tiny random one)")
ap.add_argument("--data", help="text file, .jsonl or directory (default: the Python standard library's source)")
ap.add_argument("--out", help="output directory (default: a temporary directory)")
ap.add_argument("--fit-steps", type=int, default=100)
ap.add_argument("--steps", type=int, default=500)
ap.add_argument("--smoke", action="store_true", help="tiny and fast: checks that everything runs")
args = ap.parse_args()

work = Path(args.out or tempfile.mkdtemp(prefix="ligo-example-"))
if args.source is None:
    from _tiny import tiny_source

    args.source = tiny_source(work / "source")
if args.smoke:
    args.fit_steps, args.steps = 4, 6
common = dict(seq_len=64, batch_size=8, eval_batches=2, progress=not args.smoke)

grower = Grower(args.source, {"hidden": 128, "layers": 4, "heads": 8, "kv_heads": 4},
                GrowthPlan(width="random", depth="stack"))
fit = grower.fit(args.data, TrainConfig(steps=args.fit_steps, lr=3e-3, warmup=2, weight_decay=0.0,
                                        eval_every=max(1, args.fit_steps // 2), **common))
print(f"fit: held-out loss {fit.evals[0]['val_loss']:.3f} -> {fit.final_val:.3f} in {fit.steps} steps")
grower.save(work / "grown", overwrite=True)

result = train(work / "grown", args.data, work / "trained",
               TrainConfig(steps=args.steps, lr=2e-3, warmup=max(1, args.steps // 20),
                           eval_every=max(1, args.steps // 4), **common), overwrite=True)
print(f"trained: held-out loss {result.loop.evals[0]['val_loss']:.3f} -> {result.loop.final_val:.3f}")
ledger = json.loads((work / "trained" / "ligo_recipe.json").read_text())["ledger"]
print(f"FLOPs: fit {ledger['fit_flops']:.3e}, training {ledger['train_flops']:.3e}; model in {work / 'trained'}")
assert result.loop.final_val < result.loop.evals[0]["val_loss"] or args.smoke
