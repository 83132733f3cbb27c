"""Depth up-scaling checked against mergekit itself (0.1.5, in the dev extra): a passthrough config run by mergekit
and by `ligo grow --from-mergekit` writes the same tensors, byte for byte, for every family both read; the depth
maps that mergekit cannot say (identity blocks) and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import tiny
from conftest import assert_one_line_error

mergekit = pytest.importorskip("mergekit")

# the families ligo and mergekit 0.1.5 both grow (mergekit refuses gpt_neox's checkpoints and writes qwen2/qwen3
# configs whose layer_types no longer match their depth)
FAMILIES = ("llama", "mistral", "gemma", "phi3", "olmo2", "gpt2", "granite")


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _run_mergekit(config: dict, out: Path) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    run_merge(MergeConfiguration.model_validate(config), str(out), options=MergeOptions(quiet=True, lazy_unpickle=True,
                                                                                         write_model_card=False))


def _config(src: Path, ranges, dtype: str = "float32", zero: tuple = ()) -> dict:
    slices = []
    for i, (a, b) in enumerate(ranges):
        source = {"model": str(src), "layer_range": [a, b]}
        if i in zero:  # an identity block, as mergekit users write one
            source["parameters"] = {"scale": [{"filter": "o_proj", "value": 0.0}, {"filter": "down_proj", "value": 0.0},
                                              {"value": 1.0}]}
        slices.append({"sources": [source]})
    return {"slices": slices, "merge_method": "passthrough", "dtype": dtype}


@pytest.fixture(scope="module")
def deep_sources(tmp_path_factory, tokenizer):
    """Tiny random models of 4 layers (a SOLAR overlap needs more than two)."""
    root = tmp_path_factory.mktemp("deep")
    out = {mt: tiny.save_model(tiny.make_model(mt, **({"n_layer": 4} if mt == "gpt2" else {"num_hidden_layers": 4})),
                               root / mt, tokenizer) for mt in FAMILIES}
    out["llama-tied"] = tiny.save_model(tiny.make_model("llama", num_hidden_layers=4, tie_word_embeddings=True),
                                        root / "llama-tied", tokenizer)
    return out


@pytest.mark.parametrize("case", [*((mt, "solar", "float32") for mt in FAMILIES), ("llama", "stack", "float32"),
                                  ("llama-tied", "solar", "bfloat16")], ids=lambda c: "-".join(c))
def test_passthrough_writes_what_mergekit_writes(case, deep_sources, tmp_path, cli):
    name, layout, dtype = case
    ranges = [(0, 3), (1, 4)] if layout == "solar" else [(0, 4), (0, 4)]  # SOLAR's overlap; a plain stack
    config = _config(deep_sources[name], ranges, dtype)
    (tmp_path / "merge.yml").write_text(yaml.safe_dump(config))
    _run_mergekit(config, tmp_path / "mergekit")
    cli("grow", "--from-mergekit", tmp_path / "merge.yml", "--out", tmp_path / "ligo", check=True)
    theirs, ours = _tensors(tmp_path / "mergekit"), _tensors(tmp_path / "ligo")
    assert sorted(theirs) == sorted(ours)
    for key, t in theirs.items():
        assert t.dtype == ours[key].dtype and torch.equal(t, ours[key]), key
    layers = json.loads((tmp_path / "ligo" / "config.json").read_text())
    assert layers.get("num_hidden_layers", layers.get("n_layer")) == sum(b - a for a, b in ranges)


def test_identity_blocks_from_mergekit_and_from_a_depth_map_are_the_same(deep_sources, tmp_path, cli, blocks):
    """mergekit's way of writing a LLaMA-Pro block (a slice scaled to zero on its output projections) reads as
    ligo's new:K; the model keeps the source's function (an identity block is an identity)."""
    src = deep_sources["llama"]
    config = _config(src, [(0, 2), (1, 2), (2, 4), (3, 4)], zero=(1, 3))
    (tmp_path / "merge.yml").write_text(yaml.safe_dump(config))
    _run_mergekit(config, tmp_path / "mergekit")
    cli("grow", "--from-mergekit", tmp_path / "merge.yml", "--out", tmp_path / "from-yaml", check=True)
    cli("grow", src, "--depth-map", "0-1,new,2-3,new", "--width", "copy", "--out", tmp_path / "from-map", check=True)
    theirs, yaml_ours, map_ours = (_tensors(tmp_path / d) for d in ("mergekit", "from-yaml", "from-map"))
    assert all(torch.equal(theirs[k], yaml_ours[k]) and torch.equal(theirs[k], map_ours[k]) for k in theirs)
    diff, _ = tiny.max_logit_diff(src, tmp_path / "from-map", blocks.val[:2])
    assert diff <= 1e-5
    recipe = json.loads((tmp_path / "from-map" / "ligo_recipe.json").read_text())
    assert recipe["plan"]["depth_map"] == "0-1,new,2-3,new" and recipe["new_layers"] == [2, 5] and recipe["lossless"]


@pytest.mark.parametrize("config, message", [
    ({"merge_method": "slerp", "slices": []}, "merge_method 'slerp' is not supported"),
    ({"merge_method": "passthrough", "slices": [{"sources": [{"model": "a", "layer_range": [0, 2]},
                                                              {"model": "b", "layer_range": [0, 2]}]}]},
     "slice 1 must have exactly one source"),
    ({"merge_method": "passthrough", "slices": [{"sources": [{"model": "SRC", "layer_range": [2, 1]}]}]},
     "layer_range must be \\[start, end\\)"),
    ({"merge_method": "passthrough", "slices": [{"sources": [{"model": "SRC", "layer_range": [0, 9]}]}]},
     "layer 8 is out of range; the source has 4 layers"),
    ({"merge_method": "passthrough", "models": [], "slices": []}, "are not read by ligo"),
])
def test_mergekit_configs_ligo_does_not_read_are_one_line(config, message, deep_sources, tmp_path, cli):
    text = yaml.safe_dump(config).replace("SRC", str(deep_sources["llama"]))
    (tmp_path / "bad.yml").write_text(text)
    assert_one_line_error(cli("grow", "--from-mergekit", tmp_path / "bad.yml", "--out", tmp_path / "o"), "grow", message)
    assert not (tmp_path / "o").exists()
