"""Add the planner's evidence record to results files written before ``ligo bench`` recorded it (issue 43), so that
``ligo plan`` reads them with no model on disk. The record is the one the bench writes now
(:func:`ligo.evidence.evidence_record`): it is computed from the file's own experiment record, and for a pretrained
source from the config given here (its checkpoint need not be on the machine). Files that hold one are left alone;
each file is rewritten in place, atomically, with only the ``evidence`` key added.

    python benchmarks/migrate_results.py benchmarks/results/cpu-tiny*.json
    python benchmarks/migrate_results.py benchmarks/results/real-smollm2-*.json --source-config SMOLLM2_CONFIG \\
        --source-tokens 2e12 --tokens-from "SmolLM2-135M's model card: about 2T tokens"

(the committed files were migrated with these two commands on 2026-12-08; SMOLLM2_CONFIG is SmolLM2-135M's
config.json as a JSON object: llama, hidden_size 576, intermediate_size 1536, 30 layers, 9 heads, 3 key-value heads,
vocab 49152, tied embeddings.)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def migrate(path: Path, source_config: dict | None, tokens: float | None, tokens_from: str | None) -> str:
    from ligo.evidence import evidence_of, evidence_record, read_results

    text = path.read_text()
    report = json.loads(text)
    if "evidence" in report:
        return "has its evidence record; left alone"
    if source_config is not None:
        floor = report["budgets"][0].get("summary", {}).get("noise_floor")
        record = evidence_record(report["experiment"], source_config, report["budgets"], report["source"], floor)
    else:
        record = evidence_of(read_results(path))
    if tokens is not None:
        record["source"].update(tokens=tokens, tokens_from=tokens_from or "given to benchmarks/migrate_results.py")
    report["evidence"] = record
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path)
    return (f"source {record['source']['params']:,} parameters ({record['source']['tokens'] or 'tokens unknown'}), "
            f"target {record['target']['params']:,}, roles " +
            ", ".join(f"{n}: {m['role']}" for n, m in record["methods"].items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--source-config", type=json.loads, help="a pretrained source's config.json, as a JSON object")
    ap.add_argument("--source-tokens", type=float, help="the tokens a pretrained source was trained on")
    ap.add_argument("--tokens-from", help="where that number comes from")
    args = ap.parse_args()
    for path in args.files:
        print(f"{path}: {migrate(path, args.source_config, args.source_tokens, args.tokens_from)}")


if __name__ == "__main__":
    main()
