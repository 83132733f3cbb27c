"""Growth plans are registered definitions (ligo/plans.py), and the plans of issue 42 do what they say: the depth
learned from the source's weights (reproducible from the source alone, streaming equal to in-memory), muP-scaled noise
on any plan, zero-padding, Muon for training, the fit's step rule chosen by the source."""

import json

import pytest
import torch

import tiny
from conftest import run_cli
from ligo import GrowthPlan, TrainConfig, grow, train
from ligo.checkpoint import load_checkpoint
from ligo.errors import LigoError


@pytest.fixture(scope="module")
def deep(tmp_path_factory, tokenizer):
    """A tiny Llama of 4 layers whose neighbouring layers share structure (each layer a noisy blend of the one
    before), as a trained model's do, so that the neighbour fit has something to find."""
    model = tiny.make_model("llama", num_hidden_layers=4)
    with torch.no_grad():
        layers = model.model.layers
        for i in range(1, 4):
            for p, q in zip(layers[i].parameters(), layers[i - 1].parameters()):
                p.copy_(0.8 * q + 0.2 * p)
    return tiny.save_model(model, tmp_path_factory.mktemp("deep") / "src", tokenizer)


def test_the_depth_learned_from_the_weights_is_reproducible_from_the_source_alone(deep, tmp_path):
    """Each new layer is its neighbours mixed by the coefficients that best predict every source layer from its own
    neighbours (per module, least squares): recomputed here from the source's tensors, they are the recipe's, the new
    layer is that mix, streaming writes the bytes the in-memory path writes, and the recipe says it is not lossless."""
    from ligo.plans import neighbour_fit

    out = {}
    for stream in (False, True):
        res = grow(deep, {"layers": 6}, tmp_path / str(stream), plan=GrowthPlan(depth="weights"), stream=stream)
        out[stream] = load_checkpoint(tmp_path / str(stream)).state
    assert out[True].keys() == out[False].keys() and all(torch.equal(out[True][k], out[False][k]) for k in out[True])
    record = json.loads((tmp_path / "True" / "ligo_recipe.json").read_text())
    assert record["plan"]["depth"] == "weights" and record["new_layers"] == [1, 4] and record["lossless"] is False
    src = load_checkpoint(deep).state
    name = "mlp.down_proj.weight"
    layers = [src[f"model.layers.{i}.{name}"].double().flatten() for i in range(4)]
    gram = [[float(a @ b) for b in layers] for a in layers]
    fit = neighbour_fit(gram)
    assert fit["between"] == pytest.approx(record["depth_fit"]["mlp.down_proj"]["between"], rel=1e-6)
    assert fit["between"][0] > 0.3  # a structured model's neighbours do predict each other
    a, b = fit["between"]
    expected = a * src[f"model.layers.0.{name}"] + b * src[f"model.layers.1.{name}"]
    torch.testing.assert_close(out[False][f"model.layers.1.{name}"], expected, rtol=1e-5, atol=1e-6)
    assert res.record.depth_fit == record["depth_fit"]


def test_perturb_adds_mup_scaled_noise_the_same_way_streaming_or_not(sources, tmp_path):
    """--perturb e: every grown projection gets noise of std e / sqrt(fan_in), seeded per layer: streaming and
    in-memory growth write the same bytes, the recipe says the start is not lossless and why, and without it the
    plan stays lossless."""
    target = {"hidden": 128, "heads": 8, "kv_heads": 4, "layers": 3}
    for stream in (False, True):
        grow(sources["llama"], target, tmp_path / str(stream), plan=GrowthPlan(perturb=0.05), stream=stream)
    grow(sources["llama"], target, tmp_path / "plain")
    a, b, plain = (load_checkpoint(tmp_path / d).state for d in ("False", "True", "plain"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    key = "model.layers.0.mlp.down_proj.weight"
    assert (a[key] - plain[key]).std().item() == pytest.approx(0.05 / a[key].shape[1] ** 0.5, rel=0.1)
    assert torch.equal(a["model.layers.0.input_layernorm.weight"], plain["model.layers.0.input_layernorm.weight"])
    recipes = [json.loads((tmp_path / d / "ligo_recipe.json").read_text()) for d in ("True", "plain")]
    assert recipes[0]["lossless"] is False and "--perturb" in recipes[0]["not_lossless_because"][0]
    assert recipes[1]["lossless"] is True and recipes[0]["plan"]["perturb"] == 0.05


def test_zero_pad_keeps_each_source_unit_once_and_pads_with_zeros(sources, tmp_path):
    """--width zeropad: every source unit (whole heads, GQA groups kept) once and whole, every new unit zero in what it
    writes and in what reads it; inside a layer nothing changes, so only the stream's norms see the zeros (the recipe
    says not lossless); streaming writes the same bytes; with --perturb the new units start small, not zero."""
    target = {"hidden": 128, "heads": 8, "kv_heads": 4, "layers": 2}
    for stream in (False, True):
        res = grow(sources["llama"], target, tmp_path / str(stream), plan=GrowthPlan(width="zeropad", depth="stack"),
                   stream=stream)
    grow(sources["llama"], target, tmp_path / "noisy", plan=GrowthPlan(width="zeropad", depth="stack", perturb=0.05))
    src = load_checkpoint(sources["llama"]).state
    a, b, noisy = (load_checkpoint(tmp_path / d).state for d in ("False", "True", "noisy"))
    assert all(torch.equal(a[k], b[k]) for k in a) and not res.record.lossless
    q, s = a["model.layers.0.self_attn.q_proj.weight"], src["model.layers.0.self_attn.q_proj.weight"]
    kept = [r for r in range(q.shape[0]) if q[r].abs().sum() > 0]
    assert len(kept) == s.shape[0]  # each source row once; the others zero
    assert torch.equal(q[kept][:, : s.shape[1]], s) and not q[kept][:, s.shape[1]:].any()
    down = a["model.layers.0.mlp.down_proj.weight"]
    assert not down[s.shape[1]:].any() and not down[:, src["model.layers.0.mlp.down_proj.weight"].shape[1]:].any()
    assert noisy["model.layers.0.mlp.down_proj.weight"][s.shape[1]:].abs().max() > 0


def test_muon_trains_resumes_and_is_refused_where_it_cannot_go(sources, corpus, tmp_path):
    """--optimizer muon: the loss falls; a run stopped at a checkpoint resumes to the losses of an uninterrupted
    one; a Muon run's state is not grown (its momentum is no per-unit quantity) and --fsdp is refused with it."""
    cfg = TrainConfig(steps=8, batch_size=4, seq_len=32, lr=3e-3, warmup=1, schedule="constant", eval_every=4,
                      eval_batches=1, optimizer="muon", save_every=4, progress=False)
    full = train(sources["llama"], corpus, tmp_path / "full", cfg)
    assert full.loop.evals[-1]["val_loss"] < full.loop.evals[0]["val_loss"]
    train(sources["llama"], corpus, tmp_path / "half", cfg.replace(steps=4))
    (tmp_path / "half" / "config.json").unlink()  # (stopped at its checkpoint, as a kill leaves it)
    train(sources["llama"], corpus, tmp_path / "half", cfg, resume=True)
    losses = [[json.loads(line)["loss"] for line in (tmp_path / d / "log.jsonl").read_text().splitlines()]
              for d in ("full", "half")]
    assert losses[0] == losses[1]
    proc = run_cli("grow", tmp_path / "half", "--target", '{"hidden": 128}', "--out", tmp_path / "g",
                   "--optimizer-state", "grow")
    assert proc.returncode == 2 and "--optimizer-state reset" in proc.stderr and not (tmp_path / "g").exists()
    with pytest.raises(LigoError, match="muon.*--fsdp"):
        TrainConfig(optimizer="muon", fsdp=True)


def test_the_fit_steps_its_width_maps_by_the_source():
    """width_lr auto: fan-in steps for a pretrained source (the uniform step threw SmolLM2-135M off), uniform for
    a source ligo trained weakly (where cpu-tiny measured it): resolved and recorded with the plan."""
    assert GrowthPlan().resolved(None).width_lr == "fan_in"
    assert GrowthPlan().resolved(5.0).width_lr == "uniform"
    assert GrowthPlan(width_lr="uniform").resolved(None).width_lr == "uniform"


def test_a_registered_width_init_is_a_plan_of_every_path(sources, text_ids, tmp_path):
    """Adding a plan is adding one entry: a width init registered here is a choice of GrowthPlan, of the operator,
    of the lossless check (it says it keeps the function, and the logits say so too)."""
    from ligo import plans

    copies = plans.WIDTH["copy"]
    plans.register_width(plans.WidthInit("twin", "copy, registered again under another name", copies.start,
                                         copies=True, lossless=True))
    try:
        res = grow(sources["llama"], {"hidden": 128, "heads": 8, "kv_heads": 4}, tmp_path / "out",
                   plan=GrowthPlan(width="twin", depth="identity"))
        assert res.record.plan["width"] == "twin" and res.record.lossless
        diff, _ = tiny.max_logit_diff(sources["llama"], tmp_path / "out", text_ids)
        assert diff <= 1e-4
    finally:
        plans.WIDTH.pop("twin")
    with pytest.raises(LigoError, match="width must be one of"):
        GrowthPlan(width="twin")
