"""Sharded training (``--fsdp``: FSDP2 that ligo applies itself) on two CPU processes under torchrun, the path a GPU
node runs: the unsharded run's curve, checkpoints written as each rank's shards, a SIGTERM to one rank that stops
the whole launch with one resume line and a resume to the same losses, one loadable HF folder at the end, mid-run
growth, and `ligo grow RUN --optimizer-state grow` reading the shards."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_one_line_error, wait_for

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))
pytestmark = pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed beside this Python")
# grown in the middle (after step 8): the sharded run regroups around a grown model and goes on sharded
ARGS = ["--steps", "14", "--save-every", "4", "--eval-every", "7", "--log-every", "1", "--batch-size", "4",
        "--seq-len", "32", "--eval-batches", "2", "--no-progress", "--grow-at", "8", "--grow-target", '{"hidden": 128}']


def _launch(*args, wait=True):
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "ligo", *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())]


def _close(a: Path, b: Path, tol: float = 1e-4) -> None:
    la, lb = _losses(a), _losses(b)
    assert [s for s, _ in la] == [s for s, _ in lb]
    assert all(abs(x - y) < tol for (_, x), (_, y) in zip(la, lb)), (la, lb)


@pytest.fixture(scope="module")
def runs(sources, corpus, tmp_path_factory):
    """The same run trained in one process unsharded, and sharded on two processes."""
    from ligo.cli import main

    root = tmp_path_factory.mktemp("fsdp")
    args = [sources["llama"], "--data", corpus, *ARGS]
    assert main(["train", *map(str, args), "--out", str(root / "plain")]) == 0
    proc = _launch("train", *args, "--fsdp", "--out", root / "sharded")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained 14 steps") == 1  # only the main process reports
    return root, args


def test_a_sharded_run_trains_the_unsharded_curve_into_one_loadable_model(runs):
    from transformers import AutoModelForCausalLM

    root, _ = runs
    _close(root / "plain", root / "sharded")
    ckpt = root / "sharded" / "checkpoints" / "step-0000012"
    # each rank wrote its own shards of the model and the AdamW state; no whole-model file in a checkpoint
    assert {p.name for p in (ckpt / "shards").iterdir()} == {".metadata", "__0_0.distcp", "__1_0.distcp"}
    assert not list((root / "sharded" / "checkpoints").rglob("*.safetensors"))
    assert (root / "sharded" / "checkpoints" / "step-0000008-grown" / "shards").is_dir()
    # the final model: gathered into one HF folder (the grown size), with its recipe and card, as the unsharded one
    out = root / "sharded"
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    recipe = json.loads((out / "ligo_recipe.json").read_text())
    assert recipe["config"]["fsdp"] is True and (out / "README.md").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    plain = AutoModelForCausalLM.from_pretrained(root / "plain")
    assert model.config.hidden_size == 128 and model.config.architectures == ["LlamaForCausalLM"]
    a, b = model.state_dict(), plain.state_dict()
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-4 for k in a)


def test_sigterm_on_one_rank_stops_the_launch_and_it_resumes_to_the_same_losses(runs):
    root, args = runs
    out = root / "preempted"
    proc = _launch("train", *args, "--fsdp", "--out", out, wait=False)
    try:
        assert wait_for(lambda: (out / "checkpoints" / "step-0000004").is_dir(), proc, timeout=300)
        ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(ranks) == 2, ranks
        os.kill(int(max(ranks, key=int)), signal.SIGTERM)  # one rank only, as a cluster may
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    said = [line for line in err.splitlines() if line.startswith("ligo train")]
    assert proc.returncode != 0 and len(said) == 1, err[-3000:]
    assert said[0].startswith(f"ligo train: preempted at {out} step ") and said[0].endswith("--resume"), said
    assert not (out / "config.json").exists()
    resumed = _launch("train", *args, "--fsdp", "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _losses(out) == _losses(root / "sharded")  # exactly: the same processes, the same reductions


def test_growing_a_sharded_run_reads_its_shards_and_resumes_sharded(runs, cli):
    root, _ = runs
    for name in ("plain", "sharded"):
        cli("grow", root / name, "--optimizer-state", "grow", "--target", '{"layers": 3}', "--out",
            root / f"{name}-grown", check=True)
    grown = root / "sharded-grown" / "checkpoints" / "step-0000012"  # (the newest: every 4 steps)
    assert (grown / "shards" / ".metadata").exists() and not (grown / "model.safetensors").exists()
    cli("train", "--out", root / "plain-grown", "--resume", "--steps", "16", check=True)
    proc = _launch("train", "--out", root / "sharded-grown", "--resume", "--steps", "16")  # one shard read by two
    assert proc.returncode == 0, proc.stderr[-3000:]
    _close(root / "plain-grown", root / "sharded-grown")


def test_sharding_is_refused_in_one_line_where_ligo_does_not_run_it(sources, corpus, tmp_path, cli, monkeypatch):
    base = ["train", sources["llama"], "--data", corpus, "--steps", "2", "--batch-size", "4", "--seq-len", "32",
            "--no-progress"]
    assert_one_line_error(cli(*base, "--out", tmp_path / "a", "--fsdp"), "train", "launch it with torchrun")
    assert not (tmp_path / "a").exists()
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` with an FSDP config sets
    assert_one_line_error(cli(*base, "--out", tmp_path / "b"), "train", "ligo shards the model itself")


class _Code:
    def __reduce__(self):
        return (os.system, ("true",))


def test_a_sharded_checkpoint_is_read_as_data_never_as_code(runs, tmp_path, cli):
    import torch

    from ligo.errors import LigoError
    from ligo.rundir import STATE_FILE, file_digests
    from ligo.sharding import read_shards, write_shards

    root, _ = runs
    run = tmp_path / "run"
    shutil.copytree(root / "sharded", run)
    # a sharded run resumes sharded: its shards are not a checkpoint the unsharded loop reads
    assert_one_line_error(cli("train", "--out", run, "--resume", "--steps", "16", "--no-fsdp"), "train",
                          r"other settings \(fsdp True -> False\)")
    ckpt = max((run / "checkpoints").iterdir())
    (ckpt / "shards" / ".metadata").write_bytes(pickle.dumps(_Code()))
    state = json.loads((ckpt / STATE_FILE).read_text())
    (ckpt / STATE_FILE).write_text(json.dumps({**state, "files": file_digests(ckpt)}))  # digests that match
    line = assert_one_line_error(cli("grow", run, "--optimizer-state", "grow", "--target", '{"layers": 3}', "--out",
                                     tmp_path / "g"), "grow", "not a sharded checkpoint's metadata")
    assert "never unpickles code" in line and not (tmp_path / "g").exists()
    # an entry that is not a tensor (the optimizer's hyper-parameters) is read as plain data before torch reads it
    write_shards(tmp_path / "shards", {"w": torch.zeros(2)}, {"state": {}, "param_groups": [{"lr": _Code(),
                                                                                            "params": ["w"]}]})
    with pytest.raises(LigoError, match="not plain data; ligo never unpickles code"):
        read_shards(tmp_path / "shards")
