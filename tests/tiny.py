"""Tiny random Hugging Face models of every supported architecture, built in-process (no network)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as T

VOCAB = 384

SOURCE = {
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=64),
    "bert": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=64),
    "roberta": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                    max_position_embeddings=66, pad_token_id=1),
    "llama": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=96, max_position_embeddings=128),
    "mistral": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=96, max_position_embeddings=128),
    "qwen2": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=96, max_position_embeddings=128),
}
# Integer width ratio and more layers: the lossless case.
TARGET = {
    "gpt2": dict(n_embd=64, n_layer=4, n_head=8),
    "bert": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=8, intermediate_size=128),
    "roberta": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=8, intermediate_size=128),
    "llama": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                  intermediate_size=192),
    "mistral": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                    intermediate_size=192),
    "qwen2": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                  intermediate_size=192),
}
DECODERS = ("gpt2", "llama", "mistral", "qwen2")
ARCHS = tuple(SOURCE)


def config(model_type: str, **overrides):
    kw = dict(SOURCE[model_type], vocab_size=VOCAB, **overrides)
    if model_type in ("bert", "roberta"):
        kw.setdefault("hidden_dropout_prob", 0.0)
        kw.setdefault("attention_probs_dropout_prob", 0.0)
    if model_type == "gpt2":
        kw.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    if model_type in ("llama", "mistral", "qwen2"):
        kw.update(bos_token_id=0, eos_token_id=0, pad_token_id=1)
    return T.AutoConfig.for_model(model_type, **kw)


def model_cls(model_type: str, bare: bool = False):
    if bare:
        return T.AutoModel
    return T.AutoModelForCausalLM if model_type in DECODERS else T.AutoModelForMaskedLM


def make_model(model_type: str, bare: bool = False, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = config(model_type, **overrides)
    cfg._attn_implementation = "eager"
    model = model_cls(model_type, bare).from_config(cfg)
    with torch.no_grad():  # non-trivial norms so that tests see them
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def save_model(model, path: Path, tokenizer=None) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path
