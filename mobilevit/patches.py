"""Unfold/fold strategies: feature map <-> transformer tokens for 2x2 patches.

A MobileViT block turns ``[B, C, H, W]`` into ``P = p_h * p_w`` independent token sequences of
``N = (H / p_h) * (W / p_w)`` patches each, runs the transformer on ``[B * P, N, C]``, and folds the
tokens back. Attention never mixes different pixel positions inside a patch, so any strategy that
puts the same pixels in the same sequence gives identical results; only the graph differs.

Every strategy is a pair ``unfold(x, p) -> tokens`` and ``fold(tokens, (B, C, H, W), p) -> x``.
The batch-bearing dimension of every reshape is ``-1``, so exported graphs keep a dynamic batch
without computing shapes at run time.
``reference`` is the public code's reshape/transpose chain; the others are rewrites that suit
particular converters. They are all exactly equal to ``reference`` in fp32 (``tests/``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

Shape4 = tuple[int, int, int, int]


@dataclass(frozen=True)
class PatchStrategy:
    """A named unfold/fold pair, with why it exists."""

    name: str
    unfold: Callable[[torch.Tensor, int], torch.Tensor]
    fold: Callable[[torch.Tensor, Shape4, int], torch.Tensor]
    doc: str


# --------------------------------------------------------------------------------------------
# reference: the public code (ml-cvnets, timm, mmpretrain, HF)
# --------------------------------------------------------------------------------------------
def reference_unfold(x: torch.Tensor, p: int) -> torch.Tensor:
    """Public reshape/transpose unfold. Merges batch and channel dims (``B * C * n_h``)."""
    _, C, H, W = x.shape
    nh, nw = H // p, W // p
    x = x.reshape(-1, p, nw, p)  # [B, C, H, W] -> [B*C*n_h, p_h, n_w, p_w]
    x = x.transpose(1, 2)  # -> [B*C*n_h, n_w, p_h, p_w]
    x = x.reshape(-1, C, nh * nw, p * p)  # -> [B, C, N, P]
    x = x.transpose(1, 3)  # -> [B, P, N, C]
    return x.reshape(-1, nh * nw, C)  # -> [B*P, N, C]


def reference_fold(t: torch.Tensor, shape: Shape4, p: int) -> torch.Tensor:
    """Inverse of :func:`reference_unfold`."""
    _, C, H, W = shape
    nh, nw = H // p, W // p
    x = t.reshape(-1, p * p, nh * nw, C)  # [B*P, N, C] -> [B, P, N, C]
    x = x.transpose(1, 3)  # -> [B, C, N, P]
    x = x.reshape(-1, nw, p, p)  # -> [B*C*n_h, n_w, p_h, p_w]
    x = x.transpose(1, 2)  # -> [B*C*n_h, p_h, n_w, p_w]
    return x.reshape(-1, C, H, W)  # -> [B, C, H, W]


# --------------------------------------------------------------------------------------------
# pixel_shuffle: space-to-depth / depth-to-space, native in Core ML and TFLite
# --------------------------------------------------------------------------------------------
def pixel_shuffle_unfold(x: torch.Tensor, p: int) -> torch.Tensor:
    """Space-to-depth, then one permute. Batch and channel stay separate dims."""
    _, C, H, W = x.shape
    nh, nw = H // p, W // p
    x = F.pixel_unshuffle(x, p)  # [B, C, H, W] -> [B, C*P, n_h, n_w], channel = c*P + (i*p + j)
    x = x.reshape(-1, C, p * p, nh * nw)  # -> [B, C, P, N]
    x = x.permute(0, 2, 3, 1)  # -> [B, P, N, C]
    return x.reshape(-1, nh * nw, C)  # -> [B*P, N, C]


def pixel_shuffle_fold(t: torch.Tensor, shape: Shape4, p: int) -> torch.Tensor:
    """Inverse of :func:`pixel_shuffle_unfold`: one permute, then depth-to-space."""
    _, C, H, W = shape
    nh, nw = H // p, W // p
    x = t.reshape(-1, p * p, nh * nw, C)  # [B*P, N, C] -> [B, P, N, C]
    x = x.permute(0, 3, 1, 2)  # -> [B, C, P, N]
    x = x.reshape(-1, C * p * p, nh, nw)  # -> [B, C*P, n_h, n_w]
    return F.pixel_shuffle(x, p)  # -> [B, C, H, W]


# --------------------------------------------------------------------------------------------
# conv: one-hot depthwise conv / transposed conv (ml-cvnets' Core ML mode, coremltools' im2col)
# --------------------------------------------------------------------------------------------
def _one_hot_kernel(C: int, p: int, like: torch.Tensor) -> torch.Tensor:
    """``[C*P, 1, p, p]`` weights: output channel ``c*P + k`` copies pixel ``k`` of its patch."""
    eye = torch.eye(p * p, dtype=like.dtype, device=like.device)  # [P, P]
    return eye.reshape(p * p, 1, p, p).repeat(C, 1, 1, 1)  # [P, 1, p, p] -> [C*P, 1, p, p]


def conv_unfold(x: torch.Tensor, p: int) -> torch.Tensor:
    """Unfold as a strided depthwise conv with one-hot kernels (same layout as space-to-depth)."""
    _, C, H, W = x.shape
    nh, nw = H // p, W // p
    x = F.conv2d(x, _one_hot_kernel(C, p, x), stride=p, groups=C)  # -> [B, C*P, n_h, n_w]
    x = x.reshape(-1, C, p * p, nh * nw)  # -> [B, C, P, N]
    x = x.permute(0, 2, 3, 1)  # -> [B, P, N, C]
    return x.reshape(-1, nh * nw, C)  # -> [B*P, N, C]


def conv_fold(t: torch.Tensor, shape: Shape4, p: int) -> torch.Tensor:
    """Fold as a strided depthwise transposed conv with the same one-hot kernels."""
    _, C, H, W = shape
    nh, nw = H // p, W // p
    x = t.reshape(-1, p * p, nh * nw, C)  # [B*P, N, C] -> [B, P, N, C]
    x = x.permute(0, 3, 1, 2)  # -> [B, C, P, N]
    x = x.reshape(-1, C * p * p, nh, nw)  # -> [B, C*P, n_h, n_w]
    return F.conv_transpose2d(x, _one_hot_kernel(C, p, x), stride=p, groups=C)  # -> [B, C, H, W]


# --------------------------------------------------------------------------------------------
# slice: strided slices and concatenation; no depth-to-space, no transposed conv
# --------------------------------------------------------------------------------------------
def slice_unfold(x: torch.Tensor, p: int) -> torch.Tensor:
    """Take each in-patch position with a strided slice; stack them on the batch axis.

    Sequences come out position-major (``k * B + b``) rather than batch-major; that only
    reorders independent sequences, and :func:`slice_fold` undoes it.
    """
    _, C, H, W = x.shape
    nh, nw = H // p, W // p
    parts = [x[:, :, i::p, j::p] for i in range(p) for j in range(p)]  # P x [B, C, n_h, n_w]
    x = torch.cat(parts, dim=0)  # -> [P*B, C, n_h, n_w]
    x = x.reshape(-1, C, nh * nw)  # -> [P*B, C, N]
    return x.transpose(1, 2)  # -> [P*B, N, C]


def slice_fold(t: torch.Tensor, shape: Shape4, p: int) -> torch.Tensor:
    """Inverse of :func:`slice_unfold`: interleave columns, then rows, by concat + reshape."""
    _, C, H, W = shape
    nh, nw = H // p, W // p
    x = t.transpose(1, 2)  # [P*B, N, C] -> [P*B, C, N]
    x = x.reshape(-1, C * nh, nw, 1)  # -> [P*B, C*n_h, n_w, 1]
    parts = x.chunk(p * p, dim=0)  # P x [B, C*n_h, n_w, 1], part k = i*p + j
    rows = []
    for i in range(p):
        r = torch.cat(parts[i * p:(i + 1) * p], dim=3)  # -> [B, C*n_h, n_w, p_w]
        rows.append(r.reshape(-1, C * nh, 1, W))  # -> [B, C*n_h, 1, W]
    x = torch.cat(rows, dim=2)  # -> [B, C*n_h, p_h, W]
    return x.reshape(-1, C, H, W)  # -> [B, C, H, W]


STRATEGIES: dict[str, PatchStrategy] = {}


def register(strategy: PatchStrategy) -> PatchStrategy:
    """Add a strategy; refuses a name that is already taken."""
    if strategy.name in STRATEGIES:
        raise ValueError(f"patch strategy {strategy.name!r} is already registered")
    STRATEGIES[strategy.name] = strategy
    return strategy


register(PatchStrategy("reference", reference_unfold, reference_fold,
                       "Public reshape/transpose chain; merges batch and channel dims."))
register(PatchStrategy("pixel_shuffle", pixel_shuffle_unfold, pixel_shuffle_fold,
                       "Space-to-depth / depth-to-space plus one permute each way."))
register(PatchStrategy("conv", conv_unfold, conv_fold,
                       "One-hot depthwise conv / transposed conv, as ml-cvnets does for Core ML."))
register(PatchStrategy("slice", slice_unfold, slice_fold,
                       "Strided slices and concats; no depth-to-space, no transposed conv."))


class UnknownPatchStrategyError(ValueError):
    """A strategy name that is not registered."""


def get_strategy(name: str | PatchStrategy) -> PatchStrategy:
    """Look up a strategy by name; the error lists the valid names."""
    if isinstance(name, PatchStrategy):
        return name
    if name not in STRATEGIES:
        raise UnknownPatchStrategyError(
            f"unknown patch strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]
