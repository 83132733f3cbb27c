"""Memory drift: does peak RSS keep growing across steps while fitting an operator or training?

Grows a tiny Llama (2x32 -> 4x64) with an operator fit of N steps, then trains the grown model for N
steps, in this one process, reading the kernel's peak-RSS counter (VmHWM, reset at the start of
each phase) after step 50 and after step N. A leak shows as a drift; the test suite runs this
with N = 500 and requires at most 5%.

    python benchmarks/memory_drift.py --steps 500
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--early", type=int, default=50, help="the step compared with the last one")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()

    from ligo import Grower, GrowthPlan, TrainConfig
    from ligo.bench import peak_rss_mb
    from ligo.data import pack, stdlib_texts, train_tokenizer
    from ligo.loop import make_collate, train_loop

    work = Path(tempfile.mkdtemp(prefix="ligo-memory-"))
    texts = stdlib_texts(300_000)
    tok = train_tokenizer(texts, 384, work / "tok")
    blocks = pack(texts, tok, 32, val_fraction=0.05)
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=64, vocab_size=len(tok), max_position_embeddings=32)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(work / "src")
    tok.save_pretrained(work / "src")
    target = {"hidden": 64, "layers": 4, "heads": 4, "kv_heads": 2, "ffn": 128}
    tcfg = TrainConfig(steps=args.steps, seq_len=32, batch_size=4, eval_every=0, eval_batches=1, progress=False,
                       save_every=0)
    result = {}

    def probe(phase):
        marks = {}

        def on_step(step, _model):
            if step in (args.early, args.steps):
                marks[step] = peak_rss_mb()
        result[phase] = marks
        peak_rss_mb(reset=True)
        return on_step

    grower = Grower(work / "src", target, GrowthPlan(width="random", depth="stack"))
    from ligo.fit import FitModule

    module = FitModule(grower.operator, grower.target_model())
    train_loop(module, blocks.train, blocks.val, tcfg,
               collate=make_collate("causal-lm"), desc="fit", on_step=probe("fit"))
    grower.save(work / "grown")
    model = LlamaForCausalLM.from_pretrained(work / "grown")
    train_loop(model, blocks.train, blocks.val, tcfg, collate=make_collate("causal-lm"), run_dir=work / "run",
               on_step=probe("train"))
    report = {}
    for phase, marks in result.items():
        early, late = marks[args.early], marks[args.steps]
        report[phase] = {f"peak_rss_mb_step_{args.early}": early, f"peak_rss_mb_step_{args.steps}": late,
                         "drift": (late - early) / early}
        print(f"{phase}: peak RSS {early:.1f} MB after step {args.early}, {late:.1f} MB after step {args.steps} "
              f"(drift {100 * (late - early) / early:+.2f}%)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
