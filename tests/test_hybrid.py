"""A hybrid model (issue 32): LFM2 interleaves gated short-convolution layers with attention layers. The
convolution's channels are a space of their own (``conv``: its input projection's three streams, its depthwise
filters), the layer pattern follows the depth plan, and the FFN size the config derives (LFM2's SwiGLU rounding)
is stated in the grown config. The family guarantees (lossless at x2 and at a non-integer ratio, stacking exact,
the default plan trains) run in tests/test_families.py; here what is particular to the hybrid."""

import json

import pytest
import torch

import tiny
from conftest import run_cli
from ligo import GrowthPlan, grow
from ligo.checkpoint import load_checkpoint
from ligo.growth import Grower


@pytest.fixture(scope="module")
def lfm2(tmp_path_factory, tokenizer):
    return tiny.save_model(tiny.make_model("lfm2"), tmp_path_factory.mktemp("lfm2") / "src", tokenizer)


def test_the_layer_pattern_follows_the_depth_plan(lfm2, tmp_path):
    """Stacking [conv, attention] twice gives [conv, attention, conv, attention] in layer_types and in
    full_attn_idxs; identity depth puts each new layer beside its source layer; the derived FFN size is stated."""
    for depth, kinds, idxs in [("stack", ["conv", "full_attention"] * 2, [1, 3]),
                               ("identity", ["conv", "conv", "full_attention", "full_attention"], [2, 3])]:
        grow(lfm2, {"layers": 4}, tmp_path / depth, plan=GrowthPlan(width="split", depth=depth))
        config = json.loads((tmp_path / depth / "config.json").read_text())
        assert config["layer_types"] == kinds and config["full_attn_idxs"] == idxs
        # the source's 96 became a 256-unit FFN through the rounding; the grown config says 256 with the rounding off
        assert config["intermediate_size"] == 256 and config["block_auto_adjust_ff_dim"] is False
    state = load_checkpoint(tmp_path / "stack").state
    assert torch.equal(state["model.layers.2.conv.in_proj.weight"], state["model.layers.0.conv.in_proj.weight"])
    assert "model.layers.3.self_attn.q_proj.weight" in state and "model.layers.2.self_attn.q_proj.weight" not in state


def test_streaming_growth_writes_the_same_tensors(lfm2, tmp_path):
    for stream in (False, True):
        Grower(lfm2, tiny.TARGET["lfm2"], plan=GrowthPlan(width="random", depth="stack"),
               stream=stream).save(tmp_path / str(stream))
    a, b = load_checkpoint(tmp_path / "False").state, load_checkpoint(tmp_path / "True").state
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_fitted_model_is_the_materialized_one(lfm2, blocks, tmp_path):
    """The fit trains through transformers' own convolution path (its slow PyTorch kernel on the CPU)."""
    tiny.fit_and_compare(Grower(lfm2, tiny.TARGET["lfm2"], plan=GrowthPlan(width="random", depth="stack")), blocks,
                         tmp_path / "out")


@pytest.mark.parametrize("width, duplicates", [("copy", 256), ("split", 0)])
def test_inspect_counts_duplicated_convolution_channels(width, duplicates, lfm2, tmp_path):
    """Copied channels are duplicates on both sides; split channels share their writes but read unequal shares."""
    grow(lfm2, tiny.TARGET["lfm2"], tmp_path / "g", plan=GrowthPlan(width=width, depth="stack"))
    units = json.loads(run_cli("inspect", tmp_path / "g", "--units", "--json", check=True).stdout)["units"]
    assert units["conv"]["units"] == 2 * 128 and units["conv"]["duplicate_writes"] == 256  # 2 conv layers x 128
    assert units["conv"]["duplicates"] == duplicates


def test_flops_count_attention_only_where_layers_attend():
    """The analytic FLOPs of a hybrid (attention scores only in its attention layers) match torch's counter."""
    from ligo.config import TrainConfig
    from ligo.flops import measured_flops, step_flops
    from ligo.tables import get_spec

    model = tiny.make_model("lfm2", num_hidden_layers=4, layer_types=["conv", "conv", "conv", "full_attention"],
                            max_position_embeddings=512).train()
    dims = get_spec("lfm2").dims(model.config.to_dict())
    assert dims.attention_layers == 1
    ids = torch.randint(4, tiny.VOCAB, (2, 256))  # (long enough that attention in every layer would be 26% over)
    measured = measured_flops(lambda: model(input_ids=ids, labels=ids).loss)
    analytic = step_flops(model, dims, TrainConfig(batch_size=2, seq_len=256))
    assert abs(analytic - measured) / measured < 0.05, (analytic, measured)
