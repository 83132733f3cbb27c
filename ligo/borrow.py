"""A layer module inference cannot read, lent by a hand table (:mod:`ligo.infer`).

Some modules need maths that shapes and hooks cannot tell: multi-head latent attention's per-head parts (each query
head's no-rope and rope rows, each key-value head's no-rope key and value rows), a short convolution's fused input
projection. Where a module of a new model type holds weights that a hand table's module of the same name holds, the
hand table's axes are borrowed for them (the others inferred as any weight), with the config keys that table reads
sizes by; the whole table is then proved by growing the tiny model, as any inferred one (:mod:`ligo.prove`).
"""

from __future__ import annotations


def lend(rel: str, held: set[str], donors, small: dict) -> tuple[dict[str, list[str]], dict, str] | None:
    """``(axes of the weights of rel's module that the donor holds, the donor's config keys this config has, the
    donor's type)`` from the one of ``donors`` (hand :class:`ligo.arch.ArchSpec` tables) whose module of the same
    name holds ``rel`` and most of the other weights ``held`` (those of rel's layer) holds under that module (the
    rest, a sparse-attention indexer beside latent attention, inferred as any weight), or None."""
    parts = rel.split(".")
    module = parts[0]  # (the donor's module; ours may be one of a list of them: LongCat's self_attn.0 and .1)
    ours_at = ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else module
    ours = {n.removeprefix(ours_at + ".") for n in held if n.startswith(ours_at + ".")}
    best = None
    for spec in sorted(donors, key=lambda s: s.model_types[0]):
        for named in sorted({e.name.split(".")[0] for e in spec.entries if e.scope == "layer" and "." in e.name},
                            key=lambda n: n != module):  # (the donor's module of the same name first; any other:
            theirs = {e.name.removeprefix(named + "."): e for e in spec.entries  # Ling's "attention" is MLA too)
                      if e.scope == "layer" and e.name.startswith(named + ".")}
            shared = ours & set(theirs)
            if rel.removeprefix(ours_at + ".") in shared and len(shared) >= 2 and (best is None or
                                                                                   len(shared) > best[0]):
                config = {g: k for g, k in spec.config.items() if isinstance(k, str) and k in small}
                best = (len(shared), {f"{ours_at}.{n}": ["+".join(a) for a in theirs[n].axes] for n in shared},
                        config, spec.model_types[0])
    return best[1:] if best else None
