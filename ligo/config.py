"""The settings of a run, as validated dataclasses: :class:`TrainConfig` and :class:`GrowthPlan`.

Every default is defined here once. The CLI generates its flags from these fields (help text,
choices and defaults included), recipe files and experiment files are read through
:meth:`from_dict`, and every value is checked when an instance is built, so a wrong type or range
is one clear error wherever it came from. This module imports nothing heavy, so ``ligo --help``
stays fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Literal, Optional

from .errors import LigoError
from .plans import DEPTH, WIDTH, choices_help
from .settings import Settings, check_mapping, type_ok, setting

# Below this many training tokens per parameter a ligo-trained source gets the paper's init from the auto plan:
# it ended best on cpu-tiny's sources of 5 and 100 tokens per parameter (docs/benchmarks.md); a real
# checkpoint (10^3-10^4) forgets what it knew with it (a 135M Llama: 3.14 -> 11.16 nats at the start).
WEAK_SOURCE_TOKENS_PER_PARAM = 200
# The peak LR when none is given: a pretrained checkpoint (and a model grown from one) is trained on at 1e-4, the
# LR that ended best for SmolLM2-135M trained on and for its lossless growth (real-smollm2-b: 3e-5, 1e-4, 3e-4 and
# 1e-3 tried; 1e-3 ended above the start); a model from scratch, or grown from a weak source, at 1e-3 (cpu-tiny).
LR_PRETRAINED, LR_FROM_SCRATCH = 1e-4, 1e-3
MAX_SHARD_SIZE = "5GB"  # the largest safetensors shard written by default (as transformers' save_pretrained)


@dataclass
class TrainConfig(Settings):
    """Hyper-parameters of one run of the training loop (the operator fit uses the same class)."""

    WHERE = "training config"

    steps: int = setting(200, "optimizer steps", low=1)
    batch_size: int = setting(8, "sequences per micro-batch, over all processes", low=1)
    grad_accum: int = setting(1, "micro-batches per optimizer step", low=1)
    seq_len: int = setting(128, "tokens per sequence", low=2)
    lr: Optional[float] = setting(
        None, "peak learning rate (default: 1e-4 for a pretrained checkpoint and what is grown from it, 1e-3 from "
        "scratch or for a source ligo trained on under 200 tokens per parameter: the rule the real checkpoint "
        "measured, docs/trainer.md)", positive=True)
    weight_decay: float = setting(0.1, "AdamW weight decay (never on biases, norms or operator maps)", low=0)
    optimizer: Literal["adamw", "muon"] = setting(
        "adamw", "adamw, or muon: the layers' weight matrices take Muon's orthogonalized momentum updates (isotropic: "
        "they leave a grown model's copied subspace, arXiv 'Escaping the Subspace Trap'), scaled to AdamW's update "
        "RMS so that the same peak LR serves (torch's match_rms_adamw rule: 0.2 sqrt(max(rows, cols)) x LR); "
        "embeddings, head, norms and biases keep AdamW")
    warmup: int = setting(20, "linear warmup steps", low=0)
    schedule: Literal["cosine", "linear", "constant", "wsd"] = setting(
        "cosine", "decay after warmup: cosine, linear, constant, or wsd (warmup-stable-decay)")
    decay_fraction: float = setting(0.2, "wsd: the final share of the steps over which the LR decays", low=0,
                                    high=1)
    min_lr_ratio: float = setting(0.1, "final LR as a fraction of the peak", low=0, high=1)
    clip: float = setting(1.0, "gradient-norm clip (0: off)", low=0)
    eval_every: int = setting(50, "held-out evaluation every N steps (0: only at the start and the end)", low=0)
    eval_batches: int = setting(8, "held-out micro-batches per evaluation", low=1)
    patience: int = setting(0, "stop after N evaluations without a held-out improvement (0: never)", low=0)
    save_every: int = setting(0, "checkpoint every N steps (0: off)", low=0)
    keep_last: int = setting(2, "complete checkpoints kept", low=1)
    log_every: int = setting(10, "read the loss back from the device every N steps (one log line per step "
                             "either way; the NaN check runs at these steps)", low=1)
    seed: int = setting(0, "random seed", low=0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = setting(
        "auto", "auto (what `accelerate launch` was configured with, else bf16 on a GPU that has it, else no), "
        "no, bf16 or fp16")
    weights_dtype: Literal["float32", "bfloat16"] = setting(
        "float32", "bfloat16: keep the model's weights in bf16 (half the memory) with fp32 master weights and "
        "fp32 optimizer state (not with FSDP)")
    fsdp: bool = setting(False, "shard the model's weights, gradients and AdamW state over the processes of the "
                         "launch (FSDP2, one shard unit per layer); launch with torchrun or accelerate launch "
                         "(docs/trainer.md)")
    compile: Optional[bool] = setting(None, "torch.compile the model (default: on with CUDA, off on CPU)")
    grad_checkpointing: bool = setting(False, "recompute activations in the backward pass (less memory)")
    peak_tflops: Optional[float] = setting(None, "the device's peak TFLOP/s for the MFU column (default: "
                                           "looked up for known GPUs)", positive=True)
    trackers: list[str] = setting([], "accelerate trackers to log to (tensorboard, wandb), if installed")
    freeze: Literal["none", "source-layers", "all-but-new"] = setting(
        "none", "train only what growth added: source-layers freezes the layers that came from the source "
        "(LLaMA-Pro's recipe: the new layers, embeddings and head train), all-but-new freezes everything but the new "
        "layers and the norms (a grown model's recipe says which layers are new)")
    progress: bool = setting(True, "show a progress bar")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.trackers = list(self.trackers)
        if self.fsdp and self.optimizer == "muon":
            raise LigoError("training config: --optimizer muon orthogonalizes whole weight matrices, which --fsdp "
                            "shards over the processes; train with one of them")

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based); the peak must be set (training sets the default)."""
        if self.lr is None:
            raise LigoError("internal error: a learning rate is needed here (training sets its default)")
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "wsd":
            decay = max(1, round(self.decay_fraction * self.steps))
            start = max(self.warmup, self.steps - decay)
            if step < start:
                return self.lr
            progress = min(1.0, (step - start) / max(1, self.steps - start))
            return self.lr * (1 - (1 - self.min_lr_ratio) * progress)
        progress = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if self.schedule == "cosine" else 1 - progress
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * shape)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.seq_len


# The operator fit is a TrainConfig with these defaults (its steps may be 0: no fit).
# the fit that won on cpu-tiny (docs/benchmarks.md): a short warmup, a held-out check every 2 steps,
# and a stop after 3 checks without improvement; the operator keeps its best held-out point
FIT_DEFAULTS = {"steps": 0, "lr": 3e-3, "warmup": 1, "weight_decay": 0.0, "eval_every": 2, "patience": 3}
# what an operator fit takes from the training run it serves: the shape of its batches, its seed and its numerics
FIT_INHERITS = ("seq_len", "batch_size", "seed", "mixed_precision")
FIT_STEPS_API = 100  # Grower.fit() called without settings: the longest it runs (patience usually stops it sooner)


def inherited(cfg: "TrainConfig") -> dict:
    """The settings of ``cfg`` that a fit serving its run takes (:data:`FIT_INHERITS`)."""
    return {key: getattr(cfg, key) for key in FIT_INHERITS}


def fit_share(value, where: str = "fit") -> float | None:
    """The fit's length as a share of a training budget's FLOPs: a number in [0, 1); None for 0 or none (no fit)."""
    if value is None:
        return None
    if not type_ok(value, float) or not 0 <= value < 1:
        raise LigoError(f"{where}: fit share must be a number in [0, 1) (a share of the training budget's FLOPs, e.g. "
                        f"0.02; 0: no fit), got {value!r}")
    return value or None


def fit_config(values: dict, where: str = "fit") -> TrainConfig | None:
    """The operator fit's TrainConfig from user values over :data:`FIT_DEFAULTS`; None for 0 steps."""
    merged = {**FIT_DEFAULTS, **values}
    steps = merged["steps"]
    if not type_ok(steps, int) or steps < 0:
        raise LigoError(f"{where}: fit steps must be a non-negative integer, got {steps!r}")
    if steps == 0:
        return None
    if type_ok(merged["warmup"], int):
        merged["warmup"] = min(merged["warmup"], steps)
    return TrainConfig.from_dict(merged, where=where)


@dataclass
class FitSpec:
    """An operator fit inside a training budget: its settings (TrainConfig keys over
    :data:`ligo.config.FIT_DEFAULTS`), and its length: ``share`` of the budget's FLOPs (its steps then follow
    from the target's cost, :meth:`config`), else the settings' ``steps``. Checked when built."""

    settings: dict = field(default_factory=dict)
    share: float | None = None

    def __post_init__(self) -> None:
        self.share = fit_share(self.share)
        check_mapping(TrainConfig, {**FIT_DEFAULTS, **self.settings, "steps": 1}, "fit")  # (steps: checked below)
        if not type_ok(self.steps, int) or self.steps < 0:
            raise LigoError(f"fit: fit steps must be a non-negative integer, got {self.steps!r}")
        if not self.share and self.steps < 1:
            raise LigoError("fit: give the fit's steps (1 or more) or its share of the budget, got neither")

    @property
    def steps(self):
        return self.settings.get("steps", FIT_DEFAULTS["steps"])

    def config(self, grower, train_cfg: TrainConfig) -> TrainConfig:
        """The fit's TrainConfig for a training budget of ``train_cfg`` on the target of ``grower`` (a
        :class:`ligo.growth.Grower`: it knows what a fit step costs)."""
        merged = {**FIT_DEFAULTS, **self.settings}
        if not self.share:
            return fit_config(merged)
        tokens = merged.get("batch_size", TrainConfig.batch_size) * merged.get("grad_accum", TrainConfig.grad_accum)
        seq_len = merged.get("seq_len", TrainConfig.seq_len)
        steps = grower.fit_steps(self.share, train_cfg, seq_len, tokens * seq_len,
                                 merged.get("grad_accum", TrainConfig.grad_accum))
        return TrainConfig.from_dict({**merged, "steps": steps, "warmup": min(merged["warmup"], steps),
                                      "eval_every": min(merged["eval_every"] or steps, steps)}, where="fit")

    def to_dict(self) -> dict:
        """As a recipe records it: the settings, and the share when the steps follow from it."""
        settings = {k: v for k, v in self.settings.items() if not (self.share and k == "steps")}
        return {**settings, "share": self.share} if self.share else settings


@dataclass
class GrowthPlan(Settings):
    """Everything that defines an operator besides the weights: recorded in the recipe."""

    WHERE = "growth plan"

    width: str = setting(
        "auto", choices_help(WIDTH, "width init") + "; or auto: random for a source ligo trained on under 200 tokens "
        "per parameter (where it measured best), else split", choices=lambda: ("auto", *WIDTH))
    depth: str = setting(
        "auto", choices_help(DEPTH, "depth init") + "; or auto: map with a depth map, else stack for a weakly "
        "trained source or random width, else identity", choices=lambda: ("auto", *DEPTH))
    depth_map: Optional[str] = setting(
        None, "the source layer behind every target layer, comma-separated: an index, an inclusive range A-B, or new "
        "(an identity block: a copy of the layer before, or new:K of layer K, with its output projections zeroed); "
        "e.g. 0-23,8-31 (SOLAR's overlap) or 0-3,new,4-7,new; expand:K adds an identity block after every K layers "
        "(LLaMA-Pro). The target's layers follow from it")
    drop_layers: bool = setting(False, "let a depth map leave source layers out (layer pruning: they are named); "
                                "without it, a map that leaves any out is refused")
    per_layer: bool = setting(False, "separate width maps per target layer for the layer spaces (heads, FFN)")
    perturb: float = setting(0.0, "symmetry breaking as muP scales it: every grown projection gets noise of std "
                             "perturb / sqrt(fan_in) added (fan_in: the size of the axis it reads), once, after any fit; "
                             "the start moves away from the source's function by about that much (0: off)", low=0)
    split_noise: float = setting(0.5, "split: how unequal the copies' read shares are (0: plain copies)", low=0,
                                 high=0.99)
    seed: int = setting(0, "seed for the operator's init", low=0)
    width_lr: Literal["auto", "uniform", "fan_in"] = setting(
        "auto", "fit: the width maps' step size: the fit LR (uniform), the fit LR divided by the map's fan-in, its "
        "number of source units (fan_in, muP-style: the fit LR is then a relative change per unit), or auto: fan_in "
        "for a pretrained source (on SmolLM2-135M the uniform step took the held-out loss from 10.56 to 122.5 in two "
        "steps and the fit kept its start), uniform for a source ligo trained on under 200 tokens per parameter "
        "(where cpu-tiny measured it)")
    depth_lr_scale: float = setting(1.0, "fit: the depth maps' LR as a multiple of the fit LR", low=0)

    def resolved(self, tokens_per_param: float | None = None) -> "GrowthPlan":
        """The plan with ``auto`` made concrete from what is known of the source: ``tokens_per_param``, the
        tokens it was trained on per parameter (None: unknown, as for any checkpoint ligo did not train).

        A source ligo trained on fewer than :data:`WEAK_SOURCE_TOKENS_PER_PARAM` tokens per parameter gets the
        paper's random-mixture width with stacked depth, which ended best on cpu-tiny's sources of 5 (both
        budgets) and 100 tokens per parameter; any other source (a checkpoint from elsewhere: its training
        unknown, real ones have 10^3-10^4) gets the lossless split width with identity depth, since random
        width makes a pretrained checkpoint forget what it knew (135M Llama: 3.14 -> 11.16 nats)
        (docs/benchmarks.md)."""
        weak = tokens_per_param is not None and tokens_per_param < WEAK_SOURCE_TOKENS_PER_PARAM
        width_lr = self.width_lr if self.width_lr != "auto" else "uniform" if weak else "fan_in"
        if self.depth_map is not None:  # an explicit layout: the plan's width keeps it, split when auto
            return replace(self, width="split" if self.width == "auto" else self.width, depth="map", width_lr=width_lr)
        width = self.width if self.width != "auto" else "random" if weak and self.depth != "identity" else "split"
        depth = self.depth if self.depth != "auto" else "stack" if weak or width == "random" else "identity"
        return replace(self, width=width, depth=depth, width_lr=width_lr)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.depth_map is not None:
            from .depthmap import depth_map_items

            depth_map_items(self.depth_map)  # its syntax, at once
            if self.depth not in ("auto", "map"):
                raise LigoError(f"growth plan: give --depth {self.depth} or --depth-map, not both (a depth map says "
                                "what every target layer is)")
        elif self.depth != "auto" and DEPTH[self.depth].needs_map:
            raise LigoError(f"growth plan: depth {self.depth} needs --depth-map (e.g. 0-23,8-31); or choose another "
                            "--depth")
        if self.drop_layers and self.depth_map is None:
            raise LigoError("growth plan: --drop-layers lets a depth map leave source layers out, and there is no "
                            "--depth-map; give one, or drop --drop-layers")


PLAN_KEYS = {f.name for f in fields(GrowthPlan)} - {"seed"}
@dataclass
class DataConfig(Settings):
    """Where the training text comes from (see ``ligo.data``)."""

    WHERE = "data"

    data: Optional[str] = setting(None, "training text: a file or folder of text (.txt, .py, ...), .jsonl/.json, "
                                  ".parquet or .arrow files, a Dataset.save_to_disk folder, or a dataset name "
                                  "(default: the Python standard library's own source)")
    data_config: Optional[str] = setting(None, "the dataset's configuration (for a dataset name)")
    data_split: str = setting("train", "the split to read")
    text_column: str = setting("text", "the column holding the text")
    streaming: bool = setting(False, "stream the dataset and read only the tokens the run needs (corpora larger "
                              "than memory)")
    num_proc: Optional[int] = setting(None, "processes for tokenization (default: up to 8 for large datasets)", low=1)

    @classmethod
    def of(cls, data: "DataConfig | str | None") -> "DataConfig":
        if isinstance(data, DataConfig):
            return data
        return cls(data=None if data is None else str(data))


@dataclass
class GrowthStage(Settings):
    """Growth in the middle of a run: after step ``at``, the model, its optimizer state and the run
    continue as the grown model (``ligo train --grow-at``, or a list of stages in a file)."""

    WHERE = "growth stage"

    at: int = setting(0, "grow after this optimizer step (0: no mid-run growth)", low=0)
    target: dict = setting({}, "target sizes, as for ligo grow --target (a JSON object)")
    width: str = setting("split", "width init of the stage's operator", choices=lambda: tuple(WIDTH))
    depth: str = setting("identity", "depth init of the stage's operator",
                         choices=lambda: tuple(n for n, d in DEPTH.items() if not d.needs_map))
    split_noise: float = setting(0.5, "split: how unequal the copies' read shares are", low=0, high=0.99)
    optimizer_state: Literal["grow", "reset"] = setting(
        "grow", "AdamW state: grow it through the operator (moments and step counts kept), or reset it")
    fit_steps: int = setting(0, "operator fit steps on the training data before the grown model continues", low=0)
    fit_lr: float = setting(FIT_DEFAULTS["lr"], "the stage fit's peak LR", positive=True)

    def plan(self, seed: int = 0) -> GrowthPlan:
        """The stage's concrete plan (a stage's fit steps the width maps uniformly, as the staged runs measured)."""
        return GrowthPlan(width=self.width, depth=self.depth, split_noise=self.split_noise, seed=seed,
                          width_lr="uniform")

