"""The cost of the unit report (``ligo.diagnostics.unit_report``: duplicated units per space) against one
training step, at 135M, 360M and 1B: random Llama weights of those shapes (no duplicates, so the nearest-
distance search runs in every space: the slow case), the report timed; the step is forward + backward +
AdamW on 4 x 256 tokens of the same model, fp32, this machine's threads.

    python benchmarks/unit_report_cost.py                 # all sizes
    python benchmarks/unit_report_cost.py --sizes 135M --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

SIZES = {
    "135M": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                 intermediate_size=1536, vocab_size=49152),
    "360M": dict(hidden_size=960, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5,
                 intermediate_size=2560, vocab_size=49152),
    "1B": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, vocab_size=128256),
}


def measure(name: str, cfg: dict, step: bool) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from ligo.tables import get_spec
    from ligo.diagnostics import unit_report

    config = LlamaConfig(**cfg, max_position_embeddings=2048, tie_word_embeddings=True, head_dim=64)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    spec = get_spec("llama")
    config_dict = config.to_dict()
    dims = spec.dims(config_dict)
    state = {k: v.detach() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    layout = spec.layout(state.keys(), dims)
    t0 = time.perf_counter()
    report = unit_report(state, layout, spec, dims)
    report_s = time.perf_counter() - t0
    out = {"size": name, "parameters": sum(p.numel() for p in model.parameters()), "report_s": report_s,
           "threads": torch.get_num_threads(), "spaces": {k: v["units"] for k, v in report.items()}}
    if step:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        ids = torch.randint(0, cfg["vocab_size"], (4, 256))
        times = []
        for _ in range(2):  # the second step: the optimizer state exists
            t0 = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t0)
        out["step_s"] = times[-1]
        out["report_per_step"] = report_s / times[-1]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--no-step", action="store_true", help="time the report only")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    rows = []
    for name in args.sizes:
        row = measure(name, SIZES[name], not args.no_step)
        rows.append(row)
        step = f", one training step {row['step_s']:.1f}s ({row['report_per_step']:.2f} steps)" if "step_s" in row else ""
        print(f"{name} ({row['parameters'] / 1e6:.0f}M parameters): unit report {row['report_s']:.1f}s{step}",
              flush=True)
    if args.json:
        meta = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads()}
        with open(args.json, "w") as f:
            json.dump({**meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
