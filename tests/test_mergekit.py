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


# -- the scale parameter, read as mergekit reads it: what ligo can write is written byte for byte, the rest refused --
IDENTITY = [{"filter": "o_proj", "value": 0}, {"filter": "down_proj", "value": 0}]


def _scaled(src, scale, where: str = "source", first: int = 0) -> dict:
    """A passthrough of a 4-layer model: its layers [0, 3), [2, 3) again, then [3, 4); ``scale`` (on the source or
    the slice) on the first slice (``first`` 0) or on the repeated one (1, written as output layer 3)."""
    slices = [{"sources": [{"model": str(src), "layer_range": rng}]} for rng in ([0, 3], [2, 3], [3, 4])]
    target = slices[first] if where == "slice" else slices[first]["sources"][0]
    target["parameters"] = {"scale": scale}
    return {"slices": slices, "merge_method": "passthrough", "dtype": "float32"}


@pytest.mark.parametrize("scale, where", [(IDENTITY, "source"), (IDENTITY + [{"value": 1}], "slice"), (1.0, "source"),
                                          ([{"filter": "*", "value": 1}], "slice")],
                         ids=["identity", "identity-on-slice", "one", "star"])
def test_scales_ligo_can_say_are_written_as_mergekit_writes_them(scale, where, deep_sources, tmp_path, cli):
    config = _scaled(deep_sources["llama"], scale, where, first=1)
    (tmp_path / "merge.yml").write_text(yaml.safe_dump(config))
    _run_mergekit(config, tmp_path / "mergekit")
    cli("grow", "--from-mergekit", tmp_path / "merge.yml", "--out", tmp_path / "ligo", check=True)
    theirs, ours = _tensors(tmp_path / "mergekit"), _tensors(tmp_path / "ligo")
    assert sorted(theirs) == sorted(ours) and all(torch.equal(theirs[k], ours[k]) for k in theirs)


def test_a_scale_that_zeroes_another_module_is_refused_naming_its_filter(deep_sources, tmp_path, cli):
    """`scale: [{filter: q_proj, value: 0}, {value: 1}]`: mergekit zeroes the slice's q_proj, which no depth map says;
    ligo once wrote an identity block (o_proj and down_proj zeroed) in its place."""
    config = _scaled(deep_sources["llama"], [{"filter": "q_proj", "value": 0}, {"value": 1}], first=1)
    (tmp_path / "merge.yml").write_text(yaml.safe_dump(config))
    _run_mergekit(config, tmp_path / "mergekit")
    theirs = _tensors(tmp_path / "mergekit")
    assert not theirs["model.layers.3.self_attn.q_proj.weight"].any() and theirs["model.layers.3.mlp.down_proj.weight"].any()
    proc = cli("grow", "--from-mergekit", tmp_path / "merge.yml", "--out", tmp_path / "ligo")
    assert_one_line_error(proc, "grow", "slice 2: scale \\{'filter': 'q_proj', 'value': 0\\} zeroes "
                                        "model.layers.3.self_attn.q_proj.weight \\(source layer 2\\)")
    assert not (tmp_path / "ligo").exists()


@pytest.mark.parametrize("scale, first, message", [
    ([{"filter": "o_proj", "value": 0}, {"value": 1}], 1, "zeroes part of source layer 2's output projections but not "
                                                          "model.layers.3.mlp.down_proj.weight"),
    ([{"filter": "o_proj", "value": 0.5}, {"value": 1}], 1, "scales model.layers.3.self_attn.o_proj.weight by 0.5"),
    (0, 1, "scale 0 zeroes model.layers.3.input_layernorm.weight \\(source layer 2\\)"),
    ([{"filter": "embed_tokens", "value": 0}, {"value": 1}], 0, "scales model.embed_tokens.weight \\(outside the "
                                                                 "layers\\) by 0"),
    ([0, 1], 0, "scale \\[0, 1\\] scales model\\.\\S+ \\(outside the layers\\) by 0"),
    ([{"filter": "o_proj"}], 1, "is no \\{filter, value\\}"),
], ids=["half-a-block", "half-scale", "whole-layer", "embedding", "gradient", "no-value"])
def test_scales_ligo_cannot_say_are_refused(scale, first, message, deep_sources, tmp_path, cli):
    (tmp_path / "merge.yml").write_text(yaml.safe_dump(_scaled(deep_sources["llama"], scale, first=first)))
    assert_one_line_error(cli("grow", "--from-mergekit", tmp_path / "merge.yml", "--out", tmp_path / "o"), "grow",
                          message)
    assert not (tmp_path / "o").exists()


# -- configs as an adversary writes them: one line, at once, bounded ------------------------------------------------
def _slice(src, layer_range, **extra):
    return {"slices": [{"sources": [{"model": str(src), "layer_range": layer_range}]}], "merge_method": "passthrough",
            **extra}


@pytest.mark.parametrize("config, message", [
    (lambda s: _slice(s, [-2, 4]), "layer_range must be \\[start, end\\) of two layer numbers with 0 <= start < end, "
                                   "got \\[-2, 4\\]"),
    (lambda s: _slice(s, [False, True]), "layer_range must be .*, got \\[False, True\\]"),
    (lambda s: _slice(s, [0, 4], dtype=["float16"]), "dtype \\['float16'\\] is not one of float32, bfloat16, float16"),
    (lambda s: _slice(s, [0, 4], base_model="/elsewhere/other-model"), "base_model '/elsewhere/other-model' is not the "
                                                                       "model the slices take their layers from"),
    (lambda s: _slice(s, [0, 4], tokenizer_source="union"), "tokenizer_source 'union' is not the model"),
    (lambda s: {**_slice(s, [0, 3]), "slices": _slice(s, [0, 3])["slices"] + _slice(s, [2, 3])["slices"]},
     "leaves out source layer\\(s\\) 3 of 4 .*--drop-layers"),
], ids=["negative", "bools", "dtype-list", "base-model", "tokenizer-source", "drops-a-layer"])
def test_config_values_ligo_cannot_read_are_one_line(config, message, deep_sources, tmp_path, cli):
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(config(deep_sources["llama"])))
    assert_one_line_error(cli("grow", "--from-mergekit", tmp_path / "bad.yml", "--out", tmp_path / "o"), "grow", message)
    assert not (tmp_path / "o").exists()


def test_base_model_naming_the_slices_model_is_read(deep_sources, tmp_path, cli):
    src = deep_sources["llama"]
    (tmp_path / "m.yml").write_text(yaml.safe_dump(_slice(src, [0, 4], base_model=str(src), tokenizer_source="base")))
    cli("grow", "--from-mergekit", tmp_path / "m.yml", "--out", tmp_path / "o", check=True)


def test_a_binary_file_as_the_config_is_one_line(tmp_path, cli):
    (tmp_path / "merge.yml").write_bytes(bytes(range(256)) * 8)
    assert_one_line_error(cli("grow", "--from-mergekit", tmp_path / "merge.yml", "--out", tmp_path / "o"), "grow",
                          "is not a text file")


def test_a_huge_identity_slice_is_refused_before_it_is_expanded(deep_sources, tmp_path):
    """An identity slice of 10^8 layers under a real 4 GB address-space limit: once out of memory after 10 s, now
    refused by its range at once."""
    import resource
    import subprocess

    from conftest import LIGO

    config = _slice(deep_sources["llama"], [0, 100_000_000])
    config["slices"][0]["sources"][0]["parameters"] = {"scale": IDENTITY + [{"value": 1}]}
    (tmp_path / "big.yml").write_text(yaml.safe_dump(config))

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    proc = subprocess.run([LIGO, "grow", "--from-mergekit", str(tmp_path / "big.yml"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=600, preexec_fn=limit)
    assert_one_line_error(proc, "grow", "slice 1: layer_range \\[0, 100000000\\]: layer 99999999 is out of range; the "
                                        "source has 4 layers")


def test_an_alias_bomb_is_named_not_printed(deep_sources, tmp_path, cli):
    """A YAML alias bomb as layer_range (ten million numbers from a few hundred bytes): the error names the field and
    says what it holds, in a line of bounded length."""
    bomb = "[&a0 [0,1,2,3,4,5,6,7,8,9]" + "".join(f", &a{i} [{','.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7))
    (tmp_path / "bomb.yml").write_text(f"slices:\n  - sources:\n    - model: {deep_sources['llama']}\n"
                                       f"      layer_range: {bomb}]\nmerge_method: passthrough\n")
    line = assert_one_line_error(cli("grow", "--from-mergekit", tmp_path / "bomb.yml", "--out", tmp_path / "o"), "grow",
                                 "layer_range must be .*, got a list of 7 items")
    assert len(line) < 400
