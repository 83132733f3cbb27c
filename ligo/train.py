"""Training a model (a grown checkpoint, or a config from scratch) with the one loop, and saving it."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from . import __version__
from .arch import LigoError, get_spec
from .checkpoint import RECIPE_NAME, check_output_dir, copy_tokenizer, load_checkpoint, read_config, write_json
from .loop import LoopResult, TrainConfig, latest_checkpoint, make_collate, train_loop


@dataclass
class TrainResult:
    out: Path
    loop: LoopResult
    ledger: dict


def _ledger_from(model_dir: Path | None) -> dict:
    """The compute already spent on a model, from the recipe ligo saved beside it (if any)."""
    if model_dir is None or not (model_dir / RECIPE_NAME).exists():
        return {"source_flops": None, "fit_flops": 0.0, "previous_train_flops": 0.0}
    try:
        recipe = json.loads((model_dir / RECIPE_NAME).read_text())
    except json.JSONDecodeError:
        return {"source_flops": None, "fit_flops": 0.0, "previous_train_flops": 0.0}
    if "ledger" in recipe:  # a model trained by ligo: everything it cost is prior work now
        led = recipe["ledger"]
        return {"source_flops": led.get("source_flops"), "fit_flops": led.get("fit_flops", 0.0),
                "previous_train_flops": led.get("previous_train_flops", 0.0) + led.get("train_flops", 0.0)}
    fit = recipe.get("fit") or {}
    return {"source_flops": recipe.get("source_flops"), "fit_flops": fit.get("flops", 0.0), "previous_train_flops": 0.0}


def train(model: str | Path | None, data: str | Path | None, out: str | Path, cfg: TrainConfig, *,
          from_config: str | Path | dict | None = None, tokenizer: str | Path | None = None, resume: bool = False,
          overwrite: bool = False, attn_implementation: str | None = None, blocks=None) -> TrainResult:
    """Continue pretraining ``model`` (a checkpoint dir), or train ``from_config`` from scratch, into ``out``.

    ``out`` receives ``log.jsonl``, ``checkpoints/`` and, at the end, the trained model (config.json is
    written last, so a directory with a config.json always holds a complete model).
    """
    import torch

    from .data import load_blocks
    from .flops import train_flops_per_token
    from .grow import build_config, load_tokenizer, model_class

    out = Path(out)
    if resume:
        if latest_checkpoint(out) is None:
            raise LigoError(f"--resume: {out} holds no complete checkpoint; start without --resume")
    elif out.exists() and any(out.iterdir()):
        check_output_dir(out, overwrite)
        shutil.rmtree(out)
    else:
        check_output_dir(out, True)
    if (model is None) == (from_config is None):
        raise LigoError("give either a model directory or --from-config (a config for training from scratch)")
    if model is not None:
        ck = load_checkpoint(model)  # validates: safetensors only, known type, weights match config
        if not ck.has_head:
            raise LigoError(f"{model} is a bare model without an LM head; train its *ForCausalLM/*ForMaskedLM form")
        spec, dims, config = ck.spec, ck.dims, ck.config
        tok_dir = Path(tokenizer or model)
        prior = _ledger_from(Path(model))
    else:
        config = from_config if isinstance(from_config, dict) else read_config(from_config)
        if not config.get("model_type"):
            raise LigoError(f"the config {from_config if not isinstance(from_config, dict) else ''} has no model_type; "
                            "--from-config needs a full config.json, such as the grown model's")
        spec = get_spec(config.get("model_type"))
        dims = spec.dims(config)
        if tokenizer is None:
            raise LigoError("--from-config needs --tokenizer DIR (a directory with the tokenizer files)")
        tok_dir = Path(tokenizer)
        prior = {"source_flops": None, "fit_flops": 0.0, "previous_train_flops": 0.0}
    tok = load_tokenizer(tok_dir)
    if len(tok) > dims.vocab:
        raise LigoError(f"the tokenizer in {tok_dir} has {len(tok)} tokens but the model's vocab_size is {dims.vocab}; "
                        "use the model's own tokenizer")
    if dims.positions is not None and cfg.seq_len > dims.positions:
        raise LigoError(f"seq_len {cfg.seq_len} exceeds the model's {dims.positions} positions; lower --seq-len")
    if blocks is None:
        blocks = load_blocks(data, tok, cfg.seq_len)

    cls = model_class(spec.objective)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if model is not None:
        net = cls.from_pretrained(str(model), dtype=torch.float32, use_safetensors=True, trust_remote_code=False,
                                  **kwargs)
    else:
        torch.manual_seed(cfg.seed)
        hf_config = build_config(config)
        if attn_implementation:
            hf_config._attn_implementation = attn_implementation
        net = cls.from_config(hf_config)
    per_step = train_flops_per_token(net, dims, cfg.seq_len) * cfg.tokens_per_step
    offset = prior["fit_flops"] + prior["previous_train_flops"]
    result = train_loop(net, blocks.train, blocks.val, cfg, collate=make_collate(spec.objective, tok),
                        flops_per_step=per_step, flops_offset=offset, run_dir=out, resume=resume, desc="train")
    ledger = dict(prior, train_flops=result.flops - offset, flops_per_step=per_step, steps=result.steps,
                  wall_s=result.wall, final_val_loss=result.final_val)
    acc = result.accelerator
    if result.status == "done":
        acc.wait_for_everyone()
        state = acc.get_state_dict(result.model)
        if acc.is_main_process:
            recipe = {"ligo_version": __version__, "kind": "train", "model": None if model is None else str(model),
                      "from_config": None if from_config is None else str(from_config) if not isinstance(
                          from_config, dict) else "<dict>", "data": None if data is None else str(data),
                      "config": asdict(cfg), "ledger": ledger}
            _save_final(acc.unwrap_model(result.model), state, tok_dir, out, recipe)
        acc.wait_for_everyone()
    return TrainResult(out, result, ledger)


def _save_final(model, state: dict, tok_dir: Path, out: Path, recipe: dict) -> None:
    """Write the model files into ``out``: weights first, config.json last (each renamed into place)."""
    tmp = out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        copy_tokenizer(tok_dir, tmp)
        write_json(tmp / RECIPE_NAME, recipe)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LigoError(f"could not save the model into {out}: {exc.strerror or exc}; free disk space and rerun "
                        "with --resume (the checkpoints are intact)") from None
    names = sorted(p.name for p in tmp.iterdir())
    for name in [n for n in names if n != "config.json"] + ["config.json"]:
        os.replace(tmp / name, out / name)
    tmp.rmdir()
