"""Downstream zero/few-shot evaluation of a local model through lm-evaluation-harness.

Tasks are lm-eval task names (the user's installed or cached ones) or paths to local task YAML files
(their folder is added to lm-eval's task search path). lm-eval is an optional extra:
``pip install 'ligo[eval]'``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .errors import LigoError


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise LigoError("ligo eval needs lm-evaluation-harness, which is not installed; pip install 'ligo[eval]' "
                        "(or pip install 'lm-eval[hf]')") from None
    for name in ("lm-eval", "lm_eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:  # lm-eval asks git for its own commit; outside a git checkout git prints an error line
        import lm_eval.evaluator as evaluator

        evaluator.get_git_commit_hash = lambda: None
    except (ImportError, AttributeError):
        pass
    return lm_eval, TaskManager


def _tasks(tasks: list[str]) -> tuple[list[str], list[str]]:
    """(task names, folders to search) from names and local task YAML paths."""
    from .settings import read_yaml

    names, folders = [], []
    for t in tasks:
        p = Path(t)
        if p.suffix in (".yaml", ".yml"):
            spec = read_yaml(p, "task file", "pass a task YAML file or an lm-eval task name")
            if not isinstance(spec, dict) or not isinstance(spec.get("task"), str):
                raise LigoError(f"task file {p} has no 'task' name; see lm-eval's task guide")
            names.append(spec["task"])
            folders.append(str(p.resolve().parent))
        else:
            names.append(t)
    return names, folders


def evaluate(model: str | Path, tasks: list[str], *, limit: int | float | None = None, batch_size: int = 8,
             device: str | None = None, num_fewshot: int | None = None) -> dict:
    """lm-eval's metrics for each task: ``{"tasks": {task: {metric: value}}, ...}``."""
    from .checkpoint import describe_checkpoint

    if not tasks:
        raise LigoError("give at least one task: --tasks NAME or --tasks path/to/task.yaml")
    ck = describe_checkpoint(model)  # a local checkpoint of a known architecture, or one clear error
    if ck.spec.objective != "causal-lm":
        raise LigoError(f"{model} is a {ck.spec.model_type} masked LM; lm-eval's tasks score causal LMs")
    lm_eval, TaskManager = _lm_eval()
    names, folders = _tasks(tasks)
    manager = TaskManager(include_path=folders or None)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise LigoError(f"unknown task(s) {', '.join(unknown)}; give installed lm-eval task names or local task YAML "
                        "files")
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(model), "dtype": "float32",
                                                          "trust_remote_code": False}, tasks=names,
                                  task_manager=manager, limit=limit, batch_size=batch_size, device=device,
                                  num_fewshot=num_fewshot)
    results = {task: {k.split(",")[0]: v for k, v in metrics.items() if isinstance(v, (int, float))
                      and not k.startswith("sample_len") and "stderr" not in k}
               for task, metrics in out["results"].items()}
    return {"model": str(model), "tasks": results, "limit": limit, "num_fewshot": num_fewshot,
            "lm_eval": getattr(lm_eval, "__version__", None)}
