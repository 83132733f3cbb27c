"""Growing a live run: optimizer state through the operator, mid-run growth, crash safety, bad input."""

import json
import shutil
import signal
import subprocess

import pytest
import torch
from safetensors.torch import load_file

import tiny
from conftest import LIGO, assert_one_line_error, wait_for
from ligo import GrowthPlan, Start, TrainConfig, grow, train
from ligo.rungrowth import grow_checkpoint

QUICK = dict(seq_len=32, batch_size=4, eval_every=0, eval_batches=1, progress=False, lr=3e-3, warmup=1)
FAST = ["--seq-len", "32", "--batch-size", "4", "--eval-every", "0", "--eval-batches", "1", "--lr", "3e-3", "--warmup",
        "1", "--no-progress", "--log-every", "1"]


def _run(sources, blocks, tmp_path, model_type="llama", steps=3, **extra):
    out = tmp_path / f"run-{model_type}"
    train(sources[model_type], None, out, TrainConfig(steps=steps, save_every=steps, **QUICK, **extra), Start(blocks=blocks))
    return out


def _moments(run):
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    optim = torch.load(ckpt / "optimizer.bin", weights_only=True)
    names = [n for g in json.loads((ckpt / "trainer_state.json").read_text())["param_names"] for n in g]
    return {names[int(i)]: s for i, s in optim["state"].items()}


@pytest.mark.parametrize("model_type", tiny.ARCHS)
def test_first_moments_are_the_operator_applied_to_the_sources(model_type, sources, blocks, tmp_path):
    """m' equals the source's m grown as if it were the weights, by the public weight-growth path."""
    run = _run(sources, blocks, tmp_path, model_type)
    plan = GrowthPlan(width="random", depth="stack")  # dense maps: every entry of m' mixes many of m
    grown = grow_checkpoint(run, tiny.TARGET[model_type], plan)
    slots = [n for g in grown.trainer_state["param_names"] for n in g]
    got = {slots[i]: s["exp_avg"] for i, s in grown.optimizer["state"].items()}
    # independent path: a checkpoint whose "weights" are the first moments, grown by ligo.grow
    moments = tmp_path / "moments"
    shutil.copytree(sources[model_type], moments)
    (moments / "model.safetensors").unlink()
    from safetensors.torch import save_file

    save_file({k: s["exp_avg"].contiguous() for k, s in _moments(run).items()}, moments / "model.safetensors",
              metadata={"format": "pt"})
    grow(moments, tiny.TARGET[model_type], tmp_path / "grown-moments", plan=plan)
    expect = load_file(tmp_path / "grown-moments" / "model.safetensors")
    assert set(got) == set(expect)
    for name in expect:
        torch.testing.assert_close(got[name], expect[name], rtol=1e-5, atol=1e-8, msg=name)
    step = next(iter(grown.optimizer["state"].values()))["step"]
    assert int(step) == 3  # the step counters carry over


def test_second_moments_keep_the_update_size_of_copies(sources, blocks, tmp_path):
    """Net2Net copy + stack: every grown weight is a*W of one source weight, so v' is that weight's v."""
    run = _run(sources, blocks, tmp_path)
    grown = grow_checkpoint(run, {"hidden": 128, "heads": 8, "kv_heads": 4, "ffn": 192},
                            GrowthPlan(width="copy", depth="stack"))
    slots = [n for g in grown.trainer_state["param_names"] for n in g]
    v = {slots[i]: s["exp_avg_sq"] for i, s in grown.optimizer["state"].items()}
    src = {k: s["exp_avg_sq"] for k, s in _moments(run).items()}
    res, ffn = torch.arange(128) % 64, torch.arange(192) % 96
    p = "model.layers.1."
    torch.testing.assert_close(v["model.embed_tokens.weight"], src["model.embed_tokens.weight"][:, res])
    torch.testing.assert_close(v[p + "mlp.down_proj.weight"], src[p + "mlp.down_proj.weight"][res][:, ffn])
    torch.testing.assert_close(v[p + "mlp.up_proj.weight"], src[p + "mlp.up_proj.weight"][ffn][:, res])
    heads = (torch.arange(8) % 4)[:, None] * 16 + torch.arange(16)  # GQA-kept head copies, 16 rows each
    torch.testing.assert_close(v[p + "self_attn.q_proj.weight"],
                               src[p + "self_attn.q_proj.weight"][heads.flatten()][:, res])


@pytest.mark.parametrize("optimizer_state", ["grow", "reset"])
def test_a_lossless_growth_continues_the_run_without_a_jump(optimizer_state, sources, blocks, tmp_path):
    """Split + identity at integer ratios: the step after growth sees the same function on the same batch."""
    small = tmp_path / "small"
    train(sources["llama"], None, small, TrainConfig(steps=8, save_every=4, keep_last=5, **QUICK), Start(blocks=blocks))
    from ligo.rungrowth import grow_run

    shutil.rmtree(small / "checkpoints" / "step-0000008")  # grow at step 4, compare with the small run's step 5
    grown = grow_run(small, {"hidden": 128, "layers": 4, "heads": 8, "kv_heads": 4, "ffn": 192}, tmp_path / "grown",
                     optimizer_state=optimizer_state)
    train(None, None, grown, TrainConfig(steps=8, save_every=4, keep_last=5, **QUICK), Start(blocks=blocks), resume=True)
    before = {r["step"]: r["loss"] for r in map(json.loads, (small / "log.jsonl").read_text().splitlines())}
    after = {r["step"]: r["loss"] for r in map(json.loads, (grown / "log.jsonl").read_text().splitlines())}
    assert [after[s] for s in range(1, 5)] == [before[s] for s in range(1, 5)]  # the log carries over
    assert abs(after[5] - before[5]) < 1e-4, (after[5], before[5])  # the same function on the same batch
    if optimizer_state == "grow":  # the grown moments keep the updates' size: no jump on the next step either
        assert abs(after[6] - before[6]) < 0.02, (after[6], before[6])
    print(f"\n{optimizer_state}: step 6 loss {after[6]:.4f} vs the small run's {before[6]:.4f}", end="")
    rows = [json.loads(r) for r in (grown / "log.jsonl").read_text().splitlines()]
    assert all(b["flops"] > a["flops"] for a, b in zip(rows, rows[1:]))  # one FLOPs column, growing faster after


def test_mid_run_growth_survives_sigkill_with_the_same_trajectory(sources, corpus, tmp_path):
    target = json.dumps({"hidden": 128, "layers": 4, "heads": 8, "kv_heads": 4, "ffn": 192})
    args = [str(sources["llama"]), "--data", str(corpus), "--steps", "10", "--save-every", "2", "--grow-at", "4",
            "--grow-target", target, "--grow-width", "random", "--grow-depth", "stack", *FAST]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run([LIGO, "train", *args, "--out", str(ref)], check=True, capture_output=True)
    assert (ref / "grown-at-0000004" / "config.json").exists()
    assert json.loads((ref / "config.json").read_text())["hidden_size"] == 128
    proc = subprocess.Popen([LIGO, "train", *args, "--out", str(killed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    grown_ckpt = killed / "checkpoints" / "step-0000004-grown"
    wait_for(grown_ckpt.exists, proc)
    proc.send_signal(signal.SIGKILL)  # right after the growth
    proc.wait()
    assert grown_ckpt.exists()
    subprocess.run([LIGO, "train", *args, "--out", str(killed), "--resume"], check=True, capture_output=True)
    log = lambda d: [(r["step"], r["loss"]) for r in map(json.loads, (d / "log.jsonl").read_text().splitlines())]  # noqa: E731
    assert log(killed) == log(ref) and len(log(ref)) == 10


def test_mid_run_growth_resumes_from_a_kill_before_the_growth_was_kept(sources, corpus, tmp_path, cli):
    """Killed between pausing at the stage and keeping the grown checkpoint: --resume grows again."""
    target = json.dumps({"hidden": 128, "ffn": 192, "heads": 8, "kv_heads": 4})
    args = ["train", sources["llama"], "--data", corpus, "--steps", "6", "--save-every", "2", "--keep-last", "9", "--grow-at", "4",
            "--grow-target", target, *FAST]
    cli(*args, "--out", tmp_path / "ref", check=True)
    cli(*args, "--out", tmp_path / "cut", check=True)
    ck = tmp_path / "cut" / "checkpoints"
    for later in ck.iterdir():  # back to the moment of the pause at step 4
        if later.name != "step-0000004":
            shutil.rmtree(later)
    shutil.rmtree(tmp_path / "cut" / "grown-at-0000004")
    (tmp_path / "cut" / "config.json").unlink()
    cli(*args, "--out", tmp_path / "cut", "--resume", check=True)
    losses = lambda d: [(r["step"], r["loss"]) for r in map(json.loads, (d / "log.jsonl").read_text().splitlines())]  # noqa: E731
    assert losses(tmp_path / "cut") == losses(tmp_path / "ref") and len(losses(tmp_path / "ref")) == 6


def _state_without_optimizer(run):
    from ligo.rundir import file_digests

    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    (ckpt / "optimizer.bin").unlink()
    state = json.loads((ckpt / "trainer_state.json").read_text())
    state["files"] = file_digests(ckpt)
    (ckpt / "trainer_state.json").write_text(json.dumps(state))


@pytest.mark.parametrize("case, message", [
    ("no optimizer state", "has no optimizer state to grow; pass --optimizer-state reset"),
    ("a model folder, not a run", "is not a ligo train run directory"),
    ("checkpoint mid-write", "holds no complete checkpoint \\(one is being written or was cut short\\)"),
    ("another architecture", "differs from the source"),
    ("unknown target key", "unknown target key"),
])
def test_growing_a_run_bad_input_changes_nothing(case, message, sources, blocks, tmp_path, cli):
    run = _run(sources, blocks, tmp_path)
    target = json.dumps(tiny.TARGET["llama"])
    source = run
    if case == "no optimizer state":
        _state_without_optimizer(run)
    elif case == "a model folder, not a run":
        source = sources["llama"]
    elif case == "checkpoint mid-write":
        ckpt = sorted((run / "checkpoints").iterdir())[-1]
        ckpt.rename(ckpt.parent / f".{ckpt.name}.tmp")
    elif case == "another architecture":
        target = json.dumps({"model_type": "gpt2", "n_embd": 128})
    elif case == "unknown target key":
        target = '{"hiden": 128}'
    before = sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*"))
    assert_one_line_error(cli("grow", source, "--optimizer-state", "grow", "--target", target, "--out",
                              tmp_path / "out"), "grow", message)
    assert not (tmp_path / "out").exists()
    assert sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*")) == before


def test_bad_stages_are_refused_before_training(sources, corpus, tmp_path, cli):
    base = ["train", sources["llama"], "--data", corpus, "--steps", "6", "--out", tmp_path / "o", *FAST]
    assert_one_line_error(cli(*base, "--grow-at", "9", "--grow-target", '{"hidden": 128}'), "train",
                          "must lie inside the run")
    assert_one_line_error(cli(*base, "--grow-at", "3"), "train", "has no target")
    assert_one_line_error(cli(*base, "--grow-at", "3", "--grow-target", '{"hidden": 32}'), "train", "smaller than")
    assert not (tmp_path / "o").exists()
