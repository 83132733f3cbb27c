"""The trainer: learning, determinism, crash safety (SIGKILL / SIGTERM), 2 processes, FLOPs."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tiny
from conftest import LIGO, run_cli, write_json

ARGS = ["--seq-len", "32", "--batch-size", "8", "--lr", "3e-3", "--warmup", "2", "--eval-every", "4",
        "--eval-batches", "2", "--no-progress"]


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in map(json.loads, (Path(run_dir) / "log.jsonl").read_text().splitlines())]


def test_train_lowers_held_out_loss_and_saves_a_model(sources, corpus, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", sources["llama"], "--data", corpus, "--out", out, "--steps", "30", *ARGS, check=True)
    assert "held-out loss" in proc.stdout
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert vals[-1] < vals[0] - 0.2
    assert {"loss", "lr", "tokens", "flops", "wall"} <= set(rows[0])
    model = tiny.model_cls("llama").from_pretrained(out)
    assert model.config.num_hidden_layers == 2
    recipe = json.loads((out / "ligo_recipe.json").read_text())
    assert recipe["ledger"]["train_flops"] == pytest.approx(rows[-1]["flops"])


def test_from_config_trains_scratch_through_the_same_loop(sources, corpus, tmp_path):
    cfg = json.loads((sources["gpt2"] / "config.json").read_text())
    cfg_path = write_json(tmp_path / "config.json", cfg)
    out = tmp_path / "scratch"
    run_cli("train", "--from-config", cfg_path, "--tokenizer", sources["gpt2"], "--data", corpus, "--out", out,
            "--steps", "20", *ARGS, check=True)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["val_loss"] < rows[3]["val_loss"]
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()


def test_same_seed_same_trajectory(sources, corpus, tmp_path):
    from ligo import TrainConfig
    from ligo.train import train

    cfg = dict(steps=8, seq_len=32, batch_size=4, eval_every=4, eval_batches=1, progress=False)
    a = train(sources["bert"], corpus, tmp_path / "a", TrainConfig(**cfg))
    b = train(sources["bert"], corpus, tmp_path / "b", TrainConfig(**cfg))
    assert [r["loss"] for r in a.loop.history] == [r["loss"] for r in b.loop.history]
    assert a.loop.evals == b.loop.evals or [e["val_loss"] for e in a.loop.evals] == [e["val_loss"] for e in b.loop.evals]


def _start(sources, corpus, out, steps, extra=()):
    return subprocess.Popen([LIGO, "train", str(sources["llama"]), "--data", str(corpus), "--out", str(out),
                             "--steps", str(steps), *ARGS, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(pred, proc, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    return False


def _log_len(out):
    try:
        return len((out / "log.jsonl").read_text().splitlines())
    except OSError:
        return 0


def _assert_checkpoints_complete(out):
    root = out / "checkpoints"
    for p in root.iterdir() if root.exists() else []:
        if p.name.startswith("step-"):
            assert (p / "trainer_state.json").exists() and (p / "model.safetensors").exists(), p


def test_sigkill_at_random_points_then_resume_matches_uninterrupted(sources, corpus, tmp_path):
    steps, save = 24, ["--save-every", "2", "--keep-last", "2"]
    ref = tmp_path / "ref"
    run_cli("train", sources["llama"], "--data", corpus, "--out", ref, "--steps", steps, *ARGS, *save, check=True)
    out = tmp_path / "killed"
    rng = random.Random(7)
    points = sorted(rng.sample(range(3, steps - 2), 4))
    kills = 0
    first = True
    for k in points + ["checkpoint-write"]:
        proc = _start(sources, corpus, out, steps, save + ([] if first else ["--resume"]))
        if k == "checkpoint-write":  # aim at the window in which a checkpoint is being written
            hit = _wait_for(lambda: any(p.name.endswith(".tmp") for p in (out / "checkpoints").glob(".step-*")), proc)
        else:
            hit = _wait_for(lambda: _log_len(out) >= k, proc)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        first = False
        _assert_checkpoints_complete(out)
        assert hit or proc.returncode == 0
    assert kills >= 4
    # a write cut short leaves a .tmp directory, never a step-N: resume ignores and replaces it
    run_cli("train", sources["llama"], "--data", corpus, "--out", out, "--steps", steps, *ARGS, *save, "--resume",
            check=True)
    _assert_checkpoints_complete(out)
    assert losses(out) == losses(ref)
    assert not list((out / "checkpoints").glob(".step-*"))
    print(f"\nSIGKILL: {kills}/{len(points) + 1} kills landed (steps {points} and one checkpoint write); "
          "every resume continued and the final trajectory equals the uninterrupted run's")


def test_sigterm_saves_a_checkpoint_and_exits_zero(sources, corpus, tmp_path):
    out = tmp_path / "run"
    proc = _start(sources, corpus, out, 500)
    assert _wait_for(lambda: _log_len(out) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "preempted" in stdout
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    assert ckpts and json.loads((ckpts[-1] / "trainer_state.json").read_text())["step"] == _log_len(out)
    assert not (out / "config.json").exists()  # no final model: the run is not finished


def test_two_processes_same_global_batch(sources, corpus, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    out1, out2 = tmp_path / "one", tmp_path / "two"
    common = [str(sources["llama"]), "--data", str(corpus), "--steps", "6", "--save-every", "3", *ARGS]
    run_cli("train", *common, "--out", out1, check=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29517", "-m", "ligo", "train",
                           *common, "--out", str(out2)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = losses(out1), losses(out2)
    assert [s for s, _ in a] == [s for s, _ in b]
    for (_, x), (_, y) in zip(a, b):
        assert abs(x - y) < 1e-4
    assert proc.stdout.count("trained 6 steps") == 1  # only rank 0 reports
    ckpt = out2 / "checkpoints" / "step-0000006"
    assert (ckpt / "random_states_1.pkl").exists()  # both ranks saved their RNG; rank 0 wrote the rest
    assert sorted(p.name for p in out2.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in out1.iterdir() if not p.name.startswith("."))


@pytest.mark.parametrize("model_type", tiny.ARCHS)
def test_analytic_flops_match_the_pytorch_counter(model_type):
    from torch.utils.flop_counter import FlopCounterMode

    from ligo.arch import get_spec
    from ligo.flops import train_flops_per_token

    model = tiny.make_model(model_type)  # eager attention: the counter sees every matmul
    model.train()
    spec = get_spec(model_type)
    dims = spec.dims(model.config.to_dict())
    ids = torch.randint(4, tiny.VOCAB, (2, 32))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    measured = counter.get_total_flops()
    analytic = train_flops_per_token(model, dims, 32) * ids.numel()
    assert abs(analytic - measured) / measured < 0.05, (analytic, measured)


def test_nan_loss_stops_with_a_clear_message(sources, corpus, tmp_path):
    proc = run_cli("train", sources["llama"], "--data", corpus, "--out", tmp_path / "run", "--steps", "20",
                   "--seq-len", "32", "--lr", "1e30", "--warmup", "0", "--clip", "0", "--no-progress")
    assert proc.returncode != 0
    line = proc.stderr.strip().splitlines()
    assert len(line) == 1 and "loss became" in line[0] and "learning rate" in line[0], proc.stderr
