"""Depth maps as users write them (``--depth-map``, mergekit's slices): the syntax, and the layout it gives a
source of ``l1`` layers: the source layer behind every target layer, and which are new identity blocks.
Imports nothing of ligo's but its error type, so the settings and the plan registry both read it.
"""

from __future__ import annotations

import re

from .errors import LigoError

_DEPTH_ITEM = re.compile(r"(\d+)(?:-(\d+))?|new(?::(\d+))?")


def depth_map_items(text: str) -> list[tuple]:
    """A depth map's items in order: ``("layers", a, b)`` for the source layers a..b, ``("new", k)`` for an
    identity block made from source layer k (None: from the layer before), ``("expand", k)`` for ``expand:K``
    (it needs the source's depth). One clear error for bad syntax."""
    text = text.strip()
    example = "e.g. 0-23,8-31, or 0-3,new,4-7,new, or expand:4"
    if not text:
        raise LigoError(f"the depth map is empty; give the source layer behind every target layer ({example})")
    if "expand" in text and "," in text:
        raise LigoError(f"depth map {text!r}: expand:K stands alone (an identity block after every K source layers); "
                        "give it without other items, or write the whole map out (e.g. 0-1,new,2-3,new)")
    if text.startswith("expand:"):
        k = text.removeprefix("expand:").strip()
        if not k.isdigit() or int(k) < 1:
            raise LigoError(f"depth map {text!r}: expand:K needs a whole number of layers K >= 1 ({example})")
        return [("expand", int(k))]
    items = []
    for part in [p.strip() for p in text.split(",")]:
        m = _DEPTH_ITEM.fullmatch(part)
        if not part or m is None:
            raise LigoError(f"depth map {text!r}: {part!r} is no layer, range or 'new' ({example})")
        if part.startswith("new"):
            items.append(("new", None if m.group(3) is None else int(m.group(3))))
            continue
        a, b = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if b < a:
            raise LigoError(f"depth map {text!r}: the range {part} runs backwards; write it {b}-{a}, or list the "
                            "layers one by one")
        items.append(("layers", a, b))
    return items


def mapped_layers(text: str, l1: int) -> tuple[list[int], list[bool]]:
    """A depth map's source layer and identity-block flag per target layer, checked against ``l1`` source layers."""
    items = depth_map_items(text)
    if items and items[0][0] == "expand":
        k = items[0][1]
        if k > l1:
            raise LigoError(f"depth map {text!r}: expand:{k} adds an identity block after every {k} layers, and the "
                            f"source has only {l1}, so it would add none; choose K from 1 to {l1}")
        items = [x for start in range(0, l1, k) for x in ([("layers", start, min(start + k, l1) - 1)] +
                                                          ([("new", None)] if start + k <= l1 else []))]
    src, zero = [], []
    for item in items:
        last = item[2] if item[0] == "layers" else item[1] if item[1] is not None else None
        if last is not None and last >= l1:
            raise LigoError(f"depth map {text!r}: layer {last} is out of range; the source has {l1} layers "
                            f"(0-{l1 - 1})")
        if item[0] == "new":  # an identity block: of layer k, else of the layer before (the first, at the start)
            src.append(item[1] if item[1] is not None else src[-1] if src else 0)
            zero.append(True)
            continue
        src += list(range(item[1], item[2] + 1))
        zero += [False] * (item[2] - item[1] + 1)
    if not src:
        raise LigoError(f"depth map {text!r} is empty; give the source layer behind every target layer")
    return src, zero
