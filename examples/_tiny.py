"""Helpers for the examples: a tiny random source model and a tokenizer made here (no download)."""

from __future__ import annotations

from pathlib import Path


def tiny_source(path: Path, model_type: str = "llama", vocab: int = 512) -> Path:
    """Save a small random model (and a BPE tokenizer trained on the stdlib's source) into ``path``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ligo.data import stdlib_texts, train_tokenizer

    tok = train_tokenizer(stdlib_texts(300_000), vocab, path / "tokenizer")
    sizes = {"llama": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=128, max_position_embeddings=256, tie_word_embeddings=True),
             "olmo": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                          max_position_embeddings=256, pad_token_id=1, eos_token_id=0, bos_token_id=None)}
    config = AutoConfig.for_model(model_type, vocab_size=len(tok), **sizes[model_type])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
