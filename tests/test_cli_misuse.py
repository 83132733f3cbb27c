"""The CLI misused as a new user misuses it (bad data, targets, devices, eval and plan arguments, a second run into one
folder, a failed save): each case one clear line, a non-zero exit and nothing lost (first met in issue 23's round)."""

import json
import math

import pytest

from conftest import assert_one_line_error

QUICK = ["--steps", "2", "--batch-size", "2", "--seq-len", "16", "--eval-batches", "1", "--no-progress"]


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path_factory.mktemp("bad-data")
    (d / "empty.jsonl").write_text("")
    (d / "latin.jsonl").write_bytes(b'{"text": "caf\xe9 ol\xe9, some text to read"}\n')
    (d / "junk.jsonl").write_text("junk {{{ not json\n")
    (d / "numbers.jsonl").write_text('{"text": 5}\n{"text": 7}\n')
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), d / "empty.parquet")
    (d / "a.txt").write_text("some text to train on, the quick brown fox\n" * 200)
    return d


@pytest.mark.parametrize("name, extra, message", [
    ("empty.jsonl", [], "holds no rows"),
    ("empty.jsonl", ["--streaming"], "holds no rows"),
    ("latin.jsonl", [], "is not UTF-8 text"),
    ("junk.jsonl", ["--streaming"], "cannot read .*junk.jsonl: JSON parse error"),
    ("numbers.jsonl", [], "holds no text in its 'text' column; .*--text-column"),
    ("empty.parquet", [], "holds no rows"),
    ("a.txt", ["--data-split", "validation"], "--data-split validation does not apply"),
])
def test_bad_data_is_one_line(name, extra, message, bad_data, sources, tmp_path, cli):
    proc = cli("train", sources["llama"], "--data", bad_data / name, "--out", tmp_path / "r", *QUICK, *extra)
    assert_one_line_error(proc, "train", message)
    assert "Failed to" not in proc.stderr and not (tmp_path / "r").exists()


@pytest.mark.parametrize("target, message", [("[1,2]", "is not a JSON object"), ("", "is empty"),
                                             ("5", "is not a JSON object")])
def test_a_target_that_is_not_an_object(target, message, sources, tmp_path, cli):
    assert_one_line_error(cli("grow", sources["llama"], "--target", target, "--out", tmp_path / "g"), "grow", message)


def test_grow_never_replaces_the_folder_holding_its_target(sources, tmp_path, cli):
    d = tmp_path / "d"
    d.mkdir()
    (d / "target.json").write_text(json.dumps({"hidden_size": 64}))
    proc = cli("grow", sources["llama"], "--target", d / "target.json", "--out", d, "--overwrite")
    assert_one_line_error(proc, "grow")
    assert (d / "target.json").exists()


@pytest.mark.parametrize("device", ["tpu9", "cuda:7", "banana"])
def test_grow_device_is_checked(device, sources, tmp_path, cli):
    import torch

    if torch.cuda.device_count() > 7:
        pytest.skip("a machine with 8 GPUs")
    assert_one_line_error(cli("grow", sources["llama"], "--target", '{"hidden": 64}', "--out", tmp_path / "g",
                              "--device", device), "grow", "device")


@pytest.mark.parametrize("args, message", [
    (["--limit", "-3"], "--limit must be"), (["--limit", "2.5"], "--limit must be"),
    (["--num-fewshot", "-2"], "--num-fewshot must be 0 or more"), (["--batch-size", "0"], "--batch-size"),
    (["--json", "nodir/x.json"], "the folder nodir does not exist"),
])
def test_eval_arguments_are_checked_before_the_evaluation(args, message, sources, cli):
    assert_one_line_error(cli("eval", sources["llama"], "--tasks", "x", *args), "eval", message)


def test_eval_never_overwrites_a_file_it_was_not_told_to(sources, tmp_path, cli):
    config = sources["llama"] / "config.json"
    before = config.read_text()
    assert_one_line_error(cli("eval", sources["llama"], "--tasks", "x", "--json", config), "eval",
                          "inside the model directory")
    (tmp_path / "r.json").write_text("{}")
    assert_one_line_error(cli("eval", sources["llama"], "--tasks", "x", "--json", tmp_path / "r.json"), "eval",
                          "exists; pass --overwrite")
    assert config.read_text() == before and (tmp_path / "r.json").read_text() == "{}"


def test_eval_device_cuda_without_a_gpu(sources, cli):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_one_line_error(cli("eval", sources["llama"], "--tasks", "x", "--device", "cuda"), "eval", "no CUDA GPU")


@pytest.mark.parametrize("flag, value", [("--target-params", "nan"), ("--budget", "inf"),
                                         ("--source-params", "nan"), ("--budget", "-1")])
def test_plan_refuses_numbers_that_are_not(flag, value, tmp_path, cli):
    from test_plan import _report

    (tmp_path / "r.json").write_text(json.dumps(_report()))
    args = {"--target-params": "1e8", "--budget": "1e18", "--source-params": "1e7", flag: value}
    proc = cli("plan", "--results", tmp_path / "r.json", *[x for kv in args.items() for x in kv])
    assert_one_line_error(proc, "plan", f"{flag} must be a positive finite number")


def test_plan_refuses_binary_files_and_diverged_runs(tmp_path, cli):
    from test_plan import _report

    (tmp_path / "bin.json").write_bytes(bytes(range(256)) * 4)
    query = ["--target-params", "1e8", "--budget", "1e18", "--source-params", "1e7"]
    assert_one_line_error(cli("plan", "--results", tmp_path / "bin.json", *query), "plan",
                          "cannot read benchmark results")
    report = _report()
    first = next(iter(report["budgets"][0]["methods"].values()))
    first["curve"][1]["val_loss"] = math.nan
    (tmp_path / "nan.json").write_text(json.dumps(report))
    assert_one_line_error(cli("plan", "--results", tmp_path / "nan.json", *query), "plan", "not a finite number")


def test_grow_train_resume_refuses_a_finished_job_and_changed_settings(sources, corpus, tmp_path, cli):
    job = tmp_path / "job"
    common = [sources["llama"], "--data", corpus, "--out", job, *QUICK, "--warmup", "1"]
    cli("grow-train", *common, "--target", '{"hidden": 64}', check=True)
    trained = (job / "trained" / "model.safetensors").read_bytes()
    assert_one_line_error(cli("grow-train", *common, "--target", '{"hidden": 64}', "--resume"), "grow-train",
                          "has finished")
    assert (job / "trained" / "model.safetensors").read_bytes() == trained
    (job / "trained" / "config.json").unlink()  # as if it had stopped before the end
    assert_one_line_error(cli("grow-train", *common, "--target", '{"hidden": 96}', "--resume"), "grow-train",
                          "other settings \\(target changed\\)")


def test_two_runs_into_one_folder_refuse_the_second(sources, corpus, tmp_path):
    """Two `ligo train --out R` at once: the second is refused at once, the first finishes alone."""
    from conftest import run_cli, start_cli, wait_for

    out = tmp_path / "r"
    first = start_cli("train", sources["llama"], "--data", corpus, "--out", out, "--steps", "100000", "--batch-size",
                      "2", "--seq-len", "16", "--eval-every", "0", "--eval-batches", "1", "--log-every", "1",
                      "--no-progress")
    try:
        assert wait_for(lambda: (out / "log.jsonl").exists(), first)
        second = run_cli("train", sources["llama"], "--data", corpus, "--out", out, "--steps", "2", "--lr", "1e-2",
                         "--resume")
        assert_one_line_error(second, "train", f"another ligo process \\(pid {first.pid}\\) is writing")
    finally:
        first.terminate()
        first.communicate(timeout=120)
    assert first.returncode == 143


def test_cards_and_recipes_name_the_source_without_the_machines_folders(sources, tmp_path, cli):
    import shutil

    import tiny

    hub = tmp_path / "cache" / "models--someorg--tiny-llama" / "snapshots" / "abc123"
    shutil.copytree(sources["llama"], hub)
    cli("grow", hub, "--target", '{"hidden": 64}', "--out", tmp_path / "g", check=True)
    card = (tmp_path / "g" / "README.md").read_text()
    recipe = json.loads((tmp_path / "g" / "ligo_recipe.json").read_text())
    assert "base_model: someorg/tiny-llama" in card and recipe["source"] == "someorg/tiny-llama"
    cli("grow", sources["llama"], "--target", '{"hidden": 64}', "--out", tmp_path / "h", check=True)
    assert json.loads((tmp_path / "h" / "ligo_recipe.json").read_text())["source"] == "llama"
    assert str(tmp_path) not in (tmp_path / "h" / "README.md").read_text()
    bare = tiny.save_model(tiny.make_model("bert", bare=True), tmp_path / "bare-bert")
    cli("grow", bare, "--target", '{"hidden": 64, "heads": 8}', "--out", tmp_path / "b", check=True)
    assert "pipeline_tag: feature-extraction" in (tmp_path / "b" / "README.md").read_text()


def test_heads_that_do_not_divide_the_hidden_size_fail_before_any_work(sources, tmp_path, cli):
    proc = cli("grow", sources["llama"], "--target", '{"heads": 6, "kv_heads": 3}', "--out", tmp_path / "g")
    assert_one_line_error(proc, "grow", "hidden size \\(64\\) is not a multiple of the number of attention heads "
                          "\\(6\\).*check its sizes")
    assert not (tmp_path / "g").exists()


def test_growing_a_live_run_fits_on_the_data_it_is_given(sources, corpus, bad_data, tmp_path, cli):
    run = tmp_path / "run"
    cli("train", sources["llama"], "--data", corpus, "--out", run, "--save-every", "2", *QUICK, check=True)
    other = bad_data / "a.txt"
    cli("grow", run, "--optimizer-state", "grow", "--target", '{"hidden": 64}', "--out", tmp_path / "g",
        "--fit-steps", "2", "--data", other, "--seq-len", "16", "--fit-batch-size", "2", "--fit-eval-batches", "1",
        "--no-progress", check=True)
    recipe = json.loads((tmp_path / "g" / "model" / "ligo_recipe.json").read_text())
    assert recipe["fit"]["data"] == other.name  # the data it was given, by name (never the machine's folders)
    assert_one_line_error(cli("grow", run, "--optimizer-state", "grow", "--target", '{"hidden": 64}', "--out",
                              tmp_path / "h", "--device", "cuda"), "grow", "a live run is grown on the CPU")


def test_a_dataset_name_offline_is_one_line_at_once(sources, tmp_path, cli):
    """Offline, a Hub dataset name is looked up in the local cache only (no retries of the hub client)."""
    from ligo.data import _hub_reachable

    if _hub_reachable():
        pytest.skip("the Hub is reachable from this machine")
    proc = cli("train", sources["llama"], "--data", "someone/no-such-dataset", "--out", tmp_path / "r", *QUICK)
    assert_one_line_error(proc, "train", "the Hub is not reachable from here and it is not in the local datasets cache")


def test_a_failed_final_save_says_whether_a_checkpoint_is_left(tmp_path):
    """A full disk at the final save: "--resume" only when a checkpoint is there to resume from."""
    import errno

    from ligo.errors import LigoError
    from ligo.training import _save_final

    class Full:
        def save_pretrained(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(LigoError, match="no space left on the device.*no checkpoint was kept"):
        _save_final(Full(), {}, None, tmp_path, {}, None)
    ckpt = tmp_path / "checkpoints" / "step-0000002"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 2, "files": {}}))
    from ligo.rundir import latest_checkpoint

    if latest_checkpoint(tmp_path) is None:
        pytest.skip("a complete checkpoint needs more than its state file here")
    with pytest.raises(LigoError, match="with --resume \\(the checkpoints are intact\\)"):
        _save_final(Full(), {}, None, tmp_path, {}, None)
