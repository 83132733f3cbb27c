"""The planner: grow the source, continue training it, or train the target from scratch? Answered from ligo's own
benchmark results, and only as far as they reach (docs/benchmarks.md#the-planner says what it knows and what not).

**The evidence** is read by :mod:`ligo.evidence`: each method's role (scratch, grow, continue), its LR family, the
tokens and parameters of every run, the noise floor.

**The law.** Only final losses are fitted: a cosine run's middle is not the end of a shorter run. With ``x`` a run's
training tokens per *target* parameter (the source trained on sees about ``N_target / N_source`` times the target's
tokens for the same FLOPs)::

    scratch:   L(x) = E + B (x / x_ref)^-b
    a family:  L(x) = E + d + B ((x + h) / x_ref)^-b

E, B and b are scratch's: a model's data term depends on the tokens it saw, not on its size (Chinchilla's
``L(N, D) = E' + A N^-a + B D^-b``). ``h`` is the head start, in tokens per target parameter, that a family's start is
worth (at most the source's own pretraining tokens); ``d`` is the loss it never recovers (a smaller model, the source
trained on; or a grown one that stays effectively smaller). Bounded least squares (scipy): scratch on its own points,
then each family's d and h against it, with bounds that keep every number physical (``0 <= E <= scratch's lowest
loss``, ``0.02 <= b <= 2``, ``0 <= d``, ``0 <= h <= the source's tokens``). The head start makes growth's advantage
shrink with budget, and shrink more the more the source was trained (arXiv 2510.06548); ``d`` lets a family fall
behind scratch (a crossover).

**Reliable or not.** A fit is used only when it has at least three budgets, stays inside its bounds (a parameter
pinned to a bound means the form does not hold, unless the bound is a physical value: ``E = 0``, the irreducible loss
beyond these budgets; ``d = 0``; ``h = 0``; ``h`` = all the source's tokens, the source kept whole), and, fitted
without the longest budget, predicts that budget's final loss within ``HELD_OUT_TOLERANCE`` times the noise floor (the
difference of two noisy numbers: the noise floor is one seed-to-seed difference). A reliable fit is trusted as far
beyond the longest budget as its held-out check reached (the ratio of the two longest budgets); everywhere else the
planner answers only where a budget was measured (interpolated between budgets in log tokens) and says "unknown"
beyond.

**Across scale.** The answer comes from the experiment nearest the user's source in growth factor and source
strength (its pretraining tokens per parameter), at the user's tokens per target parameter; the losses are in that
experiment's units. Carrying it to another size, factor or strength is an assumption the headline names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import LigoError
from .evidence import Evidence, Family, Point, gather, read_results
from .settings import Settings, required, setting

HELD_OUT_TOLERANCE = 2.0  # a fit must predict its held-out budget within this many noise floors
MIN_BUDGETS = 3  # budgets a law needs (three parameters of scratch); one more to check it held out
EXPONENT = (0.02, 2.0)  # the data exponent b: flatter is a log, steeper than x^-2 is no power law of data
NEAR_MEASURED = 1.05  # a budget within 5% of a measured one is that budget (users round)
VERDICTS = {"grow": "grow", "continue": "continue the source", "scratch": "train the target from scratch"}
NAMES = {"grow": "the grown model", "continue": "the source trained on", "scratch": "scratch"}


@dataclass
class PlanQuery(Settings):
    """The question: a source, a target and a budget."""

    WHERE = "ligo plan"

    target_params: float = required("parameters of the model you want (e.g. 3.6e8)")
    budget: float = required("training FLOPs you will spend on it (e.g. 1e19; about 6 x parameters x tokens)")
    source_params: float = required("parameters of the checkpoint you would grow, or continue training")
    source_tokens: Optional[float] = setting(
        None, "tokens the source was pretrained on, where known (about 2e12 for SmolLM2-135M): the more, the less "
        "growing or continuing it buys", positive=True)
    step_tokens: Optional[float] = setting(
        None, "tokens per optimizer step of your run (default: the evidence's own); a budget below one step is "
        "refused", positive=True)

    def __post_init__(self) -> None:
        for name in ("target_params", "budget", "source_params", "source_tokens", "step_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or
                                      not math.isfinite(value) or value <= 0):
                raise LigoError(f"--{name.replace('_', '-')} must be a positive finite number, got {value}")
        super().__post_init__()
        if self.source_params >= self.target_params:
            raise LigoError(f"the source ({self.source_params:.3g} parameters) is not smaller than the target "
                            f"({self.target_params:.3g}): growth makes a model larger; give the larger model you "
                            "would grow into as --target-params (the answer weighs continuing the source too)")


# -- the evidence: what a results file records for the planner ------------------------------------------------------
# -- the law: one bounded least-squares fit per experiment ---------------------------------------------------------
@dataclass
class Law:
    theta: list[float]  # E, B, b, then d and h of each fitted family
    names: list[str]  # the parameter names, e.g. "E", "d[default]"
    families: list[str]  # the fitted families other than scratch, in theta's order
    x_ref: float
    cov: list[list[float]]  # covariance of theta (zero rows and columns for parameters held at a bound)
    pinned: list[str]  # parameters at a bound that is not physical: the form does not hold
    rmse: float
    e_at_zero: bool = False  # the irreducible loss at its bound 0: these budgets do not reach it

    def value(self, family: str, x: float, theta=None) -> float:
        t = self.theta if theta is None else theta
        e, b_coef, b = t[0], t[1], t[2]
        d = h = 0.0
        if family in self.families:
            i = 3 + 2 * self.families.index(family)
            d, h = t[i], t[i + 1]
        return e + d + b_coef * ((x + h) / self.x_ref) ** -b

    def _gradient(self, family: str, x: float):
        """d value / d theta, by forward differences."""
        import numpy as np

        base, grad = self.value(family, x), np.zeros(len(self.theta))
        for i, t in enumerate(self.theta):
            step = 1e-6 * max(1.0, abs(t))
            moved = list(self.theta)
            moved[i] = t + step
            grad[i] = (self.value(family, x, moved) - base) / step
        return grad

    def _sd(self, grad) -> float:
        import numpy as np

        return float(math.sqrt(max(0.0, grad @ np.asarray(self.cov) @ grad)))

    def predict(self, family: str, x: float) -> tuple[float, float]:
        """The predicted loss and its standard deviation (the fit's, linearized)."""
        return self.value(family, x), self._sd(self._gradient(family, x))

    def difference(self, a: tuple[str, float], b: tuple[str, float]) -> float:
        """The standard deviation of ``L_a(x_a) - L_b(x_b)`` (correlations through the shared parameters kept)."""
        return self._sd(self._gradient(*a) - self._gradient(*b))

    def describe(self, family: str) -> str:
        e, b_coef, b = self.theta[:3]
        zero = " (E = 0: these budgets do not reach the irreducible loss)" if self.e_at_zero else ""
        if family not in self.families:
            return f"{e:.3f} + {b_coef:.3f} (x/{self.x_ref:.3g})^-{b:.3f}{zero}"
        i = 3 + 2 * self.families.index(family)
        d, h = self.theta[i], self.theta[i + 1]
        return f"{e + d:.3f} + {b_coef:.3f} ((x + {h:.3g})/{self.x_ref:.3g})^-{b:.3f}{zero}"


def _bounded(residuals, starts: list, lo: list, hi: list, names: list[str], low_ok: list[bool], high_ok: list[bool],
             run_sd: float):
    """The best of bounded least-squares fits from ``starts``: its parameters, their covariance (zero where a
    parameter sits on a bound), the parameters on a bound that is not a physical value, and its squared error."""
    import numpy as np
    from scipy.optimize import least_squares

    lo_a, hi_a = np.array(lo, dtype=float), np.array(hi, dtype=float)
    span = hi_a - lo_a
    best = None
    for t0 in starts:
        t0 = np.clip(np.array(t0, dtype=float), lo_a + 1e-9 * span, hi_a - 1e-9 * span)
        res = least_squares(residuals, t0, bounds=(lo_a, hi_a), method="trf", x_scale="jac")
        if best is None or res.cost < best.cost:
            best = res
    t = best.x
    at_lo = (best.active_mask == -1) | (t - lo_a <= 1e-6 * span)
    at_hi = (best.active_mask == 1) | (hi_a - t <= 1e-6 * span)
    pinned = [f"{n} at its {'lower' if at_lo[i] else 'upper'} bound ({(lo if at_lo[i] else hi)[i]:.3g})"
              for i, n in enumerate(names) if (at_hi[i] and not high_ok[i]) or (at_lo[i] and not low_ok[i])]
    free = ~(at_lo | at_hi)
    n, p = len(best.fun), int(free.sum())
    sse = float(np.sum(best.fun ** 2))
    s2 = max(sse / (n - p) if n > p else 0.0, run_sd ** 2)
    cov = np.zeros((len(t), len(t)))
    if p:
        jf = best.jac[:, free]
        cov[np.ix_(free, free)] = s2 * np.linalg.pinv(jf.T @ jf)
    return [float(v) for v in t], cov, pinned, sse, bool(at_lo[0])


def fit_law(ev: Evidence, upto: float | None = None) -> tuple[Law | None, str]:
    """The law of ``ev`` fitted on its budgets up to ``upto`` (X; all when None): (law, "") or (None, why not).
    Scratch first, on its own points (the reference is not bent to suit the others), then each family's head start
    and lost loss against it."""
    import numpy as np

    def pts(f: Family) -> list[Point]:
        return [p for p in f.points if upto is None or p.X <= upto * (1 + 1e-9)]

    scratch = pts(ev.families["scratch"])
    if len(scratch) < MIN_BUDGETS:
        return None, f"{len(scratch)} budget{'s' * (len(scratch) != 1)} measured; a law needs {MIN_BUDGETS}"
    fams = [f for f in ev.families.values() if f.role in ("grow", "continue") and len(pts(f)) >= MIN_BUDGETS]
    xs, ys = np.array([p.x for p in scratch]), np.array([p.loss for p in scratch])
    x_ref = float(np.exp(np.mean(np.log(xs))))
    lowest = float(ys.min())
    highest = max([float(ys.max())] + [p.loss for f in fams for p in pts(f)])
    run_sd = ev.noise_floor / math.sqrt(2) if ev.noise_floor else 0.0
    near = float(ys[np.argmin(np.abs(np.log(xs / x_ref)))])
    # E = 0 is allowed (these budgets need not reach the irreducible loss: shown as such); B and b on a bound are not
    theta, cov, pinned, sse, e_zero = _bounded(
        lambda t: t[0] + t[1] * (xs / x_ref) ** -t[2] - ys,
        [[e0, max(near - e0, 1e-3), b0] for e0 in (0.5 * lowest, 0.9 * lowest) for b0 in (0.2, 0.6)],
        [0.0, 0.0, EXPONENT[0]], [lowest, 2 * highest, EXPONENT[1]], ["E", "B", "b"], [True, False, False],
        [False, False, False], run_sd)
    e, b_coef, b = theta
    names, covs, sq, n = ["E", "B", "b"], [cov], sse, len(ys)
    h_max = ev.source_tokens / ev.target_params if ev.source_tokens else None
    for f in fams:
        fx, fy = np.array([p.x for p in pts(f)]), np.array([p.loss for p in pts(f)])
        top = h_max or 1e4 * float(fx.max())  # the source's tokens bound the head start; unknown, a far bound
        # d = 0 (nothing lost), h = 0 (no head start) and h = all the source's tokens (a lossless start, or the
        # source itself trained on) are physical values; h on the far bound of an unknown source is not
        part, c, pins, err, _ = _bounded(
            lambda t, fx=fx, fy=fy: e + t[0] + b_coef * ((fx + t[1]) / x_ref) ** -b - fy,
            [[0.01, h0] for h0 in (0.3 * float(fx.min()), min(3 * float(fx.max()), 0.5 * top))],
            [0.0, 0.0], [highest, top], [f"d[{f.name}]", f"h[{f.name}]"], [True, True], [False, h_max is not None],
            run_sd)
        theta += part
        names += [f"d[{f.name}]", f"h[{f.name}]"]
        covs.append(c)
        pinned += pins
        sq, n = sq + err, n + len(fy)
    full = np.zeros((len(theta), len(theta)))
    i = 0
    for c in covs:
        full[i:i + len(c), i:i + len(c)] = c
        i += len(c)
    law = Law(theta, names, [f.name for f in fams], x_ref, full.tolist(), pinned, math.sqrt(sq / n), e_zero)
    return law, ""


# -- the analysis of one experiment: its law, held-out errors, what it can answer ----------------------------------
@dataclass
class Analysis:
    evidence: Evidence
    law: Optional[Law]
    why_no_law: str
    held_out: dict  # family -> {"predicted", "measured", "error", "X"}
    doubts: dict  # family -> why its fit is not reliable ("" where it is)
    reach: float  # X as far as a reliable fit is trusted (the longest budget when none is)

    def value(self, family: str, X: float) -> dict:
        """A family's loss at budget X: from its fit, from its measured budgets, or unknown (with why)."""
        ev, fam = self.evidence, self.evidence.families[family]
        pts = fam.points
        lo, hi = pts[0].X, pts[-1].X
        why = self.doubts.get(family, "not fitted")
        if not why and lo / NEAR_MEASURED <= X <= self.reach:
            loss, sd = self.law.predict(family, X * fam.ratio)
            return {"loss": loss, "sd": sd, "basis": "fit" if X <= hi * NEAR_MEASURED else
                    f"fit, extrapolated beyond the longest budget ({hi:.3g})"}
        if lo / NEAR_MEASURED <= X <= hi * NEAR_MEASURED:
            p = min(pts, key=lambda p: abs(math.log(X / p.X)))
            if abs(math.log(X / p.X)) <= math.log(NEAR_MEASURED):
                return {"loss": p.loss, "sd": ev.noise_floor, "basis": f"measured at {p.X:.3g}"}
            for a, b in zip(pts, pts[1:]):
                if a.X <= X <= b.X:
                    t = math.log(X / a.X) / math.log(b.X / a.X)
                    return {"loss": a.loss + t * (b.loss - a.loss), "sd": ev.noise_floor,
                            "basis": f"interpolated between the budgets {a.X:.3g} and {b.X:.3g}"}
        if X < lo:
            return {"loss": None, "basis": f"unknown below the shortest budget ({lo:.3g} tokens per target parameter)"}
        limit = self.reach if not why else hi
        return {"loss": None, "basis": f"unknown beyond {limit:.3g} tokens per target parameter (" + (
            "as far as the fit's held-out check reached)" if not why else f"no reliable fit: {why})")}

    def role(self, role: str, X: float) -> dict | None:
        """The best family of a role at budget X (None: the role was not measured)."""
        fams = [f for f in self.evidence.families.values() if f.role == role]
        if not fams:
            return None
        values = [{**self.value(f.name, X), "family": f.name} for f in fams]
        known = [v for v in values if v["loss"] is not None]
        return min(known, key=lambda v: v["loss"]) if known else values[0]


def _pinned(law: Law, family: str) -> list[str]:
    """The parameters a family's predictions rest on that sit at a bound that is not physical: scratch's (E, B, b)
    for every family, its own d and h for itself."""
    mine = ("E", "B", "b") if family == "scratch" else ("E", "B", "b", f"d[{family}]", f"h[{family}]")
    return [p for p in law.pinned if p.split(" ")[0] in mine]


def analyse(ev: Evidence) -> Analysis:
    """Fit the law, check it on the longest budget held out, and decide which families it is reliable for."""
    law, why = fit_law(ev)
    labels = list(ev.budgets)
    held: dict = {}
    doubts = {f: why or "" for f in ev.families}
    for f in ev.families.values():
        if f.role == "staged":
            doubts[f.name] = "staged growth is not fitted (another question: when to grow inside a run)"
        elif len(f.points) < MIN_BUDGETS:
            doubts[f.name] = f"{len(f.points)} budget{'s' * (len(f.points) != 1)} measured; a law needs {MIN_BUDGETS}"
    if law is not None:
        for name in law.families + ["scratch"]:
            pinned = _pinned(law, name)
            if pinned:
                doubts[name] = "the fit leaves its bounds (" + "; ".join(pinned) + ")"
        if len(labels) <= MIN_BUDGETS:
            for name in law.families + ["scratch"]:
                doubts[name] = doubts[name] or (f"no budget to hold out ({len(labels)} measured; a check needs "
                                                f"{MIN_BUDGETS + 1})")
        else:
            last, before = ev.budgets[labels[-1]], ev.budgets[labels[-2]]
            early, early_why = fit_law(ev, upto=before)
            for name in law.families + ["scratch"]:
                fam = ev.families[name]
                point = next((p for p in fam.points if p.label == labels[-1]), None)
                if point is None:
                    doubts[name] = doubts[name] or "not measured at the longest budget"
                    continue
                if early is None or name not in early.families + ["scratch"]:
                    doubts[name] = doubts[name] or f"no fit without the longest budget ({early_why or 'too few'})"
                    continue
                predicted = early.value(name, point.x)
                error = predicted - point.loss
                held[name] = {"X": last, "predicted": predicted, "measured": point.loss, "error": error}
                if _pinned(early, name):
                    doubts[name] = doubts[name] or ("without the longest budget the fit leaves its bounds (" +
                                                    "; ".join(_pinned(early, name)) + ")")
                elif ev.noise_floor is None:
                    doubts[name] = doubts[name] or "no noise floor measured to check the held-out error against"
                elif abs(error) > HELD_OUT_TOLERANCE * ev.noise_floor:
                    doubts[name] = doubts[name] or (f"it misses the held-out budget by {error:+.3f} nats, more "
                                                    f"than {HELD_OUT_TOLERANCE:g} x the noise floor "
                                                    f"({ev.noise_floor:.3f})")
    X = list(ev.budgets.values())
    trusted = any(not doubt for doubt in doubts.values())
    reach = X[-1] * (X[-1] / X[-2]) if len(X) > 1 and trusted else X[-1]
    return Analysis(ev, law, why, held, doubts, reach)


def crossing(an: Analysis, a: str, b: str, X_lo: float, X_hi: float) -> dict:
    """Where role ``a`` overtakes role ``b`` (its loss falls below b's) between budgets X_lo and X_hi, from the fit
    where both are reliable there, else between measured budgets; None where it does not happen."""
    grid = [X_lo * (X_hi / X_lo) ** (i / 200) for i in range(201)] if X_hi > X_lo else [X_lo]
    prev = None
    for X in grid:
        va, vb = an.role(a, X), an.role(b, X)
        if va is None or vb is None or va["loss"] is None or vb["loss"] is None:
            continue
        gap = vb["loss"] - va["loss"]
        if prev is not None and prev[1] <= 0 < gap:
            t = -prev[1] / (gap - prev[1])
            return {"X": prev[0] * (X / prev[0]) ** t, "basis": va["basis"] if va["basis"].startswith("fit") else
                    "interpolated between budgets"}
        prev = (X, gap)
    return {"X": None, "ahead": prev is not None and prev[1] > 0}


def stops_paying(an: Analysis, X_hi: float) -> dict:
    """The budget where growth's lead over scratch falls to the noise floor (from the shortest budget to ``X_hi``)."""
    floor = an.evidence.noise_floor or 0.0
    X_lo = next(iter(an.evidence.budgets.values()))
    grid = [X_lo * (X_hi / X_lo) ** (i / 200) for i in range(201)] if X_hi > X_lo else [X_lo]
    prev = None
    for X in grid:
        g, s = an.role("grow", X), an.role("scratch", X)
        if g is None or g["loss"] is None or s["loss"] is None:
            continue
        lead = s["loss"] - g["loss"] - floor
        if prev is not None and prev[1] > 0 >= lead:
            t = prev[1] / (prev[1] - lead)
            return {"X": prev[0] * (X / prev[0]) ** t, "paid": True}
        prev = (X, lead) if prev is None or prev[1] <= 0 or lead > 0 else prev
    return {"X": None, "paid": prev is not None and prev[1] > 0}


# -- the answer -------------------------------------------------------------------------------------------------
def answer(an: Analysis, X: float) -> dict:
    """The three-way answer of one experiment at budget X (tokens per target parameter)."""
    ev = an.evidence
    roles = {r: an.role(r, X) for r in ("grow", "continue", "scratch")}
    known = sorted(((r, v) for r, v in roles.items() if v is not None and v["loss"] is not None),
                   key=lambda rv: rv[1]["loss"])
    unknown = {r: v["basis"] for r, v in roles.items() if v is not None and v["loss"] is None}
    missing = [r for r, v in roles.items() if v is None]
    out = {"experiment": ev.name, "X": X, "roles": roles, "unknown": unknown, "not_measured": missing}
    if len(known) < 2 or unknown:
        out["verdict"] = "unknown"
        out["why"] = "; ".join(f"{VERDICTS[r]}: {why}" for r, why in unknown.items()) or "one option measured"
        if known:
            out["known"] = known[0][0]
        return out
    (first, a), (second, b) = known[0], known[1]
    margin = b["loss"] - a["loss"]
    sd = None
    if an.law is not None and a["basis"].startswith("fit") and b["basis"].startswith("fit"):
        sd = an.law.difference((a["family"], X * ev.families[a["family"]].ratio),
                               (b["family"], X * ev.families[b["family"]].ratio))
    floor = ev.noise_floor
    tie_at = max(floor or 0.0, 2 * (sd or 0.0))
    out.update(best=first, runner_up=second, margin=margin, margin_sd=sd)
    if margin <= tie_at:
        out["verdict"] = f"{VERDICTS[first]} or {VERDICTS[second]}"
        out["why"] = (f"a tie, {NAMES[first]} and {NAMES[second]} {margin:.3f} nats apart, within " +
                      (f"the noise floor ({floor:.3f})" if floor and floor >= 2 * (sd or 0) else
                       f"twice the fit's uncertainty ({2 * (sd or 0):.3f})"))
    else:
        out["verdict"] = VERDICTS[first]
        out["why"] = f"{NAMES[first]} ahead of {NAMES[second]} by {margin:.3f} nats" + (
            "" if floor else ", and no noise floor was measured to tell that from noise")
    return out


def load(results: list[str | Path]) -> list[Analysis]:
    """The analyses of results files; a folder stands for the ligo bench results in it (other JSON files there, such
    as speed measurements, are passed over; a file named alone must be one)."""
    reports = []
    for r in results:
        if not Path(r).is_dir():
            reports.append(read_results(r))
            continue
        found = []
        for path in sorted(Path(r).glob("*.json")):
            try:
                found.append(read_results(path))
            except LigoError as exc:
                if "is not a results.json of ligo bench" not in str(exc):
                    raise
        if not found:
            raise LigoError(f"{r} holds no results.json of ligo bench; pass the results of an experiment (ligo bench)")
        reports += found
    return [analyse(ev) for ev in gather(reports)]


def plan(results: list[str | Path], query: PlanQuery | dict) -> dict:
    """The recommendation for ``query`` (a :class:`PlanQuery` or its mapping) from benchmark results."""
    q = query if isinstance(query, PlanQuery) else PlanQuery.from_dict(query)
    analyses = load(results)
    step = q.step_tokens or min(a.evidence.tokens_per_step for a in analyses)
    one_step = 6 * q.target_params * step
    if q.budget < one_step:
        raise LigoError(f"a budget of {q.budget:.3g} FLOPs is less than one training step of the target (6 x "
                        f"{q.target_params:.3g} parameters x {step:.0f} tokens = {one_step:.3g} FLOPs); give the FLOPs "
                        "of the whole run (--budget), or your step's tokens (--step-tokens)")
    X = q.budget / (6 * q.target_params) / q.target_params
    g = q.target_params / q.source_params
    s = None if q.source_tokens is None else q.source_tokens / q.source_params

    def distance(an: Analysis) -> float:
        ev = an.evidence
        d = abs(math.log(g / ev.growth_factor))
        if s is not None:
            d += abs(math.log(s / ev.strength)) if ev.strength else math.log(10)
        return d

    answers = {a.evidence.name: answer(a, X) for a in analyses}
    # the nearest source first; of equally near ones, one that reaches the budget
    ranked = sorted(analyses, key=lambda a: (round(distance(a), 9), answers[a.evidence.name]["verdict"] == "unknown"))
    primary = ranked[0]
    first = answers[primary.evidence.name]
    fallback = next((a for a in ranked[1:] if "unknown" not in answers[a.evidence.name]["verdict"]), None)
    headline = _headline(first, primary, q, X, g, s)
    if first["verdict"] == "unknown" and fallback is not None:
        more = _headline(answers[fallback.evidence.name], fallback, q, X, g, s)
        headline += ["the nearest evidence that reaches your budget: " + more[0], *more[1:]]
    return {"query": q.to_dict(), "tokens_per_param": X, "growth_factor": g, "source_strength": s,
            "verdict": first["verdict"], "headline": headline, "evidence": primary.evidence.name,
            "answers": answers, "analyses": [summary(a) for a in ranked]}


def _losses(ans: dict) -> str:
    known = [(r, v) for r, v in ans["roles"].items() if v is not None and v["loss"] is not None]
    if not known:
        return ""
    bases = list(dict.fromkeys(v["basis"] for _, v in known))
    return ", ".join(f"{r} {v['loss']:.3f}" + (f" ± {v['sd']:.3f}" if v.get("sd") else "") for r, v in known) + \
        f" ({'; '.join(bases)})"


def _headline(ans: dict, an: Analysis, q: PlanQuery, X: float, g: float, s: float | None) -> list[str]:
    """The answer in a few lines: the verdict, the losses, the crossover, and every extrapolation."""
    ev = an.evidence
    X_lo, X_hi = next(iter(ev.budgets.values())), list(ev.budgets.values())[-1]
    if ans["verdict"] == "unknown":
        whys = list(dict.fromkeys(ans["unknown"].values()))
        lines = [f"unknown at {X:.3g} tokens per target parameter, from {ev.name}: " + (
            whys[0] if len(whys) == 1 else "; ".join(f"{VERDICTS[r]}: {w}" for r, w in ans["unknown"].items()))]
        at_end = answer(an, X_hi if X > X_hi else X_lo)
        if at_end["verdict"] != "unknown":
            lines.append(f"  at its {'longest' if X > X_hi else 'shortest'} budget ({at_end['X']:.3g}) it says: "
                         f"{at_end['verdict']} ({at_end['why']}); {_losses(at_end)}")
    else:
        lines = [f"{ans['verdict']} at {X:.3g} tokens per target parameter, from {ev.name}: {ans['why']}",
                 f"  predicted held-out loss, in its units: {_losses(ans)}"]
    if ans["not_measured"]:
        lines.append("  not measured there: " + ", ".join(VERDICTS[r] for r in ans["not_measured"]))
    if any(f.role == "continue" for f in ev.families.values()) and any(f.role == "grow" for f in ev.families.values()):
        over = crossing(an, "grow", "continue", X_lo, an.reach)
        if over["X"] is not None:
            lines.append(f"  the grown model overtakes the source trained on at {over['X']:.3g} tokens per target "
                         f"parameter ({6 * q.target_params ** 2 * over['X']:.3g} FLOPs for your target; "
                         f"{over['basis']})")
        else:
            where = f"at the one budget measured ({X_lo:.3g})" if an.reach == X_lo else \
                f"at every budget from {X_lo:.3g} to {an.reach:.3g} tokens per target parameter"
            lines.append(f"  the grown model is {'ahead of' if over.get('ahead') else 'behind'} the source trained on "
                         f"{where}; unknown beyond")
    if any(f.role == "grow" for f in ev.families.values()):
        stop = stops_paying(an, an.reach)
        if stop["X"] is not None:
            lines.append(f"  growth's lead over scratch falls to the noise floor at {stop['X']:.3g} tokens per target "
                         f"parameter ({6 * q.target_params ** 2 * stop['X']:.3g} FLOPs for your target)")
    extrap = []
    if max(q.target_params / ev.target_params, ev.target_params / q.target_params) > 10:
        extrap.append(f"carried from {ev.target_params:.3g} to {q.target_params:.3g} parameters by tokens per "
                      "parameter")
    if abs(math.log(g / ev.growth_factor)) > math.log(1.25):
        extrap.append(f"your growth factor {g:.2f}x against its {ev.growth_factor:.2f}x")
    if s is None:
        extrap.append("your source's pretraining tokens not given (--source-tokens); its source had " +
                      (f"{ev.strength:.3g} tokens per parameter" if ev.strength else "an unknown number"))
    elif ev.strength is None:
        extrap.append(f"your source's {s:.3g} tokens per parameter against an unknown number for its source")
    elif abs(math.log(s / ev.strength)) > math.log(2):
        extrap.append(f"your source's {s:.3g} tokens per parameter against its {ev.strength:.3g}")
    if any("extrapolated" in (v or {}).get("basis", "") for v in ans["roles"].values()):
        extrap.append(f"beyond its longest budget ({X_hi:.3g} tokens per target parameter)")
    if extrap:
        lines.append("  extrapolated: " + "; ".join(extrap))
    return lines


def summary(an: Analysis) -> dict:
    """One experiment's analysis as data (``ligo plan --json`` and the regime map's report)."""
    ev = an.evidence
    fams = {}
    for f in ev.families.values():
        reliable = not an.doubts.get(f.name, "x")
        fams[f.name] = {
            "role": f.role, "label": f.label, "members": f.members, "params": f.params, "token_ratio": f.ratio,
            "points": [{"budget": p.label, "X": p.X, "x": p.x, "loss": p.loss, "method": p.method} for p in f.points],
            "law": an.law.describe(f.name) if reliable else None,
            "reliable": reliable, "why_not": an.doubts.get(f.name) or None,
            "held_out": an.held_out.get(f.name)}
    law = None
    if an.law is not None and not an.law.pinned:
        law = dict(zip(an.law.names, an.law.theta), x_ref=an.law.x_ref, rmse=an.law.rmse)
    X = list(ev.budgets.values())
    return {"experiment": ev.name, "files": ev.files, "source_params": ev.source_params,
            "source_tokens": ev.source_tokens, "source_strength": ev.strength, "target_params": ev.target_params,
            "growth_factor": ev.growth_factor, "noise_floor": ev.noise_floor, "budgets": ev.budgets,
            "law": law, "why_no_law": an.why_no_law or None, "reach": an.reach, "families": fams,
            "stops_paying": stops_paying(an, an.reach), "overtakes": crossing(an, "grow", "continue", X[0], an.reach)}
