"""The families released since 2024 (Qwen3, Gemma 1/2/3, Phi-3/4, OLMo 2, GPT-NeoX/Pythia, SmolLM3, Granite):
every guarantee of the classic families, on tiny random checkpoints that transformers' own config classes
build, each with its quirk switched on (tests/tiny.py: FAMILIES)."""

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import tiny
from conftest import run_cli, write_json
from ligo import GrowthPlan, grow
from ligo.checkpoint import load_checkpoint
from ligo.errors import LigoError
from ligo.maps import lossless_gaps

FAMILIES = tuple(tiny.FAMILIES)
RMS = tuple(mt for mt in FAMILIES if mt != "gpt_neox")  # GPT-NeoX normalizes with LayerNorm


@pytest.fixture(scope="module")
def family_sources(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("families")
    return {mt: tiny.save_model(tiny.make_model(mt), root / mt, tokenizer) for mt in FAMILIES}


@pytest.mark.parametrize("width", ["split", "copy"])
@pytest.mark.parametrize("model_type", FAMILIES)
def test_lossless_plan_gives_the_sources_logits(model_type, width, family_sources, text_ids, tmp_path):
    """Wider (x2 residual, heads, kv heads, FFN) and deeper (2 -> 4 layers): max |logit difference| <= 1e-4."""
    out = tmp_path / "out"
    grow(family_sources[model_type], tiny.TARGET[model_type], out, plan=GrowthPlan(width=width, depth="identity"))
    diff, model = tiny.max_logit_diff(family_sources[model_type], out, text_ids)
    assert diff <= 1e-4, diff
    assert model.config.num_hidden_layers == 4 and model.config.hidden_size == 128
    assert model.config.model_type == model_type


@pytest.mark.parametrize("model_type", [mt for mt in RMS if mt not in ("olmo2", "olmo3", "granitemoehybrid")])
# (olmo2: the test after next; granitemoehybrid's Mamba norm: tests/test_hybrid.py)
def test_lossless_at_a_non_integer_residual_ratio(model_type, family_sources, text_ids, tmp_path):
    """Hidden 64 -> 80 (5/4, as 576 -> 720) and 96 -> 120 FFN, 2 -> 3 layers: the scaled copies keep every
    RMSNorm's statistic, so the plan stays exact (the plain copies of ligo 0.2 were not)."""
    target = {"hidden_size": 80, "num_hidden_layers": 3, "intermediate_size": 120}
    if model_type not in ("qwen3", "gemma3_text", "gemma2", "gemma", "qwen3_5_text", "falcon_h1"):  # no explicit head_dim: keep hidden / heads
        target.update(hidden_size=96, num_attention_heads=6, num_key_value_heads=3)
    if model_type == "lfm2":
        target["intermediate_size"] = 320  # (its real FFN: 256)
    out = tmp_path / "out"
    grow(family_sources[model_type], target, out, plan=GrowthPlan(width="split", depth="identity"))
    diff, _ = tiny.max_logit_diff(family_sources[model_type], out, text_ids)
    assert diff <= 1e-4, diff


def test_gemma_keeps_its_embedding_scale_and_offset_norms(family_sources, tmp_path):
    """Gemma multiplies embeddings by sqrt(hidden) and stores norm gains as w in 1 + w: the grown embedding
    is divided by sqrt(128 / 64) and its tied head's norm multiplied back; gains grow as 1 + w."""
    out = tmp_path / "out"
    grow(family_sources["gemma3_text"], tiny.TARGET["gemma3_text"], out, plan=GrowthPlan(width="copy", depth="stack"))
    src, got = load_checkpoint(family_sources["gemma3_text"]).state, load_checkpoint(out).state
    res = torch.arange(128) % 64
    torch.testing.assert_close(got["model.embed_tokens.weight"], src["model.embed_tokens.weight"][:, res] / 2 ** 0.5)
    # final norm: read shares of 1/2 (copy), times sqrt(2) for the tied head: gain' = (1 + w) / 2 * sqrt(2)
    torch.testing.assert_close(1 + got["model.norm.weight"], (1 + src["model.norm.weight"][res]) / 2 * 2 ** 0.5)
    for name in ("input_layernorm", "post_feedforward_layernorm"):
        key = f"model.layers.3.{name}.weight"  # stacked: target layer 3 is source layer 1
        torch.testing.assert_close(got[key], src[key.replace(".3.", ".1.")][res], rtol=0, atol=0)
    config = json.loads((out / "config.json").read_text())
    assert config["layer_types"] == ["sliding_attention", "full_attention"] * 2  # stacked with its layers
    assert config["head_dim"] == 32 and config["query_pre_attn_scalar"] == 24


@pytest.mark.parametrize("model_type", FAMILIES)
def test_stacking_is_an_exact_special_case(model_type, family_sources, tmp_path):
    """Same width, 2 -> 5 layers with copy width: every target layer is its source layer verbatim."""
    grow(family_sources[model_type], {"num_hidden_layers": 5}, tmp_path / "out", plan=GrowthPlan(width="copy",
                                                                                                   depth="stack"))
    src, out = load_checkpoint(family_sources[model_type]).state, load_checkpoint(tmp_path / "out").state
    for key, value in out.items():
        if ".layers." in key:
            i = int(key.split(".layers.")[1].split(".")[0])
            key_src = key.replace(f".layers.{i}.", f".layers.{i % 2}.")
        else:
            key_src = key
        torch.testing.assert_close(value, src[key_src], rtol=0, atol=0, msg=key)


def test_per_layer_lists_follow_the_depth_plan(family_sources, tmp_path):
    """SmolLM3's no_rope_layers and Gemma's layer_types: each target layer keeps its source layer's entry."""
    grow(family_sources["smollm3"], {"num_hidden_layers": 4}, tmp_path / "smol", plan=GrowthPlan(depth="interleave"))
    assert json.loads((tmp_path / "smol" / "config.json").read_text())["no_rope_layers"] == [1, 1, 0, 0]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "smol")
    assert [layer.self_attn.use_rope for layer in model.model.layers] == [1, 1, 0, 0]
    grow(family_sources["gemma2"], {"num_hidden_layers": 3}, tmp_path / "g2", plan=GrowthPlan(depth="stack"))
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "g2").config.layer_types == [
        "sliding_attention", "full_attention", "sliding_attention"]


@pytest.mark.parametrize("model_type", FAMILIES)
def test_default_plan_loads_and_trains(model_type, family_sources, blocks, tmp_path):
    """The default plan's output loads with AutoModelForCausalLM and its loss falls in a few steps."""
    tiny.grow_train_and_load(family_sources[model_type], model_type, blocks, tmp_path)


def test_the_console_script_shows_and_grows_a_new_family(family_sources, corpus, tmp_path):
    proc = run_cli("inspect", family_sources["qwen3"], "--table", check=True)
    assert "qwen3" in proc.stdout and "q_norm" in proc.stdout
    target = write_json(tmp_path / "t.json", {"hidden": 128, "layers": 3, "heads": 8, "kv_heads": 4})
    proc = run_cli("grow-train", family_sources["phi3"], "--target", target, "--out", tmp_path / "job", "--data",
                   corpus, "--steps", "3", "--seq-len", "32", "--batch-size", "2", "--no-progress", check=True)
    assert (tmp_path / "job" / "trained" / "config.json").exists()


def test_olmo2_says_when_its_whole_projection_norms_cannot_stay_exact(family_sources, text_ids, tmp_path):
    """OLMo 2 normalizes q and k over all heads together: copies of every head keep the statistic (exact, the
    lossless test above), a non-integer head ratio does not, and `ligo grow` says so instead of calling the
    plan lossless."""
    from ligo.tables import get_spec

    spec, ck = get_spec("olmo2"), load_checkpoint(family_sources["olmo2"], "meta")
    even = spec.dims({**ck.config, "num_attention_heads": 8, "num_key_value_heads": 4, "hidden_size": 128})
    assert lossless_gaps(spec, GrowthPlan(width="split", depth="identity"), ck.dims, even) == []
    target = write_json(tmp_path / "t.json", {"hidden": 96, "heads": 6, "kv_heads": 3})
    proc = run_cli("grow", family_sources["olmo2"], "--target", target, "--out", tmp_path / "out", "--width", "split",
                   "--depth", "identity", check=True)
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note: not exactly lossless")]
    assert len(notes) == 2 and "q_norm" in notes[1] and "k_norm" in notes[0] and "(4 -> 6)" in notes[1], proc.stderr
    diff, _ = tiny.max_logit_diff(family_sources["olmo2"], tmp_path / "out", text_ids)
    assert diff > 1e-3  # the statistic really moved
    assert json.loads((tmp_path / "out" / "ligo_recipe.json").read_text())["lossless"] is False


@pytest.mark.parametrize("target, message", [
    ({"head_dim": 64}, r"head_dim would change from 32 to 64"),
    ({"num_hidden_layers": 3, "layer_types": ["full_attention"] * 2}, r"layer_types has 2 entries .* 3 layers"),
    ({"sliding_window": 4096}, r"sliding_window 4096 .* max_position_embeddings 128"),
])
def test_bad_targets_are_one_clear_line(target, message, family_sources, tmp_path):
    with pytest.raises(LigoError, match=message):
        grow(family_sources["qwen3"], target, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_fused_tensor_that_does_not_split_is_refused(family_sources, tmp_path):
    """Phi-3's fused qkv_proj must be exactly q + k + v rows for its config."""
    from safetensors.torch import load_file, save_file
    import shutil

    bad = tmp_path / "phi3"
    shutil.copytree(family_sources["phi3"], bad)
    state = load_file(bad / "model.safetensors")
    key = "model.layers.0.self_attn.qkv_proj.weight"
    state[key] = state[key][:-8].contiguous()
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LigoError, match=r"qkv_proj.weight has shape \[120, 64\], but config.json implies \[128, 64\]"):
        grow(bad, tiny.TARGET["phi3"], tmp_path / "out")


@pytest.mark.parametrize("model_type", ["gemma3_text", "gpt_neox", "llama", "bert"])
def test_streaming_growth_writes_the_same_bytes(model_type, family_sources, sources, tmp_path, monkeypatch):
    """`ligo grow` streams by default (the source read tensor by tensor, embeddings in slices of rows, each
    shard written when full); its shards and index are byte for byte those of the in-memory path: the same
    computation, dense random maps included. The source is read here into memory 4 bytes off the allocator's
    alignment (as safetensors maps a tensor at whatever offset its file gives it): on processors where MKL picks a
    matrix product's kernel by alignment (an AMD EPYC), that changed the bytes until what is read was copied."""
    import filecmp

    import ligo.apply
    import ligo.checkpoint

    read = ligo.checkpoint.LazyWeights.__call__

    def misaligned(self, key, rows=None):
        t = read(self, key, rows)
        out = torch.empty(t.numel() * t.element_size() + 4, dtype=torch.uint8)[4:].view(t.dtype).view(t.shape)
        return out.copy_(t)

    src = family_sources.get(model_type) or sources[model_type]
    target = dict(tiny.TARGET[model_type], **({"intermediate_size": 96} if model_type != "gpt2" else {}))
    for plan in (GrowthPlan(), GrowthPlan(width="random", depth="stack")):  # selections; dense random maps
        out = tmp_path / plan.width
        with monkeypatch.context() as m:
            m.setattr(ligo.apply, "_CHUNK_ELEMENTS", 1000)  # many slices of embedding rows, in both paths
            m.setattr(ligo.checkpoint.LazyWeights, "__call__", misaligned)
            grow(src, target, out / "memory", max_shard_size="40KB", stream=False, plan=plan)
            grow(src, target, out / "stream", max_shard_size="40KB", plan=plan)
        names = sorted(p.name for p in (out / "stream").iterdir())
        assert names == sorted(p.name for p in (out / "memory").iterdir())
        weights = [n for n in names if n.endswith(".safetensors") or n.endswith(".index.json")]
        assert len(weights) > 5  # really sharded
        assert all(filecmp.cmp(out / "stream" / n, out / "memory" / n, shallow=False) for n in weights), plan
        recipes = [json.loads((out / mode / "ligo_recipe.json").read_text()) for mode in ("stream", "memory")]
        assert recipes[0]["operator_parameters"] == recipes[1]["operator_parameters"] > 0


def test_a_type_without_a_table_grows_by_a_table_read_off_its_class_and_proved(tokenizer, text_ids, tmp_path):
    """Helium (a model_type without a hand table) grows with no flag: its table is read off transformers' class and
    proved by growing a tiny one (ligo.prove); the grown model keeps the source's logits, is a helium checkpoint,
    and its recipe says how the table was made. The proved table is cached: the next grow reads it."""
    import os

    from ligo.prove import signature

    src = tiny.save_model(tiny.make_model_of("helium", **tiny.FAMILIES["olmo2"], head_dim=16), tmp_path / "helium",
                          tokenizer)
    run_cli("grow", src, "--target", '{"hidden": 128, "heads": 8, "kv_heads": 4, "layers": 3}', "--out",
            tmp_path / "out", "--width", "split", "--depth", "identity", check=True)
    diff, model = tiny.max_logit_diff(src, tmp_path / "out", text_ids)
    assert diff <= 1e-4 and model.config.model_type == "helium"
    recipe = json.loads((tmp_path / "out" / "ligo_recipe.json").read_text())
    assert recipe["table"].startswith("inferred from transformers") and "proved" in recipe["table"]
    config = json.loads((Path(src) / "config.json").read_text())
    cached = Path(os.environ["LIGO_CACHE"]) / "tables" / f"helium-{signature('helium', config)}.json"
    assert json.loads(cached.read_text())["source"] == recipe["table"]


@pytest.mark.parametrize("model_type", ["gemma3_text", "gpt_neox"])
def test_bench_smoke_on_a_new_family(model_type, tmp_path):
    """The benchmark protocol (source, scratch sweep, fixed and learned methods, report) on a new family."""
    from ligo.bench import load_experiment, run_experiment

    exp = load_experiment("demo", smoke=True)
    config = {k: v for k, v in tiny.FAMILIES[model_type].items() if k != "max_position_embeddings"}
    exp = exp.changed(model_type=model_type, target=dict(tiny.TARGET[model_type]),
                      source={**exp.source, "config": {**config, "max_position_embeddings": 128}},
                      methods={"scratch": {}, "split": {"width": "split", "depth": "identity"},
                               "ligo": {"width": "random", "depth": "stack", "fit": True}})
    report = run_experiment(exp, tmp_path / "out", progress=False, log=lambda *_: None)
    methods = report["budgets"][0]["methods"]
    assert set(methods) >= {"split", "ligo"} and all(m["final_val_loss"] > 0 for m in methods.values())
    assert (tmp_path / "out" / "table.md").exists()


def test_a_table_is_used_only_where_its_growth_reproduces_the_model(tmp_path):
    """Never a silent guess: BLOOM's weights have names and shapes a table can describe, but its ALiBi slopes depend
    on the number of heads, so no lossless growth of its heads keeps its function; ligo grow says so in one line
    with the measured logit gap, and writes nothing. Cohere 2 (LayerNorm without a bias, parallel blocks, scaled
    logits: once refused for only looking like Llama) has its table read off its class, proved, and grows."""
    import transformers

    from ligo.probe import build_model, tiny_config

    for model_type in ("bloom", "cohere2"):
        small, _ = tiny_config(model_type, transformers.AutoConfig.for_model(model_type).to_dict())
        torch.manual_seed(0)
        build_model(model_type, small, "cpu").save_pretrained(tmp_path / model_type)
    proc = run_cli("grow", tmp_path / "bloom", "--target", '{"hidden": 128, "heads": 8}', "--out", tmp_path / "b")
    assert proc.returncode == 2 and not (tmp_path / "b").exists(), proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and "model_type 'bloom' has no table, and none could be made" in line
    assert re.search(r"moves a tiny random bloom's logits by up to \d", line), line
    run_cli("grow", tmp_path / "cohere2", "--target", '{"hidden": 128, "heads": 8, "kv_heads": 4}', "--out",
            tmp_path / "c", check=True)
    assert json.loads((tmp_path / "c" / "ligo_recipe.json").read_text())["lossless"] is True
