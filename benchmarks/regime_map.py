"""The regime map: when does growth pay, against the source trained on and against scratch, as the source's own
training and the budget change? (issue 43; read by ``ligo plan``.)

Six experiments (``benchmarks/experiments/regime/``): a 41K-parameter Llama source trained on 3, 30 and 300 tokens
per parameter, grown about 2x and 4x in parameters with the default plan, each against the same source trained on
and scratch at equal FLOPs, at 1, 3, 10 and 30 tokens per target parameter, every LR swept alike.

    OMP_NUM_THREADS=1 nice python benchmarks/regime_map.py run --out ~/regime     # hours on one core; resumable
    python benchmarks/regime_map.py collect --out ~/regime                        # results JSONs into benchmarks/results

``run`` runs each experiment with ``--resume`` (a finished one is only read again), in order, so the job can be
stopped and started again at any point; ``collect`` copies each finished experiment's results.json to
``benchmarks/results/regime-s{S}-x{F}-cpu-DATE.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = [HERE / "experiments" / "regime" / f"regime-s{s}-x{f}.yaml" for f in (2, 4) for s in (3, 30, 300)]


def run(out: Path, only: list[str] | None) -> None:
    from ligo.bench import load_experiment, run_experiment
    from ligo.errors import Preempted

    for path in FILES:
        if only and path.stem not in only:
            continue
        exp = load_experiment(path)
        t0 = time.perf_counter()
        print(f"== {exp.name}", flush=True)
        try:
            run_experiment(exp, out / exp.name, progress=False, resume=True,
                           log=lambda line: print(line, flush=True))
        except Preempted as stop:
            print(f"preempted at {stop.run} step {stop.step}; run the same command again to continue", flush=True)
            sys.exit(143)
        print(f"== {exp.name} done in {time.perf_counter() - t0:.0f} s", flush=True)


def collect(out: Path, dest: Path) -> None:
    for path in FILES:
        found = out / path.stem / "results.json"
        if not found.exists():
            print(f"{path.stem}: not finished")
            continue
        report = json.loads(found.read_text())
        target = dest / f"{path.stem}-{report['device']}-{report['date']}.json"
        shutil.copyfile(found, target)
        print(f"{path.stem}: {target}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["run", "collect"])
    ap.add_argument("--out", required=True, type=Path, help="the folder of the experiments' runs")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="only these experiments (e.g. regime-s300-x4)")
    ap.add_argument("--results", type=Path, default=HERE / "results", help="collect: where the JSONs go")
    args = ap.parse_args()
    if args.command == "run":
        run(args.out.expanduser(), args.only)
    else:
        collect(args.out.expanduser(), args.results)


if __name__ == "__main__":
    main()
