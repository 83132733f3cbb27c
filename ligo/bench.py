"""Benchmarks: grown vs scratch vs the fixed growth methods, at equal total FLOPs, in one invocation.

An experiment is one small YAML file (see ``benchmarks/experiments/``). Every method shares the data,
tokenizer, seed, batch, schedule and FLOPs budget: a method that fits its operator first trains for
fewer steps, so that fit + training costs what scratch's training costs. Results: ``results.json``,
``loss_vs_flops.png``, ``loss_vs_wall.png`` and ``table.md`` in the output directory.
"""

from __future__ import annotations

import copy
import json
import math
import resource
import time
from importlib import resources
from pathlib import Path

import torch

from . import __version__
from .arch import get_spec
from .config import GrowthPlan, TrainConfig
from .errors import LigoError

EXPERIMENT_KEYS = {"name", "description", "model_type", "data", "corpus", "corpus_bytes", "vocab_size", "seq_len",
                   "batch_size", "seed", "mixed_precision", "attn_implementation", "source", "target", "train", "fit",
                   "methods", "smoke", "unit_report"}
METHOD_KEYS = {"width", "depth", "per_layer", "split_noise", "fit", "label"}
FIXED_BASELINES = ("stack", "interleave", "net2net")


def load_experiment(path: str | Path, smoke: bool = False) -> dict:
    """Read an experiment file (or the name of an embedded one, such as 'demo')."""
    from .checkpoint import parse_mapping

    p = Path(path)
    if not p.exists():
        embedded = resources.files("ligo.experiments").joinpath(f"{path}.yaml")
        if not embedded.is_file():
            raise LigoError(f"experiment {path} not found; pass a YAML file such as "
                            "benchmarks/experiments/cpu-tiny.yaml")
        text, where = embedded.read_text(), f"ligo/experiments/{path}.yaml"
    else:
        text, where = p.read_text(), str(p)
    exp = parse_mapping(text, where, EXPERIMENT_KEYS)
    if smoke:
        exp = _merge(exp, exp.get("smoke") or {})
    for name, m in exp.get("methods", {}).items():
        if set(m or {}) - METHOD_KEYS:
            raise LigoError(f"{where}: method {name}: unknown key(s) {sorted(set(m) - METHOD_KEYS)}")
    if "scratch" not in exp.get("methods", {}):
        raise LigoError(f"{where}: methods must include 'scratch' (the reference every saving is measured against)")
    exp["_where"] = where
    return exp


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _train_cfg(exp: dict, section: dict, **extra) -> TrainConfig:
    base = {"seq_len": exp.get("seq_len", 128), "batch_size": exp.get("batch_size", 8), "seed": exp.get("seed", 0),
            "mixed_precision": exp.get("mixed_precision", "no"), "progress": extra.pop("progress", True)}
    return TrainConfig.from_dict({**base, **section, **extra}, where=exp["_where"])


def flops_to_reach(curve: list[dict], target: float) -> float | None:
    """Linear interpolation of the FLOPs at which a held-out curve first reaches ``target``."""
    prev = None
    for point in curve:
        if point["val_loss"] <= target:
            if prev is None:
                return point["flops"]
            f0, l0, f1, l1 = prev["flops"], prev["val_loss"], point["flops"], point["val_loss"]
            return f0 + (f1 - f0) * (l0 - target) / (l0 - l1) if l0 != l1 else f1
        prev = point
    return None


def peak_rss_mb(reset: bool = False) -> float:
    """This process's peak resident memory in MB since the last reset (Linux: VmHWM, resettable)."""
    try:
        status = Path("/proc/self/status").read_text()
        peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024
        if reset:
            Path("/proc/self/clear_refs").write_text("5")
        return peak
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_experiment(exp: dict, out: str | Path, data: str | None = None, progress: bool = True, log=print) -> dict:
    """Run every method of an experiment; write results.json, the plots and table.md into ``out``."""
    from .data import cached_tokenizer, pack, read_texts, stdlib_texts
    from .growth import Grower, build_config
    from .outputs import check_output
    from .pipelines import train

    spec = get_spec(exp["model_type"])
    out = check_output(out, overwrite=True)
    created = not out.exists()
    try:
        return _run(exp, out, spec, data, progress, log)
    except BaseException:
        if created and out.exists() and not any(out.rglob("results.json")) and not (out / "source").exists():
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise


def _run(exp: dict, out: Path, spec, data, progress: bool, log) -> dict:
    from .data import cached_tokenizer, pack, read_texts, stdlib_texts
    from .growth import Grower, build_config
    from .pipelines import train

    out.mkdir(parents=True, exist_ok=True)
    data = data if data is not None else exp.get("data")
    limit = int(exp.get("corpus_bytes", 4_000_000))
    texts = stdlib_texts(limit, exp.get("corpus", "stdlib")) if data is None else read_texts(data, limit)
    seq_len = int(exp.get("seq_len", 128))
    t0 = time.perf_counter()
    tok_dir = out / "tokenizer"
    tokenizer = cached_tokenizer(texts, int(exp.get("vocab_size", 2048)), tok_dir)
    blocks = pack(texts, tokenizer, seq_len, val_fraction=0.05)
    log(f"[{exp['name']}] corpus: {sum(map(len, texts)):,} characters, {blocks.train.numel():,} training tokens, "
        f"{blocks.val.numel():,} held-out; tokenizer {len(tokenizer)} tokens ({time.perf_counter() - t0:.1f}s)")
    common = {"vocab_size": len(tokenizer), "model_type": spec.model_type}
    attn = exp.get("attn_implementation")

    # 1. the source: a small model trained from scratch here (its cost is known: convention b)
    src_cfg = {**exp["source"]["config"], **common}
    src = train(None, None, out / "source", _train_cfg(exp, exp["source"]["train"], progress=progress),
                from_config=src_cfg, tokenizer=tok_dir, blocks=blocks, overwrite=True, attn_implementation=attn)
    source_flops = src.ledger["train_flops"]
    log(f"[{exp['name']}] source: {src.loop.steps} steps, held-out loss {src.loop.final_val:.4f}, "
        f"{source_flops:.3e} FLOPs")
    target_cfg = spec.target_config(dict(build_config(src_cfg).to_dict()), exp["target"])

    train_section = exp["train"]
    budget_steps = int(train_section["steps"])
    results: dict[str, dict] = {}
    for name, method in exp["methods"].items():
        method = method or {}
        t_method = time.perf_counter()
        peak_rss_mb(reset=True)
        run_dir = out / "runs" / name
        if name == "scratch":
            res = train(None, None, run_dir, _train_cfg(exp, train_section, progress=progress), from_config=target_cfg,
                        tokenizer=tok_dir, blocks=blocks, overwrite=True, attn_implementation=attn)
            fit_flops, fit_wall, fit_info = 0.0, 0.0, None
        else:
            plan = GrowthPlan.from_dict({k: method[k] for k in ("width", "depth", "per_layer", "split_noise")
                                         if k in method} | {"seed": exp.get("seed", 0)}, where=f"method {name}")
            grower = Grower(out / "source", target_cfg, plan)
            fit_flops = fit_wall = 0.0
            fit_info = None
            if method.get("fit"):
                # `fit: true` uses the experiment's fit section; a mapping overrides parts of it
                fit_section = {**exp.get("fit", {}), **(method["fit"] if isinstance(method["fit"], dict) else {})}
                # the fit is scored on the same held-out batches as training, so the curves join up
                fit_section["eval_batches"] = train_section.get("eval_batches", TrainConfig.eval_batches)
                fit_cfg = _train_cfg(exp, {"weight_decay": 0.0, **fit_section}, progress=progress)
                fit = grower.fit(None, fit_cfg, blocks=blocks)
                fit_flops, fit_wall = fit.flops, fit.wall
                fit_info = {"steps": fit.steps, "start_val": fit.evals[0]["val_loss"], "final_val": fit.final_val}
            grower.save(run_dir / "grown", overwrite=True)
            # equal total FLOPs: the fit's cost comes out of the training budget
            per_step = _step_flops(run_dir / "grown", spec, seq_len, exp)
            steps = budget_steps - math.ceil(fit_flops / per_step) if fit_flops else budget_steps
            if steps < 1:
                raise LigoError(f"method {name}: the operator fit costs more than the whole training budget; "
                                "use fewer fit steps or a larger train.steps")
            cfg = _train_cfg(exp, {**train_section, "steps": steps}, progress=progress)
            res = train(run_dir / "grown", None, run_dir / "trained", cfg, blocks=blocks, overwrite=True,
                        attn_implementation=attn)
        curve = [{"flops": e["flops"], "wall": e["wall"] + fit_wall, "val_loss": e["val_loss"], "step": e["step"]}
                 for e in res.loop.evals]
        if name != "scratch" and fit_flops:  # the curve starts where the fit started
            curve.insert(0, {"flops": 0.0, "wall": 0.0, "val_loss": fit_info["start_val"], "step": -fit_info["steps"]})
        results[name] = {"label": method.get("label", name), "width": method.get("width"),
                         "depth": method.get("depth"), "fit": fit_info, "fit_flops": fit_flops,
                         "train_steps": res.loop.steps, "total_flops": res.loop.flops, "curve": curve,
                         "start_val_loss": curve[0]["val_loss"], "final_val_loss": curve[-1]["val_loss"],
                         "wall_s": time.perf_counter() - t_method, "peak_rss_mb": peak_rss_mb(),
                         "peak_gpu_mb": (torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None}
        if exp.get("unit_report", True):  # is the grown width used? duplicated units per space, after training
            from .checkpoint import load_checkpoint
            from .diagnostics import unit_report

            ck = load_checkpoint(res.out)
            results[name]["units"] = unit_report(ck.state, ck.layout, ck.spec, ck.dims)
        log(f"[{exp['name']}] {name}: start {curve[0]['val_loss']:.4f} -> final {curve[-1]['val_loss']:.4f} "
            f"({res.loop.steps} train steps, fit {fit_flops:.2e} FLOPs, {results[name]['wall_s']:.0f}s)")
        del res  # free this method's model, optimizer and accelerator before the next one
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    summary = summarize(results, source_flops)
    report = {"experiment": {k: v for k, v in exp.items() if not k.startswith("_")}, "source_file": exp["_where"],
              "ligo_version": __version__, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "threads": torch.get_num_threads(), "source": {"flops": source_flops, "final_val_loss": src.loop.final_val,
                                                             "steps": src.loop.steps},
              "methods": results, "summary": summary}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "table.md").write_text(markdown_table(report))
    plot(report, out)
    return report


def _step_flops(model_dir: Path, spec, seq_len: int, exp: dict) -> float:
    from .checkpoint import read_config
    from .flops import step_flops
    from .growth import build_config, model_class

    config = read_config(model_dir)
    with torch.device("meta"):
        model = model_class(spec.objective).from_config(build_config(config))
    return step_flops(model, spec.dims(config), _train_cfg(exp, exp["train"]))


def summarize(results: dict, source_flops: float) -> dict:
    """Savings against scratch (both conventions) and against the best fixed growth method."""
    scratch = results["scratch"]
    target = scratch["final_val_loss"]
    scratch_flops = flops_to_reach(scratch["curve"], target)
    fixed = [n for n in results if n in FIXED_BASELINES or (results[n]["fit"] is None and n != "scratch")]
    best_fixed = min(fixed, key=lambda n: results[n]["final_val_loss"]) if fixed else None
    fixed_target = results[best_fixed]["final_val_loss"] if best_fixed else None
    fixed_flops = flops_to_reach(results[best_fixed]["curve"], fixed_target) if best_fixed else None
    rows = {}
    for name, r in results.items():
        f = flops_to_reach(r["curve"], target)
        g = flops_to_reach(r["curve"], fixed_target) if fixed_target is not None else None
        rows[name] = {
            "final_val_loss": r["final_val_loss"],
            "flops_to_scratch_final": f,
            "saving_source_free": None if f is None else 1 - f / scratch_flops,
            "saving_source_counted": None if f is None or name == "scratch" else 1 - (f + source_flops) / scratch_flops,
            "flops_to_best_fixed_final": g,
            "saving_vs_best_fixed": None if g is None or not fixed_flops else 1 - g / fixed_flops,
            "fit_share": r["fit_flops"] / r["total_flops"] if r["total_flops"] else 0.0,
            "wall_to_scratch_final": _wall_at(r["curve"], f),
        }
    return {"scratch_final_val_loss": target, "scratch_flops_to_final": scratch_flops, "best_fixed": best_fixed,
            "best_fixed_final_val_loss": fixed_target, "best_fixed_flops_to_final": fixed_flops, "rows": rows}


def _wall_at(curve: list[dict], flops: float | None) -> float | None:
    if flops is None:
        return None
    for a, b in zip(curve, curve[1:]):
        if a["flops"] <= flops <= b["flops"]:
            t = 0.0 if b["flops"] == a["flops"] else (flops - a["flops"]) / (b["flops"] - a["flops"])
            return a["wall"] + t * (b["wall"] - a["wall"])
    return curve[-1]["wall"] if flops >= curve[-1]["flops"] else curve[0]["wall"]


def _fmt(x, kind, missing="not reached"):
    if x is None:
        return missing
    return {"pct": f"{100 * x:.1f}%", "flops": f"{x:.3e}", "loss": f"{x:.4f}", "s": f"{x:.0f}s"}[kind]


def _dups(units: dict | None) -> str:
    """'dup/total' units over the grown spaces (residual, FFN, heads) after training."""
    if not units:
        return "—"
    spaces = [k for k in ("res", "ffn", "heads") if k in units]
    return f"{sum(units[k]['duplicates'] for k in spaces)}/{sum(units[k]['units'] for k in spaces)}"


def markdown_table(report: dict) -> str:
    s = report["summary"]
    lines = [f"Experiment `{report['experiment']['name']}` ({report['source_file']}), ligo {report['ligo_version']}, "
             f"torch {report['torch']}, {report['device']}, {report['date']}. Equal total FLOPs for every method "
             "(operator fit included). Scratch's final held-out loss: "
             f"{s['scratch_final_val_loss']:.4f}; best fixed method: {s['best_fixed']} "
             f"({_fmt(s['best_fixed_final_val_loss'], 'loss')}).",
             "",
             "| method | start loss | final loss | FLOPs to scratch's final | saving (source free) | "
             "saving (source counted) | FLOPs to best fixed's final | saving vs best fixed | fit share | "
             "wall to scratch's final | peak RSS | duplicated units |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in s["rows"].items():
        m = report["methods"][name]
        ref = "—" if name == "scratch" else "not reached"  # scratch is the reference, not a grown run
        lines.append(f"| {m['label']} | {m['start_val_loss']:.4f} | {r['final_val_loss']:.4f} | "
                     f"{_fmt(r['flops_to_scratch_final'], 'flops')} | {_fmt(r['saving_source_free'], 'pct')} | "
                     f"{_fmt(r['saving_source_counted'], 'pct', ref)} | "
                     f"{_fmt(r['flops_to_best_fixed_final'], 'flops')} | "
                     f"{_fmt(r.get('saving_vs_best_fixed'), 'pct')} | "
                     f"{100 * r['fit_share']:.1f}% | {_fmt(r['wall_to_scratch_final'], 's')} | "
                     f"{m.get('peak_rss_mb', 0):.0f} MB | {_dups(m.get('units'))} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for axis, fname, label in (("flops", "loss_vs_flops.png", "training FLOPs (operator fit included)"),
                               ("wall", "loss_vs_wall.png", "wall time (s)")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, r in report["methods"].items():
            xs = [p[axis] for p in r["curve"]]
            ys = [p["val_loss"] for p in r["curve"]]
            ax.plot(xs, ys, marker=".", lw=2 if name == "scratch" or r["fit"] else 1.2, label=r["label"])
        ax.axhline(report["summary"]["scratch_final_val_loss"], color="grey", ls=":", lw=1)
        ax.set_xlabel(label)
        ax.set_ylabel("held-out loss")
        ax.set_title(f"{report['experiment']['name']}: held-out loss vs {axis}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
