"""Training a model: continued pretraining of a checkpoint, or a config from scratch, with growth in the middle
of the run. :func:`train` is the API's verb behind ``ligo train``; :func:`train_in` trains inside a folder the
caller owns (the grow -> fit -> train path of ``grow-train`` and ``bench`` hands it the grown model).

A run is set up once (:class:`_Run`: what it trains, on which blocks, with what it already cost), trained phase
by phase (a phase ends at the next growth stage, where the checkpoint is grown and the run goes on as the grown
model), and saved with its recipe and FLOPs ledger.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .checkpoint import check_finite, check_tokenizer_fits, describe_checkpoint, load_tokenizer, read_config
from .config import LR_FROM_SCRATCH, LR_PRETRAINED, DataConfig, TrainConfig
from .errors import LigoError, Preempted, as_user_error, brief
from .hf import build_config, check_model_memory, model_class
from .launch import check_batch, is_main_process
from .loop import LoopResult, make_collate, train_loop
from .moe import train_router
from .outputs import RunOutput
from .records import GrowthRecord, Ledger, TrainingRecord, load_recipe
from .rundir import MANIFEST, data_digest, latest_checkpoint, read_state


@dataclass
class Start:
    """How a training run starts besides its checkpoint, and what its caller already holds in memory."""

    from_config: str | Path | dict | None = None  # train from scratch: a config.json (or a config mapping)
    tokenizer: Any = None  # a tokenizer directory, or the tokenizer itself (default: the model directory's)
    attn_implementation: str | None = None
    stages: list = field(default_factory=list)  # mid-run growth (:class:`ligo.config.GrowthStage`)
    blocks: Any = None  # the token blocks, already read (default: read from ``data``)
    prior: Ledger | None = None  # the FLOPs already spent (default: from the model's recipe)
    inputs: tuple = ()  # other files the caller read (a stages file): the output must not be or hold them


@dataclass
class TrainResult:
    out: Path
    loop: LoopResult
    ledger: Ledger


@dataclass
class Model:
    """A model to train, described once: its folder, config, table, sizes and record (a grown model hands these
    over as the grower knows them; a folder is described from its headers and its recipe, read once)."""

    path: Path | None
    config: dict
    spec: Any
    dims: Any
    record: GrowthRecord | TrainingRecord | None = None  # its ligo_recipe.json (None: from elsewhere, or scratch)

    @classmethod
    def of(cls, model, from_config) -> "Model":
        from .tables import get_spec

        if isinstance(model, Model):
            return model
        if model is not None:
            ck = describe_checkpoint(model)  # validates without reading the weights: from_pretrained reads them
            if not ck.has_head:
                raise LigoError(f"{model} is a bare model without an LM head; train its *ForCausalLM/*ForMaskedLM "
                                "form")
            return cls(Path(model), ck.config, ck.spec, ck.dims, load_recipe(model))
        config = from_config if isinstance(from_config, dict) else read_config(from_config)
        if not config.get("model_type"):
            raise LigoError(f"the config {from_config if not isinstance(from_config, dict) else ''} has no model_type; "
                            "--from-config needs a full config.json, such as the grown model's")
        spec = get_spec(config.get("model_type"))
        return cls(None, config, spec, spec.dims(config))


def train(model: str | Path | None, data: DataConfig | str | Path | None, out: str | Path, cfg: TrainConfig,
          start: Start | None = None, *, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Continue pretraining ``model`` (a checkpoint dir), or train ``start.from_config`` from scratch, into ``out``.

    ``out`` receives ``run.json``, ``log.jsonl``, ``checkpoints/`` and, at the end, the trained model
    (config.json last, so a directory with a config.json always holds a complete model). ``start.stages``
    grow the model in the middle of the run: after step ``at`` the checkpoint is grown (weights and
    optimizer state) and training continues as the grown model, with one log and one FLOPs ledger.
    SIGTERM or Ctrl-C checkpoints the step in progress and raises :class:`ligo.errors.Preempted`;
    ``resume=True`` continues from wherever a stop or a kill left the run.
    """
    start, data = start or Start(), DataConfig.of(data)
    check_batch(cfg.batch_size)
    from_file = None if isinstance(start.from_config, dict) else start.from_config
    tokenizer_dir = start.tokenizer if isinstance(start.tokenizer, (str, Path)) else None
    output = RunOutput(out, overwrite=overwrite, resume=resume,
                       inputs=[model, from_file, tokenizer_dir, data.data, *start.inputs])
    try:
        if resume and latest_checkpoint(output.work) is None:
            raise LigoError(f"--resume: {output.final} holds no complete checkpoint; start without --resume")
        try:
            result = train_in(output.work, model, data, cfg, start, resume=resume, final=output.final)
        except BaseException:
            if latest_checkpoint(output.work) is None:  # nothing worth resuming: leave nothing behind
                output.discard()
            raise
        if is_main_process():
            output.commit()
        return TrainResult(output.final, result.loop, result.ledger)
    finally:
        output.release()


def train_in(work: Path, model, data: DataConfig, cfg: TrainConfig, start: Start, *, resume: bool = False,
             final: Path | None = None) -> TrainResult:
    """Train in the folder ``work`` (the caller owns it: its checks, its lock, what a failure leaves behind).
    ``model``: a checkpoint folder, a :class:`Model` already described, or None with ``start.from_config``."""
    from .outputs import make_dir

    run = _Run.set_up(Path(work), final or Path(work), model, data, cfg, start, resume)
    make_dir(run.work)
    result, current, per_step = run.phases(resume)
    ledger = run.prior.after_run(result.flops - run.prior.spent, flops_per_step=per_step, steps=result.steps,
                                 wall_s=result.wall, final_val_loss=result.final_val, throughput=result.throughput)
    if result.status == "preempted":
        raise Preempted(run.work, result.steps)
    trained = run.model if current == run.model.path else Model.of(current, None)  # (grown in the middle of the run)
    growth = trained.record if isinstance(trained.record, GrowthRecord) else None  # the card says how it was grown
    _finish(result, run.tok, run.work, run.record(ledger), growth)
    return TrainResult(run.work, result, ledger)


@dataclass
class _Run:
    """What a run trains and on what, set up once: checked before any training."""

    work: Path
    model: Model
    data: DataConfig
    cfg: TrainConfig
    start: Start
    tok: Any
    tok_dir: Path | None
    blocks: Any
    prior: Ledger
    stages: list
    manifest: dict
    new_layers: list | None = None  # with a freeze: the layers growth added (the grown model's recipe says)
    pretrained: bool = False  # a pretrained checkpoint, or grown from one: the LR default follows it
    lr_rule: str = "given"  # how the peak LR was chosen

    @classmethod
    def set_up(cls, work: Path, final: Path, model, data: DataConfig, cfg: TrainConfig, start: Start,
               resume: bool) -> "_Run":
        from .data import load_blocks, tokens_to_read

        from_config = start.from_config
        tokenizer = start.tokenizer if isinstance(start.tokenizer, (str, Path)) or start.tokenizer is None else None
        if resume and model is None and from_config is None:
            model, from_config, tokenizer, data = _manifest(work, final, tokenizer, data)
        if (model is None) == (from_config is None):
            raise LigoError("give either a model directory or --from-config (a config for training from scratch)")
        described = Model.of(model, from_config)
        check_model_memory(described.spec.objective, read_config(described.path) if described.path else described.config,
                           "use a machine with more memory" if described.path else "choose a smaller config")
        tok_obj = None if tokenizer is not None or start.tokenizer is None else start.tokenizer
        if described.path is None and tokenizer is None and tok_obj is None:
            raise LigoError("--from-config needs --tokenizer DIR (a directory with the tokenizer files)")
        tok_dir = Path(tokenizer or described.path) if tokenizer or described.path else None
        prior = start.prior or (described.record.carried_ledger() if described.record else Ledger())
        pretrained = _pretrained(described)
        lr_rule = "given"
        if cfg.lr is None:  # the default peak LR follows what the model is (the rule the real checkpoint measured)
            cfg = cfg.replace(lr=LR_PRETRAINED if pretrained else LR_FROM_SCRATCH)
            lr_rule = (f"default {cfg.lr:g}: " + ("a pretrained checkpoint or grown from one" if pretrained else
                                                 "from scratch, or from a weak source ligo trained"))
        stages = sorted(start.stages, key=lambda st: st.at)
        _check_stages(stages, described, cfg)
        new_layers = _new_layers(described, cfg, stages)
        tok = tok_obj or load_tokenizer(tok_dir)
        check_tokenizer_fits(tok, described.dims.vocab, tok_dir or "the run")
        positions = described.dims.positions
        if positions is not None and cfg.seq_len > positions:
            raise LigoError(f"seq_len {cfg.seq_len} exceeds the model's {positions} positions; lower --seq-len")
        blocks = start.blocks  # with streaming, read only what the run will use (and its held-out share)
        blocks = blocks if blocks is not None else load_blocks(data, tok, cfg.seq_len, max_tokens=tokens_to_read(cfg))
        from_file = None if isinstance(from_config, dict) else from_config
        manifest = {"ligo_version": __version__, "model": None if described.path is None else str(described.path),
                    "from_config": str(from_file) if from_file else None,
                    "tokenizer": str(tok_dir) if tok_dir else None, "data": data.to_dict(),
                    "stages": [st.to_dict() for st in stages],
                    "config": described.config if isinstance(from_config, dict) else None}  # a config as a mapping
        run = cls(work, described, data, cfg, start, tok, tok_dir, blocks, prior, stages, manifest, new_layers)
        run.pretrained, run.lr_rule = pretrained, lr_rule
        return run

    def phases(self, resume: bool) -> tuple[LoopResult, Path | None, float]:
        """Train phase by phase: a phase ends at the next growth stage, where the checkpoint is grown and the
        run goes on as the grown model. Returns the last phase's result, the model it trained and its cost."""
        from .flops import step_flops
        from .rungrowth import grow_in_place

        cfg, model = self.cfg, self.model
        collate, digest = make_collate(model.spec.objective, self.tok), data_digest(self.blocks.train, self.blocks.val)
        while True:
            ck = latest_checkpoint(self.work) if resume else None
            state = read_state(ck) if ck else {}
            done, current = state.get("stages_done", []), Path(state["model"]) if state.get("model") else model.path
            upcoming = next((st for st in self.stages if st.at not in done), None)
            if upcoming is not None and state.get("step", 0) >= upcoming.at:  # paused there, not grown yet
                grow_in_place(self.work, upcoming.target, upcoming.plan(cfg.seed),
                              optimizer_state=upcoming.optimizer_state, fit=_stage_fit(upcoming, cfg),
                              blocks=self.blocks, info={"stages_done": [*done, upcoming.at]})
                resume = True
                continue
            net_model = model if current == model.path else Model.of(current, None)
            net = _build_model(net_model, cfg, self.start.attn_implementation)
            if self.new_layers is not None:
                freeze(net, net_model.spec, cfg.freeze, self.new_layers)
            per_step = step_flops(net, net_model.dims, cfg, layer_of=layer_index(net_model.spec))
            result = train_loop(net, self.blocks.train, self.blocks.val, cfg, collate=collate,
                                flops_per_step=per_step, flops_offset=self.prior.spent, run_dir=self.work,
                                resume=resume, desc="train", data_digest=digest, manifest=self.manifest,
                                stop_at=upcoming.at if upcoming else None,
                                checkpoint_info={"model": None if current is None else str(current),
                                                 "stages_done": done})
            if result.status != "paused":
                return result, current, per_step
            resume = True

    def record(self, ledger: Ledger) -> TrainingRecord:
        from .modelcard import data_name, model_name

        model, data = self.model, self.data
        from_config = self.manifest["from_config"] or ("<dict>" if model.path is None else None)
        return TrainingRecord(objective=model.spec.objective, model_type=model.spec.model_type,
                              model=model_name(model.path, model.config if model.path else None),
                              from_config=from_config, data=data_name(data),
                              data_config={**data.to_dict(), "data": data_name(data)}, config=self.cfg.to_dict(),
                              stages=self.manifest["stages"], ledger=ledger, pretrained=self.pretrained,
                              lr_rule=self.lr_rule)


def _manifest(work: Path, final: Path, tokenizer, data: DataConfig) -> tuple:
    """With --resume and no model given, what the run was started with (from its run.json)."""
    try:
        m = json.loads((work / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        raise LigoError(f"give a model directory or --from-config (the run in {final} has no readable "
                        f"{MANIFEST} to resume from)") from None
    saved = m.get("data")
    if data.data is None and saved:
        data = DataConfig.from_dict(saved) if isinstance(saved, dict) else DataConfig.of(saved)
    return m.get("model"), m.get("from_config"), tokenizer or m.get("tokenizer"), data


def _check_stages(stages: list, model: Model, cfg: TrainConfig) -> None:
    """Mid-run growth stages checked before any training: inside the run, in order, valid targets."""
    from .hf import known_config_keys
    from .maps import check_growth
    from .rungrowth import check_live_growth

    spec, before, current = model.spec, 0, model.config
    for st in stages:
        if not 0 < st.at < cfg.steps or st.at <= before:
            raise LigoError(f"growth stage at step {st.at} must lie inside the run (1..{cfg.steps - 1}) and after the "
                            "previous stage")
        if not st.target:
            raise LigoError(f"growth stage at step {st.at} has no target; give --grow-target")
        check_live_growth(spec, st.target, f"growth stage at step {st.at}")
        grown = spec.target_config(current, st.target, known_config_keys(spec.model_type))
        check_growth(spec, spec.dims(current), spec.dims(grown, where="growth stage target"))
        check_model_memory(spec.objective, grown, f"choose a smaller target for the growth stage at step {st.at}")
        before, current = st.at, grown


def _pretrained(model: Model) -> bool:
    """Is ``model`` a pretrained checkpoint or made from one? A checkpoint from elsewhere is; ligo's records say
    for what ligo made (a grown model: its source; a trained one: what it trained); from scratch it is not."""
    if model.path is None:
        return False
    return True if model.record is None else model.record.pretrained


def _new_layers(model: Model, cfg: TrainConfig, stages: list) -> list[int] | None:
    """With ``cfg.freeze``: the layers growth added to ``model``, from its recipe (checked before any training)."""
    if cfg.freeze == "none":
        return None
    if stages:
        raise LigoError("--freeze trains only what growth added to a grown model; it does not combine with growth "
                        "in the middle of the run (--grow-at, --stages)")
    if model.path is None:
        raise LigoError(f"--freeze {cfg.freeze} trains only the layers growth added to a grown model; a model trained "
                        "from scratch (--from-config) has none: drop --freeze")
    new = model.record.new_layers if isinstance(model.record, GrowthRecord) else None
    if new is None:
        raise LigoError(f"--freeze {cfg.freeze} needs a model that ligo grew: its recipe says which layers are new, "
                        f"and {model.path} has none (grow it with ligo grow, or train without --freeze)")
    layers = model.dims.layers
    valid = isinstance(new, list) and all(type(i) is int and 0 <= i < layers for i in new)  # (type: not a bool)
    if not valid or len(set(new)) != len(new):
        raise LigoError(f"--freeze {cfg.freeze}: the recipe of {model.path} (ligo_recipe.json) says new_layers is "
                        f"{brief(new)}, which is no list of distinct layers of this {layers}-layer model (0-"
                        f"{layers - 1}); the recipe was edited or belongs to another model: grow the model again, or "
                        "train without --freeze")
    if not new:
        raise LigoError(f"--freeze {cfg.freeze}: {model.path} was grown without new layers (in width only), so there "
                        "is nothing to train alone; train it without --freeze")
    return list(new)


def layer_index(spec):
    """A function from a parameter's (or module's) name to its layer, None outside the layers."""
    import re

    pattern = re.compile(f"(?:{re.escape(spec.base_prefix)})?" +
                         re.escape(spec.layer_prefix).replace(re.escape("{i}"), r"(\d+)"))

    def layer_of(name: str) -> int | None:
        m = pattern.match(name)
        return int(m.group(1)) if m else None

    return layer_of


def freeze(net, spec, mode: str, new_layers: list[int]) -> None:
    """Train only what growth added: ``source-layers`` freezes the layers that came from the source (the new
    layers, the embeddings and the head train); ``all-but-new`` freezes everything but the new layers and the
    norms. Frozen parameters take no gradient and hold no optimizer state."""
    layer_of, new = layer_index(spec), set(new_layers)
    norms = {f"{name}.{p}" for name, module in net.named_modules() if "Norm" in type(module).__name__
             for p, _ in module.named_parameters(recurse=False)}
    for name, p in net.named_parameters():
        layer = layer_of(name)
        keep = layer is None or layer in new if mode == "source-layers" else layer in new or name in norms
        p.requires_grad_(keep)


def _stage_fit(stage, cfg: TrainConfig) -> TrainConfig | None:
    from .config import fit_config, inherited

    return fit_config({"steps": stage.fit_steps, "lr": stage.fit_lr, **inherited(cfg), "progress": cfg.progress},
                      where="growth stage fit")


def _build_model(model: Model, cfg: TrainConfig, attn_implementation: str | None):
    # (a vision-language checkpoint is trained on text as the image-text-to-text model it is)
    cls = model_class(model.spec.objective, read_config(model.path).get("model_type") if model.path else None)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if model.path is not None:
        net = cls.from_pretrained(str(model.path), dtype=torch.float32, use_safetensors=True, trust_remote_code=False,
                                  local_files_only=True, **kwargs)
        check_finite(dict(net.named_parameters()), model.path)
    else:
        torch.manual_seed(cfg.seed)
        hf_config = build_config(model.config)
        if attn_implementation:
            hf_config._attn_implementation = attn_implementation
        net = cls.from_config(hf_config)
    train_router(net)
    return net


def _finish(result: LoopResult, tokenizer, work: Path, recipe: TrainingRecord, growth: GrowthRecord | None
            ) -> None:
    """Save the trained model (the main process; the state gathered from every process)."""
    acc = result.accelerator
    acc.wait_for_everyone()
    state = result.weights()  # (a sharded model's are gathered onto the main process)
    if is_main_process():
        _save_final(acc.unwrap_model(result.model), state, tokenizer, work, recipe, growth)
    acc.wait_for_everyone()


def _save_final(model, state: dict, tokenizer, out: Path, recipe: TrainingRecord, growth: GrowthRecord | None
                ) -> None:
    """Write the trained model into its run folder (config.json last), or say in one line what failed and
    whether a checkpoint is left to resume from."""
    from .writer import write_model

    try:
        write_model(out, weights=lambda folder: model.save_pretrained(folder, state_dict=state, safe_serialization=True),
                    config=None, tokenizer=tokenizer, recipe=recipe, growth=growth, into_run=True)
    except Exception as exc:
        error = as_user_error(exc, f"saving the model into {out}")
        if error is None:
            raise
        if latest_checkpoint(out) is not None:
            raise LigoError(f"{error} with --resume (the checkpoints are intact)") from None
        raise LigoError(f"{error}; no checkpoint was kept to resume from (--save-every N keeps them), so run it "
                        "again") from None
