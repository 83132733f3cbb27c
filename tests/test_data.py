"""Data through HF datasets: every local format gives the same blocks, tokenization is cached, streaming
reads only what is needed, and bad data is one clear line."""

import json

import pytest
import torch

from conftest import assert_one_line_error
from ligo.config import DataConfig
from ligo.data import load_blocks, pack, read_texts
from ligo.errors import LigoError

DOCS = ["def first():\n    return 1\n" * 40, "class Second:\n    pass\n" * 60, "x = [i for i in range(9)]\n" * 50]


@pytest.fixture
def formats(tmp_path):
    """The same three documents in every format ligo reads."""
    import datasets

    folder = tmp_path / "folder"
    folder.mkdir()
    for i, d in enumerate(DOCS):
        (folder / f"doc{i}.py").write_text(d)
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    (tmp_path / "docs.json").write_text(json.dumps([{"text": d} for d in DOCS]))
    ds = datasets.Dataset.from_dict({"text": DOCS, "id": [0, 1, 2]})
    ds.to_parquet(tmp_path / "docs.parquet")
    ds.save_to_disk(tmp_path / "saved")
    datasets.DatasetDict({"train": ds, "validation": ds.select([0])}).save_to_disk(tmp_path / "saved-dict")
    arrow = tmp_path / "arrow"
    arrow.mkdir()
    (arrow / "data.arrow").write_bytes(next((tmp_path / "saved").glob("*.arrow")).read_bytes())
    return tmp_path


@pytest.mark.parametrize("name", ["folder", "docs.jsonl", "docs.json", "docs.parquet", "saved", "saved-dict", "arrow"])
def test_every_format_gives_the_same_blocks(name, formats, tokenizer):
    reference = pack(DOCS, tokenizer, 16)
    blocks = load_blocks(formats / name, tokenizer, 16)
    assert torch.equal(blocks.train, reference.train) and torch.equal(blocks.val, reference.val)
    assert read_texts(str(formats / name)) == DOCS


def test_blocks_join_documents_with_end_of_text_and_hold_out_the_end(tokenizer):
    blocks = pack(DOCS, tokenizer, 16)
    ids = torch.cat([blocks.train.flatten(), blocks.val.flatten()]).tolist()
    first = tokenizer(DOCS[0], add_special_tokens=False)["input_ids"]
    assert ids[: len(first)] == first and ids[len(first)] == tokenizer.eos_token_id
    assert len(blocks.val) == max(1, int((len(blocks.train) + len(blocks.val)) * 0.05))


def test_text_column_and_split(formats, tokenizer, tmp_path):
    import datasets

    datasets.Dataset.from_dict({"content": DOCS}).to_parquet(tmp_path / "content.parquet")
    blocks = load_blocks(DataConfig(data=str(tmp_path / "content.parquet"), text_column="content"), tokenizer, 16)
    assert torch.equal(blocks.train, pack(DOCS, tokenizer, 16).train)
    val = load_blocks(DataConfig(data=str(formats / "saved-dict"), data_split="validation"), tokenizer, 16)
    assert torch.equal(val.train, pack(DOCS[:1], tokenizer, 16).train)


def test_tokenization_is_cached_by_fingerprint(formats, tokenizer):
    """A second run with the same data and tokenizer reuses the tokenized dataset on disk."""
    from ligo.data import _tokenize, open_dataset

    first = _tokenize(open_dataset(str(formats / "docs.parquet")), tokenizer, "text", None)
    files = [f["filename"] for f in first.cache_files]
    stamps = {f: __import__("os").stat(f).st_mtime_ns for f in files}
    again = _tokenize(open_dataset(str(formats / "docs.parquet")), tokenizer, "text", None)
    assert [f["filename"] for f in again.cache_files] == files and files
    assert all(__import__("os").stat(f).st_mtime_ns == stamps[f] for f in files)


def test_streaming_reads_only_what_the_run_needs(formats, tokenizer):
    full = load_blocks(formats / "docs.jsonl", tokenizer, 16)
    part = load_blocks(DataConfig(data=str(formats / "docs.jsonl"), streaming=True), tokenizer, 16, max_tokens=300)
    n = len(part.train) + len(part.val)
    assert 300 // 16 <= n < len(full.train) + len(full.val)
    assert torch.equal(part.train[:4], full.train[:4])


def test_the_default_corpus_is_the_standard_library(tokenizer):
    blocks = load_blocks(None, tokenizer, 64)
    assert len(blocks.train) > 1000 and blocks.seq_len == 64


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return path


BAD = {
    "missing path": (lambda t: DataConfig(data=str(t / "nope.txt")), "does not exist"),
    "empty folder": (lambda t: DataConfig(data=str((t / "e").mkdir() or t / "e")), "holds no text"),
    "binary file": (lambda t: DataConfig(data=str(_write(t, "b.txt", b"\x00\x01" * 50))), "binary"),
    "not utf-8": (lambda t: DataConfig(data=str(_write(t, "l.txt", "caf\xe9 ".encode("latin-1") * 100))), "UTF-8"),
    "parquet without the text column": (lambda t: DataConfig(data=str(_parquet(t, {"content": ["a b c"]}))),
                                        "no column 'text' .*--text-column"),
    "empty dataset": (lambda t: DataConfig(data=str(_parquet(t, {"text": ["", "  "]}))), "holds no text"),
    "no such split": (lambda t: DataConfig(data=str(_saved_dict(t)), data_split="test"), "split 'test' is not in"),
    "no such split (files)": (lambda t: DataConfig(data="user/some-dataset", data_split="nope"), "cannot load dataset"),
    "malformed jsonl": (lambda t: DataConfig(data=str(_write(t, "m.jsonl", '{"text": "a"}\n{broken\n'))),
                        "cannot read"),
    "mixed folder": (lambda t: DataConfig(data=str(_mixed(t))), "mixes"),
    "hub name, offline": (lambda t: DataConfig(data="wikitext", data_config="wikitext-2-raw-v1"),
                          "cannot load dataset 'wikitext'"),
}


def _parquet(tmp_path, columns):
    import datasets

    datasets.Dataset.from_dict(columns).to_parquet(tmp_path / "p.parquet")
    return tmp_path / "p.parquet"


def _saved_dict(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS})}).save_to_disk(tmp_path / "sd")
    return tmp_path / "sd"


def _mixed(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.py").write_text("x = 1\n")
    (tmp_path / "m" / "b.jsonl").write_text('{"text": "y"}\n')
    return tmp_path / "m"


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_data_is_one_clear_error(name, tmp_path, tokenizer):
    build, message = BAD[name]
    with pytest.raises(LigoError, match=message):
        load_blocks(build(tmp_path), tokenizer, 16)


def test_data_flags_through_the_cli(sources, tmp_path, cli):
    import datasets

    datasets.Dataset.from_dict({"body": DOCS * 20}).to_parquet(tmp_path / "d.parquet")
    out = tmp_path / "run"
    args = ["train", sources["llama"], "--data", tmp_path / "d.parquet", "--out", out, "--steps", "2", "--seq-len",
            "32", "--batch-size", "4", "--eval-batches", "1", "--no-progress"]
    assert_one_line_error(cli(*args), "train", "no column 'text'.*--text-column")
    cli(*args, "--text-column", "body", check=True)
    assert json.loads((out / "run.json").read_text())["data"]["text_column"] == "body"
