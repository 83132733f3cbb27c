"""Reliability and security beyond `ligo grow` (see test_bad_inputs.py for its 23 cases):
bad input to `ligo train`, `ligo grow-train` and the Python API, disk full, NaN with checkpoints,
untrusted pickles, and memory that does not drift across steps."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tiny
from conftest import run_cli, write_json

from ligo import Grower, TrainConfig
from ligo.arch import LigoError

FAST = ["--seq-len", "32", "--batch-size", "4", "--eval-batches", "1", "--no-progress"]
ROOT = Path(__file__).resolve().parents[1]


def _recipe(tmp_path, sources, corpus, **over):
    r = {"source": str(sources["llama"]), "target": tiny.TARGET["llama"], "data": str(corpus), "seq_len": 32,
         "batch_size": 4, "fit": {"steps": 2, "warmup": 1}, "train": {"steps": 2, "eval_every": 0, "eval_batches": 1}}
    r.update(over)
    return write_json(tmp_path / "recipe.json", r)


def _short_text(tmp_path):
    (tmp_path / "short.txt").write_text("x = 1\n")
    return tmp_path / "short.txt"


# (name, command builder, expected message). Each command gets --out OUT appended unless it has one.
CASES = {
    "train: missing model dir": (lambda s, c, t: ["train", t / "nope", "--data", c], "does not exist"),
    "train: zero steps": (lambda s, c, t: ["train", s["llama"], "--data", c, "--steps", "0"], "steps must be"),
    "train: negative steps": (lambda s, c, t: ["train", s["llama"], "--data", c, "--steps", "-5"], "steps must be"),
    "train: tracker not installed": (lambda s, c, t: ["train", s["llama"], "--data", c, "--steps", "1",
                                                      "--trackers", "dvclive"], "not installed"),
    "train: bad schedule": (lambda s, c, t: ["train", s["llama"], "--data", c, "--schedule", "zigzag"], "schedule"),
    "train: from-config without tokenizer": (
        lambda s, c, t: ["train", "--from-config", s["llama"] / "config.json", "--data", c], "--tokenizer"),
    "train: seq_len beyond positions": (
        lambda s, c, t: ["train", s["gpt2"], "--data", c, "--seq-len", "4096"], "exceeds the model"),
    "train: empty data dir": (lambda s, c, t: ["train", s["llama"], "--data", (t / "e").mkdir() or t / "e"],
                              "holds no text"),
    "train: data shorter than a block": (lambda s, c, t: ["train", s["llama"], "--data", _short_text(t)],
                                         "fewer than"),
    "train: resume without a checkpoint": (lambda s, c, t: ["train", s["llama"], "--data", c, "--resume"],
                                           "no complete checkpoint"),
    "train: pickle-only model": (lambda s, c, t: ["train", _pickle_only(s, t), "--data", c], "never unpickles"),
    "grow-train: recipe with an unknown key": (
        lambda s, c, t: ["grow-train", "--config", _recipe(t, s, c, stepz=3)], "unknown key.*stepz"),
    "grow-train: recipe with a wrong type": (
        lambda s, c, t: ["grow-train", "--config", _recipe(t, s, c, train={"steps": "ten"})], "steps must be int"),
    "grow-train: unknown training key": (
        lambda s, c, t: ["grow-train", "--config", _recipe(t, s, c, train={"lr_peak": 1})], "unknown key.*lr_peak"),
    "grow-train: recipe not parseable": (
        lambda s, c, t: ["grow-train", "--config", (t / "r.yaml").write_text("a: [") and t / "r.yaml"], "cannot be parsed"),
    "grow-train: missing recipe": (lambda s, c, t: ["grow-train", "--config", t / "none.yaml"], "does not exist"),
    "grow-train: no target": (lambda s, c, t: ["grow-train", s["llama"], "--data", c], "no target"),
    "grow-train: negative fit steps": (
        lambda s, c, t: ["grow-train", "--config", _recipe(t, s, c, fit={"steps": -1})], "fit steps"),
    "grow-train: zero train steps": (
        lambda s, c, t: ["grow-train", "--config", _recipe(t, s, c, train={"steps": 0})], "steps must be"),
    "grow-train: target smaller": (
        lambda s, c, t: ["grow-train", "--config", _recipe(t, s, c, target={"hidden_size": 32})], "smaller than"),
    "grow-train: binary data": (
        lambda s, c, t: ["grow-train", "--config", _recipe(t, s, c, data=str(_binary(t)))], "binary"),
    "grow-train: data shorter than a block": (
        lambda s, c, t: ["grow-train", "--config", _recipe(t, s, c, data=str(_short_text(t)))], "fewer than"),
}


def _binary(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"\x00\xff" * 64)
    return tmp_path / "b.txt"


def _pickle_only(sources, tmp_path):
    d = tmp_path / "pickled"
    shutil.copytree(sources["llama"], d)
    (d / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, d / "pytorch_model.bin")
    return d


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, sources, corpus, tmp_path):
    build, message = CASES[name]
    out = tmp_path / "out"
    proc = run_cli(*build(sources, corpus, tmp_path), "--out", out)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))


def test_api_errors_are_ligo_errors(sources):
    with pytest.raises(LigoError, match="smaller than"):
        Grower(sources["llama"], {"num_hidden_layers": 1})
    with pytest.raises(LigoError, match="steps must be"):
        TrainConfig(steps=0)
    with pytest.raises(LigoError, match="unknown key"):
        TrainConfig.from_dict({"step": 3})


def test_existing_train_output_is_refused_unless_overwrite(sources, corpus, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    proc = run_cli("train", sources["llama"], "--data", corpus, "--out", out, "--steps", "1", *FAST)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr and (out / "mine.txt").read_text() == "keep"


# -- disk full: simulated OSError(ENOSPC) inside the real CLI, in a subprocess ----------------------
ENOSPC_SHIM = """
import errno, sys
import {module} as m
real = m.{attr}
calls = [0]
def full(*a, **k):
    calls[0] += 1
    if calls[0] >= {after}:
        raise OSError(errno.ENOSPC, "No space left on device")
    return real(*a, **k)
m.{attr} = full
from ligo.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run_full_disk(module, attr, after, *args):
    code = ENOSPC_SHIM.format(module=module, attr=attr, after=after)
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_disk_full_while_saving_a_grown_model(sources, tmp_path):
    out = tmp_path / "grown"
    proc = _run_full_disk("huggingface_hub", "save_torch_state_dict", 1, "grow", sources["llama"], "--target",
                          json.dumps(tiny.TARGET["llama"]), "--out", out)
    assert proc.returncode == 2 and "No space left" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".grown*"))


def test_disk_full_during_a_checkpoint_keeps_the_last_good_one(sources, corpus, tmp_path):
    out = tmp_path / "run"
    # the 3rd checkpoint write fails: steps 2 and 4 are saved, step 6 is not
    proc = _run_full_disk("safetensors.torch", "save_file", 3, "train", sources["llama"], "--data", corpus,
                          "--out", out, "--steps", "10", "--save-every", "2", "--keep-last", "5", *FAST)
    line = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(line) == 1, proc.stderr
    assert "step 6" in line[0] and "step-0000004" in line[0] and "--resume" in line[0], line[0]
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step-0000002", "step-0000004"], names  # nothing half-written, under any name
    proc = run_cli("train", sources["llama"], "--data", corpus, "--out", out, "--steps", "10", "--save-every", "2",
                   "--resume", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert (out / "config.json").exists()


def test_nan_keeps_the_last_good_checkpoint(sources, corpus, tmp_path):
    """A loss that turns NaN at step 5 (injected): clear stop, the checkpoint of step 4 intact and resumable."""
    from ligo.data import load_blocks
    from ligo.grow import load_tokenizer
    from ligo.loop import latest_checkpoint, make_collate, train_loop

    model = tiny.make_model("llama")
    calls = {"n": 0}
    real = model.forward

    def forward(**batch):
        out = real(**batch)
        if model.training:
            calls["n"] += 1
            if calls["n"] == 5:
                out.loss = out.loss * float("nan")
        return out

    model.forward = forward
    blocks = load_blocks(corpus, load_tokenizer(sources["llama"]), 32)
    cfg = TrainConfig(steps=10, seq_len=32, batch_size=4, save_every=2, eval_every=0, eval_batches=1, progress=False)
    with pytest.raises(LigoError, match=r"loss became nan at step 5.*step-0000004"):
        train_loop(model, blocks.train, blocks.val, cfg, collate=make_collate("causal-lm"), run_dir=tmp_path / "r")
    assert latest_checkpoint(tmp_path / "r").name == "step-0000004"
    state = json.loads((latest_checkpoint(tmp_path / "r") / "trainer_state.json").read_text())
    assert state["step"] == 4


# -- security -----------------------------------------------------------------------------------
class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_malicious_pickles_are_never_executed(sources, corpus, tmp_path):
    import pickle

    marker = tmp_path / "PWNED"
    # 1. a pickle-only checkpoint whose weights file runs code when unpickled
    evil = tmp_path / "evil-model"
    shutil.copytree(sources["llama"], evil)
    (evil / "model.safetensors").unlink()
    (evil / "pytorch_model.bin").write_bytes(pickle.dumps(_Exploit(marker)))
    for args in (["grow", evil, "--target", json.dumps(tiny.TARGET["llama"]), "--out", tmp_path / "o1"],
                 ["train", evil, "--data", corpus, "--out", tmp_path / "o2", "--steps", "1", *FAST],
                 ["inspect", evil]):
        proc = run_cli(*args)
        assert proc.returncode == 2 and "never unpickles" in proc.stderr, proc.stderr
    assert not marker.exists()
    # 2. a training checkpoint whose RNG-state pickle was replaced: --resume refuses the changed checkpoint
    run = tmp_path / "run"
    run_cli("train", sources["llama"], "--data", corpus, "--out", run, "--steps", "4", "--save-every", "2",
            *FAST, check=True)
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    rng = ckpt / "random_states_0.pkl"
    rng.write_bytes(pickle.dumps(_Exploit(marker)))
    proc = run_cli("train", sources["llama"], "--data", corpus, "--out", run, "--steps", "6", "--resume", *FAST)
    assert proc.returncode == 2 and "modified or corrupted" in proc.stderr, proc.stderr
    assert not marker.exists()
    # 3. the attacker also rewrites the digests: the pickle still only meets torch.load(weights_only=True)
    import hashlib

    state_file = ckpt / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["files"]["random_states_0.pkl"] = hashlib.sha256(rng.read_bytes()).hexdigest()
    state_file.write_text(json.dumps(state))
    run_cli("train", sources["llama"], "--data", corpus, "--out", run, "--steps", "6", "--resume", *FAST)
    assert not marker.exists()


def _calls(text: str, name: str) -> list[str]:
    """The full text of every call ``name(...)`` in ``text`` (parentheses matched)."""
    found = []
    for m in re.finditer(re.escape(name) + r"\(", text):
        depth, i = 0, m.end() - 1
        for i in range(m.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            if depth == 0:
                break
        found.append(text[m.start():i + 1])
    return found


def test_source_never_unpickles_or_trusts_remote_code():
    """Every torch.load passes weights_only=True; trust_remote_code is never turned on."""
    pretrained = 0
    for path in (ROOT / "ligo").rglob("*.py"):
        text = path.read_text()
        for call in _calls(text, "torch.load"):
            assert "weights_only=True" in call, (path, call)
        assert "trust_remote_code=True" not in text, path
        for call in _calls(text, ".from_pretrained"):
            pretrained += 1
            assert "trust_remote_code=False" in call, (path, call)
    assert pretrained >= 2  # the model and the tokenizer loaders were seen


# -- memory under load --------------------------------------------------------------------------
def test_no_memory_drift_across_steps(tmp_path):
    """Peak RSS after step 50 within 5% of step 500, for the operator fit and for training (own process)."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory_drift.py"), "--steps", "500",
                           "--json", str(tmp_path / "m.json")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "m.json").read_text())
    for phase in ("fit", "train"):
        r = result[phase]
        assert r["drift"] <= 0.05, (phase, r)
