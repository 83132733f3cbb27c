"""The families of 2025-26 (issue 31): every guarantee of the older families, on tiny random checkpoints that
transformers' own config classes build (tests/tiny.py). GPT-OSS: an attention sink per head, biases on every
projection, experts held stacked over the experts with interleaved (gate, up) units and their biases, a router
with a bias, sliding and full layers. GLM-4.5 and Llama 4: layers of two kinds (dense and mixture of experts: the
first k, or the listed ones), shared experts beside the routed ones, sigmoid routers."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import tiny
from conftest import grow_noting_gaps, run_cli
from ligo import GrowthPlan, grow
from ligo.checkpoint import load_checkpoint
from ligo.growth import Grower

NEW = ("gpt_oss", "glm4_moe", "llama4_text", "qwen3_next", "qwen3_5_moe_text", "deepseek_v3", "glm4_moe_lite",
       "nemotron_h", "lfm2_moe")
KINDS = ("glm4_moe", "llama4_text", "deepseek_v3", "glm4_moe_lite")  # layers of two kinds


@pytest.fixture(scope="module")
def new_sources(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("new-families")
    out = {mt: tiny.save_model(tiny.make_model(mt), root / mt, tokenizer) for mt in NEW}
    out["glm4_moe-raw"] = tiny.save_model(tiny.make_model("glm4_moe", norm_topk_prob=False), root / "glm-raw", tokenizer)
    return out


@pytest.mark.parametrize("width", ["split", "copy"])
@pytest.mark.parametrize("model_type", NEW)
def test_lossless_plan_gives_the_sources_logits(model_type, width, new_sources, text_ids, tmp_path):
    """x2 residual, heads, kv heads and FFN, 2 -> 4 layers, same experts: max |logit difference| <= 1e-4 on
    real text (a split copy's sink is its head's: the copies attend alike)."""
    target = {k: v for k, v in tiny.TARGET[model_type].items() if k not in ("experts", "experts_per_token")}
    grow(new_sources[model_type], target, tmp_path / "out", plan=GrowthPlan(width=width, depth="identity"))
    diff, model = tiny.max_logit_diff(new_sources[model_type], tmp_path / "out", text_ids)
    assert diff <= 1e-4, diff
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.num_attention_heads) == (4, 128, 8)
    source = json.loads((new_sources[model_type] / "config.json").read_text())
    if "layer_types" in source:  # each layer, then its new copy
        assert model.config.layer_types == [t for t in source["layer_types"] for _ in range(2)]


@pytest.mark.parametrize("model_type", NEW)
def test_lossless_at_a_non_integer_ratio(model_type, new_sources, text_ids, tmp_path):
    """Hidden 64 -> 80, every FFN by 5/4 (GPT-OSS's interleaved gate/up pairs kept whole; the dense layers', the
    experts' and the shared experts' FFN each grown), 2 -> 3 layers: exact."""
    target = {"hidden_size": 80, "num_hidden_layers": 3, "intermediate_size": 120}
    hybrid = {"moe_intermediate_size": 60, "shared_expert_intermediate_size": 80}
    target.update({
        "glm4_moe": {"moe_intermediate_size": 60},
        "llama4_text": {"intermediate_size": 60, "intermediate_size_mlp": 120},
        "qwen3_next": hybrid, "qwen3_5_moe_text": hybrid,
        # (no explicit head_dim: x1.5 with 6 heads)
        "lfm2_moe": {"moe_intermediate_size": 60, "hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 3},
        # (4 source layers)
        "nemotron_h": {"num_hidden_layers": 6, "moe_intermediate_size": 60, "moe_shared_expert_intermediate_size": 60},
    }.get(model_type, {}))
    grow(new_sources[model_type], target, tmp_path / "out", plan=GrowthPlan(width="split", depth="identity"))
    diff, _ = tiny.max_logit_diff(new_sources[model_type], tmp_path / "out", text_ids)
    assert diff <= 1e-4, diff


def test_gpt_oss_stacking_and_expert_copies_are_exact(new_sources, tmp_path):
    """Copy width, stacked depth (2 -> 3 layers), 4 -> 8 experts: target layer i is source layer i mod 2 and
    expert x source expert x mod 4, verbatim, the stacked tensors, their biases, the router's rows and bias."""
    grow(new_sources["gpt_oss"], {"layers": 3, "experts": 8, "experts_per_token": 4}, tmp_path / "out",
         plan=GrowthPlan(width="copy", depth="stack"))
    src, out = load_checkpoint(new_sources["gpt_oss"]).state, load_checkpoint(tmp_path / "out").state
    assert out.keys() == {k.replace("layers.0.", f"layers.{i}.") for k in src if "layers.1." not in k
                          for i in range(3)} | {k for k in src if ".layers." not in k}
    copies = torch.arange(8) % 4
    for key, value in out.items():
        ref = key
        if ".layers." in key:
            i = int(key.split(".layers.")[1].split(".")[0])
            ref = key.replace(f".layers.{i}.", f".layers.{i % 2}.")
        expected = src[ref][copies] if (".experts." in key or ".router." in key) else src[ref]
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("source", [*NEW, "glm4_moe-raw"])
def test_experts_grow_losslessly(source, new_sources, text_ids, tmp_path):
    """8 experts, 4 per token: every copy of each chosen expert is chosen. GPT-OSS's softmax over the chosen logits
    and GLM's renormalized sigmoid scores give each copy half its source's weight; Llama 4's sigmoid (and GLM's
    with norm_topk_prob off) gives each copy its source's whole weight, so the copies' outputs are halved."""
    mt = source.split("-")[0]
    grow(new_sources[source], tiny.TARGET[mt], tmp_path / "out", plan=GrowthPlan(width="copy", depth="identity"))
    diff, model = tiny.max_logit_diff(new_sources[source], tmp_path / "out", text_ids)
    assert diff <= 1e-4, diff
    experts = getattr(model.config, "num_local_experts", None) or model.config.num_experts
    assert (experts, model.config.num_experts_per_tok) == (8, 4)


def test_gpt_oss_new_layers_are_identities_that_still_learn(new_sources):
    """An identity block zeroes the experts' down projection and its bias (what writes the residual stream),
    not the gate/up projection: the block starts as an identity whose down projection gets a gradient."""
    g = Grower(new_sources["gpt_oss"], {"layers": 4}, plan=GrowthPlan(width="split", depth="identity"))
    out = g.operator.materialize()
    for name in ("mlp.experts.down_proj", "mlp.experts.down_proj_bias", "self_attn.o_proj.weight",
                 "self_attn.o_proj.bias"):
        assert not out[f"model.layers.1.{name}"].any() and out[f"model.layers.0.{name}"].any(), name
    for name in ("mlp.experts.gate_up_proj", "mlp.experts.gate_up_proj_bias", "self_attn.sinks"):
        assert torch.equal(out[f"model.layers.1.{name}"], out[f"model.layers.0.{name}"]), name


@pytest.mark.parametrize("model_type", NEW)
def test_default_plan_loads_and_trains(model_type, new_sources, blocks, tmp_path):
    tiny.grow_train_and_load(new_sources[model_type], model_type, blocks, tmp_path)


@pytest.mark.parametrize("model_type", NEW)
def test_fitted_model_is_the_materialized_one(model_type, new_sources, blocks, tmp_path):
    """The fit installs the experts as transformers holds them (GPT-OSS and Llama 4: stacked under their own names;
    GLM: fused from the per-expert checkpoint tensors), only in the layers of their kind; the saved model gives the
    fitted logits."""
    depth = "interleave" if model_type in ("glm4_moe", "deepseek_v3", "lfm2_moe") else "stack"  # (dense layers first)  # (GLM's dense layers come first)
    g = Grower(new_sources[model_type], tiny.TARGET[model_type], plan=GrowthPlan(width="random", depth=depth))
    tiny.fit_and_compare(g, blocks, tmp_path / "out")


@pytest.mark.parametrize("model_type", NEW)
def test_streaming_growth_writes_the_same_tensors(model_type, new_sources, tmp_path):
    depth = "interleave" if model_type in ("glm4_moe", "deepseek_v3", "lfm2_moe") else "stack"  # (dense layers first)
    for stream in (False, True):
        Grower(new_sources[model_type], tiny.TARGET[model_type], plan=GrowthPlan(width="random", depth=depth),
               stream=stream).save(tmp_path / str(stream))
    a, b = load_checkpoint(tmp_path / "False").state, load_checkpoint(tmp_path / "True").state
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gpt_oss_shows_its_table(new_sources, tmp_path):
    Grower(new_sources["gpt_oss"], tiny.TARGET["gpt_oss"], plan=GrowthPlan(width="random", depth="stack"),
           stream=True).save(tmp_path / "True")
    proc = run_cli("inspect", new_sources["gpt_oss"], "--table", check=True)
    assert "sinks" in proc.stdout and "ffn.pair" in proc.stdout
    units = json.loads(run_cli("inspect", str(tmp_path / "True"), "--units", "--json", check=True).stdout)["units"]
    assert units["experts"]["units"] == 4 * 8 and units["heads"]["units"] == 4 * 8  # layers x units


@pytest.mark.parametrize("model_type, shows", [("glm4_moe", ["layer[dense]:", "sffn"]),
                                                ("llama4_text", ["layer[moe]:", "sffn"])])
def test_layer_kinds_show_in_the_table(model_type, shows, new_sources):
    """``ligo inspect --table`` of a model with two kinds of layers lists each kind's entries and the shared FFN."""
    out = run_cli("inspect", new_sources[model_type], "--table", check=True).stdout
    assert all(s in out for s in shows), out


def test_a_quantized_checkpoint_is_refused_with_how_to_dequantize(new_sources, tmp_path):
    """GPT-OSS ships MXFP4 experts (blocks and scales, not numbers): one line saying how to get floats."""
    import shutil

    from conftest import run_cli as cli

    src = tmp_path / "mxfp4"
    shutil.copytree(new_sources["gpt_oss"], src)
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn"]}
    (src / "config.json").write_text(json.dumps(config))
    proc = cli("grow", src, "--target", '{"layers": 3}', "--out", tmp_path / "out")
    assert proc.returncode != 0 and not (tmp_path / "out").exists()
    assert "holds quantized weights (mxfp4)" in proc.stderr and "Mxfp4Config(dequantize=True)" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_layer_kinds_follow_the_depth_plan(new_sources, tmp_path):
    """A target layer keeps its source layer's kind, and the grown config says so: GLM's first dense layers
    (identity, interleave: 1 -> 2 of 4; a map), Llama 4's listed MoE layers (stacked: [1] -> [1, 3])."""
    for depth, k in (("identity", 2), ("interleave", 2)):
        grow(new_sources["glm4_moe"], {"layers": 4}, tmp_path / depth, plan=GrowthPlan(depth=depth))
        assert json.loads((tmp_path / depth / "config.json").read_text())["first_k_dense_replace"] == k
    grow(new_sources["glm4_moe"], {}, tmp_path / "map", plan=GrowthPlan(depth="map", depth_map="0,0,0,1,new"))
    assert json.loads((tmp_path / "map" / "config.json").read_text())["first_k_dense_replace"] == 3
    grow(new_sources["llama4_text"], {"layers": 5}, tmp_path / "l4", plan=GrowthPlan(width="copy", depth="stack"))
    config = json.loads((tmp_path / "l4" / "config.json").read_text())
    assert config["moe_layers"] == [1, 3] and config["no_rope_layers"] == [1, 0, 1, 0, 1]
    src, out = load_checkpoint(new_sources["llama4_text"]).state, load_checkpoint(tmp_path / "l4").state
    for key, value in out.items():  # stacking: every target layer is its source layer, verbatim
        ref = key
        if ".layers." in key:
            i = int(key.split(".layers.")[1].split(".")[0])
            ref = key.replace(f".layers.{i}.", f".layers.{i % 2}.")
        torch.testing.assert_close(value, src[ref], rtol=0, atol=0, msg=key)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "l4")
    assert [type(layer.feed_forward).__name__ for layer in model.model.layers] == ["Llama4TextMLP", "Llama4TextMoe"] * 2 + [
        "Llama4TextMLP"]


def test_a_depth_plan_the_config_cannot_say_is_refused(new_sources, tmp_path):
    """GLM says its kinds as "the first k layers are dense": stacking would put a dense layer after MoE layers."""
    proc = run_cli("grow", new_sources["glm4_moe"], "--target", '{"layers": 3}', "--out", tmp_path / "out",
                   "--depth", "stack")
    assert proc.returncode != 0 and not (tmp_path / "out").exists()
    assert "puts a dense layer after a moe layer" in proc.stderr and "--depth identity" in proc.stderr
    with pytest.raises(Exception, match="not those of the layers the depth plan grows them from"):
        grow(new_sources["glm4_moe"], {"layers": 4, "first_k_dense_replace": 1}, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_expert_groups_are_kept_and_said(new_sources, tmp_path):
    """DeepSeek-style expert groups (n_group): copies change the groups' scores, so growing experts is not called
    lossless; the number of groups stays."""
    from ligo.maps import expert_gaps

    spec = load_checkpoint(new_sources["glm4_moe"], "meta").spec
    config = load_checkpoint(new_sources["glm4_moe"], "meta").config
    src = spec.dims({**config, "n_group": 2, "topk_group": 1})
    tgt = spec.dims({**config, "n_group": 2, "topk_group": 1, "n_routed_experts": 8, "num_experts_per_tok": 4})
    assert any("within 2 groups" in gap for gap in expert_gaps(GrowthPlan(width="copy"), src, tgt))
    with pytest.raises(Exception, match="expert groups"):
        grow(new_sources["glm4_moe"], {"n_group": 2}, tmp_path / "out")


def test_multi_token_prediction_layers_are_left_out_and_said(new_sources, tmp_path):
    """GLM-4.5 and DeepSeek-V3 checkpoints hold a multi-token-prediction layer after the last, which transformers
    does not load: ligo leaves it out too, and says so."""
    import shutil

    from safetensors.torch import load_file, save_file

    src = tmp_path / "mtp"
    shutil.copytree(new_sources["glm4_moe"], src)
    state = load_file(src / "model.safetensors")
    state.update({k.replace("layers.1.", "layers.2."): v.clone() for k, v in state.items() if ".layers.1." in k})
    state["model.layers.2.eh_proj.weight"] = torch.zeros(64, 128)  # (MTP's own weights: no table entry needed)
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})
    proc = run_cli("grow", src, "--target", '{"layers": 4}', "--out", tmp_path / "out", check=True)
    assert "1 layer(s) after its last (multi-token prediction) are left out" in proc.stderr
    assert not any(".layers.4." in k for k in load_checkpoint(tmp_path / "out").state)


_SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
              max_position_embeddings=128)
def test_types_without_a_table_are_refused_with_their_reason(tmp_path):
    """Never a suggested table that computes something else: one line naming what ligo cannot describe yet
    (``ligo/archs/_refused.json``), before any weight is read."""
    from safetensors.torch import save_file

    src = tmp_path / "glm4v"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "glm4v_moe", "text_config": {"hidden_size": 64}}))
    save_file({"model.visual.merger.proj.weight": torch.zeros(4, 4)}, src / "model.safetensors")
    proc = run_cli("grow", src, "--target", '{"layers": 3}', "--out", tmp_path / "out")
    assert proc.returncode != 0 and not (tmp_path / "out").exists()
    assert "model_type 'glm4v_moe' is not supported: it is a vision-language checkpoint" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "--arch" not in proc.stderr


def test_latent_attention_grows_its_latents_and_says_when_their_norm_cannot_stay_exact(new_sources, text_ids,
                                                                                      tmp_path):
    """DeepSeek-V3's query and key-value latents are spaces of their own, each under an RMSNorm over the whole
    latent: copies of every latent unit (x2, the lossless test above) keep its statistic; 16 -> 24 does not, and
    `ligo grow` says so in one line. The shared rotary key (kv_a_proj_with_mqa's last rows) is never grown."""
    out = tmp_path / "x2"
    grow(new_sources["deepseek_v3"], {"q_lora_rank": 64, "kv_lora_rank": 32}, out,
         plan=GrowthPlan(width="copy", depth="stack"))
    src, got = load_checkpoint(new_sources["deepseek_v3"]).state, load_checkpoint(out).state
    key = "model.layers.1.self_attn.kv_a_proj_with_mqa.weight"
    assert torch.equal(got[key][32:], src[key][16:])  # the rotary key, verbatim
    assert torch.equal(got[key][:32], src[key][:16][torch.arange(32) % 16])  # the latent, copied
    kv_b = "model.layers.1.self_attn.kv_b_proj.weight"
    torch.testing.assert_close(got[kv_b], src[kv_b][:, torch.arange(32) % 16] / 2)  # read at half weight
    notes, diff = grow_noting_gaps(new_sources["deepseek_v3"], {"kv_lora_rank": 24}, tmp_path / "out", text_ids)
    assert len(notes) == 1 and "key-value latent" in notes[0] and "(16 -> 24)" in notes[0], notes
    assert diff > 1e-4


def test_latent_attention_flops_match_torchs_counter():
    """Scores over each head's no-rope and rope parts, values of their own size: the analytic count of a DeepSeek-V3
    forward equals torch's counter (transformers' eager experts compute only the tokens routed to them)."""
    from ligo.flops import forward_flops_per_token, measured_flops
    from ligo.tables import get_spec

    cfg = tiny.config("deepseek_v3", max_position_embeddings=512)
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg, experts_implementation="eager").eval()
    ids = torch.randint(4, tiny.VOCAB, (2, 256), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        measured = measured_flops(lambda: model(input_ids=ids))
    dims = get_spec("deepseek_v3").dims(model.config.to_dict())
    assert measured / ids.numel() == pytest.approx(forward_flops_per_token(model, dims, 256), rel=1e-6)


@pytest.mark.parametrize("target, message", [
    ({"qk_nope_head_dim": 16}, r"no-rope query/key head size would change from 8 to 16 \(heads are grown whole\)"),
    ({"v_head_dim": 32}, r"value head size would change from 16 to 32 \(heads are grown whole\); keep v_head_dim=16"),
])
def test_latent_attention_head_sizes_are_kept_in_one_line(target, message, new_sources, tmp_path):
    from ligo.errors import LigoError

    with pytest.raises(LigoError, match=message):
        grow(new_sources["deepseek_v3"], target, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_gemma4s_expert_block_is_refused_with_the_gap_it_measures(tmp_path):
    """Gemma 4 26B-A4B's mixture of experts beside the MLP (``enable_moe_block``, ``top_k_experts``): its tiny model is
    built with its experts (the key of the experts per token is read) and the proof measures what growth keeps; at a
    non-integer width ratio it does not (the router's scale-free RMSNorm and scale vector), so `ligo grow` refuses in
    one line with the measured gap, not an unexpected error."""
    model = tiny.make_model_of("gemma4_text", **dict(_SMALL, head_dim=16, hidden_size_per_layer_input=8,
                                                     vocab_size_per_layer_input=tiny.VOCAB, enable_moe_block=True,
                                                     num_experts=4, top_k_experts=2, moe_intermediate_size=32,
                                                     layer_types=["sliding_attention", "full_attention"]))
    src = tiny.save_model(model, tmp_path / "src")
    proc = run_cli("grow", src, "--target", '{"layers": 3}', "--out", tmp_path / "out")
    assert proc.returncode != 0 and not (tmp_path / "out").exists()
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "model_type 'gemma4_text' has no table, and none could be made" in proc.stderr and "logits by up to" in \
        proc.stderr, proc.stderr
