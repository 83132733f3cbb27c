"""Growth and the LiGO fit at LLM scale: a random bf16 Llama 1.7B (2048 x 24, vocabulary 49152) grown to
5B (3072 x 32), on one device.

1. ``ligo grow --device DEVICE`` through the real console script: end-to-end seconds (load, build,
   grow, save) and the process's peak memory.
2. The operator fit on the device: gradient checkpointing inside the fitted model, fp32 operator
   maps with bf16 materialized weights (autocast), shared width maps; seconds per step and peak
   device memory at seq 2048, and the largest batch that fits (doubling until out of memory).

    python benchmarks/scale.py --json benchmarks/results/scale-h100-DATE.json     # one 80 GB GPU
    python benchmarks/scale.py --smoke                                            # tiny, CPU, seconds

Random weights are enough for speed and memory; the loss means nothing here.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SIZES = {
    "llm": dict(source=dict(hidden=2048, layers=24, heads=32, kv_heads=32, ffn=8192, vocab=49152),
                target=dict(hidden=3072, layers=32, heads=48, kv_heads=48, ffn=12288), seq=2048),
    "smoke": dict(source=dict(hidden=64, layers=2, heads=4, kv_heads=4, ffn=128, vocab=512),
                  target=dict(hidden=96, layers=3, heads=6, kv_heads=6, ffn=192), seq=64),
}


def random_source(path: Path, s: dict, seq: int) -> Path:
    """A bf16 Llama checkpoint of random weights, written tensor by tensor (no model instance)."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                      num_key_value_heads=s["kv_heads"], intermediate_size=s["ffn"], vocab_size=s["vocab"],
                      max_position_embeddings=seq, tie_word_embeddings=True, dtype="bfloat16")
    path.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(path)
    h, f, kvd = s["hidden"], s["ffn"], s["kv_heads"] * (s["hidden"] // s["heads"])
    shapes = {"model.embed_tokens.weight": (s["vocab"], h), "model.norm.weight": (h,)}
    for i in range(s["layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                       p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kvd, h),
                       p + "self_attn.v_proj.weight": (kvd, h), p + "self_attn.o_proj.weight": (h, h),
                       p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                       p + "mlp.down_proj.weight": (h, f)})
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=gen) * 0.02).bfloat16()
             for k, shape in shapes.items()}
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    return path


def grow_through_the_cli(src: Path, target: dict, out: Path, device: str) -> dict:
    ligo = Path(sys.executable).parent / "ligo"
    t0 = time.perf_counter()
    proc = subprocess.run([str(ligo), "grow", str(src), "--target", json.dumps(target), "--out", str(out),
                           "--device", device, "--max-shard-size", "5GB"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"ligo grow failed: {proc.stderr.strip()}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return {"grow_s": wall, "grow_output": proc.stdout.strip().splitlines()[-1], "grow_peak_rss_gb": peak}


def fit_steps(src: Path, target: dict, device: str, seq: int, batch: int, steps: int) -> dict:
    """Seconds per fit step and peak device memory (raises torch.cuda.OutOfMemoryError when it does not fit)."""
    from ligo import Grower, GrowthPlan, TrainConfig

    cuda = device.startswith("cuda")
    grower = Grower(src, target, GrowthPlan(width="split", depth="stack"), device=device)
    blocks = torch.randint(0, grower.target_dims.vocab, ((steps + 2) * batch, seq))

    class Blocks:
        train, val = blocks, blocks[:batch]

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    cfg = TrainConfig(steps=steps, batch_size=batch, seq_len=seq, lr=1e-4, warmup=1, eval_every=0, eval_batches=1,
                      log_every=1, grad_checkpointing=True, mixed_precision="bf16", compile=False, progress=False)
    result = grower.fit(cfg=cfg, blocks=Blocks)
    rows = result.history
    per_step = (rows[-1]["wall"] - rows[0]["wall"]) / max(1, len(rows) - 1)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    del grower, result
    if cuda:
        torch.cuda.empty_cache()
    return {"fit_s_per_step": per_step, "fit_peak_gb": peak, "fit_batch": batch,
            "fit_tokens_per_s": batch * seq / per_step}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the script")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    ap.add_argument("--steps", type=int, default=3, help="fit steps per measurement")
    ap.add_argument("--max-batch", type=int, default=64, help="stop doubling the batch here")
    ap.add_argument("--workdir", help="where the source and the grown model go (default: a temporary folder)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    size = SIZES["smoke" if args.smoke else "llm"]
    device = args.device or ("cpu" if args.smoke else "cuda")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ligo-scale-"))
    src = work / "source"
    if not (src / "model.safetensors").exists():
        random_source(src, size["source"], size["seq"])
    result = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
              "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "sizes": size}
    result |= grow_through_the_cli(src, size["target"], work / "grown", device)
    print(json.dumps(result, indent=2), flush=True)
    batch, best = 1, None
    while batch <= args.max_batch:
        try:
            best = fit_steps(src, size["target"], device, size["seq"], batch, args.steps)
        except torch.cuda.OutOfMemoryError:
            break
        print(json.dumps(best), flush=True)
        if batch == 1:
            result |= {k: best[k] for k in ("fit_s_per_step", "fit_peak_gb")}  # the headline: batch 1 at seq 2048
        if not device.startswith("cuda"):
            break  # on the CPU only the pipeline is checked
        batch *= 2
    result["largest_batch"] = best["fit_batch"] if best else 0
    result["largest_batch_s_per_step"] = best["fit_s_per_step"] if best else None
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
