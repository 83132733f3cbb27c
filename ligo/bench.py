"""Benchmarks: growth methods against an LR-tuned scratch run and against each other, at equal total FLOPs.

An experiment is one small YAML file (``benchmarks/experiments/``), read by :mod:`ligo.experiment`.
Every grown method runs the one grow -> fit -> train path of :func:`ligo.pipelines.grow_and_train`.
The protocol, for every experiment:

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
* **Preemption**: SIGTERM or Ctrl-C checkpoints the run in progress and stops the experiment (exit 143);
  the output folder is removed only when it holds no checkpoint and no finished run.
* **Resume**: ``--resume`` keeps finished runs (``runs/<budget>/<method>/result.json``), resumes a
  killed one from its newest checkpoint (``train.save_every``) or restarts it. Methods may be added to
  the file (they run) or changed (they run again; a new label alone does not); a change to any other
  setting is refused.

Results: ``results.json``, ``table.md`` and loss-vs-FLOPs / loss-vs-wall plots in the output folder.
"""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import time
from pathlib import Path

import torch

from . import __version__
from .tables import get_spec
from .config import TrainConfig
from .experiment import Experiment, Method, load_experiment  # noqa: F401  (load_experiment: the API's entry)
from .records import TrainingRecord, load_recipe


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


def run_experiment(exp: Experiment, out: str | Path, data: str | None = None, progress: bool = True, log=print,
                   resume: bool = False, overwrite: bool = False) -> dict:
    """Run (or finish) every method of an experiment; write results.json, table.md and the plots into ``out``.
    SIGTERM or Ctrl-C during a run raises :class:`ligo.errors.Preempted` with the run checkpointed."""
    from .outputs import RunOutput

    # every input the experiment reads: none may be the output or inside it (--overwrite would delete it)
    output = RunOutput(out, overwrite=overwrite, resume=resume,
                       inputs=[data, exp.data_path, exp.source_path, Path(exp.where) if Path(exp.where).exists() else None])
    saved = output.work / "experiment.json"
    record = exp.record()
    before = json.loads(saved.read_text()) if resume and saved.exists() else None
    stale = exp.check_resume(before, record, output.final) if before is not None else set()
    try:
        report = _Bench(exp, output.open(), data, progress, log, stale=stale).run(json.dumps(record, sort_keys=True))
    except BaseException:
        if not output.resumable():
            output.discard()  # nothing worth resuming: leave nothing behind
        raise
    finally:
        output.release()
    output.commit()
    return report


class _Bench:
    def __init__(self, exp: Experiment, out: Path, data, progress: bool, log, stale: set[str] = frozenset()):
        self.exp, self.out, self.progress, self.log = exp, out, progress, log
        self.stale = stale  # methods changed since the folder's runs were made: run again
        self.data = data if data is not None else exp.data_path
        self.spec = get_spec(exp.model_type)
        self.source_ck = None  # the trained source, read once for every grown method

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
        for mult in exp.budgets:
            label, steps = f"{mult:g}x", max(1, round(exp.train["steps"] * mult))
            sweep = [self._scratch(label, steps, exp.train["lr"] * f) for f in exp.lr_sweep]
            best = min(sweep, key=lambda r: r["final_val_loss"])
            sweeps[label] = [{"lr": r["lr"], "final_val_loss": r["final_val_loss"]} for r in sweep]
            methods = {"scratch": best}
            for method in exp.methods.values():
                if method.role != "scratch":
                    methods[method.name] = self._method(label, steps, method, best["lr"], exp.seed)
            budgets.append({"label": label, "multiplier": mult, "steps": steps, "scratch_lr": best["lr"],
                            "budget_flops": best["total_flops"], "methods": methods})
        noise = self._noise(budgets[0]) if exp.noise_seeds else {}
        floor = max((v["delta"] for v in noise.values()), default=None)
        for b in budgets:
            b["summary"] = summarize(b["methods"], source["flops"], floor)
        report = {"experiment": exp.raw, "source_file": exp.where, "ligo_version": __version__,
                  "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                  "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                  "threads": torch.get_num_threads(), "source": source, "scratch_sweep": sweeps, "budgets": budgets,
                  "noise": noise}
        # what ligo plan reads, so that a results file answers with no model on disk: the parameters of every model,
        # the source's pretraining tokens where known, each run's tokens, the noise floor (ligo.planner)
        from .evidence import evidence_record

        report["evidence"] = evidence_record(exp.raw, self.src_cfg, budgets, source, floor)
        (self.out / "results.json").write_text(json.dumps(report, indent=2))
        (self.out / "table.md").write_text(markdown(report))
        plot(report, self.out)
        return report

    def _prepare_data(self) -> None:
        from .data import cached_tokenizer, pack, read_texts, stdlib_texts

        exp, t0 = self.exp, time.perf_counter()
        texts = stdlib_texts(exp.corpus_bytes, exp.corpus) if self.data is None else read_texts(self.data, exp.corpus_bytes)
        if exp.source_path is not None:  # a pretrained source brings its own tokenizer
            from .checkpoint import check_tokenizer_fits, load_tokenizer

            self.tokenizer = load_tokenizer(exp.source_path)
            check_tokenizer_fits(self.tokenizer, self.spec.dims(exp.configs()[0]).vocab, exp.source_path)
        else:
            self.tokenizer = cached_tokenizer(texts, exp.vocab_size, self.out / "tokenizer")
        self.blocks = pack(texts, self.tokenizer, exp.seq_len)
        self.src_cfg, self.target_cfg = exp.configs(len(self.tokenizer))
        self.log(f"[{exp.name}] corpus: {sum(map(len, texts)):,} characters, {self.blocks.train.numel():,} training "
                 f"tokens, {self.blocks.val.numel():,} held-out; tokenizer {len(self.tokenizer)} tokens "
                 f"({time.perf_counter() - t0:.1f}s)")

    def _start(self, **more):
        from .training import Start

        return Start(tokenizer=self.tokenizer, blocks=self.blocks, attn_implementation=self.exp.attn_implementation,
                     **more)

    def _source(self) -> dict:
        """The small model: trained here (its cost known: convention b), or pretrained (source: {path}), measured."""
        from .growth import held_out_loss
        from .training import train

        exp, path = self.exp, self.out / "source"
        if exp.source_path is not None:  # pretrained elsewhere: its training cost is unknown, its loss measured here
            n = exp.train.get("eval_batches", TrainConfig.eval_batches) * exp.batch_size
            loss = held_out_loss(exp.source_path, self.blocks.val[:n], self.spec.objective, self.tokenizer,
                                 exp.batch_size)
            self.log(f"[{exp.name}] source: {exp.source_path} (pretrained), held-out loss {loss:.4f}")
            return {"flops": None, "final_val_loss": loss, "steps": None, "path": str(exp.source_path)}
        record = load_recipe(path) if (path / "config.json").exists() else None
        if isinstance(record, TrainingRecord):  # finished in an earlier, interrupted run
            led = record.ledger
            return {"flops": led.train_flops, "final_val_loss": led.final_val_loss, "steps": led.steps}
        res = train(None, None, path, exp.train_config(exp.source.get("train", {}), progress=self.progress),
                    self._start(from_config=self.src_cfg), overwrite=True, resume=self._resumable(path))
        self.log(f"[{exp.name}] source: {res.loop.steps} steps, held-out loss {res.loop.final_val:.4f}, "
                 f"{res.ledger.train_flops:.3e} FLOPs")
        return {"flops": res.ledger.train_flops, "final_val_loss": res.loop.final_val, "steps": res.loop.steps}

    @staticmethod
    def _resumable(path: Path) -> bool:
        from .rundir import latest_checkpoint

        return latest_checkpoint(path) is not None

    def _scratch(self, label: str, steps: int, lr: float, seed: int | None = None) -> dict:
        """One scratch run, from this experiment's folder, the scratch cache, or trained now."""
        from .training import train

        exp = self.exp
        cfg = exp.train_config({**exp.train, "steps": steps, "lr": lr, **({"seed": seed} if seed is not None else {})},
                               progress=self.progress)
        tag = f"scratch-lr{lr:g}" + (f"-seed{seed}" if seed is not None else "")
        run_dir = self.out / "runs" / label / tag
        key = hashlib.sha256(json.dumps([self.target_cfg, self.digest, cfg.to_dict(), exp.attn_implementation,
                                         exp.eval, exp.unit_report, __version__],
                                        sort_keys=True, default=str).encode()).hexdigest()[:24]
        cached = _cache_dir() / key / "result.json"
        for found in (run_dir / "result.json", cached):
            if found.exists():
                result = json.loads(found.read_text())
                if found == cached:
                    self._keep(run_dir, result)  # a finished run in this folder is left as it is
                self.log(f"[{exp.name}] {label} {tag}: final {result['final_val_loss']:.4f} (reused from {found})")
                return result
        t0 = time.perf_counter()
        res = train(None, None, run_dir / "trained", cfg, self._start(from_config=self.target_cfg), overwrite=True,
                    resume=self._resumable(run_dir / "trained"))
        result = self._result(res, {"label": f"scratch (LR {lr:g})", "lr": lr, "seed": cfg.seed}, None, t0)
        self._keep(run_dir, result)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps(result))
        except OSError:
            pass  # a read-only cache: the result is still in this experiment's folder
        self.log(f"[{exp.name}] {label} {tag}: start {result['start_val_loss']:.4f} -> final "
                 f"{result['final_val_loss']:.4f}")
        return result

    def _method(self, label: str, steps: int, method: Method, scratch_lr: float, seed: int) -> dict:
        """A method's run: staged growth inside the budget, or the grow -> fit -> train path."""
        run = self._staged if method.role == "staged" else self._grown
        return run(label, steps, method, scratch_lr, seed)

    def _grown_config(self, method: Method, scratch_lr: float, seed: int, **more):
        """The grown-model rule: scratch's schedule at its best LR (a pretrained source's: ligo's default after
        growth, ``LR_PRETRAINED``: scratch's says nothing of a trained start) times ``grown.lr_scale`` and the
        method's ``lr_scale``, ``grown.warmup``."""
        from .config import LR_PRETRAINED

        exp, rule = self.exp, self.exp.grown
        base = LR_PRETRAINED if exp.source_path is not None else scratch_lr
        return exp.train_config({**exp.train, "lr": base * rule.get("lr_scale", 1.0) * method.lr_scale,
                                 "warmup": rule.get("warmup", exp.train.get("warmup", TrainConfig.warmup)),
                                 "seed": seed, **more, **method.train}, progress=self.progress)

    def _grown(self, label: str, steps: int, method: Method, scratch_lr: float, seed: int) -> dict:
        """A growth method: the one grow -> fit -> train path, the fit's FLOPs out of the budget."""
        from .checkpoint import load_checkpoint
        from .pipelines import grow_and_train

        exp, name = self.exp, method.name
        run_dir = self._run_dir(label, name, seed)
        if (finished := self._finished(run_dir, name)) is not None:
            return finished
        target_cfg = self.target_cfg
        if method.target is not None:  # its own shape, at the experiment target's FLOPs
            target_cfg = exp.configs(len(self.tokenizer), method.target)[1]
            steps = self._equal_flops(steps, target_cfg, self._grown_config(method, scratch_lr, seed, steps=steps))
        cfg = self._grown_config(method, scratch_lr, seed, steps=steps)
        fit = exp.fit_spec(method, seed=seed, progress=self.progress) if method.fit else None
        t0 = time.perf_counter()
        peak_rss_mb(reset=True)
        source = exp.source_path or self.out / "source"
        if self.source_ck is None and not (run_dir / "grown" / "config.json").exists():
            self.source_ck = load_checkpoint(source)
        res, growth = grow_and_train(self.source_ck or source, target_cfg, run_dir,
                                     method.growth_plan(seed), cfg, fit, start=self._start(), resume=True)
        fit_info = _fit_summary(growth.fit)
        meta = {"label": method.label, "lr": cfg.lr, "warmup": cfg.warmup, "seed": seed, **method.plan,
                **({"target": method.target} if method.target is not None else {}),
                **({"lr_scale": method.lr_scale} if method.lr_scale != 1 else {}),
                "train_overrides": method.train or None}
        result = self._result(res, meta, fit_info, t0)
        self._keep(run_dir, result)
        self.log(f"[{exp.name}] {label} {name}: start {result['start_val_loss']:.4f} -> final "
                 f"{result['final_val_loss']:.4f} ({res.loop.steps} train steps, fit {result['fit_flops']:.2e} "
                 f"FLOPs, {result['wall_s']:.0f}s)")
        return result

    def _equal_flops(self, steps: int, config: dict, cfg: TrainConfig) -> int:
        """The steps of a model of ``config`` that cost what ``steps`` of the experiment's target cost (FLOPs of
        the parameters a token uses: an MoE's active experts), rounded down: never more FLOPs than the budget."""
        from .flops import step_flops
        from .hf import meta_model

        def per_step(c: dict) -> float:
            return step_flops(meta_model(self.spec.objective, c), get_spec(c["model_type"]).dims(c), cfg)

        return max(1, int(steps * per_step(self.target_cfg) / per_step(config) + 1e-9))

    def _staged(self, label: str, steps: int, method: Method, scratch_lr: float, seed: int) -> dict:
        """Staged growth inside the budget: the small model trained from scratch for ``stage.at`` of the
        budget's FLOPs, grown mid-run (weights and optimizer state), then trained as the target."""
        from .flops import step_flops
        from .hf import meta_model
        from .training import train

        exp, name = self.exp, method.name
        run_dir = self._run_dir(label, name, seed)
        if (finished := self._finished(run_dir, name)) is not None:
            return finished
        cfg = self._grown_config(method, scratch_lr, seed)
        objective = self.spec.objective
        f_small = step_flops(meta_model(objective, self.src_cfg), self.spec.dims(self.src_cfg), cfg)
        f_big = step_flops(meta_model(objective, self.target_cfg), self.spec.dims(self.target_cfg), cfg)
        budget = steps * f_big
        at = max(1, int(method.stage["at"] * budget / f_small))
        total = at + max(1, int((budget - at * f_small) / f_big))
        growth = method.growth_stage(at, exp.target)
        t0 = time.perf_counter()
        peak_rss_mb(reset=True)
        res = train(None, None, run_dir / "trained", cfg.replace(steps=total),
                    self._start(from_config=self.src_cfg, stages=[growth]), overwrite=True,
                    resume=self._resumable(run_dir / "trained"))
        meta = {"label": method.label, "lr": cfg.lr, "warmup": cfg.warmup, "seed": seed,
                "staged": {"at_step": at, "share": method.stage["at"], "steps": total, **growth.to_dict()},
                **method.plan}
        result = self._result(res, meta, None, t0)
        self._keep(run_dir, result)
        self.log(f"[{exp.name}] {label} {name}: start {result['start_val_loss']:.4f} -> final "
                 f"{result['final_val_loss']:.4f} (grown at step {at} of {total}, {result['wall_s']:.0f}s)")
        return result

    def _result(self, res, meta: dict, fit: dict | None, t0: float) -> dict:
        fit_flops, fit_wall = (fit["flops"], fit["wall"]) if fit else (0.0, 0.0)
        curve = [{"flops": e["flops"], "wall": e["wall"] + fit_wall, "val_loss": e["val_loss"], "step": e["step"]}
                 for e in res.loop.evals]
        if fit:  # the curve starts where the fit started
            curve.insert(0, {"flops": 0.0, "wall": 0.0, "val_loss": fit["start_val"], "step": -fit["steps"]})
        result = {**meta, "fit": fit, "fit_flops": fit_flops, "train_steps": res.loop.steps,
                  "total_flops": res.loop.flops, "curve": curve, "start_val_loss": curve[0]["val_loss"],
                  "final_val_loss": curve[-1]["val_loss"], "wall_s": time.perf_counter() - t0,
                  "throughput": res.loop.throughput, "peak_rss_mb": peak_rss_mb(),
                  "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None}
        ev = self.exp.eval
        if ev:  # downstream zero/few-shot scores of the trained model (lm-evaluation-harness)
            from .downstream import evaluate

            tasks = [str((Path(self.exp.where).parent / t)) if str(t).endswith((".yaml", ".yml")) else t
                     for t in ev["tasks"]]
            result["downstream"] = evaluate(res.out, tasks, limit=ev.get("limit"),
                                            num_fewshot=ev.get("num_fewshot"))["tasks"]
        if self.exp.unit_report:  # is the grown width used? duplicated units per space, after training
            from .checkpoint import load_checkpoint
            from .diagnostics import unit_report

            ck = load_checkpoint(res.out)
            result["units"] = unit_report(ck.state, ck.layout, ck.spec, ck.dims)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        return result

    def _run_dir(self, label: str, name: str, seed: int) -> Path:
        return self.out / "runs" / label / (name if seed == self.exp.seed else f"{name}-seed{seed}")

    def _finished(self, run_dir: Path, name: str) -> dict | None:
        """A method's finished run in this folder; a run of a since-changed method is removed (done again)."""
        if name in self.stale and run_dir.exists():
            self.log(f"[{self.exp.name}] {name} changed since {run_dir} was made: running it again")
            shutil.rmtree(run_dir)
        if (run_dir / "result.json").exists():
            result = json.loads((run_dir / "result.json").read_text())
            return {**result, "label": self.exp.methods[name].label}
        return None

    @staticmethod
    def _keep(run_dir: Path, result: dict) -> None:
        """A run's result, written atomically; its checkpoints (there for a resume: the optimizer state is
        twice the model) go, the grown and the trained model stay."""
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / "result.json.tmp"
        tmp.write_text(json.dumps(result))
        tmp.replace(run_dir / "result.json")
        shutil.rmtree(run_dir / "trained" / "checkpoints", ignore_errors=True)

    def _noise(self, budget: dict) -> dict:
        """The first budget again, with other seeds, for scratch and the two best other methods."""
        ranked = sorted((n for n in budget["methods"] if n != "scratch"),
                        key=lambda n: budget["methods"][n]["final_val_loss"])[:2]
        out = {}
        for seed in self.exp.noise_seeds:
            for name in ["scratch", *ranked]:
                if name == "scratch":
                    again = self._scratch(budget["label"], budget["steps"], budget["scratch_lr"], seed=seed)
                else:
                    again = self._method(budget["label"], budget["steps"], self.exp.methods[name],
                                         budget["scratch_lr"], seed)
                first = budget["methods"][name]["final_val_loss"]
                entry = out.setdefault(name, {"seeds": [first], "delta": 0.0})
                entry["seeds"].append(again["final_val_loss"])
                entry["delta"] = max(entry["delta"], abs(again["final_val_loss"] - first))
        return out


def _fit_summary(fit) -> dict | None:
    """A fit as the results record it, from the grown model's record (a :class:`ligo.records.FitRecord`)."""
    if fit is None:
        return None
    return {"steps": fit.steps, "lr": fit.config["lr"], "start_val": fit.start_val_loss,
            "final_val": fit.final_val_loss, "best_step": fit.best_step, "flops": fit.flops,
            "wall": fit.loop_wall_s or fit.wall_s, "status": fit.status}


def _cache_dir() -> Path:
    from .outputs import cache_dir

    return cache_dir() / "bench-scratch"
