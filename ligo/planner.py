"""The planner: when does growth pay, from the project's own benchmark results.

Losses at different scales are not comparable, so everything is expressed in *tokens per target
parameter* ``x = D / N`` (with ``D = FLOPs / (6 N)``), where published work locates growth's advantage
(it shrinks with longer training: arXiv 2605.13405 finds the gains largest below ~20 tokens/parameter).
For each method of a results file, a power law with a head start, ``L(x) = E + A * (x + x0)**(-alpha)``,
is fitted to its held-out curve (every budget's points after the first tenth): ``x0`` is how many tokens
per parameter of training the method's start is worth (about 0 for scratch). Each fit is checked on a
held-out budget: fitted without
the longest budget, it predicts that budget's final loss. Growth pays at ``x`` while
``L_scratch(x) - L_method(x)`` exceeds the noise floor measured by the benchmark; the planner reports
the ``x`` where that stops, and for a target of ``N`` parameters and a budget of ``C`` FLOPs where the
run would lie. It says when it extrapolates: beyond the measured range of ``x``, or to a larger
growth factor than was measured.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import LigoError


def _params(exp: dict, which: str, where: str) -> int:
    """Parameters of the experiment's source or target model (tied weights once), from its config."""
    from .tables import get_spec
    from .experiment import Experiment
    from .hf import meta_model

    experiment = Experiment.from_dict(exp, where)
    config = experiment.configs()[0 if which == "source" else 1]
    return sum(p.numel() for p in meta_model(get_spec(experiment.model_type).objective, config).parameters())


def _solve(xs: list[float], ys: list[float], alpha: float, x0: float) -> dict | None:
    """Closed-form least squares of E and A for a fixed alpha and x0."""
    z = [(x + x0) ** -alpha for x in xs]
    n, sz, sy = len(z), sum(z), sum(ys)
    szz, szy = sum(v * v for v in z), sum(a * b for a, b in zip(z, ys))
    det = n * szz - sz * sz
    if det <= 1e-18 * n * szz:
        return None
    a = (n * szy - sz * sy) / det
    e = (sy - a * sz) / n
    if e < 0:  # an irreducible loss below zero is no loss at all: E = 0, A alone
        e, a = 0.0, szy / szz
    if a <= 0:
        return None
    return {"E": e, "A": a, "alpha": alpha, "x0": x0, "sse": sum((e + a * v - y) ** 2 for v, y in zip(z, ys))}


def fit_power_law(xs: list[float], ys: list[float]) -> dict:
    """Least squares of ``L = E + A (x + x0)^-alpha`` (``E >= 0``; ``x0 >= 0``: a head start, in tokens per parameter):
    a coarse grid over alpha and x0, then a local search that halves its steps; E and A in closed form."""
    lo = min(xs)
    fits = [f for f in (_solve(xs, ys, i / 50, x0) for x0 in [0.0] + [lo * 10 ** (k / 8 - 2) for k in range(41)]
                        for i in range(1, 150)) if f is not None]
    if not fits:
        raise LigoError("the curve does not fall with compute; no power law to fit")
    best = min(fits, key=lambda f: f["sse"])
    step_a, step_x = 0.02, 0.5
    while step_a > 1e-5:
        moves = [(best["alpha"] + d, best["x0"]) for d in (-step_a, step_a)] + [
            (best["alpha"], best["x0"] * f if best["x0"] else lo * 1e-3 * f) for f in (1 - step_x, 1 + step_x)] + [
            (best["alpha"], 0.0)]
        better = [f for f in (_solve(xs, ys, a, x0) for a, x0 in moves if a > 0) if f and f["sse"] < best["sse"]]
        if better:
            best = min(better, key=lambda f: f["sse"])
        else:
            step_a, step_x = step_a / 2, step_x / 2
    best["rmse"] = math.sqrt(best.pop("sse") / len(xs))
    return best


def predict(law: dict, x: float) -> float:
    return law["E"] + law["A"] * (x + law.get("x0", 0.0)) ** -law["alpha"]


def _points(method: dict, n_params: int, skip: float = 0.1) -> list[tuple[float, float]]:
    curve = [p for p in method["curve"] if p["flops"] > 0]
    start = curve[int(len(curve) * skip):] if len(curve) > 3 else curve
    return [(p["flops"] / (6 * n_params) / n_params, p["val_loss"]) for p in start]


def analyse(report: dict) -> dict:
    """Power-law fits per method, their held-out error, and where growth stops paying."""
    exp = report["experiment"]
    where = f"the experiment of {report.get('source_file', 'the results')}"
    n_target, n_source = _params(exp, "target", where), _params(exp, "source", where)
    budgets = report["budgets"]
    names = list(budgets[0]["methods"])
    noise = budgets[0]["summary"].get("noise_floor") or 0.0
    out = {"experiment": exp["name"], "target_params": n_target, "source_params": n_source,
           "growth_factor": n_target / n_source, "noise_floor": noise, "methods": {}}
    for name in names:
        pts = [pt for b in budgets if name in b["methods"] for pt in _points(b["methods"][name], n_target)]
        law = fit_power_law([x for x, _ in pts], [y for _, y in pts])
        held = None
        if len(budgets) > 1:  # fitted without the longest budget, predict that budget's final loss
            early = [pt for b in budgets[:-1] for pt in _points(b["methods"][name], n_target)]
            last = budgets[-1]["methods"][name]
            x_end = last["curve"][-1]["flops"] / (6 * n_target) / n_target
            held = predict(fit_power_law([x for x, _ in early], [y for _, y in early]), x_end) - last["final_val_loss"]
        out["methods"][name] = {"law": law, "held_out_error": held, "x_range": [min(x for x, _ in pts),
                                                                                max(x for x, _ in pts)],
                                "staged_share": (budgets[0]["methods"][name].get("staged") or {}).get("share")}
    scratch = out["methods"]["scratch"]["law"]
    for name, m in out["methods"].items():
        if name == "scratch":
            continue
        lo, hi = out["methods"][name]["x_range"]
        xs = [lo * (1e4 ** (i / 400)) for i in range(401)]  # up to 4 orders of magnitude past the start
        gaps = [predict(scratch, x) - predict(m["law"], x) for x in xs]
        m["advantage_at_end"] = predict(scratch, hi) - predict(m["law"], hi)
        stop = next((x for x, g in zip(xs, gaps) if x > lo and g <= noise), None)
        m["pays_until_tokens_per_param"] = stop
    return out


def _read_results(path: str | Path) -> dict:
    """A results.json of ligo bench with finite losses, or one clear error."""
    try:
        report = json.loads(Path(path).read_text(), parse_constant=lambda c: float("nan"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        why = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
        raise LigoError(f"cannot read benchmark results {path} ({why}); pass results.json files of ligo bench") from None
    if not isinstance(report, dict) or "budgets" not in report or "experiment" not in report:
        raise LigoError(f"{path} is not a results.json of this ligo version's bench (no budgets); rerun the benchmark")
    losses = [p["val_loss"] for b in report["budgets"] for m in b["methods"].values() for p in m.get("curve", [])]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in losses):
        raise LigoError(f"{path} holds a loss that is not a finite number (NaN or inf): a run diverged; fit the "
                        "planner on results whose runs all finished")
    return report


def plan(results: list[str | Path], target_params: float, budget_flops: float,
         source_params: float | None = None) -> dict:
    """The recommendation for a target of ``target_params`` trained for ``budget_flops`` FLOPs."""
    for flag, value in (("--target-params", target_params), ("--budget", budget_flops),
                        ("--source-params", source_params)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise LigoError(f"{flag} must be a positive finite number, got {value}")
    reports = [_read_results(r) for r in results]
    x = budget_flops / (6 * target_params) / target_params
    analyses = [analyse(r) for r in reports]
    notes, candidates = [], []
    for a in analyses:
        lo = min(m["x_range"][0] for m in a["methods"].values())
        hi = max(m["x_range"][1] for m in a["methods"].values())
        if not lo / 2 <= x <= hi * 2:
            notes.append(f"{a['experiment']}: {x:.3g} tokens/parameter is outside the measured {lo:.3g}..{hi:.3g}; "
                         "the fits are extrapolated")
        if not a["target_params"] / 10 <= target_params <= a["target_params"] * 10:
            notes.append(f"{a['experiment']}: a target of {target_params:.3g} parameters is far from the measured "
                         f"{a['target_params']:.3g}; tokens per parameter carry the curves across sizes only "
                         "approximately (growth's advantage was seen to shrink at larger scale)")
        if source_params and target_params / source_params > a["growth_factor"] * 1.25:
            notes.append(f"{a['experiment']}: growth factor {target_params / source_params:.1f}x is larger than the "
                         f"measured {a['growth_factor']:.1f}x; growth's advantage shrinks with larger factors")
        for name, m in a["methods"].items():
            if name != "scratch":
                candidates.append((a["experiment"], name, predict(a["methods"]["scratch"]["law"], x) - predict(m["law"], x),
                                   m["pays_until_tokens_per_param"]))
    best = max(candidates, key=lambda c: c[2], default=None)
    floor = max((a["noise_floor"] for a in analyses), default=0.0)
    worst = max((abs(m["held_out_error"]) for a in analyses for m in a["methods"].values()
                 if m["held_out_error"] is not None), default=None)
    if worst is not None and worst > max(floor, 0.01):
        notes.append(f"the fits miss a held-out budget by up to {worst:.3f} nats, more than the noise floor "
                     f"({floor:.4f}): take the predictions as a direction, and the measured budgets as the evidence")
    verdict = "grow" if best and best[2] > floor else "train from scratch"
    if best and best[2] <= floor:
        notes.append(f"no growth method is predicted to beat scratch by more than the noise floor ({floor:.4f}) at "
                     f"{x:.3g} tokens/parameter: growth is not expected to pay at this budget")
    when = None
    if best and verdict == "grow":
        share = next(a["methods"][best[1]]["staged_share"] for a in analyses if a["experiment"] == best[0])
        factor = next(a["growth_factor"] for a in analyses if a["experiment"] == best[0])
        when = (f"grow after {100 * share:.0f}% of the budget, inside the run (staged)" if share else
                "grow a finished source model (its training is outside this budget)") + \
            f", by about {factor:.1f}x in parameters (the measured factor)"
    return {"tokens_per_param": x, "verdict": verdict, "when": when, "best": None if best is None else
            {"experiment": best[0], "method": best[1], "predicted_advantage": best[2],
             "pays_until_tokens_per_param": best[3]}, "notes": notes, "analyses": analyses}
