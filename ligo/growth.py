"""Growing one checkpoint: build the operator, optionally fit it, materialize and save the target."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from pathlib import Path

import torch
from torch import nn

from .spaces import Dims
from .checkpoint import Checkpoint, LazyWeights, check_tokenizer_fits, describe_checkpoint, load_checkpoint, \
    load_tokenizer, read_config
from .config import FIT_STEPS_API, MAX_SHARD_SIZE, WEAK_SOURCE_TOKENS_PER_PARAM, GrowthPlan, TrainConfig, fit_config
from .errors import LigoError
from .hf import build_config, check_memory, known_config_keys, meta_model, model_class
from .moe import lm_loss_only, upcycle, upcycle_table
from .maps import depth_plan, lossless_gaps
from .outputs import writes_out
from .operator import GrowthOperator
from .kinds import followed, kinds_config, own_sizes
from .records import FitRecord, GrowthRecord, StartCheck, TrainingRecord, load_recipe

if TYPE_CHECKING:  # (the fit's loop is imported where a fit runs: growing alone never needs it)
    from .loop import LoopResult


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def read_target(target: dict | str | Path) -> dict:
    return dict(target) if isinstance(target, dict) else read_config(target)


def _check_layer_settings(config: dict, target: dict, dims: Dims, layer_lists: list[str]) -> None:
    """A per-layer list the target sets must have one entry per target layer, and a sliding window it sets
    must fit in the positions (the source's own values follow the depth plan and are not checked here)."""
    for key in layer_lists:
        value = target.get(key)
        if value is not None and (not isinstance(value, list) or len(value) != dims.layers):
            n = len(value) if isinstance(value, list) else "no"
            raise LigoError(f"the target's {key} has {n} entries but the target has {dims.layers} layers; give one "
                            f"entry per layer, or leave {key} out to take each new layer's from its source layer")
    window, positions = target.get("sliding_window"), config.get("max_position_embeddings")
    if isinstance(window, int) and isinstance(positions, int) and window > positions:
        raise LigoError(f"the target's sliding_window {window} is larger than its max_position_embeddings {positions}; "
                        f"choose a window of at most {positions} tokens")


def _depth_from_map(spec, source: Checkpoint, target: dict, depth_map: str) -> dict:
    """The target with the depth its depth map gives (a target that says another depth is refused)."""
    layers = len(depth_plan("map", source.dims.layers, depth_map=depth_map).sources)
    key = spec.config_key("layers", source.config)
    given = target.get("layers", target.get(key))
    if given is not None and given != layers:
        raise LigoError(f"the depth map {depth_map!r} gives {layers} layers but the target says {given}; leave the "
                        "layers out of the target (the map says them), or make them agree")
    return {**{k: v for k, v in target.items() if k != "layers"}, key: layers}


START_GAP_WARNING = 1.0  # nats: a grown model that starts this far above its source gets a warning


@torch.no_grad()
def held_out_loss(path: Path, blocks: torch.Tensor, objective: str, tokenizer=None, batch_size: int = 4) -> float:
    """Mean loss of the model saved in ``path`` on ``blocks`` (fp32, CPU; masked LM with a fixed masking seed)."""
    model = model_class(objective, read_config(path).get("model_type")).from_pretrained(
        str(path), dtype=torch.float32, use_safetensors=True, trust_remote_code=False, local_files_only=True).eval()
    from .loop import make_collate

    collate = make_collate(objective, None if objective == "causal-lm" else tokenizer, seed=0)
    lm_only = lm_loss_only(model)
    losses = [model(**collate(list(blocks[i:i + batch_size])), **lm_only).loss.item()
              for i in range(0, len(blocks), batch_size)]
    return sum(losses) / len(losses)


@dataclass
class Timings:
    """Where a growth's time went, in seconds (materialize and save: once written)."""

    load_s: float = 0.0
    build_s: float = 0.0
    materialize_s: float = 0.0
    save_s: float = 0.0


@dataclass
class GrowResult:
    """A grown model: where it was written (None: kept in memory), its record (the recipe: plan, sizes, fit, start
    check, why it is not lossless), and what the run of the grower itself measured."""

    out: Path | None
    record: GrowthRecord
    operator: GrowthOperator
    target_config: dict
    plan: GrowthPlan  # as resolved for this source
    source_dims: Dims
    target_dims: Dims
    fit: LoopResult | None = None  # the fit's own run (its curve), when it was fitted
    timings: Timings = field(default_factory=Timings)
    tokenizer_files: list[str] = field(default_factory=list)
    left_out_layers: int = 0  # layers after the source's last that transformers does not load (MTP), not grown


class Grower:
    """A source checkpoint, a target shape and a plan: ``fit()`` the operator, then ``save()``.

    >>> g = Grower("small-model/", {"hidden": 128, "layers": 4})
    >>> g.fit("corpus/", TrainConfig(steps=100))     # optional: LiGO proper
    >>> g.save("grown-model/")
    """

    def __init__(self, source: str | Path | Checkpoint, target: dict | str | Path, plan: GrowthPlan | None = None,
                 device: str | torch.device | None = None, tokenizer=None, stream: bool = False,
                 arch: str | None = None, dtype: torch.dtype | None = None):
        t0 = time.perf_counter()
        self.device = torch.device(device or "cpu")
        loaded_here = not isinstance(source, Checkpoint)
        target = read_target(target)
        # streaming (no fit, on the CPU): only the source's headers now; save() reads each tensor when needed
        self.stream = stream and loaded_here and self.device.type == "cpu"
        self.source = (describe_checkpoint(source, arch=arch) if self.stream else
                       load_checkpoint(source, self.device, arch)) if loaded_here else source
        if self.stream and (upcycle_table(self.source.spec, target) is not None or self.source.wrapper is not None
                            or self.source.transposed):
            # upcycling reads the source in memory, and so does growing a vision-language checkpoint or one whose
            # experts are held transposed
            self.source, self.stream = load_checkpoint(self.source.path, self.device, arch), False
        upcycled, dense_type = upcycle(self.source, target), self.source.spec.model_type
        if upcycled is not None:  # a dense source asked for experts: read as the one-expert MoE it is
            self.source, target = upcycled
        self.upcycled_from = dense_type if upcycled is not None else None  # the dense model_type
        self.has_head, self.dtype, self.spec = self.source.has_head, self.source.dtype, self.source.spec
        if dtype is not None:
            self.dtype = dtype  # what the grown weights are written in (the source's by default)
        if plan is not None and plan.depth_map is not None:
            target = _depth_from_map(self.spec, self.source, target, plan.depth_map)
        self.target_config = self.spec.target_config(self.source.config, target, known_config_keys(self.spec.model_type))
        self.target_dims: Dims = self.spec.dims(self.target_config, where="target")
        _check_layer_settings(self.target_config, target, self.target_dims, self.spec.layer_lists)
        build_config(self.target_config)  # transformers' own checks of the target, before any work
        self._check_memory()
        t1 = time.perf_counter()
        known = load_recipe(self.source.path)  # what ligo knows of the source's making (nothing: from elsewhere)
        trained = known if isinstance(known, TrainingRecord) else None
        self.source_tokens = trained.trained_tokens() if trained is not None else None
        # what the source cost, where ligo made it from scratch or from a model whose cost it knows: all of it
        unknown = trained is None or (trained.model is not None and trained.ledger.source_flops is None)
        self.source_flops = None if unknown else (trained.ledger.source_flops or 0.0) + trained.ledger.spent
        tied = set(self.spec.tied) if self.source.dims.tie else set()
        # layers after the last that the layout leaves out (multi-token prediction: transformers does not load them)
        self.left_out_layers = len({i for k in self.source.state if k not in self.source.layout
                                    and (i := self.spec.layer_index(k)) is not None and i >= self.source.dims.layers})
        self.source_params = sum(self.source.state[k].numel() for k in self.source.layout if k not in tied)
        tpp = None if self.source_tokens is None else self.source_tokens / self.source_params
        # pretrained: a checkpoint from elsewhere (its training unknown, real ones 10^3-10^4 tokens per parameter),
        # or one ligo trained on enough tokens; what the LR after growth defaults to follows it (LR_PRETRAINED)
        self.source_pretrained = tpp is None or tpp >= WEAK_SOURCE_TOKENS_PER_PARAM
        # the one place a plan's auto fields are resolved: from what is known of the source's training
        plan = (plan or GrowthPlan()).resolved(tpp)
        self.depth = depth_plan(plan.depth, self.source.dims.layers, self.target_dims.layers, plan.depth_map,
                                self.source.dims.kinds)
        self._follow_depth(target)
        # streaming: the source's shapes only (on the meta device), and the maps' selections, not dense
        self.operator = GrowthOperator(self.spec, self.source.dims, self.target_dims, self.source.layout,
                                       self.source.state, plan, compact=self.stream,
                                       router_std=float(self.target_config.get("initializer_range") or 0.02),
                                       depth=self.depth, read=LazyWeights(self.source.path) if self.stream else None)
        if not self.stream:
            self.operator.to(self.device)
        self.plan = self.operator.plan
        self.gaps = lossless_gaps(self.spec, self.plan, self.source.dims, self.target_dims, self.depth) + \
            (self.source.wrapper.gaps(self.depth.sources, self.depth.zero) if self.source.wrapper is not None else [])
        if loaded_here and not self.stream:  # the operator holds what it needs (layers stacked): no second copy
            self.source.state = {}
        self.fit_result: LoopResult | None = None
        self.fit_record: FitRecord | None = None
        self.start_check: StartCheck | None = None
        self._tokenizer = tokenizer
        self.tokenizer_files: list[str] = []
        self.timings = Timings(load_s=t1 - t0, build_s=time.perf_counter() - t1)

    def _follow_depth(self, target: dict) -> None:
        """Per-layer config lists follow the depth plan (unless the target sets them), and so do the layers' kinds
        (a layer keeps its source layer's kind), which the target's config then says."""
        sources = self.depth.sources
        if len(sources) != self.target_dims.layers:
            return  # (the operator says what is wrong)
        carried = set()  # (a list that says the kinds, carried layer by layer, keeps the source's own names)
        sizes = own_sizes(self.target_config)  # (a kv head count of some layers' own, grown: the followed settings')
        for key in self.spec.layer_lists:
            old = self.source.config.get(key)
            new = followed(old, self.source.dims.layers, sources, sizes)
            if key not in target and new is not None:
                self.target_config[key] = new
                carried.add(key)
        if self.source.dims.kinds:
            kinds = [self.source.dims.kinds[j] for j in sources]
            for key, value in kinds_config(self.spec.kinds, kinds, self.spec.model_type).items():
                if key not in target and key not in carried:
                    self.target_config[key] = value
            self.target_dims = self.spec.dims(self.target_config, where="target")

    def _target_sizes(self) -> list[int]:
        """The number of elements of every grown tensor (a layer entry's over all its layers), tied weights once."""
        tied = set(self.spec.tied) if self.target_dims.tie else set()
        sizes = []
        seen = set()
        for key, m in self.source.layout.items():
            if key in tied or m.entry.name in seen or m.expert:
                continue
            if m.entry.scope == "layer":
                seen.add(m.entry.name)
            shape = [s if s > 0 else g for s, g in zip(self.spec.key_shape(m.entry, self.target_dims),
                                                       self.source.state[key].shape)]
            shape = [self.target_dims.experts, *shape] if m.entry.per_expert else shape
            layers = len(self.spec.kind_rows(m.entry, self.target_dims)) if m.entry.scope == "layer" else 1
            sizes.extend([int(torch.tensor(shape).prod())] * layers)
        return sizes

    def target_parameters(self) -> int:
        """Parameters of the grown model (tied weights once)."""
        return sum(self._target_sizes())

    def _check_disk(self, out: Path) -> None:
        """Streaming needs little memory but the whole grown model on disk: refuse a target that cannot fit."""
        import shutil

        need = self.target_parameters() * self.dtype.itemsize
        parent = out.resolve().parent
        free = shutil.disk_usage(parent).free if parent.exists() else None
        if free is not None and need > free:
            raise LigoError(f"no space left on the device for the grown model: it needs {_size(need)} of disk, but "
                            f"{parent} has {_size(free)} free; free some space or write --out elsewhere")

    def _check_memory(self) -> None:
        """Refuse a target that cannot fit before anything is allocated (a typo of a few zeros would otherwise
        ask for terabytes): in memory, the grown weights are gathered for saving; streaming, the largest
        grown tensor is computed in float32 (twice: the result and its expansion's input)."""
        if self.stream:
            largest = max(self._target_sizes())
            check_memory(2 * 4 * largest, f"the target's largest tensor has {largest:,} elements to compute in float32",
                         "choose a smaller target")
            return
        n = self.target_parameters()
        check_memory(n * self.dtype.itemsize, f"the target has {n:,} parameters in "
                     f"{str(self.dtype).removeprefix('torch.')}", "choose a smaller target")

    @property
    def tokenizer(self):
        """The source's tokenizer (or the one given), checked to fit the model's vocabulary."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.source.path)
        check_tokenizer_fits(self._tokenizer, self.source.dims.vocab, self.source.path)
        return self._tokenizer

    # -- LiGO proper: train the operator on the pretraining loss ----------------------------------
    def target_model(self, device: torch.device | str | None = None) -> nn.Module:
        """The target architecture for the fit: its weights stay on the meta device (the operator
        provides them at every step), only its buffers (rotary tables, position ids) are real."""
        from accelerate import init_empty_weights

        cfg = build_config(self.target_config)  # (attention: transformers' default, sdpa where the class has it)
        with torch.device(device or self.device), init_empty_weights(include_buffers=False):
            model = model_class(self.spec.objective).from_config(cfg)
        model.tie_weights()  # ties made while the weights were being created on meta are not all kept
        return model

    def fit_steps(self, share: float, train_cfg: TrainConfig, seq_len: int, tokens_per_step: int,
                  grad_accum: int = 1) -> int:
        """Fit steps (of ``tokens_per_step`` tokens in blocks of ``seq_len``) that cost ``share`` of a training
        budget (``train_cfg.steps`` steps of the target): a fit step is a training step of the target plus
        building the weights from the operator (once per micro-batch)."""
        from .flops import build_flops, step_flops, train_flops_per_token

        meta = meta_model(self.spec.objective, self.target_config)
        budget = step_flops(meta, self.target_dims, train_cfg) * train_cfg.steps
        per_step = train_flops_per_token(meta, self.target_dims, seq_len) * tokens_per_step + \
            build_flops(self.operator) * grad_accum
        return max(1, int(share * budget / per_step))

    def fit(self, data: str | Path | None = None, cfg: TrainConfig | None = None, *, blocks=None,
            run_dir: str | Path | None = None) -> LoopResult:
        """Fit the operator for ``cfg.steps`` steps on ``blocks`` (or on ``data``: a path, or None for the
        embedded default corpus). The operator ends at its best held-out point, so a fit never ends
        worse than the plan it started from."""
        from .data import load_blocks, tokens_to_read
        from .flops import build_flops, step_flops

        cfg = cfg or fit_config({"steps": FIT_STEPS_API})
        if self.stream:
            raise LigoError("this Grower streams its source (stream=True) and cannot fit the operator; build it "
                            "without stream=True to fit")
        if self.source.wrapper is not None:
            raise LigoError(f"{self.source.path} is a vision-language checkpoint; ligo fits the operator on text "
                            "models only, so grow its language model without --fit-steps")
        if not self.has_head:
            raise LigoError(f"{self.source.path} is a bare model without an LM head, so there is no pretraining "
                            "loss to fit on; grow without --fit-steps, or use its *ForMaskedLM/*ForCausalLM form")
        if blocks is None:
            blocks = load_blocks(data, self.tokenizer, cfg.seq_len, max_tokens=tokens_to_read(cfg))
        meta_target = meta_model(self.spec.objective, self.target_config)
        build = build_flops(self.operator)
        per_step = step_flops(meta_target, self.target_dims, cfg) + build * cfg.grad_accum
        best: dict = {}

        def keep_best(step: int, val: float, _model) -> None:
            if not best or val < best["val"]:
                best.update(val=val, step=step, maps={k: v.detach().clone() for k, v in self.operator.state_dict().items()})

        from .fit import FitModule
        from .loop import make_collate, train_loop

        module = FitModule(self.operator, self.target_model())
        t0 = time.perf_counter()
        causal = self.spec.objective == "causal-lm"  # given the blocks, a causal LM needs no tokenizer
        self.fit_result = train_loop(module, blocks.train, blocks.val, cfg, collate=make_collate(
            self.spec.objective, None if causal else self.tokenizer), flops_per_step=per_step, run_dir=run_dir,
            desc="fit", on_eval=keep_best)
        if best and best["step"] != self.fit_result.steps:
            self.operator.load_state_dict(best["maps"])
        from .modelcard import data_name

        self.fit_record = FitRecord(data=data_name(data), config=cfg.to_dict(),  # None: the default corpus
                                    steps=self.fit_result.steps, status=self.fit_result.status,
                                    flops=self.fit_result.flops, flops_per_step=per_step, build_flops=build,
                                    start_val_loss=self.fit_result.evals[0]["val_loss"], best_step=best.get("step"),
                                    final_val_loss=best.get("val", self.fit_result.final_val),
                                    wall_s=time.perf_counter() - t0, loop_wall_s=self.fit_result.wall)
        return self.fit_result

    # -- output -----------------------------------------------------------------------------------
    def materialize(self, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> dict:
        """The grown model's weights (a vision-language checkpoint's: its vision tower's beside them, as it names them)."""
        grown = self.operator.materialize(dtype or self.dtype, device=device)
        return self.source.wrapper.outer_weights(grown) if self.source.wrapper is not None else grown

    def record(self) -> GrowthRecord:
        """The grown model's recipe, as far as the growth has gone (its fit and start check once made)."""
        from dataclasses import asdict

        from .modelcard import model_name

        return GrowthRecord(
            source=model_name(self.source.path, self.source.config), model_type=self.spec.model_type,
            upcycled_from=self.upcycled_from, objective=self.spec.objective, has_head=self.has_head,
            table=self.spec.source, source_dims=asdict(self.source.dims), target_dims=asdict(self.target_dims),
            plan=self.plan.to_dict(), source_tokens=self.source_tokens, source_flops=self.source_flops,
            lossless=not self.gaps, not_lossless_because=list(self.gaps),
            operator_parameters=self.operator.num_parameters(), fit=self.fit_record, start_check=self.start_check,
            new_layers=self.depth.new_layers, pretrained=self.source_pretrained, depth_fit=self.operator.depth_fit,
            vision_language=self.source.wrapper.model_type if self.source.wrapper is not None else None)

    def result(self, out: Path | None) -> GrowResult:
        """What this grower made (written into ``out``, or not written)."""
        return GrowResult(out=out, record=self.record(), operator=self.operator, target_config=self.target_config,
                          plan=self.plan, source_dims=self.source.dims, target_dims=self.target_dims,
                          fit=self.fit_result, timings=self.timings, tokenizer_files=self.tokenizer_files,
                          left_out_layers=self.left_out_layers)

    def hf_config(self):
        wrapper = self.source.wrapper  # (a vision-language checkpoint's config holds the grown text config)
        config = build_config(wrapper.outer(self.target_config) if wrapper is not None else self.target_config)
        config.architectures = (wrapper.config if wrapper is not None else self.source.config).get("architectures")
        config.dtype = str(self.dtype).removeprefix("torch.")
        return config

    @writes_out
    def save(self, out: str | Path, overwrite: bool = False, max_shard_size: str | int = MAX_SHARD_SIZE,
             check: torch.Tensor | None = None) -> Path:
        """Write the grown model as a Hugging Face checkpoint (atomically) with its recipe and model card.
        ``check``: held-out token blocks on which the grown model's start loss is measured beside the
        source's before the output is committed (recorded in the recipe as ``start_check``)."""
        from .writer import save_weights, save_weights_streaming, write_model

        if self.stream:
            self._check_disk(Path(out))
        t0, grown = time.perf_counter(), []

        def weights(folder: Path) -> None:  # (write_model checks the output and the shard size first)
            if self.stream:  # each target tensor from the source tensors it needs, each shard written when full
                shapes = {key: torch.empty(shape, dtype=self.dtype, device="meta")
                          for key, shape in self.operator.target_shapes().items()}
                save_weights_streaming(self.operator.stream(LazyWeights(self.source.path), self.dtype), shapes,
                                       folder, max_shard_size)
            else:  # gathered in memory, then written (no copy stays while the start check runs)
                state = self.materialize()
                grown.append(time.perf_counter())
                save_weights(state, folder, max_shard_size)
                del state
            grown.append(time.perf_counter())

        def recipe(folder: Path) -> GrowthRecord:
            if check is not None:
                src, loss = (held_out_loss(p, check, self.spec.objective, self._tokenizer)
                             for p in (self.source.path, folder))
                self.start_check = StartCheck(tokens=int(check.numel()), source_loss=src, grown_loss=loss,
                                              gap=loss - src)
            return self.record()

        self.tokenizer_files = write_model(out, weights=weights, config=self.hf_config(), tokenizer=self.source.path,
                                           recipe=recipe, overwrite=overwrite, inputs=[self.source.path],
                                           max_shard_size=max_shard_size)
        t1 = grown[0] if not self.stream else grown[-1]  # in memory: grown before the writing; streaming: written
        self.timings.materialize_s, self.timings.save_s = t1 - t0, time.perf_counter() - t1
        return Path(out)
