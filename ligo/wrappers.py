"""Vision-language checkpoints whose language model ligo grows (``ligo/archs/_wrappers.json``).

A wrapper checkpoint is read as the text checkpoint inside it (:func:`text_view`): its text config, its language
model's weights under the names a text checkpoint gives them, and the projector weights that write the text
model's residual stream as entries of the text table (they grow on that side, so an image's features enter the
wider stream as the token embeddings do). Everything else, the vision tower, is kept aside and written back
verbatim (:meth:`Wrapper.outer`), under the checkpoint's own names, with the grown text config in its config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources

from .arch import ArchSpec
from .errors import LigoError
from .spaces import Entry


@lru_cache(maxsize=1)
def wrappers() -> dict[str, dict]:
    data = json.loads(resources.files("ligo.archs").joinpath("_wrappers.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


@dataclass
class Wrapper:
    """How one vision-language checkpoint holds its language model: what :func:`text_view` took apart."""

    model_type: str
    config: dict                        # the checkpoint's own config (the text config inside it as it was)
    text_key: str                       # the config key of the text config
    prefixes: dict[str, str]            # a text-view prefix (model., lm_head.) -> the checkpoint's
    kept: dict = field(default_factory=dict)  # the other weights (vision tower), by the checkpoint's names

    def outer(self, text_config: dict) -> dict:
        """The checkpoint's config with ``text_config`` (a grown text config) in place of its own."""
        return {**self.config, self.text_key: dict(text_config)}

    def outer_weights(self, grown: dict) -> dict:
        """Grown text-view weights under the checkpoint's names, with the kept weights beside them."""
        def name(key: str) -> str:
            view = next((p for p in self.prefixes if key.startswith(p)), None)  # (the projector's keys: as they are)
            return key if view is None else self.prefixes[view] + key[len(view):]

        return {**{name(k): v for k, v in grown.items()}, **self.kept}


def is_wrapper(model_type: str | None) -> bool:
    return model_type in wrappers()


def text_view(config: dict, keys, where: str) -> tuple[dict, Wrapper, dict[str, str]]:
    """The text config inside a wrapper checkpoint's ``config``, the :class:`Wrapper` (kept weights empty: the caller
    fills them) and, for each checkpoint key, its text-view name (the kept keys absent)."""
    w = wrappers()[config["model_type"]]
    text = config.get(w["text_config"])
    if not isinstance(text, dict) or not isinstance(text.get("model_type"), str):
        raise LigoError(f"{where}: a {config['model_type']} config holds its language model's config in "
                        f"{w['text_config']!r} (with its model_type); this one does not")
    if "tie_word_embeddings" in config and "tie_word_embeddings" not in text:
        text = {**text, "tie_word_embeddings": config["tie_word_embeddings"]}
    prefixes = sorted(w["text_keys"].items(), key=lambda kv: -len(kv[0]))
    names: dict[str, str] = {}
    used: dict[str, str] = {}
    for key in keys:
        if key in w["projector"]:
            names[key] = key
            continue
        for prefix, view in prefixes:
            if key.startswith(prefix):
                names[key], used[view] = view + key[len(prefix):], prefix
                break
    wrapper = Wrapper(config["model_type"], config, w["text_config"], used)
    return text, wrapper, names


def with_projector(spec: ArchSpec, model_type: str) -> ArchSpec:
    """The text table, with the wrapper's projector weights as weights outside the layers."""
    extra = [Entry(name, tuple(tuple(a.split("+")) for a in axes), "globals")
             for name, axes in wrappers()[model_type]["projector"].items()]
    out = replace(spec, entries=list(spec.entries) + extra)
    out._compile()
    return out
