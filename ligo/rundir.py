"""A run directory: its log, its checkpoints and what it was started with.

    RUN/run.json                     what the run trains: model, tokenizer, data (written at the start)
    RUN/log.jsonl                    one line per optimizer step (val_loss on evaluation steps)
    RUN/checkpoints/step-NNNNNNN/    complete checkpoints only: accelerate's save_state files plus
                                     trainer_state.json (counters, FLOPs, evaluations, settings, a
                                     digest of the data and a sha256 of every file); a sharded run
                                     (``--fsdp``) keeps its model and optimizer state in shards/, each
                                     rank's own shards (:mod:`ligo.sharding`)

A checkpoint is written under ``.step-NNNNNNN.tmp`` and renamed when complete, so a crash never leaves
a partial checkpoint under a final name. ``--resume`` verifies the digests (a changed file is refused)
and that the settings and data that shape the trajectory are the ones the run started with.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from .errors import LigoError, as_user_error
from .launch import barrier, is_main_process

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
LOG_FILE = "log.jsonl"
MANIFEST = "run.json"
# accelerate's save_state layout, named once (tests/test_train.py checks them against accelerate's constants)
WEIGHTS_FILE = "model.safetensors"  # SAFE_WEIGHTS_NAME
OPTIMIZER_FILE = "optimizer.bin"  # OPTIMIZER_NAME + ".bin"
MASTERS_FILE = "custom_checkpoint_0.pkl"  # the first object registered for checkpointing: the fp32 master weights
CARRIED_PREFIXES = ("random_states", "scaler")  # RNG_STATE_NAME, SCALER_NAME: carried over as they are
# settings that may change on --resume (the rest shape the trajectory and must match)
RESUMABLE_CHANGES = {"steps", "eval_every", "save_every", "keep_last", "log_every", "progress", "trackers",
                     "compile", "grad_checkpointing", "peak_tflops", "patience", "mixed_precision"}
# (weights_dtype is not among them: the checkpoint's optimizer state is over other tensors in each case)


def data_digest(*tensors) -> str:
    """A short digest of token blocks (the training and held-out data a run sees)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def file_digests(folder: Path, skip: tuple[str, ...] = (STATE_FILE,)) -> dict[str, str]:
    """sha256 of every file in ``folder`` (but ``skip``): a checkpoint's are written with it and checked on
    resume (its state file aside); a benchmark's pretrained source's are checked on resume too."""
    out = {}
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name not in skip):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
        out[str(f.relative_to(folder))] = h.hexdigest()
    return out


def checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE_FILE).exists())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = checkpoints(Path(run_dir))
    return found[-1] if found else None


def read_state(ckpt: Path) -> dict:
    """A checkpoint's trainer state, after checking that no file was changed, added or cut since."""
    try:
        state = json.loads((ckpt / STATE_FILE).read_text())
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError("no step")
    except (OSError, ValueError) as exc:
        raise LigoError(f"--resume: {ckpt / STATE_FILE} is unreadable or cut short ({str(exc)[:60]}); delete "
                        f"{ckpt} to resume from an earlier checkpoint") from None
    if "files" in state and file_digests(ckpt) != state["files"]:
        raise LigoError(f"--resume: {ckpt} was modified or corrupted after it was written (file digests differ); "
                        "ligo loads only checkpoints it wrote: delete it to resume from an earlier one")
    return state


def check_resumable(state: dict, config: dict, digest: str | None, ckpt: Path) -> None:
    """Refuse a resume whose settings or data differ from the run's (the curve would change mid-way)."""
    old = state.get("config") or {}
    changed = sorted(k for k in old if k not in RESUMABLE_CHANGES and k in config and old[k] != config[k])
    if changed:
        diffs = ", ".join(f"{k} {old[k]!r} -> {config[k]!r}" for k in changed)
        raise LigoError(f"--resume: the run in {ckpt.parent.parent} was started with other settings ({diffs}); "
                        "pass the original values, or start a new run (another --out, or --overwrite)")
    if digest is not None and state.get("data") not in (None, digest):
        raise LigoError(f"--resume: the data differs from the data the run in {ckpt.parent.parent} was started with "
                        "(another corpus, tokenizer or sequence length); pass the original --data, or start a new run")


class RunDir:
    """Log and checkpoints of one run; only the main process writes (``path`` None: nothing is kept), but for the
    files of each process: its RNG state, and in a sharded run (``shards``: the model and its optimizer) its shards
    of both."""

    def __init__(self, path: str | Path | None, accelerator, shards: tuple | None = None):
        self.path = Path(path) if path is not None else None
        self.acc = accelerator
        self.shards = shards

    @property
    def writes(self) -> bool:
        return self.path is not None and is_main_process()

    # -- log ----------------------------------------------------------------------------------
    def read_log(self) -> list[dict]:
        path = self.path / LOG_FILE
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash
                break
        return rows

    def start_log(self, rows: list[dict]) -> None:
        """Write the log anew with ``rows`` (atomically)."""
        if self.writes:
            self.path.mkdir(parents=True, exist_ok=True)
            tmp = self.path / (LOG_FILE + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
            os.replace(tmp, self.path / LOG_FILE)

    def append_log(self, rows: list[dict]) -> None:
        if self.writes and rows:
            with open(self.path / LOG_FILE, "a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in rows))

    def write_manifest(self, data: dict) -> None:
        if self.writes:
            (self.path / MANIFEST).write_text(json.dumps(data, indent=2, default=str) + "\n")

    # -- checkpoints ----------------------------------------------------------------------------
    def save(self, state: dict, keep_last: int) -> None:
        """``accelerator.save_state`` plus ``state`` into checkpoints/step-N, complete or not at all."""
        if self.path is None:
            return
        acc, step = self.acc, state["step"]
        root = self.path / CHECKPOINTS
        final, tmp = root / f"step-{step:07d}", root / f".step-{step:07d}.tmp"
        where = f"the checkpoint of step {step}"
        if is_main_process():
            shutil.rmtree(tmp, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)
        barrier(where)
        try:
            acc.save_state(str(tmp), safe_serialization=True)
            if self.shards is not None:
                from .sharding import SHARDS, save_shards

                save_shards(tmp / SHARDS, *self.shards)
            barrier(where)  # every rank's files are written before they are hashed
            if is_main_process():
                (tmp / STATE_FILE).write_text(json.dumps({**state, "files": file_digests(tmp)}))
        except Exception as exc:  # disk full, quota, file-size limit...: the partial checkpoint never gets its name
            error = as_user_error(exc, f"writing the checkpoint for step {step}", where=root)
            if error is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            last = latest_checkpoint(self.path)
            raise LigoError(f"{error}" + (f" with --resume (the last complete checkpoint is {last})" if last else "")
                            ) from None
        if is_main_process():
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in checkpoints(self.path)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        barrier(where)

    def restore(self, config: dict, digest: str | None) -> dict:
        """Load the newest complete checkpoint into the prepared objects; its trainer state."""
        ckpt = latest_checkpoint(self.path) if self.path is not None else None
        if ckpt is None:
            raise LigoError(f"--resume: no complete checkpoint under {self.path}; start without --resume")
        state = read_state(ckpt)
        check_resumable(state, config, digest, ckpt)
        check_pickles(ckpt)
        from .sharding import SHARDS, load_shards

        if (ckpt / SHARDS).is_dir() != (self.shards is not None):
            how = ("sharded (written by a run with --fsdp)", "without --fsdp") if (ckpt / SHARDS).is_dir() else (
                "not sharded", "with --fsdp")
            raise LigoError(f"--resume: {ckpt} is {how[0]}, and this run trains {how[1]}; resume it as it was "
                            "started")
        self.acc.load_state(str(ckpt))
        if self.shards is not None:
            load_shards(ckpt / SHARDS, *self.shards)
        return state


def check_pickles(ckpt: Path) -> None:
    """Open every pickle of a checkpoint with ``weights_only=True`` before accelerate does: accelerate
    skips an RNG state it cannot load without a word (the resumed run would silently differ) and loads
    registered custom objects with ``weights_only=False``. A sharded checkpoint's metadata (a pickle that
    torch opens without limits) is opened knowing only its record types."""
    import warnings

    from accelerate.utils import load

    from .sharding import SHARDS, check_metadata

    if (ckpt / SHARDS).is_dir():
        check_metadata(ckpt / SHARDS)

    for f in sorted(p for p in ckpt.rglob("*") if p.suffix in (".pkl", ".bin", ".pt")):
        try:
            with warnings.catch_warnings():  # torch's weights_only warning would come before ligo's one line
                warnings.simplefilter("ignore")
                load(f, map_location="cpu")
        except Exception as exc:  # UnpicklingError, or anything else a crafted file raises
            raise LigoError(f"--resume: {f} is not plain tensors ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:60]}); ligo never unpickles code: delete {ckpt} to resume "
                            "from an earlier checkpoint") from None


class Preemption:
    """SIGTERM (cluster preemption) or Ctrl-C sets a flag; the loop checkpoints at the end of the step and
    stops. A second Ctrl-C interrupts at once. Disabled (``enabled=False``) where there is nowhere to
    checkpoint: the signals then act as they do outside the loop."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, enabled: bool = True) -> None:
        self.requested = False
        self.enabled = enabled
        self._old: dict = {}

    def __enter__(self) -> "Preemption":
        if not self.enabled:
            return self
        try:
            self._old = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        except ValueError:  # not the main thread
            self._old = {}
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
