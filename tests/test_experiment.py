"""Experiment files are typed and checked before any work; the orchestration keeps one owner per concern."""

import pytest

from conftest import assert_one_line_error
from ligo.errors import LigoError
from ligo.experiment import load_experiment

BASE = """\
name: x
model_type: llama
source:
  config: {hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1,
           intermediate_size: 64, max_position_embeddings: 64}
  train: {steps: 2}
target: {hidden_size: 64, num_hidden_layers: 2}
train: {steps: 2}
"""


@pytest.mark.parametrize("extra, message", [
    ("methods: {scratch: {}, s: {width: auto, depth: stack, stage: {at: 0.5}}}\n",
     "staged method needs a concrete width and depth"),
    ("methods: {scratch: {}, s: {width: split, depth: stack, per_layer: true, stage: {at: 0.5}}}\n",
     "takes only width, depth and split_noise"),
    ("methods: {scratch: {}, l: {width: random, depth: stack, fit: {share: big}}}\n", "fit share must be a number"),
    ("methods: [scratch, stack]\n", "methods must be a mapping of method names"),
    ("methods: {scratch: {}}\nseq_len: long\n", "seq_len must be int"),
    ("methods: {scratch: {}}\nbudgets: []\n", "budgets must be a list of positive numbers"),
])
def test_bad_experiments_fail_at_load(extra, message, tmp_path):
    (tmp_path / "e.yaml").write_text(BASE + extra)
    with pytest.raises(LigoError, match=message):
        load_experiment(tmp_path / "e.yaml")


def test_a_target_smaller_than_the_source_fails_before_any_training(tmp_path, cli):
    (tmp_path / "e.yaml").write_text(BASE.replace("target: {hidden_size: 64, num_hidden_layers: 2}",
                                                  "target: {hidden_size: 16}") + "methods: {scratch: {}}\n")
    assert_one_line_error(cli("bench", tmp_path / "e.yaml", "--out", tmp_path / "o"), "bench", "smaller")
    assert not (tmp_path / "o").exists()


def test_smoke_without_a_smoke_section_is_refused(tmp_path, cli):
    (tmp_path / "e.yaml").write_text(BASE + "methods: {scratch: {}}\n")
    assert_one_line_error(cli("bench", tmp_path / "e.yaml", "--smoke", "--out", tmp_path / "o"), "bench",
                          "has no smoke section, so --smoke would run the full-size experiment")
    assert not (tmp_path / "o").exists()


def test_defaults_come_from_the_settings_classes():
    """An experiment restates no default: training settings are TrainConfig's, the fit's FIT_DEFAULTS."""
    from ligo.config import FIT_DEFAULTS, GrowthStage, TrainConfig

    exp = load_experiment("demo")
    cfg = exp.train_config({})
    assert cfg.mixed_precision == TrainConfig.mixed_precision
    fit = exp.fit_spec(exp.methods["ligo"])
    merged = {**FIT_DEFAULTS, **fit.settings}
    section = exp.raw.get("fit") or {}
    for key in ("lr", "warmup", "eval_every", "patience", "weight_decay"):
        assert merged[key] == section.get(key, FIT_DEFAULTS[key]), key
    assert fit.share == section["share"] and "share" not in fit.settings
    assert GrowthStage().fit_lr == FIT_DEFAULTS["lr"]


def test_the_api_fit_runs_with_the_cli_fit_defaults(sources, blocks):
    """Grower.fit() without settings fits as `ligo grow --fit-steps` does (FIT_DEFAULTS), at most 100 steps."""
    from ligo import Grower, GrowthPlan
    from ligo.config import FIT_DEFAULTS, FIT_STEPS_API

    grower = Grower(sources["llama"], {"hidden": 64}, GrowthPlan(width="random", depth="stack"))
    grower.fit(blocks=blocks)
    cfg = grower.fit_record.config
    assert {k: cfg[k] for k in FIT_DEFAULTS if k != "steps"} == {k: v for k, v in FIT_DEFAULTS.items() if k != "steps"}
    assert cfg["steps"] == FIT_STEPS_API and grower.fit_record.steps <= FIT_STEPS_API


def test_accelerate_checkpoint_names_match_accelerate():
    from accelerate.utils import constants as c

    from ligo import rundir

    assert rundir.WEIGHTS_FILE == c.SAFE_WEIGHTS_NAME
    assert rundir.OPTIMIZER_FILE == f"{c.OPTIMIZER_NAME}.bin"
    assert rundir.CARRIED_PREFIXES == (c.RNG_STATE_NAME, c.SCALER_NAME.split(".")[0])


