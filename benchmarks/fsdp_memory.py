"""Sharded (``--fsdp``, FSDP2) against data-parallel (DDP) training on the same processes: each rank's memory for
parameters, gradients and AdamW state, its peak RSS, and the step time.

Both modes run ligo's own training loop (``ligo.loop.train_loop``, what ``ligo train`` runs) under
``torchrun --nproc_per_node N`` on the same Llama-shaped model, initial weights, token blocks and global batch.
The parameter, gradient and optimizer-state bytes are what each rank holds at every optimizer step (a hook on
every optimizer's step: the gradients are complete there and the AdamW state is allocated after the first step),
counted from the tensors themselves (a sharded tensor by its local shard); the largest over the run is reported.
The step time is the median over the steps after the first ``--warmup``.

    python benchmarks/fsdp_memory.py --json benchmarks/results/fsdp-memory-cpu-DATE.json     # 2 CPU processes
    python benchmarks/fsdp_memory.py --device cuda --nproc 2 --preset gpu --json ...          # 2 GPUs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRESETS = {
    "cpu": dict(hidden=512, layers=8, heads=8, kv_heads=4, ffn=1536, vocab=8192, seq=64, batch=4),
    "gpu": dict(hidden=2048, layers=16, heads=16, kv_heads=8, ffn=5632, vocab=32000, seq=1024, batch=8),
}


def _local_bytes(t) -> int:
    from torch.distributed.tensor import DTensor

    t = t.to_local() if isinstance(t, DTensor) else t
    return t.numel() * t.element_size()


def worker(args) -> None:
    import resource

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ligo.config import TrainConfig
    from ligo.loop import causal_collate, train_loop

    p = PRESETS[args.preset]
    cfg = LlamaConfig(hidden_size=p["hidden"], num_hidden_layers=p["layers"], num_attention_heads=p["heads"],
                      num_key_value_heads=p["kv_heads"], intermediate_size=p["ffn"], vocab_size=p["vocab"],
                      max_position_embeddings=p["seq"], tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    params = sum(t.numel() for t in model.parameters())
    blocks = torch.randint(0, p["vocab"], (p["batch"] * (args.steps + 2), p["seq"]),
                           generator=torch.Generator().manual_seed(1))
    peak = {"total": 0}

    def measure(optimizer, *_):
        held = {"parameters": 0, "gradients": 0, "optimizer_state": 0}
        for group in optimizer.param_groups:
            for q in group["params"]:
                held["parameters"] += _local_bytes(q)
                held["gradients"] += _local_bytes(q.grad) if q.grad is not None else 0
                held["optimizer_state"] += sum(_local_bytes(v) for v in optimizer.state.get(q, {}).values()
                                               if isinstance(v, torch.Tensor))
        held["total"] = sum(held.values())
        if held["total"] >= peak["total"]:
            peak.update(held)

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    register_optimizer_step_pre_hook(measure)
    train = TrainConfig(steps=args.steps, batch_size=p["batch"], seq_len=p["seq"], lr=1e-4, warmup=0, eval_every=0,
                        eval_batches=1, log_every=1, progress=False, fsdp=args.mode == "fsdp", compile=False)
    stamps = []
    result = train_loop(model, blocks, blocks[: p["batch"]], train, collate=causal_collate,
                        on_step=lambda *_: stamps.append(time.perf_counter()))
    steps = [b - a for a, b in zip(stamps, stamps[1:])][args.warmup:]
    rank = int(os.environ.get("RANK", "0"))
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    record = {"rank": rank, "mode": args.mode, "parameters_total": params, "held_bytes": peak,
              "peak_rss_bytes": rss_kb * 1024, "step_s": statistics.median(steps), "steps_timed": len(steps),
              "final_loss": result.history[-1]["loss"]}
    if torch.cuda.is_available() and args.device == "cuda":
        record["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
    Path(args.worker_out, f"{args.mode}-{rank}.json").write_text(json.dumps(record))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=list(PRESETS), default="cpu")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of the step time")
    ap.add_argument("--rounds", type=int, default=2, help="DDP then FSDP, this many times (the machine's noise)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--mode", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_out:
        worker(args)
        return 0
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for mode in ("ddp", "fsdp"):
                cmd = [torchrun, "--standalone", "--nproc_per_node", str(args.nproc), __file__, "--mode", mode,
                       "--worker-out", tmp, "--preset", args.preset, "--steps", str(args.steps), "--warmup",
                       str(args.warmup), "--device", args.device]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    return 1
                ranks = [json.loads(Path(tmp, f"{mode}-{i}.json").read_text()) for i in range(args.nproc)]
                runs.append({"round": r, "mode": mode, "wall_s": time.perf_counter() - t0, "ranks": ranks})
    import torch

    summary = {}
    for mode in ("ddp", "fsdp"):
        mine = [x for run in runs if run["mode"] == mode for x in run["ranks"]]
        summary[mode] = {"held_mib_per_rank": max(x["held_bytes"]["total"] for x in mine) / 2**20,
                         "parameters_mib": max(x["held_bytes"]["parameters"] for x in mine) / 2**20,
                         "gradients_mib": max(x["held_bytes"]["gradients"] for x in mine) / 2**20,
                         "optimizer_state_mib": max(x["held_bytes"]["optimizer_state"] for x in mine) / 2**20,
                         "peak_rss_mib": max(x["peak_rss_bytes"] for x in mine) / 2**20,
                         "step_s_median": statistics.median(x["step_s"] for x in mine),
                         "step_s_per_round": [max(x["step_s"] for x in run["ranks"]) for run in runs
                                              if run["mode"] == mode]}
    summary["held_ratio_fsdp_to_ddp"] = summary["fsdp"]["held_mib_per_rank"] / summary["ddp"]["held_mib_per_rank"]
    summary["step_time_ratio_fsdp_to_ddp"] = summary["fsdp"]["step_s_median"] / summary["ddp"]["step_s_median"]
    record = {"benchmark": "fsdp_memory", "preset": PRESETS[args.preset], "nproc": args.nproc, "device": args.device,
              "steps": args.steps, "warmup": args.warmup, "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "summary": summary, "runs": runs,
              "parameters_total": runs[0]["ranks"][0]["parameters_total"]}
    for mode in ("ddp", "fsdp"):
        s = summary[mode]
        print(f"{mode:5s} per rank: parameters {s['parameters_mib']:.1f} MiB, gradients {s['gradients_mib']:.1f} MiB, "
              f"AdamW state {s['optimizer_state_mib']:.1f} MiB (total {s['held_mib_per_rank']:.1f} MiB); peak RSS "
              f"{s['peak_rss_mib']:.0f} MiB; step {s['step_s_median']:.3f} s (median)")
    print(f"fsdp/ddp: held {summary['held_ratio_fsdp_to_ddp']:.3f}, "
          f"step time {summary['step_time_ratio_fsdp_to_ddp']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
