"""The GPU window runner (benchmarks/gpu_slice.py), rehearsed on the CPU so that no GPU window is spent on a
bug: which slice comes next, the sizing to the limit, and a complete results file from a real run."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_slice.py"
spec = importlib.util.spec_from_file_location("gpu_slice", SCRIPT)
gpu_slice = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_slice)


def _result(folder: Path, name: str, complete: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-h100-2026-12-01.json"
    path.write_text(json.dumps({"slice": name, "complete": complete}))
    return path


def test_the_next_slice_is_the_first_without_a_complete_result(tmp_path):
    assert gpu_slice.next_slice(tmp_path) == "decide-218m"
    (tmp_path / "cpu-tiny-cpu-2026-11-24.json").write_text(json.dumps({"experiment": {}}))  # not a slice
    _result(tmp_path, "decide-218m", complete=False)  # stopped at the limit: still to measure
    assert gpu_slice.next_slice(tmp_path) == "decide-218m"
    _result(tmp_path, "decide-218m")
    assert gpu_slice.next_slice(tmp_path) == "fsdp"
    _result(tmp_path, "fsdp")
    assert gpu_slice.next_slice(tmp_path) == "speed"
    for name in gpu_slice.SLICES:
        _result(tmp_path, name)
    assert gpu_slice.next_slice(tmp_path) is None
    proc = subprocess.run([sys.executable, SCRIPT, "--out", tmp_path / "o", "--results", tmp_path], capture_output=True,
                          text=True, check=True)
    assert "every slice is measured" in proc.stdout and not (tmp_path / "o").exists()


def test_the_committed_results_say_what_is_measured():
    proc = subprocess.run([sys.executable, SCRIPT, "--list"], capture_output=True, text=True, check=True)
    assert [line.split()[0] for line in proc.stdout.splitlines()] == list(gpu_slice.SLICES)


def test_steps_are_sized_to_the_limit_and_a_slice_that_cannot_fit_is_not_started():
    exp = {"source": {"train": {"steps": 1500}}, "train": {"steps": 1500}, "lr_sweep": [0.5, 1, 2]}
    cal = {"source": {"step_s": 0.02, "first_step_s": 5.0}, "target": {"step_s": 0.1, "first_step_s": 30.0}}
    plan = gpu_slice.size(exp, {"budget": 1}, 5, cal, remaining=480)
    # 9 runs pay 30 s of compilation each; 0.8 x 480 - 270 = 114 s for 1.15 x (0.02 + 8 x 0.1) s per base step
    assert plan["runs"] == 9 and plan["base_steps"] == int(114 / (1.15 * 0.82)) == 120
    assert plan["estimated_s"] <= 480
    assert gpu_slice.size(exp, {"budget": 4}, 5, cal, remaining=480)["base_steps"] == int(114 / (1.15 * 3.22))
    assert gpu_slice.size(exp, {"budget": 1}, 5, cal, remaining=300)["base_steps"] == 0  # < MIN_STEPS: refused


def test_a_slice_runs_end_to_end_at_smoke_size(tmp_path):
    """The first slice on the CPU, with fixed steps: the results file has what docs/gpu.md promises."""
    proc = subprocess.run([sys.executable, SCRIPT, "--smoke", "--steps", "3", "--out", tmp_path / "out", "--results",
                           tmp_path / "results"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = (tmp_path / "out").glob("decide-218m-cpu-*.json")
    data = json.loads(path.read_text())
    assert data["complete"] and data["slice"] == "decide-218m" and data["device"] == "cpu"
    assert {"torch", "transformers", "ligo", "calibration", "sizing", "experiment", "report"} <= set(data)
    assert set(data["methods"]) == {"scratch", *gpu_slice.FIRST}
    assert [m for m, v in data["methods"].items() if v["default"]] == [data["default_method"]] == ["random-stack"]
    assert all(v["curve"] and v["final_val_loss"] > 0 for v in data["methods"].values())
    assert (tmp_path / "out" / "decide-218m-loss_vs_flops.png").exists()
    # committed into the results folder, the next window runs the next slice
    (tmp_path / "results").mkdir()
    path.rename(tmp_path / "results" / path.name)
    assert gpu_slice.next_slice(tmp_path / "results") == "fsdp"


def test_the_fsdp_slice_runs_its_flow_at_smoke_size(tmp_path):
    """The FSDP slice on the CPU: `ligo train --fsdp` under torchrun with one gloo process, as on the one GPU of a
    window (tests/test_fsdp.py shards over two): preempted or finished, resumed, sharded checkpoints, the final
    model gathered and loaded, the run grown from its shards with its optimizer state and continued sharded; every
    step recorded."""
    proc = subprocess.run([sys.executable, SCRIPT, "--smoke", "--slice", "fsdp", "--out", tmp_path / "out",
                           "--results", tmp_path / "results"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = (tmp_path / "out").glob("fsdp-cpu-*.json")
    data = json.loads(path.read_text())
    assert data["complete"] and data["passed"] and data["final_model_loads"], data["outcomes"]
    assert [o["step"] for o in data["outcomes"]] == ["train, SIGTERM after the first checkpoint", "train --resume",
                                                      "grow the run with its optimizer state",
                                                      "train the grown run --resume"]
    first = data["outcomes"][0]
    assert first["returncode"] == 0 or any(": preempted at " in line for line in first["ligo_lines"]), first
    assert data["processes"] == 1 and data["sharded_checkpoint"], data["checkpoint_files"]
    assert data["final_model_files"] == ["model.safetensors"]
