"""Depth up-scaling and selection-only growth at disk speed: ligo against mergekit and against the disk itself.

A random bf16 Llama of 1.24B parameters (2048 wide, 16 layers, 32/8 heads, vocab 128256), written straight to
safetensors (nothing is downloaded), grown three ways, each in a fresh process timed end to end with its peak
resident memory read from the kernel (wait4):

* ``solar``: SOLAR's depth up-scaling, layers [0, 12) + [4, 16) -> 24 layers, by mergekit 0.1.5's passthrough
  (``mergekit-yaml --lazy-unpickle``) and by ``ligo grow --from-mergekit`` on the same config; their tensors are
  compared byte for byte;
* ``expand``: LLaMA-Pro's block expansion (``--depth-map expand:4``, 16 -> 20 layers), which mergekit says as
  zero-scaled slices (run too, and compared);
* ``wide``: width and depth at once with the lossless selection plan (split + identity) into 3072 wide, 24 layers;
* ``wide-1b``: issue 44's case, a random bf16 Llama of 1.15B (2048 wide, 20 layers, an untied 49K vocabulary) grown
  the same way into 3072 wide, 24 layers, FFN 9216 (2.9B).

Beside each, the physical floor of the same work on the same disk: reading the source's files and writing the
target's bytes (``floor_s``), so ``ligo_s / floor_s`` says how close to the disk ligo runs. Dirty pages are
flushed (``sync``) before every timed step, none is synced at its end (as ligo and mergekit do not).

    python benchmarks/depth_speed.py --json benchmarks/results/depth-speed-cpu-DATE.json
    python benchmarks/depth_speed.py --cases solar --workdir /tmp/ds      # keep the source between runs
    python benchmarks/depth_speed.py --cases wide wide-1b --repeat 3      # medians of three, in turn
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCE = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
              intermediate_size=8192, vocab_size=128256)
# issue 44's second case: 1.15B (2048 wide, 20 layers, an untied 49K vocabulary) grown to 3072 wide, 24 layers
SOURCE_B = dict(hidden_size=2048, num_hidden_layers=20, num_attention_heads=32, num_key_value_heads=8,
                intermediate_size=6144, vocab_size=49152, tie_word_embeddings=False)
TARGET_B = {"hidden": 3072, "layers": 24, "heads": 48, "kv_heads": 12, "ffn": 9216}
ZERO = {"scale": [{"filter": "o_proj", "value": 0.0}, {"filter": "down_proj", "value": 0.0}, {"value": 1.0}]}


def make_source(path: Path, config: dict = SOURCE) -> int:
    """The source, made in a process of its own: a child forked from a process that held the model would
    report the parent's memory as its own peak (Linux keeps the high-water mark across fork and exec)."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from grow_speed import make_source; "
            f"print(make_source({config!r}, __import__('pathlib').Path({str(path)!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1])


def timed(cmd: list[str]) -> dict:
    """Run ``cmd`` in a fresh process: wall seconds and its peak resident memory (MB, from wait4). Dirty pages
    of earlier runs are flushed first, so that no run pays for another's writeback."""
    os.sync()
    with tempfile.TemporaryFile("w+") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            log.seek(0)
            raise SystemExit(f"{' '.join(cmd[:3])} failed: {log.read()[-2000:]}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}


def floor(src: Path, target_bytes: int, where: Path) -> float:
    """Seconds to read every source file and write ``target_bytes`` to the output's disk (no compute), after the
    same flush of dirty pages as each timed run."""
    os.sync()
    t0 = time.perf_counter()
    for f in sorted(src.glob("*.safetensors")):
        with open(f, "rb") as fh:
            while fh.read(1 << 26):
                pass
    block = os.urandom(1 << 26)
    path = where / "floor.bin"
    with open(path, "wb") as fh:
        written = 0
        while written < target_bytes:
            fh.write(block[: min(len(block), target_bytes - written)])
            written += min(len(block), target_bytes - written)
    wall = time.perf_counter() - t0
    path.unlink()
    return wall


def same_tensors(a: Path, b: Path) -> bool:
    import torch
    from safetensors import safe_open

    def index(folder):
        out = {}
        for f in folder.glob("*.safetensors"):
            with safe_open(f, framework="pt") as h:
                out.update(dict.fromkeys(h.keys(), f))
        return out

    ia, ib = index(a), index(b)
    if set(ia) != set(ib):
        return False
    for key, fa in ia.items():
        with safe_open(fa, framework="pt") as ha, safe_open(ib[key], framework="pt") as hb:
            x, y = ha.get_tensor(key), hb.get_tensor(key)
        if x.dtype != y.dtype or not torch.equal(x, y):
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["solar", "expand", "wide", "wide-1b"],
                    choices=["solar", "expand", "wide", "wide-1b"])
    ap.add_argument("--workdir", help="where the source and outputs go (default: a temporary directory)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--repeat", type=int, default=1,
                    help="time ligo and the floor this many times each, in turn, and report the medians (default 1)")
    args = ap.parse_args()
    import yaml

    bin_dir = Path(sys.executable).parent
    ligo, mergekit = str(bin_dir / "ligo"), shutil.which("mergekit-yaml", path=str(bin_dir))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ligo-depth-speed-"))
    params = {}
    rows = []
    for case in args.cases:
        src = work / ("src-1b" if case == "wide-1b" else "src")
        if not (src / "config.json").exists():
            params[src.name] = make_source(src, SOURCE_B if case == "wide-1b" else SOURCE)
        src_bytes = sum(f.stat().st_size for f in src.glob("*.safetensors"))
        out_l, out_m = work / f"{case}-ligo", work / f"{case}-mergekit"
        for d in (out_l, out_m):
            shutil.rmtree(d, ignore_errors=True)
        row = {"case": case}
        if case in ("wide", "wide-1b"):
            target = TARGET_B if case == "wide-1b" else {"hidden": 3072, "layers": 24, "heads": 48, "kv_heads": 12}
            cmd = [ligo, "grow", str(src), "--target", json.dumps(target), "--width", "split", "--depth", "identity",
                   "--max-shard-size", "2GB", "--out", str(out_l)]
        else:
            ranges = [(0, 12), (4, 16)] if case == "solar" else [r for s in range(0, 16, 4)
                                                                 for r in ((s, s + 4), (s + 3, s + 4))]
            slices = [{"sources": [{"model": str(src), "layer_range": list(r),
                                    **({"parameters": ZERO} if case == "expand" and i % 2 else {})}]}
                      for i, r in enumerate(ranges)]
            (work / f"{case}.yml").write_text(yaml.safe_dump({"slices": slices, "merge_method": "passthrough",
                                                              "dtype": "bfloat16"}))
            cmd = [ligo, "grow", "--from-mergekit", str(work / f"{case}.yml"), "--max-shard-size", "2GB", "--out",
                   str(out_l)]
            if mergekit:
                row["mergekit"] = timed([mergekit, str(work / f"{case}.yml"), str(out_m), "--lazy-unpickle",
                                         "--out-shard-size", "2B"])
        runs, floors = [], []
        for _ in range(args.repeat):  # ligo and the floor in turn: both see the same state of the page cache
            shutil.rmtree(out_l, ignore_errors=True)
            runs.append(timed(cmd))
            target_bytes = sum(f.stat().st_size for f in out_l.glob("*.safetensors"))
            floors.append(floor(src, target_bytes, work))
        row["ligo"] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        row["floor_s"] = statistics.median(floors)
        if args.repeat > 1:
            row.update(ligo_runs_s=[r["wall_s"] for r in runs], floor_runs_s=floors)
        row.update(source_gb=src_bytes / 1e9, target_gb=target_bytes / 1e9,
                   ligo_over_floor=row["ligo"]["wall_s"] / row["floor_s"])
        if "mergekit" in row:
            row["same_tensors"] = same_tensors(out_l, out_m)
            row["mergekit_over_ligo_wall"] = row["mergekit"]["wall_s"] / row["ligo"]["wall_s"]
            row["mergekit_over_ligo_rss"] = row["mergekit"]["peak_rss_mb"] / row["ligo"]["peak_rss_mb"]
        for d in (out_l, out_m):
            shutil.rmtree(d, ignore_errors=True)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    import torch

    meta = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "torch": torch.__version__,
            "source": SOURCE, "source_b": SOURCE_B, "target_b": TARGET_B, "source_params": params, "rows": rows}
    print("| case | ligo | peak RSS | mergekit | peak RSS | same tensors | floor (read + write) | ligo / floor |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        m = r.get("mergekit")
        theirs = f"{m['wall_s']:.1f}s | {m['peak_rss_mb']:.0f} MB" if m else "— | —"
        print(f"| {r['case']} | {r['ligo']['wall_s']:.1f}s | {r['ligo']['peak_rss_mb']:.0f} MB | {theirs} | "
              f"{r.get('same_tensors', '—')} | {r['floor_s']:.1f}s | {r['ligo_over_floor']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(meta, indent=2))
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
