"""Benchmarks and the demo: the accounting, the protocol (LR sweep, budgets, noise floor, resume, the
scratch cache), and every experiment file run in smoke mode."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_cli
from ligo.bench import load_experiment, run_experiment
from ligo.errors import LigoError
from ligo.report import flops_to_reach, summarize

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "benchmarks" / "experiments").glob("*.yaml"))


def test_flops_to_reach_interpolates():
    curve = [{"flops": 0.0, "val_loss": 5.0}, {"flops": 10.0, "val_loss": 3.0}, {"flops": 20.0, "val_loss": 2.0}]
    assert flops_to_reach(curve, 4.0) == pytest.approx(5.0)
    assert flops_to_reach(curve, 2.5) == pytest.approx(15.0)
    assert flops_to_reach(curve, 6.0) == 0.0
    assert flops_to_reach(curve, 1.0) is None


def _run(curve_losses, fit=None, fit_flops=0.0):
    curve = [{"flops": 10.0 * i, "wall": float(i), "val_loss": v, "step": i} for i, v in enumerate(curve_losses)]
    return {"curve": curve, "start_val_loss": curve[0]["val_loss"], "final_val_loss": curve[-1]["val_loss"],
            "fit": fit, "fit_flops": fit_flops, "total_flops": curve[-1]["flops"]}


def test_summarize_both_conventions_the_best_fixed_method_and_the_targets():
    results = {"scratch": _run([8.0, 6.0, 5.0, 4.0, 3.0]),
               "stack": _run([4.0, 3.0, 2.8, 2.6, 2.5]),
               "net2net": _run([3.5, 3.2, 2.9, 2.7, 2.6]),
               "ligo": _run([5.0, 2.9, 2.5, 2.3, 2.2], fit={"start_val": 5.0, "final_val": 3.4}, fit_flops=0.8),
               "bad-fit": _run([4.2, 3.0, 2.9, 2.8, 2.7], fit={"start_val": 4.5, "final_val": 4.2}, fit_flops=0.8)}
    s = summarize(results, source_flops=5.0, noise=0.05)
    assert s["best_fixed"] == "stack" and s["scratch_flops_to_final"] == 40.0 and s["best_fixed_start_val_loss"] == 4.0
    rows = s["rows"]
    assert rows["scratch"]["saving_source_free"] == 0.0 and rows["scratch"]["saving_source_counted"] is None
    assert rows["stack"]["flops_to_scratch_final"] == 10.0
    assert rows["stack"]["saving_source_free"] == pytest.approx(0.75)
    assert rows["stack"]["saving_source_counted"] == pytest.approx(1 - 15 / 40)
    assert rows["ligo"]["flops_to_best_fixed_final"] == 20.0   # ligo reaches 2.5 at step 2
    assert rows["ligo"]["saving_vs_best_fixed"] == pytest.approx(0.5)  # stack needs 40
    assert rows["ligo"]["vs_best_fixed_loss"] == pytest.approx(-0.3)
    assert rows["ligo"]["fit_share"] == pytest.approx(0.02)
    assert rows["ligo"]["fit_defect"] is False and rows["bad-fit"]["fit_defect"] is True  # 3.4 < 4.0 < 4.2
    assert s["best_learned"] == "ligo"
    assert s["targets"] == {"below_every_fixed": True, "margin_vs_noise": pytest.approx(6.0),
                            "flops_saving_vs_best_fixed_ge_10pct": True, "saving_vs_scratch_ge_50pct": True,
                            "fit_share_le_2pct": True}


@pytest.mark.parametrize("text, message", [
    ("name: x\nmodel_type: llama\nstepz: 3\nmethods: {scratch: {}}\n", "unknown key"),
    ("name: x\nmodel_type: llama\nsource: {config: {}}\ntarget: {}\ntrain: {steps: 2}\nmethods: {stack: {}}\n",
     "scratch"),
    ("name: x\nmodel_type: llama\nsource: {config: {}}\ntarget: {}\ntrain: {steps: 2}\n"
     "methods: {scratch: {}, s: {width: wide}}\n", "width must be one of"),
    ("name: x\nmodel_type: llama\nsource: {config: {}}\ntarget: {}\ntrain: {steps: 2}\n"
     "methods: {scratch: {}, s: {train: {lr_peak: 1}}}\n", "unknown key.*lr_peak"),
    ("name: x\nmodel_type: llama\nsource: {config: {}}\ntarget: {}\ntrain: {steps: 2}\nbudgets: [1, -4]\n"
     "methods: {scratch: {}}\n", "budgets must be a list of positive numbers"),
    ("name: x\nmodel_type: llama\nsource: {config: {}}\ntarget: {}\ntrain: {steps: 2}\ngrown: {lr: 3}\n"
     "methods: {scratch: {}}\n", "grown: unknown key"),
])
def test_experiment_files_are_strict(text, message, tmp_path):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(LigoError, match=message):
        load_experiment(tmp_path / "bad.yaml")


def _check_report(out: Path, exp):
    report = json.loads((out / "results.json").read_text())
    budgets = report["budgets"]
    assert len(budgets) == len(exp.budgets)
    for b in budgets:
        assert set(b["methods"]) == set(exp.methods)
        for name, m in b["methods"].items():
            # equal total FLOPs: a fitted method trains for fewer steps, never for more FLOPs than scratch
            assert m["total_flops"] <= b["methods"]["scratch"]["total_flops"] * 1.02, name
            assert len(m["curve"]) >= 2 and all(p["val_loss"] > 0 for p in m["curve"])
            assert (m["fit"] is not None) == bool(exp.methods[name].fit), name
            if exp.unit_report and name != "scratch":
                assert {"res", "ffn", "heads"} <= set(m["units"]), name
        assert b["summary"]["best_fixed"] in (*b["methods"], None)
    if len(exp.lr_sweep) > 1:
        sweep = report["scratch_sweep"][budgets[0]["label"]]
        assert budgets[0]["scratch_lr"] == min(sweep, key=lambda p: p["final_val_loss"])["lr"]
    if exp.noise_seeds:
        assert len(report["noise"]) == 3 and budgets[0]["summary"]["noise_floor"] is not None
    assert (out / "loss_vs_flops.png").stat().st_size > 10_000
    ev = report["evidence"]  # what ligo plan reads: every model's parameters and every run's tokens
    assert ev["target"]["params"] > ev["source"]["params"] > 0
    assert ev["noise_floor"] == budgets[0]["summary"]["noise_floor"]
    for b in budgets:
        assert {n: ev["tokens"][b["label"]][n] for n in b["methods"]} == {
            n: m["train_steps"] * ev["methods"][n]["tokens_per_step"] for n, m in b["methods"].items()}
    for name, m in ev["methods"].items():  # the source trained on is a model of the source's own size
        assert (m["role"] == "continue") == (name.startswith("continue")), name
        assert (m["params"] == ev["source"]["params"]) == (m["role"] == "continue"), name
    table = (out / "table.md").read_text()
    assert table.count("| scratch") >= len(budgets)
    return report


def _stand_in_real_source(tokenizer, corpus) -> None:
    """The real-checkpoint experiments read their source and corpus from $LIGO_CACHE/real (made by
    benchmarks/real_source.py, which downloads); here a tiny Llama of the real source's depth (30 layers) and a
    small corpus stand in for them, so that the experiment files run end to end without a download."""
    import shutil

    import tiny
    from ligo.outputs import cache_dir

    root = cache_dir() / "real"
    if not (root / "smollm2-135m" / "config.json").exists():
        model = tiny.make_model("llama", num_hidden_layers=30, hidden_size=32, num_attention_heads=2,
                                num_key_value_heads=1, intermediate_size=48, tie_word_embeddings=True)
        tiny.save_model(model, root / "smollm2-135m", tokenizer)
    if not (root / "austen").exists():
        shutil.copytree(corpus, root / "austen")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_smoke(path, tmp_path, tokenizer, corpus):
    """Every shipped experiment (the GPU ones included, with bf16 autocast) runs end to end at toy size."""
    exp = None
    if "$LIGO_CACHE/real/" in path.read_text():
        _stand_in_real_source(tokenizer, corpus)
        exp = load_experiment(path, smoke=True)
        if "hidden_size" in exp.target:  # SmolLM2-360M's widths, scaled to the stand-in's (32 wide, 2/1 heads of 16)
            exp = exp.changed(target={"hidden_size": 48, "num_attention_heads": 3, "num_key_value_heads": 1,
                                      "intermediate_size": 80, "num_hidden_layers": 31})
    exp = exp or load_experiment(path, smoke=True)
    run_experiment(exp, tmp_path / "out", progress=False, log=lambda *_: None)
    _check_report(tmp_path / "out", exp)


def test_resume_keeps_finished_runs_and_finishes_the_rest(tmp_path):
    exp = load_experiment("demo", smoke=True)
    out = tmp_path / "out"
    first = run_experiment(exp, out, progress=False, log=lambda *_: None)
    results = sorted(out.rglob("result.json"))
    stamps = {p: p.stat().st_mtime_ns for p in results}
    victim = out / "runs" / "1x" / "ligo" / "result.json"
    victim.unlink()  # as if that method had been killed: the rest is kept
    lines = []
    second = run_experiment(exp, out, progress=False, log=lines.append, resume=True)
    assert [p for p in results if p != victim and p.stat().st_mtime_ns != stamps[p]] == []
    assert victim.exists() and any("1x ligo:" in line for line in lines)
    assert second["budgets"][0]["methods"]["stack"] == first["budgets"][0]["methods"]["stack"]
    changed = exp.changed(seed=7)
    with pytest.raises(LigoError, match="different experiment"):
        run_experiment(changed, out, progress=False, log=lambda *_: None, resume=True)


def test_methods_run_first_and_the_rest_join_with_resume(tmp_path, cli):
    """--methods runs a subset (scratch always); the full experiment resumed later runs only the rest."""
    out = tmp_path / "out"
    cli("bench", "demo", "--smoke", "--no-progress", "--out", out, "--methods", "stack", check=True)
    assert sorted(p.name for p in (out / "runs" / "1x").iterdir()) == ["scratch-lr0.002", "stack"]
    stamp = (out / "runs" / "1x" / "stack" / "result.json").stat().st_mtime_ns
    cli("bench", "demo", "--smoke", "--no-progress", "--out", out, "--resume", check=True)
    assert (out / "runs" / "1x" / "stack" / "result.json").stat().st_mtime_ns == stamp
    assert set(json.loads((out / "results.json").read_text())["budgets"][0]["methods"]) == {"scratch", "stack",
                                                                                            "paper", "ligo"}
    assert_one_line_error(cli("bench", "demo", "--smoke", "--out", tmp_path / "x", "--methods", "stak"),
                          "bench", "no method 'stak'; its methods are scratch, stack, paper, ligo")
    assert not (tmp_path / "x").exists()


def test_resume_runs_added_and_changed_methods_only(tmp_path):
    """Editing an experiment's methods and resuming: new and changed methods run, the rest are kept."""
    exp = load_experiment("demo", smoke=True)
    out = tmp_path / "out"
    run_experiment(exp, out, progress=False, log=lambda *_: None)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    methods = copy.deepcopy(exp.raw["methods"])
    methods["stack"]["label"] = "renamed"  # words only: kept
    methods["ligo"]["fit"] = {"share": 0.2}  # changed: run again
    methods["copy"] = {"width": "copy", "depth": "identity"}  # added: run
    lines = []
    report = run_experiment(exp.changed(methods=methods), out, progress=False, log=lines.append, resume=True)
    rerun = sorted(p.parent.name for p, t in stamps.items() if not p.exists() or p.stat().st_mtime_ns != t)
    assert rerun == ["ligo"], lines
    assert (out / "runs" / "1x" / "copy" / "result.json").exists()
    assert report["budgets"][0]["methods"]["stack"]["label"] == "renamed"
    assert any("ligo changed since" in line for line in lines)


def test_scratch_runs_are_reused_across_experiments(tmp_path):
    exp = load_experiment("demo", smoke=True)
    run_experiment(exp, tmp_path / "a", progress=False, log=lambda *_: None)
    lines = []
    run_experiment(exp.changed(name="other"), tmp_path / "b", progress=False, log=lines.append)
    assert any("scratch" in line and "reused from" in line for line in lines), lines


def test_demo_smoke_through_the_cli(tmp_path):
    proc = run_cli("demo", "--smoke", "--no-progress", "--out", tmp_path / "demo", check=True)
    assert "| LiGO" in proc.stdout and "loss_vs_flops.png" in proc.stdout
    _check_report(tmp_path / "demo", load_experiment("demo", smoke=True))
    run_cli("demo", "--smoke", "--no-progress", "--out", tmp_path / "demo", check=True)  # a demo is replaced


@pytest.mark.parametrize("script, keys", [
    (["throughput.py", "--device", "cpu", "--preset", "cpu", "--steps", "2", "--warmup", "1"],
     {"device", "model_params", "ligo_tokens_per_s", "bare_tokens_per_s", "ratio", "tflops", "mfu"}),
    (["scale.py", "--smoke"], {"device", "grow_s", "fit_peak_gb", "fit_s_per_step"})])
def test_speed_benchmarks_run_on_the_cpu(script, keys, tmp_path):
    """The GPU speed scripts at CPU size: they run and write the figures the GPU runbook commits."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script[0]), *script[1:], "--json",
                           str(tmp_path / "r.json")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    figures = json.loads((tmp_path / "r.json").read_text())
    assert keys <= set(figures) and figures["device"] == "cpu"
    assert all(figures[k] > 0 for k in keys & {"ligo_tokens_per_s", "bare_tokens_per_s", "ratio", "grow_s"})


def test_a_pretrained_checkpoint_is_a_source(sources, tmp_path):
    """source: {path: DIR} grows a checkpoint trained elsewhere: its tokenizer, its config, its held-out loss
    measured on the experiment's blocks (the grown lossless plan starts there), its training cost unknown."""
    from ligo.experiment import Experiment

    demo = load_experiment("demo", smoke=True)
    raw = {m: v for m, v in demo.raw["methods"].items() if m in ("scratch", "paper")}
    raw["lossless"] = {"width": "split", "depth": "identity"}
    changes = dict(source={"path": str(sources["llama"])}, methods=raw,
                   target={"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 8,
                           "num_key_value_heads": 4, "intermediate_size": 192})
    with pytest.raises(LigoError, match="vocab_size is the size of the tokenizer ligo trains"):  # never ignored
        demo.changed(**changes)
    exp = Experiment.from_dict({**{k: v for k, v in demo.raw.items() if k != "vocab_size"}, **changes}, demo.where)
    report = run_experiment(exp, tmp_path / "out", progress=False, log=lambda *_: None)
    source, methods = report["source"], report["budgets"][0]["methods"]
    assert source["path"] == str(sources["llama"]) and source["flops"] is None
    assert report["evidence"]["source"]["tokens"] is None  # a checkpoint's pretraining tokens: unknown unless stated
    assert methods["lossless"]["start_val_loss"] == pytest.approx(source["final_val_loss"], abs=1e-4)
    assert report["budgets"][0]["summary"]["rows"]["paper"]["saving_source_counted"] is None
    assert "(pretrained elsewhere)" in (tmp_path / "out" / "table.md").read_text()
    assert not (tmp_path / "out" / "tokenizer").exists()
    with pytest.raises(LigoError, match="is a llama model but model_type says gpt2"):
        exp.changed(model_type="gpt2")
    with pytest.raises(LigoError, match="a pretrained source is path"):
        exp.changed(source={"path": str(tmp_path / "nowhere")})
    with pytest.raises(LigoError, match="source tokens must be a positive number"):
        exp.changed(source={"path": str(sources["llama"]), "tokens": "2T"})
    assert exp.changed(source={"path": str(sources["llama"]), "tokens": 2.0e12}).source["tokens"] == 2.0e12


def test_bench_without_out_writes_under_bench_results(tmp_path):
    """`ligo bench FILE` with no --out (as `make bench-cpu` and docs/cli.md run it), through the console script."""
    proc = run_cli("bench", "demo", "--smoke", "--no-progress", "--methods", "stack", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "bench-results" / "demo-smoke"
    assert (out / "results.json").is_file() and f"results in {Path('bench-results') / 'demo-smoke'}/" in proc.stdout
