"""A GGUF source (llama.cpp's format), written here with the gguf package from a tiny random Llama, converted
by ligo.gguf into a safetensors checkpoint that computes what the original computes, then grown."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T

import tiny

gguf = pytest.importorskip("gguf")


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's layout of a q/k projection: each head's rotary halves interleaved (as its converter writes)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, tokenizer, path, quantize_embedding: bool = True):
    """The model and its byte-level BPE tokenizer as a GGUF file, the token embedding in Q8_0 (as real files
    ship it) when ``quantize_embedding``; returns the weights the file holds, dequantized (the reference)."""
    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    tokens = [t for t, _ in sorted(spec["vocab"].items(), key=lambda kv: kv[1])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["merges"]])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    reference = dict(sd)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    emb = sd["model.embed_tokens.weight"]
    if quantize_embedding:
        packed = gguf.quants.quantize(emb, gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor("token_embd.weight", packed, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        reference["model.embed_tokens.weight"] = gguf.quants.dequantize(packed, gguf.GGMLQuantizationType.Q8_0)
    else:
        w.add_tensor("token_embd.weight", emb)
    reference["lm_head.weight"] = reference["model.embed_tokens.weight"]
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    for i in range(cfg.num_hidden_layers):
        for hf, name in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if name == "attn_q":
                t = _permute(t, cfg.num_attention_heads)
            elif name == "attn_k":
                t = _permute(t, cfg.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{name}.weight", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in reference.items()}


@pytest.fixture(scope="module")
def gguf_source(tmp_path_factory, tokenizer):
    """(a GGUF file of a tiny tied Llama, the HF model with the weights the file holds)."""
    root = tmp_path_factory.mktemp("gguf")
    model = tiny.make_model("llama", tie_word_embeddings=True)
    reference = write_gguf(model, tokenizer, root / "tiny.Q8_0.gguf")
    model.load_state_dict({k: v for k, v in reference.items()}, strict=False)
    return root / "tiny.Q8_0.gguf", model


def test_convert_gguf_computes_what_the_file_holds(gguf_source, tokenizer, tmp_path):
    from ligo.gguf import convert_gguf

    path, reference = gguf_source
    out = convert_gguf(path, tmp_path / "converted")
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert not any(p.suffix in (".bin", ".pt", ".gguf") for p in out.iterdir())
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config and config["tie_word_embeddings"]
    model = T.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    ids = torch.tensor([tokenizer.encode("def grow(model):\n    return model.wider()\n")])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    converted_tok = T.AutoTokenizer.from_pretrained(out)
    text = "class Grower:\n    pass  # ünïcode"
    assert converted_tok.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)


def test_converted_gguf_grows_losslessly(gguf_source, tmp_path, tokenizer):
    from ligo import grow
    from ligo.gguf import convert_gguf

    path, _ = gguf_source
    src = convert_gguf(path, tmp_path / "src")
    grow(src, {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4,
               "intermediate_size": 192}, tmp_path / "grown")
    ids = torch.tensor([tokenizer.encode("import os\nprint(os.getcwd())\n")])
    diff, _ = tiny.max_logit_diff(src, tmp_path / "grown", ids)
    assert diff <= 1e-4


def test_convert_gguf_in_bfloat16(gguf_source, tmp_path):
    from safetensors.torch import load_file

    from ligo.gguf import convert_gguf

    path, reference = gguf_source
    out = convert_gguf(path, tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    weights = load_file(out / "model.safetensors")
    expected = reference.state_dict()
    assert all(t.dtype == torch.bfloat16 for t in weights.values())
    for key, t in weights.items():
        assert torch.equal(t, expected[key].to(torch.bfloat16)), key


def test_convert_gguf_refusals(tmp_path, gguf_source):
    from ligo.errors import LigoError
    from ligo.gguf import convert_gguf

    path, _ = gguf_source
    with pytest.raises(LigoError, match="not a file"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(LigoError, match="already exists"):
        convert_gguf(path, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(LigoError, match="could not be read"):
        convert_gguf(bad, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("cut", [6, 20, 30, 100, 1000, 5000])
def test_a_gguf_cut_short_is_one_clear_error(cut, gguf_source, tmp_path):
    """A download cut inside the header or the metadata: the gguf package's reader raised a raw struct.error there
    (a cut among the tensors was already one line); now every cut is one LigoError, and nothing is written."""
    from ligo.errors import LigoError
    from ligo.gguf import convert_gguf

    path, _ = gguf_source
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(LigoError, match="could not be read as a causal language model by transformers \\(the file is "
                                        "cut short or corrupt\\)") as info:
        convert_gguf(bad, tmp_path / "out")
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_grow_of_a_gguf_file_points_to_the_converter(gguf_source, tmp_path, cli):
    from conftest import assert_one_line_error

    path, _ = gguf_source
    proc = cli("grow", path, "--target", '{"hidden": 128}', "--out", tmp_path / "g")
    assert_one_line_error(proc, "grow", "is a GGUF file \\(llama.cpp's format\\), which ligo reads once converted into a "
                                        "checkpoint folder: python -c .*convert_gguf\\(")
    assert not (tmp_path / "g").exists()

def test_r_reader_reads_a_package_lazyload_database(tmp_path):
    """benchmarks/real_source.py reads the corpus out of an R package without R: a lazy-load database written
    here byte by byte in R's own serialization format (version 3), with a character vector holding an NA."""
    import gzip
    import struct
    import zlib

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "real_source.py"
    spec = importlib.util.spec_from_file_location("real_source", script)
    real_source = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(real_source)

    def i(v):
        return struct.pack(">i", v)

    def header():
        return b"X\n" + i(3) + i(0x40300) + i(0x30500) + i(5) + b"UTF-8"

    def chars(s):
        return i(9) + i(-1) if s is None else i(0x40009) + i(len(s.encode())) + s.encode()

    def strvec(items):
        return i(16) + i(len(items)) + b"".join(chars(s) for s in items)

    def named_list(items: dict):  # VECSXP with a names attribute (a pairlist tagged by the symbol 'names')
        body = b"".join(items.values())
        return (i(19 | 512) + i(len(items)) + body + i(2 | 1024) + i(1) + chars("names") +
                strvec(list(items)) + i(254))

    def intvec(values):
        return i(13) + i(len(values)) + b"".join(i(v) for v in values)

    novels = {"emma": ["EMMA", "", None, "By Jane Austen"], "persuasion": ["Persuasion", "Chapter 1"]}
    rdb, offsets = b"", {}
    for name, lines in novels.items():
        raw = header() + strvec(lines)
        entry = i(len(raw)) + zlib.compress(raw)
        offsets[name] = (len(rdb), len(entry))
        rdb += entry
    index = header() + named_list({"variables": named_list({k: intvec(list(v)) for k, v in offsets.items()}),
                                   "references": i(19) + i(0), "compressed": i(10) + i(1) + i(1)})
    out = real_source.r_lazyload(gzip.compress(index), rdb)
    assert out == {"emma": ["EMMA", "", None, "By Jane Austen"], "persuasion": ["Persuasion", "Chapter 1"]}
