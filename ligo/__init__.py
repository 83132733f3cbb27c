"""ligo: grow a small pretrained transformer into a larger one with a learned linear growth operator.

The package face is lazy: names are imported on first use, so ``import ligo`` (and ``ligo --help``)
does not pay for torch and transformers.

>>> from ligo import Grower, GrowthPlan, TrainConfig, Start, grow, train, grow_train
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

# public name -> module that defines it
_API = {
    "LigoError": "errors", "Preempted": "errors",
    "GrowthPlan": "config", "TrainConfig": "config", "DataConfig": "config", "GrowthStage": "config",
    "get_spec": "tables", "register_architecture": "tables", "supported_types": "tables",
    "GrowthOperator": "operator",
    "Grower": "growth",
    "grow": "pipelines", "train": "training", "grow_train": "pipelines", "Start": "training", "FitSpec": "config",
    "Experiment": "experiment", "load_experiment": "experiment", "run_experiment": "bench",
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ligo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
