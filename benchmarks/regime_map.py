"""The regime map: when does growth pay, against the source trained on and against scratch, as the source's own
training and the budget change? (issue 43; read by ``ligo plan``.)

Six experiments (``benchmarks/experiments/regime/``): a 41K-parameter Llama source trained on 3, 30 and 300 tokens
per parameter, grown about 2x and 4x in parameters with the default plan, each against the same source trained on
and scratch at equal FLOPs, at 1, 3, 10 and 30 tokens per target parameter, every LR swept alike.

    OMP_NUM_THREADS=1 nice python benchmarks/regime_map.py run --out ~/regime     # hours on one core; resumable
    python benchmarks/regime_map.py collect --out ~/regime                        # results JSONs into benchmarks/results
    python benchmarks/regime_map.py report --figure docs/regime-map.png           # the map: tables and the figure

``run`` runs each experiment with ``--resume`` (a finished one is only read again), in order, so the job can be
stopped and started again at any point; ``collect`` copies each finished experiment's results.json to
``benchmarks/results/regime-s{S}-x{F}-cpu-DATE.json``. ``report`` reads the collected files (the newest of each
experiment; or, with ``--out``, the finished experiments there) and prints the map in markdown: the winner of the
three (grow, continue the source, scratch) at every budget, each one's best-LR loss, where growth stops paying against
scratch and where the grown model overtakes the source trained on, and the planner's held-out errors (fitted without
the longest budget, does it predict it within twice the noise floor?); ``--figure`` draws held-out loss against FLOPs,
one panel per experiment, with the fits the planner trusts and where growth stops paying.
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


def finished(out: Path | None, results: Path) -> list[Path]:
    """The results of each finished experiment: in ``out`` (the runs folder) when given, else the newest collected
    file of each in ``results``."""
    found = []
    for path in FILES:
        if out is not None:
            candidates = [out / path.stem / "results.json"]
        else:
            candidates = sorted(results.glob(f"{path.stem}-*.json"), key=lambda p: p.name[len(path.stem):])[-1:]
        found += [c for c in candidates if c.is_file()]
    return found


def report(files: list[Path], figure: Path | None) -> str:
    """The regime map in markdown (and its figure): every experiment's three-way answer at every budget, where
    growth stops paying, and the planner's held-out errors."""
    from ligo.evidence import gather, read_results
    from ligo.planner import HELD_OUT_TOLERANCE, VERDICTS, analyse, answer, summary

    if not files:
        raise SystemExit("no finished regime experiment: run `regime_map.py run`, then `collect` (or pass --out)")
    analyses = sorted((analyse(ev) for ev in gather([read_results(f) for f in files])),
                      key=lambda a: (a.evidence.growth_factor, a.evidence.strength or 0))
    labels = list(dict.fromkeys(lab for a in analyses for lab in a.evidence.budgets))
    lines = ["| source (tokens per parameter) | growth | " + " | ".join(
                 f"budget {lab}" for lab in labels) + " | growth stops paying against scratch | the grown model "
             "overtakes the source trained on |", "|---|---|" + "---|" * len(labels) + "---|---|"]
    details = []
    for a in analyses:
        ev, s = a.evidence, summary(a)
        cells = []
        for lab in labels:
            if lab not in ev.budgets:
                cells.append("—")
                continue
            ans = answer(a, ev.budgets[lab])
            short = ans["verdict"].replace(VERDICTS["scratch"], "scratch").replace(VERDICTS["continue"], "continue")
            cells.append(f"{short} ({ans.get('margin', 0):+.3f})" if "margin" in ans else short)
        stop, over = s["stops_paying"], s["overtakes"]
        lines.append(f"| {ev.strength:.3g} | {ev.growth_factor:.2f}x | " + " | ".join(cells) + " | " +
                     (f"{stop['X']:.3g}" if stop["X"] else "pays throughout" if stop["paid"] else "never pays") +
                     " | " + (f"{over['X']:.3g}" if over["X"] else "ahead throughout" if over.get("ahead") else
                              f"behind up to {a.reach:.3g}") + " |")
        details += ["", f"**{ev.name}**: source {ev.source_params:,} parameters on {ev.strength:.3g} tokens per "
                    f"parameter, target {ev.target_params:,} ({ev.growth_factor:.2f}x), noise floor " +
                    (f"{ev.noise_floor:.4f}" if ev.noise_floor is not None else "not measured") + ".", "",
                    "| budget (tokens per target parameter) | FLOPs | scratch | grow (best LR) | continue (best LR) |",
                    "|---|---|---|---|---|"]
        flops = _budget_flops(files, ev.name)
        for lab, X in ev.budgets.items():
            row = [f"{X:.3g}", f"{flops[lab]:.3g}" if lab in flops else "—"]
            for role in ("scratch", "grow", "continue"):
                pts = [(f, p) for f in ev.families.values() if f.role == role for p in f.points if p.label == lab]
                f, p = min(pts, key=lambda fp: fp[1].loss) if pts else (None, None)
                row.append("—" if p is None else f"{p.loss:.4f}" + ("" if role == "scratch" else f" ({p.method})"))
            details.append("| " + " | ".join(row) + " |")
    held = ["| experiment | family | held-out budget | predicted | measured | error | within "
            f"{HELD_OUT_TOLERANCE:g} x the noise floor | reliable |", "|---|---|---|---|---|---|---|---|"]
    for a in analyses:
        s = summary(a)
        for name, f in s["families"].items():
            if f["role"] == "staged":
                continue
            h = f["held_out"]
            floor = a.evidence.noise_floor
            within = "—" if h is None or floor is None else \
                f"{'yes' if abs(h['error']) <= HELD_OUT_TOLERANCE * floor else 'no'} ({abs(h['error']) / floor:.1f}x)"
            held.append(f"| {a.evidence.name} | {name} | " + (
                "— | — | — | —" if h is None else
                f"{h['X']:.3g} | {h['predicted']:.4f} | {h['measured']:.4f} | {h['error']:+.4f}") + f" | {within} | " +
                ("yes: " + f["law"] if f["reliable"] else "no: " + (f["why_not"] or "")) + " |")
    if figure is not None:
        _figure(analyses, files, figure)
    return "\n".join(["The regime map: the best of the three at each budget (its lead over the runner-up in nats; "
                      "'A or B': within the noise floor or the fit's uncertainty)", "", *lines, "", "Per experiment "
                      "(final held-out loss; each role at its best LR, as scratch at the best of its sweep):",
                      *details, "", "The planner's held-out errors (fitted without the longest budget):", "", *held])


def _budget_flops(files: list[Path], name: str) -> dict:
    """Budget label -> the FLOPs every method of that budget spent, from the files of experiment ``name``."""
    out = {}
    for f in files:
        r = json.loads(f.read_text())
        if r["experiment"]["name"] in name.split(" + "):
            out.update({b["label"]: b["budget_flops"] for b in r["budgets"] if b["label"] not in out})
    return out


def _figure(analyses, files: list[Path], path: Path) -> None:
    """Held-out loss against FLOPs, one panel per experiment: the measured finals of each role (its best LR), the
    planner's fit where it is reliable (drawn as far as it is trusted), and where growth stops paying."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ligo.planner import summary

    factors = sorted({round(a.evidence.growth_factor) for a in analyses})
    strengths = sorted({a.evidence.strength for a in analyses})
    fig, axes = plt.subplots(len(factors), len(strengths), figsize=(4.2 * len(strengths), 3.6 * len(factors)),
                             squeeze=False, sharey="row")
    colors = {"scratch": "black", "grow": "tab:blue", "continue": "tab:orange"}
    for a in analyses:
        ev, s = a.evidence, summary(a)
        ax = axes[factors.index(round(ev.growth_factor))][strengths.index(ev.strength)]
        flops = _budget_flops(files, ev.name)
        per_x = sum(flops[lab] / X for lab, X in ev.budgets.items()) / len(ev.budgets)  # the budget's FLOPs per X
        for role, color in colors.items():
            fams = [f for f in ev.families.values() if f.role == role]
            if not fams:
                continue
            best = {}
            for f in fams:
                for p in f.points:
                    if p.label not in best or p.loss < best[p.label][1].loss:
                        best[p.label] = (f, p)
            pts = sorted(best.values(), key=lambda fp: fp[1].X)
            ax.plot([p.X * per_x for _, p in pts], [p.loss for _, p in pts], "o-", lw=0.6, color=color, label=role)
            for f in fams:
                if s["families"][f.name]["reliable"]:
                    lo, hi = f.points[0].X, a.reach
                    grid = [lo * (hi / lo) ** (i / 60) for i in range(61)]
                    ax.plot([X * per_x for X in grid], [a.law.value(f.name, X * f.ratio) for X in grid], "--",
                            color=color, lw=1)
        for key, color, words in (("stops_paying", "tab:blue", " growth stops paying"),
                                  ("overtakes", "tab:orange", " grown passes continued")):
            X = s[key]["X"]
            if X:
                ax.axvline(X * per_x, color=color, ls=":", lw=1)
                ax.text(X * per_x, ax.get_ylim()[1], words, fontsize=7, va="top", color=color, rotation=90)
        ax.set_xscale("log")
        ax.set_title(f"source {ev.strength:.3g} tok/param, grown {ev.growth_factor:.2f}x", fontsize=9)
        ax.set_xlabel("training FLOPs of the budget")
        ax.set_ylabel("held-out loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("The regime map: held-out loss against FLOPs\n(points: each role's best LR; dashed: the planner's "
                 "reliable fits)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["run", "collect", "report"])
    ap.add_argument("--out", type=Path, help="the folder of the experiments' runs (run and collect need it; report "
                    "reads the finished experiments there instead of the collected files)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="only these experiments (e.g. regime-s300-x4)")
    ap.add_argument("--results", type=Path, default=HERE / "results",
                    help="collect: where the JSONs go; report: where it reads them")
    ap.add_argument("--figure", type=Path, help="report: write the figure here (e.g. docs/regime-map.png)")
    ap.add_argument("--md", type=Path, help="report: also write the markdown here")
    args = ap.parse_args()
    out = args.out.expanduser() if args.out else None
    if args.command in ("run", "collect") and out is None:
        ap.error(f"{args.command} needs --out (the folder of the experiments' runs)")
    if args.command == "run":
        run(out, args.only)
    elif args.command == "collect":
        collect(out, args.results)
    else:
        text = report(finished(out, args.results), args.figure)
        print(text)
        if args.md:
            args.md.write_text(text + "\n")


if __name__ == "__main__":
    main()
