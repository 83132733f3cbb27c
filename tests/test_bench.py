"""Benchmarks and the demo: the equal-FLOPs accounting, and every experiment file run in smoke mode."""

import json
from pathlib import Path

import pytest
from conftest import run_cli

from ligo.bench import flops_to_reach, load_experiment, run_experiment, summarize
from ligo.errors import LigoError

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "benchmarks" / "experiments").glob("*.yaml"))


def test_flops_to_reach_interpolates():
    curve = [{"flops": 0.0, "val_loss": 5.0}, {"flops": 10.0, "val_loss": 3.0}, {"flops": 20.0, "val_loss": 2.0}]
    assert flops_to_reach(curve, 4.0) == pytest.approx(5.0)
    assert flops_to_reach(curve, 2.5) == pytest.approx(15.0)
    assert flops_to_reach(curve, 6.0) == 0.0
    assert flops_to_reach(curve, 1.0) is None


def _run(final, curve_losses, fit_flops=0.0, fit=None):
    curve = [{"flops": 10.0 * i, "wall": float(i), "val_loss": v, "step": i} for i, v in enumerate(curve_losses)]
    return {"curve": curve, "final_val_loss": curve[-1]["val_loss"], "fit": fit, "fit_flops": fit_flops,
            "total_flops": curve[-1]["flops"]}


def test_summarize_both_conventions_and_best_fixed():
    results = {"scratch": _run(None, [8.0, 6.0, 5.0, 4.0, 3.0]),
               "stack": _run(None, [4.0, 3.0, 2.8, 2.6, 2.5]),
               "net2net": _run(None, [3.5, 3.2, 2.9, 2.7, 2.6]),
               "ligo": _run(None, [5.0, 2.9, 2.5, 2.3, 2.2], fit_flops=1.0, fit={"steps": 1})}
    s = summarize(results, source_flops=5.0)
    assert s["best_fixed"] == "stack" and s["scratch_flops_to_final"] == 40.0
    rows = s["rows"]
    assert rows["scratch"]["saving_source_free"] == 0.0 and rows["scratch"]["saving_source_counted"] is None
    assert rows["stack"]["flops_to_scratch_final"] == 10.0
    assert rows["stack"]["saving_source_free"] == pytest.approx(0.75)
    assert rows["stack"]["saving_source_counted"] == pytest.approx(1 - 15 / 40)
    assert rows["ligo"]["flops_to_best_fixed_final"] == 20.0   # ligo reaches 2.5 at step 2
    assert rows["ligo"]["saving_vs_best_fixed"] == pytest.approx(0.5)  # stack needs 40
    assert rows["scratch"]["flops_to_best_fixed_final"] is None
    assert rows["ligo"]["fit_share"] == pytest.approx(1 / 40)


def test_experiment_files_are_strict(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel_type: llama\nstepz: 3\nmethods: {scratch: {}}\n")
    with pytest.raises(LigoError, match="unknown key"):
        load_experiment(bad)
    bad.write_text("name: x\nmodel_type: llama\nmethods: {stack: {width: copy}}\n")
    with pytest.raises(LigoError, match="scratch"):
        load_experiment(bad)
    with pytest.raises(LigoError, match="not found"):
        load_experiment(tmp_path / "missing.yaml")


def _check_report(out: Path, exp: dict):
    report = json.loads((out / "results.json").read_text())
    assert set(report["methods"]) == set(exp["methods"])
    for name, m in report["methods"].items():
        # equal total FLOPs: a fitted method trains for fewer steps, never for more FLOPs than scratch
        assert m["total_flops"] <= report["methods"]["scratch"]["total_flops"] * 1.02, name
        assert len(m["curve"]) >= 2 and all(p["val_loss"] > 0 for p in m["curve"])
        assert (m["fit"] is not None) == bool(exp["methods"][name] and exp["methods"][name].get("fit")), name
        if exp.get("unit_report", True):
            assert {"res", "ffn", "heads"} <= set(m["units"]), name
    if exp["methods"].get("net2net") is not None and exp.get("unit_report", True):
        # the symmetry trap, visible in every report: plain copies are still copies after training
        assert report["methods"]["net2net"]["units"]["res"]["duplicates"] > 0
        assert report["methods"]["split"]["units"]["res"]["duplicates"] == 0
    assert (out / "loss_vs_flops.png").stat().st_size > 10_000
    assert (out / "loss_vs_wall.png").stat().st_size > 10_000
    table = (out / "table.md").read_text()
    assert table.count("\n|") == len(exp["methods"]) + 2
    return report


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_smoke(path, tmp_path):
    """Every shipped experiment (the GPU ones included, with bf16 autocast) runs end to end at toy size."""
    exp = load_experiment(path, smoke=True)
    run_experiment(exp, tmp_path / "out", progress=False, log=lambda *_: None)
    _check_report(tmp_path / "out", exp)


def test_demo_smoke_through_the_cli(tmp_path):
    proc = run_cli("demo", "--smoke", "--no-progress", "--out", tmp_path / "demo", check=True)
    assert "| LiGO" in proc.stdout and "loss_vs_flops.png" in proc.stdout
    _check_report(tmp_path / "demo", load_experiment("demo", smoke=True))


def test_bench_cli_bad_experiment(tmp_path):
    proc = run_cli("bench", tmp_path / "nope.yaml")
    assert proc.returncode == 2 and "not found" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
