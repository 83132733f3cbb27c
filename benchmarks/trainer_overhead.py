"""Trainer overhead: tokens/s of `ligo train` against a bare PyTorch loop on the same model and batch.

Both train the same Llama-shaped model (random init, saved here) on the same packed blocks of the
standard library's source with AdamW, gradient clipping and the same LR schedule. `ligo train`
runs as the real console script; its per-step wall times come from its log.jsonl (held-out
evaluation excluded, as it is in the bare loop, which does none). The first steps are warm-up and
are left out of both.

    python benchmarks/trainer_overhead.py                 # ~2 minutes on 2 CPU cores
    python benchmarks/trainer_overhead.py --hidden 512 --layers 8 --steps 40
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def bare_loop(model_dir: Path, blocks: torch.Tensor, batch: int, steps: int, lr: float) -> list[float]:
    """The reference: the least code that trains this model. Returns each step's wall time."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    times = []
    for step in range(steps):
        x = blocks[(step * batch) % (len(blocks) - batch):][:batch]
        t0 = time.perf_counter()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip", type=int, default=5, help="warm-up steps left out of both measurements")
    args = ap.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    from ligo.data import pack, stdlib_texts, train_tokenizer

    work = Path(tempfile.mkdtemp(prefix="ligo-overhead-"))
    texts = stdlib_texts(2_000_000)
    tok = train_tokenizer(texts, 4096, work / "tok")
    blocks = pack(texts, tok, args.seq_len, val_fraction=0.02)
    cfg = LlamaConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                      num_key_value_heads=args.hidden // 128, intermediate_size=args.hidden * 8 // 3 // 64 * 64,
                      vocab_size=len(tok), max_position_embeddings=args.seq_len, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(texts))
    tokens_per_step = args.batch_size * args.seq_len

    ligo = Path(sys.executable).parent / "ligo"
    subprocess.run([str(ligo), "train", str(work / "model"), "--data", str(corpus), "--out", str(work / "run"),
                    "--steps", str(args.steps), "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
                    "--eval-every", "0", "--eval-batches", "1", "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    log = [json.loads(line) for line in (work / "run" / "log.jsonl").read_text().splitlines()]
    ligo_s = log[-1]["wall"] - log[args.skip - 1]["wall"]
    bare = bare_loop(work / "model", blocks.train, args.batch_size, args.steps, 1e-3)
    bare_s = sum(bare[args.skip:])
    n = args.steps - args.skip
    ligo_tps, bare_tps = n * tokens_per_step / ligo_s, n * tokens_per_step / bare_s
    params = sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())
    print(f"model: llama {args.layers}x{args.hidden} ({params / 1e6:.1f}M parameters), batch {args.batch_size} x "
          f"seq {args.seq_len}, {n} timed steps after {args.skip} warm-up, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}")
    print("| loop | tokens/s | s/step |\n|---|---|---|")
    print(f"| bare torch | {bare_tps:,.0f} | {bare_s / n:.3f} |")
    print(f"| ligo train | {ligo_tps:,.0f} | {ligo_s / n:.3f} |")
    print(f"ligo train / bare: {ligo_tps / bare_tps:.1%}")


if __name__ == "__main__":
    main()
