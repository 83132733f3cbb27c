"""The records ligo keeps beside every model it makes, typed: a grown model's recipe (:class:`GrowthRecord`, with its
operator fit and start check), a trained model's (:class:`TrainingRecord`), and the FLOPs ledger both carry
(:class:`Ledger`). Each is built once, where the work happens, written as ``ligo_recipe.json`` by the one writer
(:mod:`ligo.writer`) and read back once by :func:`load_recipe`.

Records are settings dataclasses (:mod:`ligo.settings`): every field typed and checked when built. A recipe of
another ligo version reads too: keys this version does not know are left aside, keys it lacks take their
defaults. A folder without a readable recipe holds a model from elsewhere, whose history ligo cannot know.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar, Literal, Optional

from . import __version__
from .errors import LigoError
from .settings import Settings, setting

RECIPE_NAME = "ligo_recipe.json"


class Record(Settings):
    """A record ligo writes beside a model: typed and checked (:class:`ligo.settings.Settings`), written as JSON by
    :meth:`to_dict`, read back by :meth:`read` from what any ligo version wrote."""

    NESTED: ClassVar[dict[str, type]] = {}  # field -> the record type its mapping is read as

    @classmethod
    def read(cls, data: dict):
        """A record from its JSON mapping: unknown keys (another version's) left aside, missing keys at their
        defaults, nested records read as theirs; a wrong type is a :class:`LigoError`."""
        if not isinstance(data, dict):
            raise LigoError(f"{cls.WHERE} must be a mapping")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in cls.migrate(dict(data)).items() if k in known}
        for name, record in cls.NESTED.items():
            if isinstance(values.get(name), dict):
                values[name] = record.read(values[name])
        return cls.from_dict(values)

    @classmethod
    def migrate(cls, data: dict) -> dict:
        """What an earlier ligo wrote, as this version says it (nothing to change by default)."""
        return data

    def to_dict(self) -> dict:
        return {f.name: (v.to_dict() if isinstance(v := getattr(self, f.name), Record) else v) for f in fields(self)}

    def save(self, folder: str | Path) -> None:
        (Path(folder) / RECIPE_NAME).write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")


@dataclass
class Ledger(Record):
    """What a model cost, in FLOPs: its source's training (None: unknown, a checkpoint from elsewhere), the
    operator fit, training before the last run, and the last run (with that run's own figures, when it was
    a training run of ligo's)."""

    WHERE = "FLOPs ledger"
    _RUN = ("flops_per_step", "steps", "wall_s", "final_val_loss", "throughput")  # a training run's own figures

    source_flops: Optional[float] = setting(None, "what the source cost (None: unknown)")
    fit_flops: float = setting(0.0, "the operator fit")
    previous_train_flops: float = setting(0.0, "training of this model before its last run")
    train_flops: Optional[float] = setting(None, "its last training run")
    flops_per_step: Optional[float] = setting(None, "the last run's FLOPs per optimizer step")
    steps: Optional[int] = setting(None, "the last run's steps")
    wall_s: Optional[float] = setting(None, "the last run's wall time")
    final_val_loss: Optional[float] = setting(None, "the last run's final held-out loss")
    throughput: Optional[dict] = setting(None, "the last run's throughput figures")

    @property
    def spent(self) -> float:
        """FLOPs spent on this model before a run that continues it (its source's training aside)."""
        return self.fit_flops + self.previous_train_flops + (self.train_flops or 0.0)

    def carried(self) -> "Ledger":
        """The ledger a run that continues this model starts from: everything spent is earlier work now."""
        return Ledger(self.source_flops, self.fit_flops, self.previous_train_flops + (self.train_flops or 0.0))

    def after_run(self, train_flops: float, **run) -> "Ledger":
        """This (carried) ledger with a training run added: its FLOPs and its figures."""
        return Ledger(self.source_flops, self.fit_flops, self.previous_train_flops, train_flops, **run)

    def to_dict(self) -> dict:
        """As recipes hold it: a training run's figures only where there was a run."""
        out = asdict(self)
        if self.steps is None:
            for key in self._RUN:
                out.pop(key)
            if self.train_flops is None:
                out.pop("train_flops")
        return out


@dataclass
class FitRecord(Record):
    """The operator fit, as a grown model's recipe records it."""

    WHERE = "fit record"

    config: dict = setting({}, "its TrainConfig")
    data: Optional[str] = setting(None, "what it was fitted on (None: the default corpus)")
    steps: int = setting(0, "the steps it ran")
    status: str = setting("", "how it ended")
    flops: float = setting(0.0, "its FLOPs, the building of the weights included")
    flops_per_step: float = setting(0.0, "a step's FLOPs")
    build_flops: float = setting(0.0, "building the weights from the maps, once")
    start_val_loss: float = setting(0.0, "the held-out loss of the operator's start")
    best_step: Optional[int] = setting(None, "the step whose maps were kept (the best held-out loss)")
    final_val_loss: float = setting(0.0, "the held-out loss of the maps kept")
    wall_s: float = setting(0.0, "its wall time")
    loop_wall_s: float = setting(0.0, "the training loop's share of it")


@dataclass
class StartCheck(Record):
    """The grown model's start loss beside its source's, on held-out blocks of the user's data."""

    WHERE = "start check"

    tokens: int = setting(0, "held-out tokens")
    source_loss: float = setting(0.0, "the source's loss")
    grown_loss: float = setting(0.0, "the grown model's loss")
    gap: float = setting(0.0, "grown minus source")


@dataclass
class GrowthRecord(Record):
    """A grown model's ``ligo_recipe.json``: what it was grown from, with which plan, into which sizes; its fit and
    start check; and, for a grown training run, the run's step, optimizer state and ledger."""

    WHERE = "growth recipe"
    NESTED = {"fit": FitRecord, "start_check": StartCheck, "ledger": Ledger}

    ligo_version: str = setting(__version__, "the ligo that grew it")
    source: Optional[str] = setting(None, "the source's name (its Hub id, or its folder's name)")
    model_type: str = setting("", "the model_type grown")
    upcycled_from: Optional[str] = setting(None, "the dense model_type a mixture of experts was upcycled from")
    objective: str = setting("causal-lm", "the pretraining objective")
    has_head: bool = setting(True, "the model has its LM head")
    table: Optional[str] = setting(None, "the architecture table that grew it")
    source_dims: dict = setting({}, "the source's sizes")
    target_dims: dict = setting({}, "the grown sizes")
    plan: dict = setting({}, "the growth plan, resolved")
    source_tokens: Optional[int] = setting(None, "tokens the source was trained on, where ligo trained it")
    source_flops: Optional[float] = setting(None, "what the source cost, where ligo made it")
    lossless: bool = setting(False, "the plan keeps the source's function")
    not_lossless_because: list[str] = setting([], "why it does not, one reason each")
    operator_parameters: int = setting(0, "the operator's parameters")
    fit: Optional[FitRecord] = setting(None, "the operator fit (None: not fitted)")
    start_check: Optional[StartCheck] = setting(None, "the start loss beside the source's (with --data)")
    new_layers: list[int] = setting([], "the layers growth added (what --freeze trains)")
    depth_fit: dict = setting({}, "a depth init fitted on the source's weights: each module's coefficients")
    pretrained: bool = setting(True, "the source is a pretrained checkpoint (the LR after growth follows it)")
    vision_language: Optional[str] = setting(None, "the vision-language model_type around the language model grown")
    run: Optional[str] = setting(None, "a grown training run: the run's name")
    step: Optional[int] = setting(None, "a grown training run: the step grown")
    optimizer_state: Optional[str] = setting(None, "a grown training run: grow or reset")
    ledger: Optional[Ledger] = setting(None, "a grown training run: what it cost so far")

    @classmethod
    def migrate(cls, data: dict) -> dict:
        # before ligo 0.3 a grown recipe did not say whether its source was pretrained: it was when ligo had not
        # trained it (no source_tokens)
        data.setdefault("pretrained", data.get("source_tokens") is None)
        return data

    def carried_ledger(self) -> Ledger:
        """The ledger of a run that continues this model: a grown run's, carried; else the fit's cost."""
        if self.ledger is not None:
            return self.ledger.carried()
        return Ledger(self.source_flops, self.fit.flops if self.fit else 0.0)


@dataclass
class TrainingRecord(Record):
    """A trained model's ``ligo_recipe.json``: what it trained, on what, with which settings, and its ledger."""

    WHERE = "training recipe"
    NESTED = {"ledger": Ledger}

    ligo_version: str = setting(__version__, "the ligo that trained it")
    kind: Literal["train"] = setting("train", "what the recipe records (a training run)")
    objective: str = setting("causal-lm", "the pretraining objective")
    model_type: str = setting("", "the model_type trained")
    model: Optional[str] = setting(None, "the model trained on (its name), None from scratch")
    from_config: Optional[str] = setting(None, "trained from scratch from this config")
    data: Optional[str] = setting(None, "the data's name")
    data_config: dict = setting({}, "the data settings")
    config: dict = setting({}, "the TrainConfig")
    stages: list = setting([], "growth stages in the middle of the run")
    ledger: Ledger = setting(Ledger(), "what the model cost")
    pretrained: bool = setting(False, "a pretrained checkpoint was trained (the LR default followed it)")
    lr_rule: str = setting("given", "how the peak LR was chosen")

    def carried_ledger(self) -> Ledger:
        return self.ledger.carried()

    def trained_tokens(self) -> int | None:
        """Tokens the model saw in its last run (None when unknown)."""
        from .config import TrainConfig

        try:
            return int(self.ledger.steps) * TrainConfig.from_dict(self.config).tokens_per_step
        except (TypeError, ValueError, LigoError):
            return None


def load_recipe(folder: str | Path | None) -> GrowthRecord | TrainingRecord | None:
    """The record beside the model in ``folder``; None for a model from elsewhere (no recipe, or a file that is no
    JSON mapping). A recipe ligo would have written but whose fields were edited into the wrong types is refused in
    one line: what is read from it (the layers to train alone, the FLOPs spent) would be wrong."""
    if folder is None:
        return None
    path = Path(folder) / RECIPE_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        return (TrainingRecord if data.get("kind") == "train" else GrowthRecord).read(data)
    except LigoError as exc:
        raise LigoError(f"{path} is no recipe ligo wrote ({exc}); the recipe was edited or belongs to another tool: "
                        "grow or train the model again, or remove the file to treat the model as one from elsewhere"
                        ) from None


def carried_ledger(folder: str | Path | None) -> Ledger:
    """What the model in ``folder`` already cost, for a run that continues it (nothing known: a fresh ledger)."""
    record = load_recipe(folder)
    return record.carried_ledger() if record is not None else Ledger()
