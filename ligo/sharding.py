"""Sharded training (``--fsdp``): the model's parameters, gradients and AdamW state split over the processes of a
launch with torch's FSDP2.

One path for CPUs and GPUs: ligo applies ``fully_shard`` itself, to every decoder (or encoder) layer -- the classes
the model names in ``_no_split_modules`` -- and then to the root, over a one-dimensional
``init_device_mesh(device_type, (world,))`` on the process group that accelerate set up for the launch (gloo on
CPUs, NCCL on GPUs). accelerate's own FSDP plugin is not used: accelerate takes its FSDP mode only on accelerator
devices (on a CPU an FSDP config silently runs as DDP), so the path CI runs on CPU processes could not be the path
a GPU runs. The loop then keeps accelerate for what is the same either way (the process group, the data split,
``accumulate``, ``backward``, the RNG states in checkpoints, the metrics).

A sharded checkpoint holds the model and the optimizer state in ``shards/``, written by
``torch.distributed.checkpoint`` (each rank its own shards, plus one metadata file), next to accelerate's files (the
RNG state of every rank). ``torch.distributed.checkpoint`` reshards on load, so a run grown offline (one process,
full tensors) resumes on any number of processes. Its metadata file is a pickle: it is opened with an unpickler
that knows only the checkpoint's own record types before torch reads it (ligo never unpickles code).
"""

from __future__ import annotations

import contextlib
import io
import pickle
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import LigoError

SHARDS = "shards"  # a sharded checkpoint's torch.distributed.checkpoint folder
METADATA = ".metadata"  # torch.distributed.checkpoint's metadata file in it


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def layer_classes(model: nn.Module) -> set[str]:
    """The class names of the modules to shard one by one: the model's ``_no_split_modules`` that it holds."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return {type(m).__name__ for m in model.modules() if type(m).__name__ in names}


def check_shardable(model: nn.Module, cfg, accelerator) -> None:
    """Refuse, in one line, a sharded run that ligo does not run: one without a process group, a model without
    layers to shard, and the settings whose state is not sharded."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise LigoError("--fsdp shards the model over the processes of a launch, and this process was started alone; "
                        "launch it with torchrun --nproc_per_node N -m ligo ... (or accelerate launch), or train "
                        "without --fsdp")
    if not layer_classes(model):
        raise LigoError(f"--fsdp shards a transformers model layer by layer (its _no_split_modules), and "
                        f"{type(model).__name__} names none it holds; train it without --fsdp")
    if cfg.weights_dtype != "float32":
        raise LigoError("--weights-dtype bfloat16 keeps a full fp32 master copy of every weight in each process, "
                        "which sharding cannot split; with --fsdp keep --weights-dtype float32 (with "
                        "--mixed-precision bf16 for bf16 compute)")
    if cfg.mixed_precision == "fp16" or (cfg.mixed_precision == "auto" and _launch_precision() == "fp16"):
        raise LigoError("--fsdp trains in fp32 or with bf16 autocast; fp16 needs a gradient scaler over sharded "
                        "gradients, which ligo has not run: use --mixed-precision bf16 (or no)")


def _launch_precision() -> str | None:
    import os

    return os.environ.get("ACCELERATE_MIXED_PRECISION")


def shard_model(model: nn.Module, device: torch.device) -> nn.Module:
    """FSDP2 over every process of the launch: ``fully_shard`` on each layer, then on the root (the embeddings,
    the final norm and the head); the parameters become DTensors. ``fully_shard`` moves each unit to the mesh's
    device as it shards it, so a GPU holds one whole layer at most, never the whole model."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    layers = layer_classes(model)
    for module in list(model.modules()):
        if type(module).__name__ in layers:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optim": optim_state}


def save_shards(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank writes its shards of the model and the optimizer state into ``folder`` (a collective)."""
    import torch.distributed.checkpoint as dcp

    _unwrapped(lambda: dcp.save(_state(model, optimizer), checkpoint_id=str(folder)))


def load_shards(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """The model and optimizer state of ``folder`` into the sharded ``model`` and ``optimizer`` (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    check_metadata(folder)
    state = _state(model, optimizer)
    _load(lambda planner: dcp.load(state, checkpoint_id=str(folder), planner=planner), folder)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def _plain_planner():
    """torch's load planner, but for the entries that are not tensors (the optimizer's hyper-parameters), which
    torch unpickles without limits: each is read as plain data first, and one that is not stops the load."""
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class PlainLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value):
            torch.load(value, weights_only=True)
            value.seek(0)
            super().load_bytes(read_item, value)

    return PlainLoadPlanner()


def _unwrapped(call):
    """``call()``, but a ``CheckpointException`` (torch's BaseException that carries each rank's error, which
    ``except Exception`` would let through) raised as the first rank's error itself (a full disk: an OSError)."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        return call()
    except CheckpointException as exc:
        errors = [pair[0] if isinstance(pair, tuple) else pair for pair in exc.failures.values()]
        error = next((e for e in errors if isinstance(e, Exception)), None)
        if error is None:
            raise RuntimeError(str(exc).strip().splitlines()[-1]) from None
        raise error from None


def _load(call, folder: Path) -> None:
    try:
        _unwrapped(lambda: call(_plain_planner()))
    except Exception as exc:
        text = str(exc)
        if "Weights only load failed" not in text and "UnpicklingError" not in text and \
                not isinstance(exc, pickle.UnpicklingError):
            raise
        raise LigoError(f"{folder} holds an entry that is not plain data; ligo never unpickles code: delete "
                        f"{Path(folder).parent} to resume from an earlier checkpoint") from None


def full_state_dict(model: nn.Module) -> dict:
    """The whole model's weights gathered on the main process (on CPU); an empty dict on the others (a
    collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


# -- read and write a sharded checkpoint in one process (growing a run offline) ---------------------------------
def read_shards(folder: Path) -> tuple[dict, dict]:
    """(weights, optimizer state) of a sharded checkpoint as full tensors, in one process. The optimizer state is
    keyed by parameter name: ``{"state": {name: {...}}, "param_groups": [{..., "params": [names]}]}``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = check_metadata(folder)
    state: dict = {}
    for key, entry in metadata.state_dict_metadata.items():  # the saved structure, its tensors allocated
        path = metadata.planner_data.get(key) or (key,)
        value = torch.empty(tuple(entry.size), dtype=entry.properties.dtype) if isinstance(
            entry, TensorStorageMetadata) else None
        _put(state, path, value)
    with _one_process():
        _load(lambda planner: dcp.load(state, storage_reader=dcp.FileSystemReader(str(folder)), planner=planner,
                                       no_dist=True), folder)
    if set(state) != {"model", "optim"}:
        raise LigoError(f"{folder} is not a sharded checkpoint of ligo train (it holds {sorted(state)[:4]}, not the "
                        "model and the optimizer state)")
    return state["model"], state["optim"]


def _put(tree: dict | list, path: tuple, value) -> None:
    """``tree[path[0]][path[1]]... = value``, making the dicts and lists on the way (a list for an integer key)."""
    *inner, last = path
    for key, after in zip(inner, [*inner[1:], last]):
        empty = [] if isinstance(after, int) else {}
        if isinstance(tree, list):
            while len(tree) <= key:
                tree.append(None)
            tree[key] = tree[key] if tree[key] is not None else empty
        else:
            tree.setdefault(key, empty)
        tree = tree[key]
    if isinstance(tree, list):
        while len(tree) <= last:
            tree.append(None)
    tree[last] = value


def write_shards(folder: Path, weights: dict, optim: dict) -> None:
    """Full tensors as a sharded checkpoint (one process: one shard); a launch of any size resumes from it."""
    import torch.distributed.checkpoint as dcp

    with _one_process():
        _unwrapped(lambda: dcp.save({"model": weights, "optim": optim}, storage_writer=dcp.FileSystemWriter(str(folder)),
                                    no_dist=True))


@contextlib.contextmanager
def _one_process():
    """Quiet torch's note that a checkpoint is read or written by one process: here that is what is meant."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to (save|load) in a single process")
        yield


# -- the metadata file is a pickle ------------------------------------------------------------------------------
_RECORDS = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                                              "ChunkStorageMetadata", "TensorProperties", "MetadataIndex",
                                              "StorageMeta", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
}


class _RecordsOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        found = super().find_class(module, name) if name in _RECORDS.get(module, ()) else None
        if found is None and module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            found = getattr(torch, name)
        if found is None:
            raise pickle.UnpicklingError(f"{module}.{name} is not a checkpoint record")
        return found


def check_metadata(folder: Path):
    """Open the metadata of a sharded checkpoint with an unpickler that knows only its record types, before torch
    unpickles it without limits. Returns it."""
    path = Path(folder) / METADATA
    try:
        return _RecordsOnly(io.BytesIO(path.read_bytes())).load()
    except Exception as exc:  # UnpicklingError, or whatever else a crafted or cut file raises
        raise LigoError(f"{path} is not a sharded checkpoint's metadata ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:80] if str(exc) else ''}); ligo never unpickles code: delete "
                        f"{Path(folder).parent} to resume from an earlier checkpoint") from None
