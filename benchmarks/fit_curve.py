"""The operator fit on a real checkpoint: its held-out curve step by step (no early stop), for several starts
and step sizes, on the real-checkpoint experiments' source, data and blocks.

    python benchmarks/fit_curve.py --target a --steps 100 --json benchmarks/results/fit-curve-a-cpu-DATE.json
    python benchmarks/fit_curve.py --target b --runs paper-fan_in lossless-fan_in --steps 50

Runs (``--runs``, in order):

* ``paper-uniform``: the paper's init (random-mixture width, stacked depth) fitted with every map entry at the fit
  LR (``--width-lr uniform``, ligo's default until now): the setting of ``ligo grow --fit-steps`` that stayed at its
  start on this checkpoint;
* ``paper-fan_in``: the same start, each width map's LR divided by its fan-in (a relative change per unit);
* ``lossless-fan_in``: the lossless start (split width, identity depth), fan-in LRs.

Each run records the held-out loss every ``--eval-every`` steps (the same blocks as the benchmarks) and the
wall time. Run benchmarks/real_source.py first.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

TARGETS = {"a": {"hidden_size": 960, "num_hidden_layers": 32, "num_attention_heads": 15, "num_key_value_heads": 5,
                 "intermediate_size": 2560},
           "b": {"num_hidden_layers": 45}}
RUNS = {"paper-uniform": dict(width="random", depth="stack", width_lr="uniform"),
        "paper-fan_in": dict(width="random", depth="stack", width_lr="fan_in"),
        "lossless-fan_in": dict(width="split", depth="identity", width_lr="fan_in")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", choices=list(TARGETS), default="a")
    ap.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--json", required=True, help="results file (rewritten after every run: resumable)")
    args = ap.parse_args()
    import torch

    from ligo.checkpoint import load_tokenizer
    from ligo.config import GrowthPlan, TrainConfig
    from ligo.data import pack, read_texts
    from ligo.experiment import local_path
    from ligo.growth import Grower

    source, corpus = local_path("$LIGO_CACHE/real/smollm2-135m"), local_path("$LIGO_CACHE/real/austen")
    tokenizer = load_tokenizer(source)
    blocks = pack(read_texts(str(corpus), 5_000_000), tokenizer, 256)
    path = Path(args.json)
    done = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    done.update(target=TARGETS[args.target], steps=args.steps, lr=args.lr, date=time.strftime("%Y-%m-%d"),
                threads=torch.get_num_threads(), torch=torch.__version__)
    for name in args.runs:
        if name in done["runs"] and done["runs"][name].get("complete"):
            continue
        grower = Grower(source, TARGETS[args.target], GrowthPlan(**RUNS[name]), tokenizer=tokenizer)
        cfg = TrainConfig(steps=args.steps, lr=args.lr, warmup=1, weight_decay=0.0, eval_every=args.eval_every,
                          eval_batches=8, seq_len=256, batch_size=4, patience=0, progress=False)
        t0 = time.perf_counter()
        result = grower.fit(cfg=cfg, blocks=blocks)
        done["runs"][name] = {"plan": RUNS[name], "curve": [{"step": e["step"], "val_loss": e["val_loss"]}
                                                           for e in result.evals],
                              "best_step": grower.fit_record.best_step, "wall_s": time.perf_counter() - t0,
                              "flops_per_step": grower.fit_record.flops_per_step, "complete": True}
        path.write_text(json.dumps(done, indent=2))
        print(name, [(e["step"], round(e["val_loss"], 4)) for e in result.evals], flush=True)


if __name__ == "__main__":
    main()
