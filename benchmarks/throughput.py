"""Trainer throughput: the ligo training loop against a bare loop of the same model and batch, one process.

Both train the same Llama-shaped model from the same initial weights on the same token blocks with
AdamW (fused on CUDA), gradient clipping, bf16 autocast on a GPU, and ``torch.compile`` when asked
(default: on CUDA, off on CPU). The bare loop is the least code that trains the model; the first
``--warmup`` steps of each (compilation, allocator warm-up) are left out of both measurements.

    python benchmarks/throughput.py --device cuda --json benchmarks/results/throughput-h100-DATE.json
    python benchmarks/throughput.py --device cpu --preset cpu          # ~2 minutes on 2 cores

Presets: ``gpu-llama`` is the 218M target of the gpu-llama experiment (16 x 1024, 16 heads, 8 kv heads,
FFN 3072, vocabulary 16384, batch 32 x 512); ``cpu`` is 4 x 256 with batch 8 x 256.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

PRESETS = {
    "gpu-llama": dict(hidden=1024, layers=16, heads=16, kv_heads=8, ffn=3072, vocab=16384, seq=512, batch=32),
    "cpu": dict(hidden=256, layers=4, heads=4, kv_heads=2, ffn=704, vocab=4096, seq=256, batch=8),
}


def build(p: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=p["hidden"], num_hidden_layers=p["layers"], num_attention_heads=p["heads"],
                      num_key_value_heads=p["kv_heads"], intermediate_size=p["ffn"], vocab_size=p["vocab"],
                      max_position_embeddings=p["seq"], tie_word_embeddings=True)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def bare_loop(model, blocks, batch: int, steps: int, warmup: int, device, compile_: bool, bf16: bool) -> float:
    """Tokens/s of the least code that trains ``model`` (after ``warmup`` steps)."""
    model = model.to(device).train()
    fwd = torch.compile(model) if compile_ else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=True if device.type == "cuda" else None)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            sync()
            start = time.perf_counter()
        x = blocks[(step * batch) % (len(blocks) - batch):][:batch].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = fwd(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    return steps * batch * blocks.shape[1] / (time.perf_counter() - start)


def ligo_loop(model, blocks, batch: int, steps: int, warmup: int, compile_: bool, bf16: bool) -> tuple[float, dict]:
    """Tokens/s of ligo's loop over the steps after ``warmup`` (from its log), and its last throughput row."""
    from ligo import TrainConfig
    from ligo.loop import make_collate, train_loop

    cfg = TrainConfig(steps=warmup + steps, batch_size=batch, seq_len=blocks.shape[1], lr=1e-4, warmup=10,
                      eval_every=0, eval_batches=1, log_every=warmup, compile=compile_, progress=False,
                      mixed_precision="bf16" if bf16 else "no")
    from ligo.tables import get_spec
    from ligo.flops import step_flops

    per_step = step_flops(model, get_spec("llama").dims(model.config.to_dict()), cfg)
    result = train_loop(model, blocks, blocks[:batch], cfg, collate=make_collate("causal-lm"), flops_per_step=per_step)
    rows = {r["step"]: r for r in result.history}
    seconds = rows[warmup + steps]["wall"] - rows[warmup]["wall"]
    return steps * cfg.tokens_per_step / seconds, result.throughput | {"flops_per_step": per_step}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="model and batch (default: gpu-llama on cuda, cpu on cpu)")
    ap.add_argument("--steps", type=int, help="timed steps (default: 300 on cuda, 20 on cpu)")
    ap.add_argument("--warmup", type=int, help="untimed steps first (default: 30 on cuda, 5 on cpu)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile both loops (default: on "
                    "cuda)")
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    p = PRESETS[args.preset or ("gpu-llama" if cuda else "cpu")]
    steps, warmup = args.steps or (300 if cuda else 20), args.warmup or (30 if cuda else 5)
    compile_ = cuda if args.compile is None else args.compile
    bf16 = cuda and torch.cuda.is_bf16_supported()
    torch.manual_seed(0)
    blocks = torch.randint(0, p["vocab"], ((warmup + steps + 2) * p["batch"], p["seq"]))
    model = build(p)
    params = sum(t.numel() for t in model.parameters())
    ligo_tps, row = ligo_loop(copy.deepcopy(model), blocks, p["batch"], steps, warmup, compile_, bf16)
    bare_tps = bare_loop(model, blocks, p["batch"], steps, warmup, device, compile_, bf16)
    from ligo.flops import device_peak_tflops

    tflops = ligo_tps / (p["batch"] * p["seq"]) * row["flops_per_step"] / 1e12
    peak = device_peak_tflops(device)
    result = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "date": time.strftime("%Y-%m-%d"),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "preset": p, "compile": compile_,
              "bf16": bf16, "steps": steps, "warmup": warmup, "model_params": params,
              "ligo_tokens_per_s": ligo_tps, "bare_tokens_per_s": bare_tps, "ratio": ligo_tps / bare_tps,
              "tflops": tflops, "mfu": tflops / peak if peak else None, "peak_tflops": peak}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
