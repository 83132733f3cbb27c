"""Vision-language checkpoints whose language model ligo grows (``ligo/archs/_wrappers.json``).

A wrapper checkpoint is read as the text checkpoint inside it (:func:`text_view`): its text config, its language
model's weights under the names a text checkpoint gives them, and the projector weights that write the text
model's residual stream as entries of the text table (they grow on that side, so an image's features enter the
wider stream as the token embeddings do). Everything else, the vision tower, is kept aside and written back
verbatim (:meth:`Wrapper.outer_weights`), under the checkpoint's own names, with the grown text config (and the
text model's new hidden size where the vision config states it) in its config (:meth:`Wrapper.outer`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from .arch import ArchSpec
from .errors import LigoError
from .hf import wrapper_types
from .spaces import Entry


@dataclass
class Wrapper:
    """How one vision-language checkpoint holds its language model: what :func:`text_view` took apart."""

    model_type: str
    config: dict                        # the checkpoint's own config (the text config inside it as it was)
    prefixes: dict[str, str]            # a text-view prefix (model., lm_head.) -> the checkpoint's
    projector: dict[str, list[str]]     # the checkpoint's projector weights that write the stream -> their axes
    kept: dict = field(default_factory=dict)  # the other weights (vision tower), by the checkpoint's names

    @property
    def data(self) -> dict:
        return wrapper_types()[self.model_type]

    def outer(self, text_config: dict) -> dict:
        """The checkpoint's config with ``text_config`` (a grown text config) in place of its own, and the vision
        config's copies of the text model's sizes updated."""
        vision = dict(self.config.get("vision_config") or {})
        vision.update({key: text_config[text_key] for key, text_key in self.data.get("vision_hidden", {}).items()})
        text = {k: v for k, v in text_config.items() if k != "tie_word_embeddings"}
        own = self.config[self.data["text_config"]]
        if "tie_word_embeddings" in own:  # (the text config's own value back, as it was)
            text["tie_word_embeddings"] = own["tie_word_embeddings"]
        return {**self.config, self.data["text_config"]: text, **({"vision_config": vision} if vision else {})}

    def outer_weights(self, grown: dict) -> dict:
        """Grown text-view weights under the checkpoint's names, with the kept weights beside them."""
        def name(key: str) -> str:
            view = next((p for p in self.prefixes if key.startswith(p)), None)
            return key if view is None or key in self.projector else self.prefixes[view] + key[len(view):]

        return {**{name(k): v for k, v in grown.items()}, **self.kept}

    def gaps(self, sources: list[int], zero: list[bool]) -> list[str]:
        """Why a depth plan (each target layer's source layer, and whether it is a new identity block) does not
        keep what an image does: visual features added to the outputs of the first layers (Qwen3-VL's deepstack)
        land after other layers when the plan puts new or other layers among them."""
        n = len(self.config.get("vision_config", {}).get(self.data.get("deepstack", ""), None) or [])
        if n and any(j != i or z for i, (j, z) in enumerate(zip(sources[:n], zero[:n]))):
            return [f"{self.model_type} adds visual features to the outputs of its first {n} layers (deepstack); this "
                    f"depth plan puts other layers among them, so with an image in the prompt the grown model differs "
                    f"(text alone keeps the function): use a --depth-map that starts with layers 0-{n - 1}"]
        return []


def text_view(config: dict, keys, where: str) -> tuple[dict, Wrapper, dict[str, str]]:
    """The text config inside a wrapper checkpoint's ``config``, the :class:`Wrapper` (kept weights empty: the caller
    fills them) and, for each checkpoint key, its text-view name (the kept keys absent)."""
    w = wrapper_types()[config["model_type"]]
    text = config.get(w["text_config"])
    if not isinstance(text, dict) or not isinstance(text.get("model_type"), str):
        raise LigoError(f"{where}: a {config['model_type']} config holds its language model's config in "
                        f"{w['text_config']!r} (with its model_type); this one does not")
    if "tie_word_embeddings" in config:  # (the multimodal class ties its head as its own config says)
        text = {**text, "tie_word_embeddings": config["tie_word_embeddings"]}
    templates = [(re.compile(re.escape(name).replace(re.escape("{k}"), r"\d+")), axes)
                 for name, axes in w["projector"].items()]
    prefixes = sorted(w["text_keys"].items(), key=lambda kv: -len(kv[0]))
    names: dict[str, str] = {}
    used: dict[str, str] = {}
    projector: dict = {}
    for key in keys:
        axes = next((a for pattern, a in templates if pattern.fullmatch(key)), None)
        if axes is not None:
            names[key], projector[key] = key, axes
            continue
        if any(key.startswith(p) for p in w.get("keep", [])):
            continue
        for prefix, view in prefixes:
            if key.startswith(prefix):
                names[key], used[view] = view + key[len(prefix):], prefix
                break
    return text, Wrapper(config["model_type"], config, used, projector), names


def check_parts(config: dict, shapes: dict, wrapper: Wrapper, names: dict[str, str], where: str, build) -> None:
    """The parts of a wrapper checkpoint that ligo copies (the vision tower) or grows beside the text table (the
    projector), checked as strictly as the language model: the checkpoint holds every weight the multimodal class
    of its config has, none it lacks, in the shapes the config implies. The class is built on the meta device, the
    checkpoint's names read as transformers reads them when it loads one. ``shapes``: each key's shape; ``names``:
    the keys of the text view (the language model's, checked by its table, and the projector's); ``build``: the
    model of a config on the meta device (:func:`ligo.hf.loaded_on_meta`)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    model_type = config["model_type"]
    if not isinstance(config.get("vision_config"), dict):
        raise LigoError(f"{where}: a {model_type} config states its vision tower's sizes in vision_config, and this "
                        "one has none, so what ligo writes would not load; use the checkpoint's own config.json")
    model = build(config)
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    ignored = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or []]
    buffers = {n for n, _ in model.named_buffers()}  # (a stored buffer the model does not persist is skipped too)
    found = set()
    for key, shape in shapes.items():
        name, converted = rename_source_key(key, renamings, converters, model.base_model_prefix, expected)
        found.add(name)
        if (key in names and key not in wrapper.projector) or name in buffers and name not in expected or any(
                p.search(key) or p.search(name) for p in ignored):
            continue  # the language model (its table checks it, transposed layouts included); what transformers skips
        if name not in expected:
            raise LigoError(f"{where}: weight {key} is not one that a {model_type} model of this config has; the "
                            "weights do not match the config (check vision_config)")
        if converted is None and list(shape) != expected[name]:
            raise LigoError(f"{where}: weight {key} has shape {list(shape)}, but config.json implies {expected[name]}; "
                            "the weights do not match the config (check vision_config)")
    missing = sorted(set(expected) - found - set(getattr(model, "all_tied_weights_keys", None) or {}))
    if missing:
        more = f" and {len(missing) - 1} more weight(s)" if len(missing) > 1 else ""
        raise LigoError(f"{where}: the checkpoint lacks {missing[0]}{more}, which a {model_type} model of its config "
                        "has (transformers would start them random); use the complete checkpoint")


def with_projector(spec: ArchSpec, wrapper: Wrapper) -> ArchSpec:
    """The text table, with the wrapper's projector weights as weights outside the layers."""
    extra = [Entry(name, tuple(tuple(a.split("+")) for a in axes), "globals") for name, axes in wrapper.projector.items()]
    out = replace(spec, entries=list(spec.entries) + extra)
    out._compile()
    return out
