"""GPU-only checks: the fast path (bf16, compile, fused AdamW), growth on the GPU, the fit with gradient
checkpointing, FSDP and multi-GPU through `accelerate launch`, and the GPU benchmarks at smoke size.
Skipped without CUDA."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tiny
from conftest import ROOT, run_cli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ARGS = ["--seq-len", "32", "--batch-size", "8", "--lr", "3e-3", "--warmup", "2", "--eval-every", "5",
        "--eval-batches", "2", "--no-progress"]


def _vals(run):
    return [r["val_loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "val_loss" in r]


@pytest.mark.parametrize("extra", [[], ["--no-compile"], ["--weights-dtype", "bfloat16"]])
def test_training_on_the_gpu_fast_path(extra, sources, corpus, tmp_path):
    """Default on CUDA: bf16 autocast, torch.compile, fused AdamW."""
    run_cli("train", sources["llama"], "--data", corpus, "--out", tmp_path / "run", "--steps", "20", *ARGS, *extra,
            check=True)
    vals = _vals(tmp_path / "run")
    assert vals[-1] < vals[0]
    rows = [json.loads(r) for r in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert rows[9]["tflops"] > 0


def test_growth_on_the_gpu_equals_growth_on_the_cpu(sources, tmp_path):
    from safetensors.torch import load_file

    for device in ("cpu", "cuda"):
        run_cli("grow", sources["llama"], "--target", json.dumps(tiny.TARGET["llama"]), "--out", tmp_path / device,
                "--width", "random", "--depth", "stack", "--device", device, check=True)
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("cpu", "cuda"))
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_the_fit_on_the_gpu_with_checkpointing_and_bf16(sources, blocks):
    from ligo import Grower, GrowthPlan, TrainConfig

    g = Grower(sources["llama"], tiny.TARGET["llama"], GrowthPlan(width="random", depth="stack"), device="cuda")
    cfg = TrainConfig(steps=20, batch_size=8, seq_len=32, lr=3e-3, warmup=2, eval_every=10, eval_batches=2,
                      grad_checkpointing=True, mixed_precision="bf16", progress=False)
    result = g.fit(cfg=cfg, blocks=blocks)
    assert g.fit_record.final_val_loss < result.evals[0]["val_loss"]
    assert all(p.dtype == torch.float32 and p.is_cuda for p in g.operator.parameters())  # fp32 maps


@pytest.mark.parametrize("config", ["fsdp.yaml", "multi_gpu.yaml"])
def test_accelerate_launch_with_the_documented_configs(config, sources, corpus, tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    n = min(2, torch.cuda.device_count())
    out = tmp_path / "run"
    shard = ["--fsdp"] if config == "fsdp.yaml" else []  # (ligo shards; the config only launches the processes)
    proc = subprocess.run([accelerate, "launch", "--config_file", str(ROOT / "examples" / "accelerate" / config),
                           "--num_processes", str(n), "-m", "ligo", "train", str(sources["llama"]), "--data",
                           str(corpus), "--out", str(out), "--steps", "10", "--save-every", "5", *ARGS, *shard],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    vals = _vals(out)
    assert vals[-1] < vals[0]
    assert (out / "config.json").exists() and (out / "checkpoints" / "step-0000010").exists()
    assert (out / "checkpoints" / "step-0000010" / "shards").is_dir() == bool(shard)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)


def test_the_fit_under_accelerate_launch_with_the_sharding_config(sources, corpus, tmp_path):
    """The fit is data parallel under any launch (its trainable parameters are the operator's maps)."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    proc = subprocess.run([accelerate, "launch", "--config_file", str(ROOT / "examples" / "accelerate" / "fsdp.yaml"),
                           "--num_processes", "1", "-m", "ligo", "grow", str(sources["llama"]), "--target",
                           json.dumps(tiny.TARGET["llama"]), "--out", str(tmp_path / "grown"), "--data", str(corpus),
                           "--fit-steps", "6", "--seq-len", "32", "--batch-size", "8", "--no-progress"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "fit: 6 steps" in proc.stdout


@pytest.mark.parametrize("script", ["throughput.py --steps 20 --warmup 5 --preset cpu", "scale.py --smoke --device cuda"])
def test_gpu_benchmarks_at_smoke_size(script, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script.split()[0]), *script.split()[1:],
                           "--json", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((tmp_path / "r.json").read_text())["device"] != "cpu"


def test_gpu_experiment_smoke_on_the_gpu(tmp_path):
    from ligo.bench import load_experiment, run_experiment

    exp = load_experiment(ROOT / "benchmarks" / "experiments" / "gpu-llama.yaml", smoke=True)
    report = run_experiment(exp, tmp_path / "out", progress=False, log=lambda *_: None)
    assert report["device"] != "cpu"
