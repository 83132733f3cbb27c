"""One output policy for every command: inputs are never destroyed, an existing output survives until
its replacement is complete, names and permissions behave, unfinished runs are resumable."""

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

import tiny
from conftest import assert_one_line_error, run_cli

FAST = ["--seq-len", "32", "--batch-size", "4", "--eval-batches", "1", "--eval-every", "0", "--no-progress"]
TARGET = json.dumps(tiny.TARGET["llama"])


def _tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _finished_run(cli, sources, corpus, out):
    cli("train", sources["llama"], "--data", corpus, "--out", out, "--steps", "2", *FAST, check=True)
    return _tree(out), (out / "model.safetensors").read_bytes()


def test_train_into_its_own_model_is_refused_and_the_model_kept(sources, corpus, tmp_path, cli):
    model = tmp_path / "model"
    shutil.copytree(sources["llama"], model)
    before = _tree(model)
    for out in (model, tmp_path):  # the model itself, and a folder that holds it
        assert_one_line_error(cli("train", model, "--data", corpus, "--out", out, "--overwrite", "--steps", "1", *FAST),
                              "train", "is \\(or holds\\) the input")
    assert _tree(model) == before


@pytest.mark.parametrize("out", ["source", "parent"])
def test_grow_overwrite_onto_its_source_is_refused(out, sources, tmp_path, cli):
    src = tmp_path / "work" / "src"
    shutil.copytree(sources["llama"], src)
    (tmp_path / "work" / "notes.txt").write_text("mine")
    target = src if out == "source" else tmp_path / "work"
    assert_one_line_error(cli("grow", src, "--target", TARGET, "--out", target, "--overwrite"), "grow",
                          "is \\(or holds\\) the input")
    assert (src / "model.safetensors").exists() and (tmp_path / "work" / "notes.txt").read_text() == "mine"


def test_overwrite_keeps_the_old_run_when_the_new_one_fails(sources, corpus, tmp_path, cli):
    out = tmp_path / "run"
    before, weights = _finished_run(cli, sources, corpus, out)
    # a mistyped --data, then a loss that turns NaN: both fail, the finished run stays as it was
    assert_one_line_error(cli("train", sources["llama"], "--data", tmp_path / "corpsu", "--out", out, "--overwrite",
                              "--steps", "2", *FAST), "train", "does not exist")
    assert_one_line_error(cli("train", sources["llama"], "--data", corpus, "--out", out, "--overwrite", "--steps",
                              "5", "--lr", "1e30", "--warmup", "0", "--clip", "0", *FAST), "train", "loss became")
    assert _tree(out) == before and (out / "model.safetensors").read_bytes() == weights
    assert not (tmp_path / ".run.ligo-new").exists()
    # a successful --overwrite replaces it
    cli("train", sources["llama"], "--data", corpus, "--out", out, "--overwrite", "--steps", "3", *FAST, check=True)
    assert len((out / "log.jsonl").read_text().splitlines()) == 3 and not (tmp_path / ".run.ligo-new").exists()


def test_an_interrupted_replacement_resumes_and_then_takes_the_name(sources, corpus, tmp_path, cli):
    from conftest import LIGO, wait_for

    out = tmp_path / "run"
    before, _ = _finished_run(cli, sources, corpus, out)
    staging = tmp_path / ".run.ligo-new"
    args = ["train", str(sources["llama"]), "--data", str(corpus), "--out", str(out), "--save-every", "2",
            "--steps", "400", *FAST]
    proc = subprocess.Popen([LIGO, *args, "--overwrite"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: (staging / "checkpoints" / "step-0000002").is_dir(), proc)
    proc.kill()  # the replacement run dies after its first checkpoint
    proc.wait()
    assert _tree(out) == before and (staging / "checkpoints" / "step-0000002").is_dir()
    # a plain rerun says how to continue; --resume continues the replacement, which then takes the name
    assert_one_line_error(cli(*args), "train", "--overwrite, or --resume")
    cli(*args[:-len(FAST) - 2], "--steps", "4", *FAST, "--resume", check=True)
    assert not staging.exists() and [json.loads(r)["step"] for r in (out / "log.jsonl").read_text().splitlines()] \
        == [1, 2, 3, 4]


def test_grow_train_resume_after_a_crash_in_the_grow_stage(sources, corpus, tmp_path, cli):
    out = tmp_path / "job"
    args = ["grow-train", sources["llama"], "--target", TARGET, "--data", corpus, "--out", out, "--steps", "2", *FAST]
    # what a kill during the grow stage leaves: the job folder with a half-written grown model
    (out / ".grown.tmp-999999999-dead").mkdir(parents=True)
    assert_one_line_error(cli(*args), "grow-train", "already exists")
    cli(*args, "--resume", check=True)
    assert (out / "trained" / "config.json").exists() and (out / "grown" / "config.json").exists()
    assert not list(out.glob(".grown*"))
    # resumed again when finished: refused, the final model untouched
    weights = (out / "trained" / "model.safetensors").read_bytes()
    assert_one_line_error(cli(*args, "--resume"), "grow-train", "has finished")
    assert (out / "trained" / "model.safetensors").read_bytes() == weights


def test_long_output_names(sources, tmp_path, cli):
    ok = tmp_path / ("g" * 245)  # valid on ext4 and tmpfs (255 bytes): the temporary names must fit too
    cli("grow", sources["llama"], "--target", TARGET, "--out", ok, check=True)
    assert (ok / "config.json").exists()
    assert_one_line_error(cli("grow", sources["llama"], "--target", TARGET, "--out", tmp_path / ("g" * 300)), "grow",
                          "longer than this file system allows")


def test_grown_outputs_follow_the_umask(sources, tmp_path, cli):
    old = os.umask(0o022)
    try:
        cli("grow", sources["llama"], "--target", TARGET, "--out", tmp_path / "g", check=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "g").stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "g").iterdir()} == {0o644}


def test_a_source_without_tokenizer_warns(sources, tmp_path, cli):
    src = tmp_path / "src"
    shutil.copytree(sources["llama"], src)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (src / f).unlink()
    proc = cli("grow", src, "--target", TARGET, "--out", tmp_path / "g")
    assert proc.returncode == 0 and "has no tokenizer files" in proc.stderr and "copy the" in proc.stderr


def test_grow_and_grow_train_document_the_same_fit_defaults():
    """The fit flags are generated once: the same flags with the same help (defaults included) in both."""
    from ligo.cli import build_parser

    subs = next(a for a in build_parser()._actions if a.dest == "command").choices

    def fit_flags(cmd):
        return {a.dest: a.help for a in subs[cmd]._actions if a.dest.startswith("fit_")}

    grow, grow_train = fit_flags("grow"), fit_flags("grow-train")
    # grow-train alone knows a budget: it may fit for a share of it
    assert grow_train.pop("fit_share").endswith("(default: no fit; the unfitted operator measured best, see "
                                                "docs/benchmarks.md)")
    assert grow.pop("fit_steps").endswith("(default: 0, no fit)")
    assert grow_train.pop("fit_steps").endswith("(default: 0, no fit; or --fit-share)")
    assert grow == grow_train and len(grow) > 10
    assert grow["fit_warmup"].endswith("(default: 1)") and grow["fit_patience"].endswith("(default: 3)")
    assert grow["fit_lr"].endswith("(default: 0.003)") and "fit_weight_decay" not in grow  # never decayed


def test_grow_train_defaults_follow_the_source_and_fit_a_share_when_asked(sources, corpus, tmp_path, cli):
    """The default plan for a checkpoint ligo did not train (its training unknown): the lossless split width
    with identity depth, no fit; --fit-share 0.02 fits for 2% of the training budget's FLOPs (here with the
    paper's init, asked for); identity depth makes auto width the lossless split."""
    out = tmp_path / "job"
    cli("grow-train", sources["llama"], "--target", TARGET, "--data", corpus, "--out", out, "--steps", "150", *FAST,
        "--fit-share", "0.02", "--fit-eval-every", "0", "--width", "random", "--depth", "stack", check=True)
    job = json.loads((out / "job.json").read_text())
    grown = json.loads((out / "grown" / "ligo_recipe.json").read_text())
    assert job["fit"]["share"] == 0.02 and "steps" not in job["fit"]
    assert grown["plan"]["width"] == "random" and grown["plan"]["depth"] == "stack"
    # a fit step costs a training step (same batch here) plus building the weights from the operator
    fit = grown["fit"]
    train_step = fit["flops_per_step"] - fit["build_flops"]
    assert 1 <= fit["steps"] <= 3 and fit["flops"] <= 0.02 * 150 * train_step < (fit["steps"] + 1) * fit["flops_per_step"]
    # the default: no fit, the lossless plan for a source of unknown training, and the recipe says so
    cli("grow-train", sources["llama"], "--target", TARGET, "--data", corpus, "--out", tmp_path / "plain", "--steps",
        "2", *FAST, check=True)
    assert json.loads((tmp_path / "plain" / "job.json").read_text())["fit"] == {"steps": 0}
    plain = json.loads((tmp_path / "plain" / "grown" / "ligo_recipe.json").read_text())
    assert plain["plan"]["width"] == "split" and plain["plan"]["depth"] == "identity" and plain.get("fit") in (None, {})
    assert plain["source_tokens"] is None and plain["lossless"] is True
    cli("grow-train", sources["llama"], "--target", TARGET, "--data", corpus, "--out", tmp_path / "lossless",
        "--steps", "2", "--depth", "identity", *FAST, check=True)
    assert json.loads((tmp_path / "lossless" / "grown" / "ligo_recipe.json").read_text())["plan"]["width"] == "split"



# -- one writer at a time, for every command that writes an output -------------------------------------------------
def _lock_holder(out):
    """The process id in the lock file of ``out``: written once a process holds the lock (ligo.outputs)."""
    import hashlib

    from ligo.outputs import cache_dir

    try:
        text = (cache_dir() / "locks" / hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:32]).read_text()
    except OSError:
        return None
    return int(text) if text.strip().isdigit() else None


def test_two_grows_into_one_new_folder_refuse_the_second(sources, tmp_path):
    """Two `ligo grow` into the same new --out, the second while the first works (held there with SIGSTOP): both
    once exited 0 and the output held whichever finished last. Now the second is refused at once, with or without
    --overwrite, and the output is the first's."""
    import signal

    from conftest import start_cli, wait_for

    out = tmp_path / "grown"
    first = start_cli("grow", sources["llama"], "--target", TARGET, "--out", out)
    try:
        assert wait_for(lambda: _lock_holder(out) == first.pid, first), first.communicate()
        os.kill(first.pid, signal.SIGSTOP)
        try:
            other = json.dumps({**tiny.TARGET["llama"], "hidden_size": 192, "num_attention_heads": 12,
                                "num_key_value_heads": 6})
            seconds = [run_cli("grow", sources["llama"], "--target", other, "--out", out, *extra)
                       for extra in ([], ["--overwrite"])]
        finally:
            os.kill(first.pid, signal.SIGCONT)
        first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    for second in seconds:
        assert_one_line_error(second, "grow", f"another ligo process \\(pid {first.pid}\\) is writing {out}; wait for it "
                                              "to finish, or write elsewhere")
    assert first.returncode == 0
    assert json.loads((out / "config.json").read_text())["hidden_size"] == tiny.TARGET["llama"]["hidden_size"]


@pytest.mark.parametrize("command", ["grow", "grow-run", "eval"])
def test_grow_and_eval_refuse_an_output_another_process_writes(command, sources, corpus, tmp_path, cli):
    """This test's process holds the lock of the output, as a running ligo would: `grow` (of a model or a run) and
    `eval --json`, run as a second process, are refused at once and leave the output as it was (train, grow-train
    and bench take the same lock through RunOutput: tests/test_cli_misuse.py runs two trains)."""
    from ligo.outputs import lock_output, unlock_output

    out = tmp_path / ("r.json" if command == "eval" else "out")
    quick = ["--steps", "2", *FAST]
    run = tmp_path / "run"
    if command == "grow-run":
        cli("train", sources["llama"], "--data", corpus, "--out", run, "--save-every", "2", *quick, check=True)
    args = {"grow": ["grow", sources["llama"], "--target", TARGET, "--out", out],
            "grow-run": ["grow", run, "--optimizer-state", "grow", "--target", TARGET, "--out", out],
            "eval": ["eval", sources["llama"], "--tasks", "no_such_task", "--json", out]}[command]
    lock_output(out)
    try:
        proc = run_cli(*args)
    finally:
        unlock_output(out)
    assert_one_line_error(proc, command.split("-run")[0], f"another ligo process \\(pid {os.getpid()}\\) is writing")
    assert not out.exists()


def _can_mount_read_only() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount --bind $d $d && mount -o remount,ro,bind $d"],
        capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount_read_only(), reason="cannot mount a folder read-only here (needs root or user "
                    "namespaces)")
def test_eval_into_a_read_only_folder_is_refused_before_the_evaluation(sources, tmp_path):
    """A real read-only mount (root writes through chmod): `ligo eval --json` once ran the whole evaluation, then
    failed on the write. Now the folder is checked first: one line, and no evaluation (no table printed)."""
    import shlex

    pytest.importorskip("lm_eval")
    from conftest import LIGO

    task, folder = tiny.make_task(tmp_path / "task", n=8), tmp_path / "results"
    folder.mkdir()
    argv = [LIGO, "eval", str(sources["llama"]), "--tasks", str(task), "--limit", "4", "--device", "cpu", "--json",
            str(folder / "r.json")]
    script = f'mount --bind "{folder}" "{folder}" && mount -o remount,ro,bind "{folder}" && exec {shlex.join(argv)}'
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=600)
    assert_one_line_error(proc, "eval", f"cannot write to {folder} \\(Read-only file system\\); choose a --json file in "
                                        "a writable directory")
    assert proc.stdout == "" and not list(folder.iterdir())

def test_help_and_version_import_nothing_heavy():
    code = ("import sys, ligo.cli; ligo.cli.build_parser().format_help(); import ligo; ligo.__version__; "
            "print(sorted(m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert run_cli("--version").stdout.strip().startswith("ligo ")
