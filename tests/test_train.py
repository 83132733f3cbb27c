"""The trainer: learning, determinism, the fast path, crash safety (SIGKILL / SIGTERM), resume checks,
2 processes, FLOPs."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tiny
from conftest import LIGO, assert_one_line_error, run_cli, wait_for, write_json
from ligo import Start, TrainConfig, train

ARGS = ["--seq-len", "32", "--batch-size", "8", "--lr", "3e-3", "--warmup", "2", "--eval-every", "4",
        "--eval-batches", "2", "--no-progress"]
QUICK = dict(seq_len=32, batch_size=4, eval_every=4, eval_batches=1, progress=False, lr=3e-3, warmup=2)


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in map(json.loads, (Path(run_dir) / "log.jsonl").read_text().splitlines())]


def test_train_lowers_held_out_loss_and_saves_a_model(sources, corpus, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", sources["llama"], "--data", corpus, "--out", out, "--steps", "30", *ARGS, check=True)
    assert "held-out loss" in proc.stdout
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 31))  # one line per step, whatever the read-back cadence
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert vals[-1] < vals[0] - 0.2
    assert {"loss", "lr", "tokens", "flops", "wall"} <= set(rows[0])
    assert rows[9]["tok_s"] > 0 and rows[9]["tflops"] > 0  # throughput at every read-back (log_every 10)
    model = tiny.model_cls("llama").from_pretrained(out)
    assert model.config.num_hidden_layers == 2
    recipe = json.loads((out / "ligo_recipe.json").read_text())
    assert recipe["ledger"]["train_flops"] == pytest.approx(rows[-1]["flops"])
    assert json.loads((out / "run.json").read_text())["model"] == str(sources["llama"])
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card and "FLOPs ledger" in card


def test_from_config_trains_scratch_through_the_same_loop(sources, corpus, tmp_path, cli):
    cfg_path = write_json(tmp_path / "config.json", json.loads((sources["gpt2"] / "config.json").read_text()))
    out = tmp_path / "scratch"
    cli("train", "--from-config", cfg_path, "--tokenizer", sources["gpt2"], "--data", corpus, "--out", out,
        "--steps", "20", *ARGS, check=True)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["val_loss"] < rows[3]["val_loss"]
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()


def test_same_seed_same_trajectory(sources, corpus, tmp_path):
    cfg = TrainConfig(steps=8, **QUICK)
    a = train(sources["bert"], corpus, tmp_path / "a", cfg)
    b = train(sources["bert"], corpus, tmp_path / "b", cfg)
    assert [r["loss"] for r in a.loop.history] == [r["loss"] for r in b.loop.history]
    assert [e["val_loss"] for e in a.loop.evals] == [e["val_loss"] for e in b.loop.evals]


def test_reading_the_loss_back_less_often_changes_nothing(sources, corpus, tmp_path):
    """log_every only moves the host synchronisation: the same losses, one log line per step."""
    a = train(sources["llama"], corpus, tmp_path / "a", TrainConfig(steps=8, log_every=1, **QUICK))
    b = train(sources["llama"], corpus, tmp_path / "b", TrainConfig(steps=8, log_every=5, **QUICK))
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert [e["val_loss"] for e in a.loop.evals] == [e["val_loss"] for e in b.loop.evals]
    assert sum("tok_s" in r for r in b.loop.history) == 3  # read back at steps 4 (eval), 5 and 8


OPTIONS = {"grad_checkpointing": ({"grad_checkpointing": True}, 1e-5),  # recomputation is exact
           "bf16 autocast": ({"mixed_precision": "bf16"}, 0.05),  # bf16 is close
           "bf16 weights": ({"weights_dtype": "bfloat16"}, 0.05)}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_memory_and_precision_options_train(option, sources, corpus, tmp_path):
    extra, tol = OPTIONS[option]
    base = train(sources["llama"], corpus, tmp_path / "a", TrainConfig(steps=6, **QUICK))
    other = train(sources["llama"], corpus, tmp_path / "b", TrainConfig(steps=6, **QUICK, **extra))
    a, b = [r["loss"] for r in base.loop.history], [r["loss"] for r in other.loop.history]
    assert max(abs(x - y) for x, y in zip(a, b)) < tol, (a, b)


def test_bf16_weights_resume_exactly(sources, corpus, tmp_path):
    """The fp32 master weights are part of the checkpoint: a resumed run continues bit for bit."""
    cfg = dict(QUICK, weights_dtype="bfloat16", save_every=3, grad_accum=2)
    train(sources["llama"], corpus, tmp_path / "ref", TrainConfig(steps=6, **cfg))
    train(sources["llama"], corpus, tmp_path / "cut", TrainConfig(steps=3, **cfg))
    (tmp_path / "cut" / "config.json").unlink()
    train(sources["llama"], corpus, tmp_path / "cut", TrainConfig(steps=6, **cfg), resume=True)
    assert losses(tmp_path / "cut") == losses(tmp_path / "ref")
    from safetensors.torch import load_file

    assert {v.dtype for v in load_file(tmp_path / "ref" / "model.safetensors").values()} == {torch.bfloat16}


def test_compiled_training_on_the_cpu(tokenizer, corpus, tmp_path):
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        pytest.skip("torch.compile on the CPU needs a C++ compiler, and none is installed")
    src = tiny.save_model(tiny.make_model("llama", num_hidden_layers=1), tmp_path / "src", tokenizer)
    cfg = dict(QUICK, eval_every=0)  # evaluations at the start and the end: both graphs (train and eval) compile
    eager = train(src, corpus, tmp_path / "a", TrainConfig(steps=3, **cfg))
    comp = train(src, corpus, tmp_path / "b", TrainConfig(steps=3, compile=True, **cfg))
    a, b = [r["loss"] for r in eager.loop.history], [r["loss"] for r in comp.loop.history]
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-3, (a, b)
    assert (tmp_path / "b" / "model.safetensors").exists()


def test_patience_stops_when_held_out_loss_stops_improving(sources, corpus, tmp_path):
    # a zero-ish learning rate never improves: two evaluations without improvement end the run
    res = train(sources["llama"], corpus, tmp_path / "r", TrainConfig(steps=40, patience=2, **{**QUICK, "lr": 1e-12}))
    # evaluations at steps 0 (the reference), 4 and 8: the second without improvement stops at 8
    assert res.loop.status == "stopped" and res.loop.steps == 8, (res.loop.status, res.loop.steps)
    assert (tmp_path / "r" / "config.json").exists()


def test_wsd_schedule_is_flat_then_decays():
    cfg = TrainConfig(steps=100, warmup=10, lr=1.0, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert cfg.lr_at(0) == pytest.approx(0.1) and cfg.lr_at(9) == 1.0
    assert cfg.lr_at(10) == cfg.lr_at(79) == 1.0
    assert cfg.lr_at(80) == 1.0 and cfg.lr_at(90) == pytest.approx(0.5) and cfg.lr_at(99) == pytest.approx(0.05)


def test_resume_refuses_other_settings_or_data_and_accepts_more_steps(sources, corpus, tmp_path, cli):
    out = tmp_path / "run"
    common = [sources["llama"], "--data", corpus, "--out", out, "--save-every", "4", *ARGS]
    cli("train", *common, "--steps", "4", check=True)
    assert_one_line_error(cli("train", *common[:-len(ARGS)], *ARGS[:4], "--lr", "1e-2", *ARGS[6:], "--steps", "8",
                              "--resume"), "train", r"other settings \(lr 0.003 -> 0.01\)")
    (tmp_path / "other").mkdir()
    shutil.copy(corpus / "typing.py", tmp_path / "other" / "typing.py")
    shutil.copy(corpus / "inspect.py", tmp_path / "other" / "inspect.py")
    assert_one_line_error(cli("train", sources["llama"], "--data", tmp_path / "other", "--out", out,
                              "--save-every", "4", *ARGS, "--steps", "8", "--resume"), "train", "the data differs")
    cli("train", *common, "--steps", "8", "--resume", check=True)
    assert [s for s, _ in losses(out)] == list(range(1, 9))


def _start(sources, corpus, out, steps, extra=()):
    return subprocess.Popen([LIGO, "train", str(sources["llama"]), "--data", str(corpus), "--out", str(out),
                             "--steps", str(steps), *ARGS, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


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
    steps, save = 16, ["--save-every", "2", "--keep-last", "2", "--log-every", "1"]
    ref = tmp_path / "ref"
    train(sources["llama"], corpus, ref, TrainConfig(steps=steps, seq_len=32, batch_size=8, lr=3e-3, warmup=2,
                                                    eval_every=4, eval_batches=2, save_every=2, progress=False))
    out = tmp_path / "killed"
    rng = random.Random(7)
    points = sorted(rng.sample(range(3, steps - 2), 3))
    kills = 0
    first = True
    for k in points + ["checkpoint-write"]:
        proc = _start(sources, corpus, out, steps, save + ([] if first else ["--resume"]))
        if k == "checkpoint-write":  # aim at the window in which a checkpoint is being written
            hit = wait_for(lambda: any(p.name.endswith(".tmp") for p in (out / "checkpoints").glob(".step-*")), proc)
        else:
            hit = wait_for(lambda: _log_len(out) >= k, proc)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        first = False
        _assert_checkpoints_complete(out)
        assert hit or proc.returncode == 0
    assert kills >= 3
    # a write cut short leaves a .tmp directory, never a step-N: resume ignores and replaces it
    run_cli("train", sources["llama"], "--data", corpus, "--out", out, "--steps", steps, *ARGS, *save, "--resume",
            check=True)
    _assert_checkpoints_complete(out)
    assert losses(out) == losses(ref)
    assert not list((out / "checkpoints").glob(".step-*"))


def test_sigterm_saves_a_checkpoint_and_exits_143(sources, corpus, tmp_path):
    out = tmp_path / "run"
    proc = _start(sources, corpus, out, 500, ["--log-every", "1"])
    assert wait_for(lambda: _log_len(out) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("ligo train: preempted at ") and line.endswith("--resume"), stderr
    assert "continue with: ligo train " in line
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    assert ckpts and json.loads((ckpts[-1] / "trainer_state.json").read_text())["step"] == _log_len(out)
    assert not (out / "config.json").exists()  # no final model: the run is not finished


def test_two_processes_same_global_batch(sources, corpus, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    out1, out2 = tmp_path / "one", tmp_path / "two"
    common = [str(sources["llama"]), "--data", str(corpus), "--steps", "6", "--save-every", "3", *ARGS]
    run_cli("train", *common, "--out", out1, check=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "ligo", "train",
                           *common, "--out", str(out2)], capture_output=True, text=True, timeout=600, env=env)
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
    from ligo.tables import get_spec
    from ligo.flops import measured_flops, step_flops

    model = tiny.make_model(model_type)  # eager attention: the counter sees every matmul
    model.train()
    spec = get_spec(model_type)
    dims = spec.dims(model.config.to_dict())
    ids = torch.randint(4, tiny.VOCAB, (2, 32))
    measured = measured_flops(lambda: model(input_ids=ids, labels=ids).loss)
    analytic = step_flops(model, dims, TrainConfig(batch_size=2, seq_len=32))
    assert abs(analytic - measured) / measured < 0.05, (analytic, measured)


def test_nan_loss_stops_with_a_clear_message(sources, corpus, tmp_path, cli):
    proc = cli("train", sources["llama"], "--data", corpus, "--out", tmp_path / "run", "--steps", "20",
               "--seq-len", "32", "--lr", "1e30", "--warmup", "0", "--clip", "0", "--no-progress")
    line = assert_one_line_error(proc, "train", "loss became .* learning rate")
    assert "step" in line and not (tmp_path / "run").exists()  # nothing worth resuming: nothing left behind


@pytest.mark.parametrize("mode", ["source-layers", "all-but-new"])
def test_freeze_trains_only_what_growth_added(mode, sources, blocks, tmp_path):
    """LLaMA-Pro's recipe: an identity block after every layer, then only the new blocks (and, with source-layers,
    the embeddings and head) train. Frozen tensors stay bit-identical, the optimizer holds no state for them, and
    the FLOPs count the backward as it runs (torch's counter agrees)."""
    from safetensors.torch import load_file

    from ligo import grow
    from ligo.flops import measured_flops, step_flops
    from ligo.tables import get_spec
    from ligo.training import freeze, layer_index

    grown = tmp_path / "grown"
    grow(sources["llama"], {}, grown, depth_map="expand:1")  # 2 -> 4 layers: 0, new, 1, new
    assert json.loads((grown / "ligo_recipe.json").read_text())["new_layers"] == [1, 3]
    cfg = TrainConfig(steps=3, batch_size=2, seq_len=16, eval_every=0, eval_batches=1, lr=1e-2, warmup=1,
                      progress=False, freeze=mode, save_every=3)
    result = train(grown, None, tmp_path / "run", cfg, Start(blocks=blocks))
    before, after = load_file(grown / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    new = {k for k in before if k.startswith(("model.layers.1.", "model.layers.3."))}
    norms = {k for k in before if "norm" in k}
    outside = {k for k in before if not k.startswith("model.layers.")}  # embeddings, the final norm, the head
    assert moved and moved <= (new | outside if mode == "source-layers" else new | norms)
    assert any(k.startswith("model.layers.1.self_attn.o_proj") for k in moved)  # the new blocks learn
    frozen = [k for k in before if k not in moved]
    assert all(torch.equal(before[k], after[k]) for k in frozen) and "model.layers.0.mlp.up_proj.weight" in frozen
    optim = torch.load(tmp_path / "run" / "checkpoints" / "step-0000003" / "optimizer.bin", weights_only=True)
    trainable = len(new) + (len(outside) if mode == "source-layers" else len(norms - new))
    assert len(optim["state"]) == trainable
    recipe = json.loads((tmp_path / "run" / "ligo_recipe.json").read_text())
    assert recipe["config"]["freeze"] == mode and f"freeze: {mode}" in (tmp_path / "run" / "README.md").read_text()
    # the analytic FLOPs of a frozen step equal torch's count of what the backward really computes
    spec = get_spec("llama")
    model = tiny.T.AutoModelForCausalLM.from_pretrained(grown, attn_implementation="eager")
    freeze(model, spec, mode, [1, 3])
    model.train()
    ids = torch.randint(4, tiny.VOCAB, (2, 32))
    measured = measured_flops(lambda: model(input_ids=ids, labels=ids).loss)
    analytic = step_flops(model, spec.dims(model.config.to_dict()), TrainConfig(batch_size=2, seq_len=32),
                          layer_of=layer_index(spec))
    assert abs(analytic - measured) / measured < 0.05, (analytic, measured)
    assert result.ledger.flops_per_step < step_flops(model, spec.dims(model.config.to_dict()), cfg)  # < unfrozen


def test_the_default_lr_follows_what_the_model_is(sources, blocks, tmp_path, tokenizer):
    """A checkpoint from elsewhere, and what is grown from it, train at 1e-4 by default (the rule real-smollm2-b
    measured); a model from scratch at 1e-3; a given LR is kept. The recipe says which rule chose it."""
    from ligo import grow
    from ligo.config import LR_FROM_SCRATCH, LR_PRETRAINED

    quick = dict(steps=2, batch_size=2, seq_len=16, eval_every=0, eval_batches=1, progress=False, warmup=1)

    def recipe(run):
        return json.loads((run / "ligo_recipe.json").read_text())

    train(sources["llama"], None, tmp_path / "outside", TrainConfig(**quick), Start(blocks=blocks))
    assert recipe(tmp_path / "outside")["config"]["lr"] == LR_PRETRAINED == 1e-4
    assert recipe(tmp_path / "outside")["lr_rule"].startswith("default 0.0001: a pretrained checkpoint")
    grow(sources["llama"], {"hidden": 128}, tmp_path / "grown")
    train(tmp_path / "grown", None, tmp_path / "grown-run", TrainConfig(**quick), Start(blocks=blocks))
    assert recipe(tmp_path / "grown-run")["config"]["lr"] == LR_PRETRAINED
    config = {**tiny.config("llama").to_dict(), "model_type": "llama"}
    train(None, None, tmp_path / "scratch", TrainConfig(**quick), Start(from_config=config, tokenizer=tokenizer,
                                                                       blocks=blocks))
    assert recipe(tmp_path / "scratch")["config"]["lr"] == LR_FROM_SCRATCH and not recipe(tmp_path / "scratch")["pretrained"]
    grow(tmp_path / "scratch", {"hidden": 128}, tmp_path / "weak-grown")  # ligo trained it on few tokens: weak
    train(tmp_path / "weak-grown", None, tmp_path / "weak-run", TrainConfig(**quick), Start(blocks=blocks))
    assert recipe(tmp_path / "weak-run")["config"]["lr"] == LR_FROM_SCRATCH
    train(sources["llama"], None, tmp_path / "given", TrainConfig(**quick, lr=3e-3), Start(blocks=blocks))
    assert recipe(tmp_path / "given")["config"]["lr"] == 3e-3 and recipe(tmp_path / "given")["lr_rule"] == "given"
