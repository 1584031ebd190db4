"""Model rewrites: named transforms that change how a MobileViT computes, not what it computes.

The patch strategies (:mod:`mobilevit.patches`) and attention layouts (:class:`mobilevit.model.Attention`)
are parameters of the model. These rewrites go further: they swap modules for equivalent ones
written in ops a particular backend runs natively. They know nothing about converters; an export
target names the ones it wants in its registry entry (``export.config``) and ``export.convert``
applies them to a copy of the model, so the PyTorch reference that validation compares against
stays the model the user gave.

Each rewrite is idempotent (applying it twice changes nothing more), keeps the weights, and equals
the original within fp32 rounding (``tests/test_rewrites.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .model import Attention, GlobalAvgPool


class LinearMeanLayerNorm(nn.Module):
    """LayerNorm over the last axis with its two means written as ``Linear(C, 1)`` layers.

    ``y = (x - m) * rsqrt(v) * w + b`` with ``m = x @ (1/C)`` and ``v = (x - m)^2 @ (1/C) + eps``
    (eps is the second linear's bias). Every op in it (linear, sub, mul, rsqrt, add) is one XNNPACK
    delegates; ``native_layer_norm`` and a ``mean.dim`` over the last axis of a 3-D tensor are not.
    Folding eps into a bias also keeps coremltools' linear-bias fusion pass away from a scalar add
    (coremltools 9.0 fails with an IndexError on ``linear`` followed by ``+ eps``).
    """

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        if len(norm.normalized_shape) != 1:
            raise ValueError(f"only a LayerNorm over the last axis can be rewritten, got {norm.normalized_shape}")
        (channels,) = norm.normalized_shape
        self.mean = nn.Linear(channels, 1, bias=False)
        self.var = nn.Linear(channels, 1)
        with torch.no_grad():
            self.mean.weight.fill_(1.0 / channels)
            self.var.weight.fill_(1.0 / channels)
            self.var.bias.fill_(norm.eps)
        self.weight = nn.Parameter(norm.weight.detach().clone())
        self.bias = nn.Parameter(norm.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - self.mean(x)  # [S, N, C] - [S, N, 1]
        var = self.var(centred * centred)  # -> [S, N, 1], variance + eps
        return centred * torch.rsqrt(var) * self.weight + self.bias  # -> [S, N, C]


class SplitQKV(nn.Module):
    """The fused ``qkv`` linear as three linears; returns ``(q, k, v)`` (no ``split_with_sizes``)."""

    def __init__(self, qkv: nn.Linear):
        super().__init__()
        d = qkv.out_features // 3
        self.q, self.k, self.v = (nn.Linear(qkv.in_features, d) for _ in range(3))
        with torch.no_grad():
            for i, lin in enumerate((self.q, self.k, self.v)):
                lin.weight.copy_(qkv.weight[i * d:(i + 1) * d])  # rows of [3d, d_in] -> [d, d_in]
                lin.bias.copy_(qkv.bias[i * d:(i + 1) * d])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.q(x), self.k(x), self.v(x)  # [S, N, d_in] -> 3 x [S, N, d]


def layernorm_as_linear(model: nn.Module) -> nn.Module:
    """Every ``nn.LayerNorm`` -> :class:`LinearMeanLayerNorm`.

    before: x -> native_layer_norm(x, w, b) -> y
    after:  x -> linear(x, 1/C) -> sub -> mul -> linear(., 1/C, bias eps) -> rsqrt -> mul -> mul w -> add b -> y
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(parent, name, LinearMeanLayerNorm(child))
    return model


def qkv_as_three_linears(model: nn.Module) -> nn.Module:
    """Every attention's fused ``qkv`` linear -> :class:`SplitQKV`.

    before: x -> linear(x, W_qkv) [S, N, 3d] -> split_with_sizes -> q, k, v
    after:  x -> linear(x, W_q), linear(x, W_k), linear(x, W_v) -> q, k, v
    """
    for m in model.modules():
        if isinstance(m, Attention) and isinstance(m.qkv, nn.Linear):
            m.qkv = SplitQKV(m.qkv)
    return model


def pool_keepdim(model: nn.Module) -> nn.Module:
    """Global average pooling keeps its 1x1 spatial axes, then reshapes.

    before: x [B, C, H, W] -> mean.dim((2, 3)) -> [B, C]
    after:  x [B, C, H, W] -> mean.dim((2, 3), keepdim) -> [B, C, 1, 1] -> view -> [B, C]
    """
    for m in model.modules():
        if isinstance(m, GlobalAvgPool):
            m.keepdim = True
    return model


def reverse_input_channels(model: nn.Module) -> nn.Module:
    """The stem conv's input channels in reverse order: a model taking BGR then takes RGB (and back).

    before: x [B, 3, H, W] in (B, G, R) -> conv(x, W)
    after:  x [B, 3, H, W] in (R, G, B) -> conv(x, W.flip(1))   the same sum over channels, reordered

    It changes what the model takes, so it is not among the registered rewrites (which keep the interface)
    and is not idempotent: a target applies it once, to a copy, and records the new order
    (``export.targets.tflite``). The stem (the first conv, in a classifier or a segmentation model) is the only
    layer that sees the input channels.
    """
    stem = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)  # the first conv: the stem's
    if not (isinstance(stem, nn.Conv2d) and stem.in_channels == 3 and stem.groups == 1):
        raise ValueError(f"expected a 3-channel stem conv, got {stem}")
    with torch.no_grad():
        stem.weight.copy_(stem.weight.flip(1))  # [C, 3, k, k]: input channel i -> 2 - i
    return model


@dataclass(frozen=True)
class Rewrite:
    """A named model transform, with a one-line reason it exists."""

    name: str
    apply: Callable[[nn.Module], nn.Module]
    summary: str


REWRITES: dict[str, Rewrite] = {}


def register(rewrite: Rewrite) -> Rewrite:
    """Add a rewrite; refuses a name that is already taken."""
    if rewrite.name in REWRITES:
        raise ValueError(f"rewrite {rewrite.name!r} is already registered")
    REWRITES[rewrite.name] = rewrite
    return rewrite


register(Rewrite("layernorm_as_linear", layernorm_as_linear,
                 "LayerNorm with its means as a Linear(C, 1) and rsqrt (XNNPACK has no layer norm)"))
register(Rewrite("qkv_as_three_linears", qkv_as_three_linears,
                 "the fused qkv projection as three linears (no split op between them)"))
register(Rewrite("pool_keepdim", pool_keepdim,
                 "global average pooling with keepdim, then a reshape (XNNPACK's global pooling)"))


class UnknownRewriteError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def get_rewrite(name: str) -> Rewrite:
    if name not in REWRITES:
        raise UnknownRewriteError(f"unknown rewrite {name!r}; choose one of: {', '.join(REWRITES)}")
    return REWRITES[name]


def apply_rewrites(model: nn.Module, names: tuple[str, ...] | list[str]) -> nn.Module:
    """Apply the named rewrites in order, in place; returns ``model``."""
    for name in names:
        get_rewrite(name).apply(model)
    return model
