"""Every script in examples/ runs (smoke size) and prints what it claims."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# what each example must print (its own asserts check the rest)
EXPECT = {
    "grow_checkpoint": r"max relative logit difference (\S+)",
    "custom_architecture": r"olmo 2x64 -> 4x128: max relative logit difference (\S+)",
    "grow_then_train": r"fit: held-out loss \S+ -> \S+ in 4 steps",
    "compare_with_baseline": r"\| LiGO \(fitted\) \|",
}


def test_every_example_is_checked():
    assert {p.stem for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")} == set(EXPECT)


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_example_runs(name, tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--smoke"], capture_output=True, text=True,
                          timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    m = re.search(EXPECT[name], proc.stdout)
    assert m, proc.stdout
    if m.groups():  # a logit difference: lossless
        assert float(m.group(1)) < 1e-4
