"""The baseline model: Hugging Face transformers' MobileViT holding our weights.

It carries the very same weights as our model (remapped with ``mobilevit.checkpoints.to_format``),
so drift and latency compare like with like. It is converted by ``export.convert`` like every
other row: as-is (``exporter="as-is"``: the TorchScript exporter at opset 17, as most users export
it today, then onnx2tf for TFLite), and through our exporter's settings with none of our rewrites.
"""
from __future__ import annotations

import torch

from mobilevit import MobileViT
from mobilevit.checkpoints import to_format

HF_ARCH = {
    "xx_small": dict(hidden_sizes=[64, 80, 96], neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320],
                     expand_ratio=2.0),
    "x_small": dict(hidden_sizes=[96, 120, 144], neck_hidden_sizes=[16, 32, 48, 64, 80, 96, 384]),
    "small": dict(hidden_sizes=[144, 192, 240], neck_hidden_sizes=[16, 32, 64, 96, 128, 160, 640]),
}


class _Logits(torch.nn.Module):
    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, pixel_values):
        return self.hf(pixel_values=pixel_values).logits


def hf_model(model: MobileViT) -> torch.nn.Module:
    """``transformers.MobileViTForImageClassification`` holding ``model``'s weights; logits out."""
    from transformers import MobileViTConfig, MobileViTForImageClassification

    cfg = MobileViTConfig(num_labels=model.cfg.num_classes, **HF_ARCH[model.cfg.name])
    hf = MobileViTForImageClassification(cfg).eval()
    hf.load_state_dict(to_format(model.state_dict(), "huggingface", model.cfg), strict=True)
    return _Logits(hf).eval()
