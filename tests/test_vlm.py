"""Vision-language checkpoints (issue 31): ligo grows the language model inside a Gemma 3, Gemma 4 (with its audio
tower), Mistral 3, Llama 4, Qwen2.5-VL, Qwen3-VL or Qwen3.5 checkpoint,
grows the projector on the side that writes the text model's residual stream, copies the vision tower verbatim, and
writes a checkpoint of the same multimodal class. The lossless plan keeps the logits with an image in the prompt."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForImageTextToText

import tiny
from conftest import assert_one_line_error, run_cli, write_json
from ligo import GrowthPlan, grow

VLMS = tuple(tiny.VLM)
IMAGE_TOKENS = dict.fromkeys(VLMS, 4)  # Gemma 3 pools to 4 tokens, the Qwens merge a 4 x 4 grid 2 x 2, Llama 4 and
# Mistral 3 shuffle or merge theirs likewise


@pytest.fixture(scope="module")
def vlm_sources(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("vlm")
    return {mt: tiny.save_model(tiny.make_vlm(mt), root / mt, tokenizer) for mt in VLMS}


def _prompt(model_type):
    """A prompt of text around one image, and the image's inputs as the model type takes them."""
    ids = torch.randint(10, tiny.VOCAB, (1, 24), generator=torch.Generator().manual_seed(1))
    config = tiny.VLM[model_type]
    ids[0, 3:3 + IMAGE_TOKENS[model_type]] = config.get("image_token_index", config.get("image_token_id"))
    gen = torch.Generator().manual_seed(0)
    if model_type.startswith("qwen"):  # (flattened patches of 2 frames, their grid, the image tokens' type)
        patches = {"pixel_values": torch.randn(16, 3 * 2 * 14 * 14, generator=gen),
                   "image_grid_thw": torch.tensor([[1, 4, 4]])}
        return ids, patches if model_type == "qwen2_5_vl" else {**patches, "mm_token_type_ids": (ids == 5).long()}
    if model_type == "gemma4":  # (a 4 x 4 grid of 4 x 4 patches with their positions; 32 frames of 8 mel bins)
        ids[0, 10:18] = config["audio_token_id"]
        grid = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), indexing="xy"), -1).reshape(1, 16, 2)
        return ids, {"pixel_values": torch.randn(1, 16, 48, generator=gen), "image_position_ids": grid,
                     "input_features": torch.randn(1, 32, 8, generator=gen),
                     "input_features_mask": torch.ones(1, 32, dtype=torch.bool)}
    size = config["vision_config"]["image_size"]
    image = {"pixel_values": torch.randn(1, 3, size, size, generator=gen)}
    return ids, {**image, "image_sizes": torch.tensor([[size, size]])} if model_type == "mistral3" else image


def _logits(path, model_type):
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    ids, image = _prompt(model_type)
    with torch.no_grad():
        return model, model(input_ids=ids, **image).logits, model(input_ids=ids).logits


def _tensors(path):
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("target", [{"hidden": 128, "heads": 8, "kv_heads": 4, "ffn": 192, "layers": 4},
                                    {"hidden": 96, "heads": 6, "kv_heads": 3, "ffn": 144, "layers": 3}], ids=["x2", "x1.5"])
@pytest.mark.parametrize("model_type", VLMS)
def test_the_language_model_grows_and_the_vision_tower_is_kept(model_type, target, vlm_sources, tmp_path):
    """The grown checkpoint loads as the source's multimodal class; with an image in the prompt its logits are the
    source's (<= 1e-4: the projector's output grows as the residual stream does); the vision tower's tensors are
    byte-identical; the config holds the grown text config and the source's vision config."""
    src, out = vlm_sources[model_type], tmp_path / "out"
    layout = "0-1" + ",new" * (target["layers"] - 2)  # new identity layers after the source's (see deepstack below)
    grow(src, target, out, plan=GrowthPlan(width="split", depth_map=layout))
    source, with_image, text_only = _logits(src, model_type)
    grown, grown_image, _ = _logits(out, model_type)
    assert type(grown) is type(source) and grown.config.text_config.hidden_size == target["hidden"]
    assert (with_image - text_only).abs().max() > 1e-2  # the image changes the logits...
    assert (grown_image - with_image).abs().max() <= 1e-4  # ...and the grown model sees it as the source did
    before, after = _tensors(src), _tensors(out)
    vision = [k for k in before if ("vision" in k or "visual" in k or "audio" in k) and "linear_fc2" not in k
              and "mlp.2" not in k and "embedding_projection" not in k]  # (the projectors grow)
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    config, source_config = (json.loads((p / "config.json").read_text()) for p in (out, src))
    hidden = {"out_hidden_size": target["hidden"]} if model_type.startswith("qwen") else {}  # (the mergers' output)
    assert config["vision_config"] == {**source_config["vision_config"], **hidden}
    assert config["text_config"]["num_hidden_layers"] == target["layers"]
    assert json.loads((out / "ligo_recipe.json").read_text())["vision_language"] == model_type


def test_the_operator_fit_is_refused_in_one_line(vlm_sources, corpus, tmp_path):
    proc = run_cli("grow", vlm_sources["gemma3"], "--target", write_json(tmp_path / "t.json", {"layers": 3}),
                   "--out", tmp_path / "out", "--fit-steps", "2", "--data", corpus)
    assert proc.returncode != 0 and not (tmp_path / "out").exists()
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "vision-language" in proc.stderr


@pytest.mark.parametrize("model_type", VLMS)
def test_a_grown_vision_language_model_trains_on_text(model_type, vlm_sources, corpus, tmp_path):
    """`ligo train` continues it on text as the image-text-to-text model it is; what it saves loads as one, the
    vision tower untouched by text-only training."""
    grow(vlm_sources[model_type], {"layers": 3}, tmp_path / "g", plan=GrowthPlan(width="split", depth="identity"))
    run_cli("train", tmp_path / "g", "--data", corpus, "--out", tmp_path / "t", "--steps", "2", "--seq-len", "32",
            "--batch-size", "2", "--no-progress", check=True)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "t")
    assert type(model).__name__.endswith("ForConditionalGeneration")
    before, after = _tensors(vlm_sources[model_type]), _tensors(tmp_path / "t")
    assert all(torch.equal(before[k], after[k]) for k in before if "_tower" in k or "visual.blocks" in k
               or "vision_model" in k)
    card = (tmp_path / "g" / "README.md").read_text()
    assert "AutoModelForImageTextToText.from_pretrained" in card


def test_inspect_shows_the_language_models_table(vlm_sources):
    proc = run_cli("inspect", vlm_sources["mistral3"], "--table", check=True)
    assert "mistral" in proc.stdout and "multi_modal_projector.linear_2.weight" in proc.stdout


def test_qwen3_vl_says_when_new_layers_land_among_its_deepstack_layers(vlm_sources, tmp_path):
    """Qwen3-VL adds visual features to the outputs of its first 2 layers: identity depth puts a new layer after
    layer 0, so the features of layer 1 land after it. `ligo grow` says so; text alone stays exact."""
    target = write_json(tmp_path / "t.json", {"layers": 4})
    proc = run_cli("grow", vlm_sources["qwen3_vl"], "--target", target, "--out", tmp_path / "out", "--width", "split",
                   "--depth", "identity", check=True)
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note: not exactly lossless")]
    assert len(notes) == 1 and "deepstack" in notes[0], proc.stderr
    _, with_image, text_only = _logits(vlm_sources["qwen3_vl"], "qwen3_vl")
    _, grown_image, grown_text = _logits(tmp_path / "out", "qwen3_vl")
    assert (grown_text - text_only).abs().max() <= 1e-4 and (grown_image - with_image).abs().max() > 1e-3


def test_experts_held_transposed_are_read_as_transformers_reads_them(vlm_sources, tmp_path):
    """Qwen3-VL-MoE's released checkpoints hold the experts transposed from what transformers holds and saves
    (transformers transposes them as it loads): ligo reads either layout, and writes transformers' own."""
    import shutil

    from safetensors.torch import save_file

    src = tmp_path / "hub"
    shutil.copytree(vlm_sources["qwen3_vl_moe"], src)
    tensors = _tensors(src)
    experts = [k for k in tensors if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    save_file({k: v.transpose(1, 2).contiguous() if k in experts else v for k, v in tensors.items()},
              str(src / "model.safetensors"), metadata={"format": "pt"})
    grow(src, {"hidden": 128, "heads": 8, "kv_heads": 4, "layers": 2}, tmp_path / "out",
         plan=GrowthPlan(width="split", depth="identity"))
    _, with_image, _ = _logits(vlm_sources["qwen3_vl_moe"], "qwen3_vl_moe")
    _, grown_image, _ = _logits(tmp_path / "out", "qwen3_vl_moe")
    assert (grown_image - with_image).abs().max() <= 1e-4
    grown = _tensors(tmp_path / "out")
    assert experts and all(grown[k].shape[1:] == (2 * 48, 128) if "gate_up" in k else
                           grown[k].shape[1:] == (128, 48) for k in experts)  # transformers' layout


def _damaged(src, out, how: str):
    """A copy of a vision-language checkpoint with one part missing or lying (as a careless export leaves it)."""
    import shutil

    from safetensors.torch import save_file

    shutil.copytree(src, out)
    tensors, config = _tensors(out), json.loads((out / "config.json").read_text())
    if how == "vision-weight-missing":
        tensors.pop(next(k for k in sorted(tensors) if "vision_tower" in k or "visual.blocks" in k))
    elif how == "projector-missing":
        tensors.pop(next(k for k in sorted(tensors) if k.endswith(("linear_2.weight", "merger.linear_fc2.weight"))))
    elif how == "vision-hidden-lies":
        config["vision_config"]["hidden_size"] = 48
    else:
        del config["vision_config"]
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("how, message", [
    ("vision-weight-missing", "the checkpoint lacks model\\.(vision_tower|visual)\\.\\S+, which a \\w+ model of its "
                              "config has \\(transformers would start them random\\); use the complete checkpoint"),
    ("projector-missing", "the checkpoint lacks model\\.(multi_modal_projector\\.linear_2|visual\\.merger\\.linear_fc2)"
                          "\\.weight"),
    ("vision-hidden-lies", "weight \\S+ has shape \\[.*\\], but config.json implies \\[.*\\]; the weights do not match the "
                           "config \\(check vision_config\\)"),
    ("no-vision-config", "config states its vision tower's sizes in vision_config, and this one has none"),
])
@pytest.mark.parametrize("model_type", ["mistral3", "qwen3_vl"])
def test_the_parts_ligo_copies_are_checked_as_strictly_as_those_it_grows(model_type, how, message, vlm_sources,
                                                                          tmp_path, cli):
    """Vision weights or projector weights missing, a vision config that disagrees with the weights or is absent: once
    grown with exit 0 into a model that loads with random vision weights or does not load; now one line, nothing
    written."""
    src = _damaged(vlm_sources[model_type], tmp_path / "src", how)
    proc = cli("grow", src, "--target", '{"hidden": 128, "heads": 8, "kv_heads": 4}', "--out", tmp_path / "out")
    assert_one_line_error(proc, "grow", message)
    assert not (tmp_path / "out").exists()


def test_a_stored_buffer_the_model_does_not_persist_is_skipped(vlm_sources, tmp_path, cli):
    """An older export's vision position_ids (a buffer transformers no longer saves, and skips when loading) is no
    weight the checkpoint lacks or holds in excess: the checkpoint grows."""
    import shutil

    from safetensors.torch import save_file

    src = tmp_path / "src"
    shutil.copytree(vlm_sources["gemma3"], src)
    tensors = _tensors(src)
    tensors["vision_tower.vision_model.embeddings.position_ids"] = torch.arange(16).unsqueeze(0)
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    cli("grow", src, "--target", '{"hidden": 128, "heads": 8, "kv_heads": 4}', "--out", tmp_path / "out", check=True)
