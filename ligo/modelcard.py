"""A model card (README.md with YAML front matter) beside every grown and trained model."""

from __future__ import annotations

import re
from pathlib import Path

from . import __version__


def model_name(path: str | Path | None, config: dict | None = None) -> str | None:
    """What a card and a recipe call a model: its Hub id when it has one (a Hub cache folder, or a config
    whose ``_name_or_path`` is an id), else its folder's name, never the machine's directories."""
    if path is None:
        return None
    p = Path(path)
    for part in p.resolve().parts:
        if part.startswith("models--"):  # the Hub cache: models--org--name/snapshots/<revision>
            return part[len("models--"):].replace("--", "/", 1)
    name = (config or {}).get("_name_or_path")
    if isinstance(name, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not Path(name).exists():
        return name
    return p.resolve().name or str(p)


def data_name(data) -> str | None:
    """What a card and a recipe call the training data: a dataset's name, or a local file's or folder's own
    name, never the machine's directories (``data``: a path, a dataset name, or a DataConfig)."""
    data = getattr(data, "data", data)
    if data is None:
        return None
    p = Path(str(data))
    return p.resolve().name or str(data) if p.exists() else str(data)


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return "—" if x is None else str(x)


def _dims_table(src: dict | None, tgt: dict) -> list[str]:
    rows = ["| | " + ("source | " if src else "") + "this model |", "|---|" + ("---|" if src else "") + "---|"]
    for name in ("layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "vocab"):
        rows.append(f"| {name} | " + (f"{src[name]} | " if src else "") + f"{tgt[name]} |")
    return rows


def card_text(recipe: dict, stage: str, growth: dict | None = None) -> str:
    """The card for a ``stage`` ("grown" or "trained") model from its recipe (and, for a trained model, the
    growth recipe of the model it was trained from, if any)."""
    from huggingface_hub import ModelCardData

    growth = recipe if stage == "grown" else growth
    model_type = recipe.get("model_type") or (growth or {}).get("model_type")
    objective = recipe.get("objective")
    base = recipe.get("source") if stage == "grown" else recipe.get("model")
    tag = "text-generation" if objective != "masked-lm" else "fill-mask" if recipe.get("has_head", True) else \
        "feature-extraction"
    data = ModelCardData(base_model=str(base) if base else None, library_name="transformers", pipeline_tag=tag,
                         tags=[t for t in ("ligo", "model-growth", model_type) if t])
    lines = ["---", data.to_yaml(), "---", "",
             f"# {'Grown' if stage == 'grown' else 'Trained'} {model_type or ''} model", "",
             f"Made with ligo {__version__}: " +
             ("grown from a smaller pretrained model with a learned linear growth operator (LiGO)."
              if stage == "grown" else "continued pretraining with the ligo trainer."), ""]
    if growth:
        plan = growth.get("plan", {})
        lines += ["## Growth", "", f"Source: `{growth.get('source')}`. Width init `{plan.get('width')}`, depth init "
                  f"`{plan.get('depth')}`, per-layer maps: {plan.get('per_layer')}, operator parameters: "
                  f"{_fmt(growth.get('operator_parameters'))}.", ""]
        lines += _dims_table(growth.get("source_dims"), growth.get("target_dims", {})) + [""]
        fit = growth.get("fit")
        if fit:
            lines += [f"The operator was fitted for {fit.get('steps')} steps on the pretraining loss (data: "
                      f"`{fit.get('data') or 'the Python standard library source'}`): held-out loss "
                      f"{_fmt(fit.get('start_val_loss'))} -> {_fmt(fit.get('final_val_loss'))}, "
                      f"{_fmt(fit.get('flops'))} FLOPs.", ""]
        else:
            lines += ["The operator was not fitted: the weights are its initial value (a fixed growth method).", ""]
    if stage == "trained":
        cfg, led = recipe.get("config", {}), recipe.get("ledger", {})
        lines += ["## Training", "", f"Data: `{recipe.get('data') or 'the Python standard library source'}`; "
                  f"{led.get('steps')} steps of {cfg.get('batch_size')} x {cfg.get('seq_len')} tokens, peak LR "
                  f"{cfg.get('lr')}, {cfg.get('schedule')} schedule; final held-out loss "
                  f"{_fmt(led.get('final_val_loss'))}." + (f" Trained with freeze: {cfg['freeze']} (only what growth "
                  "added, as its recipe says; the rest is bit-identical to the grown model)."
                  if cfg.get("freeze", "none") != "none" else ""), "",
                  "## FLOPs ledger", "", "| part | FLOPs |", "|---|---|",
                  f"| source model's training | {_fmt(led.get('source_flops'))} |",
                  f"| operator fit | {_fmt(led.get('fit_flops'))} |",
                  f"| earlier training of this model | {_fmt(led.get('previous_train_flops'))} |",
                  f"| this training | {_fmt(led.get('train_flops'))} |", ""]
    cls = "AutoModelForMaskedLM" if objective == "masked-lm" else "AutoModelForImageTextToText" if \
        recipe.get("vision_language") or (growth or {}).get("vision_language") else "AutoModelForCausalLM"
    lines += ["## Use", "", "```python", f"from transformers import {cls}, AutoTokenizer",
              f"model = {cls}.from_pretrained(PATH)", "tokenizer = AutoTokenizer.from_pretrained(PATH)", "```", "",
              "The exact recipe is in `ligo_recipe.json` beside this card.", ""]
    return "\n".join(lines)


def write_model_card(out: Path, recipe: dict, stage: str, growth: dict | None = None) -> None:
    (Path(out) / "README.md").write_text(card_text(recipe, stage, growth))
