"""Coverage: which of the installed transformers' causal-LM model types ligo grows, generated, never written by hand.

    python benchmarks/coverage.py --json benchmarks/results/coverage-cpu-DATE.json --docs docs/architectures.md
    python benchmarks/coverage.py --types llama apertus falcon      # a few types, printed
    python benchmarks/coverage.py --report benchmarks/results/coverage-cpu-DATE.json --docs docs/architectures.md

For every model type transformers maps to a causal-LM class: its kind (a decoder-only language model, the decoder of
an encoder-decoder, an encoder used as a decoder, a vision-language wrapper), then, for the decoders, a tiny random
model built from transformers' own config class (:func:`ligo.probe.tiny_config`: the default config shrunk), saved,
and grown by ``ligo.grow`` with the default plan (no flag) to twice the width, twice the heads and kv heads, and one
layer more; the grown model is loaded by transformers and its logits on the same tokens compared with the source's.
The verdict per type: ``hand table``, ``inferred and proved`` (the table read off the class, or a hand table of
another family, proved by ligo itself), ``refused`` (the one line ligo says: why), or ``not built`` (transformers
cannot build or run it tiny here: why). ``--docs`` rewrites the generated table between its markers in the file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

MARK_BEGIN, MARK_END = "<!-- coverage:begin -->", "<!-- coverage:end -->"
# default configs that transformers itself cannot build or run a model from (a per-layer list the modeling code
# reads left null; hybrids without one attention layer, whose mask code fails): the least a released checkpoint's
# config says, given (as a function of the default config) before the config is shrunk
UNBUILDABLE_DEFAULTS = {
    "lfm2_moe": lambda c: {"layer_types": ["conv", "conv", "full_attention", "conv"] * (c["num_hidden_layers"] // 4)},
    "granitemoehybrid": lambda c: {"layer_types": ["mamba", "attention"] * (c["num_hidden_layers"] // 2)},
    "bamba": lambda c: {"attn_layer_indices": [1]},
    "dots1": lambda c: {"n_routed_experts": 128, "num_experts_per_tok": 6, "n_shared_experts": 2,  # (dots.llm1's)
                        "first_k_dense_replace": 1},
}
SAMPLE = ("llama", "apertus", "stablelm", "starcoder2", "phi", "olmo", "exaone4", "gpt_bigcode")  # the suite's sample


def kinds() -> dict[str, str]:
    """Every causal-LM model_type and what it is."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    out = {}
    for mt in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        try:
            cfg = transformers.AutoConfig.for_model(mt)
        except Exception as exc:  # noqa: BLE001
            out[mt] = f"config: {type(exc).__name__}"
            continue
        if getattr(cfg, "is_encoder_decoder", False):
            out[mt] = "encoder-decoder"
        elif mt in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
            out[mt] = "encoder"
        elif any(isinstance(v, dict) and k in ("text_config", "vision_config", "audio_config")
                 for k, v in cfg.to_dict().items()):
            out[mt] = "multimodal"
        else:
            out[mt] = "decoder"
    return out


def verdict(model_type: str, root: Path) -> dict:
    """Build a tiny ``model_type``, grow it with the default plan, compare logits: the verdict."""
    import torch
    import transformers

    from ligo import grow
    from ligo.errors import LigoError
    from ligo.probe import build_model, tiny_config
    from ligo.tables import refused_reason, supported_types

    t0 = time.perf_counter()
    hand = model_type in supported_types()
    try:
        config = transformers.AutoConfig.for_model(model_type).to_dict()
        config.update(UNBUILDABLE_DEFAULTS[model_type](config) if model_type in UNBUILDABLE_DEFAULTS else {})
        small, keys = tiny_config(model_type, config)
        torch.manual_seed(0)
        model = build_model(model_type, small, "cpu").eval()
        ids = torch.randint(0, small[keys["vocab"]], (1, 16), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1:
                    p.add_(0.1 * torch.randn_like(p))
            model(input_ids=ids)  # (a tiny model transformers cannot run is not built either)
        src = root / model_type / "source"
        model.save_pretrained(src)
    except Exception as exc:  # noqa: BLE001
        return {"verdict": "not built", "why": f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}",
                "hand": hand}
    target = {keys[n]: small[keys[n]] * 2 for n in ("hidden", "heads", "kv_heads") if n in keys
              and isinstance(small.get(keys[n]), int)}
    target[keys["layers"]] = small[keys["layers"]] + 1
    try:
        result = grow(src, target, root / model_type / "grown")
    except LigoError as exc:
        return {"verdict": "refused", "why": str(exc), "hand": hand, "s": time.perf_counter() - t0}
    except Exception as exc:  # noqa: BLE001
        return {"verdict": "error", "why": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}", "hand": hand}
    try:
        grown = transformers.AutoModelForCausalLM.from_pretrained(root / model_type / "grown", dtype=torch.float32,
                                                                  attn_implementation="eager").eval()
        with torch.no_grad():
            gap = float((grown(input_ids=ids).logits - model(input_ids=ids).logits).abs().max())
    except Exception as exc:  # noqa: BLE001  (grown, but transformers cannot load or run it: a defect to see)
        return {"verdict": "error", "why": f"the grown model: {type(exc).__name__}: {' '.join(str(exc).split())[:250]}",
                "hand": hand}
    table = result.record.table or ""
    return {"verdict": "hand table" if hand else "inferred and proved" if table.startswith("inferred") else
            "another family's table, proved", "table": table, "hand": hand, "lossless": result.record.lossless,
            "gap": gap, "s": time.perf_counter() - t0, "refused_reason": refused_reason(model_type)}


def markdown(report: dict) -> str:
    rows = report["types"]
    decoders = {t: r for t, r in rows.items() if r["kind"] == "decoder"}
    built = {t: r for t, r in decoders.items() if r.get("verdict") != "not built"}
    grows = {t: r for t, r in built.items() if r.get("verdict") in ("hand table", "inferred and proved",
                                                                    "another family's table, proved")}
    lines = [MARK_BEGIN, "", f"Generated by `python benchmarks/coverage.py` on {report['date']} with transformers "
             f"{report['transformers']} ({report['machine']}): of its {len(rows)} causal-LM model types, "
             f"{len(decoders)} are decoder-only language models; {len(built)} of them build and run at the tiny "
             f"size their default config is shrunk to here (the others: why, below), and ligo grows **{len(grows)}** of those ({len(grows) / max(1, len(built)):.0%}) without a "
             "flag (default plan, twice the width and heads, one layer more; the logit gap is the grown model's "
             "against the source's on the same tokens).", "",
             "| model_type | verdict | logit gap | why / table |", "|---|---|---|---|"]
    for t, r in sorted(decoders.items()):
        v = r.get("verdict")
        gap = f"{r['gap']:.1e}" if isinstance(r.get("gap"), float) else ""
        why = r.get("why") or (r.get("table") or "").split(",")[0]
        lines.append(f"| `{t}` | {v} | {gap} | {' '.join(str(why).split())[:160].replace('|', '/')} |")
    others = sorted((r["kind"], t) for t, r in rows.items() if r["kind"] != "decoder")
    lines += ["", "Not decoder-only language models (not grown as such): " +
              "; ".join(f"{k}: " + ", ".join(f"`{t}`" for kk, t in others if kk == k)
                        for k in sorted({k for k, _ in others})) + ".", "", MARK_END]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", nargs="+", help="only these model types")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--docs", help="rewrite the generated table in this markdown file (between its markers)")
    ap.add_argument("--report", help="no walk: read this results JSON (one --json wrote) and only write --docs")
    args = ap.parse_args()
    if args.report:
        if not args.docs:
            sys.exit("--report only rewrites a table: give --docs FILE")
        write_docs(Path(args.docs), json.loads(Path(args.report).read_text()))
        return
    warnings.filterwarnings("ignore")
    import os
    import platform

    # every type proved afresh: a table cached by older code would hide a type that stopped growing
    os.environ["LIGO_CACHE"] = tempfile.mkdtemp(prefix="ligo-coverage-")

    import torch
    import transformers
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    torch.set_num_threads(1)
    all_kinds = kinds()
    types = args.types or list(all_kinds)
    report = {"date": time.strftime("%Y-%m-%d"), "transformers": transformers.__version__, "torch": torch.__version__,
              "machine": f"{platform.machine()} CPU", "types": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for mt in types:
            row = {"kind": all_kinds.get(mt, "unknown")}
            if row["kind"] == "decoder":
                row.update(verdict(mt, Path(tmp)))
            report["types"][mt] = row
            print(mt, row["kind"], row.get("verdict", ""), f"{row['gap']:.1e}" if isinstance(row.get("gap"), float)
                  else "", (row.get("why") or "")[:200], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.docs:
        write_docs(Path(args.docs), report)


def write_docs(path: Path, report: dict) -> None:
    """The generated table written between the file's markers."""
    text = path.read_text()
    if MARK_BEGIN not in text or MARK_END not in text:
        sys.exit(f"{path} has no {MARK_BEGIN} ... {MARK_END} markers")
    head, rest = text.split(MARK_BEGIN, 1)
    path.write_text(head + markdown(report) + rest.split(MARK_END, 1)[1])


if __name__ == "__main__":
    main()
