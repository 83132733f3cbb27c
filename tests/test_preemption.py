"""Preemption through a whole benchmark: SIGTERM to a real `ligo bench` checkpoints the run in progress,
stops the experiment with one line and exit 143, keeps everything resumable, and `--resume` ends with the
results of an uninterrupted run."""

import json
import os
import signal

import pytest

from conftest import run_cli, start_cli, wait_for

EXPERIMENT = """\
name: preempt
model_type: llama
corpus_bytes: 200000
vocab_size: 300
seq_len: 32
batch_size: 4
lr_sweep: [1]
source:
  config: {hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1,
           intermediate_size: 64, max_position_embeddings: 64, tie_word_embeddings: true}
  train: {steps: 40, lr: 0.003, warmup: 2, eval_every: 20, eval_batches: 2, log_every: 1}
target: {hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,
         intermediate_size: 128}
train: {steps: 40, lr: 0.002, warmup: 2, eval_every: 20, eval_batches: 2, log_every: 1}
fit: {share: 0.1, eval_every: 1}
unit_report: false
methods:
  scratch: {}
  ligo: {width: random, depth: stack, fit: true}
"""
VOLATILE = {"wall", "wall_s", "throughput", "peak_rss_mb", "peak_gpu_mb", "date", "wall_to_scratch_final"}


def _stable(obj):
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj


def _lines(path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


def _bench(exp, out, cache, *extra):
    return start_cli("bench", exp, "--out", out, "--no-progress", *extra,
                     env=dict(os.environ, LIGO_CACHE=str(cache), OMP_NUM_THREADS="1"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    root = tmp_path_factory.mktemp("preempt")
    (root / "exp.yaml").write_text(EXPERIMENT)
    proc = _bench(root / "exp.yaml", root / "ref", root / "cache-ref")
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    return root, json.loads((root / "ref" / "results.json").read_text())


@pytest.mark.parametrize("where", ["source", "runs/1x/ligo/trained"])
def test_sigterm_stops_bench_and_resume_matches_an_uninterrupted_run(where, reference, tmp_path):
    root, ref = reference
    out = tmp_path / "out"
    proc = _bench(root / "exp.yaml", out, tmp_path / "cache")
    assert wait_for(lambda: _lines(out / where / "log.jsonl") >= 5, proc), proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    line = err.strip().splitlines()[-1]
    assert proc.returncode == 143, err
    assert line.startswith(f"ligo bench: preempted at {out / where} step "), err
    assert line.endswith(f"continue with: ligo bench {root / 'exp.yaml'} --out {out} --no-progress --resume"), err
    assert sorted((out / where / "checkpoints").glob("step-*")), "the run in progress is checkpointed"
    assert not (out / "results.json").exists()  # stopped at once: no report from half the runs
    run_cli("bench", root / "exp.yaml", "--out", out, "--no-progress", "--resume", check=True,
                      env=dict(os.environ, LIGO_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1"))
    report = json.loads((out / "results.json").read_text())
    assert _stable(report["budgets"]) == _stable(ref["budgets"])
    assert report["source"] == ref["source"]


def test_ctrl_c_checkpoints_and_resumes_to_the_same_curve(sources, corpus, tmp_path):
    """Ctrl-C (SIGINT) in `ligo train` does what SIGTERM does; the run then resumes to the same curve."""
    out = tmp_path / "run"
    args = ["train", sources["llama"], "--data", corpus, "--out", out, "--steps", "60", "--seq-len", "32",
            "--batch-size", "4", "--eval-every", "20", "--eval-batches", "1", "--log-every", "1", "--no-progress"]
    proc = start_cli(*args)
    assert wait_for(lambda: _lines(out / "log.jsonl") >= 5, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143 and "ligo train: preempted at" in err, err
    run_cli(*args, "--resume", check=True)
    ref = tmp_path / "ref"
    run_cli(*[ref if a == out else a for a in args], check=True)
    losses = [[json.loads(line)["loss"] for line in (d / "log.jsonl").read_text().splitlines()] for d in (out, ref)]
    assert losses[0] == losses[1]


def test_sigterm_stops_grow_train_and_resume_finishes_it(sources, corpus, tmp_path):
    job = tmp_path / "job"
    args = ["grow-train", str(sources["llama"]), "--target", '{"hidden": 128}', "--data", str(corpus), "--out",
            str(job), "--steps", "60", "--seq-len", "32", "--batch-size", "4", "--eval-every", "20", "--eval-batches",
            "1", "--log-every", "1", "--no-progress"]
    proc = start_cli(*args)
    assert wait_for(lambda: _lines(job / "trained" / "log.jsonl") >= 5, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith(f"ligo grow-train: preempted at {job / 'trained'} step "), err
    assert (job / "grown" / "config.json").exists() and sorted((job / "trained" / "checkpoints").glob("step-*"))
    run_cli(*args, "--resume", check=True)
    assert (job / "trained" / "config.json").exists()
