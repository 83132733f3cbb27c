"""Inputs, outputs and signals: an --overwrite that never deletes an input inside --out, resume lines that work,
special files refused before they are opened, tokenizers and vocabularies that disagree, cards and recipes without
the machine's folders, SIGTERM in long phases outside training; each with a real file, signal or second process
(first met in issue 35's round)."""

import json
import os
import shlex
import signal
from pathlib import Path

import pytest
import torch

import tiny
from conftest import assert_one_line_error, run_cli, start_cli, wait_for

QUICK = ["--steps", "2", "--batch-size", "2", "--seq-len", "16", "--eval-batches", "1", "--no-progress"]


def _lines(path) -> int:
    try:
        return len(Path(path).read_text().splitlines())
    except OSError:
        return 0


# -- 1. --overwrite never deletes an input that lives inside --out ------------------------------------------------
BENCH = """\
name: inside
model_type: llama
seq_len: 16
batch_size: 2
lr_sweep: [1]
unit_report: false
source: {path: SOURCE}
target: {num_hidden_layers: 3}
train: {steps: 2, lr: 0.001, warmup: 1, eval_every: 1, eval_batches: 1}
methods: {scratch: {}, grown: {}}
"""


@pytest.mark.parametrize("inside", ["source", "data", "experiment"])
def test_bench_overwrite_never_deletes_its_inputs(inside, sources, corpus, tmp_path, cli):
    import shutil

    out = tmp_path / "V"
    out.mkdir()
    src = shutil.copytree(sources["llama"], out / "k01") if inside == "source" else sources["llama"]
    data = shutil.copy(next(corpus.iterdir()), out / "corpus.py") if inside == "data" else corpus
    exp = (out if inside == "experiment" else tmp_path) / "exp.yaml"
    exp.write_text(BENCH.replace("SOURCE", str(src)) + f"data: {data}\n")
    before = sorted(p.name for p in out.iterdir())
    proc = cli("bench", exp, "--out", out, "--overwrite", "--no-progress")
    assert_one_line_error(proc, "bench", "is \\(or holds\\) the input")
    assert sorted(p.name for p in out.iterdir()) == before


def test_grow_train_overwrite_never_deletes_its_recipe(sources, corpus, tmp_path, cli):
    job = tmp_path / "J"
    job.mkdir()
    (job / "recipe.yaml").write_text(f"source: {sources['llama']}\ntarget: {{hidden: 128}}\nout: {job}\n"
                                     f"data: {corpus}\n")
    proc = cli("grow-train", "--config", job / "recipe.yaml", "--overwrite", *QUICK)
    assert_one_line_error(proc, "grow-train", "is \\(or holds\\) the input")
    assert (job / "recipe.yaml").exists()


def test_train_overwrite_never_deletes_its_stages_file(sources, corpus, tmp_path, cli):
    run = tmp_path / "R"
    run.mkdir()
    (run / "stages.yaml").write_text("- {at: 1, target: {hidden: 128}}\n")
    proc = cli("train", sources["llama"], "--data", corpus, "--out", run, "--overwrite", "--stages",
               run / "stages.yaml", *QUICK)
    assert_one_line_error(proc, "train", "is \\(or holds\\) the input")
    assert (run / "stages.yaml").exists()


# -- 2. the resume line that a preempted grow-train prints works as printed -----------------------------------------
def test_the_printed_resume_line_of_grow_train_with_a_target_file_works(sources, corpus, tmp_path):
    (tmp_path / "target128.json").write_text(json.dumps({"hidden": 128, "heads": 8, "kv_heads": 4}))
    job = tmp_path / "J"
    args = ["grow-train", sources["llama"], "--target", tmp_path / "target128.json", "--data", corpus, "--out", job,
            "--steps", "60", "--seq-len", "32", "--batch-size", "4", "--eval-every", "20", "--eval-batches", "1",
            "--log-every", "1", "--no-progress"]
    proc = start_cli(*args)
    assert wait_for(lambda: _lines(job / "trained" / "log.jsonl") >= 5, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    line = err.strip().splitlines()[-1].split("continue with: ", 1)[1]
    resumed = run_cli(*shlex.split(line)[1:])
    assert resumed.returncode == 0, resumed.stderr
    assert (job / "trained" / "config.json").exists()


# -- 3. a config that says tied while the file holds its own head: grown as transformers runs it ------------------
def _tied_with_own_head(path: Path, tokenizer, same: bool) -> Path:
    from safetensors.torch import load_file, save_file

    tiny.save_model(tiny.make_model("llama", tie_word_embeddings=True), path, tokenizer)
    state = load_file(path / "model.safetensors")
    emb = state["model.embed_tokens.weight"]
    state["lm_head.weight"] = emb.clone() if same else torch.randn_like(emb, generator=None)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    return path


@pytest.mark.parametrize("same", [False, True])
def test_a_tied_config_with_a_stored_head_grows_as_transformers_runs_it(same, tokenizer, blocks, tmp_path, cli):
    src = _tied_with_own_head(tmp_path / "src", tokenizer, same)
    cli("grow", src, "--target", json.dumps(tiny.TARGET["llama"]), "--out", tmp_path / "out", "--width", "split",
        "--depth", "identity", check=True)
    diff, model = tiny.max_logit_diff(src, tmp_path / "out", blocks.val[:2])
    assert diff <= 1e-4
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is same


# -- 4. a pretrained source changed between `ligo bench` and --resume is refused -----------------------------------
def test_bench_resume_refuses_a_changed_source(sources, corpus, tmp_path, cli):
    import shutil

    src = shutil.copytree(sources["llama"], tmp_path / "k01")
    (tmp_path / "exp.yaml").write_text(BENCH.replace("SOURCE", str(src)) + f"data: {corpus}\n")
    out = tmp_path / "V"
    cli("bench", tmp_path / "exp.yaml", "--out", out, "--no-progress", check=True)
    (out / "runs" / "1x" / "grown" / "result.json").unlink()  # as if the run had been killed
    tiny.save_model(tiny.make_model("llama", seed=5), src)  # another model in the same folder
    proc = cli("bench", tmp_path / "exp.yaml", "--out", out, "--no-progress", "--resume")
    assert_one_line_error(proc, "bench", "the source checkpoint .*k01 changed since")
    assert not (out / "runs" / "1x" / "grown" / "result.json").exists()


# -- 5. cards and recipes name the data and the source, never the machine's folders ---------------------------------
def test_cards_and_recipes_never_hold_the_machines_folders(sources, corpus, tmp_path, cli):
    data = tmp_path / "deep" / "folder" / "corpus.py"
    data.parent.mkdir(parents=True)
    data.write_text(next(corpus.iterdir()).read_text())
    cli("train", sources["llama"], "--data", data, "--out", tmp_path / "run", "--save-every", "1", *QUICK, check=True)
    cli("grow", sources["llama"], "--target", '{"hidden": 128}', "--out", tmp_path / "fit", "--data", data,
        "--fit-steps", "1", "--fit-eval-every", "1", "--seq-len", "16", "--batch-size", "2", "--no-progress",
        check=True)
    cli("grow-train", sources["llama"], "--target", '{"hidden": 128}', "--data", data, "--out", tmp_path / "gt",
        *QUICK, check=True)
    cli("grow", tmp_path / "run", "--optimizer-state", "grow", "--target", '{"hidden": 128}', "--out",
        tmp_path / "grown-run", check=True)
    written = [tmp_path / "run", tmp_path / "fit", tmp_path / "gt" / "grown", tmp_path / "gt" / "trained",
               tmp_path / "grown-run" / "model"]
    for folder in written:
        for name in ("README.md", "ligo_recipe.json"):
            text = (folder / name).read_text()
            assert str(tmp_path) not in text and "step-0" not in text, (folder, name)
    assert "Data: `corpus.py`" in (tmp_path / "run" / "README.md").read_text()
    assert json.loads((tmp_path / "fit" / "ligo_recipe.json").read_text())["fit"]["data"] == "corpus.py"
    assert "base_model: llama" in (tmp_path / "grown-run" / "model" / "README.md").read_text()


# -- 7. a tokenizer larger than the model's vocabulary: one line wherever it is used -------------------------------
@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("small-vocab") / "src"
    return tiny.save_model(tiny.make_model("llama", vocab_size=200), path, tokenizer)


@pytest.mark.parametrize("extra", [[], ["--fit-steps", "1", "--seq-len", "16", "--batch-size", "2"]])
def test_a_tokenizer_larger_than_the_vocabulary_is_one_line_in_grow(extra, small_vocab, corpus, tmp_path, cli):
    proc = cli("grow", small_vocab, "--target", '{"hidden": 128}', "--data", corpus, "--out", tmp_path / "g",
               "--no-progress", *extra)
    assert_one_line_error(proc, "grow", "has 384 tokens but the model's vocab_size is 200")
    assert not (tmp_path / "g").exists()


def test_a_tokenizer_larger_than_the_vocabulary_is_one_line_in_bench(small_vocab, corpus, tmp_path, cli):
    (tmp_path / "exp.yaml").write_text(BENCH.replace("SOURCE", str(small_vocab)) + f"data: {corpus}\n")
    proc = cli("bench", tmp_path / "exp.yaml", "--out", tmp_path / "V", "--no-progress")
    assert_one_line_error(proc, "bench", "has 384 tokens but the model's vocab_size is 200")
    assert not (tmp_path / "V").exists()


# -- 10. a FIFO where a file should be is refused before it is opened ----------------------------------------------
@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json"])
def test_a_fifo_in_the_source_is_refused_before_it_is_opened(name, sources, tmp_path):
    import shutil

    src = shutil.copytree(sources["llama"], tmp_path / "src")
    (src / name).unlink()
    os.mkfifo(src / name)
    proc = start_cli("grow", src, "--target", '{"hidden": 128}', "--out", tmp_path / "g")
    try:
        _, err = proc.communicate(timeout=120)  # a blocking open() would never return (the test would time out)
    finally:
        proc.kill()
    assert proc.returncode == 2 and err.strip() == f"ligo grow: error: {src / name} is a FIFO, not a regular file; " \
        "ligo reads models and data from regular files only, so replace it with the file itself", err


# -- 12, 13. live growth into experts refused before step 0; --arch messages say what is wrong -----------------------
def test_growing_a_run_into_experts_is_refused_before_any_step(sources, corpus, tmp_path, cli):
    proc = cli("train", sources["llama"], "--data", corpus, "--out", tmp_path / "r", "--grow-at", "1",
               "--grow-target", '{"experts": 4, "experts_per_token": 2}', *QUICK)
    assert_one_line_error(proc, "train", "growing a live run of a mixture of experts, or into one, is not supported")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("arch, message", [
    ("bert", "--arch bert: the bert table \\(ligo/archs/bert.json\\) does not fit this llama checkpoint: weight "
             "'lm_head.weight' matches no entry of the 'bert' table \\(ligo/archs/bert.json\\); give the table that "
             "describes it"),
    ("nosuch", "--arch nosuch: there is no architecture table for 'nosuch'"),
])
def test_arch_errors_name_the_table(arch, message, sources, tmp_path, cli):
    proc = cli("grow", sources["llama"], "--arch", arch, "--target", '{"hidden": 128}', "--out", tmp_path / "g")
    assert_one_line_error(proc, "grow", message)


def test_an_experts_shrink_names_one_config_key(tmp_path, tokenizer, cli):
    src = tiny.save_model(tiny.make_model("mixtral"), tmp_path / "moe", tokenizer)
    proc = cli("grow", src, "--target", '{"experts": 2}', "--out", tmp_path / "g")
    assert_one_line_error(proc, "grow", "target num_local_experts=2 is smaller than the source's 4")


# -- 14. the start check reads --seq-len; --check-blocks without --data; vocab_size with a pretrained source ---------
def test_the_start_check_uses_seq_len_and_needs_data(sources, corpus, tmp_path, cli):
    cli("grow", sources["llama"], "--target", '{"hidden": 128}', "--data", corpus, "--seq-len", "24",
        "--check-blocks", "3", "--out", tmp_path / "g", check=True)
    check = json.loads((tmp_path / "g" / "ligo_recipe.json").read_text())["start_check"]
    assert check["tokens"] == 3 * 24
    proc = cli("grow", sources["llama"], "--target", '{"hidden": 128}', "--check-blocks", "5", "--out", tmp_path / "h")
    assert_one_line_error(proc, "grow", "--check-blocks measures the grown model's start loss on held-out blocks of "
                                        "--data")


def test_vocab_size_with_a_pretrained_source_is_refused(sources, corpus, tmp_path, cli):
    (tmp_path / "exp.yaml").write_text(BENCH.replace("SOURCE", str(sources["llama"])) + f"data: {corpus}\n"
                                       "vocab_size: 512\n")
    proc = cli("bench", tmp_path / "exp.yaml", "--out", tmp_path / "V")
    assert_one_line_error(proc, "bench", "vocab_size is the size of the tokenizer ligo trains")


def test_the_source_counted_column_is_empty_for_a_pretrained_source(sources, corpus, tmp_path, cli):
    (tmp_path / "exp.yaml").write_text(BENCH.replace("SOURCE", str(sources["llama"])) + f"data: {corpus}\n")
    cli("bench", tmp_path / "exp.yaml", "--out", tmp_path / "V", "--no-progress", check=True)
    rows = [line for line in (tmp_path / "V" / "table.md").read_text().splitlines() if line.startswith("| grown")]
    assert rows and rows[0].split(" | ")[7] == "—"


# -- 11. SIGTERM in a long phase outside training ends the process at once, says how to continue, leaves nothing ----
@pytest.fixture(scope="module")
def large_source(tmp_path_factory, tokenizer):
    """A 75M-parameter Llama (bf16): growing it to twice the width writes 600 MB, which takes seconds."""
    path = tmp_path_factory.mktemp("large") / "src"
    model = tiny.make_model("llama", hidden_size=768, num_hidden_layers=8, num_attention_heads=12,
                            num_key_value_heads=4, intermediate_size=3072).to(torch.bfloat16)
    return tiny.save_model(model, path, tokenizer)


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_sigterm_while_streaming_a_large_grow_stops_it_and_leaves_nothing(large_source, tmp_path):
    out = tmp_path / "grown"
    proc = start_cli("grow", large_source, "--target", '{"hidden": 1536, "heads": 24, "kv_heads": 8}', "--out", out,
                     "--max-shard-size", "100MB")
    # in the middle of writing: the staging folder holds a shard that is being filled
    assert wait_for(lambda: any(f.stat().st_size for f in tmp_path.glob(".grown.tmp-*/*.safetensors")), proc), \
        proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "ligo grow: terminated", err
    assert not out.exists() and not list(tmp_path.glob(".grown*"))


def test_sigterm_during_an_evaluation_stops_it_and_writes_no_results(large_source, tmp_path):
    task = tiny.make_task(tmp_path / "task", n=200)
    proc = start_cli("eval", large_source, "--tasks", task, "--device", "cpu", "--batch-size", "2", "--json",
                     tmp_path / "scores.json", env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert wait_for(lambda: _cpu_seconds(proc.pid) > 10, proc), proc.communicate()  # loaded, and evaluating
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "ligo eval: terminated" in err, err[-2000:]  # (beside lm-eval's progress bar)
    assert not (tmp_path / "scores.json").exists()


def test_sigterm_while_bench_prepares_a_grown_method_says_how_to_continue(sources, corpus, tmp_path):
    (tmp_path / "exp.yaml").write_text(BENCH.replace("SOURCE", str(sources["llama"])) + f"data: {corpus}\n"
                                       "fit: {steps: 100000, eval_every: 0}\n"
                                       "methods: {scratch: {}, grown: {width: random, depth: stack, fit: true}}\n")
    out = tmp_path / "V"
    proc = start_cli("bench", tmp_path / "exp.yaml", "--out", out, "--no-progress")
    # scratch has finished and the grown method is being fitted (its fit never ends by itself)
    assert wait_for(lambda: (out / "runs" / "1x" / "scratch-lr0.001" / "result.json").exists(), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == (f"ligo bench: terminated; continue with: ligo bench {tmp_path / 'exp.yaml'} "
                                            f"--out {out} --no-progress --resume"), err
    assert (out / "runs" / "1x" / "scratch-lr0.001" / "result.json").exists()


def test_a_finished_bench_run_keeps_no_checkpoints(sources, corpus, tmp_path, cli):
    """Checkpoints are for resuming: a finished method's go (a real-checkpoint benchmark filled a disk with
    them: each holds the optimizer state, twice the model), its result, grown and trained models stay."""
    (tmp_path / "exp.yaml").write_text(BENCH.replace("SOURCE", str(sources["llama"])).replace(
        "eval_batches: 1}", "eval_batches: 1, save_every: 1}") + f"data: {corpus}\n")
    cli("bench", tmp_path / "exp.yaml", "--out", tmp_path / "V", "--no-progress", check=True)
    runs = sorted((tmp_path / "V" / "runs" / "1x").iterdir())
    assert [r.name for r in runs] == ["grown", "scratch-lr0.001"]
    for run in runs:
        assert (run / "result.json").exists() and (run / "trained" / "config.json").exists()
        assert not (run / "trained" / "checkpoints").exists()
