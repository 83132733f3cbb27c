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
# without a bias and parallel blocks (cohere2), biases everywhere (starcoder2), a partial-rotary parallel block (phi)
SAMPLE = ("apertus", "helium", "falcon", "gpt_bigcode", "olmo", "cohere2", "starcoder2", "phi")


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
