"""Architecture tables: strict validation, family tables, every weight of every supported model matching
exactly one entry, and one validation of growth targets."""

import copy
import json
from importlib import resources

import pytest

import tiny
from ligo.tables import get_spec, register_architecture, supported_types
from ligo.spaces import GROWN, READ_PARTNER, SPACES, WRITE_TOKENS
from ligo.errors import LigoError


def test_every_shipped_type_is_tested_here():
    """Every type a table serves has a tiny model in the suites (the language models served only inside a
    vision-language checkpoint are tested there: tests/test_vlm.py)."""
    inside = {tiny.make_vlm(mt).config.text_config.model_type for mt in ("qwen3_vl", "qwen3_vl_moe", "qwen2_5_vl")}
    assert set(supported_types()) == set(tiny.ALL) | set(tiny.MOE) | inside


def test_one_table_per_family():
    files = sorted(p.name for p in resources.files("ligo.archs").iterdir() if p.name.endswith(".json")
             and not p.name.startswith("_"))  # (_refused.json: the reasons for the types refused)
    assert files == ["bert.json", "deepseek_v3.json", "falcon_h1.json", "gemma.json", "glm4_moe.json",
                     "glm4_moe_lite.json", "gpt2.json", "gpt_neox.json", "gpt_oss.json", "granitemoehybrid.json",
                     "lfm2.json", "lfm2_moe.json", "llama.json", "llama4_text.json", "mixtral.json", "nemotron_h.json", "olmo2.json",
                     "olmoe.json", "phi3.json", "qwen3.json", "qwen3_5_moe_text.json", "qwen3_5_text.json",
                     "qwen3_moe.json", "qwen3_next.json", "qwen3_vl_moe_text.json", "roberta.json"]
    family = get_spec("qwen2")
    assert family.model_types == ("llama", "mistral", "qwen2", "granite", "smollm3", "qwen2_5_vl_text") and family.model_type == "qwen2"
    assert get_spec("gemma2").source == get_spec("gemma3_text").source == "ligo/archs/gemma.json"
    assert get_spec("mistral").source == get_spec("llama").source == "ligo/archs/llama.json"


def test_space_vocabulary_is_consistent():
    """Every read map pairs with a write map of the same space; the tokens are the spaces' tokens."""
    assert set(GROWN) == {t for s in SPACES for t in s.write + s.read}
    for read, write in READ_PARTNER.items():
        assert write in WRITE_TOKENS and read not in WRITE_TOKENS
        assert next(s for s in SPACES if read in s.read) is next(s for s in SPACES if write in s.write)


@pytest.mark.parametrize("bare", [False, True], ids=["lm-head", "bare"])
@pytest.mark.parametrize("model_type", tiny.ALL)
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
    state = model.state_dict()
    for key, m in layout.items():
        assert [e if e > 0 else s for e, s in zip(spec.shape(m.entry, dims), state[key].shape)] == \
            list(state[key].shape), key


@pytest.mark.parametrize("model_type", tiny.DECODERS)
def test_tied_variants_leave_the_head_out(model_type):
    model = tiny.make_model(model_type, tie_word_embeddings=True)
    spec = get_spec(model_type)
    layout = spec.layout(model.state_dict(), spec.dims(model.config.to_dict()))
    heads = [k for k, m in layout.items() if m.entry.scope == "head"]
    assert heads == [] or all(k in spec.tied for k in heads), heads
    assert spec.dims(model.config.to_dict()).tie is True


def test_unknown_model_type_names_it_and_the_doc():
    with pytest.raises(LigoError, match=r"'t5'.*docs/architectures.md"):
        get_spec("t5")


def _llama_table():
    return json.loads(resources.files("ligo.archs").joinpath("llama.json").read_text())


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.update(colour="red"), "unknown key"),
    (lambda t: t["layer"].update({"x.weight": ["nonsense", "res"]}), "unknown axis token"),
    (lambda t: t.update(objective="regression"), "objective"),
    (lambda t: t.update(layer_prefix="layers."), "layer_prefix"),
    (lambda t: t["config"].pop("hidden"), "config keys"),
    (lambda t: t.update(identity_zero=["nope"]), "identity_zero"),
    (lambda t: t.update(model_type="llama"), "either model_type"),
    (lambda t: t.update(model_types=[]), "non-empty list"),
])
def test_table_validation_is_strict(mutate, message):
    table = copy.deepcopy(_llama_table())
    table["model_types"] = ["llama-test"]
    mutate(table)
    with pytest.raises(LigoError, match=message):
        register_architecture(table)


def test_unknown_weight_is_an_error():
    spec = get_spec("llama")
    model = tiny.make_model("llama")
    keys = list(model.state_dict()) + ["model.layers.0.mystery.weight"]
    with pytest.raises(LigoError, match="mystery.*matches no entry"):
        spec.layout(keys, spec.dims(model.config.to_dict()))


# -- one validation of targets --------------------------------------------------------------------
SOURCE = tiny.config("llama").to_dict()


@pytest.mark.parametrize("target, message", [
    ({"hiden": 128, "layerz": 4}, r"unknown target key\(s\) 'hiden' \(did you mean 'hidden'"),
    ({"intermediate": 256}, r"'intermediate' \(did you mean 'intermediate_size'"),
    ({"hidden": "128"}, "hidden_size must be a positive integer, got '128'"),
    ({"layers": 4.5}, "num_hidden_layers must be a positive integer"),
    ({"heads": True}, "num_attention_heads must be a positive integer"),
    ({"hidden": 0}, "positive integer"),
    ({"hidden": 128, "hidden_size": 256}, "sets hidden_size twice"),
    ({"tie": "yes"}, "true or false"),
    (["hidden", 128], "must be a JSON object"),
])
def test_bad_targets_are_refused_by_name(target, message):
    with pytest.raises(LigoError, match=message):
        get_spec("llama").target_config(SOURCE, target, known_keys=set(SOURCE))


def test_targets_accept_generic_names_config_keys_and_full_configs():
    spec = get_spec("llama")
    out = spec.target_config(SOURCE, {"hidden": 128, "num_hidden_layers": 4, "kv_heads": 4})
    assert (out["hidden_size"], out["num_hidden_layers"], out["num_key_value_heads"]) == (128, 4, 4)
    assert "hidden" not in out
    full = dict(SOURCE, hidden_size=128, rms_norm_eps=1e-5)  # a whole config.json of the family is a target too
    assert spec.target_config(SOURCE, full, known_keys=set(SOURCE))["rms_norm_eps"] == 1e-5
