import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LIGO_CACHE", tempfile.mkdtemp(prefix="ligo-test-cache-"))  # never the user's cache
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from transformers.utils import logging as tlog  # noqa: E402

tlog.set_verbosity_error()
tlog.disable_progress_bar()

import tiny  # noqa: E402

LIGO = str(Path(sys.executable).parent / "ligo")


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


def run_cli(*args, check=False, **kw):
    proc = subprocess.run([LIGO, *map(str, args)], capture_output=True, text=True, timeout=600, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"ligo {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path
