"""What a tiny model's modules do, seen by hooks on one run (:func:`layer_roles`), for :mod:`ligo.infer`: which
projections of a layer read and write the residual stream, which norm feeds the head and whether it has a gain,
which norm normalizes a projection's output, whether each layer ends in a norm, the embedding's scale on its way to
the first layer, and each norm's numerics (LayerNorm or RMSNorm, measured as it computes)."""

from __future__ import annotations


def is_norm(module) -> bool:
    return "norm" in type(module).__name__.lower()


def linear_axes(module) -> tuple[int, int] | None:
    """(out axis, in axis) of a projection's weight: nn.Linear's (out, in), GPT-2's Conv1D's (in, out)."""
    import torch

    name = type(module).__name__
    if isinstance(module, torch.nn.Linear) or name.endswith("Linear"):
        return 0, 1
    if name == "Conv1D":
        return 1, 0
    return None


def layer_roles(model, layer_list, ids, row: int = 0) -> dict:
    """Run ``model`` once with hooks: which projections of layer ``row`` read and write the residual stream, which
    norm feeds the head, whether layers end in a norm (post-norm), the embedding's scale."""
    import torch

    seen: dict[str, tuple] = {}
    calls: dict[str, tuple] = {}
    hooks = []
    layer = layer_list[row]
    named = dict(layer.named_modules())

    def keep(name):
        def hook(module, args, kwargs, output):  # (layers are called with hidden_states as a keyword in places)
            x = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get("hidden_states", next(
                (v for v in kwargs.values() if isinstance(v, torch.Tensor)), None))
            y = output[0] if isinstance(output, tuple) else output
            seen[name] = (x, y if isinstance(y, torch.Tensor) else None)
            calls[name] = (args, kwargs)  # (a gated norm takes its gate beside the input)
        return hook

    def watch(module, name):
        hooks.append(module.register_forward_hook(keep(name), with_kwargs=True))

    for name, module in named.items():
        watch(module, name)
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    watch(embed, "<embed>")
    if head is not None:
        watch(head, "<head>")
    inner = {id(m) for m in layer_list.modules()}
    for name, module in model.named_modules():
        if is_norm(module) and id(module) not in inner:
            watch(module, "<outer>" + name)
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()

    def same(a, b) -> bool:
        return a is not None and b is not None and a.shape == b.shape and bool(torch.allclose(a, b, atol=1e-6))

    layer_in, layer_out = seen[""]
    norm_outs = [seen[n][1] for n, m in named.items() if is_norm(m) and n in seen]
    blocks = {n: seen[n][1] for n, m in named.items() if n and "." not in n and n in seen and not is_norm(m)}
    reads, writes = set(), set()
    for name, module in named.items():
        if linear_axes(module) is None or name not in seen:
            continue
        x, y = seen[name]
        if any(same(x, n) for n in norm_outs + [layer_in]):
            reads.add(name)
        if any(same(y, b) for n, b in blocks.items() if n != name) or (x is not None and same(y, layer_out)):
            writes.add(name)
    # a norm inside the layer over a projection's output (OLMo 2's q_norm over the whole query projection)
    outputs = {n: seen[n][1] for n, m in named.items() if linear_axes(m) is not None and n in seen}
    norm_source = {n: next((p for p, y in outputs.items() if same(seen[n][0], y)), None)
                   for n, m in named.items() if is_norm(m) and n in seen}
    head_norm = next((n.removeprefix("<outer>") for n in seen if n.startswith("<outer>") and head is not None and
                      same(seen[n][1], seen["<head>"][0])), None)
    post = any(same(layer_out, n) for n in norm_outs)
    # the scale from the embedding's rows to the first layer's input (inside the embedding module, as Gemma's
    # scaled embedding, or after it); None where the first layer's input is no multiple of the rows
    rows = embed.weight[ids].detach()
    scale = _multiple(layer_in, rows) if layer_in is not None and layer_in.shape == rows.shape else None
    every = {**{n: m for n, m in named.items() if is_norm(m)},
             **{"<outer>" + n: m for n, m in model.named_modules() if is_norm(m) and id(m) not in inner}}
    kinds = _norm_kinds(every, seen, calls)
    head_gain = head_norm is not None and getattr(dict(model.named_modules())[head_norm], "weight", None) is not None
    return {"reads": reads, "writes": writes, "head_norm": head_norm, "head_gain": head_gain, "post": post,
            "embed_scale": scale,
            "norm_source": {n: p for n, p in norm_source.items() if p is not None}, "norm_kinds": kinds}


def _norm_kinds(norms: dict, seen: dict, calls: dict) -> dict:
    """What each norm computes (its name in the layer, or ``<outer>`` and its name -> ``layer`` or ``rms``), each
    called again as the model called it: a LayerNorm subtracts the mean (a shifted input gives the same output),
    RMSNorm not."""
    import torch

    kinds = {}
    with torch.no_grad():
        for name, module in norms.items():
            x = seen.get(name, (None, None))[0]
            if x is not None and x.dtype.is_floating_point:
                args, kwargs = calls[name]

                def run(v):  # (the norm called as the model called it, its input replaced by v)
                    return module(*[v if a is x else a for a in args], **{k: v if a is x else a
                                                                           for k, a in kwargs.items()})
                kind = "layer" if torch.allclose(run(x), run(x + 3.0), atol=1e-4) else "rms"
                w, b = getattr(module, "weight", None), getattr(module, "bias", None)
                if isinstance(w, torch.Tensor) and w.dim() == 1:  # (a gain stored as 1 + w: no zero output at w = 0)
                    kept = [(t, t.clone()) for t in (w, b) if isinstance(t, torch.Tensor)]
                    for t, _ in kept:
                        t.zero_()
                    kind += "" if torch.allclose(run(x), torch.zeros(()), atol=1e-6) else "+1"
                    for t, old in kept:
                        t.copy_(old)
                kinds[name] = kind
    return kinds


def _multiple(a, b) -> float | None:
    """c where ``a == c * b`` elementwise (to fp32 rounding), else None."""
    mask = b.abs() > 1e-3
    if not bool(mask.any()):
        return None
    ratio = a[mask] / b[mask]
    mean = float(ratio.mean())
    return mean if float(ratio.std()) <= 1e-4 * max(1.0, abs(mean)) else None


def merged_roles(found: list[dict]) -> dict:
    """The roles of the first layer of each kind, as one: the sets joined, the rest the first layer's."""
    out = dict(found[0])
    for other in found[1:]:
        for key in ("reads", "writes", "norm_kinds"):
            out[key] = out[key] | other[key]
        out["norm_source"] = {**other["norm_source"], **out["norm_source"]}
    return out
