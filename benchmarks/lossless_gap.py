"""Initial loss gap of the lossless inits: held-out loss of the grown model minus the source's.

Exact (zero gap, up to fp32 rounding) for RMSNorm families at any width ratio (scaled copies keep the
statistic where some units are copied more often than others, e.g. a Llama 576 -> 960 hidden), and for
LayerNorm families at integer ratios. Run it on a trained source, such as the one `ligo bench` leaves in
bench-results/<experiment>/source:

    python benchmarks/lossless_gap.py bench-results/cpu-tiny/source
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()

SHAPES = {  # generic target shapes, relative to the source's width (x1.5 and x2) and depth
    "x1.5 width (non-integer), +1 layer": lambda d: dict(hidden=d.hidden * 3 // 2, heads=d.heads * 3 // 2,
                                                          kv_heads=d.kv_heads * 3 // 2, ffn=d.ffn * 3 // 2,
                                                          layers=d.layers + 1),
    "x2 width (integer), x2 layers": lambda d: dict(hidden=d.hidden * 2, heads=d.heads * 2, kv_heads=d.kv_heads * 2,
                                                    ffn=d.ffn * 2, layers=d.layers * 2),
}


def held_out_loss(model_dir: Path, blocks: torch.Tensor, objective: str, tok) -> float:
    from ligo.hf import model_class
    from ligo.loop import make_collate

    model = model_class(objective).from_pretrained(model_dir, dtype=torch.float32).eval()
    collate = make_collate(objective, tok, seed=0)
    with torch.no_grad():
        losses = [model(**collate(list(blocks[i:i + 8]))).loss.item() for i in range(0, len(blocks), 8)]
    return sum(losses) / len(losses)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="a trained source model directory")
    ap.add_argument("--data", help="held-out text (default: the stdlib's source, last 5%%)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--blocks", type=int, default=64, help="held-out blocks scored")
    args = ap.parse_args()

    from ligo import grow
    from ligo.checkpoint import load_checkpoint
    from ligo.data import load_blocks
    from ligo.checkpoint import load_tokenizer

    ck = load_checkpoint(args.source)
    tok = load_tokenizer(args.source)
    blocks = load_blocks(args.data, tok, args.seq_len).val[: args.blocks]
    base = held_out_loss(Path(args.source), blocks, ck.spec.objective, tok)
    print(f"source {ck.spec.model_type} {ck.dims.layers}x{ck.dims.hidden}: held-out loss {base:.4f} "
          f"({len(blocks)} blocks of {args.seq_len})\n")
    print("| target | width init | depth init | held-out loss | gap |\n|---|---|---|---|---|")
    work = Path(tempfile.mkdtemp(prefix="ligo-gap-"))
    rows = []
    for name, shape in SHAPES.items():
        target = shape(ck.dims)
        for width, depth in (("split", "identity"), ("copy", "identity"), ("copy", "stack"), ("random", "stack")):
            out = work / f"{len(rows)}"
            grow(args.source, target, out, width=width, depth=depth)
            loss = held_out_loss(out, blocks, ck.spec.objective, tok)
            rows.append({"target": name, "shape": target, "width": width, "depth": depth, "loss": loss,
                         "gap": loss - base})
            print(f"| {name} ({target['layers']}x{target['hidden']}) | {width} | {depth} | {loss:.4f} | "
                  f"{loss - base:+.4f} |")
    (work / "gap.json").write_text(json.dumps({"source_loss": base, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
