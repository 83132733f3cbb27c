"""Faults beyond bad input: a real full disk and a real file-size limit, kills and SIGTERM during a save,
NaN, untrusted pickles, and memory that does not drift across steps."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tiny
from conftest import LIGO, ROOT, assert_one_line_error, run_cli, wait_for

FAST = ["--seq-len", "32", "--batch-size", "4", "--eval-batches", "1", "--no-progress"]
TARGET = json.dumps(tiny.TARGET["llama"])  # grows the tiny llama to ~2.4 MB of weights


def _limited(limit_bytes):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


def _can_mount_tmpfs() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d"],
        capture_output=True).returncode == 0


# -- a full disk and a file-size limit, for real ------------------------------------------------------
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="cannot mount a tmpfs here (needs root or user namespaces)")
def test_grow_onto_a_real_full_disk(sources, tmp_path):
    """A 1 MB tmpfs: the 2.4 MB of weights do not fit. One line, exit 2, nothing left on that disk."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (f'mount -t tmpfs -o size=1m tmpfs "{disk}" && "{LIGO}" grow "{sources["llama"]}" --target \'{TARGET}\' '
              f'--out "{disk}/grown"; code=$?; echo "LEFT:$(ls -A "{disk}")"; exit $code')
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "grow", "no space left on the device")
    assert proc.stdout.strip().endswith("LEFT:"), proc.stdout  # no output, no temporary folder


def test_grow_under_a_real_file_size_limit(sources, tmp_path):
    out = tmp_path / "grown"
    proc = subprocess.run([LIGO, "grow", sources["llama"], "--target", TARGET, "--out", out], capture_output=True,
                          text=True, timeout=300, preexec_fn=_limited(1 << 20))
    assert_one_line_error(proc, "grow", r"file too large .*ulimit -f")
    assert not out.exists() and not list(tmp_path.glob(".grown*"))


def test_a_file_size_limit_during_a_checkpoint_keeps_the_last_good_one(sources, corpus, tmp_path):
    out = tmp_path / "run"
    args = ["train", sources["llama"], "--data", corpus, "--out", out, "--save-every", "2", "--keep-last", "5", *FAST]
    run_cli(*args, "--steps", "4", check=True)
    # resume under a limit smaller than the optimizer state: the checkpoint of step 6 cannot be written
    proc = subprocess.run([LIGO, *map(str, args), "--steps", "10", "--resume"], capture_output=True, text=True,
                          timeout=300, preexec_fn=_limited(900_000))
    line = assert_one_line_error(proc, "train", "checkpoint for step 6 failed: file too large")
    assert "step-0000004" in line and "--resume" in line, line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    run_cli(*args, "--steps", "10", "--resume", check=True)
    assert (out / "config.json").exists()


# -- kills and SIGTERM while a grown model is being saved ----------------------------------------------
def test_sigterm_during_grow_leaves_nothing_and_kill_leftovers_are_removed(sources, tmp_path):
    import secrets

    out = tmp_path / "grown"
    # a leftover of a killed writer (its process is gone): the next write to the same output removes it
    stale = tmp_path / ".grown.tmp-999999999-dead"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(secrets.token_bytes(1000))
    proc = subprocess.Popen([LIGO, "grow", str(sources["llama"]), "--target", TARGET, "--out", str(out), "--width",
                             "random", "--depth", "stack", "--fit-steps", "100000", "--fit-eval-every", "0",
                             "--seq-len", "32", "--batch-size", "4", "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(8)  # in the start-up or the fit (100000 steps: never finished by then); either way it must unwind
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "terminated" in err, (proc.returncode, err)
    assert not out.exists() and not stale.exists(), sorted(p.name for p in tmp_path.iterdir())
    # SIGTERM in the middle of the save itself: the temporary folder goes with it
    slow = subprocess.Popen([sys.executable, "-c", _SLOW_SAVE, str(sources["llama"]), TARGET, str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: list(tmp_path.glob(".grown.tmp-*")), slow), slow.communicate()
    slow.send_signal(signal.SIGTERM)
    _, err = slow.communicate(timeout=60)
    assert slow.returncode == 143, err
    assert not out.exists() and not list(tmp_path.glob(".grown.*")), sorted(p.name for p in tmp_path.iterdir())


_SLOW_SAVE = """
import sys, time
import huggingface_hub
real = huggingface_hub.save_torch_state_dict
def slow(*a, **k):  # a save that takes long enough to be interrupted (the test's only stand-in)
    real(*a, **k)
    time.sleep(60)
huggingface_hub.save_torch_state_dict = slow
from ligo.cli import main
sys.exit(main(["grow", sys.argv[1], "--target", sys.argv[2], "--out", sys.argv[3]]))
"""


def test_sigkill_during_grow_then_rerun(sources, tmp_path):
    out = tmp_path / "grown"
    slow = subprocess.Popen([sys.executable, "-c", _SLOW_SAVE, str(sources["llama"]), TARGET, str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: list(tmp_path.glob(".grown.tmp-*")), slow)
    slow.kill()
    slow.wait()
    assert list(tmp_path.glob(".grown.tmp-*")) and not out.exists()  # what kill -9 leaves
    run_cli("grow", sources["llama"], "--target", TARGET, "--out", out, check=True)
    assert (out / "config.json").exists() and not list(tmp_path.glob(".grown.*"))


# -- NaN during training ---------------------------------------------------------------------------
def test_nan_keeps_the_last_good_checkpoint(sources, blocks, tmp_path):
    """A loss that turns NaN at step 5 (injected): clear stop, the checkpoint of step 4 intact and resumable."""
    from ligo import TrainConfig
    from ligo.errors import LigoError
    from ligo.loop import make_collate, train_loop
    from ligo.rundir import latest_checkpoint

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
    cfg = TrainConfig(steps=10, seq_len=32, batch_size=4, save_every=2, eval_every=0, eval_batches=1, progress=False)
    with pytest.raises(LigoError, match=r"loss became nan at step 5.*step-0000004"):
        train_loop(model, blocks.train, blocks.val, cfg, collate=make_collate("causal-lm"), run_dir=tmp_path / "r")
    assert latest_checkpoint(tmp_path / "r").name == "step-0000004"
    assert json.loads((latest_checkpoint(tmp_path / "r") / "trainer_state.json").read_text())["step"] == 4


def test_truncated_trainer_state_is_one_clear_line(sources, corpus, tmp_path, cli):
    out = tmp_path / "run"
    args = ["train", sources["llama"], "--data", corpus, "--out", out, "--save-every", "2", *FAST]
    cli(*args, "--steps", "2", check=True)
    state = out / "checkpoints" / "step-0000002" / "trainer_state.json"
    state.write_text(state.read_text()[:40])
    assert_one_line_error(cli(*args, "--steps", "4", "--resume"), "train", "unreadable or cut short.*delete")


# -- security ---------------------------------------------------------------------------------------
class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_malicious_pickles_are_never_executed(sources, corpus, tmp_path, cli):
    import hashlib
    import pickle

    marker = tmp_path / "PWNED"
    # the payload is real: unpickled, it writes the marker
    pickle.loads(pickle.dumps(_Exploit(marker)))
    assert marker.read_text() == "pwned"
    marker.unlink()
    # 1. a pickle-only checkpoint whose weights file runs code when unpickled
    evil = tmp_path / "evil-model"
    shutil.copytree(sources["llama"], evil)
    (evil / "model.safetensors").unlink()
    (evil / "pytorch_model.bin").write_bytes(pickle.dumps(_Exploit(marker)))
    for args in (["grow", evil, "--target", json.dumps(tiny.TARGET["llama"]), "--out", tmp_path / "o1"],
                 ["train", evil, "--data", corpus, "--out", tmp_path / "o2", "--steps", "1", *FAST],
                 ["inspect", evil]):
        assert_one_line_error(cli(*args), args[0], "never unpickles")
    assert not marker.exists()
    # 2. a training checkpoint whose RNG-state pickle was replaced: --resume refuses the changed checkpoint
    run = tmp_path / "run"
    cli("train", sources["llama"], "--data", corpus, "--out", run, "--steps", "4", "--save-every", "2", *FAST,
        check=True)
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    rng = ckpt / "random_states_0.pkl"
    rng.write_bytes(pickle.dumps(_Exploit(marker)))
    resume = ["train", sources["llama"], "--data", corpus, "--out", run, "--steps", "6", "--save-every", "2", *FAST,
              "--resume"]
    assert_one_line_error(cli(*resume), "train", "modified or corrupted")
    assert not marker.exists()
    # 3. the attacker also rewrites the digests: the pickle only meets torch.load(weights_only=True)
    state_file = ckpt / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["files"]["random_states_0.pkl"] = hashlib.sha256(rng.read_bytes()).hexdigest()
    state_file.write_text(json.dumps(state))
    assert_one_line_error(cli(*resume), "train", "random_states_0.pkl is not plain tensors.*never unpickles")
    assert not marker.exists()


def test_source_never_unpickles_or_trusts_remote_code():
    """Every torch.load passes weights_only=True; every from_pretrained is local-only without remote code."""
    import ast

    pretrained = 0
    for path in (ROOT / "ligo").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            kw = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
            where = f"{path.name}:{node.lineno}"
            if node.func.attr == "load" and getattr(node.func.value, "id", None) == "torch":
                assert kw.get("weights_only") is True, where
            if node.func.attr == "from_pretrained":
                pretrained += 1
                assert kw.get("trust_remote_code") is False and kw.get("local_files_only") is True, where
    assert pretrained >= 3  # the model, the tokenizer and the cached-tokenizer loaders were seen


# -- memory under load --------------------------------------------------------------------------------
def _drift(steps, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory_drift.py"), "--steps", str(steps),
                           "--early", str(steps // 5), "--json", str(tmp_path / "m.json")], capture_output=True,
                          text=True, timeout=1800, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "m.json").read_text())
    for phase in ("fit", "train"):
        assert result[phase]["drift"] <= 0.05, (phase, result[phase])


HUGE = {"hidden_size": 131072, "intermediate_size": 524288, "num_attention_heads": 1024, "num_key_value_heads": 1024}


@pytest.mark.parametrize("how", ["from-config", "grow-at"])
def test_a_model_larger_than_memory_is_refused_before_it_is_built(how, sources, corpus, tmp_path):
    """A model of terabytes under a real 4 GB address-space limit: `ligo train --from-config` once allocated until
    "unexpected error: RuntimeError ... can't allocate memory", and `--grow-at` trained up to the stage before its
    growth refused it. Now the one memory check that `ligo grow` makes refuses both before any step."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    config = json.loads((sources["llama"] / "config.json").read_text())
    out = tmp_path / "run"
    common = ["--data", corpus, "--out", out, "--steps", "4", *FAST]
    if how == "from-config":  # 3.3e12 parameters
        (tmp_path / "huge.json").write_text(json.dumps({**config, **HUGE, "num_hidden_layers": 12}))
        args, fix = ["--from-config", tmp_path / "huge.json", "--tokenizer", sources["llama"]], "choose a smaller config"
    else:  # 5.5e11 parameters after the stage
        args, fix = [sources["llama"], "--grow-at", "2", "--grow-target", json.dumps(HUGE)], \
            "choose a smaller target for the growth stage at step 2"
    proc = subprocess.run([LIGO, "train", *map(str, args), *map(str, common)], capture_output=True, text=True,
                          timeout=600, preexec_fn=limit)
    assert_one_line_error(proc, "train", f"the model has [0-9,]+ parameters to build in float32: [0-9.]+ GB, but this "
                                         f"machine has [0-9.]+ GB of memory available; {fix}")
    assert not out.exists()

def test_no_memory_drift_across_steps(tmp_path):
    """Peak RSS after step 20 within 5% of step 100, for the operator fit and for training (own process)."""
    _drift(100, tmp_path)


@pytest.mark.slow
def test_no_memory_drift_across_many_steps(tmp_path):
    """The long version: step 100 against step 500."""
    _drift(500, tmp_path)


def test_a_sigterm_that_a_c_extension_turned_into_another_error_is_still_a_termination(monkeypatch, capsys):
    """safetensors or torch may catch the handler's exception and raise their own (seen once as 'not a readable
    safetensors file' under load): the CLI still ends as terminated (143), not as a bad-input error."""
    import ligo.commands.inspect as inspect_cmd
    from ligo import cli

    def run(args):
        try:
            cli._terminate()
        except BaseException:
            raise RuntimeError("could not determine the shape of object type 'torch.storage.UntypedStorage'")

    monkeypatch.setattr(inspect_cmd, "run", run)
    assert cli.main(["inspect", "anything"]) == 143
    assert capsys.readouterr().err.strip() == "ligo inspect: terminated"
    monkeypatch.undo()
    assert cli.main(["inspect", "/nonexistent/model"]) == 2  # the next call is not a termination
