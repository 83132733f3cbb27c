"""The growth operator: lossless starts, the fixed methods as exact special cases, fitting, materializing."""

import pytest
import torch

import tiny
from conftest import run_cli, write_json
from ligo import Grower, GrowthPlan, TrainConfig, grow
from ligo.checkpoint import load_checkpoint
from ligo.diagnostics import unit_report


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def rel_err(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


def lossless_target(model_type):
    target = dict(tiny.TARGET[model_type])
    if model_type in ("bert", "roberta"):  # post-norm: a zero-output layer is not an identity
        target["num_hidden_layers"] = tiny.SOURCE[model_type]["num_hidden_layers"]
    return target


def _ids(n=24):
    return torch.randint(4, tiny.VOCAB, (2, n), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("width", ["split", "copy"])
@pytest.mark.parametrize("model_type", tiny.ARCHS)
def test_lossless_growth(model_type, width, sources, tmp_path):
    """Saved output, loaded with AutoModel*.from_pretrained, gives the source's logits."""
    grow(sources[model_type], lossless_target(model_type), tmp_path / "out", plan=GrowthPlan(width=width, depth="identity"))
    src = tiny.model_cls(model_type).from_pretrained(sources[model_type], attn_implementation="eager").eval()
    out = tiny.model_cls(model_type).from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert out.config.hidden_size == 2 * src.config.hidden_size
    assert rel_err(logits(src, _ids()), logits(out, _ids())) <= 1e-4
    assert {"ligo_recipe.json", "tokenizer.json", "README.md", "config.json"} <= {p.name for p in (tmp_path / "out").iterdir()}


def test_lossless_growth_through_the_console_script(sources, tmp_path):
    target = write_json(tmp_path / "target.json", lossless_target("llama"))
    proc = run_cli("grow", sources["llama"], "--target", target, "--out", tmp_path / "out", "--depth", "identity",
                   check=True)
    assert "grew llama 2L-64 -> 4L-128 (width split, depth identity)" in proc.stdout
    src = tiny.model_cls("llama").from_pretrained(sources["llama"]).eval()
    out = tiny.model_cls("llama").from_pretrained(tmp_path / "out").eval()
    assert rel_err(logits(src, _ids()), logits(out, _ids())) <= 1e-4


@pytest.mark.parametrize("model_type", tiny.DECODERS)
def test_lossless_with_tied_embeddings(model_type, tmp_path, tokenizer):
    src_dir = tiny.save_model(tiny.make_model(model_type, tie_word_embeddings=True), tmp_path / "src", tokenizer)
    grow(src_dir, lossless_target(model_type), tmp_path / "out", depth="identity")
    src = tiny.model_cls(model_type).from_pretrained(src_dir, attn_implementation="eager").eval()
    out = tiny.model_cls(model_type).from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert out.config.tie_word_embeddings
    assert rel_err(logits(src, _ids(16)), logits(out, _ids(16))) <= 1e-4


def _state(path):
    return load_checkpoint(path).state


@pytest.mark.parametrize("model_type", tiny.ARCHS)
@pytest.mark.parametrize("depth", ["stack", "interleave"])
def test_depth_methods_equal_hand_built_models(model_type, depth, sources, tmp_path):
    """Same width, 2 -> 5 layers: every layer is a verbatim copy of the source layer the method names."""
    grow(sources[model_type], {"layers": 5}, tmp_path / "out", plan=GrowthPlan(width="copy", depth=depth))
    src, out = _state(sources[model_type]), _state(tmp_path / "out")
    prefix = {"gpt2": "h.{}.", "bert": "encoder.layer.{}.", "roberta": "encoder.layer.{}."}.get(model_type, "layers.{}.")
    hand = {}
    for i in range(5):
        j = i % 2 if depth == "stack" else i * 2 // 5
        for key, value in src.items():
            if prefix.format(j) in key:
                hand[key.replace(prefix.format(j), prefix.format(i))] = value
            elif not any(prefix.format(x) in key for x in range(2)):
                hand[key] = value
    assert set(hand) == set(out)
    for key in hand:
        torch.testing.assert_close(out[key], hand[key], rtol=0, atol=0, msg=key)


def test_identity_depth_inserts_zero_output_layers(sources, tmp_path):
    grow(sources["llama"], {"num_hidden_layers": 4}, tmp_path / "out", plan=GrowthPlan(width="copy", depth="identity"))
    src, out = _state(sources["llama"]), _state(tmp_path / "out")
    # target layers 0,1,2,3 <- source 0,0,1,1; layers 1 and 3 are new, with zero output projections
    for i, j in enumerate([0, 0, 1, 1]):
        for name in ("self_attn.q_proj.weight", "mlp.up_proj.weight", "input_layernorm.weight"):
            assert torch.equal(out[f"model.layers.{i}.{name}"], src[f"model.layers.{j}.{name}"])
        for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            expect = torch.zeros_like if i in (1, 3) else (lambda t: t)
            assert torch.equal(out[f"model.layers.{i}.{name}"], expect(src[f"model.layers.{j}.{name}"]))


def test_copy_equals_hand_built_net2net(sources, tmp_path):
    """Llama 64 -> 128 hidden, 4 -> 8 heads, 2 -> 4 kv heads, 96 -> 192 FFN, same depth: index by index."""
    target = {"hidden_size": 128, "num_attention_heads": 8, "num_key_value_heads": 4, "intermediate_size": 192}
    grow(sources["llama"], target, tmp_path / "out", plan=GrowthPlan(width="copy", depth="stack"))
    src, out = _state(sources["llama"]), _state(tmp_path / "out")
    d1, f1, hd = 64, 96, 16
    res = torch.arange(128) % d1           # residual dim j copies j mod 64, each twice
    ffn = torch.arange(192) % f1
    kv = torch.arange(4) % 2               # kv head j copies j mod 2
    # query head i is in group i // 2 (of kv head kv[i // 2]); copies cycle through that group's 2 heads
    q = torch.tensor([kv[i // 2] * 2 + (i % 2) for i in range(8)])
    heads = lambda sel: (sel[:, None] * hd + torch.arange(hd)).flatten()  # noqa: E731
    p = "model.layers.0."
    hand = {
        "model.embed_tokens.weight": src["model.embed_tokens.weight"][:, res],
        "lm_head.weight": src["lm_head.weight"][:, res],
        "model.norm.weight": src["model.norm.weight"][res] / 2,
        p + "input_layernorm.weight": src[p + "input_layernorm.weight"][res],
        p + "self_attn.q_proj.weight": src[p + "self_attn.q_proj.weight"][heads(q)][:, res] / 2,
        p + "self_attn.k_proj.weight": src[p + "self_attn.k_proj.weight"][heads(kv)][:, res] / 2,
        p + "self_attn.v_proj.weight": src[p + "self_attn.v_proj.weight"][heads(kv)][:, res] / 2,
        p + "self_attn.o_proj.weight": src[p + "self_attn.o_proj.weight"][res][:, heads(q)] / 2,
        p + "mlp.gate_proj.weight": src[p + "mlp.gate_proj.weight"][ffn][:, res] / 2,
        p + "mlp.up_proj.weight": src[p + "mlp.up_proj.weight"][ffn][:, res] / 2,
        p + "mlp.down_proj.weight": src[p + "mlp.down_proj.weight"][res][:, ffn] / 2,
    }
    for key, value in hand.items():
        torch.testing.assert_close(out[key], value, rtol=1e-6, atol=1e-7, msg=key)


def test_split_is_lossless_and_asymmetric(sources, tmp_path):
    for width in ("split", "copy"):
        grow(sources["llama"], lossless_target("llama"), tmp_path / width, width=width, depth="identity")
    for name, dup in (("split", False), ("copy", True)):
        ck = load_checkpoint(tmp_path / name)
        rep = unit_report(ck.state, ck.layout, ck.spec, ck.dims)
        for space in ("res", "ffn", "heads"):
            assert (rep[space]["duplicates"] > 0) == dup, (name, space, rep[space])


@pytest.mark.parametrize("model_type, tie", [("llama", False), ("llama", True), ("gpt2", True), ("bert", True)])
def test_fit_lowers_loss_and_materialized_equals_fitted(model_type, tie, sources, blocks, tmp_path, tokenizer):
    from ligo.fit import FitModule

    src_dir = sources[model_type]
    if model_type == "llama" and tie:
        src_dir = tiny.save_model(tiny.make_model("llama", tie_word_embeddings=True), tmp_path / "src", tokenizer)
    # (the tiny random source carries no training record, so auto would take it for a pretrained one: fan_in)
    g = Grower(src_dir, tiny.TARGET[model_type], GrowthPlan(width="random", depth="stack", width_lr="uniform"))
    cfg = TrainConfig(steps=40, batch_size=8, seq_len=32, lr=3e-3, warmup=5, eval_every=20, eval_batches=4,
                      progress=False)
    result = g.fit(cfg=cfg, blocks=blocks)
    assert g.fit_record.final_val_loss < result.evals[0]["val_loss"] - 0.05, result.evals
    g.save(tmp_path / "out")
    model = tiny.model_cls(model_type).from_pretrained(tmp_path / "out").eval()
    assert model.config.tie_word_embeddings == tie
    batch = {"input_ids": blocks.val[:8], "labels": blocks.val[:8]}
    fitted = FitModule(g.operator, g.target_model()).eval()
    with torch.no_grad():
        a, b = fitted(**batch).loss.item(), model(**batch).loss.item()
    assert abs(a - b) <= 1e-5, (a, b)


def test_a_fit_never_ends_worse_than_its_best_point(sources, blocks):
    """An LR far too high wrecks the operator; the fit ends at its best held-out point, not its last."""
    from ligo.fit import FitModule

    g = Grower(sources["llama"], lossless_target("llama"), GrowthPlan())
    before = {k: v.clone() for k, v in g.operator.state_dict().items()}
    cfg = TrainConfig(steps=4, batch_size=4, seq_len=32, lr=5.0, warmup=0, eval_every=2, eval_batches=2,
                      clip=0.0, progress=False)
    result = g.fit(cfg=cfg, blocks=blocks)
    vals = [e["val_loss"] for e in result.evals]
    best = min(range(len(vals)), key=vals.__getitem__)
    assert vals[-1] > vals[best] + 0.5, vals  # the fit really did get worse
    assert g.fit_record.best_step == result.evals[best]["step"] and g.fit_record.final_val_loss == vals[best]
    module = FitModule(g.operator, g.target_model()).eval()
    with torch.no_grad():  # the operator now scores what it scored at its best evaluation
        loss = sum(module(input_ids=blocks.val[i:i + 4], labels=blocks.val[i:i + 4]).loss.item() for i in (0, 4)) / 2
    assert abs(loss - vals[best]) < 1e-4, (loss, vals)
    if best == 0:
        assert all(torch.equal(v, before[k]) for k, v in g.operator.state_dict().items())


def test_evaluation_builds_the_weights_once(sources, blocks):
    from ligo.fit import FitModule

    g = Grower(sources["llama"], lossless_target("llama"))
    module = FitModule(g.operator, g.target_model()).eval()
    calls = []
    real = g.operator.forward
    g.operator.forward = lambda: calls.append(1) or real()
    with torch.no_grad():
        for i in range(3):
            module(input_ids=blocks.val[i:i + 2], labels=blocks.val[i:i + 2])
    assert len(calls) == 1
    module.train()
    module(input_ids=blocks.val[:2], labels=blocks.val[:2])
    assert len(calls) == 2


@pytest.mark.parametrize("model_type, plan", [
    ("llama", GrowthPlan(width="split", depth="identity")), ("llama", GrowthPlan(width="random", depth="stack")),
    ("llama", GrowthPlan(per_layer=True)), ("gpt2", GrowthPlan(width="random", depth="stack")),
    ("bert", GrowthPlan(width="copy", depth="interleave"))])
def test_build_flops_match_the_pytorch_counter(model_type, plan, sources):
    from ligo.flops import build_flops, measured_flops

    g = Grower(sources[model_type], tiny.TARGET[model_type], plan)
    assert build_flops(g.operator) == measured_flops(lambda: sum(v.float().sum() for v in g.operator().values()))


def test_non_integer_growth_loads_generates_and_starts_close(tmp_path, tokenizer, blocks):
    """A SmolLM2-135M -> 360M-like shape, scaled down: 9 -> 15 heads, 3 -> 5 kv heads, 72 -> 120 hidden."""
    src = tiny.make_model("llama", hidden_size=72, num_attention_heads=9, num_key_value_heads=3,
                          intermediate_size=192, num_hidden_layers=3, tie_word_embeddings=True, head_dim=8)
    src_dir = tiny.save_model(src, tmp_path / "src", tokenizer)
    target = {"hidden_size": 120, "num_attention_heads": 15, "num_key_value_heads": 5, "intermediate_size": 320,
              "num_hidden_layers": 5}
    grow(src_dir, target, tmp_path / "split", plan=GrowthPlan(width="split", depth="identity"))
    grow(src_dir, target, tmp_path / "stack", plan=GrowthPlan(width="copy", depth="stack"))
    out = tiny.model_cls("llama").from_pretrained(tmp_path / "split").eval()
    assert (out.config.hidden_size, out.config.num_attention_heads, out.config.num_key_value_heads) == (120, 15, 5)
    gen = out.generate(blocks.val[:1, :8], max_new_tokens=5, do_sample=False)
    assert gen.shape == (1, 13)

    def kl(path):  # mean KL(source || grown) of the next-token distributions on real text
        model = tiny.model_cls("llama").from_pretrained(path).eval()
        p, q = logits(src, blocks.val[:4]).log_softmax(-1), logits(model, blocks.val[:4]).log_softmax(-1)
        return (p.exp() * (p - q)).sum(-1).mean().item()

    # some residual units have two copies and some one (ratio 5/3): scaled copies keep RMSNorm's statistic,
    # so the lossless plan is exact at this ratio too (ligo 0.2's plain copies moved the KL to ~1e-4)
    assert abs(kl(tmp_path / "split")) < 1e-6 and kl(tmp_path / "stack") > 1e-3
    split = tiny.model_cls("llama").from_pretrained(tmp_path / "split").eval()
    assert (logits(src, blocks.val[:4]) - logits(split, blocks.val[:4])).abs().max() <= 1e-4


def test_the_operator_grows_any_source_shaped_state(sources):
    """What optimizer-state growth relies on: the maps applied to another state with the source's keys."""
    g = Grower(sources["llama"], lossless_target("llama"), GrowthPlan(width="random", depth="stack"))
    src = load_checkpoint(sources["llama"]).state
    weights = g.operator.materialize()
    assert all(torch.equal(weights[k], v) for k, v in g.operator.materialize(state=src).items())
    twice = g.operator.materialize(state={k: 2 * v for k, v in src.items()})
    assert all(torch.allclose(twice[k], 2 * weights[k]) for k in weights)
    ones_state = {k: torch.ones_like(v) for k, v in src.items()}
    ones = g.operator.materialize(state=ones_state, absolute=True)
    plain = g.operator.materialize(state=ones_state)
    assert all(torch.equal(ones[k], v) for k, v in plain.items())  # the paper's init: non-negative maps
    with torch.no_grad():
        g.operator.width["res"].neg_()  # |maps| are what the absolute application reads: a sign flip is invisible
    assert all(torch.equal(ones[k], v) for k, v in g.operator.materialize(state=ones_state, absolute=True).items())
    flipped = g.operator.materialize(state=ones_state)
    assert torch.equal(flipped["model.embed_tokens.weight"], -plain["model.embed_tokens.weight"])



def test_the_fit_with_gradient_checkpointing_matches(sources, blocks):
    """Layers recomputed in the backward pass see the operator's weights: the same losses as without."""
    runs = []
    for checkpointing in (False, True):
        g = Grower(sources["llama"], tiny.TARGET["llama"], GrowthPlan(width="random", depth="stack"))
        cfg = TrainConfig(steps=4, batch_size=4, seq_len=32, lr=3e-3, warmup=1, eval_every=2, eval_batches=2,
                          grad_checkpointing=checkpointing, progress=False)
        runs.append([r["loss"] for r in g.fit(cfg=cfg, blocks=blocks).history])
    assert max(abs(a - b) for a, b in zip(*runs)) < 1e-5, runs


@pytest.mark.parametrize("shape,axis", [((64,), 0), ((64, 5), 0), ((5, 64), 1), ((3, 64, 4), 1), ((2, 3, 64), 2)])
def test_fast_index_select_equals_torchs(shape, axis):
    """The copy maps' gather (runs of consecutive units moved as slices, else flattened kernels) gives
    exactly ``index_select``'s values, for indices made of runs, of scattered units and of one unit."""
    from ligo.apply import _index_select
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    n = shape[axis]
    for index in ([*range(n), *range(5)], [*range(40, 64), *range(0, 40), 11], torch.randperm(n).tolist(), [3],
                  [*range(n)] * 3, [*range(8, 16), *range(0, 8)] * 4):
        index = torch.tensor(index)
        assert torch.equal(_index_select(w, axis, index), w.index_select(axis, index)), index


def test_materializing_gathers_what_the_dense_maps_give(sources):
    """Split width with identity depth has two groups of layer maps: the copies (selections, gathered when
    materializing) and the new identity layers' random mixtures (dense). Materialized group by group, every
    weight is what the dense maps give (the fit's arithmetic): the copied layers exactly, the mixtures to float
    rounding."""
    g = Grower(sources["llama"], lossless_target("llama"), GrowthPlan(width="split", depth="identity"))
    op = g.operator
    assert len(op.width["ffn"]) == 2 and op.selection("ffn", False, group=0) is not None
    assert op.selection("ffn", False, group=1) is None
    built = op.materialize()
    with torch.no_grad():
        at_once = op()  # every layer at once, each group by its own map
    with torch.enable_grad():
        dense = {k: v.detach() for k, v in op().items()}
    fresh = {f".layers.{i}." for i in op.identity_rows}
    assert fresh and set(built) <= set(dense)
    for key, value in built.items():
        for other in (at_once[key], dense[key]):
            if any(f in key for f in fresh):
                assert torch.allclose(value, other, rtol=1e-6, atol=1e-7), key
            else:
                assert torch.equal(value, other), key
