"""Reference MobileViT v1 (Mehta & Rastegari, ICLR 2022) in plain PyTorch.

Layout follows the public implementations (ml-cvnets, mmpretrain, timm, Hugging Face): a 3x3 stem,
two MobileNetV2 stages, three stages of (strided inverted residual + MobileViT block), a 1x1
expansion conv, global average pooling and a linear classifier. The unfold/fold step is a
parameter (:mod:`mobilevit.patches`), so exporters can swap in converter-friendly rewrites.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import DEFAULT_SIZE, MobileViTConfig, StageKind, get_config
from .patches import PatchStrategy, get_strategy


class InputSizeError(ValueError):
    """An input the model cannot take (wrong rank, channels or spatial size)."""


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias, 'same' padding for odd k, dilated or not) + BatchNorm2d + optional activation.

    ``act``: True for SiLU (the backbone), False for none, or an activation class (``nn.ReLU`` in the
    DeepLabV3 head).
    """

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1,
                 act: bool | type[nn.Module] = True, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2 * dilation, dilation=dilation, groups=groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = (nn.SiLU() if act is True else nn.Identity() if act is False else act())


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (SiLU), 3x3 depthwise (SiLU), 1x1 project, residual.

    ``dilation`` dilates the depthwise conv (a DeepLab backbone's stage kept at stride 1).
    """

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int, dilation: int = 1):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.expand = ConvNormAct(cin, hidden, 1) if expand_ratio != 1 else nn.Identity()
        self.dw = ConvNormAct(hidden, hidden, 3, stride, groups=hidden, dilation=dilation)
        self.project = ConvNormAct(hidden, cout, 1, act=False)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.use_residual else y


ATTENTION_LAYOUTS = ("batched", "split", "bmm")


class Attention(nn.Module):
    """Multi-head self-attention on ``[S, N, d]`` sequences; every tensor stays rank <= 4.

    Two layouts compute the same thing:

    * ``batched`` (the public code's): heads become a tensor axis, which costs four transposes
      per layer (q, k, v in; the output back);
    * ``split``: heads are slices of the channel axis; k is transposed once for all heads and
      per-head outputs are concatenated, so one transpose per layer remains (more, smaller matmuls);
    * ``bmm``: heads folded into the batch axis of two 3-D ``torch.bmm`` calls, with k made
      contiguous after its transpose; the form ExecuTorch's XNNPACK backend delegates (a 4-D
      ``matmul`` leaves ``expand_copy`` ops on portable kernels).

    ``qkv`` is one fused linear, as in the public checkpoints; the ``qkv_as_three_linears`` rewrite
    (:mod:`mobilevit.rewrites`) replaces it by three, which returns ``(q, k, v)`` directly.
    """

    def __init__(self, dim: int, num_heads: int, layout: str = "batched"):
        super().__init__()
        if layout not in ATTENTION_LAYOUTS:
            raise ValueError(f"unknown attention layout {layout!r}; choose one of: {', '.join(ATTENTION_LAYOUTS)}")
        self.layout = layout
        if dim % num_heads:
            raise ValueError(f"transformer dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(q, k, v)``, each ``[S, N, d]``, from the fused linear or the three split ones."""
        qkv = self.qkv(x)
        return qkv if isinstance(qkv, tuple) else qkv.chunk(3, dim=-1)  # [S, N, 3d] -> 3 x [S, N, d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "split":
            return self._forward_split(x)
        if self.layout == "bmm":
            return self._forward_bmm(x)
        _, N, d = x.shape
        h, hd = self.num_heads, self.head_dim
        q, k, v = self.project_qkv(x)  # 3 x [S, N, d]
        q = q.reshape(-1, N, h, hd).transpose(1, 2)  # -> [S, h, N, hd]
        k = k.reshape(-1, N, h, hd).permute(0, 2, 3, 1)  # -> [S, h, hd, N]
        v = v.reshape(-1, N, h, hd).transpose(1, 2)  # -> [S, h, N, hd]
        attn = torch.matmul(q * self.scale, k).softmax(dim=-1)  # -> [S, h, N, N]
        out = torch.matmul(attn, v)  # -> [S, h, N, hd]
        out = out.transpose(1, 2).reshape(-1, N, d)  # -> [S, N, h, hd] -> [S, N, d]
        return self.proj(out)

    def _forward_split(self, x: torch.Tensor) -> torch.Tensor:
        hd = self.head_dim
        q, k, v = self.project_qkv(x)  # 3 x [S, N, d]
        kt = k.transpose(1, 2)  # -> [S, d, N], once for all heads
        qs, kts, vs = q.split(hd, dim=2), kt.split(hd, dim=1), v.split(hd, dim=2)  # h x [S, N, hd] / [S, hd, N]
        heads = [torch.matmul(torch.matmul(qi * self.scale, ki).softmax(dim=-1), vi)  # [S, N, N] @ [S, N, hd]
                 for qi, ki, vi in zip(qs, kts, vs)]
        return self.proj(torch.cat(heads, dim=2))  # h x [S, N, hd] -> [S, N, d]

    def _forward_bmm(self, x: torch.Tensor) -> torch.Tensor:
        _, N, d = x.shape
        h, hd = self.num_heads, self.head_dim
        q, k, v = self.project_qkv(x)  # 3 x [S, N, d]
        q = q.reshape(-1, N, h, hd).permute(0, 2, 1, 3).reshape(-1, N, hd)  # -> [S, h, N, hd] -> [S*h, N, hd]
        k = k.reshape(-1, N, h, hd).permute(0, 2, 3, 1).reshape(-1, hd, N)  # -> [S, h, hd, N] -> [S*h, hd, N]
        v = v.reshape(-1, N, h, hd).permute(0, 2, 1, 3).reshape(-1, N, hd)  # -> [S, h, N, hd] -> [S*h, N, hd]
        attn = torch.bmm(q * self.scale, k).softmax(dim=-1)  # -> [S*h, N, N]
        out = torch.bmm(attn, v).reshape(-1, h, N, hd)  # -> [S*h, N, hd] -> [S, h, N, hd]
        out = out.permute(0, 2, 1, 3).reshape(-1, N, d)  # -> [S, N, h, hd] -> [S, N, d]
        return self.proj(out)


class MLP(nn.Module):
    """Transformer feed-forward: Linear, SiLU, Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: x + MHA(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, attention: str = "batched"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, attention)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, ffn_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MobileViTBlock(nn.Module):
    """Local 3x3 + 1x1 convs, unfold, L transformer layers + LN, fold, 1x1 conv, concat, 3x3 fusion.

    When the feature map is not a whole number of patches (a 160, 224 or 288 input gives an odd
    grid at stride 32), it is bilinearly resized up to the next multiple of the patch size around
    the transformer and back, exactly as mmpretrain and Hugging Face do.
    """

    def __init__(self, channels: int, dim: int, ffn_dim: int, num_layers: int, num_heads: int,
                 patch_size: int, patches: PatchStrategy, attention: str = "batched"):
        super().__init__()
        self.patch_size = patch_size
        self.patches = patches
        self.conv_local = ConvNormAct(channels, channels, 3)
        self.conv_in = nn.Conv2d(channels, dim, 1, bias=False)
        self.transformer = nn.Sequential(
            *[TransformerLayer(dim, ffn_dim, num_heads, attention) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(dim)
        self.conv_proj = ConvNormAct(dim, channels, 1)
        self.conv_fusion = ConvNormAct(2 * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        y = self.conv_in(self.conv_local(x))  # [B, C, H, W] -> [B, d, H, W]
        H, W = int(y.shape[2]), int(y.shape[3])
        p = self.patch_size
        Hp, Wp = -(-H // p) * p, -(-W // p) * p
        resized = (Hp, Wp) != (H, W)
        if resized:  # odd grid (e.g. 5x5 at stride 32 for a 160 input): resize as mmpretrain/HF do
            y = F.interpolate(y, size=(Hp, Wp), mode="bilinear", align_corners=False)
        shape = tuple(y.shape)
        tokens = self.patches.unfold(y, p)  # [B, d, Hp, Wp] -> [B*P, N, d]
        tokens = self.norm(self.transformer(tokens))
        y = self.patches.fold(tokens, shape, p)  # -> [B, d, Hp, Wp]
        if resized:
            y = F.interpolate(y, size=(H, W), mode="bilinear", align_corners=False)  # -> [B, d, H, W]
        y = self.conv_proj(y)  # -> [B, C, H, W]
        return self.conv_fusion(torch.cat((shortcut, y), dim=1))  # [B, 2C, H, W] -> [B, C, H, W]


class GlobalAvgPool(nn.Module):
    """Global average pooling ``[B, C, H, W] -> [B, C]``.

    ``keepdim=True`` (set by the ``pool_keepdim`` rewrite) averages to ``[B, C, 1, 1]`` and then
    reshapes, the form XNNPACK runs as one global-average-pooling op.
    """

    def __init__(self, keepdim: bool = False):
        super().__init__()
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.keepdim:
            return x.mean(dim=(2, 3), keepdim=True).reshape(-1, x.shape[1])  # -> [B, C, 1, 1] -> [B, C]
        return x.mean(dim=(2, 3))  # [B, C, H, W] -> [B, C]


def _build_stage(cin: int, stage, cfg: MobileViTConfig, patches: PatchStrategy, attention: str) -> nn.Sequential:
    if stage.kind is StageKind.MV2:
        blocks = [InvertedResidual(cin if i == 0 else stage.out_channels, stage.out_channels,
                                   stage.stride if i == 0 else 1, stage.expand_ratio,
                                   stage.dilation if i == 0 else 1)
                  for i in range(stage.num_blocks)]
    else:
        blocks = [InvertedResidual(cin, stage.out_channels, stage.stride, stage.expand_ratio, stage.dilation),
                  MobileViTBlock(stage.out_channels, stage.transformer_dim, stage.ffn_dim,
                                 stage.num_layers, cfg.num_heads, cfg.patch_size, patches, attention)]
    return nn.Sequential(*blocks)


class MobileViT(nn.Module):
    """MobileViT v1 classifier, or a feature extractor with ``features_only=True``.

    Args:
        cfg: a :class:`MobileViTConfig` (see ``mobilevit.config.VARIANTS``) or a variant name.
        patches: unfold/fold strategy name or object (``reference`` by default).
        features_only: return the stage feature maps instead of logits.
        out_indices: which of the five stages (strides 2, 4, 8, 16, 32) to return.
        attention: ``batched`` (public layout) or ``split`` (fewer transposes); see :class:`Attention`.
    """

    def __init__(self, cfg: MobileViTConfig | str = "small", patches: str | PatchStrategy = "reference",
                 features_only: bool = False, out_indices: Sequence[int] = (0, 1, 2, 3, 4),
                 attention: str = "batched"):
        super().__init__()
        self.cfg = get_config(cfg) if isinstance(cfg, str) else cfg
        self.patches = get_strategy(patches)
        self.features_only = features_only
        n = len(self.cfg.stages)
        self.out_indices = tuple(i % n for i in out_indices)
        if any(not -n <= i < n for i in out_indices):
            raise ValueError(f"out_indices {tuple(out_indices)} out of range for {n} stages")
        self.stem = ConvNormAct(3, self.cfg.stem_channels, 3, stride=2)
        stages, cin = [], self.cfg.stem_channels
        for stage in self.cfg.stages:
            stages.append(_build_stage(cin, stage, self.cfg, self.patches, attention))
            cin = stage.out_channels
        self.stages = nn.Sequential(*stages)
        if not features_only:
            self.conv_exp = ConvNormAct(cin, self.cfg.head_channels, 1)
            self.pool = GlobalAvgPool()
            self.head_drop = nn.Dropout(self.cfg.head_dropout)
            self.head = nn.Linear(self.cfg.head_channels, self.cfg.num_classes)

    def set_patches(self, patches: str | PatchStrategy) -> "MobileViT":
        """Swap the unfold/fold strategy in place (weights are untouched)."""
        self.patches = get_strategy(patches)
        for m in self.modules():
            if isinstance(m, MobileViTBlock):
                m.patches = self.patches
        return self

    @property
    def attention_layout(self) -> str:
        """The layout the attention layers run (``batched`` for a model without transformer layers)."""
        return next((m.layout for m in self.modules() if isinstance(m, Attention)), "batched")

    def set_attention(self, layout: str) -> "MobileViT":
        """Swap the attention layout in place (weights are untouched)."""
        if layout not in ATTENTION_LAYOUTS:
            raise ValueError(f"unknown attention layout {layout!r}; choose one of: {', '.join(ATTENTION_LAYOUTS)}")
        for m in self.modules():
            if isinstance(m, Attention):
                m.layout = layout
        return self

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`InputSizeError` for an input the network cannot take."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise InputSizeError(f"expected an image batch [B, 3, H, W], got shape {tuple(x.shape)}")
        m = self.cfg.size_multiple
        H, W = int(x.shape[2]), int(x.shape[3])
        if H % m or W % m or H < m or W < m:
            raise InputSizeError(
                f"input size {H}x{W} is not accepted: height and width must be positive multiples "
                f"of {m} (the network's total stride; e.g. 160, 192, 224, 256, 288, 320); "
                "resize or crop the image to one")

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All five stage outputs, strides 2, 4, 8, 16, 32."""
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self.check_input(x)
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv_exp(x))  # [B, C, H, W] -> [B, C]
        return self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor):
        feats = self.forward_stages(x)
        if self.features_only:
            return [feats[i] for i in self.out_indices]
        return self.forward_head(feats[-1])


def build(variant: str | MobileViTConfig = "small", patches: str | PatchStrategy = "reference",
          **kwargs) -> MobileViT:
    """Build a MobileViT in eval mode, e.g. ``build("xx_small", patches="pixel_shuffle")``."""
    return MobileViT(variant, patches=patches, **kwargs).eval()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, size: int = DEFAULT_SIZE) -> int:
    """Multiply-accumulates of conv/linear/matmul for one ``size x size`` image.

    Uses ``torch.utils.flop_counter`` (which counts 2 FLOPs per MAC) and halves its total.
    Elementwise work (norms, activations, softmax) is not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, size, size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return counter.get_total_flops() // 2
