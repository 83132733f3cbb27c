"""GPU-only checks: bf16 training, FSDP and multi-GPU through `accelerate launch`. Skipped without CUDA."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_cli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--seq-len", "32", "--batch-size", "8", "--lr", "3e-3", "--warmup", "2", "--eval-every", "5",
        "--eval-batches", "2", "--no-progress"]


def _vals(run):
    return [r["val_loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "val_loss" in r]


def test_bf16_training_on_gpu(sources, corpus, tmp_path):
    run_cli("train", sources["llama"], "--data", corpus, "--out", tmp_path / "run", "--steps", "20",
            "--mixed-precision", "bf16", *ARGS, check=True)
    vals = _vals(tmp_path / "run")
    assert vals[-1] < vals[0]


@pytest.mark.parametrize("config", ["fsdp.yaml", "multi_gpu.yaml"])
def test_accelerate_launch_with_the_documented_configs(config, sources, corpus, tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    n = min(2, torch.cuda.device_count())
    out = tmp_path / "run"
    proc = subprocess.run([accelerate, "launch", "--config_file", str(ROOT / "examples" / "accelerate" / config),
                           "--num_processes", str(n), "-m", "ligo", "train", str(sources["llama"]), "--data",
                           str(corpus), "--out", str(out), "--steps", "10", "--save-every", "5", *ARGS],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    vals = _vals(out)
    assert vals[-1] < vals[0]
    assert (out / "config.json").exists() and (out / "checkpoints" / "step-0000010").exists()
    # the saved model is a plain HF checkpoint
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)


def test_gpu_experiment_smoke_on_the_gpu(tmp_path):
    from ligo.bench import load_experiment, run_experiment

    exp = load_experiment(ROOT / "benchmarks" / "experiments" / "gpu-llama.yaml", smoke=True)
    report = run_experiment(exp, tmp_path / "out", progress=False, log=lambda *_: None)
    assert report["device"] != "cpu"
