"""GGUF files (llama.cpp's format) as sources: dequantized by transformers into an ordinary checkpoint.

transformers reads a ``.gguf`` file (``from_pretrained(folder, gguf_file=NAME)``, with the ``gguf``
package) and, without a GGUF matmul kernel, dequantizes every tensor to floats. :func:`convert_gguf`
writes the result as a plain safetensors checkpoint with its config and tokenizer, which every ligo
command reads like any other. The conversion is the set-up step of the real-checkpoint benchmark
(``benchmarks/real_source.py``); it never reaches a hub.
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch

from .errors import LigoError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def convert_gguf(gguf: str | Path, out: str | Path, dtype: str = "float32", overwrite: bool = False) -> Path:
    """Write the model in ``gguf`` (a causal LM) to ``out`` as safetensors + config + tokenizer, in ``dtype``.

    The output appears whole or not at all (written beside it, then renamed); an existing ``out`` is
    replaced only with ``overwrite``."""
    from .outputs import staged

    gguf = Path(gguf)
    if dtype not in DTYPES:
        raise LigoError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if not gguf.is_file():
        raise LigoError(f"{gguf} is not a file; give the path of a .gguf file")
    try:
        import gguf as _  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise LigoError("reading a .gguf file needs the gguf package: pip install gguf") from None
    model, tokenizer = _load(gguf, DTYPES[dtype])
    with staged(out, overwrite=overwrite, inputs=[gguf]) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out)


def _load(gguf: Path, dtype: torch.dtype):
    """The model, dequantized and detached from its quantizer (a plain model that saves as safetensors)."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    quiet = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "dequantizing the whole model" is what is asked for here
    transformers.logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True, trust_remote_code=False)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype, local_files_only=True,
                                                      trust_remote_code=False)
    except (ValueError, KeyError, RuntimeError, OSError, IndexError, EOFError, struct.error) as exc:
        # (struct.error: the gguf package's reader on a file cut inside its header)
        cut = " (the file is cut short or corrupt)" if isinstance(exc, (struct.error, EOFError, IndexError)) else ""
        raise LigoError(f"{gguf} could not be read as a causal language model by transformers{cut}: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    finally:
        transformers.logging.set_verbosity(quiet)
        transformers.logging.enable_progress_bar()
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    with torch.device("meta"):
        model = type(loaded)(config)
    state = {k: v.detach().to(dtype).contiguous() for k, v in loaded.state_dict().items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    return model.eval(), tokenizer
