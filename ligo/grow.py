"""The growth API: build an operator from a source checkpoint, fit it, materialize and save the target."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from . import __version__
from .arch import Dims, LigoError
from .checkpoint import (RECIPE_NAME, Checkpoint, atomic_dir, check_output_dir, copy_tokenizer, load_checkpoint,
                         save_weights, write_json)
from .operator import GrowthOperator, GrowthPlan, depth_plan
from .loop import LoopResult, TrainConfig, make_collate, train_loop


def model_class(objective: str):
    import transformers

    return transformers.AutoModelForCausalLM if objective == "causal-lm" else transformers.AutoModelForMaskedLM


def build_config(config: dict):
    """A transformers config object from a dict (the model type's own class; never remote code)."""
    import transformers

    data = {k: v for k, v in config.items() if k not in ("model_type", "transformers_version", "auto_map")}
    try:
        return transformers.AutoConfig.for_model(config["model_type"], **data)
    except (ValueError, TypeError) as exc:
        raise LigoError(f"invalid {config['model_type']} config: {exc}") from None


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise LigoError(f"cannot load a tokenizer from {path} ({str(exc).splitlines()[0]}); "
                        "save the source's tokenizer beside its weights") from None


def read_target(target: dict | str | Path) -> dict:
    if isinstance(target, dict):
        return dict(target)
    from .checkpoint import read_config

    return read_config(target)


class FitModule(nn.Module):
    """The target model whose weights are the operator's output: trains only the operator."""

    def __init__(self, operator: GrowthOperator, target_model: nn.Module):
        super().__init__()
        self.operator = operator
        self.target = target_model.requires_grad_(False)

    def forward(self, **batch):
        return functional_call(self.target, self.operator(), args=(), kwargs=batch, tie_weights=True, strict=False)


@dataclass
class GrowResult:
    out: Path | None
    operator: GrowthOperator
    target_config: dict
    recipe: dict
    fit: LoopResult | None = None
    timings: dict = field(default_factory=dict)


class Grower:
    """A source checkpoint, a target shape and a plan: ``fit()`` the operator, then ``materialize()``.

    >>> g = Grower("small-model/", {"hidden": 128, "layers": 4})
    >>> g.fit("corpus/", TrainConfig(steps=100))     # optional: LiGO proper
    >>> g.save("grown-model/")
    """

    def __init__(self, source: str | Path | Checkpoint, target: dict | str | Path,
                 plan: GrowthPlan | None = None):
        t0 = time.perf_counter()
        loaded_here = not isinstance(source, Checkpoint)
        self.source = load_checkpoint(source) if loaded_here else source
        self.has_head, self.dtype = self.source.has_head, self.source.dtype
        self.spec = self.source.spec
        self.target_config = self.spec.target_config(self.source.config, read_target(target))
        self.target_dims: Dims = self.spec.dims(self.target_config)
        t1 = time.perf_counter()
        self.operator = GrowthOperator(self.spec, self.source.dims, self.target_dims, self.source.layout,
                                       self.source.state, plan)
        self.plan = self.operator.plan
        if loaded_here:  # the operator holds what it needs (layers stacked): do not keep a second copy
            self.source.state = {}
        sources, _ = depth_plan(self.plan.depth, self.source.dims.layers, self.target_dims.layers)
        for key in self.spec.layer_lists:  # per-layer config lists follow the depth plan
            old = self.source.config.get(key)
            if isinstance(old, list) and len(old) == self.source.dims.layers:
                self.target_config[key] = [old[j] for j in sources]
        self.fit_result: LoopResult | None = None
        self.fit_info: dict = {}
        self.timings = {"load_s": t1 - t0, "build_s": time.perf_counter() - t1}

    # -- LiGO proper: train the operator on the pretraining loss ----------------------------------
    def target_model(self) -> nn.Module:
        cfg = build_config(self.target_config)
        if getattr(cfg, "_attn_implementation", None) is None:
            cfg._attn_implementation = "sdpa"
        return model_class(self.spec.objective).from_config(cfg)

    def fit(self, data: str | Path | None, cfg: TrainConfig, run_dir: str | Path | None = None,
            blocks=None) -> LoopResult:
        """Fit the operator for ``cfg.steps`` steps on ``data`` (None: the embedded default corpus)."""
        from .data import load_blocks
        from .flops import measured_flops, train_flops_per_token

        if not self.has_head:
            raise LigoError(f"{self.source.path} is a bare model without an LM head, so there is no pretraining "
                            "loss to fit on; grow without --fit-steps, or use its *ForMaskedLM/*ForCausalLM form")
        tokenizer = load_tokenizer(self.source.path)
        if blocks is None:
            blocks = load_blocks(data, tokenizer, cfg.seq_len)
        target = self.target_model()
        module = FitModule(self.operator, target)
        build = measured_flops(lambda: sum(v.float().sum() for v in self.operator().values()))
        self.operator.zero_grad(set_to_none=True)
        per_step = train_flops_per_token(target, self.target_dims, cfg.seq_len) * cfg.tokens_per_step + build
        collate = make_collate(self.spec.objective, tokenizer)
        t0 = time.perf_counter()
        self.fit_result = train_loop(module, blocks.train, blocks.val, cfg, collate=collate, flops_per_step=per_step,
                                     run_dir=run_dir, desc="fit")
        self.fit_info = {"data": None if data is None else str(data), "config": asdict(cfg),
                         "flops": self.fit_result.flops, "flops_per_step": per_step, "build_flops": build,
                         "final_val_loss": self.fit_result.final_val, "wall_s": time.perf_counter() - t0}
        return self.fit_result

    # -- output -----------------------------------------------------------------------------------
    def materialize(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        return self.operator.materialize(dtype or self.dtype)

    def recipe(self) -> dict:
        return {"ligo_version": __version__, "source": str(self.source.path), "model_type": self.spec.model_type,
                "source_dims": asdict(self.source.dims), "target_dims": asdict(self.target_dims),
                "plan": asdict(self.plan), "operator_parameters": self.operator.num_parameters(),
                "fit": self.fit_info or None}

    def save(self, out: str | Path, overwrite: bool = False, max_shard_size: str | int = "5GB") -> Path:
        """Write the grown model as a Hugging Face checkpoint (atomically) with its recipe."""
        out = Path(out)
        t0 = time.perf_counter()
        state = self.materialize()
        t1 = time.perf_counter()
        config = build_config(self.target_config)
        config.architectures = self.source.config.get("architectures")
        config.dtype = str(self.dtype).removeprefix("torch.")
        with atomic_dir(out, overwrite) as tmp:
            save_weights(state, tmp, max_shard_size)
            config.save_pretrained(tmp)
            copy_tokenizer(self.source.path, tmp)
            write_json(tmp / RECIPE_NAME, self.recipe())
        self.timings.update(materialize_s=t1 - t0, save_s=time.perf_counter() - t1)
        return out


def grow(source: str | Path, target: dict | str | Path, out: str | Path | None = None, *,
         width: str = "split", depth: str = "identity", per_layer: bool = False, seed: int = 0,
         data: str | Path | None = None, fit: TrainConfig | None = None, fit_run_dir: str | Path | None = None,
         overwrite: bool = False) -> GrowResult:
    """Grow ``source`` into ``target`` in one call; fit the operator first when ``fit`` is given."""
    if out is not None:
        check_output_dir(out, overwrite)
    grower = Grower(source, target, GrowthPlan(width=width, depth=depth, per_layer=per_layer, seed=seed))
    if fit is not None:
        grower.fit(data, fit, run_dir=fit_run_dir)
    path = grower.save(out, overwrite) if out is not None else None
    return GrowResult(path, grower.operator, grower.target_config, grower.recipe(), grower.fit_result, grower.timings)
