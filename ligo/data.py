"""Text data: read local files, tokenize with the model's tokenizer, pack into fixed-length blocks."""

from __future__ import annotations

import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import LigoError

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".json", ".jsonl", ".csv", ".tex", ".html", ".xml", ".c", ".h"}


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LigoError(f"cannot read data file {path}: {exc.strerror}; check its permissions") from None
    if b"\x00" in raw[:8192]:
        raise LigoError(f"data file {path} is binary (it contains NUL bytes); give UTF-8 text, a directory of "
                        "text files, or a .jsonl file with a 'text' field")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise LigoError(f"data file {path} is not UTF-8 text; convert it to UTF-8") from None


def read_texts(path: str | Path, limit_bytes: int | None = None) -> list[str]:
    """Documents from a text file, a .jsonl file (one {"text": ...} per line) or a directory of them."""
    p = Path(path)
    if not p.exists():
        raise LigoError(f"data path {p} does not exist; pass a text file, a .jsonl file or a directory")
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES) if p.is_dir() else [p]
    texts: list[str] = []
    total = 0
    for f in files:
        text = _read_text(f)
        if f.suffix == ".jsonl":
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise LigoError(f"{f}:{n} is not a JSON object with a 'text' field; fix or remove that line") from None
                texts.append(str(doc))
        else:
            texts.append(text)
        total += len(text)
        if limit_bytes and total >= limit_bytes:
            break
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise LigoError(f"data path {p} holds no text ({len(files)} file(s) read); give it some UTF-8 text")
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


@dataclass
class Blocks:
    """Token blocks, split into training and held-out parts."""

    train: torch.Tensor  # [n, seq_len] int64
    val: torch.Tensor

    @property
    def seq_len(self) -> int:
        return self.train.shape[1]


def pack(texts: list[str], tokenizer, seq_len: int, val_fraction: float = 0.05, min_val_blocks: int = 1) -> Blocks:
    """Tokenize documents, join them with the end-of-text token and cut into blocks of ``seq_len``.

    The held-out blocks are the last ``val_fraction`` of the stream (documents are not shuffled
    across the split, so held-out text is never seen in training).
    """
    if seq_len < 2:
        raise LigoError(f"sequence length {seq_len} is too short; use at least 2")
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    ids: list[int] = []
    for start in range(0, len(texts), 256):
        for doc in tokenizer(texts[start:start + 256], add_special_tokens=False)["input_ids"]:
            ids.extend(doc)
            if sep is not None:
                ids.append(sep)
    n = len(ids) // seq_len
    if n < 1 + min_val_blocks:
        raise LigoError(f"the data holds {len(ids)} tokens, fewer than {1 + min_val_blocks} blocks of {seq_len}; "
                        "give more text or a smaller --seq-len")
    blocks = torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
    n_val = max(min_val_blocks, int(n * val_fraction))
    return Blocks(train=blocks[: n - n_val], val=blocks[n - n_val:])


def load_blocks(path: str | Path | None, tokenizer, seq_len: int, val_fraction: float = 0.05,
                limit_bytes: int | None = None) -> Blocks:
    """Blocks from a data path, or from the embedded default corpus (the stdlib) when path is None."""
    texts = stdlib_texts() if path is None else read_texts(path, limit_bytes)
    return pack(texts, tokenizer, seq_len, val_fraction)


def cached_tokenizer(texts: list[str], vocab_size: int, out_dir: str | Path):
    """``train_tokenizer``, reusing an earlier result for the same texts and vocabulary size.

    The cache lives in ``$LIGO_CACHE`` (default ``~/.cache/ligo``), keyed by a digest of the corpus;
    the tokenizer files are also written into ``out_dir``.
    """
    import hashlib
    import os
    import shutil

    from transformers import PreTrainedTokenizerFast

    h = hashlib.sha256(f"{vocab_size}\n".encode())
    for t in texts:
        h.update(hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest())
    cache = Path(os.environ.get("LIGO_CACHE", Path.home() / ".cache" / "ligo")) / "tokenizers" / h.hexdigest()[:24]
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
