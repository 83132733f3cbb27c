"""Depth maps as users mistype them: a map that leaves source layers out, expand:K beyond the source's depth, an
empty map, expand beside other items; a map with a live run's optimizer state and in grow-train without a target;
a grown model's recipe whose new layers were edited. Each is refused in one line naming the layers, or done right."""

import json

import pytest

import tiny
from conftest import assert_one_line_error

QUICK = ["--steps", "2", "--batch-size", "2", "--seq-len", "16", "--eval-batches", "1", "--no-progress"]


@pytest.fixture(scope="module")
def deep(tmp_path_factory, tokenizer):
    """A 6-layer and a 1-layer tiny Llama (transformers' own config class builds them)."""
    root = tmp_path_factory.mktemp("depth")
    return {n: tiny.save_model(tiny.make_model("llama", num_hidden_layers=n), root / f"llama{n}", tokenizer)
            for n in (6, 1)}


@pytest.mark.parametrize("layers, depth_map, left_out", [(6, "0-4,new", "5"), (6, "0,0,0,0,0,0", "1, 2, 3, 4, 5"),
                                                         (1, "new", "0")])
def test_a_map_that_leaves_source_layers_out_is_refused_naming_them(layers, depth_map, left_out, deep, tmp_path, cli):
    proc = cli("grow", deep[layers], "--depth-map", depth_map, "--out", tmp_path / "g")
    assert_one_line_error(proc, "grow", f"leaves out source layer\\(s\\) {left_out} of {layers} .*--drop-layers")
    assert not (tmp_path / "g").exists()


def test_drop_layers_lets_a_map_leave_layers_out_and_names_them(deep, tmp_path, cli):
    proc = cli("grow", deep[6], "--depth-map", "0-4,new", "--drop-layers", "--out", tmp_path / "g", check=True)
    assert "note: the depth map leaves out source layer(s) 5 (--drop-layers)" in proc.stderr
    recipe = json.loads((tmp_path / "g" / "ligo_recipe.json").read_text())
    assert recipe["plan"]["drop_layers"] and not recipe["lossless"]
    assert "the depth map leaves out source layer(s) 5, which changes the function" in recipe["not_lossless_because"]


def test_expand_beyond_the_source_depth_is_refused(deep, tmp_path, cli):
    proc = cli("grow", deep[6], "--depth-map", "expand:7", "--out", tmp_path / "g")
    assert_one_line_error(proc, "grow", "expand:7 adds an identity block after every 7 layers, and the source has only "
                                        "6, so it would add none; choose K from 1 to 6")
    assert not (tmp_path / "g").exists()
    cli("grow", deep[6], "--depth-map", "expand:6", "--out", tmp_path / "h", check=True)  # one block, at the end
    assert json.loads((tmp_path / "h" / "ligo_recipe.json").read_text())["new_layers"] == [6]


@pytest.mark.parametrize("depth_map, message", [
    ("", "the depth map is empty; give the source layer behind every target layer"),
    ("expand:2,new", "expand:K stands alone .*; give it without other items, or write the whole map out"),
    ("new,expand:2", "expand:K stands alone"),
])
def test_depth_map_syntax_errors_say_what_is_wrong(depth_map, message, deep, tmp_path, cli):
    assert_one_line_error(cli("grow", deep[6], "--depth-map", depth_map, "--out", tmp_path / "g"), "grow", message)


def test_a_live_run_grows_by_a_depth_map(deep, corpus, tmp_path, cli):
    """`ligo grow RUN --optimizer-state grow --depth-map ...`: no --depth was given, so none is said to clash."""
    cli("train", deep[6], "--data", corpus, "--out", tmp_path / "run", "--save-every", "2", *QUICK, check=True)
    cli("grow", tmp_path / "run", "--optimizer-state", "grow", "--depth-map", "0-5,new", "--out", tmp_path / "g",
        check=True)
    recipe = json.loads((tmp_path / "g" / "model" / "ligo_recipe.json").read_text())
    assert recipe["new_layers"] == [6] and recipe["lossless"]


def test_grow_train_takes_a_depth_map_without_a_target(deep, corpus, tmp_path, cli):
    cli("grow-train", deep[6], "--depth-map", "expand:3", "--data", corpus, "--out", tmp_path / "j", *QUICK, check=True)
    config = json.loads((tmp_path / "j" / "grown" / "config.json").read_text())
    assert config["num_hidden_layers"] == 8


@pytest.mark.parametrize("edited", [[99], "all", [1, 1], [True]], ids=["out-of-range", "all", "repeated", "bool"])
def test_freeze_refuses_a_recipe_whose_new_layers_were_edited(edited, deep, corpus, tmp_path, cli):
    grown = tmp_path / "pro"
    cli("grow", deep[6], "--depth-map", "expand:3", "--out", grown, check=True)
    path = grown / "ligo_recipe.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "new_layers": edited}))
    proc = cli("train", grown, "--data", corpus, "--freeze", "source-layers", "--out", tmp_path / "t", *QUICK)
    # a value of the recorded type that does not fit the model; one of another type is no recipe ligo wrote
    assert_one_line_error(proc, "train", "says new_layers is .*, which is no list of distinct layers of this 8-layer "
                                         "model \\(0-7\\)" if edited in ([99], [1, 1]) else
                          "ligo_recipe.json is no recipe ligo wrote \\(growth recipe: new_layers must be a list of int")
    assert not (tmp_path / "t").exists()


def test_freeze_from_scratch_says_there_is_nothing_new(deep, corpus, tmp_path, cli):
    proc = cli("train", "--from-config", deep[6] / "config.json", "--tokenizer", deep[6], "--data", corpus, "--freeze",
               "all-but-new", "--out", tmp_path / "t", *QUICK)
    assert_one_line_error(proc, "train", "a model trained from scratch \\(--from-config\\) has none: drop --freeze")
