"""Bad input: one clear line naming the problem and the fix, a non-zero exit, no traceback, nothing left behind."""

import json
import shutil

import pytest

import tiny
from conftest import run_cli, write_json


def _copy_source(sources, tmp_path, model_type="llama"):
    dst = tmp_path / "src"
    shutil.copytree(sources[model_type], dst)
    return dst


def _target(tmp_path, data):
    return write_json(tmp_path / "target.json", data)


GOOD_LLAMA = tiny.TARGET["llama"]


def case_missing_dir(sources, tmp_path):
    return ["grow", tmp_path / "nope", "--target", _target(tmp_path, GOOD_LLAMA)], "does not exist"


def case_no_config(sources, tmp_path):
    src = _copy_source(sources, tmp_path)
    (src / "config.json").unlink()
    return ["grow", src, "--target", _target(tmp_path, GOOD_LLAMA)], "config.json"


def case_bad_json_config(sources, tmp_path):
    src = _copy_source(sources, tmp_path)
    (src / "config.json").write_text("{not json")
    return ["grow", src, "--target", _target(tmp_path, GOOD_LLAMA)], "not valid JSON"


def case_corrupt_safetensors(sources, tmp_path):
    src = _copy_source(sources, tmp_path)
    f = src / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return ["grow", src, "--target", _target(tmp_path, GOOD_LLAMA)], "truncated or corrupt"


def case_garbage_safetensors(sources, tmp_path):
    src = _copy_source(sources, tmp_path)
    (src / "model.safetensors").write_bytes(b"\xff" * 64)
    return ["grow", src, "--target", _target(tmp_path, GOOD_LLAMA)], "truncated or corrupt"


def case_pickle_only(sources, tmp_path):
    src = _copy_source(sources, tmp_path)
    (src / "model.safetensors").unlink()
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    return ["grow", src, "--target", _target(tmp_path, GOOD_LLAMA)], "never unpickles"


def case_unknown_model_type(sources, tmp_path):
    src = _copy_source(sources, tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "t5"
    (src / "config.json").write_text(json.dumps(cfg))
    return ["grow", src, "--target", _target(tmp_path, GOOD_LLAMA)], "'t5' is not supported.*architectures.md"


def case_target_other_type(sources, tmp_path):
    return ["grow", sources["llama"], "--target", _target(tmp_path, {"model_type": "gpt2", "n_embd": 64})], \
        "differs from the source"


def case_target_smaller(sources, tmp_path):
    return ["grow", sources["llama"], "--target", _target(tmp_path, {"hidden_size": 32, "num_attention_heads": 2,
                                                                    "num_key_value_heads": 1})], "smaller than"


def case_fewer_layers(sources, tmp_path):
    return ["grow", sources["gpt2"], "--target", _target(tmp_path, {"n_layer": 1})], "smaller than"


def case_head_dim_change_rope(sources, tmp_path):
    return ["grow", sources["llama"], "--target", _target(tmp_path, {"hidden_size": 128, "head_dim": 32})], \
        "head_dim would change.*rotary"


def case_heads_not_divisible(sources, tmp_path):
    return ["grow", sources["gpt2"], "--target", _target(tmp_path, {"n_embd": 64, "n_head": 5})], "not divisible"


def case_kv_not_dividing(sources, tmp_path):
    return ["grow", sources["llama"], "--target", _target(tmp_path, {"num_attention_heads": 4, "num_key_value_heads": 3})], \
        "do not divide"


def case_vocab_change(sources, tmp_path):
    return ["grow", sources["llama"], "--target", _target(tmp_path, {"vocab_size": 1000})], "vocab"


def case_missing_data(sources, tmp_path):
    return ["grow", sources["llama"], "--target", _target(tmp_path, GOOD_LLAMA), "--fit-steps", "5", "--data",
            tmp_path / "nodata.txt"], "does not exist"


def case_empty_data(sources, tmp_path):
    (tmp_path / "empty.txt").write_text("   \n")
    return ["grow", sources["llama"], "--target", _target(tmp_path, GOOD_LLAMA), "--fit-steps", "5", "--data",
            tmp_path / "empty.txt"], "holds no text"


def case_binary_data(sources, tmp_path):
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01\x02" * 100)
    return ["grow", sources["llama"], "--target", _target(tmp_path, GOOD_LLAMA), "--fit-steps", "5", "--data",
            tmp_path / "blob.txt"], "binary"


def case_data_shorter_than_a_block(sources, tmp_path):
    (tmp_path / "short.txt").write_text("def f(): pass\n")
    return ["grow", sources["llama"], "--target", _target(tmp_path, GOOD_LLAMA), "--fit-steps", "5", "--data",
            tmp_path / "short.txt"], "fewer than"


def case_negative_steps(sources, tmp_path):
    return ["grow", sources["llama"], "--target", _target(tmp_path, GOOD_LLAMA), "--fit-steps", "-3"], "fit-steps"


def case_target_not_json(sources, tmp_path):
    return ["grow", sources["llama"], "--target", "{hidden: 3"], "not valid JSON"


def case_missing_target_file(sources, tmp_path):
    return ["grow", sources["llama"], "--target", tmp_path / "missing.json"], "not found"


def case_source_is_a_file(sources, tmp_path):
    return ["grow", sources["llama"] / "config.json", "--target", _target(tmp_path, GOOD_LLAMA)], "not a directory"


def case_mismatched_weights(sources, tmp_path):
    src = _copy_source(sources, tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg["intermediate_size"] = 100
    (src / "config.json").write_text(json.dumps(cfg))
    return ["grow", src, "--target", _target(tmp_path, {"num_hidden_layers": 4})], "do not match the config"


CASES = {name[5:]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_grow_bad_input(name, sources, tmp_path):
    args, message = CASES[name](sources, tmp_path)
    out = tmp_path / "out"
    proc = run_cli(*args, "--out", out)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ligo grow: error:"), lines[0]
    assert "Traceback" not in proc.stderr
    import re

    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_existing_output_is_refused_unless_overwrite(sources, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    target = _target(tmp_path, GOOD_LLAMA)
    proc = run_cli("grow", sources["llama"], "--target", target, "--out", out)
    assert proc.returncode != 0 and "--overwrite" in proc.stderr and (out / "keep.txt").exists()
    run_cli("grow", sources["llama"], "--target", target, "--out", out, "--overwrite", check=True)
    assert (out / "config.json").exists() and not (out / "keep.txt").exists()


def test_unwritable_output(sources, tmp_path):
    import os

    if os.geteuid() == 0:
        target = "/proc/ligo-out"  # root may write anywhere else
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "out"
    proc = run_cli("grow", sources["llama"], "--target", _target(tmp_path, GOOD_LLAMA), "--out", target)
    assert proc.returncode != 0 and "cannot write" in proc.stderr and "Traceback" not in proc.stderr


def test_debug_shows_the_traceback(sources, tmp_path):
    proc = run_cli("grow", tmp_path / "nope", "--target", _target(tmp_path, GOOD_LLAMA), "--out", tmp_path / "o",
                   "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr
