"""Downstream evaluation through lm-evaluation-harness, on a tiny local task made from local text."""

import json

import pytest

import tiny
from conftest import assert_one_line_error

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is the optional 'eval' extra (in 'dev')")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return tiny.make_task(tmp_path_factory.mktemp("task"))


def test_eval_scores_a_local_task(sources, task, tmp_path, cli):
    proc = cli("eval", sources["llama"], "--tasks", task, "--limit", "8", "--batch-size", "4", "--json",
               tmp_path / "r.json", check=True)
    assert "| ligo_next_line | acc |" in proc.stdout
    result = json.loads((tmp_path / "r.json").read_text())
    acc = result["tasks"]["ligo_next_line"]["acc"]
    assert 0.0 <= acc <= 1.0 and result["limit"] == 8


@pytest.mark.parametrize("case, message", [
    ("unknown task", "unknown task\\(s\\) no_such_task"),
    ("missing task file", "task file .* does not exist"),
    ("masked LM", "masked LM; lm-eval's tasks score causal LMs"),
    ("no model", "does not exist"),
])
def test_eval_bad_input(case, message, sources, task, tmp_path, cli):
    model, tasks = sources["llama"], [task]
    if case == "unknown task":
        tasks = ["no_such_task"]
    elif case == "missing task file":
        tasks = [tmp_path / "nope.yaml"]
    elif case == "masked LM":
        model = sources["bert"]
    elif case == "no model":
        model = tmp_path / "nothing"
    assert_one_line_error(cli("eval", model, "--tasks", *tasks), "eval", message)


def test_eval_without_lm_eval_is_one_clear_line(sources, task, cli, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if the extra were not installed
    assert_one_line_error(cli("eval", sources["llama"], "--tasks", task), "eval", "pip install 'ligo\\[eval\\]'")


def test_bench_adds_a_downstream_column(task, tmp_path):
    from ligo.bench import load_experiment, run_experiment

    exp = load_experiment("demo", smoke=True).changed(eval={"tasks": [str(task)], "limit": 4})
    report = run_experiment(exp, tmp_path / "out", progress=False, log=lambda *_: None)
    for name, m in report["budgets"][0]["methods"].items():
        assert 0.0 <= m["downstream"]["ligo_next_line"]["acc"] <= 1.0, name
    assert "ligo_next_line 0." in (tmp_path / "out" / "table.md").read_text()
