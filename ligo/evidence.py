"""The planner's evidence: what ``ligo bench`` results record for it, read back as typed points.

Every results.json of ``ligo bench`` records what the planner needs (``evidence``, written by :func:`evidence_record`):
the parameters of the source, of the target and of every method's model, the source's own pretraining tokens where
known, each run's training tokens, the noise floor (FLOPs are in each run's record). Files written before it are read
through the same function from their experiment record (or migrated once: ``benchmarks/migrate_results.py``). Each
method has a *role*: ``scratch`` (the target from scratch, the best LR of its sweep), ``grow`` (the target grown from
the source), ``continue`` (a model of the source's own size: the source trained on) or ``staged`` (grown inside the
run, another question; left out). Methods that differ only in their LR are one *family*, whose loss at a budget is its
best LR's, as scratch's is. Files of the same experiment (the same source, target, data and settings, other budgets or
methods) are read as one (:func:`gather`). :mod:`ligo.planner` fits and answers from it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import LigoError

ROLES = ("scratch", "grow", "continue", "staged")
NOT_KEYS = ("name", "description", "budgets", "methods", "noise_seeds", "lr_sweep", "smoke", "eval", "unit_report")


def evidence_record(raw: dict, source_config: dict, budgets: list[dict], source: dict,
                    noise_floor: float | None) -> dict:
    """What the planner needs from one ``ligo bench`` run, from its experiment's mapping (``raw``), the source's
    config (with the tokenizer's vocabulary), its budgets (each method's ``train_steps``), its source record (``steps``
    when the bench trained it) and its noise floor. Counts parameters on the meta device (no memory, no weights)."""
    from .config import TrainConfig
    from .hf import build_config, meta_model
    from .moe import grown_config
    from .tables import get_spec

    spec = get_spec(raw["model_type"])
    full = dict(build_config(source_config).to_dict())
    counted: dict[str, int] = {}

    def params(config: dict) -> int:
        key = json.dumps(config, sort_keys=True, default=str)
        if key not in counted:
            counted[key] = sum(p.numel() for p in meta_model(spec.objective, config).parameters())
        return counted[key]

    def step_tokens(*sections: dict) -> int:
        merged = {"batch_size": raw.get("batch_size", TrainConfig.batch_size),
                  "seq_len": raw.get("seq_len", TrainConfig.seq_len), "grad_accum": 1}
        for s in sections:
            merged.update({k: s[k] for k in ("batch_size", "seq_len", "grad_accum") if k in (s or {})})
        return merged["batch_size"] * merged["seq_len"] * merged["grad_accum"]

    n_source, n_target = params(source_config), params(grown_config(spec, full, raw["target"])[2])
    methods = {}
    for name, m in raw["methods"].items():
        m = m or {}
        n = n_target if m.get("target") is None else params(grown_config(spec, full, m["target"])[2])
        role = "scratch" if name == "scratch" else "staged" if m.get("stage") else \
            "continue" if m.get("target") is not None and n == n_source else "grow"
        methods[name] = {"role": role, "params": n, "tokens_per_step": step_tokens(raw.get("train"), m.get("train"))}
    src = raw["source"]
    if source.get("steps"):  # trained by the bench: its tokens are known
        tokens = source["steps"] * step_tokens((src.get("train") or {}))
        tokens_from = f"trained here: {source['steps']} steps of {step_tokens(src.get('train') or {})} tokens"
    else:
        tokens = src.get("tokens")
        tokens_from = "the experiment file (source.tokens)" if tokens else None
    return {"format": 1, "source": {"params": n_source, "tokens": tokens, "tokens_from": tokens_from},
            "target": {"params": n_target}, "methods": methods,
            "tokens": {b["label"]: {name: r["train_steps"] * methods[name]["tokens_per_step"]
                                    for name, r in b["methods"].items()} for b in budgets},
            "noise_floor": noise_floor}


def read_results(path: str | Path) -> dict:
    """A results.json of ligo bench with finite losses, or one clear error."""
    try:
        report = json.loads(Path(path).read_text(), parse_constant=lambda c: float("nan"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        why = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
        raise LigoError(f"cannot read benchmark results {path} ({why}); pass results.json files of ligo bench") from None
    if not isinstance(report, dict) or "budgets" not in report or "experiment" not in report:
        raise LigoError(f"{path} is not a results.json of ligo bench (no budgets): pass the results of an experiment "
                        "(ligo bench), not of another benchmark")
    losses = [p["val_loss"] for b in report["budgets"] for m in b["methods"].values() for p in m.get("curve", [])]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in losses):
        raise LigoError(f"{path} holds a loss that is not a finite number (NaN or inf): a run diverged; plan from "
                        "results whose runs all finished")
    report["_path"] = str(path)
    return report


def evidence_of(report: dict) -> dict:
    """The report's evidence record; for a file written before there was one, derived from its experiment record
    (its source's config: the record's, or the checkpoint on this machine)."""
    if "evidence" in report:
        return report["evidence"]
    raw, where = report["experiment"], report.get("_path", "the results")
    if "config" in raw["source"]:
        src = {**raw["source"]["config"], "vocab_size": raw.get("vocab_size", 2048), "model_type": raw["model_type"]}
    else:
        from .checkpoint import read_config
        from .experiment import local_path

        path = local_path(raw["source"]["path"])
        if not (path / "config.json").is_file():
            raise LigoError(f"{where} was written before results recorded their evidence, and its source "
                            f"{raw['source']['path']} is not on this machine to count its parameters: add the record "
                            "with benchmarks/migrate_results.py --source-config, or rerun the benchmark")
        src = read_config(path)
    floor = report["budgets"][0].get("summary", {}).get("noise_floor")
    return evidence_record(raw, src, report["budgets"], report["source"], floor)


# -- families of methods and their points ------------------------------------------------------------------------
@dataclass
class Point:
    label: str  # the budget
    X: float  # the budget: scratch's training tokens per target parameter (equal FLOPs for every method)
    x: float  # this run's training tokens per target parameter
    loss: float  # its final held-out loss
    method: str  # the method (of the family, the best LR) that ran it


@dataclass
class Family:
    name: str
    role: str
    label: str
    params: int
    members: list[str]
    points: list[Point] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """This family's tokens per the budget's (about N_target / N_source for the source trained on)."""
        return sum(p.x / p.X for p in self.points) / len(self.points)


@dataclass
class Evidence:
    name: str
    files: list[str]
    source_params: int
    source_tokens: Optional[float]
    target_params: int
    noise_floor: Optional[float]
    tokens_per_step: int
    families: dict[str, Family]
    budgets: dict[str, float]  # label -> X, shortest first

    @property
    def growth_factor(self) -> float:
        return self.target_params / self.source_params

    @property
    def strength(self) -> Optional[float]:
        """The source's pretraining tokens per parameter."""
        return None if self.source_tokens is None else self.source_tokens / self.source_params


def _family_key(method: dict, settings: dict) -> str:
    """A method's model (role and parameters: a target may be spelt two ways) and its settings but its LR (label,
    lr_scale, train.lr): methods that differ only in their LR are one family."""
    s = {k: v for k, v in (settings or {}).items() if k not in ("label", "lr_scale", "target")}
    train = {k: v for k, v in (s.pop("train", None) or {}).items() if k != "lr"}
    return json.dumps([method["role"], method["params"], {**s, **({"train": train} if train else {})}], sort_keys=True)


def _setting_key(raw: dict) -> str:
    """What makes two results files one experiment: everything but its budgets, methods and words."""
    shared = {k: v for k, v in raw.items() if k not in NOT_KEYS}
    shared["source"] = {k: v for k, v in shared["source"].items() if k != "tokens"}
    return json.dumps(shared, sort_keys=True, default=str)


def gather(reports: list[dict]) -> list[Evidence]:
    """The reports as evidence: files of the same experiment settings joined (budgets and methods pooled)."""
    groups: dict[str, list[dict]] = {}
    for r in reports:
        groups.setdefault(_setting_key(r["experiment"]), []).append(r)
    out = []
    for group in groups.values():
        records = [evidence_of(r) for r in group]
        ev0 = records[0]
        n_t = ev0["target"]["params"]
        floors = [e["noise_floor"] for e in records if e.get("noise_floor") is not None]
        families: dict[str, Family] = {}
        budgets: dict[str, float] = {}
        for r, ev in zip(group, records):
            for b in r["budgets"]:
                X = ev["tokens"][b["label"]]["scratch"] / n_t
                label = next((lab for lab, x in budgets.items() if abs(math.log(x / X)) < 1e-6), b["label"])
                budgets[label] = X
                for name, run in b["methods"].items():
                    m = ev["methods"][name]
                    key = _family_key(m, r["experiment"]["methods"].get(name))
                    fam = families.setdefault(key, Family(name, m["role"], run.get("label", name), m["params"], []))
                    if name not in fam.members:
                        fam.members.append(name)
                    point = Point(label, X, ev["tokens"][b["label"]][name] / n_t, run["final_val_loss"], name)
                    old = next((p for p in fam.points if p.label == label), None)
                    if old is None:
                        fam.points.append(point)
                    elif point.loss < old.loss:
                        fam.points[fam.points.index(old)] = point
        for fam in families.values():
            fam.points.sort(key=lambda p: p.X)
        ordered = sorted(families.values(), key=lambda f: (ROLES.index(f.role), list(families.values()).index(f)))
        out.append(Evidence(
            name=" + ".join(dict.fromkeys(r["experiment"]["name"] for r in group)),
            files=[r.get("_path", "") for r in group], source_params=ev0["source"]["params"],
            source_tokens=ev0["source"]["tokens"], target_params=n_t, noise_floor=max(floors) if floors else None,
            tokens_per_step=min(m["tokens_per_step"] for e in records for m in e["methods"].values()),
            families={f.name: f for f in ordered}, budgets=dict(sorted(budgets.items(), key=lambda kv: kv[1]))))
    return out
