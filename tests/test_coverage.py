"""Coverage: a sample of the model types ligo grows by a table read off transformers' class (no hand table), each built
tiny from its own config class and grown by ligo grow with the default plan, as benchmarks/coverage.py does for every
type; a type that grew and stops growing fails here. Each inferred table is checked as hand tables are: lossless,
streaming equal to in-memory, the grown model loaded by the Auto class and trained."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from ligo import TrainConfig, grow, train
from ligo.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("coverage_bench", ROOT / "benchmarks" / "coverage.py")
coverage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(coverage)

# one type of each structure inference reads: Llama-like with other names (apertus: XIELU's scalars and buffers),
# a derived head size (helium), multi-query fused q/k/v (falcon, gpt_bigcode), parameter-less LayerNorm (olmo), LayerNorm
# without a bias and parallel blocks (cohere2), biases everywhere (starcoder2), a partial-rotary parallel block (phi);
# layers of kinds named by a list whose values share weights, a short convolution lent by the lfm2 table and a
# per-head output gate (lfm3); latent attention lent by the deepseek_v3 table beside a sparse-attention indexer whose
# choice of 4 of the proof's 16 tokens is read (deepseek_v32); MoE layers from a start index (ernie4_5_moe)
# this session's: experts stored input first (aria_text), a gain stored as 1 + w (nemotron), weights of another
# shape in each kind of layer (kimi_linear), a norm's source in its own layer (olmo_hybrid), MLA lent to a module of
# another name (bailing_hybrid), dense layers listed by index beside a list of attention kinds (flint), a per-head
# gate projection as wide as k and v together (beam); hyper-connections (several residual streams read flattened by
# their mixing matrices) beside latent attention with an output gate of the value head size (hy_v4); a fused q/k/v
# of grouped heads whose kv heads the kv probe alone moves (param2moe); two attention and MLP blocks a layer with a
# shortcut MoE whose zero-computation experts a new layer never chooses, under MLA scaled by the width (longcat_flash);
# full-attention layers with a head size of their own (per_layer_config), per-layer embeddings packed one slice a
# layer, a projection scaled by the width and a layer scalar that a new layer starts at one (gemma4_text); shared
# experts as wide as a count of experts (n_shared_experts, two in the tiny model) and a query projection holding each
# head's output gate beside its query rows (minicpm5_moe)
SAMPLE = ("apertus", "helium", "falcon", "gpt_bigcode", "olmo", "cohere2", "starcoder2", "phi", "lfm3", "deepseek_v32",
          "ernie4_5_moe", "aria_text", "nemotron", "kimi_linear", "olmo_hybrid",
          "bailing_hybrid", "flint", "beam", "hy_v4", "param2moe", "longcat_flash",
          "gemma4_text", "minicpm5_moe")


@pytest.mark.parametrize("model_type", SAMPLE)
def test_a_type_without_a_hand_table_grows_by_a_proved_table(model_type, tmp_path):
    row = coverage.verdict(model_type, tmp_path)
    assert row["verdict"] == "inferred and proved", row
    assert row["gap"] <= 1e-4 and row["lossless"], row


def test_an_inferred_table_is_checked_as_hand_tables_are(tmp_path, corpus, tokenizer):
    """Streaming and in-memory growth write the same bytes through an inferred table, and the grown model (its
    recipe naming the table and its proof) trains a few steps from its own folder."""
    import transformers

    from ligo.probe import build_model, tiny_config

    small, _ = tiny_config("starcoder2", transformers.AutoConfig.for_model("starcoder2").to_dict())
    small["vocab_size"] = len(tokenizer)
    torch.manual_seed(0)
    build_model("starcoder2", small, "cpu").save_pretrained(tmp_path / "src")
    tokenizer.save_pretrained(tmp_path / "src")
    target = {"hidden": 128, "heads": 8, "kv_heads": 4, "layers": 3}
    for stream in (False, True):
        grow(tmp_path / "src", target, tmp_path / str(stream), stream=stream)
    a, b = (load_checkpoint(tmp_path / d).state for d in ("False", "True"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "True" / "ligo_recipe.json").read_text())["table"].startswith("inferred")
    res = train(tmp_path / "True", corpus, tmp_path / "run", TrainConfig(steps=4, batch_size=4, seq_len=32, lr=3e-3,
                                                                          warmup=1, eval_every=2, eval_batches=1,
                                                                          progress=False))
    assert res.loop.evals[-1]["val_loss"] < res.loop.evals[0]["val_loss"]


def test_layer_kinds_are_read_off_the_weights_each_layer_holds():
    """The rule a config says its layers' kinds by, from which weights each layer holds: one list (values holding the
    same weights one kind, by aliases), two lists (each weight follows one), a count of first layers, a list whose
    kinds are marked among the last layers a key counts, or none."""
    from ligo.inferkinds import infer_rules

    attn, conv, dense, moe = frozenset({"attn.q"}), frozenset({"conv.in"}), frozenset({"mlp.up"}), frozenset({"e.up"})
    norm = frozenset({"norm"})
    one = infer_rules({0: norm | conv, 1: norm | attn, 2: norm | attn},
                      {"layer_types": ["conv", "full", "sliding"], "other": ["a", "b", "a"]})
    assert one["rules"] == [("list", "layer_types", {"conv": conv, "full": attn}, {"sliding": "full"})]
    assert one["rows"] == {"conv": [0], "full": [1, 2]}
    two = infer_rules({0: norm | conv | dense, 1: norm | conv | moe, 2: norm | attn | moe},
                      {"layer_types": ["lin", "lin", "full"], "mlp_layer_types": ["dense", "sparse", "sparse"]})
    assert [(r[1], r[2]) for r in two["rules"]] == [("layer_types", {"lin": conv, "full": attn}),
                                                    ("mlp_layer_types", {"dense": dense, "sparse": moe})]
    assert two["rows"] == {"lin/dense": [0], "lin/sparse": [1], "full/sparse": [2]}
    first = infer_rules({0: norm | dense, 1: norm | moe, 2: norm | moe}, {"moe_layer_start_index": 1})
    assert first["rules"] == [("first_k", "moe_layer_start_index", {"first": dense, "rest": moe}, {})]
    decoy = infer_rules({0: norm | dense, 1: norm | moe}, {"n_group": 1, "topk_group": 1, "first_k_dense_replace": 1})
    assert decoy["rules"][0][1] == "first_k_dense_replace"  # (Sarvam-MoE: "topk_group" once read as the count)
    assert infer_rules({0: norm | dense, 1: norm | dense}, {}) is None
    kv = frozenset({"attn.k"})  # (Gemma 4: the last layers counted by a key hold no keys, of either attention kind)
    last = infer_rules({0: norm | attn | kv, 1: norm | conv | kv, 2: norm | attn, 3: norm | conv},
                       {"layer_types": ["full", "conv", "full", "conv"], "num_kv_shared_layers": 2})
    assert last["last"] == "num_kv_shared_layers" and last["rows"] == {"full": [0], "conv": [1], "full_last": [2],
                                                                       "conv_last": [3]}
    assert last["rules"] == [("list", "layer_types", {"full": attn | kv, "conv": conv | kv, "full_last": attn,
                                                      "conv_last": conv}, {})]
    assert infer_rules({0: norm | moe, 1: norm | dense, 2: norm | moe}, {"first_k_dense": 1}) is None  # (no rule)


def test_a_number_the_model_computes_from_its_width_is_undone_on_the_weight_it_multiplies(tmp_path):
    """LongCat-Flash multiplies its queries by (hidden / q_lora) ** 0.5 and its kv latent by (hidden / kv_lora) ** 0.5:
    both are found on the model, each on the projection it multiplies, and growth that widens the model keeps its
    logits through them (without the scales the same growth moves them by about 0.2). The zero-computation experts'
    router rows are kept past the experts'."""
    import transformers

    from ligo import tables
    from ligo.infer import infer_table
    from ligo.probe import TINY, build_model, tiny_config
    from ligo.widthscale import width_scales

    config = transformers.AutoConfig.for_model("longcat_flash").to_dict()
    small, keys = tiny_config("longcat_flash", config)
    torch.manual_seed(0)
    model = build_model("longcat_flash", small, "cpu").eval()
    ids = torch.randint(0, TINY["vocab"], (1, 12), generator=torch.Generator().manual_seed(0))
    found = width_scales(model, "longcat_flash", small, keys, ids)
    assert {n: p for n, p in found.items() if ".layers.0." in n} == {
        f"model.layers.0.self_attn.{i}.{w}": 0.5 for i in (0, 1) for w in ("q_b_proj", "kv_b_proj")}
    from safetensors.torch import load_file, save_file

    from ligo.config import GrowthPlan
    from ligo.operator import GrowthOperator
    from ligo.prove import transformers_model

    table, _ = infer_table("longcat_flash", config, tables.hand_tables())
    assert table["scales"] == {f"self_attn.{i}.{w}.weight": 0.5 for i in (0, 1) for w in ("q_b_proj", "kv_b_proj")}
    assert table["layer"]["mlp.router.classifier.weight"] == ["router+zexp", "res.in"]
    model.save_pretrained(tmp_path / "src")
    state = load_file(tmp_path / "src" / "model.safetensors")
    tgt_config = {**small, **{k: 2 * small[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads")}}
    gaps = {}
    for name, t in (("kept", table), ("unscaled", {k: v for k, v in table.items() if k != "scales"})):
        spec = tables.read_table(t, source="inferred")
        dims = spec.dims(small)
        grown = GrowthOperator(spec, dims, spec.dims(tgt_config), spec.layout(state.keys(), dims, small), state,
                               GrowthPlan(width="split", depth="identity", width_lr="uniform")).materialize()
        save_file({k: v.contiguous() for k, v in grown.items()}, tmp_path / "model.safetensors")
        transformers.AutoConfig.for_model(**tgt_config).save_pretrained(tmp_path)
        wide = transformers_model(str(tmp_path))  # (as transformers reads a checkpoint: its experts renamed)
        with torch.no_grad():
            gaps[name] = float((wide(ids).logits - model(ids).logits).abs().max())
    assert gaps["kept"] < 1e-4 and gaps["unscaled"] > 1e-2, gaps


def test_gemma4s_layers_that_share_keys_and_values_grow_keeping_the_layers_they_read(tmp_path):
    """Gemma 4 E2B/E4B: the last layers (num_kv_shared_layers) hold no keys or values of their own, read those of the
    last earlier layer of their attention kind, and have a double-wide MLP; full-attention layers have a head size of
    their own. Inferred (a kind per attention kind, marked among the last layers) and grown 2x wide and two layers
    deeper: the logits are kept, the config counts the grown model's shared layers, and each kind's storing layer is
    the source's (the new copies come before it). A depth map that puts a new layer where a store was is told; one
    that puts a shared layer among the others is refused in one line."""
    import tiny
    from conftest import run_cli, write_json

    layer_types = ["sliding_attention", "sliding_attention", "full_attention"] * 2
    model = tiny.make_model_of("gemma4_text", hidden_size=64, intermediate_size=96, num_hidden_layers=6,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=32,
                               hidden_size_per_layer_input=8, vocab_size_per_layer_input=tiny.VOCAB,
                               layer_types=layer_types, num_kv_shared_layers=3, use_double_wide_mlp=True)
    src = tiny.save_model(tiny.perturb_vectors(model), tmp_path / "src")
    target = write_json(tmp_path / "t.json", {"hidden": 128, "heads": 8, "kv_heads": 4, "layers": 8})
    run_cli("grow", src, "--target", target, "--out", tmp_path / "out", check=True)
    ids = torch.randint(2, tiny.VOCAB, (1, 24), generator=torch.Generator().manual_seed(0))
    diff, grown = tiny.max_logit_diff(src, tmp_path / "out", ids)
    assert diff <= 1e-4
    assert grown.config.num_kv_shared_layers == 4 and grown.config.kv_sharing_modes[:4] == [None, None, "store",
                                                                                            "store"]
    state = load_checkpoint(tmp_path / "out").state
    assert not any(k.startswith(("model.layers.4.self_attn.k_proj", "model.layers.7.self_attn.v_proj")) for k in state)
    assert state["model.layers.7.mlp.gate_proj.weight"].shape[0] == 2 * state["model.layers.0.mlp.gate_proj.weight"].shape[
        0]  # (the shared layers' MLP: double-wide, grown as two blocks of FFN units)
    run_cli("grow", src, "--target", write_json(tmp_path / "t2.json", {"layers": 7}), "--out", tmp_path / "map",
            "--depth-map", "0-2,new,3-5", check=True)
    gaps = json.loads((tmp_path / "map" / "ligo_recipe.json").read_text())["not_lossless_because"]
    assert len(gaps) == 1 and "keys and values of the last earlier full_attention layer, source layer 2" in gaps[0]
    proc = run_cli("grow", src, "--target", write_json(tmp_path / "t3.json", {"layers": 12}), "--out",
                   tmp_path / "stack", "--depth", "stack")
    assert proc.returncode != 0 and not (tmp_path / "stack").exists()
    assert len(proc.stderr.strip().splitlines()) == 1 and "num_kv_shared_layers" in proc.stderr, proc.stderr


@pytest.mark.parametrize("target", [{"hidden": 128, "heads": 16, "kv_heads": 8, "layers": 8},
                                    {"hidden": 96, "heads": 12, "kv_heads": 6, "layers": 7}], ids=["x2", "x1.5"])
def test_gemma4s_full_attention_layers_grow_their_own_kv_heads(target, tmp_path):
    """Gemma 4 31B: the full-attention layers have a kv head count of their own (num_global_key_value_heads, held
    in per_layer_config) and take their values from their keys (attention_k_eq_v). Those kv heads are a space of
    their own (k2: kv_heads2 heads of head_dim2), grown as the kv heads grow (2 -> 4 at 2x, 2 -> 3 at 1.5x), the
    grown config's layer settings saying the new count, the logits kept."""
    import tiny

    model = tiny.make_model_of("gemma4_text", hidden_size=64, intermediate_size=96, num_hidden_layers=6,
                               num_attention_heads=8, num_key_value_heads=4, head_dim=16, global_head_dim=32,
                               hidden_size_per_layer_input=16, vocab_size_per_layer_input=tiny.VOCAB,
                               layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
                               attention_k_eq_v=True, num_global_key_value_heads=2)
    src = tiny.save_model(tiny.perturb_vectors(model), tmp_path / "src")
    grow(src, target, tmp_path / "out")
    ids = torch.randint(2, tiny.VOCAB, (1, 24), generator=torch.Generator().manual_seed(0))
    diff, grown = tiny.max_logit_diff(src, tmp_path / "out", ids)
    assert diff <= 1e-4
    own = json.loads((tmp_path / "out" / "config.json").read_text())["per_layer_config"]
    assert {c["num_key_value_heads"] for c in own.values()} == {2 * target["kv_heads"] // 4}
    assert len(own) == grown.config.layer_types.count("full_attention")
