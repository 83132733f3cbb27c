"""Architecture tables: strict validation, and every weight of every supported model matches exactly one entry."""

import copy
import json

import pytest

import tiny
from ligo.arch import GROWN, LigoError, get_spec, register_architecture, supported_types


def test_supported_types():
    assert set(tiny.ARCHS) <= set(supported_types())


@pytest.mark.parametrize("bare", [False, True], ids=["lm-head", "bare"])
@pytest.mark.parametrize("model_type", tiny.ARCHS)
def test_every_weight_matches_exactly_one_entry(model_type, bare):
    model = tiny.make_model(model_type, bare=bare)
    spec = get_spec(model_type)
    dims = spec.dims(model.config.to_dict())
    keys = list(model.state_dict())
    for key in keys:
        found = spec.match(key)
        assert len(found) == 1 and found[0] is not None, (key, found)
    layout = spec.layout(keys, dims)
    assert set(layout) == set(keys)
    # every axis size in the table agrees with the tensor
    state = model.state_dict()
    for key, m in layout.items():
        expect = [sum(dims.axis_size(t) for t in axis) for axis in m.entry.axes]
        assert [e if e > 0 else s for e, s in zip(expect, state[key].shape)] == list(state[key].shape), key


@pytest.mark.parametrize("model_type", tiny.DECODERS)
def test_tied_variants_match(model_type):
    model = tiny.make_model(model_type, tie_word_embeddings=True)
    spec = get_spec(model_type)
    spec.layout(model.state_dict(), spec.dims(model.config.to_dict()))


def test_unknown_model_type_names_it_and_the_doc():
    with pytest.raises(LigoError, match=r"'t5'.*docs/architectures.md"):
        get_spec("t5")


def _llama_table():
    from importlib import resources

    return json.loads(resources.files("ligo.archs").joinpath("llama.json").read_text())


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.update(colour="red"), "unknown key"),
    (lambda t: t["layer"].update({"x.weight": ["nonsense", "res"]}), "unknown axis token"),
    (lambda t: t.update(objective="regression"), "objective"),
    (lambda t: t.update(layer_prefix="layers."), "layer_prefix"),
    (lambda t: t["config"].pop("hidden"), "config keys"),
    (lambda t: t.update(identity_zero=["nope"]), "identity_zero"),
])
def test_table_validation_is_strict(mutate, message):
    table = copy.deepcopy(_llama_table())
    mutate(table)
    table["model_type"] = "llama-test"
    with pytest.raises(LigoError, match=message):
        register_architecture(table)


def test_unknown_weight_is_an_error():
    spec = get_spec("llama")
    model = tiny.make_model("llama")
    keys = list(model.state_dict()) + ["model.layers.0.mystery.weight"]
    with pytest.raises(LigoError, match="mystery.*matches no entry"):
        spec.layout(keys, spec.dims(model.config.to_dict()))


def test_grown_tokens_are_known():
    assert {"res", "res.in", "ffn", "ffn.in", "q", "k", "v", "o.in"} == set(GROWN)
