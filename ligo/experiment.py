"""Benchmark experiments as typed settings: a YAML file (``benchmarks/experiments/``) read into an
:class:`Experiment` and its :class:`Method` s, every key checked before any work.

Defaults are stated once: an experiment's training settings default to :class:`ligo.config.TrainConfig`'s,
its fit to :data:`ligo.config.FIT_DEFAULTS`, its plans to :class:`ligo.config.GrowthPlan`'s. The file's
own mapping is kept (``raw``): it is what ``results.json`` records and what ``--resume`` compares.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Literal, Optional

from .config import FIT_INHERITS, PLAN_KEYS, FitSpec, GrowthPlan, GrowthStage, TrainConfig
from .errors import LigoError
from .settings import setting, validate
from .tables import get_spec

STAGE_KEYS = {"at", "optimizer_state", "fit_steps", "fit_lr"}
SOURCE_DIGEST = "_source_digest"  # experiment.json: the digest of a pretrained source's files
REQUIRED = ("name", "model_type", "source", "target", "train", "methods")


@dataclass(frozen=True)
class Method:
    """One row of an experiment: scratch (the reference), a grown start (optionally fitted), or staged growth."""

    name: str
    label: str
    plan: dict  # the growth-plan keys the file gives (recorded in the results as given)
    fit: Optional[dict]  # the fit section (the experiment's, the method's mapping over it); None: no fit
    train: dict  # the method's own training settings over the grown-model rule
    stage: Optional[dict]  # staged growth: at (the budget's share spent small), optimizer_state, fit_steps, fit_lr
    target: Optional[dict] = None  # a target of its own (its budget: the experiment target's FLOPs), e.g. dense vs MoE
    lr_scale: float = 1.0  # a multiple of the LR the grown-model rule gives (an LR swept alike for every method)

    @property
    def role(self) -> str:
        """What the method's row is: scratch (the reference), staged growth, or a grown start."""
        return "scratch" if self.name == "scratch" else "staged" if self.stage else "grown"

    def growth_plan(self, seed: int) -> GrowthPlan:
        return GrowthPlan.from_dict({**self.plan, "seed": seed}, where=f"method {self.name}")

    def growth_stage(self, at: int, target: dict) -> GrowthStage:
        """The stage of a staged method, at optimizer step ``at``."""
        return GrowthStage.from_dict({"at": at, "target": target, **self.plan,
                                      **{k: v for k, v in self.stage.items() if k != "at"}}, where=f"method {self.name}")


@dataclass
class Experiment:
    """An experiment file, validated. Required: name, model_type, source (config, train), target, train, methods."""

    name: str
    model_type: str
    source: dict
    target: dict
    train: dict
    methods: dict  # name -> Method, in the file's order
    description: str = setting("", "what the experiment asks")
    data: Optional[str] = setting(None, "the corpus (default: the Python standard library's source)")
    corpus: str = setting("stdlib", "the embedded corpus when data is not given")
    corpus_bytes: int = setting(4_000_000, "characters of text read", low=1)
    vocab_size: int = setting(2048, "the BPE tokenizer trained on the corpus", low=2)
    seq_len: int = setting(TrainConfig.seq_len, "tokens per block", low=2)
    batch_size: int = setting(TrainConfig.batch_size, "blocks per step", low=1)
    seed: int = setting(TrainConfig.seed, "seed of every run (noise runs use noise_seeds)", low=0)
    mixed_precision: Optional[Literal["auto", "no", "bf16", "fp16"]] = setting(None, "as TrainConfig's (default: its own)")
    attn_implementation: Optional[str] = setting(None, "transformers' attention implementation")
    budgets: list = setting([1], "multipliers of train.steps, reported side by side")
    lr_sweep: list = setting([1], "multipliers of train.lr tried for scratch")
    noise_seeds: list = setting([], "seeds that repeat the first budget for scratch and the two best methods")
    fit: dict = setting({}, "the fit settings every fitted method starts from (share or steps, and TrainConfig keys)")
    grown: dict = setting({}, "the grown-model rule: lr_scale (of scratch's best LR) and warmup")
    eval: Optional[dict] = setting(None, "downstream tasks after training: tasks, limit, num_fewshot")
    unit_report: bool = setting(True, "report duplicated units of every trained model")
    smoke: dict = setting({}, "overrides for --smoke")
    where: str = ""  # the file it was read from
    raw: dict = field(default_factory=dict, repr=False)  # the file's mapping, as read

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "Experiment":
        if not isinstance(data, dict):
            raise LigoError(f"{where}: an experiment file must hold a mapping")
        for key in REQUIRED:
            if key not in data:
                raise LigoError(f"{where}: missing key {key!r}")
        get_spec(data["model_type"])
        methods = data["methods"]
        if not isinstance(methods, dict):
            raise LigoError(f"{where}: methods must be a mapping of method names to settings (e.g. 'scratch: {{}}'), "
                            f"got a {type(methods).__name__}")
        if "scratch" not in methods:
            raise LigoError(f"{where}: methods must include 'scratch' (the reference every saving is measured against)")
        unknown = set(data) - FILE_KEYS
        if unknown:
            raise LigoError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(FILE_KEYS)}")
        exp = cls(**{k: copy.deepcopy(v) for k, v in data.items() if k != "methods"}, methods={}, where=where,
                  raw=copy.deepcopy(data))
        validate(exp, where)
        exp.methods = {name: exp._method(name, m) for name, m in methods.items()}
        exp._check()
        return exp

    def record(self) -> dict:
        """What ``experiment.json`` holds: the file's mapping, and the digest of a pretrained source's files (a
        changed source is a changed setting)."""
        record = dict(self.raw)
        if self.source_path is not None:
            import hashlib

            from .rundir import file_digests

            digests = json.dumps(file_digests(self.source_path, skip=()), sort_keys=True)
            record[SOURCE_DIGEST] = hashlib.sha256(digests.encode()).hexdigest()
        return record

    def check_resume(self, before: dict, record: dict, where) -> set[str]:
        """Refuse to resume a run of another experiment (a changed setting or source) in ``where``; returns the
        methods changed since it was made (they run again; a new label alone does not)."""
        if SOURCE_DIGEST in before and before[SOURCE_DIGEST] != record.get(SOURCE_DIGEST):
            raise LigoError(f"--resume: the source checkpoint {self.source_path} changed since {where} was started "
                            "(its files differ), so the finished runs grew another model; restore it, or pass "
                            "--overwrite to start again")
        if _shared(before) != _shared(record):
            raise LigoError(f"--resume: {where} holds a run of a different experiment (a setting other than its "
                            "methods changed since); pass --overwrite to start it again, or another --out")

        def runs(method: dict | None) -> dict:
            return {k: v for k, v in (method or {}).items() if k != "label"}

        old = before.get("methods", {})
        return {n for n, m in self.raw["methods"].items() if n in old and runs(old[n]) != runs(m)}

    def changed(self, **raw_changes) -> "Experiment":
        """This experiment with some of its file's keys replaced (validated again)."""
        return Experiment.from_dict({**copy.deepcopy(self.raw), **raw_changes}, self.where)

    def only(self, names: list[str]) -> "Experiment":
        """Only the methods ``names`` (and scratch, the reference)."""
        unknown = [m for m in names if m not in self.methods]
        if unknown:
            raise LigoError(f"{self.where}: no method {', '.join(map(repr, unknown))}; its methods are "
                            f"{', '.join(self.methods)}")
        return self.changed(methods={k: v for k, v in self.raw["methods"].items() if k == "scratch" or k in names})

    # -- the settings of the runs ----------------------------------------------------------------
    @property
    def shared(self) -> dict:
        """The settings every run of the experiment shares, fits included (:data:`ligo.config.FIT_INHERITS`)."""
        values = {"seq_len": self.seq_len, "batch_size": self.batch_size, "seed": self.seed,
                  "mixed_precision": self.mixed_precision}
        return {k: values[k] for k in FIT_INHERITS if values[k] is not None}

    def train_config(self, section: dict, **extra) -> TrainConfig:
        """A TrainConfig: the experiment's shared settings, then ``section``, then ``extra``."""
        return TrainConfig.from_dict({**self.shared, **section, **extra}, where=self.where)

    def fit_spec(self, method: Method, **extra):
        """The method's fit: the experiment's shared settings, its fit section, the method's mapping, ``extra``;
        its length a share of the budget, or its steps (1 by default); scored on the same held-out batches as
        training, so the curves join up."""
        section = {k: v for k, v in (method.fit or {}).items() if k != "share"}
        section.setdefault("eval_batches", self.train.get("eval_batches", TrainConfig.eval_batches))
        section.setdefault("steps", 1)
        try:
            return FitSpec({**self.shared, **section, **extra}, (method.fit or {}).get("share"))
        except LigoError as exc:
            raise LigoError(f"{self.where}: method {method.name}: {exc}") from None

    @property
    def source_path(self) -> Path | None:
        """A pretrained source given as a local checkpoint directory (``source: {path: DIR}``), else None."""
        return local_path(self.source["path"]) if "path" in self.source else None

    @property
    def data_path(self) -> str | None:
        """The corpus the file names (``~`` and ``$VARS`` expanded), else None (the embedded corpus)."""
        return None if self.data is None else str(local_path(self.data))

    def configs(self, vocab_size: int | None = None, target: dict | None = None) -> tuple[dict, dict]:
        """The source's and the target's config dicts (the target read against the source's full config;
        ``target``: a method's own instead of the experiment's). A target with experts upcycles the source."""
        from .checkpoint import read_config
        from .hf import build_config
        from .moe import grown_config

        spec = get_spec(self.model_type)
        if self.source_path is not None:
            src = read_config(self.source_path)
        else:
            src = {**self.source["config"], "vocab_size": vocab_size or self.vocab_size, "model_type": spec.model_type}
        return src, grown_config(spec, dict(build_config(src).to_dict()), self.target if target is None else target)[2]

    # -- validation --------------------------------------------------------------------------------
    def _method(self, name: str, m) -> Method:
        where = f"{self.where}: method {name}"
        if m is None:
            m = {}
        if not isinstance(m, dict):
            raise LigoError(f"{where} must be a mapping of settings (or empty), got {m!r}")
        allowed = PLAN_KEYS | {"fit", "label", "train", "stage", "target", "lr_scale"}
        if set(m) - allowed:
            raise LigoError(f"{where}: unknown key(s) {sorted(set(m) - allowed)}; allowed: {sorted(allowed)}")
        plan = {k: m[k] for k in PLAN_KEYS if k in m}
        GrowthPlan.from_dict(plan, where=where)
        fit = m.get("fit")
        if fit is not None and not isinstance(fit, (bool, dict)):
            raise LigoError(f"{where}: fit must be true or a mapping of fit settings, got {fit!r}")
        fit = {**self.fit, **(fit if isinstance(fit, dict) else {})} if fit else None
        train = m.get("train") or {}
        if not isinstance(train, dict):
            raise LigoError(f"{where}: train must be a mapping of training settings, got {train!r}")
        stage = m.get("stage")
        if stage is not None:
            _check_stage(where, stage, m, plan)
        target = m.get("target")
        if target is not None and (not isinstance(target, dict) or stage is not None or name == "scratch"):
            raise LigoError(f"{where}: target must be a mapping of sizes, on a grown method (not scratch, not staged), "
                            f"got {target!r}")
        lr_scale = m.get("lr_scale", 1.0)
        if isinstance(lr_scale, bool) or not isinstance(lr_scale, (int, float)) or not lr_scale > 0 or \
                ("lr_scale" in m and ("lr" in train or name == "scratch")):
            raise LigoError(f"{where}: lr_scale must be a positive number (a multiple of the LR the grown-model rule "
                            f"gives), on a method other than scratch and without train.lr, got {lr_scale!r}")
        method = Method(name, str(m.get("label", name)), plan, fit, train, stage, target, float(lr_scale))
        if method.role != "scratch":
            self.train_config({**self.train, **train}, progress=False)
        if fit:
            self.fit_spec(method)
        if stage is not None:
            method.growth_stage(1, self.target)
        return method

    def _check(self) -> None:
        where = self.where
        if isinstance(self.source, dict) and "path" in self.source:
            _check_source_path(self)
        elif not isinstance(self.source, dict) or not isinstance(self.source.get("config"), dict):
            raise LigoError(f"{where}: source must hold config (the small model's config keys) and train, or path (a "
                            "pretrained checkpoint directory)")
        else:
            self.train_config(self.source.get("train", {}), progress=False)
        self.train_config(self.train, progress=False)
        for key in ("budgets", "lr_sweep", "noise_seeds"):
            values = getattr(self, key)
            type_ok = (lambda v: isinstance(v, int) and not isinstance(v, bool)) if key == "noise_seeds" else \
                (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
            if not isinstance(values, list) or not all(type_ok(v) and v > 0 for v in values) or \
                    (key != "noise_seeds" and not values):
                raise LigoError(f"{where}: {key} must be a list of positive numbers, got {values!r}")
        ev = self.eval
        if ev is not None and (not isinstance(ev, dict) or set(ev) - {"tasks", "limit", "num_fewshot"} or
                               not ev.get("tasks")):
            raise LigoError(f"{where}: eval must be a mapping with tasks (lm-eval names or task YAML files) and "
                            "optionally limit and num_fewshot")
        if set(self.grown) - {"lr_scale", "warmup"}:
            raise LigoError(f"{where}: grown: unknown key(s) {sorted(set(self.grown) - {'lr_scale', 'warmup'})}; "
                            "allowed: ['lr_scale', 'warmup']")
        from .hf import build_config
        from .maps import check_growth
        from .moe import grown_config

        src = dict(build_config(self.configs()[0]).to_dict())
        for name, target in [("target", self.target)] + [(f"method {m.name}: target", m.target)
                                                         for m in self.methods.values() if m.target is not None]:
            spec, src_read, config = grown_config(get_spec(self.model_type), src, target)
            check_growth(spec, spec.dims(src_read), spec.dims(config, where=f"{where}: {name}"))


def _shared(record: dict) -> str:
    """The settings every run of an experiment depends on: all but its methods and its words (and the source's
    digest, checked on its own; folders from before it was recorded have none; and a pretrained source's stated
    tokens, which no run reads: the planner's)."""
    shared = {k: v for k, v in record.items() if k not in ("_where", "methods", "description", SOURCE_DIGEST)}
    if isinstance(shared.get("source"), dict) and "path" in shared["source"]:
        shared["source"] = {k: v for k, v in shared["source"].items() if k != "tokens"}
    return json.dumps(shared, sort_keys=True)


def _check_source_path(exp: "Experiment") -> None:
    """A pretrained source: a checkpoint directory of the experiment's model_type, and no staged methods."""
    from .checkpoint import read_config

    where, path, tokens = exp.where, exp.source.get("path"), exp.source.get("tokens")
    if set(exp.source) - {"path", "tokens"} or not isinstance(path, str) or \
            not (local_path(path) / "config.json").is_file():
        raise LigoError(f"{where}: a pretrained source is path (a local checkpoint directory: config.json, safetensors "
                        f"weights, tokenizer) and optionally tokens (its pretraining tokens, where known), got "
                        f"{exp.source!r}")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, (int, float)) or not tokens > 0):
        raise LigoError(f"{where}: source tokens must be a positive number (the tokens the checkpoint was pretrained "
                        f"on, e.g. 2.0e12), got {tokens!r}")
    found = read_config(local_path(path)).get("model_type")
    if found != exp.model_type:
        raise LigoError(f"{where}: the source {path} is a {found} model but model_type says {exp.model_type}; make them "
                        "agree")
    if "vocab_size" in exp.raw:
        raise LigoError(f"{where}: vocab_size is the size of the tokenizer ligo trains for a source it trains; the "
                        f"pretrained source {path} brings its own tokenizer, so remove vocab_size")
    staged = [m.name for m in exp.methods.values() if m.role == "staged"]
    if staged:
        raise LigoError(f"{where}: staged methods ({', '.join(staged)}) train their small model inside the budget, "
                        "so they need a source trained here (source: config and train), not a checkpoint path")


def local_path(path: str) -> Path:
    """A path as an experiment file gives it, with ``~`` and environment variables expanded so that one file
    serves every machine; ``$LIGO_CACHE`` is ligo's cache folder (``~/.cache/ligo`` when the variable is unset),
    where benchmarks/real_source.py writes the real source and corpus."""
    import os

    from .outputs import cache_dir

    path = path.replace("${LIGO_CACHE}", "$LIGO_CACHE").replace("$LIGO_CACHE", str(cache_dir()))
    return Path(os.path.expandvars(os.path.expanduser(path)))


def _check_stage(where: str, stage, m: dict, plan: dict) -> None:
    if not isinstance(stage, dict) or set(stage) - STAGE_KEYS or not isinstance(stage.get("at"), (int, float)) \
            or isinstance(stage.get("at"), bool) or not 0 < stage["at"] < 1 or m.get("fit") or m.get("per_layer") \
            or m.get("width_lr") not in (None, "uniform", "auto") or "depth_lr_scale" in m:
        raise LigoError(f"{where}: stage must be a mapping with at (the budget's share spent on the small model, "
                        f"between 0 and 1) and optionally {sorted(STAGE_KEYS - {'at'})}; a staged method has no "
                        "separate fit (use stage.fit_steps) and takes only width, depth and split_noise")
    if plan.get("width") == "auto" or plan.get("depth") == "auto":
        raise LigoError(f"{where}: a staged method needs a concrete width and depth (auto is decided from a finished "
                        "source; a staged run grows mid-run): give width split/copy/random and depth "
                        "stack/interleave/identity")


def read_experiment(path: str | Path, smoke: bool = False) -> tuple[dict, str]:
    """The mapping of an experiment file (or of an embedded one, such as 'demo') and where it was read;
    with ``smoke``, its ``smoke`` section merged over it (an experiment without one is refused)."""
    from .settings import parse_mapping, read_text

    p = Path(path)
    if not p.exists():
        embedded = resources.files("ligo.experiments").joinpath(f"{path}.yaml")
        if not embedded.is_file():
            raise LigoError(f"experiment {path} not found; pass a YAML file such as benchmarks/experiments/cpu-tiny.yaml")
        text, where = embedded.read_text(), f"ligo/experiments/{path}.yaml"
    else:
        text, where = read_text(p, "experiment file"), str(p)
    data = parse_mapping(text, where, FILE_KEYS)
    if smoke:
        if not isinstance(data.get("smoke"), dict) or not data["smoke"]:
            raise LigoError(f"{where} has no smoke section, so --smoke would run the full-size experiment; add a "
                            "'smoke:' mapping of smaller settings (see benchmarks/experiments/cpu-tiny.yaml), or run "
                            "without --smoke")
        data = _merge(data, data["smoke"])
    return data, where


def load_experiment(path: str | Path, smoke: bool = False, methods: list[str] | None = None) -> Experiment:
    """Read and fully validate an experiment file; with ``methods``, only those (and scratch) are run."""
    exp = Experiment.from_dict(*read_experiment(path, smoke))
    return exp.only(methods) if methods else exp


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


FILE_KEYS = {f.name for f in fields(Experiment)} - {"where", "raw"}
