"""Two processes on the CPU (gloo), launched by torchrun as a cluster would: the same global batch gives
the same curve as one process, the outputs are written once, and a rank killed with -9 resumes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli, wait_for

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))
QUICK = ["--batch-size", "4", "--seq-len", "32", "--eval-batches", "2", "--no-progress"]


def _launch(*args, wait=True):
    # --standalone: a free port of its own (tests run in parallel workers)
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "ligo", *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())]


def _same_curve(a: Path, b: Path) -> None:
    la, lb = _losses(a), _losses(b)
    assert [s for s, _ in la] == [s for s, _ in lb]
    assert all(abs(x - y) < 1e-4 for (_, x), (_, y) in zip(la, lb)), (la, lb)


def test_grow_train_with_a_fit_on_two_processes(sources, corpus, tmp_path):
    args = [sources["llama"], "--target", '{"hidden": 128}', "--data", corpus, "--steps", "6", "--eval-every", "3",
            "--warmup", "1", "--fit-share", "0.1", "--fit-eval-every", "1", *QUICK]
    run_cli("grow-train", *args, "--out", tmp_path / "one", check=True)
    proc = _launch("grow-train", *args, "--out", tmp_path / "two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("grown model in") == 1  # only the main process reports
    _same_curve(tmp_path / "one" / "trained", tmp_path / "two" / "trained")
    fits = [json.loads((tmp_path / d / "grown" / "ligo_recipe.json").read_text())["fit"] for d in ("one", "two")]
    assert fits[0]["steps"] == fits[1]["steps"] and abs(fits[0]["final_val_loss"] - fits[1]["final_val_loss"]) < 1e-4
    assert not [p for p in (tmp_path / "two").rglob(".*") if ".tmp" in p.name]  # written once, nothing half-done


def test_grow_fit_on_two_processes_writes_one_model(sources, corpus, tmp_path):
    from safetensors.torch import load_file

    args = [sources["llama"], "--target", '{"hidden": 128}', "--data", corpus, "--fit-steps", "3", "--fit-batch-size",
            "4", "--seq-len", "32", "--fit-eval-every", "1", "--fit-eval-batches", "2", "--width", "random", "--depth",
            "stack", "--no-progress"]
    run_cli("grow", *args, "--out", tmp_path / "one", check=True)
    proc = _launch("grow", *args, "--out", tmp_path / "two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("grew llama") == 1
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("one", "two"))
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-5 for k in a)


def test_a_rank_killed_with_sigkill_resumes_the_same_run(sources, corpus, tmp_path):
    args = [sources["llama"], "--data", corpus, "--steps", "40", "--save-every", "4", "--eval-every", "20",
            "--log-every", "1", *QUICK]
    run_cli("train", *args, "--out", tmp_path / "ref", check=True)
    out = tmp_path / "run"
    proc = _launch("train", *args, "--out", out, wait=False)
    try:
        assert wait_for(lambda: len(list((out / "checkpoints").glob("step-*"))) >= 2, proc, timeout=300)
        ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(ranks) == 2, ranks
        os.kill(int(max(ranks, key=int)), signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and not (out / "config.json").exists()
    # the survivor says what happened in one line: the peer's loss, or the launcher's SIGTERM (its waits at a
    # checkpoint poll from Python, so the signal is answered; they end at LIGO_PEER_TIMEOUT if no error comes)
    said = [line for line in err.splitlines() if line.startswith("ligo train: ")]
    assert said and all(("another process of this launch stopped" in line and "--resume" in line)
               or line.startswith("ligo train: terminated") for line in said), err[-3000:]
    assert "unexpected error" not in err, err[-3000:]
    time.sleep(1)
    resumed = _launch("train", *args, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _same_curve(tmp_path / "ref", out)


def test_a_batch_the_processes_cannot_share_is_one_line(sources, corpus, tmp_path):
    proc = _launch("train", sources["llama"], "--data", corpus, "--out", tmp_path / "r", "--steps", "2",
                   "--batch-size", "3", "--seq-len", "32", "--no-progress")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ligo train: error:")]
    assert lines and all("batch_size 3 is not divisible by the 2 processes" in line for line in lines), proc.stderr


@pytest.fixture(autouse=True)
def _torchrun():
    if TORCHRUN is None:
        pytest.skip("torchrun is not installed beside this Python")


def test_grow_train_checks_the_batch_before_it_grows(sources, corpus, tmp_path):
    """A batch two processes cannot share is refused before the grow (it used to be found after it, and one rank
    then read a grown model the other had not finished writing)."""
    proc = _launch("grow-train", sources["llama"], "--target", '{"hidden": 128}', "--data", corpus, "--out",
                   tmp_path / "J", "--steps", "2", "--batch-size", "3", "--seq-len", "32", "--no-progress")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ligo grow-train: ")]
    assert lines and all("batch_size 3 is not divisible by the 2 processes" in line for line in lines), proc.stderr
    assert not (tmp_path / "J").exists()


def test_a_peer_that_never_reaches_a_checkpoint_ends_the_wait_in_one_line(tmp_path):
    """The barrier around a checkpoint is bounded: rank 1 never arrives (it waits for a file rank 0 writes only
    after giving up), and rank 0 leaves the barrier at LIGO_PEER_TIMEOUT with the error the CLI reports as a lost
    peer, instead of blocking until the launcher kills it without a word."""
    script = tmp_path / "peer.py"
    script.write_text(f"""
import os, sys, time
from pathlib import Path
import torch.distributed as dist
from ligo.launch import PeerLost, barrier
from ligo.cli import _peer_lost

dist.init_process_group("gloo")
gone = Path({str(tmp_path / "gone")!r})
if dist.get_rank() == 1:
    while not gone.exists():
        time.sleep(0.05)
    os._exit(0)
try:
    barrier("the checkpoint of step 4")
except PeerLost as exc:
    print("lost:", _peer_lost(exc), exc, flush=True)
gone.touch()
os._exit(0)
""")
    env = dict(os.environ, OMP_NUM_THREADS="1", LIGO_PEER_TIMEOUT="2")
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", str(script)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lost: True no other process reached the checkpoint of step 4 within 2 s" in proc.stdout, proc.stdout
