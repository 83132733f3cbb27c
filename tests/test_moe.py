"""Mixtures of experts (Mixtral, Qwen3-MoE, OLMoE) and upcycling a dense model into one: every guarantee of
the dense families, on tiny random checkpoints that transformers' own config classes build."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import tiny
from conftest import run_cli, write_json
from ligo import GrowthPlan, TrainConfig, grow
from ligo.tables import get_spec
from ligo.checkpoint import load_checkpoint
from ligo.errors import LigoError
from ligo.flops import matmul_params
from ligo.fit import FitModule
from ligo.growth import Grower
from ligo.training import Start, train

MOE = tuple(tiny.MOE)
DENSE = {"llama": "mixtral", "qwen3": "qwen3_moe"}  # what upcycles into what
GROWN = dict(hidden=128, layers=4, heads=8, kv_heads=4, ffn=192)


@pytest.fixture(scope="module")
def moe_sources(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("moe")
    out = {mt: tiny.save_model(tiny.make_model(mt), root / mt, tokenizer) for mt in MOE}
    # the conventions the tables do not default to: Qwen3-MoE without renormalized top-k, OLMoE with it
    out["qwen3_moe-raw"] = tiny.save_model(tiny.make_model("qwen3_moe", norm_topk_prob=False), root / "q-raw", tokenizer)
    out["olmoe-norm"] = tiny.save_model(tiny.make_model("olmoe", norm_topk_prob=True), root / "o-norm", tokenizer)
    for mt in DENSE:
        out[mt] = tiny.save_model(tiny.make_model(mt), root / mt, tokenizer)
    return out


@pytest.fixture(scope="module")
def ids():
    return torch.randint(2, tiny.VOCAB, (2, 40), generator=torch.Generator().manual_seed(0))


def test_every_checkpoint_weight_matches_one_entry(moe_sources):
    """The tables describe the checkpoint's per-expert keys (transformers fuses them only in memory), or its
    tensors stacked over the experts (GPT-OSS's checkpoints hold them so)."""
    for mt in MOE:
        ck = load_checkpoint(moe_sources[mt])
        assert ck.dims.experts == 4 and ck.dims.experts_per_token == 2
        per_expert = sum(1 for m in ck.layout.values() if m.expert is not None)
        stacked = [k for k, m in ck.layout.items() if m.entry.axes[0][0] in ("exp", "exp.out") and m.expert is None]
        # (a first dense layer; Nemotron-H: one MoE layer of four, its experts without a gate)
        moe_layers = 1 if mt in ("glm4_moe", "llama4_text", "deepseek_v3", "glm4_moe_lite", "nemotron_h",
                                 "lfm2_moe") else 2
        parts = 2 if mt == "nemotron_h" else 3
        if mt in ("gpt_oss", "llama4_text"):  # MoE layers x (gate_up, down[, their biases]), each [experts, ...]
            assert per_expert == 0 and len(stacked) == moe_layers * (4 if mt == "gpt_oss" else 2)
            assert all(ck.state[k].shape[0] == 4 for k in stacked)
        else:
            assert per_expert == moe_layers * 4 * parts and not stacked  # MoE layers x experts x (gate, up, down)
    assert load_checkpoint(moe_sources["mixtral"]).dims.router_normalized  # Mixtral always renormalizes
    assert not load_checkpoint(moe_sources["qwen3_moe-raw"]).dims.router_normalized


@pytest.mark.parametrize("source", [*MOE, "qwen3_moe-raw", "olmoe-norm"])
def test_lossless_plan_gives_the_sources_logits(source, moe_sources, ids, tmp_path):
    """Wider, deeper and twice the experts with twice as many per token (every copy of each chosen expert):
    copies keep the routing, renormalized or not. max |logit difference| <= 1e-4."""
    mt = source.split("-")[0]
    grow(moe_sources[source], tiny.TARGET[mt], tmp_path / "out", plan=GrowthPlan(width="copy", depth="identity"))
    diff, model = tiny.max_logit_diff(moe_sources[source], tmp_path / "out", ids)
    assert diff <= 1e-4, diff
    experts = getattr(model.config, "num_local_experts", None) or model.config.num_experts
    assert (experts, model.config.num_experts_per_tok, model.config.num_hidden_layers) == (8, 4, 4)
    assert json.loads((tmp_path / "out" / "ligo_recipe.json").read_text())["lossless"] is True


@pytest.mark.parametrize("per_token, width", [(1, "copy"), (2, "copy"), (1, "split"), (2, "split")])
def test_upcycling_a_dense_llama_into_mixtral_is_lossless(per_token, width, moe_sources, ids, tmp_path):
    """Mixtral renormalizes its top-k weights, so identical experts give the dense FFN's output whatever the
    router says: copy (zero router) and split (a router with noise) are both exact, with width and depth grown
    in the same call."""
    out = tmp_path / "out"
    grow(moe_sources["llama"], dict(GROWN, experts=4, experts_per_token=per_token), out,
         plan=GrowthPlan(width=width, depth="identity"))
    diff, model = tiny.max_logit_diff(moe_sources["llama"], out, ids)
    assert diff <= 1e-4, diff
    assert type(model).__name__ == "MixtralForCausalLM"
    assert json.loads((out / "config.json").read_text())["architectures"] == ["MixtralForCausalLM"]
    router = load_checkpoint(out).state["model.layers.0.block_sparse_moe.gate.weight"]
    assert (router == 0).all() == (width == "copy")  # split: noise, so that tokens prefer different copies


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("per_token", [1, 2])
def test_upcycling_qwen3_under_both_router_conventions(normalized, per_token, moe_sources, ids, tmp_path):
    """Qwen3-MoE without renormalization gives a token k / E of uniform scores: copy scales the experts by
    E / k and stays exact; split (router noise) is exact only with renormalization, and says so."""
    for width in ("copy", "split"):
        out = tmp_path / width
        g = grow(moe_sources["qwen3"], dict(GROWN, experts=4, experts_per_token=per_token, norm_topk_prob=normalized),
                 out, plan=GrowthPlan(width=width, depth="identity"))
        diff, _ = tiny.max_logit_diff(moe_sources["qwen3"], out, ids)
        exact = width == "copy" or normalized
        assert (diff <= 1e-4) == exact, (width, diff)
        gaps = g.record.not_lossless_because
        assert (not gaps) == exact and (exact or "renormalized router" in gaps[0])


def test_fixed_methods_are_exact_special_cases(moe_sources, tmp_path):
    """Copy width, stacked depth, 4 -> 8 experts: target layer i is source layer i mod 2 verbatim, expert x is
    source expert x mod 4 verbatim, router rows likewise."""
    grow(moe_sources["mixtral"], {"layers": 3, "experts": 8, "experts_per_token": 4}, tmp_path / "out",
         plan=GrowthPlan(width="copy", depth="stack"))
    src, out = load_checkpoint(moe_sources["mixtral"]).state, load_checkpoint(tmp_path / "out").state
    assert len(out) == 3 + 3 * (7 + 8 * 3)
    for key, value in out.items():
        ref = key
        if ".layers." in key:
            i = int(key.split(".layers.")[1].split(".")[0])
            ref = ref.replace(f".layers.{i}.", f".layers.{i % 2}.")
        if ".experts." in key:
            x = int(key.split(".experts.")[1].split(".")[0])
            ref = ref.replace(f".experts.{x}.", f".experts.{x % 4}.")
        if key.endswith("gate.weight"):
            torch.testing.assert_close(value, src[ref][torch.arange(8) % 4], rtol=0, atol=0)
        else:
            torch.testing.assert_close(value, src[ref], rtol=0, atol=0, msg=key)


def test_the_fitted_model_is_the_materialized_one(moe_sources, blocks, tmp_path):
    """The fit installs the operator's output as transformers holds experts (stacked, gate and up fused); the
    saved model gives the fitted model's held-out logits."""
    g = Grower(moe_sources["olmoe"], tiny.TARGET["olmoe"], plan=GrowthPlan(width="random", depth="stack"))
    tiny.fit_and_compare(g, blocks, tmp_path / "out")


def test_an_upcycled_model_trains_with_the_router_loss(moe_sources, blocks, tmp_path):
    """The default plan's upcycled Mixtral loads, trains with the load-balancing loss on, and reports held-out
    losses without it."""
    grow(moe_sources["llama"], {"experts": 4, "experts_per_token": 2}, tmp_path / "grown")
    res = train(tmp_path / "grown", None, tmp_path / "run", TrainConfig(
        steps=6, batch_size=4, seq_len=32, lr=3e-3, warmup=0, eval_every=0, eval_batches=2, progress=False),
        Start(blocks=blocks))
    evals = res.loop.evals
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run", dtype=torch.float32).eval()
    assert model.config.output_router_logits is True and model.config.model_type == "mixtral"
    x = blocks.val[:2]
    with torch.no_grad():
        with_aux = model(input_ids=x, labels=x).loss
        lm = model(input_ids=x, labels=x, output_router_logits=False).loss
    assert with_aux > lm  # the router loss is on in training, and left out of the held-out loss


def test_flops_count_the_experts_a_token_uses():
    """An MoE layer costs its router plus experts_per_token of its experts per token: the analytic count equals
    torch's FLOP counter on transformers' eager experts (which compute only the tokens routed to each)."""
    from ligo.flops import forward_flops_per_token, measured_flops

    dense = tiny.make_model("llama", intermediate_size=96)
    cfg = tiny.config("mixtral", intermediate_size=96, num_local_experts=4, num_experts_per_tok=2)
    cfg._attn_implementation = "eager"
    moe = AutoModelForCausalLM.from_config(cfg, experts_implementation="eager").eval()
    ffn = 3 * 64 * 96
    assert matmul_params(moe) - matmul_params(dense) == pytest.approx(2 * (ffn + 4 * 64))  # one more expert, a router
    ids = torch.randint(0, tiny.VOCAB, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        measured = measured_flops(lambda: moe(input_ids=ids))
    dims = get_spec("mixtral").dims(moe.config.to_dict())
    assert measured / ids.numel() == pytest.approx(forward_flops_per_token(moe, dims, 32), rel=1e-6)


def test_inspect_reports_duplicated_experts(moe_sources, tmp_path):
    """Copied experts are duplicates; the symmetry-breaking plan's copies differ in their router rows."""
    for width in ("copy", "split"):
        grow(moe_sources["llama"], {"experts": 4, "experts_per_token": 2}, tmp_path / width,
             plan=GrowthPlan(width=width, depth="stack"))
        res = run_cli("inspect", str(tmp_path / width), "--units", "--json")
        assert res.returncode == 0, res.stderr
        experts = json.loads(res.stdout)["units"]["experts"]
        assert experts["units"] == 2 * 4 and experts["duplicate_writes"] == 8
        assert experts["duplicates"] == (8 if width == "copy" else 0)


def test_streaming_growth_writes_the_same_bytes(moe_sources, tmp_path):
    for stream in (False, True):
        Grower(moe_sources["qwen3_moe"], tiny.TARGET["qwen3_moe"], plan=GrowthPlan(width="split", depth="stack"),
               stream=stream).save(tmp_path / str(stream))
    a, b = load_checkpoint(tmp_path / "False").state, load_checkpoint(tmp_path / "True").state
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("source, target, message", [
    ("mixtral", {"experts": 8, "experts_per_token": 9}, "experts_per_tok=9 is larger than"),
    ("mixtral", {"experts": 2}, "smaller than the source's 4"),
    ("mixtral", {"experts": 6}, "which is no multiple"),
    ("qwen3_moe", {"mlp_only_layers": [1]}, "mlp_only_layers"),
    ("llama", {"experts": 4, "experts_per_token": 8}, "larger than"),
    ("llama", {"model_type": "qwen3_moe", "experts": 4}, "cannot be upcycled into qwen3_moe"),
])
def test_bad_targets_are_one_clear_line(source, target, message, moe_sources, tmp_path):
    with pytest.raises(LigoError, match=message):
        grow(moe_sources[source], target, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_experts_on_a_family_without_an_moe_class_is_one_clear_line(sources, corpus, tmp_path):
    target = write_json(tmp_path / "t.json", {"experts": 4})
    res = run_cli("grow", str(sources["gpt2"]), "--target", str(target), "--out", str(tmp_path / "out"))
    assert res.returncode != 0 and not (tmp_path / "out").exists()
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "no mixture-of-experts class to emit for gpt2" in err[0], res.stderr


def test_the_tables_declare_their_router_convention():
    assert get_spec("mixtral").router == {"normalized": True}
    assert get_spec("qwen3_moe").router == get_spec("olmoe").router == {"normalized": "norm_topk_prob"}
    assert get_spec("mixtral").upcycle["from"] == ["llama", "mistral"]


def test_a_live_run_is_not_grown_into_experts(moe_sources, blocks, tmp_path):
    """The run's checkpoint holds experts fused (transformers' layout), which live-run growth does not map:
    refused in one line, for an MoE run and for upcycling a dense run, naming the way that works."""
    from ligo.rungrowth import grow_checkpoint

    quick = dict(seq_len=32, batch_size=4, eval_every=0, eval_batches=1, progress=False, lr=3e-3, warmup=1)
    for mt, target in (("mixtral", {"experts": 8, "experts_per_token": 4}), ("llama", {"experts": 4})):
        run = tmp_path / mt
        train(moe_sources[mt], None, run, TrainConfig(steps=2, save_every=2, **quick), Start(blocks=blocks))
        with pytest.raises(LigoError, match="grow its final model with `ligo grow`"):
            grow_checkpoint(run, target)


def test_a_hub_config_that_names_experts_otherwise_is_read(moe_sources, tmp_path):
    """Qwen3-MoE configs on the hub say num_experts, transformers 5 writes num_local_experts: either is read,
    and the grown config keeps the source's key."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(moe_sources["qwen3_moe"], src)
    config = json.loads((src / "config.json").read_text())
    config["num_experts"] = config.pop("num_local_experts")
    (src / "config.json").write_text(json.dumps(config))
    assert load_checkpoint(src).dims.experts == 4
    grow(src, {"experts": 8, "experts_per_token": 4}, tmp_path / "out", plan=GrowthPlan(width="copy"))
    assert load_checkpoint(tmp_path / "out").dims.experts == 8


def test_every_fit_step_installs_the_current_experts(moe_sources):
    """Installing replaces the fused parameters with plain tensors; the next step must still install its own
    (the names and shapes are read once, before the first install). Before the fix the second step reused the
    first step's experts and failed with 'backward through the graph a second time'."""
    from ligo.moe import install_fused

    g = Grower(moe_sources["mixtral"], tiny.TARGET["mixtral"], plan=GrowthPlan(width="random", depth="stack"))
    module = FitModule(g.operator, g.target_model()).train()
    x = torch.randint(2, tiny.VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.SGD(g.operator.parameters(), lr=1.0)
    for _ in range(2):
        module(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    module(input_ids=x, labels=x)
    with torch.no_grad():
        expect = install_fused(g.spec, module._fused, g.operator(), g.operator.prefix, g.operator.tgt.experts)
    name = "model.layers.1.mlp.experts.gate_up_proj"
    installed = module.target.get_submodule("model.layers.1.mlp.experts").__dict__["gate_up_proj"]
    torch.testing.assert_close(installed.detach(), expect[name])
