"""The quantizable layers of a MobileViT, in execution order, each with its kind.

Quantization recipes and the sensitivity analysis (``benchmarks.quant``) talk about layers in one
vocabulary that every export target maps onto its own graph: a *kind* groups the layers that play
the same role (all depthwise convolutions, all attention matmuls, ...). Kinds are a fact of the
architecture, so they are defined here, once, from module names; targets map them to their graph
nodes by execution order (every target's graph keeps the model's order of weight-bearing ops).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# kind -> (what it is, op family). Order = order of first appearance in the network.
KINDS: dict[str, tuple[str, str]] = {
    "stem": ("first 3x3 convolution, stride 2, on the image", "conv"),
    "expand": ("inverted residual 1x1 expansion", "conv"),
    "depthwise": ("inverted residual 3x3 depthwise convolution", "conv"),
    "project": ("inverted residual 1x1 projection (linear bottleneck)", "conv"),
    "local3x3": ("MobileViT block local 3x3 convolution", "conv"),
    "conv_in": ("MobileViT block 1x1 into the transformer width", "conv"),
    "qkv": ("attention q/k/v projection", "linear"),
    "attn_matmul": ("attention q.k^T and attn.v (both inputs activations)", "matmul"),
    "attn_out": ("attention output projection", "linear"),
    "ffn": ("transformer feed-forward linears", "linear"),
    "conv_proj": ("MobileViT block 1x1 back to the stage width", "conv"),
    "fusion3x3": ("MobileViT block 3x3 fusion of input and transformer output", "conv"),
    "conv_exp": ("final 1x1 expansion before pooling", "conv"),
    "classifier": ("classifier linear", "linear"),
}

# module-name suffix -> kind (the attention matmuls have no module: they belong to ``...attn``)
_SUFFIX_KIND = (
    ("stem.conv", "stem"), (".expand.conv", "expand"), (".dw.conv", "depthwise"), (".project.conv", "project"),
    (".conv_local.conv", "local3x3"), (".conv_in", "conv_in"), (".attn.qkv", "qkv"), (".attn.proj", "attn_out"),
    (".mlp.fc1", "ffn"), (".mlp.fc2", "ffn"), (".conv_proj.conv", "conv_proj"),
    (".conv_fusion.conv", "fusion3x3"), ("conv_exp.conv", "conv_exp"), ("head", "classifier"),
)


class UnknownKindError(ValueError):
    """A layer kind that is not in :data:`KINDS`."""


@dataclass(frozen=True)
class Layer:
    name: str  # module name (``stages.2.1.transformer.0.attn.matmul`` for the attention matmul pair)
    kind: str  # a key of KINDS
    op: str  # conv | linear | matmul
    stage: str  # stem | 0..4 | head

    @property
    def weighted(self) -> bool:
        return self.op != "matmul"


def kind_of(name: str) -> str | None:
    """The kind of the layer called ``name`` (``None`` for modules that are not quantizable layers):
    a module name, ``<attn>.matmul`` for an attention's matmul pair, or ``<attn>.qkv.q|k|v`` after the
    ``qkv_as_three_linears`` rewrite."""
    if name.endswith(".attn.matmul"):
        return "attn_matmul"
    if ".attn.qkv." in name and name.endswith((".q", ".k", ".v")):
        name = name.rsplit(".", 1)[0]
    for suffix, kind in _SUFFIX_KIND:
        if name == suffix or name.endswith(suffix):
            return kind
    return None


def _stage(name: str) -> str:
    if name.startswith("stages."):
        return name.split(".")[1]
    return "stem" if name.startswith("stem") else "head"


def layers(model: nn.Module) -> list[Layer]:
    """Every quantizable layer of ``model`` in execution order (module registration order, which
    MobileViT's forward follows); each attention contributes its matmul pair right after ``qkv``.
    Works on a rewritten model too (``qkv_as_three_linears``: ``qkv.q``/``.k``/``.v`` count as qkv)."""
    out: list[Layer] = []
    for name, module in model.named_modules():
        kind = kind_of(name)
        if kind is None or not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        out.append(Layer(name, kind, KINDS[kind][1], _stage(name)))
        if kind == "qkv" and not name.endswith((".q", ".k")):  # after the (last) q/k/v projection
            attn = name[: name.index(".attn.") + len(".attn")]
            out.append(Layer(f"{attn}.matmul", "attn_matmul", "matmul", _stage(name)))
    return out


def check_kinds(kinds) -> tuple[str, ...]:
    """``kinds`` as a tuple, refusing names that are not in :data:`KINDS` (naming the valid ones)."""
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise UnknownKindError(f"unknown layer kind(s) {', '.join(bad)}; choose from: {', '.join(KINDS)}")
    return kinds


def layer_macs(model: nn.Module, size: int = 256) -> dict[str, int]:
    """Multiply-accumulates of each layer of :func:`layers` for one ``size x size`` image.

    The share of a kind in the total bounds what int8 can buy: a kind kept in float keeps its time.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, size, size))
    root = type(model).__name__
    flops = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}

    def of(name: str) -> int:
        return flops.get(f"{root}.{name}", 0)

    out = {}
    for layer in layers(model):
        if layer.weighted:
            out[layer.name] = of(layer.name) // 2
        else:  # the attention module's own work: what its linears do not account for
            attn = layer.name.rsplit(".", 1)[0]
            out[layer.name] = (of(attn) - of(f"{attn}.qkv") - of(f"{attn}.proj")) // 2
    return out
