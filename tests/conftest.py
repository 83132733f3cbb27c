import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")  # two pytest workers (and their subprocesses) on two cores
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LIGO_CACHE", tempfile.mkdtemp(prefix="ligo-test-cache-"))  # never the user's cache
torch.set_num_threads(1)

from transformers.utils import logging as tlog  # noqa: E402

tlog.set_verbosity_error()
tlog.disable_progress_bar()

import tiny  # noqa: E402

LIGO = str(Path(sys.executable).parent / "ligo")
ROOT = Path(__file__).resolve().parents[1]



@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    from ligo.data import stdlib_texts, train_tokenizer

    return train_tokenizer(stdlib_texts(300_000), tiny.VOCAB, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A small real-text corpus: some of the standard library's own source files."""
    from ligo.data import stdlib_corpus_dir

    root = tmp_path_factory.mktemp("corpus")
    names = ["argparse.py", "dataclasses.py", "functools.py", "inspect.py", "pathlib.py", "typing.py"]
    for n in names:
        src = stdlib_corpus_dir() / n
        if src.exists():
            (root / n).write_text(src.read_text())
    return root


@pytest.fixture(scope="session")
def sources(tmp_path_factory, tokenizer):
    """Saved tiny random source models: {model_type: dir} (LM-head classes, with the tokenizer)."""
    root = tmp_path_factory.mktemp("sources")
    return {mt: tiny.save_model(tiny.make_model(mt), root / mt, tokenizer) for mt in tiny.ARCHS}


@pytest.fixture(scope="session")
def text_ids(tokenizer):
    """A batch of real text: the start of two standard-library modules, tokenized."""
    import sysconfig

    import torch

    root = Path(sysconfig.get_paths()["stdlib"])
    rows = [tokenizer((root / name).read_text()[:2000])["input_ids"][:40] for name in ("argparse.py", "textwrap.py")]
    return torch.tensor(rows)


@pytest.fixture(scope="session")
def blocks(corpus, tokenizer):
    from ligo.data import load_blocks

    return load_blocks(corpus, tokenizer, 32)


def run_cli(*args, check=False, **kw):
    """The real console script, in its own process."""
    proc = subprocess.run([LIGO, *map(str, args)], capture_output=True, text=True, timeout=900, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"ligo {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def start_cli(*args, **kw):
    """The real console script, started in its own process (to signal or race it); pipes for its output."""
    return subprocess.Popen([LIGO, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capfd):
    """The CLI's ``main`` in this process (the same code as the console script, minus the interpreter
    start): returns exit status, stdout and stderr."""
    from ligo.cli import main

    def call(*args, check=False):
        capfd.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse
            code = exc.code
        out, err = capfd.readouterr()
        if check and code != 0:
            raise AssertionError(f"ligo {' '.join(map(str, args))} failed ({code}):\n{out}\n{err}")
        return Result(code, out, err)

    return call


def wait_for(pred, proc=None, timeout: float = 300, poll: float = 0.005) -> bool:
    """Poll ``pred`` until it holds (True), ``proc`` ends or ``timeout`` passes (False)."""
    import time

    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def grow_noting_gaps(source, target: dict, out: Path, ids):
    """`ligo grow` with the lossless plan (split width, identity depth): the "not exactly lossless" notes it prints,
    and the grown model's max |logit difference| from the source on ``ids``."""
    proc = run_cli("grow", source, "--target", write_json(out.parent / f"{out.name}-target.json", target), "--out",
                   out, "--width", "split", "--depth", "identity", check=True)
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note: not exactly lossless")]
    return notes, tiny.max_logit_diff(source, out, ids)[0]


def assert_one_line_error(proc, command: str, pattern: str | None = None):
    """Exit 2, one line on stderr naming the command, no traceback."""
    import re

    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"ligo {command}: error:"), lines[0]
    if pattern:
        assert re.search(pattern, lines[0]), lines[0]
    return lines[0]
