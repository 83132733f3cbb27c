"""The families of 2025-26 (issue 31): every guarantee of the older families, on tiny random checkpoints that
transformers' own config classes build (tests/tiny.py). GPT-OSS: an attention sink per head, biases on every
projection, experts held stacked over the experts with interleaved (gate, up) units and their biases, a router
with a bias, sliding and full layers."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import tiny
from conftest import run_cli
from ligo import GrowthPlan, TrainConfig, grow
from ligo.checkpoint import load_checkpoint
from ligo.fit import FitModule
from ligo.growth import Grower
from ligo.training import Start, train

NEW = ("gpt_oss",)


@pytest.fixture(scope="module")
def new_sources(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("new-families")
    return {mt: tiny.save_model(tiny.make_model(mt), root / mt, tokenizer) for mt in NEW}


@pytest.fixture(scope="module")
def text_ids(tokenizer):
    import sysconfig
    from pathlib import Path

    root = Path(sysconfig.get_paths()["stdlib"])
    rows = [tokenizer((root / name).read_text()[:2000])["input_ids"][:40] for name in ("argparse.py", "textwrap.py")]
    return torch.tensor(rows)


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
    assert model.config.layer_types == ["sliding_attention", "sliding_attention", "full_attention", "full_attention"]


def test_gpt_oss_at_a_non_integer_ratio(new_sources, text_ids, tmp_path):
    """Hidden 64 -> 80, FFN 96 -> 120 (its interleaved gate/up pairs kept whole), 2 -> 3 layers: exact."""
    grow(new_sources["gpt_oss"], {"hidden_size": 80, "num_hidden_layers": 3, "intermediate_size": 120},
         tmp_path / "out", plan=GrowthPlan(width="split", depth="identity"))
    diff, _ = tiny.max_logit_diff(new_sources["gpt_oss"], tmp_path / "out", text_ids)
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


def test_gpt_oss_grows_experts_losslessly(new_sources, text_ids, tmp_path):
    """8 experts, 4 per token: every copy of each chosen expert is chosen, and the softmax over the chosen
    logits gives each copy half its source's weight."""
    grow(new_sources["gpt_oss"], tiny.TARGET["gpt_oss"], tmp_path / "out", plan=GrowthPlan(width="copy",
                                                                                          depth="identity"))
    diff, model = tiny.max_logit_diff(new_sources["gpt_oss"], tmp_path / "out", text_ids)
    assert diff <= 1e-4, diff
    assert (model.config.num_local_experts, model.config.num_experts_per_tok) == (8, 4)


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


def test_gpt_oss_default_plan_loads_and_trains(new_sources, blocks, tmp_path):
    grow(new_sources["gpt_oss"], tiny.TARGET["gpt_oss"], tmp_path / "grown")
    res = train(tmp_path / "grown", None, tmp_path / "run", TrainConfig(steps=6, batch_size=4, seq_len=32, lr=3e-3,
                                                                         warmup=0, eval_every=0, eval_batches=2,
                                                                         progress=False), Start(blocks=blocks))
    assert res.loop.evals[-1]["val_loss"] < res.loop.evals[0]["val_loss"]
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "run").config.model_type == "gpt_oss"


def test_gpt_oss_fitted_model_is_the_materialized_one(new_sources, blocks, tmp_path):
    """The fit installs the stacked experts under their own names; the saved model gives the fitted logits."""
    g = Grower(new_sources["gpt_oss"], tiny.TARGET["gpt_oss"], plan=GrowthPlan(width="random", depth="stack"))
    g.fit(None, TrainConfig(steps=3, batch_size=4, seq_len=32, lr=3e-3, warmup=0, eval_every=0, eval_batches=1,
                            progress=False), blocks=blocks)
    assert g.fit_info["steps"] == 3
    g.save(tmp_path / "out")
    module = FitModule(g.operator, g.target_model()).eval()
    x = blocks.val[:2]
    with torch.no_grad():
        fitted = module(input_ids=x).logits
        saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()(input_ids=x).logits
    torch.testing.assert_close(fitted, saved, rtol=1e-4, atol=1e-4)


def test_gpt_oss_streams_the_same_bytes_and_shows_its_table(new_sources, tmp_path):
    for stream in (False, True):
        Grower(new_sources["gpt_oss"], tiny.TARGET["gpt_oss"], plan=GrowthPlan(width="random", depth="stack"),
               stream=stream).save(tmp_path / str(stream))
    a, b = load_checkpoint(tmp_path / "False").state, load_checkpoint(tmp_path / "True").state
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    proc = run_cli("inspect", new_sources["gpt_oss"], "--table", check=True)
    assert "sinks" in proc.stdout and "ffn.pair" in proc.stdout
    units = json.loads(run_cli("inspect", str(tmp_path / "True"), "--units", "--json", check=True).stdout)["units"]
    assert units["experts"]["units"] == 4 * 8 and units["heads"]["units"] == 4 * 8  # layers x units


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
