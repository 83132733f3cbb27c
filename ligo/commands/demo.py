"""ligo demo: the whole story on an embedded default, with no arguments and no download.

Trains a BPE tokenizer and a tiny Llama-shaped model on the Python standard library's source, grows it
with the LiGO operator (at the paper's init, ligo's default for such a weakly trained source, and fitted), and trains the grown models,
a fixed-growth baseline and a model from scratch at equal total FLOPs. Prints the table and writes a
plot of held-out loss vs FLOPs.
"""

from __future__ import annotations


def add_parser(sub, name):
    p = sub.add_parser(name, help="grow and train a tiny model end to end (no download, a few minutes on CPU)",
                       description=__doc__)
    p.add_argument("--out", default="ligo-demo", help="output directory (default: ./ligo-demo; an earlier demo there "
                   "is replaced)")
    p.add_argument("--smoke", action="store_true", help="seconds-long version (checks the pipeline only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run(args) -> int:
    from pathlib import Path

    import os

    import torch

    from ..bench import load_experiment, run_experiment

    if "OMP_NUM_THREADS" not in os.environ:
        # tiny models gain nothing from a second thread, and two threads beside another process on a 2-core machine
        # thrash (the source's 400 steps: over 9 minutes with two threads, 80 s with one, beside one training job)
        torch.set_num_threads(1)
    exp = load_experiment("demo", smoke=args.smoke)
    run_experiment(exp, args.out, progress=not args.no_progress, overwrite=True)
    out = Path(args.out).resolve()
    print((out / "table.md").read_text())
    print(f"outputs in {out}/: table.md, results.json, loss_vs_flops.png (the plot), loss_vs_wall.png, "
          "source/ (the small model), runs/<method>/ (grown models, logs, trained models)")
    return 0
