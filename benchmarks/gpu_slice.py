"""One GPU window, one command: run the next unmeasured slice of the GPU evidence within a wall limit.

GPU time comes in short windows (15 minutes on one H100/H200 from a bare machine, 10 minutes a command,
nothing kept between windows, results back only through $OUT). This script is the whole command of a
window: it looks at the committed results (``benchmarks/results/*.json`` that carry a ``"slice"`` key),
picks the first slice not yet measured, sizes its training steps to the limit from a calibration run on
the device itself (steps shrink, methods never), runs ``ligo bench`` under a watchdog that stops it at
the limit, and writes ``<slice>-<device>-<date>.json`` (device, versions, the exact settings, every
method's curve and final held-out loss, which method is the default plan) and the plots into ``--out``.

    python3 benchmarks/gpu_slice.py --out "$OUT"                 # on the device machine (docs/gpu.md)
    python benchmarks/gpu_slice.py --smoke --out /tmp/slice      # the same at toy size on a CPU
    python benchmarks/gpu_slice.py --list                        # the slices and which are measured

Slices, in order: decide-218m (the gpu-llama shapes, every fixed method, the default plan and the fitted
operator at the base budget), fsdp (``ligo train --fsdp`` under torchrun on every GPU: sharded checkpoints,
preemption and resume, the final gather into one safetensors checkpoint, the run grown with its optimizer state and
resumed sharded),
speed (throughput.py and scale.py), decide-218m-4x (scratch, slice 1's best
fixed method and the default plan at 4x), noise-218m (slice 1's top two and scratch, seed 1), strong-218m
(slice 1 from a source trained 10x longer), decide-1b (gpu-1b.yaml: scratch, slice 1's best fixed method,
the default plan).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIRST = ["split", "stack", "stack-split", "random-stack", "ligo"]  # every fixed method, the default, the fit
SLICES = {
    "decide-218m": {"experiment": "gpu-llama.yaml", "budget": 1, "methods": FIRST},
    "fsdp": {"fsdp": True},
    "speed": {"scripts": True},
    "decide-218m-4x": {"experiment": "gpu-llama.yaml", "budget": 4, "methods": "best-fixed+default"},
    "noise-218m": {"experiment": "gpu-llama.yaml", "budget": 1, "methods": "top-two", "seed": 1},
    "strong-218m": {"experiment": "gpu-llama.yaml", "budget": 1, "methods": FIRST, "source_factor": 10},
    "decide-1b": {"experiment": "gpu-1b.yaml", "budget": 1, "methods": "best-fixed+default"},
}
MIN_STEPS = 20          # a slice that cannot train this many steps per run in the limit is not started
CORPUS_BYTES = 40_000_000  # enough text for the base budgets; the tokenizer trains in about a minute


def measured(results: Path) -> dict[str, Path]:
    """The slices that have a results file in ``results`` (files carrying a "slice" key)."""
    done = {}
    for p in sorted(results.glob("*.json")):
        try:
            name = json.loads(p.read_text()).get("slice")
        except (OSError, ValueError, AttributeError):
            continue
        if name in SLICES and json.loads(p.read_text()).get("complete"):
            done.setdefault(name, p)
    return done


def next_slice(results: Path) -> str | None:
    done = measured(results)
    return next((s for s in SLICES if s not in done), None)


def device_name() -> tuple[str, str]:
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        slug = (re.findall(r"[AHBL]\d{2,3}", name) or [name.split()[-1]])[0].lower()
        return name, slug
    return "cpu", "cpu"


def _methods(spec, exp: dict, results: Path) -> dict:
    """The slice's methods from the experiment's (scratch always), resolving the picks made from slice 1."""
    want = spec["methods"]
    if isinstance(want, str):
        first = measured(results).get("decide-218m")
        if first is None:
            raise SystemExit(f"slice needs decide-218m's results first (none in {results})")
        data = json.loads(first.read_text())
        rows = data["report"]["budgets"][0]["summary"]["rows"]
        finals = {m: r["final_val_loss"] for m, r in rows.items() if m != "scratch" and r.get("final_val_loss")}
        default = [m for m, v in data["methods"].items() if v.get("default")]
        if want == "top-two":
            want = sorted(finals, key=finals.get)[:2]
        else:
            best_fixed = data["report"]["budgets"][0]["summary"]["best_fixed"]
            want = list(dict.fromkeys([best_fixed, *default]))
    return {k: v for k, v in exp["methods"].items() if k == "scratch" or k in want}


def default_method(exp: dict) -> str | None:
    """The method whose plan is what `ligo grow` would choose for this source (unfitted)."""
    from ligo.config import GrowthPlan
    from ligo.experiment import Experiment
    from ligo.hf import meta_model

    experiment = Experiment.from_dict(exp, "the slice's experiment")
    params = sum(p.numel() for p in meta_model("causal-lm", experiment.configs()[0]).parameters())
    train = experiment.train_config(experiment.source.get("train", {}))
    plan = GrowthPlan().resolved(train.steps * train.tokens_per_step / params)
    for name, m in exp["methods"].items():
        if name != "scratch" and not (m or {}).get("fit") and not (m or {}).get("stage") and \
                (m.get("width"), m.get("depth")) == (plan.width, plan.depth):
            return name
    return None


def calibrate(exp: dict, which: str, steps: int = 6) -> dict:
    """Seconds of the first step (compilation included) and of each later one, for the source or the
    target, with the trainer's settings on this device (random weights and tokens)."""
    import torch

    from ligo.tables import get_spec
    from ligo.experiment import Experiment
    from ligo.hf import build_config, model_class
    from ligo.loop import make_collate, train_loop

    experiment = Experiment.from_dict(exp, "the slice's experiment")
    spec = get_spec(experiment.model_type)
    hf = build_config(experiment.configs()[0 if which == "source" else 1])
    if experiment.attn_implementation:
        hf._attn_implementation = experiment.attn_implementation
    model = model_class(spec.objective).from_config(hf)
    cfg = experiment.train_config({**{k: v for k, v in experiment.train.items() if k in ("grad_accum",)},
                                   "steps": steps, "warmup": 0, "eval_every": 0, "eval_batches": 1, "progress": False,
                                   "log_every": 1})
    gen = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, hf.vocab_size, (cfg.batch_size * (steps + 2), cfg.seq_len), generator=gen)
    stamps, t0 = [], time.perf_counter()
    result = train_loop(model, blocks, blocks[: cfg.batch_size], cfg, collate=make_collate(spec.objective),
                        on_step=lambda step, *_: stamps.append(time.perf_counter()))
    if len(stamps) < 3:
        raise SystemExit(f"calibration of the {which} trained {len(stamps)} steps; cannot size the slice")
    del model, result
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    later = (stamps[-1] - stamps[1]) / (len(stamps) - 2)
    return {"first_step_s": stamps[0] - t0, "step_s": later}  # the first: set-up, compilation, first evaluation


def size(exp: dict, spec: dict, n_methods: int, cal: dict, remaining: float) -> dict:
    """Training steps for the slice's runs so that all of them fit in ``remaining`` seconds.

    Every run pays a fixed overhead (the calibrated first step: compilation; model building and evaluation
    are in the reserve) and its steps; the source keeps its ratio to the target's steps (times the slice's
    source factor); scratch's LR sweep and every method train ``budget`` times the base steps."""
    budget = spec.get("budget", 1)
    factor = spec.get("source_factor", 1)
    ratio = exp["source"]["train"]["steps"] / exp["train"]["steps"] * factor
    target_runs = len(exp.get("lr_sweep") or [1]) + n_methods
    runs = 1 + target_runs
    evals = 1.15  # held-out evaluations and logging on top of the steps
    usable = 0.8 * remaining - runs * cal["target"]["first_step_s"]
    per_base_step = evals * (ratio * cal["source"]["step_s"] + target_runs * budget * cal["target"]["step_s"])
    base = int(usable / per_base_step) if usable > 0 else 0
    return {"base_steps": base, "source_steps": max(1, int(base * ratio)), "runs": runs,
            "estimated_s": runs * cal["target"]["first_step_s"] + base * per_base_step}


def run_slice(name: str, out: Path, results: Path, limit: float, smoke: bool, started: float,
              steps: int | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    spec = SLICES[name]
    device, slug = device_name()
    stamp = time.strftime("%Y-%m-%d")
    record = {"slice": name, "device": device, "date": stamp, "limit_s": limit, "smoke": smoke}
    record.update(_versions())
    if spec.get("scripts"):
        record.update(_speed(out, smoke, limit - (time.monotonic() - started)))
    elif spec.get("fsdp"):
        record.update(_fsdp(out, smoke, started + limit))
    else:
        record.update(_bench_slice(name, spec, out, results, limit, smoke, started, steps))
    record["wall_s"] = time.monotonic() - started
    if record.get("complete") is None:
        record["complete"] = False
    path = out / f"{name}-{slug}-{stamp}.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


def _versions() -> dict:
    import torch
    import transformers

    import ligo

    return {"torch": torch.__version__, "transformers": transformers.__version__, "ligo": ligo.__version__}


def _bench_slice(name, spec, out: Path, results: Path, limit: float, smoke: bool, started: float,
                 steps: int | None = None) -> dict:
    import yaml

    from ligo.experiment import read_experiment

    exp, _ = read_experiment(ROOT / "benchmarks" / "experiments" / spec["experiment"], smoke=smoke)
    exp["methods"] = _methods(spec, exp, results)
    exp.update(budgets=[spec.get("budget", 1)], noise_seeds=[], seed=spec.get("seed", exp.get("seed", 0)))
    if not smoke:
        exp["corpus_bytes"] = min(int(exp.get("corpus_bytes", CORPUS_BYTES)), CORPUS_BYTES)
    for section in (exp["source"]["train"], exp["train"]):
        section["save_every"] = 0  # nothing is kept between windows: checkpoints would only cost time
    cal = {"source": calibrate(exp, "source"), "target": calibrate(exp, "target")}
    remaining = limit - (time.monotonic() - started)
    plan = size(exp, spec, len(exp["methods"]) - 1, cal, remaining)
    if steps:  # fixed by the caller (the CPU rehearsal in the tests): no sizing
        plan.update(base_steps=steps, source_steps=steps, sized=False)
    settings = {"calibration": cal, "sizing": plan, "experiment": exp}
    if plan["base_steps"] < (2 if smoke else MIN_STEPS):
        print(f"gpu_slice: {name} cannot train {MIN_STEPS} steps per run in the {remaining:.0f} s left "
              f"(calibrated: {cal}); not started", file=sys.stderr)
        raise SystemExit(3)
    scale = plan["base_steps"] / exp["train"]["steps"]
    exp["train"]["steps"] = plan["base_steps"]
    exp["source"]["train"]["steps"] = plan["source_steps"]
    for section in (exp["source"]["train"], exp["train"]):
        for key in ("warmup", "eval_every"):
            if section.get(key):
                section[key] = max(1, int(section[key] * min(1.0, scale)))
    exp["name"] = name
    work = out / "bench"
    (out / "experiment.yaml").write_text(yaml.safe_dump(exp, sort_keys=False))
    cmd = [sys.executable, "-m", "ligo", "bench", str(out / "experiment.yaml"), "--out", str(work), "--no-progress",
           "--overwrite"]
    deadline = started + limit
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    log = []
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(1)
    finally:
        log = proc.stdout.read().splitlines() if proc.stdout else []
    (out / "bench.log").write_text("\n".join(log) + "\n")
    report_path = work.parent / work.name / "results.json"
    if proc.returncode == 0 and report_path.exists():
        report = json.loads(report_path.read_text())
        for png in work.glob("*.png"):
            shutil.copy2(png, out / f"{name}-{png.name}")
        shutil.copy2(work / "table.md", out / f"{name}-table.md")
        default = default_method(exp)
        methods = {m: {"label": (exp["methods"].get(m) or {}).get("label", m), "default": m == default,
                       "final_val_loss": r["final_val_loss"], "curve": r.get("curve")}
                   for m, r in report["budgets"][0]["methods"].items()}
        return {**settings, "complete": True, "default_method": default, "methods": methods, "report": report}
    # a stopped bench keeps its finished runs (in the output, or its staging sibling when it replaced one)
    partial = {p.parent.name: json.loads(p.read_text()).get("final_val_loss")
               for where in (work, work.parent / f".{work.name}.ligo-new") if where.exists()
               for p in where.rglob("result.json")}
    return {**settings, "complete": False, "returncode": proc.returncode, "finished_runs": partial,
            "log_tail": log[-20:]}


FSDP_MODEL = dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                  intermediate_size=1536, max_position_embeddings=512)
FSDP_SMOKE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, max_position_embeddings=64)


def _fsdp(out: Path, smoke: bool, deadline: float) -> dict:
    """``ligo train --fsdp`` (FSDP2 applied by ligo, the path tests/test_fsdp.py runs on two CPU processes) under
    ``torchrun`` with a process per GPU: train with checkpoints, SIGTERM to the launch after the first one
    (preemption), ``--resume`` to the end (the final model gathered into one safetensors file), load it with
    transformers, then grow the run's sharded checkpoint with its optimizer state and continue it sharded. Each
    step's outcome is recorded. On one GPU (and in the CPU rehearsal: one gloo process) the wrap, the checkpoints
    and the gather are real, with one shard."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from ligo.data import stdlib_texts, train_tokenizer

    work = out / "fsdp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    steps, seq = (6, 16) if smoke else (40, 256)
    tok = train_tokenizer(stdlib_texts(300_000 if smoke else 2_000_000), 512 if smoke else 4096, work / "tok")
    torch.manual_seed(0)
    cfg = LlamaConfig(**(FSDP_SMOKE if smoke else FSDP_MODEL), vocab_size=len(tok), tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(work / "src")
    tok.save_pretrained(work / "src")
    nproc = torch.cuda.device_count() if torch.cuda.is_available() else 1
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "-m",
              "ligo"]
    train = ["train", str(work / "src"), "--out", str(work / "run"), "--steps", str(steps), "--save-every",
             str(steps // 2), "--batch-size", str(4 * nproc), "--seq-len", str(seq), "--eval-every", str(steps // 2),
             "--eval-batches", "2", "--log-every", "1", "--no-progress", "--fsdp"]
    record = {"model": FSDP_SMOKE if smoke else FSDP_MODEL, "steps": steps, "processes": nproc, "outcomes": []}

    def step(name: str, cmd: list[str], stop_when=None) -> int | None:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        signalled = False
        while proc.poll() is None:
            if time.monotonic() > deadline or (stop_when and not signalled and stop_when()):
                signalled = True
                os.killpg(proc.pid, signal.SIGTERM)
                if time.monotonic() > deadline:
                    break
            time.sleep(0.05)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log = proc.stdout.read().splitlines() if proc.stdout else []
        ligo = [line for line in log if line.startswith("ligo ")]  # ligo's own lines (torchrun adds its report)
        record["outcomes"].append({"step": name, "returncode": proc.returncode, "seconds": time.monotonic() - t0,
                                   "signalled": signalled, "ligo_lines": ligo[-4:], "tail": log[-8:]})
        # preempted: ligo's one line (torchrun's own exit status then says only that a process stopped)
        return 143 if any(": preempted at " in line for line in ligo) else proc.returncode

    half = work / "run" / "checkpoints" / f"step-{steps // 2:07d}"
    stopped = step("train, SIGTERM after the first checkpoint", launch + train,
                   stop_when=lambda: (half / "trainer_state.json").exists())
    # preempted: --resume finishes it; finished before the signal landed: --resume trains it on to twice the steps
    more = [] if stopped == 143 else ["--steps", str(2 * steps)]
    finished = step("train --resume", launch + train + ["--resume", *more]) if stopped in (0, 143) else None
    files = sorted(str(p.relative_to(work / "run")) for p in (work / "run").rglob("*")
                   if "checkpoints" in p.parts and p.is_file())
    record["checkpoint_files"] = files[:40]
    record["sharded_checkpoint"] = any("/shards/" in f for f in files) and not any(
        f.endswith("model.safetensors") for f in files)
    if finished == 0:
        model = AutoModelForCausalLM.from_pretrained(work / "run")
        ids = torch.randint(0, len(tok), (1, seq))
        with torch.no_grad():
            record["final_model_loads"] = bool(torch.isfinite(model(input_ids=ids).logits).all())
        record["final_model_files"] = sorted(p.name for p in (work / "run").glob("*.safetensors"))
        grow = [sys.executable, "-m", "ligo", "grow", str(work / "run"), "--optimizer-state", "grow", "--target",
                json.dumps({"hidden_size": 2 * cfg.hidden_size, "num_attention_heads": 2 * cfg.num_attention_heads,
                            "num_key_value_heads": 2 * cfg.num_key_value_heads}), "--out", str(work / "grown-run")]
        if step("grow the run with its optimizer state", grow) == 0:
            step("train the grown run --resume", launch + ["train", "--out", str(work / "grown-run"), "--resume",
                                                         "--steps", str(steps + 4), "--no-progress"])
    # complete: the flow reached its end within the limit;
    # passed: every step ended as it should (preempted or finished, resumed, sharded checkpoints, loaded, grown from
    # the shards, and the grown run resumed sharded)
    record["complete"] = finished is not None and time.monotonic() < deadline
    record["passed"] = stopped in (0, 143) and finished == 0 and record.get("final_model_loads", False) and \
        record["sharded_checkpoint"] and [o["returncode"] for o in record["outcomes"][2:]] == [0, 0]
    return record


def _speed(out: Path, smoke: bool, remaining: float) -> dict:
    device = "cpu" if smoke else "cuda"
    runs = {"throughput": [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--device", device,
                           "--json", str(out / "throughput.json")] + (["--preset", "cpu", "--steps", "3", "--warmup", "1"]
                                                                     if smoke else []),
            "scale": [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--json", str(out / "scale.json")] +
                     (["--smoke"] if smoke else [])}
    record, t0 = {"complete": True}, time.monotonic()
    for key, cmd in runs.items():
        left = remaining - (time.monotonic() - t0)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1, left - 10))
            ok = proc.returncode == 0 and (out / f"{key}.json").exists()
        except subprocess.TimeoutExpired:
            ok, proc = False, None
        record[key] = json.loads((out / f"{key}.json").read_text()) if ok else {
            "error": (proc.stderr[-2000:] if proc else "stopped at the limit")}
        record["complete"] = record["complete"] and ok
    return record


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="where the results JSON and plots go (on the device machine: $OUT)")
    ap.add_argument("--results", default=str(RESULTS), help="the committed results that say what is measured")
    ap.add_argument("--slice", choices=list(SLICES), help="run this slice (default: the next unmeasured one)")
    ap.add_argument("--limit", type=float, default=510.0, help="wall limit in seconds, start-up included (default "
                    "510: 8.5 minutes)")
    ap.add_argument("--smoke", action="store_true", help="the experiments' smoke sizes (a CPU rehearsal)")
    ap.add_argument("--list", action="store_true", help="list the slices and which are measured")
    ap.add_argument("--steps", type=int, help="train this many base steps instead of sizing them to the limit")
    args = ap.parse_args()
    started = time.monotonic()
    results = Path(args.results)
    if args.list:
        done = measured(results)
        for s in SLICES:
            print(f"{s:16s} {'measured: ' + done[s].name if s in done else 'not measured'}")
        return 0
    if not args.out:
        ap.error("--out is required")
    name = args.slice or next_slice(results)
    if name is None:
        print(f"gpu_slice: every slice is measured (see {results}); nothing to run")
        return 0
    if not math.isfinite(args.limit) or args.limit <= 0:
        ap.error("--limit must be a positive number of seconds")
    path = run_slice(name, Path(args.out), results, args.limit, args.smoke, started, args.steps)
    data = json.loads(path.read_text())
    print(f"gpu_slice: {name} {'complete' if data['complete'] else 'INCOMPLETE'} in {data['wall_s']:.0f} s -> {path}")
    return 0 if data["complete"] else 4


if __name__ == "__main__":
    sys.exit(main())
