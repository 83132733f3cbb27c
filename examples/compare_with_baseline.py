"""Compare LiGO growth with training from scratch and with stacking, at equal total FLOPs.

    python examples/compare_with_baseline.py                 # ~3 minutes on 2 CPU cores
    python examples/compare_with_baseline.py --smoke         # seconds: checks the pipeline

An experiment is plain data (the same keys as the YAML files in benchmarks/experiments/). Every
method gets the same FLOPs budget; a method that fits its operator first trains for fewer steps.
"""

import argparse
import json
import tempfile
from pathlib import Path

from ligo.bench import load_experiment, run_experiment

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--out", help="output directory (default: a temporary directory)")
ap.add_argument("--smoke", action="store_true")
args = ap.parse_args()

out = Path(args.out or tempfile.mkdtemp(prefix="ligo-compare-"))
experiment = {
    "name": "compare",
    "model_type": "gpt2",
    "corpus_bytes": 2_000_000,
    "vocab_size": 1024,
    "seq_len": 64,
    "batch_size": 16,
    "source": {"config": {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 64},
               "train": {"steps": 200, "lr": 3e-3, "warmup": 10, "eval_every": 100}},
    "target": {"hidden": 128, "layers": 4, "heads": 8},
    "train": {"steps": 200, "lr": 2e-3, "warmup": 10, "eval_every": 20},
    "fit": {"steps": 5, "lr": 3e-3, "warmup": 1, "eval_every": 5},
    "methods": {"scratch": {}, "stack": {"width": "copy", "depth": "stack", "label": "stack (fixed)"},
                "ligo": {"width": "random", "depth": "stack", "fit": True, "label": "LiGO (fitted)"}},
    "smoke": {"corpus_bytes": 200_000, "vocab_size": 300, "seq_len": 32, "batch_size": 4,
              "source": {"train": {"steps": 3, "eval_every": 3}}, "train": {"steps": 5, "eval_every": 5},
              "fit": {"steps": 1, "eval_every": 1}},
}
spec_file = out / "experiment.json"
out.mkdir(parents=True, exist_ok=True)
spec_file.write_text(json.dumps(experiment))  # JSON is valid YAML: load_experiment validates it like any file
report = run_experiment(load_experiment(spec_file, smoke=args.smoke), out / "results", progress=False)
print((out / "results" / "table.md").read_text())
rows = report["budgets"][0]["summary"]["rows"]
for name in ("stack", "ligo"):
    saving = rows[name]["saving_source_free"]
    print(f"{name}: {'not reached' if saving is None else f'{100 * saving:.1f}%'} of scratch's FLOPs saved")
