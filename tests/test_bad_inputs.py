"""Bad input: one clear line naming the problem and the fix, exit status 2, no traceback, nothing left behind.

The matrices call the CLI's ``main`` in-process (the console script's own code, without an interpreter
start per case); ``test_bad_input_through_the_console_script`` runs a sample through the real script.
"""

import json
import shutil

import pytest
import torch

import tiny
from conftest import assert_one_line_error, run_cli, write_json

GOOD_LLAMA = tiny.TARGET["llama"]
FAST = ["--seq-len", "32", "--batch-size", "4", "--eval-batches", "1", "--no-progress"]


def _copy_source(sources, tmp_path, model_type="llama"):
    dst = tmp_path / "src"
    shutil.copytree(sources[model_type], dst)
    return dst


def _target(tmp_path, data):
    return write_json(tmp_path / "target.json", data)


def _edit_config(src, **changes):
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(changes)
    (src / "config.json").write_text(json.dumps(cfg))
    return src


def _with_nan(sources, tmp_path):
    from safetensors.torch import load_file, save_file

    src = _copy_source(sources, tmp_path)
    state = load_file(src / "model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})
    return src


def _short_text(tmp_path):
    (tmp_path / "short.txt").write_text("def f(): pass\n")
    return tmp_path / "short.txt"


def _binary(tmp_path):
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01\x02" * 100)
    return tmp_path / "blob.txt"


# (name) -> (args without --out, expected message). Every case gets "--out OUT" appended.
GROW = {
    "missing dir": lambda s, t: (["grow", t / "nope", "--target", _target(t, GOOD_LLAMA)], "does not exist"),
    "no config": lambda s, t: (["grow", (_copy_source(s, t) / "config.json").unlink() or t / "src", "--target",
                                _target(t, GOOD_LLAMA)], "config.json"),
    "bad json config": lambda s, t: (["grow", (_copy_source(s, t) / "config.json").write_text("{not json") and t / "src",
                                      "--target", _target(t, GOOD_LLAMA)], "not valid JSON"),
    "truncated safetensors": lambda s, t: (["grow", _truncate(_copy_source(s, t)), "--target", _target(t, GOOD_LLAMA)],
                                           "truncated or corrupt"),
    "garbage safetensors": lambda s, t: (["grow", _garbage(_copy_source(s, t)), "--target", _target(t, GOOD_LLAMA)],
                                         "truncated or corrupt"),
    "pickle only": lambda s, t: (["grow", _pickle_only(s, t), "--target", _target(t, GOOD_LLAMA)], "never unpickles"),
    "unknown model type": lambda s, t: (["grow", _edit_config(_copy_source(s, t), model_type="t5"), "--target",
                                         _target(t, GOOD_LLAMA)], "'t5' is not supported.*architectures.md"),
    "config size of the wrong type": lambda s, t: (["grow", _edit_config(_copy_source(s, t), hidden_size="64"),
                                                    "--target", _target(t, GOOD_LLAMA)], "hidden_size must be a positive"),
    "weights not matching the config": lambda s, t: (["grow", _edit_config(_copy_source(s, t), intermediate_size=100),
                                                      "--target", _target(t, {"num_hidden_layers": 4})],
                                                     "do not match the config"),
    "NaN in the source weights": lambda s, t: (["grow", _with_nan(s, t), "--target", _target(t, GOOD_LLAMA)],
                                               r"up_proj.weight .* holds 1 NaN/inf"),
    "source is a file": lambda s, t: (["grow", s["llama"] / "config.json", "--target", _target(t, GOOD_LLAMA)],
                                      "not a directory"),
    "target of another type": lambda s, t: (["grow", s["llama"], "--target", _target(t, {"model_type": "gpt2"})],
                                            "differs from the source"),
    "target smaller": lambda s, t: (["grow", s["llama"], "--target", _target(t, {"hidden_size": 32, "heads": 2,
                                                                                 "kv_heads": 1})], "smaller than"),
    "fewer layers": lambda s, t: (["grow", s["gpt2"], "--target", _target(t, {"n_layer": 1})], "smaller than"),
    "head_dim change with rope": lambda s, t: (["grow", s["llama"], "--target", _target(t, {"hidden_size": 128,
                                                                                           "head_dim": 32})],
                                               "head_dim would change.*rotary"),
    "heads not dividing hidden": lambda s, t: (["grow", s["gpt2"], "--target", _target(t, {"n_embd": 64, "n_head": 5})],
                                               "not divisible"),
    "kv heads not dividing heads": lambda s, t: (["grow", s["llama"], "--target", _target(
        t, {"num_attention_heads": 4, "num_key_value_heads": 3})], "do not divide"),
    "vocab change": lambda s, t: (["grow", s["llama"], "--target", _target(t, {"vocab_size": 1000})], "vocab"),
    "unknown target keys": lambda s, t: (["grow", s["llama"], "--target", '{"hiden": 128, "layerz": 4}'],
                                         r"unknown target key\(s\) 'hiden' \(did you mean 'hidden'"),
    "target key of another family": lambda s, t: (["grow", s["llama"], "--target", '{"intermediate": 256}'],
                                                  "did you mean 'intermediate_size'"),
    "target size of the wrong type": lambda s, t: (["grow", s["llama"], "--target", '{"hidden": "128"}'],
                                                   "hidden_size must be a positive integer, got '128'"),
    "target size a float": lambda s, t: (["grow", s["llama"], "--target", '{"layers": 4.5}'],
                                         "num_hidden_layers must be a positive integer"),
    "target far too large": lambda s, t: (["grow", s["llama"], "--target", '{"hidden": 4000000, "heads": 250000, '
                                           '"kv_heads": 125000, "ffn": 8000000}'], "GB of memory available"),
    "target not json": lambda s, t: (["grow", s["llama"], "--target", "{hidden: 3"], "not valid JSON"),
    "missing target file": lambda s, t: (["grow", s["llama"], "--target", t / "missing.json"], "not found"),
    "garbage max shard size": lambda s, t: (["grow", s["llama"], "--target", _target(t, GOOD_LLAMA),
                                             "--max-shard-size", "lots"], "is not a size"),
    "missing data": lambda s, t: (["grow", s["llama"], "--target", _target(t, GOOD_LLAMA), "--fit-steps", "5",
                                   "--data", t / "nodata.txt"], "does not exist"),
    "empty data": lambda s, t: (["grow", s["llama"], "--target", _target(t, GOOD_LLAMA), "--fit-steps", "5", "--data",
                                 (t / "empty.txt").write_text("   \n") and t / "empty.txt"], "holds no text"),
    "binary data": lambda s, t: (["grow", s["llama"], "--target", _target(t, GOOD_LLAMA), "--fit-steps", "5",
                                  "--data", _binary(t)], "binary"),
    "data shorter than a block": lambda s, t: (["grow", s["llama"], "--target", _target(t, GOOD_LLAMA), "--fit-steps",
                                                "5", "--data", _short_text(t)], "fewer than"),
    "negative fit steps": lambda s, t: (["grow", s["llama"], "--target", _target(t, GOOD_LLAMA), "--fit-steps", "-3"],
                                        "fit steps must be a non-negative"),
    "fit steps not a number": lambda s, t: (["grow", s["llama"], "--target", _target(t, GOOD_LLAMA), "--fit-steps",
                                             "ten"], "fit_steps|steps must be int"),
    "bad width choice": lambda s, t: (["grow", s["llama"], "--target", _target(t, GOOD_LLAMA), "--width", "wide"],
                                      "invalid choice"),
}


def _truncate(src):
    f = src / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return src


def _garbage(src):
    (src / "model.safetensors").write_bytes(b"\xff" * 64)
    return src


def _pickle_only(sources, tmp_path):
    d = tmp_path / "pickled"
    shutil.copytree(sources["llama"], d)
    (d / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, d / "pytorch_model.bin")
    return d


def _recipe(tmp_path, sources, corpus, **over):
    r = {"source": str(sources["llama"]), "target": tiny.TARGET["llama"], "data": str(corpus), "seq_len": 32,
         "batch_size": 4, "fit": {"steps": 2, "warmup": 1}, "train": {"steps": 2, "eval_every": 0, "eval_batches": 1}}
    r.update(over)
    return write_json(tmp_path / "recipe.json", r)


TRAIN = {
    "train: missing model dir": lambda s, c, t: (["train", t / "nope", "--data", c], "does not exist"),
    "train: zero steps": lambda s, c, t: (["train", s["llama"], "--data", c, "--steps", "0"], "steps must be at least 1"),
    "train: negative steps": lambda s, c, t: (["train", s["llama"], "--data", c, "--steps", "-5"], "steps must be"),
    "train: steps not a number": lambda s, c, t: (["train", s["llama"], "--data", c, "--steps", "ten"],
                                                  "steps must be int"),
    "train: tracker not installed": lambda s, c, t: (["train", s["llama"], "--data", c, "--steps", "1", "--trackers",
                                                      "dvclive"], "not installed"),
    "train: bad schedule": lambda s, c, t: (["train", s["llama"], "--data", c, "--schedule", "zigzag"], "schedule"),
    "train: from-config without tokenizer": lambda s, c, t: (
        ["train", "--from-config", s["llama"] / "config.json", "--data", c], "--tokenizer"),
    "train: mistyped tokenizer dir": lambda s, c, t: (["train", s["llama"], "--tokenizer", t / "tokenizr", "--data", c],
                                                      "tokenizer directory .* does not exist.*never looks"),
    "train: seq_len beyond positions": lambda s, c, t: (["train", s["gpt2"], "--data", c, "--seq-len", "4096"],
                                                        "exceeds the model"),
    "train: empty data dir": lambda s, c, t: (["train", s["llama"], "--data", (t / "e").mkdir() or t / "e"],
                                              "holds no text"),
    "train: data shorter than a block": lambda s, c, t: (["train", s["llama"], "--data", _short_text(t)], "fewer than"),
    "train: resume without a checkpoint": lambda s, c, t: (["train", s["llama"], "--data", c, "--resume"],
                                                           "no complete checkpoint"),
    "train: pickle-only model": lambda s, c, t: (["train", _pickle_only(s, t), "--data", c], "never unpickles"),
    "train: NaN in the model": lambda s, c, t: (["train", _with_nan(s, t), "--data", c], "NaN/inf"),
    "train: out is the model": lambda s, c, t: (["train", s["llama"], "--data", c, "--out", s["llama"], "--overwrite"],
                                                "is \\(or holds\\) the input"),
    "train: out is a file": lambda s, c, t: (["train", s["llama"], "--data", c, "--out",
                                              (t / "f.txt").write_text("x") and t / "f.txt"], "not a directory"),
    "grow-train: recipe with an unknown key": lambda s, c, t: (["grow-train", "--config", _recipe(t, s, c, stepz=3)],
                                                               "unknown key.*stepz"),
    "grow-train: recipe with a wrong type": lambda s, c, t: (
        ["grow-train", "--config", _recipe(t, s, c, train={"steps": "ten"})], "steps must be int"),
    "grow-train: unknown training key": lambda s, c, t: (
        ["grow-train", "--config", _recipe(t, s, c, train={"lr_peak": 1})], "unknown key.*lr_peak"),
    "grow-train: recipe not parseable": lambda s, c, t: (
        ["grow-train", "--config", (t / "r.yaml").write_text("a: [") and t / "r.yaml"], "cannot be parsed"),
    "grow-train: missing recipe": lambda s, c, t: (["grow-train", "--config", t / "none.yaml"], "does not exist"),
    "grow-train: no target": lambda s, c, t: (["grow-train", s["llama"], "--data", c], "no target"),
    "grow-train: negative fit steps": lambda s, c, t: (
        ["grow-train", "--config", _recipe(t, s, c, fit={"steps": -1})], "fit steps"),
    "grow-train: zero train steps": lambda s, c, t: (
        ["grow-train", "--config", _recipe(t, s, c, train={"steps": 0})], "steps must be"),
    "grow-train: target smaller": lambda s, c, t: (
        ["grow-train", "--config", _recipe(t, s, c, target={"hidden_size": 32})], "smaller than"),
    "grow-train: unknown target key": lambda s, c, t: (
        ["grow-train", "--config", _recipe(t, s, c, target={"hiden": 128})], "unknown target key"),
    "grow-train: binary data": lambda s, c, t: (
        ["grow-train", "--config", _recipe(t, s, c, data=str(_binary(t)))], "binary"),
    "grow-train: data shorter than a block": lambda s, c, t: (
        ["grow-train", "--config", _recipe(t, s, c, data=str(_short_text(t)))], "fewer than"),
    "bench: missing experiment": lambda s, c, t: (["bench", t / "nope.yaml"], "not found"),
    "bench: unknown experiment key": lambda s, c, t: (
        ["bench", (t / "x.yaml").write_text("name: x\nmodel_type: llama\nstepz: 3\nmethods: {scratch: {}}\n")
         and t / "x.yaml"], "unknown key"),
    "bench: unknown model type": lambda s, c, t: (
        ["bench", (t / "x.yaml").write_text("name: x\nmodel_type: t5\nsource: {config: {}}\ntarget: {}\n"
                                             "train: {steps: 1}\nmethods: {scratch: {}}\n") and t / "x.yaml"],
        "'t5' is not supported"),
}


@pytest.mark.parametrize("name", sorted(GROW))
def test_grow_bad_input(name, sources, tmp_path, cli):
    args, message = GROW[name](sources, tmp_path)
    out = tmp_path / "out"
    assert_one_line_error(cli(*args, "--out", out), "grow", message)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


@pytest.mark.parametrize("name", sorted(TRAIN))
def test_train_grow_train_and_bench_bad_input(name, sources, corpus, tmp_path, cli):
    args, message = TRAIN[name](sources, corpus, tmp_path)
    out = tmp_path / "out"
    if "--out" not in args:
        args = [*args, "--out", out]
    extra = [] if name.startswith("bench") else FAST  # before the case's own flags, which win
    assert_one_line_error(cli(args[0], *extra, *args[1:]), name.split(":")[0], message)
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))


@pytest.mark.parametrize("name", ["unknown target keys", "truncated safetensors", "missing data"])
def test_bad_input_through_the_console_script(name, sources, tmp_path):
    args, message = GROW[name](sources, tmp_path)
    assert_one_line_error(run_cli(*args, "--out", tmp_path / "out"), "grow", message)
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path, cli):
    proc = cli("grow", tmp_path / "nope", "--target", _target(tmp_path, GOOD_LLAMA), "--out", tmp_path / "o", "--debug")
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_api_errors_are_ligo_errors(sources):
    from ligo import Grower, TrainConfig
    from ligo.errors import LigoError

    with pytest.raises(LigoError, match="smaller than"):
        Grower(sources["llama"], {"num_hidden_layers": 1})
    with pytest.raises(LigoError, match="steps must be"):
        TrainConfig(steps=0)
    with pytest.raises(LigoError, match="unknown key"):
        TrainConfig.from_dict({"step": 3})
    with pytest.raises(LigoError, match="width must be one of auto, split, copy, random"):
        from ligo import GrowthPlan

        GrowthPlan(width="wide")
