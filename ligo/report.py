"""Benchmark reports: savings against LR-tuned scratch and against the best fixed growth method, at each
budget, with the noise floor; the tables and plots written beside results.json.

Conventions: every method of a budget spends the same total FLOPs (the operator fit included).
"Saving (source free)" is 1 - FLOPs to reach scratch's final held-out loss / scratch's FLOPs to reach
it; "source counted" also charges the source model's training. "vs best fixed" is the same against
the best fixed growth method's final loss, which is what separates growth methods.
"""

from __future__ import annotations

from pathlib import Path

LEARNED = "fit"  # a method with an operator fit is a learned-operator method; one without is fixed


def flops_to_reach(curve: list[dict], target: float) -> float | None:
    """Linear interpolation of the FLOPs at which a held-out curve first reaches ``target``."""
    prev = None
    for point in curve:
        if point["val_loss"] <= target:
            if prev is None:
                return point["flops"]
            f0, l0, f1, l1 = prev["flops"], prev["val_loss"], point["flops"], point["val_loss"]
            return f0 + (f1 - f0) * (l0 - target) / (l0 - l1) if l0 != l1 else f1
        prev = point
    return None


def _wall_at(curve: list[dict], flops: float | None) -> float | None:
    if flops is None:
        return None
    for a, b in zip(curve, curve[1:]):
        if a["flops"] <= flops <= b["flops"]:
            t = 0.0 if b["flops"] == a["flops"] else (flops - a["flops"]) / (b["flops"] - a["flops"])
            return a["wall"] + t * (b["wall"] - a["wall"])
    return curve[-1]["wall"] if flops >= curve[-1]["flops"] else curve[0]["wall"]


def is_fixed(name: str, r: dict) -> bool:
    return name != "scratch" and not r.get(LEARNED)


def summarize(results: dict, source_flops: float | None, noise: float | None = None) -> dict:
    """One budget: savings against scratch (both conventions) and against the best fixed growth method."""
    scratch = results["scratch"]
    target = scratch["final_val_loss"]
    scratch_flops = flops_to_reach(scratch["curve"], target)
    fixed = [n for n, r in results.items() if is_fixed(n, r)]
    learned = [n for n, r in results.items() if r.get(LEARNED)]
    best_fixed = min(fixed, key=lambda n: results[n]["final_val_loss"]) if fixed else None
    fixed_target = results[best_fixed]["final_val_loss"] if best_fixed else None
    fixed_flops = flops_to_reach(results[best_fixed]["curve"], fixed_target) if best_fixed else None
    fixed_start = results[best_fixed]["start_val_loss"] if best_fixed else None
    rows = {}
    for name, r in results.items():
        f = flops_to_reach(r["curve"], target)
        g = flops_to_reach(r["curve"], fixed_target) if fixed_target is not None else None
        fit = r.get(LEARNED) or {}
        rows[name] = {
            "final_val_loss": r["final_val_loss"],
            "flops_to_scratch_final": f,
            "saving_source_free": None if f is None or not scratch_flops else 1 - f / scratch_flops,
            # a staged run trains its small model inside the budget: it has no separate source cost
            "saving_source_counted": None if f is None or name == "scratch" or not scratch_flops or
            (source_flops is None and not r.get("staged"))  # a pretrained source: its cost is unknown
            else 1 - (f + (0 if r.get("staged") else source_flops)) / scratch_flops,
            "flops_to_best_fixed_final": g,
            "saving_vs_best_fixed": None if g is None or not fixed_flops else 1 - g / fixed_flops,
            "vs_best_fixed_loss": None if fixed_target is None else r["final_val_loss"] - fixed_target,
            "fit_share": r["fit_flops"] / r["total_flops"] if r["total_flops"] else 0.0,
            # a fit that ends above the best fixed method's start loss is a defect (issue 11's definition):
            # the learned operator should never start worse than the best fixed method
            "fit_defect": bool(fit) and fixed_start is not None and fit["final_val"] > fixed_start,
            "wall_to_scratch_final": _wall_at(r["curve"], f),
        }
    best_learned = min(learned, key=lambda n: results[n]["final_val_loss"]) if learned else None
    targets = None
    if best_learned and best_fixed:
        row = rows[best_learned]
        targets = {"below_every_fixed": row["final_val_loss"] < fixed_target,
                   "margin_vs_noise": None if noise is None else (fixed_target - row["final_val_loss"]) / max(noise, 1e-9),
                   "flops_saving_vs_best_fixed_ge_10pct": (row["saving_vs_best_fixed"] or 0) >= 0.10,
                   "saving_vs_scratch_ge_50pct": (row["saving_source_free"] or 0) >= 0.50,
                   "fit_share_le_2pct": row["fit_share"] <= 0.02}
    return {"scratch_final_val_loss": target, "scratch_flops_to_final": scratch_flops, "best_fixed": best_fixed,
            "best_fixed_final_val_loss": fixed_target, "best_fixed_flops_to_final": fixed_flops,
            "best_fixed_start_val_loss": fixed_start, "best_learned": best_learned, "noise_floor": noise,
            "source_cost_known": source_flops is not None, "targets": targets, "rows": rows}


def _fmt(x, unit, missing="not reached"):
    if x is None:
        return missing
    return {"pct": f"{100 * x:.1f}%", "flops": f"{x:.3e}", "loss": f"{x:.4f}", "s": f"{x:.0f}s",
            "dloss": f"{x:+.4f}"}[unit]


def _dups(units: dict | None) -> str:
    """'dup/total' units over the grown spaces (residual, FFN, heads) after training."""
    if not units:
        return "—"
    spaces = [k for k in ("res", "ffn", "heads") if k in units]
    return f"{sum(units[k]['duplicates'] for k in spaces)}/{sum(units[k]['units'] for k in spaces)}"


def _downstream(m: dict) -> str:
    scores = m.get("downstream")
    if not scores:
        return "—"
    return ", ".join(f"{task} {next(iter(v.values())):.3f}" for task, v in scores.items() if v)


def budget_table(budget: dict) -> list[str]:
    s = budget["summary"]
    noise = s.get("noise_floor")
    lines = [f"Budget {budget['label']}: {budget['steps']} training steps of the target, "
             f"{budget['budget_flops']:.3e} FLOPs per method. Scratch (LR {budget['scratch_lr']:g}, the best of the "
             f"sweep) ends at {s['scratch_final_val_loss']:.4f}; best fixed method: {s['best_fixed']} "
             f"({_fmt(s['best_fixed_final_val_loss'], 'loss')})" +
             (f"; noise floor (seed to seed): ±{noise:.4f}." if noise is not None else "."), "",
             "| method | start loss | final loss | vs best fixed | FLOPs to best fixed's final | saving vs best fixed "
             "| saving vs scratch (source free) | (source counted) | fit share | fit start -> end | wall to scratch's "
             "final | duplicated units | downstream |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in s["rows"].items():
        m = budget["methods"][name]
        fit = m.get(LEARNED)
        fit_text = "—" if not fit else f"{fit['start_val']:.3f} -> {fit['final_val']:.3f}" + (
            " **defect**" if r["fit_defect"] else "")
        # empty where it cannot be: scratch, or a pretrained source whose training cost is unknown
        ref = "—" if name == "scratch" or not (s.get("source_cost_known", True) or m.get("staged")) else "not reached"
        lines.append(f"| {m['label']} | {m['start_val_loss']:.4f} | {r['final_val_loss']:.4f} | "
                     f"{_fmt(r['vs_best_fixed_loss'], 'dloss', '—')} | {_fmt(r['flops_to_best_fixed_final'], 'flops')} | "
                     f"{_fmt(r['saving_vs_best_fixed'], 'pct')} | {_fmt(r['saving_source_free'], 'pct')} | "
                     f"{_fmt(r['saving_source_counted'], 'pct', ref)} | {100 * r['fit_share']:.1f}% | {fit_text} | "
                     f"{_fmt(r['wall_to_scratch_final'], 's')} | {_dups(m.get('units'))} | {_downstream(m)} |")
    return lines


def _source_words(source: dict) -> str:
    if source.get("path"):
        return f"{source['path']} (pretrained elsewhere), held-out loss {source['final_val_loss']:.4f}."
    return f"{source['steps']} steps, held-out loss {source['final_val_loss']:.4f}, {source['flops']:.3e} FLOPs."


def markdown(report: dict) -> str:
    exp = report["experiment"]
    lines = [f"Experiment `{exp['name']}` ({report['source_file']}), ligo {report['ligo_version']}, torch "
             f"{report['torch']}, {report['device']}, {report['date']}. Equal total FLOPs for every method within a "
             f"budget (operator fit included). Source: " + _source_words(report['source']), ""]
    sweep = report.get("scratch_sweep") or {}
    for label, points in sweep.items():
        if len(points) > 1:
            lines.append(f"Scratch LR sweep ({label}): " + ", ".join(
                f"{p['lr']:g} -> {p['final_val_loss']:.4f}" for p in points) + ".")
    lines.append("")
    for budget in report["budgets"]:
        lines += budget_table(budget) + [""]
    if len(report["budgets"]) > 1:
        names = list(report["budgets"][0]["methods"])
        lines += ["Side by side (final held-out loss; saving vs best fixed):", "",
                  "| method | " + " | ".join(b["label"] for b in report["budgets"]) + " |",
                  "|---|" + "---|" * len(report["budgets"])]
        for n in names:
            cells = []
            for b in report["budgets"]:
                r = b["summary"]["rows"].get(n)
                cells.append("—" if r is None else f"{r['final_val_loss']:.4f} ({_fmt(r['saving_vs_best_fixed'], 'pct', '—')})")
            lines.append(f"| {report['budgets'][0]['methods'][n]['label']} | " + " | ".join(cells) + " |")
        lines.append("")
    if report.get("noise"):
        lines.append("Noise floor: " + ", ".join(f"{n}: [{', '.join(f'{x:.4f}' for x in v['seeds'])}] -> |Δ| {v['delta']:.4f}"
                                                  for n, v in report["noise"].items()) + ".")
    return "\n".join(lines) + "\n"


def plot(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for budget in report["budgets"]:
        zoom = _zoom(budget)
        for axis, label in (("flops", "training FLOPs (operator fit included)"), ("wall", "wall time (s)")):
            fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(13, 5) if zoom else (7, 4.5), squeeze=False)
            for ax in axes[0]:
                colors = plt.get_cmap("tab10" if len(budget["methods"]) <= 10 else "tab20")
                for i, (name, r) in enumerate(budget["methods"].items()):
                    xs = [p[axis] for p in r["curve"]]
                    ys = [p["val_loss"] for p in r["curve"]]
                    ax.plot(xs, ys, marker=".", lw=2 if name == "scratch" or r.get(LEARNED) else 1.2, label=r["label"],
                            color=colors(i % colors.N))
                ax.axhline(budget["summary"]["scratch_final_val_loss"], color="grey", ls=":", lw=1)
                ax.set_xlabel(label)
                ax.set_ylabel("held-out loss")
                ax.grid(alpha=0.3)
            axes[0][0].set_title(f"{report['experiment']['name']} ({budget['label']}): held-out loss vs {axis}")
            axes[0][0].legend(fontsize=7)
            if zoom:  # the final losses close together: the same curves, where they end
                axes[0][1].set_ylim(*zoom)
                axes[0][1].set_title("the same, near the best final losses")
            fig.tight_layout()
            suffix = "" if budget is report["budgets"][0] else f"-{budget['label']}"
            fig.savefig(out / f"loss_vs_{axis}{suffix}.png", dpi=110)
            plt.close(fig)


def _zoom(budget: dict) -> tuple[float, float] | None:
    """A loss range that shows the best final losses apart, when the curves span far more (None otherwise)."""
    finals = sorted(r["final_val_loss"] for r in budget["methods"].values())
    everything = [p["val_loss"] for r in budget["methods"].values() for p in r["curve"]]
    best = finals[: max(2, (len(finals) + 1) // 2)]  # the better half
    spread = max(best[-1] - best[0], 1e-3)
    if max(everything) - min(everything) < 8 * spread:
        return None
    return best[0] - 0.5 * spread, best[-1] + 1.5 * spread
