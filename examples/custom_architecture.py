"""Teach ligo a model family it does not ship with: OLMo (AI2), as one table of data.

    python examples/custom_architecture.py          # builds a tiny random OLMo here, grows it, checks it

OLMo-1 is Llama-like but its LayerNorms have no weights at all, so its table simply lists fewer
weights. Every weight names the space of each axis; nothing else is needed (see docs/architectures.md).
One consequence is visible in the table: with no final-norm gain to absorb the copies' fan-in, the
untied LM head reads the residual stream as `res.in` (Llama's head is `res` and its final norm `res.in`).
The growth is lossless (`split` width, `identity` depth): the grown model's logits equal the source's.
"""

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from ligo import grow
from ligo.tables import register_architecture

OLMO = {
    "model_type": "olmo",
    "objective": "causal-lm",
    "rope": True,
    "config": {"layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_attention_heads",
               "kv_heads": "num_key_value_heads", "ffn": "intermediate_size", "vocab": "vocab_size",
               "positions": "max_position_embeddings", "tie": "tie_word_embeddings"},
    "base_prefix": "model.",
    "layer_prefix": "layers.{i}.",
    "globals": {"embed_tokens.weight": ["vocab", "res"]},
    "layer": {
        "self_attn.q_proj.weight": ["q", "res.in"],
        "self_attn.k_proj.weight": ["k", "res.in"],
        "self_attn.v_proj.weight": ["v", "res.in"],
        "self_attn.o_proj.weight": ["res", "o.in"],
        "mlp.gate_proj.weight": ["ffn", "res.in"],
        "mlp.up_proj.weight": ["ffn", "res.in"],
        "mlp.down_proj.weight": ["res", "ffn.in"],
    },
    "head": {"lm_head.weight": ["vocab", "res.in"]},
    "tied": {},
    "identity_zero": ["self_attn.o_proj", "mlp.down_proj"],
    "layer_lists": [],
    "ignore": [],
}

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--smoke", action="store_true", help="(the example is already small; accepted for uniformity)")
args = ap.parse_args()

spec = register_architecture(OLMO)
print(f"registered {spec.model_type}: {len(spec.entries)} weight entries")

from _tiny import tiny_source  # noqa: E402

work = Path(tempfile.mkdtemp(prefix="ligo-example-"))
source = tiny_source(work / "olmo", model_type="olmo")
grow(source, {"hidden": 128, "layers": 4, "heads": 8, "kv_heads": 8}, work / "grown", width="split", depth="identity")

small = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
big = AutoModelForCausalLM.from_pretrained(work / "grown", dtype=torch.float32)
ids = torch.randint(0, small.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    a, b = small(ids).logits, big(ids).logits
err = ((a - b).abs().max() / a.abs().max()).item()
print(f"olmo {small.config.num_hidden_layers}x{small.config.hidden_size} -> "
      f"{big.config.num_hidden_layers}x{big.config.hidden_size}: max relative logit difference {err:.2e}")
assert err < 1e-4
