"""Grow a local Hugging Face checkpoint, losslessly, and check that it computes what the source did.

    python examples/grow_checkpoint.py path/to/llama-like-model --out grown/
    python examples/grow_checkpoint.py --smoke          # makes a tiny random source first

The grown model doubles the width and the depth: `split` width (each new unit a copy of a source unit,
read with unequal shares, so the copies can drift apart in training) and `identity` depth (new layers
whose output projections are zero). Its logits equal the source's; it loads with AutoModelForCausalLM.
"""

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from ligo import grow
from ligo.checkpoint import read_config

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("source", nargs="?", help="a local checkpoint directory (config.json + safetensors)")
ap.add_argument("--out", help="where the grown model goes (default: a temporary directory)")
ap.add_argument("--smoke", action="store_true", help="use a tiny random source model made here")
args = ap.parse_args()

work = Path(tempfile.mkdtemp(prefix="ligo-example-"))
if args.source is None:
    from _tiny import tiny_source

    args.source = tiny_source(work / "source")
out = Path(args.out or work / "grown")

src_cfg = read_config(args.source)
target = {"hidden": 2 * src_cfg["hidden_size"], "layers": 2 * src_cfg["num_hidden_layers"],
          "heads": 2 * src_cfg["num_attention_heads"]}
if "num_key_value_heads" in src_cfg:
    target["kv_heads"] = 2 * src_cfg["num_key_value_heads"]
result = grow(args.source, target, out, width="split", depth="identity", overwrite=True)
print(f"grew {args.source} -> {out} (operator: {result.operator.num_parameters():,} parameters)")

small = AutoModelForCausalLM.from_pretrained(args.source, dtype=torch.float32)
big = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
ids = torch.randint(0, small.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    a, b = small(ids).logits, big(ids).logits
err = ((a - b).abs().max() / a.abs().max()).item()
n_small, n_big = (sum(p.numel() for p in m.parameters()) for m in (small, big))
print(f"parameters {n_small:,} -> {n_big:,}; max relative logit difference {err:.2e}")
assert err < 1e-4, "the lossless growth should reproduce the source's logits"
