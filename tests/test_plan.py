"""The planner: its law on a synthetic family of curves with known crossovers, what it refuses, and its answers on
the committed results (no model on disk)."""

import json
import math
import re
import subprocess
import sys

import pytest

from conftest import ROOT, assert_one_line_error
from ligo.errors import LigoError
from ligo.evidence import gather, read_results
from ligo.planner import PlanQuery, analyse, plan

N_T, N_S, STEP = 100_000, 50_000, 1_000  # target and source parameters, tokens per step
FLOOR = 0.01
BUDGETS = (1, 3, 10, 30)  # tokens per target parameter


def scratch(X):
    return 2.0 + 3.0 * X ** -0.5


def grown(X):  # a head start of 10 tokens per parameter that fades, and 0.05 nats it never recovers
    return 2.05 + 3.0 * (X + 10.0) ** -0.5


def continued(X):  # half the size: twice the tokens; a strong source (40 tokens per target parameter) and 0.3 nats
    return 2.3 + 3.0 * (2 * X + 40.0) ** -0.5


def _root(f, lo, hi):
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if f(lo) * f(mid) > 0 else (lo, mid)
    return lo


def _report(laws=None, budgets=BUDGETS, floor=FLOOR, name="synthetic", source_tokens=1000 * N_T):
    """A results.json of ligo bench, evidence record included, whose final losses follow known laws: scratch (LR
    swept), a grown family at two LRs (the other 0.05 worse) and the source trained on at two LRs."""
    laws = laws or {"scratch": scratch, "default": grown, "default-lr0.3": lambda X: grown(X) + 0.05,
                    "continue": continued, "continue-lr0.3": lambda X: continued(X) + 0.05}
    small = {"hidden_size": 32}
    settings = {"scratch": {}, "default": {}, "default-lr0.3": {"lr_scale": 0.3},
                "continue": {"target": small, "width": "copy", "depth": "stack"},
                "continue-lr0.3": {"target": small, "width": "copy", "depth": "stack", "lr_scale": 0.3}}
    roles = {n: "scratch" if n == "scratch" else "continue" if n.startswith("continue") else "grow" for n in laws}
    ratio = {n: 2 if roles[n] == "continue" else 1 for n in laws}
    out, tokens = [], {}
    for X in budgets:
        label, steps = f"{X:g}x", round(X * N_T * N_T / STEP / N_T)
        methods = {}
        for n, law in laws.items():
            loss = law(X)
            curve = [{"flops": 0.0, "wall": 0.0, "val_loss": loss + 1, "step": 0},
                     {"flops": 6.0 * N_T * X * N_T, "wall": 1.0, "val_loss": loss, "step": steps * ratio[n]}]
            methods[n] = {"label": n, "final_val_loss": loss, "train_steps": steps * ratio[n], "curve": curve}
        tokens[label] = {n: methods[n]["train_steps"] * STEP for n in laws}
        out.append({"label": label, "multiplier": X, "steps": steps, "methods": methods,
                    "budget_flops": 6.0 * N_T * X * N_T, "summary": {"noise_floor": floor}})
    evidence = {"format": 1, "source": {"params": N_S, "tokens": source_tokens, "tokens_from": "the test"},
                "target": {"params": N_T}, "noise_floor": floor, "tokens": tokens,
                "methods": {n: {"role": roles[n], "params": N_S if roles[n] == "continue" else N_T,
                                "tokens_per_step": STEP} for n in laws}}
    experiment = {"name": name, "model_type": "llama", "source": {"config": {}, "train": {"steps": source_tokens}},
                  "target": {}, "train": {},
                  "methods": {n: settings.get(n, {}) for n in laws}}
    return {"experiment": experiment, "budgets": out, "source": {"steps": None}, "evidence": evidence}


def _write(tmp_path, report, name="results.json"):
    path = tmp_path / name
    path.write_text(json.dumps(report))
    return path


def _query(X, **more):
    return PlanQuery(**{"target_params": N_T, "budget": 6.0 * N_T * N_T * X, "source_params": N_S,
                        "source_tokens": 1000.0 * N_T, **more})


def test_the_law_recovers_a_known_family_and_checks_itself_on_the_longest_budget(tmp_path):
    (an,) = [analyse(ev) for ev in gather([read_results(_write(tmp_path, _report()))])]
    law = an.law
    assert law.pinned == [] and law.rmse < 1e-4
    fitted = dict(zip(law.names, law.theta))
    assert fitted["E"] == pytest.approx(2.0, abs=1e-3) and fitted["b"] == pytest.approx(0.5, rel=1e-3)
    assert fitted["B"] * law.x_ref ** 0.5 == pytest.approx(3.0, rel=1e-3)  # B is the loss above E at x_ref
    assert fitted["h[default]"] == pytest.approx(10.0, rel=1e-2)  # the head start, in tokens per target parameter
    assert fitted["d[default]"] == pytest.approx(0.05, abs=1e-3)  # the loss never recovered
    assert fitted["h[continue]"] == pytest.approx(40.0, rel=1e-2)
    assert fitted["d[continue]"] == pytest.approx(0.3, abs=1e-3)
    # the LR variants are one family each, at their best LR
    assert set(an.evidence.families) == {"scratch", "default", "continue"}
    assert an.evidence.families["continue"].members == ["continue", "continue-lr0.3"]
    assert an.evidence.families["continue"].ratio == pytest.approx(2.0)
    # fitted without the 30-token budget, it predicts it; so it is trusted 3x beyond it, and no further
    assert all(abs(h["error"]) < 1e-3 for h in an.held_out.values()) and not any(an.doubts.values())
    assert an.reach == pytest.approx(90.0)


def test_the_planner_finds_the_known_crossovers(tmp_path):
    path = _write(tmp_path, _report())
    overtakes = _root(lambda X: continued(X) - grown(X), 3, 30)  # the grown model passes the source trained on
    stops = _root(lambda X: scratch(X) - grown(X) - FLOOR, 3, 60)  # growth's lead falls to the noise floor
    out = plan([path], _query(3))
    summary = out["analyses"][0]
    assert summary["overtakes"]["X"] == pytest.approx(overtakes, rel=0.03)
    assert summary["stops_paying"]["X"] == pytest.approx(stops, rel=0.03)
    assert any(f"overtakes the source trained on at {overtakes:.3g}"[:-1] in line for line in out["headline"])
    # the three answers, each where the known laws put it
    assert plan([path], _query(2))["verdict"] == "continue the source"
    assert plan([path], _query(overtakes * 1.3))["verdict"] == "grow"
    late = plan([path], _query(80))  # beyond the crossover with scratch, beyond the longest budget: said so
    assert late["verdict"] == "train the target from scratch" and "extrapolated: " in late["headline"][-1]
    assert "beyond its longest budget (30" in late["headline"][-1]
    assert late["answers"]["synthetic"]["roles"]["scratch"]["loss"] == pytest.approx(scratch(80), abs=1e-3)
    # a tie is called a tie: near the grown model's crossover with the source trained on
    assert " or " in plan([path], _query(overtakes))["verdict"]


def test_where_the_evidence_does_not_reach_the_answer_is_unknown(tmp_path):
    path = _write(tmp_path, _report())
    far = plan([path], _query(1000))
    assert far["verdict"] == "unknown" and "unknown beyond 90" in far["headline"][0]
    assert "at its longest budget (30) it says" in far["headline"][1]
    assert all(v["loss"] is None for v in far["answers"]["synthetic"]["roles"].values())
    assert "unknown below the shortest budget (1" in plan([path], _query(0.2))["headline"][0]
    # two budgets: no law, only what was measured (between the budgets), and unknown beyond the longest
    two = _write(tmp_path, _report(budgets=(1, 3)), "two.json")
    mid = plan([two], _query(2))
    assert mid["answers"]["synthetic"]["roles"]["grow"]["basis"].startswith("interpolated between the budgets")
    assert plan([two], _query(5))["verdict"] == "unknown"
    assert all(f["law"] is None for f in mid["analyses"][0]["families"].values())


def test_a_fit_that_misses_its_held_out_budget_or_leaves_its_bounds_is_no_formula(tmp_path, cli):
    report = _report()
    for name in ("default", "default-lr0.3"):  # the longest budget ends 0.1 nats lower than the law says
        report["budgets"][-1]["methods"][name]["final_val_loss"] -= 0.1
    an = analyse(gather([read_results(_write(tmp_path, report))])[0])
    assert "misses the held-out budget by +0.100 nats" in an.doubts["default"] and not an.doubts["scratch"]
    assert an.held_out["default"]["error"] == pytest.approx(0.1, abs=0.02)
    # a log, which a power law with E >= 0 only follows for a while: E = 0 is allowed (said), the held-out check fails
    logs = {n: (lambda X, c=c: c - 0.4 * math.log(X)) for n, c in (("scratch", 5.0), ("default", 4.8))}
    flat = analyse(gather([read_results(_write(tmp_path, _report(logs), "log.json"))])[0])
    assert flat.law.e_at_zero and "misses the held-out budget by +0.070" in flat.doubts["scratch"]
    # steeper than any power law of data (x^-3): the exponent sits on its bound, so no formula is shown
    steep = {"scratch": lambda X: 2 + 5 * X ** -3.0, "default": lambda X: 2.1 + 5 * (X + 0.5) ** -3.0}
    _write(tmp_path, _report(steep), "steep.json")
    for name in ("log", "steep"):
        proc = cli("plan", "--results", tmp_path / f"{name}.json", "--target-params", N_T, "--budget",
                   6 * N_T * N_T * 3, "--source-params", N_S, check=True)
        assert "^-" not in proc.stdout, proc.stdout  # no formula shown
    assert "no reliable fit: the fit leaves its bounds (b at its upper bound (2))" in proc.stdout


def test_plan_refuses_what_it_cannot_answer(tmp_path, cli):
    path = _write(tmp_path, _report())
    with pytest.raises(LigoError, match="the source .* is not smaller than the target"):
        plan([path], _query(3, source_params=2 * N_T))
    with pytest.raises(LigoError, match="less than one training step of the target"):
        plan([path], _query(3, budget=6.0 * N_T * STEP * 0.5))
    plan([path], _query(3, budget=6.0 * N_T * STEP * 1.5, step_tokens=STEP))  # one step and a half: answered
    base = ["plan", "--results", path, "--target-params", N_T, "--budget", 6 * N_T * N_T]
    assert_one_line_error(cli(*base, "--source-params", 2 * N_T), "plan", "is not smaller than the target")
    assert_one_line_error(cli(*base), "plan", "--source-params is required")
    assert_one_line_error(cli("plan", "--results", path, "--target-params", N_T, "--budget", 100,
                              "--source-params", N_S), "plan", "less than one training step")
    assert_one_line_error(cli("plan", "--results", tmp_path / "none.json", *base[3:], "--source-params", N_S),
                          "plan", "cannot read benchmark results")
    (tmp_path / "old.json").write_text(json.dumps({"methods": {}}))
    assert_one_line_error(cli("plan", "--results", tmp_path / "old.json", *base[3:], "--source-params", N_S),
                          "plan", "not a results.json of ligo bench")


def test_plan_answers_on_every_committed_result_with_no_model_on_disk(cli):
    """Every committed results file of ligo bench (the real-checkpoint ones too: their source is not here) answers,
    and no fit is shown with an exponent above 3 or a coefficient above 1e6."""
    results = ROOT / "benchmarks" / "results"  # the folder: its other files (speed measurements) are passed over
    proc = cli("plan", "--results", results, "--target-params", 3.6e8, "--budget", 1e19, "--source-params", 1.35e8,
               "--source-tokens", 2e12, check=True)
    assert proc.stdout.splitlines()[0].startswith("unknown at 12.9 tokens per target parameter, from real-smollm2-a")
    assert "it says: continue the source" in proc.stdout and "continue 3.381" in proc.stdout
    for name in ("cpu-tiny", "cpu-tiny-strong", "cpu-tiny-moe", "cpu-tiny-staged", "real-smollm2-b", "real-smollm2-a"):
        assert f"\n{name}" in proc.stdout, name  # every experiment answered (files of one experiment as one)
    assert_one_line_error(cli("plan", "--results", results / "depth-speed-cpu-2026-12-05.json", "--target-params",
                              3.6e8, "--budget", 1e19, "--source-params", 1.35e8), "plan", "not a results.json of ligo")
    for law in re.findall(r"\| ([^|]*\^-[^|]*) \|", proc.stdout):
        numbers = [float(v) for v in re.findall(r"[-+]?\d+\.?\d*(?:e[-+]?\d+)?", law)]
        assert max(numbers) < 1e6 and float(law.split("^-")[-1]) <= 3, law


def test_the_regime_map_report(tmp_path):
    """benchmarks/regime_map.py report: the map (the winner at every budget), where growth stops paying, the
    held-out errors, and the figure, from the finished experiments of a runs folder."""
    weak = {"scratch": scratch, "default": lambda X: 2.05 + 3.0 * (X + 1.0) ** -0.5,
            "continue": lambda X: 2.3 + 3.0 * (2 * X + 1.0) ** -0.5}  # a head start within the source's 1.5
    for name, laws, tokens in (("regime-s3-x2", weak, 3 * N_S), ("regime-s300-x2", None, 300 * N_S)):
        (tmp_path / name).mkdir()
        _write(tmp_path / name, _report(laws, name=name, source_tokens=tokens))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "regime_map.py"), "report", "--out", str(tmp_path),
                           "--figure", str(tmp_path / "map.png"), "--md", str(tmp_path / "map.md")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp_path / "map.md").read_text()
    rows = [line for line in text.splitlines() if re.match(r"\| (3|300) \| 2\.00x \|", line)]
    assert len(rows) == 2 and rows[1].split(" | ")[2].startswith("continue (+")  # the strong source at 1 token
    stops = _root(lambda X: scratch(X) - grown(X) - FLOOR, 3, 60)
    assert f"| {stops:.3g} |" in rows[1]
    assert "| regime-s300-x2 | default | 30 | " in text and "| yes (0.0x) | yes: 2.050 + " in text
    assert (tmp_path / "map.png").stat().st_size > 10_000


def test_files_of_one_experiment_are_read_as_one():
    """real-smollm2-b at 1x and 2x: one experiment of two budgets; the source trained on is one family although the
    two files spell its target two ways ({num_hidden_layers: 30} and {}), each budget at its best LR."""
    names = ("real-smollm2-b-cpu-2026-12-05.json", "real-smollm2-b-2x-cpu-2026-12-05.json")
    (ev,) = gather([read_results(ROOT / "benchmarks" / "results" / n) for n in names])
    assert list(ev.budgets) == ["1x", "2x"] and ev.noise_floor == pytest.approx(0.0664, abs=1e-4)
    (cont,) = [f for f in ev.families.values() if f.role == "continue"]
    assert [(p.method, round(p.loss, 4)) for p in cont.points] == [("continue-1e-4", 3.3771), ("continue-1e-4", 3.3215)]
    out = plan([ROOT / "benchmarks" / "results" / n for n in names],
               PlanQuery(target_params=1.876e8, budget=6.5e13, source_params=1.345e8, source_tokens=2e12))
    assert out["verdict"] == "continue the source or grow" and "within the noise floor (0.066)" in out["headline"][0]
    assert "interpolated between the budgets 0.000218 and 0.000437" in out["headline"][1]
