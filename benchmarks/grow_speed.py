"""Growth speed: load / grow / save seconds and peak memory of `ligo grow` (no fit), by model size.

Each source is a random Llama-shaped checkpoint written here as bf16 safetensors (nothing is
downloaded); each grow runs the real console script in a fresh process, timed end to end, and its
peak resident memory is read from the kernel (wait4). The default sizes end with the issue's case:
a 135M Llama (576 wide, 9 heads, 3 kv heads, 30 layers) grown into the 360M shape (960, 15, 5, 32).

    python benchmarks/grow_speed.py                       # all sizes, markdown table on stdout
    python benchmarks/grow_speed.py --sizes 135M-360M --json out.json
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
}
LINE = re.compile(r"load ([\d.]+)s, build ([\d.]+)s, grow ([\d.]+)s, save ([\d.]+)s")


def make_source(cfg: dict, path: Path) -> int:
    """A random bf16 Llama checkpoint (with a tiny tokenizer); returns its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**cfg, max_position_embeddings=2048, tie_word_embeddings=True, head_dim=64)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def run_grow(ligo: str, src: Path, target: dict, out: Path) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen([ligo, "grow", str(src), "--target", json.dumps(target), "--out", str(out),
                             "--width", "split", "--depth", "identity"],
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
        r = run_grow(ligo, src, target, work / f"out-{name}")
        shutil.rmtree(work / f"out-{name}")
        r.update(size=name, source_params=n_src, peak_over_target=r["peak_rss_mb"] / r["target_mb"])
        rows.append(r)
        print(f"{name}: {r}", file=sys.stderr)
    import torch

    print(f"`ligo grow --width split --depth identity` (no fit), bf16 safetensors, {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, {time.strftime('%Y-%m-%d')}\n")
    print("| size | end to end (CLI) | load | build operator | grow | save | grown size | peak RSS | peak / grown |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['wall_s']:.1f}s | {r['load_s']:.1f}s | {r['build_s']:.1f}s | {r['grow_s']:.1f}s | "
              f"{r['save_s']:.1f}s | {r['target_mb']:.0f} MB | {r['peak_rss_mb']:.0f} MB | "
              f"{r['peak_over_target']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
