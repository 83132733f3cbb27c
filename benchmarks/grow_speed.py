"""Growth speed and memory: load / grow / save seconds and peak memory of `ligo grow` (no fit), by model
size, streaming (the default) against the in-memory path (`--in-memory`).

Each source is a random Llama-shaped checkpoint written here as bf16 safetensors (nothing is
downloaded); each grow runs the real console script in a fresh process, timed end to end, and its
peak resident memory is read from the kernel (wait4). Both paths must write the same bytes (checked).
Sizes: 8M -> 30M; the 135M Llama (576 wide, 9 heads, 3 kv heads, 30 layers) grown into the 360M shape
(960, 15, 5, 32); a 1.2B Llama (2048 wide, 16 layers, 32/8 heads, vocab 128256) grown into a 3.2B shape
(3072 wide, 28 layers, 48/12 heads).

    python benchmarks/grow_speed.py                                   # all sizes, both paths
    python benchmarks/grow_speed.py --sizes 1.2B-3B --max-shard-size 1GB --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {  # name: (source config, target shape)
    "8M-30M": (dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=704, vocab_size=16384),
               dict(hidden=512, layers=8, heads=8, kv_heads=4, ffn=1408)),
    "135M-360M": (dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                       intermediate_size=1536, vocab_size=49152),
                  dict(hidden=960, layers=32, heads=15, kv_heads=5, ffn=2560)),
    "1.2B-3B": (dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                     intermediate_size=8192, vocab_size=128256),
                dict(hidden=3072, layers=28, heads=48, kv_heads=12, ffn=8192)),
}
MODES = {"stream": [], "in-memory": ["--in-memory"]}
LINE = re.compile(r"load ([\d.]+)s, build ([\d.]+)s, grow ([\d.]+)s, save ([\d.]+)s")


def make_source(cfg: dict, path: Path) -> int:
    """A random bf16 Llama checkpoint (with a tiny tokenizer); returns its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{"max_position_embeddings": 2048, "tie_word_embeddings": True, "head_dim": 64, **cfg})
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def run_grow(ligo: str, src: Path, target: dict, out: Path, extra: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen([ligo, "grow", str(src), "--target", json.dumps(target), "--out", str(out),
                             "--width", "split", "--depth", "identity", "--device", "cpu", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"ligo grow failed ({proc.returncode}): {stderr.strip()}")
    load, build, grow, save = map(float, LINE.search(stdout).groups())
    out_bytes = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    return {"wall_s": wall, "load_s": load, "build_s": build, "grow_s": grow, "save_s": save,
            "peak_rss_mb": usage.ru_maxrss / 1024, "target_mb": out_bytes / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--max-shard-size", default="1GB", help="largest safetensors shard (default 1GB)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--workdir", help="where sources and outputs go (default: a temporary directory)")
    args = ap.parse_args()
    ligo = shutil.which("ligo", path=str(Path(sys.executable).parent)) or "ligo"
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ligo-grow-speed-"))
    rows = []
    for name in args.sizes:
        src_cfg, target = SIZES[name]
        src = work / f"src-{name}"
        if not (src / "config.json").exists():
            n_src = make_source(src_cfg, src)
        else:
            n_src = None
        digests = {}
        for mode in args.modes:
            out = work / f"out-{name}-{mode}"
            r = run_grow(ligo, src, target, out, MODES[mode] + ["--max-shard-size", args.max_shard_size])
            digests[mode] = _digest(out)
            shutil.rmtree(out)
            r.update(size=name, mode=mode, source_params=n_src, max_shard_size=args.max_shard_size,
                     peak_over_target=r["peak_rss_mb"] / r["target_mb"])
            rows.append(r)
            print(f"{name} {mode}: {r}", file=sys.stderr)
        if len(set(digests.values())) > 1:
            raise SystemExit(f"{name}: the paths wrote different weights: {digests}")
        for r in rows[-len(args.modes):]:
            r["same_bytes_as_other_modes"] = len(digests) > 1
    import torch

    print(f"`ligo grow --width split --depth identity --max-shard-size {args.max_shard_size}` (no fit), bf16 "
          f"safetensors, {os.cpu_count()} CPU cores, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{time.strftime('%Y-%m-%d')}\n")
    print("| size | path | end to end (CLI) | load | build operator | grow | save | grown size | peak RSS | "
          "peak / grown |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['mode']} | {r['wall_s']:.1f}s | {r['load_s']:.1f}s | {r['build_s']:.1f}s | "
              f"{r['grow_s']:.1f}s | {r['save_s']:.1f}s | {r['target_mb']:.0f} MB | {r['peak_rss_mb']:.0f} MB | "
              f"{r['peak_over_target']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if not args.workdir:
        shutil.rmtree(work)


def _digest(out: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in sorted(out.glob("*.safetensors")) + sorted(out.glob("*.index.json")):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()


if __name__ == "__main__":
    main()
