"""A strongly trained source (trained here for 20 tokens per parameter; then, like a checkpoint from elsewhere,
without ligo's record of its training): the default plan keeps what it knows, `ligo grow --data` measures the
start and warns when a plan loses more than a nat; the auto plan's rule from the source's training."""

import json

import pytest

from conftest import run_cli
from ligo import TrainConfig, grow
from ligo.config import WEAK_SOURCE_TOKENS_PER_PARAM
from ligo.training import Start, train

SOURCE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
              intermediate_size=64, max_position_embeddings=128, tie_word_embeddings=True)
TARGET = {"hidden": 64, "layers": 3, "heads": 4, "kv_heads": 2, "ffn": 128}


@pytest.fixture(scope="module")
def strong_source(tmp_path_factory, tokenizer, corpus):
    """A 2x32 Llama trained on the corpus for 20 tokens per parameter (ligo's recipe records them)."""
    from ligo.data import load_blocks

    blocks = load_blocks(corpus, tokenizer, 64)
    out = tmp_path_factory.mktemp("strong") / "source"
    tokenizer.save_pretrained(out.parent / "tok")
    cfg = {**SOURCE, "model_type": "llama", "vocab_size": len(tokenizer), "bos_token_id": 0, "eos_token_id": 0}
    steps = 640  # x 16 x 64 tokens = 655k tokens for ~31k parameters
    train(None, None, out, TrainConfig(steps=steps, batch_size=16, seq_len=64, lr=1e-2, warmup=20, eval_every=0,
                                       progress=False), Start(from_config=cfg, tokenizer=out.parent / "tok", blocks=blocks))
    from ligo.growth import Grower
    from ligo.records import load_recipe

    assert load_recipe(out).trained_tokens() / Grower(out, TARGET).source_params >= 20
    (out / "ligo_recipe.json").unlink()  # now a checkpoint from elsewhere: its training unknown to ligo
    return out


@pytest.mark.parametrize("tokens_per_param, plan", [(5, ("random", "stack")), (100, ("random", "stack")),
                                                    (WEAK_SOURCE_TOKENS_PER_PARAM, ("split", "identity")),
                                                    (15_000, ("split", "identity")), (None, ("split", "identity"))])
def test_the_auto_plan_follows_the_sources_training(tokens_per_param, plan):
    from ligo import GrowthPlan

    resolved = GrowthPlan().resolved(tokens_per_param)
    assert (resolved.width, resolved.depth) == plan
    assert GrowthPlan(depth="identity").resolved(tokens_per_param).width == "split"  # identity asks for lossless
    assert GrowthPlan(width="random").resolved(tokens_per_param).depth == "stack"


def test_the_default_plan_keeps_a_strong_source_and_random_width_is_warned(strong_source, corpus, tmp_path):
    target = json.dumps(TARGET)
    proc = run_cli("grow", strong_source, "--target", target, "--out", tmp_path / "default", "--data", corpus,
                   check=True)
    recipe = json.loads((tmp_path / "default" / "ligo_recipe.json").read_text())
    assert recipe["plan"]["width"] == "split" and recipe["plan"]["depth"] == "identity"
    assert recipe["source_tokens"] is None
    check = recipe["start_check"]
    assert abs(check["gap"]) < 1e-3 and "warning" not in proc.stderr, (check, proc.stderr)
    assert f"source {check['source_loss']:.4f}, grown {check['grown_loss']:.4f}" in proc.stdout
    proc = run_cli("grow", strong_source, "--target", target, "--out", tmp_path / "random", "--data", corpus,
                   "--width", "random", "--depth", "stack", check=True)
    gap = json.loads((tmp_path / "random" / "ligo_recipe.json").read_text())["start_check"]["gap"]
    assert gap > 1.0, gap
    warning = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "--width split --depth identity" in warning[0] and "--fit-steps" in warning[0]


def test_a_weakly_trained_ligo_source_gets_the_paper_init(tokenizer, blocks, tmp_path):
    """A source ligo trained (its recipe says for how long) under the threshold: the paper's init, stacked."""
    cfg = {**SOURCE, "model_type": "llama", "vocab_size": len(tokenizer), "bos_token_id": 0, "eos_token_id": 0}
    tokenizer.save_pretrained(tmp_path / "tok")
    train(None, None, tmp_path / "weak", TrainConfig(steps=4, batch_size=4, seq_len=32, eval_every=0, progress=False),
          Start(from_config=cfg, tokenizer=tmp_path / "tok", blocks=blocks))
    result = grow(tmp_path / "weak", TARGET, tmp_path / "grown")
    assert (result.plan.width, result.plan.depth) == ("random", "stack")
    assert result.record.source_tokens == 4 * 4 * 32 and result.record.source_flops > 0


def test_a_negative_check_is_one_clear_line(strong_source, corpus, tmp_path):
    proc = run_cli("grow", strong_source, "--target", json.dumps(TARGET), "--out", tmp_path / "o", "--data", corpus,
                   "--check-blocks", "-1")
    assert proc.returncode == 2 and "--check-blocks must be a number of blocks, 0 or more" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("width_lr, advice", [("uniform", "--width-lr fan_in"), ("fan_in", "a smaller --fit-lr")])
def test_a_fit_that_never_improves_says_so_and_what_to_change(width_lr, advice, sources, corpus, tmp_path):
    """A fit whose every step raises the held-out loss keeps its start (as on SmolLM2-135M with uniform map steps):
    ligo grow says that the fit bought nothing and which setting to change."""
    proc = run_cli("grow", sources["llama"], "--target", '{"hidden": 128}', "--out", tmp_path / "g", "--data", corpus,
                   "--width", "split", "--depth", "identity", "--width-lr", width_lr, "--fit-steps", "3",
                   "--fit-lr", "1", "--fit-eval-every", "1", "--fit-seq-len", "32", "--fit-batch-size", "4",
                   "--fit-eval-batches", "2", "--no-progress", check=True)
    recipe = json.loads((tmp_path / "g" / "ligo_recipe.json").read_text())
    assert recipe["fit"]["best_step"] == 0
    note = [line for line in proc.stderr.splitlines() if line.startswith("note: no fit step improved")]
    assert len(note) == 1 and advice in note[0], proc.stderr
