"""The records ligo keeps beside every model it makes, typed: the recipe (``ligo_recipe.json``: how the model
was made) and the FLOPs ledger it carries (what the model cost). One ``load`` and one ``save`` each, and one
policy for reading: a folder without a readable recipe holds a model from elsewhere, whose history ligo
cannot know (no recipe, no ledger).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

RECIPE_NAME = "ligo_recipe.json"
_RUN_FIELDS = ("flops_per_step", "steps", "wall_s", "final_val_loss", "throughput")


@dataclass
class Ledger:
    """What a model cost, in FLOPs: its source's training (None: unknown, a checkpoint from elsewhere), the
    operator fit, training before the last run, and the last run (with that run's own figures, when it was
    a training run of ligo's)."""

    source_flops: float | None = None
    fit_flops: float = 0.0
    previous_train_flops: float = 0.0
    train_flops: float | None = None
    flops_per_step: float | None = None
    steps: int | None = None
    wall_s: float | None = None
    final_val_loss: float | None = None
    throughput: dict | None = None

    @property
    def spent(self) -> float:
        """FLOPs spent on this model before a run that continues it (its source's training aside)."""
        return self.fit_flops + self.previous_train_flops + (self.train_flops or 0.0)

    def carried(self) -> "Ledger":
        """The ledger a run that continues this model starts from: everything spent is earlier work now."""
        return Ledger(self.source_flops, self.fit_flops, self.previous_train_flops + (self.train_flops or 0.0))

    def after_run(self, train_flops: float, **run) -> "Ledger":
        """This (carried) ledger with a training run added: its FLOPs and its figures (``_RUN_FIELDS``)."""
        return Ledger(self.source_flops, self.fit_flops, self.previous_train_flops, train_flops, **run)

    def to_dict(self) -> dict:
        """As recipes hold it: a training run's figures only where there was a run."""
        out = asdict(self)
        if self.steps is None:
            for key in _RUN_FIELDS:
                out.pop(key)
            if self.train_flops is None:
                out.pop("train_flops")
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Ledger":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Recipe:
    """A model's ``ligo_recipe.json``. A grown model's holds its plan, sizes, operator and fit; a trained
    model's (``"kind": "train"``) its training config, data, stages and ledger. ``fields`` is the record as
    written, its keys in their order."""

    fields: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "train" if self.fields.get("kind") == "train" else "grown"

    @classmethod
    def load(cls, folder: str | Path | None) -> "Recipe | None":
        """The recipe beside the model in ``folder``; None for a model from elsewhere (or an unreadable one)."""
        if folder is None:
            return None
        try:
            data = json.loads((Path(folder) / RECIPE_NAME).read_text())
        except (OSError, ValueError):
            return None
        return cls(data) if isinstance(data, dict) else None

    def save(self, folder: Path) -> None:
        (Path(folder) / RECIPE_NAME).write_text(json.dumps(self.fields, indent=2, sort_keys=False, default=str)
                                                + "\n")

    @property
    def ledger(self) -> Ledger | None:
        led = self.fields.get("ledger")
        return Ledger.from_dict(led) if isinstance(led, dict) else None

    @property
    def growth(self) -> dict | None:
        """A grown model's recipe (its plan, sizes and fit), for the card of a model trained from it."""
        return self.fields if "plan" in self.fields else None

    @property
    def fit(self) -> dict | None:
        return self.fields.get("fit") or None

    def carried_ledger(self) -> Ledger:
        """The ledger of a run that continues this model: a trained model's, carried; a grown model's fit."""
        if self.ledger is not None:
            return self.ledger.carried()
        return Ledger(self.fields.get("source_flops"), (self.fit or {}).get("flops", 0.0))

    def trained_tokens(self) -> int | None:
        """Tokens a trained model saw in its last run (None when unknown)."""
        from .config import TrainConfig
        from .errors import LigoError

        led = self.ledger
        try:
            return int(led.steps) * TrainConfig.from_dict(self.fields["config"]).tokens_per_step
        except (AttributeError, KeyError, TypeError, ValueError, LigoError):
            return None


def carried_ledger(folder: str | Path | None) -> Ledger:
    """What the model in ``folder`` already cost, for a run that continues it (nothing known: a fresh ledger)."""
    recipe = Recipe.load(folder)
    return recipe.carried_ledger() if recipe is not None else Ledger()
