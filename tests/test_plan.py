"""The planner: power-law fits, held-out checks, and when growth stops paying, on results with known laws."""

import json
import math

import pytest

from conftest import assert_one_line_error
from ligo.planner import analyse, fit_power_law, plan

EXPERIMENT = {"name": "synthetic", "model_type": "llama", "vocab_size": 512,
              "source": {"config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                    "num_key_value_heads": 2, "intermediate_size": 128}},
              "target": {"hidden": 128, "layers": 4, "heads": 8, "kv_heads": 4, "ffn": 256},
              "train": {"steps": 100}, "methods": {"scratch": {}}}


def test_power_law_fit_recovers_known_parameters():
    xs = [0.5 * 1.1 ** i for i in range(60)]
    law = fit_power_law(xs, [2.0 + 3.0 * x ** -0.35 for x in xs])
    assert law["alpha"] == pytest.approx(0.35, rel=1e-3) and law["E"] == pytest.approx(2.0, abs=1e-3)
    assert law["A"] == pytest.approx(3.0, rel=1e-3) and law["rmse"] < 1e-4 and law["x0"] < 1e-2


def test_power_law_fit_keeps_the_irreducible_loss_non_negative():
    """A curve a log fits best (alpha -> 0 with E -> -inf) gets E = 0, not an unphysical negative floor."""
    xs = [0.1 * 1.1 ** i for i in range(40)]
    law = fit_power_law(xs, [4.0 - 0.3 * math.log(x) for x in xs])
    assert law["E"] == 0.0 and law["A"] > 0 and law["alpha"] > 0 and law["rmse"] < 0.05


def test_plan_says_when_its_fits_miss_the_held_out_budget(tmp_path):
    report = _report()
    for point in report["budgets"][1]["methods"]["grown"]["curve"][-5:]:  # the long budget ends 0.3 nats lower
        point["val_loss"] -= 0.3
    report["budgets"][1]["methods"]["grown"]["final_val_loss"] -= 0.3
    path = tmp_path / "results.json"
    path.write_text(json.dumps(report))
    n = analyse(report)["target_params"]
    notes = plan([path], n, 10 * 6 * n * n)["notes"]
    assert any("miss a held-out budget by up to 0.3" in note for note in notes), notes


def _report():
    """Two budgets; scratch L = 2 + 6 x^-0.5, a grown model has a head start of 4 tokens/param that fades."""
    from ligo.planner import _params

    n = _params(EXPERIMENT, "target", "test")

    def curve(head: float, end_x: float):
        pts = []
        for i in range(1, 41):
            x = end_x * i / 40
            pts.append({"flops": x * 6 * n * n, "wall": float(i), "val_loss": 2 + 6 * (x + head) ** -0.5, "step": i})
        return {"curve": pts, "final_val_loss": pts[-1]["val_loss"]}

    budgets = []
    for label, end_x in (("1x", 20.0), ("4x", 80.0)):
        budgets.append({"label": label, "methods": {"scratch": curve(0.0, end_x), "grown": curve(4.0, end_x)},
                        "summary": {"noise_floor": 0.02}})
    return {"experiment": EXPERIMENT, "budgets": budgets}


def test_analysis_fits_each_method_and_checks_it_on_the_longest_budget():
    a = analyse(_report())
    assert a["growth_factor"] == pytest.approx(a["target_params"] / a["source_params"]) and a["growth_factor"] > 2
    scratch, grown = a["methods"]["scratch"], a["methods"]["grown"]
    assert scratch["law"]["alpha"] == pytest.approx(0.5) and abs(scratch["held_out_error"]) < 1e-6
    assert abs(grown["held_out_error"]) < 0.01 and grown["law"]["x0"] == pytest.approx(4.0, rel=0.35)
    # 6 (x^-.5 - (x+4)^-.5) falls to the 0.02 noise floor near x = 67 tokens/parameter (0.016 at x = 80)
    assert 50 < grown["pays_until_tokens_per_param"] < 90
    assert grown["advantage_at_end"] == pytest.approx(0.0161, abs=0.003)


def test_plan_recommends_growth_early_and_scratch_late(tmp_path, cli):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_report()))
    n = analyse(_report())["target_params"]
    early = plan([path], n, 10 * 6 * n * n)
    assert early["verdict"] == "grow" and early["best"]["method"] == "grown" and early["notes"] == []
    assert "grow a finished source model" in early["when"]
    late = plan([path], n, 1000 * 6 * n * n, source_params=n / 8)
    assert late["verdict"] == "train from scratch"
    assert any("outside the measured" in note for note in late["notes"])
    assert any("growth factor 8.0x is larger" in note for note in late["notes"])
    assert any("not expected to pay" in note for note in late["notes"])
    far = plan([path], 100 * n, 10 * 6 * (100 * n) ** 2)["notes"]
    assert any("is far from the measured" in note for note in far) and not any("far from" in note for note in early["notes"])
    proc = cli("plan", "--results", path, "--target-params", n, "--budget", 10 * 6 * n * n, check=True)
    assert "-> grow" in proc.stdout and "| grown |" in proc.stdout


def test_plan_bad_input(tmp_path, cli):
    assert_one_line_error(cli("plan", "--results", tmp_path / "none.json", "--target-params", "1e6", "--budget", "1e15"),
                          "plan", "cannot read benchmark results")
    (tmp_path / "old.json").write_text(json.dumps({"methods": {}}))
    assert_one_line_error(cli("plan", "--results", tmp_path / "old.json", "--target-params", "1e6", "--budget", "1e15"),
                          "plan", "no budgets")
