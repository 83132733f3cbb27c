"""The lossless plan on tiny random checkpoints of the 2025-26 families and vision-language wrappers: one line a
type, the max |logit difference| from the source (split and copy width, identity depth, the tests' targets: x2
residual, heads, kv heads, FFN and recurrent heads, more layers) beside a random-width control; for a
vision-language checkpoint, with an image in the prompt (x2 and x1.5, new layers after the source's), beside the
image's own effect on the source's logits.

    python benchmarks/lossless_families.py            # a minute or two on the CPU
"""

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_vlm  # noqa: E402  (the tests' tiny models and image prompts)
import tiny  # noqa: E402
from ligo import GrowthPlan, grow  # noqa: E402

FAMILIES = ("qwen3_5_text", "granitemoehybrid", "falcon_h1", "qwen3_next", "qwen3_5_moe_text", "deepseek_v3",
            "glm4_moe_lite", "nemotron_h", "lfm2_moe")


def families(tmp: Path) -> None:
    ids = torch.randint(4, tiny.VOCAB, (2, 40), generator=torch.Generator().manual_seed(0))
    for mt in FAMILIES:
        src = tiny.save_model(tiny.make_model(mt), tmp / mt)
        row = [mt]
        for width in ("split", "copy", "random"):
            target = dict(tiny.TARGET[mt])
            if width == "split" and mt in tiny.MOE:  # (split experts start from a noisy router: experts kept)
                target = {k: v for k, v in target.items() if k not in ("experts", "experts_per_token")}
            grow(src, target, tmp / f"{mt}-{width}", plan=GrowthPlan(width=width, depth="identity"))
            row.append(f"{width} {tiny.max_logit_diff(src, tmp / f'{mt}-{width}', ids)[0]:.2e}")
        print(" | ".join(row), flush=True)


def wrappers(tmp: Path) -> None:
    for mt in tiny.VLM:
        src = tiny.save_model(tiny.make_vlm(mt), tmp / mt)
        _, image, text = test_vlm._logits(src, mt)
        row = [mt, f"image effect {(image - text).abs().max():.2f}"]
        for name, target in (("x2", {"hidden": 128, "heads": 8, "kv_heads": 4, "ffn": 192, "layers": 4}),
                             ("x1.5", {"hidden": 96, "heads": 6, "kv_heads": 3, "ffn": 144, "layers": 3})):
            out = tmp / f"{mt}-{name}"
            grow(src, target, out, plan=GrowthPlan(width="split", depth_map="0-1" + ",new" * (target["layers"] - 2)))
            row.append(f"{name} {(test_vlm._logits(out, mt)[1] - image).abs().max():.2e}")
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        families(Path(d) / "families")
        wrappers(Path(d) / "wrappers")
