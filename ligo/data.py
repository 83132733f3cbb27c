"""Text data through Hugging Face ``datasets``: read, tokenize (``Dataset.map``, cached by fingerprint), pack.

``--data`` (:class:`ligo.config.DataConfig`) may be

* a local file or a folder of files: text files (``.txt``, ``.py``, ``.md``, ... one document per file),
  ``.jsonl``/``.json``, ``.parquet`` or ``.arrow`` (one document per row, in ``--text-column``);
* a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
* a dataset name with ``--data-config`` / ``--data-split`` (where the user has hub access or a cache).

Without ``--data`` the corpus is the Python standard library's own source, which every machine with
Python has. Documents are tokenized with the model's tokenizer, joined with its end-of-text token and
cut into blocks of ``seq_len``; the last 5% of the stream is held out (never seen in training). With
``--streaming`` only the tokens the run will use are read.
"""

from __future__ import annotations

import contextlib

import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import DataConfig
from .errors import LigoError

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".csv", ".tex", ".html", ".xml", ".c", ".h"}
BUILDERS = {**{s: "text" for s in TEXT_SUFFIXES}, ".jsonl": "json", ".json": "json", ".parquet": "parquet",
            ".arrow": "arrow"}


@dataclass
class Blocks:
    """Token blocks, split into training and held-out parts."""

    train: torch.Tensor  # [n, seq_len] int64
    val: torch.Tensor

    @property
    def seq_len(self) -> int:
        return self.train.shape[1]


# -- reading ----------------------------------------------------------------------------------------
def _quiet():
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its "Failed to load ..." lines: ligo says it once
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # the hub client's "Retrying in 8s" lines when offline: ligo says it once
    return datasets


def _local_files(p: Path) -> tuple[str, list[str]]:
    """(builder, files) of a local file or folder; one kind of file per dataset."""
    from .checkpoint import check_regular_files

    check_regular_files(p)
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in BUILDERS and not f.name.startswith(".")) \
        if p.is_dir() else [p]
    if not files:
        raise LigoError(f"data path {p} holds no text ({', '.join(sorted(BUILDERS))} files); give it some")
    kinds = {BUILDERS.get(f.suffix, "text") for f in files}
    if len(kinds) > 1:
        raise LigoError(f"data folder {p} mixes {' and '.join(sorted(kinds))} files; give one kind per dataset")
    builder = kinds.pop()
    if builder == "text":
        for f in files:
            with open(f, "rb") as fh:
                head = fh.read(8192)
            if b"\x00" in head:
                raise LigoError(f"data file {f} is binary (it contains NUL bytes); give UTF-8 text, a folder of text "
                                "files, or .jsonl/.parquet with a text column")
    return builder, [str(f) for f in files]


def open_dataset(data: DataConfig | str | None):
    """The dataset (or, with streaming, the iterable dataset) that ``data`` names, with a text column."""
    dc = DataConfig.of(data)
    datasets = _quiet()
    p = Path(dc.data)
    try:
        if p.is_dir() and ((p / "state.json").exists() or (p / "dataset_dict.json").exists()):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if dc.data_split not in ds:
                    raise LigoError(f"split {dc.data_split!r} is not in {p} (splits: {', '.join(ds)}); pass "
                                    "--data-split")
                ds = ds[dc.data_split]
            ds = ds.to_iterable_dataset() if dc.streaming else ds
        elif p.exists():
            if dc.data_split != "train":
                raise LigoError(f"--data-split {dc.data_split} does not apply to {p}: a local file or folder is one "
                                "split; give the held-out text as its own --data, or drop --data-split")
            builder, files = _local_files(p)
            kwargs = {"sample_by": "document"} if builder == "text" else {}
            ds = datasets.load_dataset(builder, data_files=files, split="train", streaming=dc.streaming, **kwargs)
        elif _looks_like_a_path(dc.data):
            raise LigoError(f"data path {p} does not exist; pass a file, a folder, or a dataset name")
        else:
            if not _hub_reachable():  # offline: the local cache only, at once (not 30 s of the client's retries)
                datasets.config.HF_HUB_OFFLINE = True
            ds = datasets.load_dataset(dc.data, dc.data_config, split=dc.data_split, streaming=dc.streaming)
    except Exception as exc:
        raise _data_error(exc, dc) from None
    columns = ds.column_names
    if columns is not None and dc.text_column not in columns:
        raise LigoError(f"{dc.data} has no column {dc.text_column!r} (columns: {', '.join(columns)}); pass "
                        "--text-column")
    return ds


def _no_text(dc: DataConfig) -> LigoError:
    return LigoError(f"data {dc.data} holds no text in its {dc.text_column!r} column; give it UTF-8 text (a column "
                     "of strings), or name the right column with --text-column")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Can this machine open a connection to the Hub (``HF_ENDPOINT``)? False when offline mode is set."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


def _data_error(exc: BaseException, dc: DataConfig) -> BaseException:
    """The one clear error for a failure to read ``dc`` (opening it or iterating over it); anything that is
    not about the data is returned as it is."""
    if isinstance(exc, LigoError):
        return exc
    cause = exc
    while cause.__cause__ is not None or cause.__context__ is not None:
        if isinstance(cause, UnicodeDecodeError):
            break
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, UnicodeDecodeError) or isinstance(cause, UnicodeDecodeError):
        return LigoError(f"data {dc.data} is not UTF-8 text; convert it to UTF-8")
    if isinstance(exc, StopIteration) or "BatchSize must be greater than 0" in str(cause):
        return LigoError(f"data {dc.data} holds no rows; give it some text")
    if isinstance(exc, ValueError) and "Unknown split" in str(exc):
        return LigoError(f"split {dc.data_split!r} does not exist in {dc.data} ({str(exc).splitlines()[0]}); pass "
                         "--data-split")
    if isinstance(exc, ConnectionError) and "Couldn't reach" in str(exc):
        return LigoError(f"cannot load dataset {dc.data!r}: the Hub is not reachable from here and it is not in the local "
                         "datasets cache; give a local file or folder (or a dataset saved with save_to_disk)")
    if isinstance(exc, (ConnectionError, FileNotFoundError, OSError)):
        return LigoError(f"cannot load dataset {dc.data!r} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                         "check the name, or give a local file or folder")
    module = type(exc).__module__
    if isinstance(exc, ValueError) or module.startswith(("datasets", "pyarrow")):
        detail = str(cause).splitlines()[0][:160] if cause is not exc else ""
        return LigoError(f"cannot read {dc.data}: {str(exc).splitlines()[0][:120]}" + (f" ({detail})" if detail else ""))
    return exc


@contextlib.contextmanager
def _reading(dc: DataConfig):
    """Failures while the rows of ``dc`` are read (datasets reads lazily) become one clear error."""
    try:
        yield
    except Exception as exc:
        raise _data_error(exc, dc) from None


def _looks_like_a_path(name: str) -> bool:
    """A name that does not exist here is a hub dataset ('wikitext', 'user/name'), unless it reads as a path."""
    p = Path(name)
    return p.is_absolute() or name.startswith((".", "~")) or p.suffix in BUILDERS or name.rstrip("/").count("/") > 1


def read_texts(data: DataConfig | str, limit_bytes: int | None = None) -> list[str]:
    """The documents of ``data`` (up to ``limit_bytes`` characters): what a tokenizer is trained on."""
    dc = DataConfig.of(data)
    ds = open_dataset(dc)
    texts, total = [], 0
    with _reading(dc):
        for row in ds:
            t = row[dc.text_column]
            if isinstance(t, str) and t.strip():
                texts.append(t)
                total += len(t)
                if limit_bytes and total >= limit_bytes:
                    break
    if not texts:
        raise _no_text(dc)
    return texts


def stdlib_corpus_dir() -> Path:
    """The Python standard library's own source: a corpus every machine with Python has."""
    return Path(sysconfig.get_paths()["stdlib"])


_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def stdlib_texts(limit_bytes: int = 4_000_000, corpus: str = "stdlib") -> list[str]:
    """Python source on this machine, in a fixed order, up to ``limit_bytes`` characters.

    ``corpus="stdlib"``: the standard library (top-level modules first, then its packages, tests
    left out; about 12 MB). ``corpus="python"``: that, then every installed package's source
    (site-packages; torch and transformers alone give well over 100 MB), for GPU-scale runs.
    """
    if corpus not in ("stdlib", "python"):
        raise LigoError(f"unknown corpus {corpus!r}; use 'stdlib' or 'python', or pass --data PATH")
    root = stdlib_corpus_dir()
    top = sorted(f for f in root.glob("*.py") if f.is_file())
    packages = sorted(f for f in root.glob("*/**/*.py") if not set(f.relative_to(root).parts[:-1]) & _SKIP_DIRS)
    files = top + packages
    if corpus == "python":
        site = Path(sysconfig.get_paths()["purelib"])
        files += sorted(f for f in site.rglob("*.py") if not set(f.relative_to(site).parts[:-1]) & _SKIP_DIRS)
    texts, total = [], 0
    for f in files:
        try:
            t = f.read_text("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if not t.strip():
            continue
        texts.append(t)
        total += len(t)
        if total >= limit_bytes:
            break
    return texts


# -- tokenizing and packing -------------------------------------------------------------------------
def _separator(tokenizer) -> int | None:
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id


def _tokenize(ds, tokenizer, column: str, num_proc: int | None):
    """``Dataset.map`` with the tokenizer, batched; on a dataset with cache files the result is cached by
    fingerprint, so a second run with the same data and tokenizer does not tokenize again."""
    def tokenize(batch):
        texts = [t for t in batch[column] if isinstance(t, str) and t.strip()]
        return {"input_ids": tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []}

    kwargs = {"batched": True, "remove_columns": ds.column_names}
    if hasattr(ds, "cache_files"):  # a Dataset, not a streaming IterableDataset
        large = len(ds) >= 2000
        kwargs["num_proc"] = num_proc or (min(8, os.cpu_count() or 1) if large else None)
    return ds.map(tokenize, **kwargs)


VAL_FRACTION = 0.05  # the held-out share of every corpus's blocks


def tokens_to_read(cfg) -> int:
    """Tokens a streamed corpus must yield for ``cfg.steps`` steps: the training share of what is read is
    ``1 - VAL_FRACTION``, less a margin of 1% for the partial blocks at document edges."""
    return int(cfg.steps * cfg.tokens_per_step / (1 - VAL_FRACTION - 0.01))


def _blocks(ids: list[int], seq_len: int, val_fraction: float, min_val_blocks: int = 1) -> Blocks:
    if seq_len < 2:
        raise LigoError(f"sequence length {seq_len} is too short; use at least 2")
    n = len(ids) // seq_len
    if n < 1 + min_val_blocks:
        raise LigoError(f"the data holds {len(ids)} tokens, fewer than {1 + min_val_blocks} blocks of {seq_len}; "
                        "give more text or a smaller --seq-len")
    blocks = torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
    n_val = max(min_val_blocks, int(n * val_fraction))
    return Blocks(train=blocks[: n - n_val], val=blocks[n - n_val:])


def _stream(tokenized, sep: int | None, limit: int | None) -> list[int]:
    ids: list[int] = []
    for row in tokenized:
        ids.extend(row["input_ids"])
        if sep is not None:
            ids.append(sep)
        if limit is not None and len(ids) >= limit:
            break
    return ids


def pack(texts: list[str], tokenizer, seq_len: int, val_fraction: float = VAL_FRACTION) -> Blocks:
    """Blocks from documents held in memory (the embedded corpus, a benchmark's texts)."""
    datasets = _quiet()
    ds = datasets.Dataset.from_dict({"text": [t for t in texts if t.strip()]})
    return _blocks(_stream(_tokenize(ds, tokenizer, "text", None), _separator(tokenizer), None), seq_len, val_fraction)


def load_blocks(data: DataConfig | str | Path | None, tokenizer, seq_len: int, val_fraction: float = VAL_FRACTION,
                max_tokens: int | None = None) -> Blocks:
    """Blocks from ``data``, or from the embedded default corpus (the stdlib) when it names none.

    ``max_tokens``: with streaming, stop reading after this many tokens (the run's need)."""
    dc = DataConfig.of(data)
    if dc.data is None:
        return pack(stdlib_texts(), tokenizer, seq_len, val_fraction)
    ds = open_dataset(dc)
    with _reading(dc):
        ids = _stream(_tokenize(ds, tokenizer, dc.text_column, dc.num_proc), _separator(tokenizer),
                      max_tokens if dc.streaming else None)
    if not ids:
        raise _no_text(dc)
    return _blocks(ids, seq_len, val_fraction)


def cached_tokenizer(texts: list[str], vocab_size: int, out_dir: str | Path):
    """``train_tokenizer``, reusing an earlier result for the same texts and vocabulary size.

    The cache lives in ``$LIGO_CACHE`` (default ``~/.cache/ligo``), keyed by a digest of the corpus;
    the tokenizer files are also written into ``out_dir``.
    """
    import hashlib
    import shutil

    from transformers import PreTrainedTokenizerFast

    h = hashlib.sha256(f"{vocab_size}\n".encode())
    for t in texts:
        h.update(hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest())
    from .outputs import cache_dir

    cache = cache_dir() / "tokenizers" / h.hexdigest()[:24]
    if (cache / "tokenizer.json").is_file():
        try:
            tok = PreTrainedTokenizerFast.from_pretrained(str(cache), trust_remote_code=False, local_files_only=True)
            tok.save_pretrained(out_dir)
            return tok
        except Exception:  # an unreadable cache entry is rebuilt, never trusted
            shutil.rmtree(cache, ignore_errors=True)
    tok = train_tokenizer(texts, vocab_size, out_dir)
    try:
        tmp = cache.with_name(cache.name + f".tmp-{os.getpid()}")
        tok.save_pretrained(tmp)
        os.replace(tmp, cache)
    except OSError:  # a read-only home, or another process won the race: same result
        shutil.rmtree(tmp, ignore_errors=True)
    return tok


def train_tokenizer(texts: list[str], vocab_size: int = 2048, out_dir: str | Path | None = None):
    """A byte-level BPE tokenizer trained on ``texts`` (with the special tokens both LM kinds need)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<pad>", "<mask>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<pad>", mask_token="<mask>", unk_token="<unk>")
    if out_dir is not None:
        fast.save_pretrained(out_dir)
    return fast
