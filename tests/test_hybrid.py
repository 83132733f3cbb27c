"""Hybrid models (issue 32). LFM2 interleaves gated short-convolution layers with attention layers: the
convolution's channels are a space of their own (``conv``: its input projection's three streams, its depthwise
filters), the layer pattern follows the depth plan, and the FFN size the config derives (LFM2's SwiGLU rounding)
is stated in the grown config. Qwen3.5 interleaves Gated DeltaNet linear-attention layers with gated attention:
the recurrent value heads (``lv``, with their decays) and the key heads serving them (``lk``) are grown by whole
heads, grouped as grouped-query attention is. The family guarantees (lossless at x2 and at a non-integer ratio,
stacking exact, the default plan trains) run in tests/test_families.py; here what is particular to hybrids.
Granite 4 interleaves Mamba-2 layers with attention: the Mamba heads (``mh``: their input and gate channels in the
packed input projection and the convolution, their dt, A_log, D) grow whole with the hidden size, B and C never."""

import json

import pytest
import torch

import tiny
from conftest import grow_noting_gaps, run_cli
from ligo import GrowthPlan, grow
from ligo.checkpoint import load_checkpoint
from ligo.errors import LigoError
from ligo.growth import Grower


HYBRIDS = ("lfm2", "qwen3_5_text", "qwen3_next", "granitemoehybrid", "falcon_h1")


@pytest.fixture(scope="module")
def hybrids(tmp_path_factory, tokenizer):
    return {mt: tiny.save_model(tiny.make_model(mt), tmp_path_factory.mktemp(mt) / "src", tokenizer) for mt in HYBRIDS}


@pytest.fixture(scope="module")
def lfm2(hybrids):
    return hybrids["lfm2"]


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


@pytest.mark.parametrize("model_type", HYBRIDS)
def test_streaming_growth_writes_the_same_tensors(model_type, hybrids, tmp_path):
    for stream in (False, True):
        Grower(hybrids[model_type], tiny.TARGET[model_type], plan=GrowthPlan(width="random", depth="stack"),
               stream=stream).save(tmp_path / str(stream))
    a, b = load_checkpoint(tmp_path / "False").state, load_checkpoint(tmp_path / "True").state
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("model_type", HYBRIDS)
def test_the_fitted_model_is_the_materialized_one(model_type, hybrids, blocks, tmp_path):
    """The fit trains through transformers' own convolution and delta-rule paths (their slow PyTorch kernels on
    the CPU, where causal-conv1d and flash-linear-attention do not run)."""
    tiny.fit_and_compare(Grower(hybrids[model_type], tiny.TARGET[model_type],
                                plan=GrowthPlan(width="random", depth="stack")), blocks, tmp_path / "out")


@pytest.mark.parametrize("width, duplicates", [("copy", 256), ("split", 0)])
def test_inspect_counts_duplicated_convolution_channels(width, duplicates, lfm2, tmp_path):
    """Copied channels are duplicates on both sides; split channels share their writes but read unequal shares."""
    grow(lfm2, tiny.TARGET["lfm2"], tmp_path / "g", plan=GrowthPlan(width=width, depth="stack"))
    units = json.loads(run_cli("inspect", tmp_path / "g", "--units", "--json", check=True).stdout)["units"]
    assert units["conv"]["units"] == 2 * 128 and units["conv"]["duplicate_writes"] == 256  # 2 conv layers x 128
    assert units["conv"]["duplicates"] == duplicates


@pytest.mark.parametrize("model_type, other", [("lfm2", "conv"), ("qwen3_5_text", "linear_attention"),
                                               ("granitemoehybrid", "mamba")])
def test_flops_count_attention_only_where_layers_attend(model_type, other):
    """The analytic FLOPs of a hybrid (attention scores only in its attention layers, the delta rule's products in
    its linear-attention layers) match torch's counter: a forward, and for LFM2 a training step. (A training step
    is counted as three forwards, as everywhere; torch counts the delta rule's backward higher, its triangular
    solves' gradients being matrix products.)"""
    from ligo.config import TrainConfig
    from ligo.flops import forward_flops_per_token, measured_flops, step_flops
    from ligo.tables import get_spec

    model = tiny.make_model(model_type, num_hidden_layers=4, layer_types=[other] * 3 + ["full_attention"],
                            max_position_embeddings=512).train()
    dims = get_spec(model_type).dims(model.config.to_dict())
    assert dims.attention_layers == (3,)
    ids = torch.randint(4, tiny.VOCAB, (2, 256))  # (long enough that attention in every layer would be 26% over)
    measured = measured_flops(lambda: model(input_ids=ids).logits.detach())  # (a forward only)
    analytic = forward_flops_per_token(model, dims, 256) * ids.numel()
    assert abs(analytic - measured) / measured < 0.05, (analytic, measured)
    if model_type == "lfm2":
        measured = measured_flops(lambda: model(input_ids=ids, labels=ids).loss)
        analytic = step_flops(model, dims, TrainConfig(batch_size=2, seq_len=256))
        assert abs(analytic - measured) / measured < 0.05, (analytic, measured)


_X15 = {"linear_num_key_heads": 3, "linear_num_value_heads": 6, "hidden_size": 80, "num_hidden_layers": 3}


@pytest.mark.parametrize("model_type, target", [
    ("qwen3_5_text", {"linear_num_value_heads": 8}),  # each key head serves 4 value heads instead of 2
    ("qwen3_5_text", {"linear_num_key_heads": 4}),  # each key head (copied) serves one value head instead of 2
    ("qwen3_5_text", _X15),  # x1.5 heads and residual stream, a new layer
    ("qwen3_next", _X15),  # its packed groups (in_proj_qkvz, in_proj_ba) copied whole, the experts as they are
])
def test_gated_deltanet_grows_its_recurrent_heads_losslessly(model_type, target, hybrids, text_ids, tmp_path):
    """New value heads copy a source head of their key head's group with its decay (A_log, dt_bias) and its rows of
    the a/b projections and the output gate; split shares the output projection's reads between the copies."""
    grow(hybrids[model_type], target, tmp_path / "out", plan=GrowthPlan(width="split", depth="identity"))
    diff, model = tiny.max_logit_diff(hybrids[model_type], tmp_path / "out", text_ids)
    assert diff <= 1e-4, diff
    gdn = model.model.layers[0].linear_attn
    assert (gdn.num_v_heads, gdn.num_k_heads) == (target.get("linear_num_value_heads", 4),
                                                  target.get("linear_num_key_heads", 2))


def test_gated_deltanet_heads_copy_their_decays(hybrids, tmp_path):
    """With copy width, target value head x is source head (x mod 4) of the same key-head group, its A_log and
    dt_bias verbatim; the output projection reads each copy at half weight."""
    grow(hybrids["qwen3_5_text"], {"linear_num_key_heads": 4, "linear_num_value_heads": 8}, tmp_path / "out",
         plan=GrowthPlan(width="copy", depth="stack"))
    src, got = load_checkpoint(hybrids["qwen3_5_text"]).state, load_checkpoint(tmp_path / "out").state
    sel = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])  # key heads 0,1,2,3 <- 0,1,0,1; their groups' value heads likewise
    for name in ("A_log", "dt_bias"):
        key = f"model.layers.0.linear_attn.{name}"
        assert torch.equal(got[key], src[key][sel])
    out = "model.layers.0.linear_attn.out_proj.weight"
    torch.testing.assert_close(got[out], src[out].view(64, 4, 16)[:, sel].reshape(64, 128) / 2)


@pytest.mark.parametrize("model_type, target, message", [
    ("qwen3_5_text", {"linear_key_head_dim": 32}, r"linear-attention k head size would change from 16 to 32"),
    ("qwen3_5_text", {"linear_num_key_heads": 3}, r"linear-attention key heads \(3\) do not divide its value heads"),
    ("qwen3_next", {"linear_num_value_heads": 8}, r"packs each linear-attention key head with its 2 value heads"),
])
def test_bad_recurrent_head_targets_are_one_clear_line(model_type, target, message, hybrids, tmp_path):
    with pytest.raises(LigoError, match=message):
        grow(hybrids[model_type], target, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("width, writes, duplicates", [("copy", 16, 16), ("split", 8, 0)])
def test_inspect_counts_duplicated_recurrent_heads(width, writes, duplicates, hybrids, tmp_path):
    """Copied value heads are duplicates in both layers of each kind; split: the new identity layers' heads start as
    random mixtures (their outputs start at zero), the copies in the source's layers read unequal shares."""
    grow(hybrids["qwen3_5_text"], tiny.TARGET["qwen3_5_text"], tmp_path / "g", plan=GrowthPlan(width=width,
                                                                                               depth="identity"))
    units = json.loads(run_cli("inspect", tmp_path / "g", "--units", "--json", check=True).stdout)["units"]
    assert units["lin_heads"]["units"] == 2 * 8 and units["lin_kv_heads"]["units"] == 2 * 4  # 2 linear layers
    assert units["lin_heads"]["duplicate_writes"] == writes and units["lin_heads"]["duplicates"] == duplicates


X2 = {"hidden": 128, "heads": 8, "kv_heads": 4, "layers": 4}


def test_mamba_heads_follow_the_hidden_size(hybrids, text_ids, tmp_path):
    """Granite 4's Mamba layers hold mamba_expand x hidden channels: x2 hidden gives 8 heads of 32 (the grown config
    says so without being told), each a copy of a source head with its dt, A_log and D; exact, new layers included."""
    grow(hybrids["granitemoehybrid"], X2, tmp_path / "out", plan=GrowthPlan(width="copy", depth="identity"))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["mamba_n_heads"], config["mamba_d_head"], config["mamba_expand"]) == (8, 32, 2)
    diff, _ = tiny.max_logit_diff(hybrids["granitemoehybrid"], tmp_path / "out", text_ids)
    assert diff <= 1e-4, diff
    src, got = load_checkpoint(hybrids["granitemoehybrid"]).state, load_checkpoint(tmp_path / "out").state
    sel = torch.arange(8) % 4
    for name in ("A_log", "D", "dt_bias"):
        assert torch.equal(got[f"model.layers.0.mamba.{name}"], src[f"model.layers.0.mamba.{name}"][sel])
    rows = got["model.layers.0.mamba.in_proj.weight"].shape[0]
    assert rows == 2 * 256 + 2 * 8 + 8  # z and x channels, B and C (one group of 8: never grown), dt a head


def test_a_non_integer_mamba_head_ratio_is_said(hybrids, text_ids, tmp_path):
    """Hidden x1.5 gives 6 Mamba heads from 4: the gated norm over each group of heads sees another statistic, and
    `ligo grow` says so instead of calling the plan lossless (the attention and the rest stay exact)."""
    notes, diff = grow_noting_gaps(hybrids["granitemoehybrid"], {"hidden": 96, "heads": 6, "kv_heads": 3},
                                   tmp_path / "out", text_ids)
    assert len(notes) == 1 and "Mamba" in notes[0] and "(4 -> 6" in notes[0], notes
    assert diff > 1e-4


def test_a_hub_config_names_its_layers_mamba_and_attention(hybrids, text_ids, tmp_path):
    """Granite 4's released configs say ["mamba", "attention"] (transformers writes linear_attention and
    full_attention): both are read."""
    import shutil

    src = tmp_path / "hub"
    shutil.copytree(hybrids["granitemoehybrid"], src)
    config = json.loads((src / "config.json").read_text())
    config["layer_types"] = ["mamba", "attention"]
    (src / "config.json").write_text(json.dumps(config))
    grow(src, {"layers": 4}, tmp_path / "out", plan=GrowthPlan(width="split", depth="identity"))
    diff, _ = tiny.max_logit_diff(src, tmp_path / "out", text_ids)
    assert diff <= 1e-4, diff


def test_granite_experts_grow_beside_the_mamba_layers(tmp_path, text_ids):
    """A Granite 4 with experts (stacked in the checkpoint, a shared MLP beside them): x2 width, depth and experts,
    every copy of each chosen expert used: exact."""
    src = tiny.save_model(tiny.make_model("granitemoehybrid", num_local_experts=4, num_experts_per_tok=2,
                                          intermediate_size=48), tmp_path / "src")
    grow(src, {"hidden": 128, "heads": 8, "kv_heads": 4, "layers": 4, "experts": 8, "experts_per_token": 4, "ffn": 96},
         tmp_path / "out", plan=GrowthPlan(width="copy", depth="identity"))
    diff, model = tiny.max_logit_diff(src, tmp_path / "out", text_ids)
    assert diff <= 1e-4, diff
    assert (model.config.num_local_experts, model.config.num_experts_per_tok) == (8, 4)


@pytest.mark.parametrize("target, message", [
    ({"mamba_d_state": 16}, r"the Mamba state size would change from 8 to 16"),
    ({**X2, "mamba_n_heads": 6}, r"invalid granitemoehybrid config: mamba_n_heads must divide mamba_expand"),
])
def test_bad_mamba_targets_are_one_clear_line(target, message, hybrids, tmp_path):
    with pytest.raises(LigoError, match=message):
        grow(hybrids["granitemoehybrid"], target, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("width, duplicates", [("copy", 16), ("split", 0)])
def test_inspect_counts_duplicated_mamba_heads(width, duplicates, hybrids, tmp_path):
    grow(hybrids["granitemoehybrid"], X2, tmp_path / "g", plan=GrowthPlan(width=width, depth="stack"))
    units = json.loads(run_cli("inspect", tmp_path / "g", "--units", "--json", check=True).stdout)["units"]
    assert units["mamba_heads"]["units"] == 2 * 8 and units["mamba_heads"]["duplicate_writes"] == 16
    assert units["mamba_heads"]["duplicates"] == duplicates


@pytest.mark.parametrize("width", ["copy", "split"])
def test_qwen3_5_upcycles_into_its_mixture_of_experts(width, hybrids, text_ids, tmp_path):
    """A dense Qwen3.5 becomes a Qwen3.5-MoE: its FFN copied into 4 routed experts (2 a token, renormalized: the copies
    sum to the FFN), a new shared expert whose down projection starts at zero behind its gate, at twice the width and
    depth; the grown model computes the source's function and its shared expert learns (it gets a gradient)."""
    target = {**tiny.TARGET["qwen3_5_text"], "experts": 4, "experts_per_token": 2, "shared_expert_intermediate_size": 96}
    grow(hybrids["qwen3_5_text"], target, tmp_path / "out", plan=GrowthPlan(width=width, depth="identity"))
    diff, model = tiny.max_logit_diff(hybrids["qwen3_5_text"], tmp_path / "out", text_ids)
    assert diff <= 1e-4, diff
    assert type(model).__name__ == "Qwen3_5MoeForCausalLM" and model.config.num_experts == 4
    shared = model.model.layers[0].mlp.shared_expert
    assert not shared.down_proj.weight.any() and shared.up_proj.weight.std() > 0
    model.train()
    model(input_ids=text_ids, labels=text_ids).loss.backward()
    assert shared.down_proj.weight.grad.abs().sum() > 0


def test_nemotron_h_reads_its_pattern_and_grows_each_kind_of_layer(tokenizer, text_ids, tmp_path):
    """Nemotron-H's layers are single mixers (Mamba-2, an MLP, attention, experts) that its released configs name by
    a pattern ("M-*E", with num_hidden_layers). Its checkpoint says backbone. where the model says model.. x2 width,
    Mamba heads 4 -> 8 (they need not follow the hidden size here), 4 -> 8 layers: exact; the grown config states
    the layers' kinds (as a list: transformers writes no pattern), each new layer beside its source layer."""
    src = tiny.save_model(tiny.make_model("nemotron_h"), tmp_path / "src", tokenizer)
    config = json.loads((src / "config.json").read_text())
    config.pop("layers_block_type")
    (src / "config.json").write_text(json.dumps({**config, "hybrid_override_pattern": "M-*E", "num_hidden_layers": 4}))
    grow(src, {**tiny.TARGET["nemotron_h"], "num_hidden_layers": 8}, tmp_path / "out",
         plan=GrowthPlan(width="copy", depth="identity"))  # (copy: split experts would start from a noisy router)
    diff, model = tiny.max_logit_diff(src, tmp_path / "out", text_ids)
    assert diff <= 1e-4, diff
    grown = json.loads((tmp_path / "out" / "config.json").read_text())
    kinds = [kind for kind in ("linear_attention", "mlp", "full_attention", "moe") for _ in range(2)]
    assert grown["layers_block_type"] == kinds == model.config.layers_block_type  # (transformers drops the pattern)
    assert model.model.layers[1].mixer.num_heads == 8
    assert not model.model.layers[1].mixer.out_proj.weight.any()  # a new identity layer


def test_falcon_h1_runs_attention_and_mamba_in_every_layer():
    """Falcon-H1's layers attend and scan side by side: the analytic forward FLOPs count both in every layer and
    match torch's counter (< 2%: the depthwise convolution is left out)."""
    from ligo.flops import forward_flops_per_token, measured_flops
    from ligo.tables import get_spec

    model = tiny.make_model("falcon_h1", max_position_embeddings=512)
    dims = get_spec("falcon_h1").dims(model.config.to_dict())
    assert dims.attention_layers == dims.recurrent_layers == (0, 1)
    ids = torch.randint(4, tiny.VOCAB, (2, 256))
    measured = measured_flops(lambda: model(input_ids=ids).logits.detach())
    assert abs(forward_flops_per_token(model, dims, 256) * ids.numel() / measured - 1) < 0.02


def test_lfm2_moe_layers_differ_along_two_rules(tokenizer, tmp_path):
    """LFM2-MoE's layers are a convolution or attention (layer_types) and hold a dense FFN or experts (the first
    num_dense_layers dense): both follow the depth plan, and a plan the config cannot say (a dense layer after an
    MoE one, as stacking would give) is refused in one line."""
    src = tiny.save_model(tiny.make_model("lfm2_moe"), tmp_path / "src", tokenizer)
    grow(src, {"layers": 4}, tmp_path / "out", plan=GrowthPlan(width="split", depth="identity"))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["layer_types"] == ["conv", "conv", "full_attention", "full_attention"]
    assert config["num_dense_layers"] == 2
    state = load_checkpoint(tmp_path / "out").state
    assert "model.layers.1.feed_forward.w1.weight" in state and "model.layers.2.feed_forward.gate.weight" in state
    with pytest.raises(LigoError, match="puts a dense layer after a moe layer"):
        grow(src, {"layers": 4}, tmp_path / "stacked", plan=GrowthPlan(width="split", depth="stack"))
    assert not (tmp_path / "stacked").exists()
