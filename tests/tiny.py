"""Tiny random Hugging Face models of every supported architecture, built in-process (no network)."""

from __future__ import annotations

import json
import random
import sysconfig
from pathlib import Path

import torch
import transformers as T

VOCAB = 384

SOURCE = {
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=64),
    "bert": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=64),
    "roberta": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                    max_position_embeddings=66, pad_token_id=1),
    "llama": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=96, max_position_embeddings=128),
    "mistral": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=96, max_position_embeddings=128),
    "qwen2": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=96, max_position_embeddings=128),
}
# The families released since 2024, each with the quirk that breaks naive growth switched on: an explicit
# head_dim that is not hidden / heads, sliding and full attention layers with a window shorter than the
# test text, partial rotary, NoPE layers, muP-style multipliers, norms over whole projections.
_GQA = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
            max_position_embeddings=128)
FAMILIES = {
    "qwen3": dict(_GQA, head_dim=32),
    "gemma3_text": dict(_GQA, head_dim=32, query_pre_attn_scalar=24, sliding_window=8,
                        layer_types=["sliding_attention", "full_attention"]),
    "gemma2": dict(_GQA, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                   layer_types=["sliding_attention", "full_attention"]),
    "gemma": dict(_GQA, head_dim=16),
    "phi3": dict(_GQA, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
    "olmo2": dict(_GQA),
    "olmo3": dict(_GQA, sliding_window=8, layer_types=["sliding_attention", "full_attention"]),
    "gpt_neox": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                     max_position_embeddings=128, use_parallel_residual=True,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}),
    "smollm3": dict(_GQA, no_rope_layers=[1, 0]),
    "granite": dict(_GQA, embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.04,
                    logits_scaling=8.0),
    # a hybrid: a short gated convolution layer, then attention with q/k norms; the FFN size is derived from
    # intermediate_size (96 -> 256: LFM2's SwiGLU rounding)
    "lfm2": dict(_GQA, layer_types=["conv", "full_attention"], conv_bias=True),
    # a hybrid: a Gated DeltaNet linear-attention layer (2 key heads serving 4 value heads), then gated attention
    # with per-head q/k norms (1 + w) and biases, partial rotary
    "qwen3_5_text": dict(_GQA, head_dim=16, attention_bias=True, linear_num_key_heads=2, linear_num_value_heads=4,
                         linear_key_head_dim=16, linear_value_head_dim=16,
                         layer_types=["linear_attention", "full_attention"]),
    # a hybrid: a Mamba-2 layer (4 heads of 32 channels, one group, conv biases), then attention without rotary
    # embeddings; Granite's multipliers; a shared MLP (no experts)
    "granitemoehybrid": dict(_GQA, layer_types=["mamba", "attention"], mamba_n_heads=4, mamba_d_head=32,
                             mamba_d_state=8, num_local_experts=0, shared_intermediate_size=96,
                             embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.04,
                             logits_scaling=8.0),
    # a hybrid: attention and a Mamba-2 mixer side by side in every layer (its channels stated: mamba_d_ssm, its
    # gated group norm on), then a SwiGLU FFN; every muP multiplier away from one (the Mamba input projection's five
    # parts scaled apart)
    "falcon_h1": dict(_GQA, head_dim=16, mamba_n_heads=4, mamba_d_head=32, mamba_d_ssm=128, mamba_d_state=8,
                      mamba_rms_norm=True, embedding_multiplier=3.0, lm_head_multiplier=0.5, key_multiplier=0.7,
                      ssm_multipliers=[0.5, 1.5, 0.8, 1.2, 0.9], mlp_multipliers=[0.6, 1.3],
                      attention_out_multiplier=0.9, ssm_out_multiplier=1.1),
}
SOURCE.update(FAMILIES)
# Integer width ratio and more layers: the lossless case.
TARGET = {
    "gpt2": dict(n_embd=64, n_layer=4, n_head=8),
    "bert": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=8, intermediate_size=128),
    "roberta": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=8, intermediate_size=128),
    "llama": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                  intermediate_size=192),
    "mistral": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                    intermediate_size=192),
    "qwen2": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                  intermediate_size=192),
}
_GQA_TARGET = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                   intermediate_size=192)
TARGET.update({mt: dict(_GQA_TARGET) for mt in FAMILIES})
TARGET["gpt_neox"] = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=8, intermediate_size=192)
TARGET["lfm2"]["intermediate_size"] = 512  # (the real FFN size: the grown config states it, its rounding off)
TARGET["qwen3_5_text"].update(linear_num_key_heads=4, linear_num_value_heads=8)  # the recurrent heads grow too
TARGET["granitemoehybrid"]["shared_intermediate_size"] = 192  # (its Mamba heads follow the hidden size: 4 -> 8)
TARGET["falcon_h1"]["mamba_n_heads"] = 8  # (its stated channels, mamba_d_ssm, follow the heads)
# Mixtures of experts (tests/test_moe.py): 4 experts, 2 per token; Qwen3-MoE with its own expert FFN size and
# head_dim, OLMoE with norms over whole projections. norm_topk_prob: renormalized top-k weights (Mixtral always).
MOE = {
    "mixtral": dict(_GQA, num_local_experts=4, num_experts_per_tok=2),
    "qwen3_moe": dict(_GQA, head_dim=32, moe_intermediate_size=48, num_experts=4, num_experts_per_tok=2,
                      norm_topk_prob=True),
    "olmoe": dict(_GQA, num_experts=4, num_experts_per_tok=2, norm_topk_prob=False),
    # attention sinks, biases everywhere, experts held stacked with interleaved gate/up and biases, a router bias
    "gpt_oss": dict(_GQA, head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=8,
                    layer_types=["sliding_attention", "full_attention"]),
    # a dense first layer, then MoE layers with a shared expert and a sigmoid router with a correction bias;
    # partial rotary, attention biases, per-head q/k norms
    "glm4_moe": dict(_GQA, head_dim=16, moe_intermediate_size=48, n_routed_experts=4, num_experts_per_tok=2,
                     first_k_dense_replace=1, n_shared_experts=1, norm_topk_prob=True, attention_bias=True,
                     use_qk_norm=True),
    # dense and MoE layers interleaved (moe_layers), a shared expert, a sigmoid router, NoPE layers, chunked attention
    "llama4_text": dict(_GQA, head_dim=16, intermediate_size=48, intermediate_size_mlp=96, num_local_experts=4,
                        num_experts_per_tok=2, interleave_moe_layer_step=2, no_rope_layers=[1, 0],
                        attention_chunk_size=8),
    # multi-head latent attention (query and key-value latents with their norms, heads of rotary and no-rotary
    # parts, values of their own size), a dense first layer, then routed and shared experts under a sigmoid router
    "deepseek_v3": dict(_GQA, num_key_value_heads=4, moe_intermediate_size=48, n_routed_experts=4,
                        num_experts_per_tok=2, q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8,
                        qk_nope_head_dim=8, v_head_dim=16, first_k_dense_replace=1, n_group=1, topk_group=1),
    # the same attention without a query latent, in GLM's MoE
    "glm4_moe_lite": dict(_GQA, num_key_value_heads=4, moe_intermediate_size=48, n_routed_experts=4,
                          num_experts_per_tok=2, q_lora_rank=None, kv_lora_rank=16, qk_rope_head_dim=8,
                          qk_nope_head_dim=8, v_head_dim=16, first_k_dense_replace=1, n_group=1, topk_group=1),
    # a hybrid of single-mixer layers named by a pattern: Mamba-2, a squared-ReLU MLP, attention, then routed experts
    # (squared-ReLU, no gate) beside a shared one under a sigmoid router with a correction bias; checkpoint keys
    # under backbone. where the model says model.
    "nemotron_h": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=96,
                       mamba_num_heads=4, mamba_head_dim=32, ssm_state_size=8, n_groups=1,
                       hybrid_override_pattern="M-*E", n_routed_experts=4, num_experts_per_tok=2,
                       moe_intermediate_size=48, moe_shared_expert_intermediate_size=48),
    # layers that differ along two rules: a convolution then attention (layer_types), a dense FFN then experts under
    # a sigmoid router with an expert bias (num_dense_layers)
    "lfm2_moe": dict(_GQA, layer_types=["conv", "full_attention"], num_experts=4, num_experts_per_tok=2,
                     moe_intermediate_size=48, num_dense_layers=1),
    # hybrids with experts: Gated DeltaNet then gated attention, each with routed experts and a shared expert
    # behind a sigmoid gate; Qwen3-Next packs each key head's value heads with it (in_proj_qkvz, in_proj_ba)
    "qwen3_next": dict(_GQA, head_dim=16, moe_intermediate_size=48, shared_expert_intermediate_size=64,
                       num_experts=4, num_experts_per_tok=2, norm_topk_prob=False, linear_num_key_heads=2,
                       linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
                       layer_types=["linear_attention", "full_attention"]),
    "qwen3_5_moe_text": dict(_GQA, head_dim=16, moe_intermediate_size=48, shared_expert_intermediate_size=64,
                             num_experts=4, num_experts_per_tok=2, linear_num_key_heads=2, linear_num_value_heads=4,
                             linear_key_head_dim=16, linear_value_head_dim=16,
                             layer_types=["linear_attention", "full_attention"]),
}
SOURCE.update(MOE)
# 2x wider and deeper, twice the experts, each chosen expert's copies all used (the lossless case)
TARGET.update({mt: dict(_GQA_TARGET, experts=8, experts_per_token=4) for mt in MOE})
TARGET["qwen3_moe"]["moe_intermediate_size"] = 96
TARGET["glm4_moe"]["moe_intermediate_size"] = 96
TARGET["llama4_text"].update(intermediate_size=96, intermediate_size_mlp=192)
for _mt in ("deepseek_v3", "glm4_moe_lite"):  # (no GQA in latent attention: kv heads = heads; latents x2)
    TARGET[_mt].update(num_key_value_heads=8, moe_intermediate_size=96, kv_lora_rank=32)
TARGET["deepseek_v3"]["q_lora_rank"] = 64
TARGET["lfm2_moe"]["moe_intermediate_size"] = 96
TARGET["nemotron_h"].update(intermediate_size=192, moe_intermediate_size=96, moe_shared_expert_intermediate_size=96,
                            mamba_num_heads=8)
for _mt in ("qwen3_next", "qwen3_5_moe_text"):
    TARGET[_mt].update(moe_intermediate_size=96, shared_expert_intermediate_size=128, linear_num_key_heads=4,
                       linear_num_value_heads=8)
CLASSIC = ("gpt2", "bert", "roberta", "llama", "mistral", "qwen2")   # the families of ligo 0.2
DECODERS = ("gpt2", "llama", "mistral", "qwen2", *FAMILIES)  # the MoE families are tested in test_moe.py
ARCHS = CLASSIC  # the families most tests run on; tests/test_families.py runs every guarantee on FAMILIES
ALL = CLASSIC + tuple(FAMILIES)


def config(model_type: str, **overrides):
    kw = {**SOURCE[model_type], "vocab_size": VOCAB, **overrides}
    if model_type in ("bert", "roberta"):
        kw.setdefault("hidden_dropout_prob", 0.0)
        kw.setdefault("attention_probs_dropout_prob", 0.0)
    if model_type == "gpt2":
        kw.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    if model_type in ("llama", "mistral", "qwen2", *FAMILIES, *MOE):
        kw.update(bos_token_id=0, eos_token_id=0, pad_token_id=1)
    return T.AutoConfig.for_model(model_type, **kw)


def make_model_of(model_type: str, seed: int = 0, **kw):
    """A tiny random causal LM of any transformers model_type (one ligo may have no table for)."""
    torch.manual_seed(seed)
    cfg = T.AutoConfig.for_model(model_type, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=1, **kw)
    cfg._attn_implementation = "eager"
    return T.AutoModelForCausalLM.from_config(cfg).eval()


def model_cls(model_type: str, bare: bool = False):
    if bare:
        return T.AutoModel
    return T.AutoModelForCausalLM if model_type in DECODERS or model_type in MOE else T.AutoModelForMaskedLM


def make_model(model_type: str, bare: bool = False, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = config(model_type, **overrides)
    cfg._attn_implementation = "eager"
    model = model_cls(model_type, bare).from_config(cfg)
    with torch.no_grad():  # non-trivial norms and biases so that tests see them
        for name, p in model.named_parameters():
            if p.dim() == 1 or name.endswith("_bias"):
                p.add_(0.1 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # (GLM's router bias is a buffer)
                b.add_(0.1 * torch.randn_like(b))
    return model.eval()


def save_model(model, path: Path, tokenizer=None) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def make_task(folder: Path, n: int = 24) -> Path:
    """A tiny local lm-eval task built from local text (no download): which of two lines continues a line
    of the Python standard library's own source, the true next line or a line from another file?"""
    root = Path(sysconfig.get_paths()["stdlib"])
    lines = [line for name in ("argparse.py", "textwrap.py") for line in (root / name).read_text().splitlines()]
    pairs = [(a, b) for a, b in zip(lines, lines[1:]) if len(a.strip()) > 12 and len(b.strip()) > 12]
    others = [line for line in (root / "calendar.py").read_text().splitlines() if len(line.strip()) > 12]
    rng = random.Random(0)
    items = []
    for a, b in rng.sample(pairs, n):
        choices = [b, rng.choice(others)]
        order = rng.random() < 0.5
        items.append({"context": a + "\n", "choices": choices[::-1] if order else choices, "label": int(order)})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (folder / "next_line.yaml").write_text(
        "task: ligo_next_line\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {folder / 'items.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    return folder / "next_line.yaml"


def max_logit_diff(src: Path, out: Path, ids: torch.Tensor):
    """(max |logit difference| of two saved causal LMs on ``ids`` in fp32, the second model)."""
    def logits(path):
        model = T.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()
        with torch.no_grad():
            return model(input_ids=ids).logits, model

    (a, _), (b, model) = logits(src), logits(out)
    return (a - b).abs().max().item(), model


def fit_and_compare(grower, blocks, out: Path) -> None:
    """Fit ``grower`` three steps, save it to ``out``: the saved model gives the fitted model's logits (<= 1e-4)."""
    from ligo.config import TrainConfig
    from ligo.fit import FitModule

    grower.fit(None, TrainConfig(steps=3, batch_size=4, seq_len=32, lr=3e-3, warmup=0, eval_every=0, eval_batches=1,
                                 progress=False), blocks=blocks)
    assert grower.fit_record.steps == 3
    grower.save(out)
    module = FitModule(grower.operator, grower.target_model()).eval()
    x = blocks.val[:2]
    with torch.no_grad():
        fitted = module(input_ids=x).logits
        saved = T.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()(input_ids=x).logits
    torch.testing.assert_close(fitted, saved, rtol=1e-4, atol=1e-4)


def grow_train_and_load(source: Path, model_type: str, blocks, tmp_path: Path) -> None:
    """The default plan's output loads with AutoModelForCausalLM as ``model_type``, and its loss falls in a few
    steps of ``ligo.train``."""
    from ligo import TrainConfig, grow
    from ligo.training import Start, train

    grow(source, TARGET[model_type], tmp_path / "grown")
    res = train(tmp_path / "grown", None, tmp_path / "run", TrainConfig(steps=6, batch_size=4, seq_len=32, lr=3e-3,
                                                                         warmup=0, eval_every=0, eval_batches=2,
                                                                         progress=False), Start(blocks=blocks))
    assert res.loop.evals[-1]["val_loss"] < res.loop.evals[0]["val_loss"]
    assert T.AutoModelForCausalLM.from_pretrained(tmp_path / "run").config.model_type == model_type


_MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True}
_QWEN_VL_IDS = dict(image_token_id=5, video_token_id=6, vision_start_token_id=7, vision_end_token_id=8)
_QWEN_VISION = dict(hidden_size=32, depth=1, num_heads=2, intermediate_size=64, patch_size=14, spatial_merge_size=2,
                    temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=16)
_LINEAR = dict(linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=16, linear_value_head_dim=16,
               layer_types=["linear_attention", "full_attention"])
# Vision-language checkpoints (tests/test_vlm.py): a tiny text decoder beside a tiny vision tower. Gemma 3 pools an
# image into 4 tokens through a projector matrix; Mistral 3 merges 2 x 2 patches and projects them through two layers.
VLM = {
    "gemma3": dict(mm_tokens_per_image=4, image_token_index=5, boi_token_index=6, eoi_token_index=7,
                   vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                      image_size=28, patch_size=14)),
    # Gemma 4: a vision tower pooling a 4 x 4 patch grid 2 x 2 into 4 tokens and an audio tower (8 mel bins, 32 frames
    # -> 8 tokens), each written into the text stream by its own embedding projection; per-layer inputs on the text side
    "gemma4": dict(image_token_id=5, boi_token_id=6, eoi_token_id=7, audio_token_id=8, boa_token_id=9, eoa_token_index=10,
                   text=dict(hidden_size_per_layer_input=16, vocab_size_per_layer_input=VOCAB),
                   vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=2, head_dim=16, pooling_kernel_size=2, patch_size=4,
                                      position_embedding_size=64),
                   audio_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     subsampling_conv_channels=[8, 4], output_proj_dims=48)),
    "mistral3": dict(image_token_index=5,
                     vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=16,
                                        intermediate_size=64, image_size=56, patch_size=14)),
    # Qwen3-VL: a 4 x 4 patch grid merged 2 x 2, its features also added to the outputs of text layers 0 and 1
    # (deepstack); multimodal rotary positions
    "qwen3_vl": dict(image_token_id=5, video_token_id=6, vision_start_token_id=7, vision_end_token_id=8,
                     text=dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                "mrope_section": [4, 2, 2], "mrope_interleaved": True}),
                     vision_config=dict(hidden_size=32, depth=2, num_heads=2, intermediate_size=64, patch_size=14,
                                        spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64,
                                        deepstack_visual_indexes=[0, 1], num_position_embeddings=16)),
    # Qwen3-VL-MoE: as Qwen3-VL, its language model's experts stacked (gate and up fused)
    "qwen3_vl_moe": dict(image_token_id=5, video_token_id=6, vision_start_token_id=7, vision_end_token_id=8,
                         text=dict(rope_parameters=_MROPE, num_experts=4, num_experts_per_tok=2,
                                   moe_intermediate_size=48),
                         vision_config=dict(_QWEN_VISION, depth=2, deepstack_visual_indexes=[0, 1])),
    # Qwen3.5 (its language model a Gated DeltaNet hybrid, dense or with experts) and Qwen2.5-VL: one merger
    "qwen3_5": dict(_QWEN_VL_IDS, text=dict(_LINEAR, rope_parameters=_MROPE), vision_config=_QWEN_VISION),
    "qwen3_5_moe": dict(_QWEN_VL_IDS, text=dict(_LINEAR, rope_parameters=_MROPE, num_experts=4, num_experts_per_tok=2,
                                                moe_intermediate_size=32, shared_expert_intermediate_size=32),
                        vision_config=_QWEN_VISION),
    "qwen2_5_vl": dict(_QWEN_VL_IDS, text=dict(rope_parameters={**_MROPE, "mrope_interleaved": False}, head_dim=None),
                       vision_config=dict(_QWEN_VISION, window_size=56, fullatt_block_indexes=[0])),
    # Llama 4: an MoE language model, a pixel-shuffled vision tower, a one-layer projector into the stream
    "llama4": dict(image_token_index=5, text=dict(num_local_experts=4, num_experts_per_tok=1, intermediate_size_mlp=96,
                                                  interleave_moe_layer_step=2),
                   vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=56,
                                      patch_size=14, intermediate_size=128, projector_input_dim=32,
                                      projector_output_dim=32, vision_output_dim=32)),
}
VLM_TEXT = dict(_GQA, head_dim=16, vocab_size=VOCAB)


def make_vlm(model_type: str, seed: int = 0):
    """A tiny random vision-language model (its norms and biases perturbed, as make_model's)."""
    torch.manual_seed(seed)
    kw = dict(VLM[model_type])
    text = {k: v for k, v in {**VLM_TEXT, **kw.pop("text", {})}.items() if v is not None}  # (None: the key left out)
    cfg = T.AutoConfig.for_model(model_type, text_config=text, pad_token_id=1, **kw)
    return perturb_vectors(T.AutoModelForImageTextToText.from_config(cfg).eval())


def perturb_vectors(model):
    """``model`` with every vector parameter (norm gains, biases, scalars of one element) moved off its init, as a
    trained model's are (an init of ones or zeros would hide a gain that growth carries wrongly)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model
