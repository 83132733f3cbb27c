"""Benchmarks: growth methods against an LR-tuned scratch run and against each other, at equal total FLOPs.

An experiment is one small YAML file (``benchmarks/experiments/``). The protocol, for every experiment:

* **Scratch's LR is tuned**: the ``train`` section's LR times each ``lr_sweep`` multiplier; the best
  final held-out loss is the reference. Scratch runs are cached (``$LIGO_CACHE/bench-scratch``) by
  target, data, budget and settings, so experiments that share them reuse the sweep.
* **Budgets**: ``train.steps`` times each ``budgets`` multiplier (e.g. ``[1, 4]``), reported side by
  side. Within a budget every method spends the same total FLOPs, its operator fit included.
* **One rule for the grown models**: the same schedule family as scratch (the ``train`` section's),
  peak LR = the best scratch LR times ``grown.lr_scale``, warmup = ``grown.warmup`` (defaults: 1 and the
  ``train`` section's warmup); a method's own ``train`` mapping overrides it, stated in its row.
* **Noise floor**: for each ``noise_seeds`` entry, the first budget is repeated with that seed for
  scratch and the two best other methods; differences are reported against it.
* **The fit**: ``fit.share`` sets its length as a share of the budget's FLOPs (else ``fit.steps``); it
  keeps its best held-out point, and its cost comes out of the method's training budget.
* **Resume**: ``--resume`` keeps finished runs (``runs/<budget>/<method>/result.json``), resumes a
  killed one from its newest checkpoint (``train.save_every``) or restarts it. Methods may be added to
  the file (they run) or changed (they run again; a new label alone does not); a change to any other
  setting is refused.

Results: ``results.json``, ``table.md`` and loss-vs-FLOPs / loss-vs-wall plots in the output folder.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import resource
import shutil
import time
from dataclasses import fields
from importlib import resources
from pathlib import Path

import torch

from . import __version__
from .arch import get_spec
from .config import GrowthPlan, TrainConfig
from .errors import LigoError

PLAN_KEYS = {f.name for f in fields(GrowthPlan)} - {"seed"}
EXPERIMENT_KEYS = {"name", "description", "model_type", "data", "corpus", "corpus_bytes", "vocab_size", "seq_len",
                   "batch_size", "seed", "mixed_precision", "attn_implementation", "source", "target", "train", "fit",
                   "methods", "smoke", "unit_report", "budgets", "lr_sweep", "noise_seeds", "grown", "eval"}
METHOD_KEYS = PLAN_KEYS | {"fit", "label", "train", "stage"}
STAGE_KEYS = {"at", "optimizer_state", "fit_steps", "fit_lr"}
GROWN_KEYS = {"lr_scale", "warmup"}


def load_experiment(path: str | Path, smoke: bool = False, methods: list[str] | None = None) -> dict:
    """Read and fully validate an experiment file (or the name of an embedded one, such as 'demo');
    with ``methods``, only those (and scratch, the reference) are run."""
    from .checkpoint import parse_mapping

    p = Path(path)
    if not p.exists():
        embedded = resources.files("ligo.experiments").joinpath(f"{path}.yaml")
        if not embedded.is_file():
            raise LigoError(f"experiment {path} not found; pass a YAML file such as benchmarks/experiments/cpu-tiny.yaml")
        text, where = embedded.read_text(), f"ligo/experiments/{path}.yaml"
    else:
        text, where = p.read_text(), str(p)
    exp = parse_mapping(text, where, EXPERIMENT_KEYS)
    if smoke:
        exp = _merge(exp, exp.get("smoke") or {})
    exp["_where"] = where
    _validate(exp)
    if methods:
        unknown = [m for m in methods if m not in exp["methods"]]
        if unknown:
            raise LigoError(f"{where}: no method {', '.join(map(repr, unknown))}; its methods are "
                            f"{', '.join(exp['methods'])}")
        exp["methods"] = {k: v for k, v in exp["methods"].items() if k == "scratch" or k in methods}
    return exp


def _validate(exp: dict) -> None:
    """Every section checked before any work, so a typo fails at once and leaves nothing behind."""
    where = exp["_where"]
    for key in ("name", "model_type", "source", "target", "train", "methods"):
        if key not in exp:
            raise LigoError(f"{where}: missing key {key!r}")
    get_spec(exp["model_type"])
    methods = exp["methods"]
    if not isinstance(methods, dict) or "scratch" not in methods:
        raise LigoError(f"{where}: methods must include 'scratch' (the reference every saving is measured against)")
    for name, m in methods.items():
        m = m or {}
        if set(m) - METHOD_KEYS:
            raise LigoError(f"{where}: method {name}: unknown key(s) {sorted(set(m) - METHOD_KEYS)}; "
                            f"allowed: {sorted(METHOD_KEYS)}")
        GrowthPlan.from_dict({k: m[k] for k in PLAN_KEYS if k in m}, where=f"{where}: method {name}")
        stage = m.get("stage")
        if stage is not None and (not isinstance(stage, dict) or set(stage) - STAGE_KEYS or
                                  not 0 < stage.get("at", 0) < 1 or m.get("fit")):
            raise LigoError(f"{where}: method {name}: stage must be a mapping with at (the budget's share spent on the "
                            f"small model, between 0 and 1) and optionally {sorted(STAGE_KEYS - {'at'})}; a staged "
                            "method has no separate fit (use stage.fit_steps)")
        _train_cfg(exp, {**exp["train"], **m.get("train", {})}, progress=False)
        if m.get("fit"):
            _fit_cfg(exp, m, steps=1)
    _train_cfg(exp, exp["source"].get("train", {}), progress=False)
    for key, kind in (("budgets", float), ("lr_sweep", float), ("noise_seeds", int)):
        values = exp.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                                                    for v in values):
            raise LigoError(f"{where}: {key} must be a list of positive numbers, got {values!r}")
    ev = exp.get("eval")
    if ev is not None and (not isinstance(ev, dict) or set(ev) - {"tasks", "limit", "num_fewshot"} or not ev.get("tasks")):
        raise LigoError(f"{where}: eval must be a mapping with tasks (lm-eval names or task YAML files) and optionally "
                        "limit and num_fewshot")
    if set(exp.get("grown") or {}) - GROWN_KEYS:
        raise LigoError(f"{where}: grown: unknown key(s) {sorted(set(exp['grown']) - GROWN_KEYS)}; "
                        f"allowed: {sorted(GROWN_KEYS)}")


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _train_cfg(exp: dict, section: dict, **extra) -> TrainConfig:
    base = {"seq_len": exp.get("seq_len", 128), "batch_size": exp.get("batch_size", 8), "seed": exp.get("seed", 0),
            "mixed_precision": exp.get("mixed_precision", "no")}
    return TrainConfig.from_dict({**base, **section, **extra}, where=exp["_where"])


def _fit_cfg(exp: dict, method: dict, steps: int, **extra) -> TrainConfig:
    """The fit's settings: the experiment's fit section, the method's mapping over it (without ``share``)."""
    section = {**exp.get("fit", {}), **(method["fit"] if isinstance(method["fit"], dict) else {})}
    section.pop("share", None)
    # the fit is scored on the same held-out batches as training, so the curves join up
    section["eval_batches"] = exp["train"].get("eval_batches", TrainConfig.eval_batches)
    return _train_cfg(exp, {"weight_decay": 0.0, **section, "steps": steps}, **extra)


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


def run_experiment(exp: dict, out: str | Path, data: str | None = None, progress: bool = True, log=print,
                   resume: bool = False, overwrite: bool = False) -> dict:
    """Run (or finish) every method of an experiment; write results.json, table.md and the plots into ``out``."""
    from .outputs import RunOutput

    output = RunOutput(out, overwrite=overwrite, resume=resume, inputs=[data])
    saved = output.work / "experiment.json"
    spec_text = json.dumps({k: v for k, v in exp.items() if k != "_where"}, sort_keys=True)
    before = json.loads(saved.read_text()) if resume and saved.exists() else None
    if before is not None and _shared(before) != _shared(exp):
        raise LigoError(f"--resume: {output.final} holds a run of a different experiment (a setting other than its "
                        "methods changed since); pass --overwrite to start it again, or another --out")
    try:
        report = _Bench(exp, output.open(), data, progress, log, stale=_changed_methods(before, exp)).run(spec_text)
    except BaseException:
        if not any(output.work.rglob("result.json")) and not (output.work / "source" / "config.json").exists():
            output.discard()  # nothing worth resuming: leave nothing behind
        raise
    output.commit()
    return report


def _shared(exp: dict) -> str:
    """The settings every run of an experiment depends on: all but its methods and its words."""
    return json.dumps({k: v for k, v in exp.items() if k not in ("_where", "methods", "description")}, sort_keys=True)


def _changed_methods(before: dict | None, exp: dict) -> set[str]:
    """Methods whose runs in a resumed folder no longer match the experiment (their labels aside)."""
    if before is None:
        return set()

    def runs(method: dict | None) -> dict:
        return {k: v for k, v in (method or {}).items() if k != "label"}

    old = before.get("methods", {})
    return {name for name in exp["methods"] if name in old and runs(old[name]) != runs(exp["methods"][name])}


class _Bench:
    def __init__(self, exp: dict, out: Path, data, progress: bool, log, stale: set[str] = frozenset()):
        self.exp, self.out, self.progress, self.log = exp, out, progress, log
        self.stale = stale  # methods changed since the folder's runs were made: run again
        self.data = data if data is not None else exp.get("data")
        self.spec = get_spec(exp["model_type"])
        self.seq_len = int(exp.get("seq_len", 128))

    # -- the steps of an experiment ---------------------------------------------------------------
    def run(self, spec_text: str) -> dict:
        from .report import markdown, plot, summarize
        from .rundir import data_digest

        exp = self.exp
        (self.out / "experiment.json").write_text(spec_text)
        self._prepare_data()
        self.digest = data_digest(self.blocks.train, self.blocks.val)
        source = self._source()
        budgets, sweeps = [], {}
        for mult in exp.get("budgets") or [1]:
            label, steps = f"{mult:g}x", max(1, round(exp["train"]["steps"] * mult))
            sweep = [self._scratch(label, steps, exp["train"]["lr"] * f) for f in (exp.get("lr_sweep") or [1])]
            best = min(sweep, key=lambda r: r["final_val_loss"])
            sweeps[label] = [{"lr": r["lr"], "final_val_loss": r["final_val_loss"]} for r in sweep]
            methods = {"scratch": best}
            for name, method in exp["methods"].items():
                if name == "scratch":
                    continue
                run = self._staged if (method or {}).get("stage") else self._grown
                methods[name] = run(label, steps, name, method or {}, best["lr"], exp.get("seed", 0))
            budgets.append({"label": label, "multiplier": mult, "steps": steps, "scratch_lr": best["lr"],
                            "budget_flops": best["total_flops"], "methods": methods})
        noise = self._noise(budgets[0]) if exp.get("noise_seeds") else {}
        floor = max((v["delta"] for v in noise.values()), default=None)
        for b in budgets:
            b["summary"] = summarize(b["methods"], source["flops"], floor)
        report = {"experiment": {k: v for k, v in exp.items() if not k.startswith("_")}, "source_file": exp["_where"],
                  "ligo_version": __version__, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                  "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                  "threads": torch.get_num_threads(), "source": source, "scratch_sweep": sweeps, "budgets": budgets,
                  "noise": noise}
        (self.out / "results.json").write_text(json.dumps(report, indent=2))
        (self.out / "table.md").write_text(markdown(report))
        plot(report, self.out)
        return report

    def _prepare_data(self) -> None:
        from .data import cached_tokenizer, pack, read_texts, stdlib_texts

        exp, t0 = self.exp, time.perf_counter()
        limit = int(exp.get("corpus_bytes", 4_000_000))
        texts = stdlib_texts(limit, exp.get("corpus", "stdlib")) if self.data is None else read_texts(self.data, limit)
        self.tok_dir = self.out / "tokenizer"
        self.tokenizer = cached_tokenizer(texts, int(exp.get("vocab_size", 2048)), self.tok_dir)
        self.blocks = pack(texts, self.tokenizer, self.seq_len, val_fraction=0.05)
        self.log(f"[{exp['name']}] corpus: {sum(map(len, texts)):,} characters, {self.blocks.train.numel():,} training "
                 f"tokens, {self.blocks.val.numel():,} held-out; tokenizer {len(self.tokenizer)} tokens "
                 f"({time.perf_counter() - t0:.1f}s)")

    def _source(self) -> dict:
        """The small model, trained from scratch here (so its cost is known: convention b)."""
        from .growth import build_config
        from .pipelines import train

        exp, path = self.exp, self.out / "source"
        self.src_cfg = {**exp["source"]["config"], "vocab_size": len(self.tokenizer), "model_type": self.spec.model_type}
        self.target_cfg = self.spec.target_config(dict(build_config(self.src_cfg).to_dict()), exp["target"])
        if (path / "config.json").exists():  # finished in an earlier, interrupted run
            led = json.loads((path / "ligo_recipe.json").read_text())["ledger"]
            return {"flops": led["train_flops"], "final_val_loss": led["final_val_loss"], "steps": led["steps"]}
        res = train(None, None, path, self._cfg(exp["source"]["train"]), from_config=self.src_cfg,
                    tokenizer=self.tok_dir, blocks=self.blocks, overwrite=True, resume=self._resumable(path),
                    attn_implementation=exp.get("attn_implementation"))
        self.log(f"[{exp['name']}] source: {res.loop.steps} steps, held-out loss {res.loop.final_val:.4f}, "
                 f"{res.ledger['train_flops']:.3e} FLOPs")
        return {"flops": res.ledger["train_flops"], "final_val_loss": res.loop.final_val, "steps": res.loop.steps}

    def _cfg(self, section: dict, **extra) -> TrainConfig:
        return _train_cfg(self.exp, section, progress=self.progress, **extra)

    @staticmethod
    def _resumable(path: Path) -> bool:
        from .rundir import latest_checkpoint

        return latest_checkpoint(path) is not None

    def _scratch(self, label: str, steps: int, lr: float, seed: int | None = None) -> dict:
        """One scratch run, from this experiment's folder, the scratch cache, or trained now."""
        from .pipelines import train

        exp = self.exp
        cfg = self._cfg({**exp["train"], "steps": steps, "lr": lr, **({"seed": seed} if seed is not None else {})})
        tag = f"scratch-lr{lr:g}" + (f"-seed{seed}" if seed is not None else "")
        run_dir = self.out / "runs" / label / tag
        key = hashlib.sha256(json.dumps([self.target_cfg, self.digest, cfg.to_dict(), exp.get("attn_implementation"),
                                         exp.get("eval"), exp.get("unit_report", True),
                                         __version__], sort_keys=True, default=str).encode()).hexdigest()[:24]
        cached = _cache_dir() / key / "result.json"
        for found in (run_dir / "result.json", cached):
            if found.exists():
                result = json.loads(found.read_text())
                if found == cached:
                    self._keep(run_dir, result)  # a finished run in this folder is left as it is
                self.log(f"[{exp['name']}] {label} {tag}: final {result['final_val_loss']:.4f} (reused from {found})")
                return result
        t0 = time.perf_counter()
        res = train(None, None, run_dir / "trained", cfg, from_config=self.target_cfg, tokenizer=self.tok_dir,
                    blocks=self.blocks, overwrite=True, resume=self._resumable(run_dir / "trained"),
                    attn_implementation=exp.get("attn_implementation"))
        result = self._result(res, {"label": f"scratch (LR {lr:g})", "lr": lr, "seed": cfg.seed}, None, 0.0, 0.0, t0)
        self._keep(run_dir, result)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps(result))
        except OSError:
            pass  # a read-only cache: the result is still in this experiment's folder
        self.log(f"[{exp['name']}] {label} {tag}: start {result['start_val_loss']:.4f} -> final "
                 f"{result['final_val_loss']:.4f}")
        return result

    def _grown(self, label: str, steps: int, name: str, method: dict, scratch_lr: float, seed: int) -> dict:
        """A growth method: grow (and fit) the source, then train it for what is left of the budget."""
        from .checkpoint import read_config
        from .flops import step_flops
        from .growth import Grower, build_config, model_class
        from .pipelines import train

        exp = self.exp
        run_dir = self._run_dir(label, name, seed)
        if (finished := self._finished(run_dir, name)) is not None:
            return finished
        grown_rule = exp.get("grown") or {}
        section = {**exp["train"], "steps": steps, "lr": scratch_lr * grown_rule.get("lr_scale", 1.0),
                   "warmup": grown_rule.get("warmup", exp["train"].get("warmup", TrainConfig.warmup)), "seed": seed,
                   **method.get("train", {})}
        t0 = time.perf_counter()
        peak_rss_mb(reset=True)
        grown = run_dir / "grown"
        if (grown / "config.json").exists():  # grown (and fitted) before an interruption
            recipe = json.loads((grown / "ligo_recipe.json").read_text())
            fit_info = (recipe.get("fit") or {}).get("bench")
        else:
            plan = GrowthPlan.from_dict({**{k: method[k] for k in PLAN_KEYS if k in method}, "seed": seed})
            grower = Grower(self.out / "source", self.target_cfg, plan, tokenizer=self.tokenizer)
            fit_info = self._fit(grower, method, steps, seed) if method.get("fit") else None
            if fit_info:
                grower.fit_info["bench"] = fit_info
            grower.save(grown, overwrite=True)
        config = read_config(grown)
        with torch.device("meta"):
            meta = model_class(self.spec.objective).from_config(build_config(config))
        cfg = self._cfg(section)
        fit_flops = fit_info["flops"] if fit_info else 0.0
        train_steps = steps - math.ceil(fit_flops / step_flops(meta, self.spec.dims(config), cfg)) if fit_flops else steps
        if train_steps < 1:
            raise LigoError(f"method {name}: the operator fit costs more than the whole training budget; use a smaller "
                            "fit share or more train steps")
        res = train(grown, None, run_dir / "trained", cfg.replace(steps=train_steps), blocks=self.blocks,
                    tokenizer_obj=self.tokenizer, overwrite=True, resume=self._resumable(run_dir / "trained"),
                    attn_implementation=exp.get("attn_implementation"),
                    prior={"source_flops": None, "fit_flops": fit_flops, "previous_train_flops": 0.0})
        meta_info = {"label": method.get("label", name), "lr": cfg.lr, "warmup": cfg.warmup, "seed": seed,
                     **{k: method[k] for k in PLAN_KEYS if k in method}, "train_overrides": method.get("train") or None}
        result = self._result(res, meta_info, fit_info, fit_flops, fit_info["wall"] if fit_info else 0.0, t0)
        self._keep(run_dir, result)
        self.log(f"[{exp['name']}] {label} {name}: start {result['start_val_loss']:.4f} -> final "
                 f"{result['final_val_loss']:.4f} ({res.loop.steps} train steps, fit {fit_flops:.2e} FLOPs, "
                 f"{result['wall_s']:.0f}s)")
        return result

    def _staged(self, label: str, steps: int, name: str, method: dict, scratch_lr: float, seed: int) -> dict:
        """Staged growth inside the budget: the small model trained from scratch for ``stage.at`` of the
        budget's FLOPs, grown mid-run (weights and optimizer state), then trained as the target."""
        from .config import GrowthStage
        from .flops import step_flops
        from .growth import build_config, model_class
        from .pipelines import train

        exp = self.exp
        run_dir = self._run_dir(label, name, seed)
        if (finished := self._finished(run_dir, name)) is not None:
            return finished
        stage = method["stage"]
        grown_rule = exp.get("grown") or {}
        cfg = self._cfg({**exp["train"], "lr": scratch_lr * grown_rule.get("lr_scale", 1.0), "seed": seed,
                         **method.get("train", {})})
        with torch.device("meta"):
            small = model_class(self.spec.objective).from_config(build_config(self.src_cfg))
            big = model_class(self.spec.objective).from_config(build_config(self.target_cfg))
        f_small = step_flops(small, self.spec.dims(self.src_cfg), cfg)
        f_big = step_flops(big, self.spec.dims(self.target_cfg), cfg)
        budget = steps * f_big
        at = max(1, int(stage["at"] * budget / f_small))
        total = at + max(1, int((budget - at * f_small) / f_big))
        plan = {k: method[k] for k in ("width", "depth", "split_noise") if k in method}
        growth = GrowthStage.from_dict({"at": at, "target": exp["target"], **plan,
                                        **{k: stage[k] for k in ("optimizer_state", "fit_steps", "fit_lr") if k in stage}},
                                       where=f"method {name}")
        t0 = time.perf_counter()
        peak_rss_mb(reset=True)
        res = train(None, None, run_dir / "trained", cfg.replace(steps=total), from_config=self.src_cfg,
                    tokenizer=self.tok_dir, blocks=self.blocks, overwrite=True,
                    resume=self._resumable(run_dir / "trained"), attn_implementation=exp.get("attn_implementation"),
                    stages=[growth])
        meta_info = {"label": method.get("label", name), "lr": cfg.lr, "warmup": cfg.warmup, "seed": seed,
                     "staged": {"at_step": at, "share": stage["at"], "steps": total, **growth.to_dict()}, **plan}
        result = self._result(res, meta_info, None, 0.0, 0.0, t0)
        self._keep(run_dir, result)
        self.log(f"[{exp['name']}] {label} {name}: start {result['start_val_loss']:.4f} -> final "
                 f"{result['final_val_loss']:.4f} (grown at step {at} of {total}, {result['wall_s']:.0f}s)")
        return result

    def _fit(self, grower, method: dict, budget_steps: int, seed: int) -> dict:
        """Fit the operator: ``fit.share`` of the budget's FLOPs (or ``fit.steps``), keeping its best point."""
        exp = self.exp
        section = {**exp.get("fit", {}), **(method["fit"] if isinstance(method["fit"], dict) else {})}
        probe = _fit_cfg(exp, method, steps=1, seed=seed, progress=self.progress)
        steps = int(section.get("steps", 1))
        if "share" in section:
            steps = grower.fit_steps(section["share"], self._cfg({**exp["train"], "steps": budget_steps}), probe)
        cfg = probe.replace(steps=steps, warmup=min(probe.warmup, steps), eval_every=min(probe.eval_every or steps, steps))
        fit = grower.fit(cfg=cfg, blocks=self.blocks)
        info = grower.fit_info
        return {"steps": fit.steps, "lr": cfg.lr, "start_val": info["start_val_loss"], "final_val": info["final_val_loss"],
                "best_step": info["best_step"], "flops": fit.flops, "wall": fit.wall, "status": fit.status}

    def _result(self, res, meta: dict, fit: dict | None, fit_flops: float, fit_wall: float, t0: float) -> dict:
        curve = [{"flops": e["flops"], "wall": e["wall"] + fit_wall, "val_loss": e["val_loss"], "step": e["step"]}
                 for e in res.loop.evals]
        if fit:  # the curve starts where the fit started
            curve.insert(0, {"flops": 0.0, "wall": 0.0, "val_loss": fit["start_val"], "step": -fit["steps"]})
        result = {**meta, "fit": fit, "fit_flops": fit_flops, "train_steps": res.loop.steps,
                  "total_flops": res.loop.flops, "curve": curve, "start_val_loss": curve[0]["val_loss"],
                  "final_val_loss": curve[-1]["val_loss"], "wall_s": time.perf_counter() - t0,
                  "throughput": res.loop.throughput, "peak_rss_mb": peak_rss_mb(),
                  "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None}
        ev = self.exp.get("eval")
        if ev:  # downstream zero/few-shot scores of the trained model (lm-evaluation-harness)
            from .downstream import evaluate

            tasks = [str((Path(self.exp["_where"]).parent / t)) if str(t).endswith((".yaml", ".yml")) else t
                     for t in ev["tasks"]]
            result["downstream"] = evaluate(res.out, tasks, limit=ev.get("limit"),
                                            num_fewshot=ev.get("num_fewshot"))["tasks"]
        if self.exp.get("unit_report", True):  # is the grown width used? duplicated units per space, after training
            from .checkpoint import load_checkpoint
            from .diagnostics import unit_report

            ck = load_checkpoint(res.out)
            result["units"] = unit_report(ck.state, ck.layout, ck.spec, ck.dims)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        return result

    def _run_dir(self, label: str, name: str, seed: int) -> Path:
        return self.out / "runs" / label / (name if seed == self.exp.get("seed", 0) else f"{name}-seed{seed}")

    def _finished(self, run_dir: Path, name: str) -> dict | None:
        """A method's finished run in this folder; a run of a since-changed method is removed (done again)."""
        if name in self.stale and run_dir.exists():
            self.log(f"[{self.exp['name']}] {name} changed since {run_dir} was made: running it again")
            shutil.rmtree(run_dir)
        if (run_dir / "result.json").exists():
            result = json.loads((run_dir / "result.json").read_text())
            return {**result, "label": (self.exp["methods"].get(name) or {}).get("label", name)}
        return None

    @staticmethod
    def _keep(run_dir: Path, result: dict) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / "result.json.tmp"
        tmp.write_text(json.dumps(result))
        tmp.replace(run_dir / "result.json")

    def _noise(self, budget: dict) -> dict:
        """The first budget again, with other seeds, for scratch and the two best other methods."""
        ranked = sorted((n for n in budget["methods"] if n != "scratch"),
                        key=lambda n: budget["methods"][n]["final_val_loss"])[:2]
        out = {}
        for seed in self.exp["noise_seeds"]:
            for name in ["scratch", *ranked]:
                if name == "scratch":
                    again = self._scratch(budget["label"], budget["steps"], budget["scratch_lr"], seed=seed)
                else:
                    again = self._grown(budget["label"], budget["steps"], name, self.exp["methods"][name] or {},
                                        budget["scratch_lr"], seed)
                first = budget["methods"][name]["final_val_loss"]
                entry = out.setdefault(name, {"seeds": [first], "delta": 0.0})
                entry["seeds"].append(again["final_val_loss"])
                entry["delta"] = max(entry["delta"], abs(again["final_val_loss"] - first))
        return out


def _cache_dir() -> Path:
    import os

    return Path(os.environ.get("LIGO_CACHE", Path.home() / ".cache" / "ligo")) / "bench-scratch"
