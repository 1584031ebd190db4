"""Checkpoint import: the four public formats and ours, and a clear error for every bad input.

Hugging Face is tested against the real ``transformers`` model. mmpretrain, ml-cvnets and timm
cannot be installed or downloaded here, so their key names and shapes below are copied from
their source code (module attribute names), not produced by our remap:
  * mmpretrain: open-mmlab/mmpretrain mmpretrain/models/backbones/mobilevit.py (MobileViT,
    MobileVitBlock: local_rep/global_rep/conv_proj/conv_fusion, arch_settings), mobilenet_v2.py
    (InvertedResidual.conv), vision_transformer.py (TransformerEncoderLayer ln1/attn/ln2/ffn),
    mmcv ConvModule (conv, bn), LinearClsHead (head.fc).
  * ml-cvnets: apple/ml-cvnets cvnets/models/classification/mobilevit.py (conv_1, layer_1..5,
    conv_1x1_exp, classifier.fc), cvnets/modules/mobilevit_block.py (local_rep.conv_3x3/conv_1x1,
    global_rep, conv_proj, fusion), cvnets/modules/transformer.py (pre_norm_mha, pre_norm_ffn),
    cvnets/layers/conv_layer.py (block.conv, block.norm).
  * timm: timm/models/mobilevit.py (MobileVitBlock conv_kxk/conv_1x1/transformer/norm/conv_proj/
    conv_fusion, final_conv) and timm/models/byobnet.py (BottleneckBlock conv1_1x1/conv2_kxk/conv3_1x1).
"""
import pickle

import numpy as np
import pytest
import torch

from mobilevit import build, get_config
from mobilevit.checkpoints import (
    FORMATS,
    CheckpointNotFoundError,
    KeyMismatchError,
    NotACheckpointError,
    ShapeMismatchError,
    TruncatedCheckpointError,
    UnknownFormatError,
    UnsafeCheckpointError,
    VariantMismatchError,
    key_map,
    load_checkpoint,
    load_model,
    save_checkpoint,
    to_format,
)
from mobilevit.synthetic import synthetic_model

HF_CONFIGS = {
    "xx_small": dict(hidden_sizes=[64, 80, 96], neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320], expand_ratio=2.0),
    "x_small": dict(hidden_sizes=[96, 120, 144], neck_hidden_sizes=[16, 32, 48, 64, 80, 96, 384]),
    "small": dict(hidden_sizes=[144, 192, 240], neck_hidden_sizes=[16, 32, 64, 96, 128, 160, 640]),
}

# Real key names and shapes of MobileViT-XXS in each format (from the sources named above).
SPOT_CHECKS = {
    "mmpretrain": {
        "stem.conv.weight": ("backbone.stem.conv.weight", (16, 3, 3, 3)),
        "stages.0.0.expand.bn.running_var": ("backbone.layers.0.0.conv.0.bn.running_var", (32,)),
        "stages.1.2.project.conv.weight": ("backbone.layers.1.2.conv.2.conv.weight", (24, 48, 1, 1)),
        "stages.2.1.conv_in.weight": ("backbone.layers.2.1.local_rep.1.conv.weight", (64, 48, 1, 1)),
        "stages.2.1.transformer.1.attn.qkv.weight": ("backbone.layers.2.1.global_rep.1.attn.qkv.weight", (192, 64)),
        "stages.3.1.transformer.3.mlp.fc1.weight": ("backbone.layers.3.1.global_rep.3.ffn.layers.0.0.weight",
                                                    (160, 80)),
        "stages.3.1.transformer.3.mlp.fc2.bias": ("backbone.layers.3.1.global_rep.3.ffn.layers.1.bias", (80,)),
        "stages.4.1.norm.weight": ("backbone.layers.4.1.global_rep.3.weight", (96,)),
        "stages.4.1.conv_fusion.conv.weight": ("backbone.layers.4.1.conv_fusion.conv.weight", (80, 160, 3, 3)),
        "conv_exp.bn.bias": ("backbone.conv_1x1_exp.bn.bias", (320,)),
        "head.weight": ("head.fc.weight", (1000, 320)),
    },
    "cvnets": {
        "stem.conv.weight": ("conv_1.block.conv.weight", (16, 3, 3, 3)),
        "stem.bn.running_mean": ("conv_1.block.norm.running_mean", (16,)),
        "stages.0.0.expand.conv.weight": ("layer_1.0.block.exp_1x1.block.conv.weight", (32, 16, 1, 1)),
        "stages.1.0.dw.conv.weight": ("layer_2.0.block.conv_3x3.block.conv.weight", (32, 1, 3, 3)),
        "stages.2.1.conv_local.conv.weight": ("layer_3.1.local_rep.conv_3x3.block.conv.weight", (48, 48, 3, 3)),
        "stages.2.1.conv_in.weight": ("layer_3.1.local_rep.conv_1x1.block.conv.weight", (64, 48, 1, 1)),
        "stages.2.1.transformer.0.norm1.weight": ("layer_3.1.global_rep.0.pre_norm_mha.0.weight", (64,)),
        "stages.2.1.transformer.0.attn.qkv.weight": ("layer_3.1.global_rep.0.pre_norm_mha.1.qkv_proj.weight",
                                                     (192, 64)),
        "stages.2.1.transformer.0.attn.proj.bias": ("layer_3.1.global_rep.0.pre_norm_mha.1.out_proj.bias", (64,)),
        "stages.2.1.transformer.1.mlp.fc2.weight": ("layer_3.1.global_rep.1.pre_norm_ffn.4.weight", (64, 128)),
        "stages.2.1.norm.weight": ("layer_3.1.global_rep.2.weight", (64,)),
        "stages.2.1.conv_fusion.bn.weight": ("layer_3.1.fusion.block.norm.weight", (48,)),
        "conv_exp.conv.weight": ("conv_1x1_exp.block.conv.weight", (320, 80, 1, 1)),
        "head.bias": ("classifier.fc.bias", (1000,)),
    },
    "timm": {
        "stem.bn.weight": ("stem.bn.weight", (16,)),
        "stages.0.0.expand.conv.weight": ("stages.0.0.conv1_1x1.conv.weight", (32, 16, 1, 1)),
        "stages.1.1.dw.conv.weight": ("stages.1.1.conv2_kxk.conv.weight", (48, 1, 3, 3)),
        "stages.1.1.project.bn.running_var": ("stages.1.1.conv3_1x1.bn.running_var", (24,)),
        "stages.2.1.conv_local.conv.weight": ("stages.2.1.conv_kxk.conv.weight", (48, 48, 3, 3)),
        "stages.2.1.conv_in.weight": ("stages.2.1.conv_1x1.weight", (64, 48, 1, 1)),
        "stages.3.1.transformer.2.attn.qkv.weight": ("stages.3.1.transformer.2.attn.qkv.weight", (240, 80)),
        "stages.4.1.norm.bias": ("stages.4.1.norm.bias", (96,)),
        "conv_exp.conv.weight": ("final_conv.conv.weight", (320, 80, 1, 1)),
        "head.weight": ("head.fc.weight", (1000, 320)),
    },
}


def _their_state_dict(fmt: str, variant: str, model=None) -> dict[str, torch.Tensor]:
    """A state dict in ``fmt``'s naming holding ``model``'s tensors (HF q/k/v split back out).

    The names come from the layout that ``test_key_layout_matches_the_public_source`` pins to the
    public sources, and the HF layout is checked against transformers itself below."""
    model = model or synthetic_model(variant)
    return to_format(model.state_dict(), fmt, model.cfg)


@pytest.mark.parametrize("fmt", list(SPOT_CHECKS))
def test_key_layout_matches_the_public_source(fmt):
    mapping = key_map(FORMATS[fmt], get_config("xx_small"))
    ours = build("xx_small").state_dict()
    for our_key, (their_key, shape) in SPOT_CHECKS[fmt].items():
        assert mapping[our_key] == their_key
        assert tuple(ours[our_key].shape) == shape


@pytest.fixture(scope="module")
def xxs():
    return synthetic_model("xx_small")


@pytest.mark.parametrize("fmt,wrap", [("mmpretrain", "state_dict"), ("cvnets", None), ("timm", None),
                                      ("timm", "module")])
def test_public_formats_load_and_compute_the_same(tmp_path, xxs, fmt, wrap):
    sd = _their_state_dict(fmt, "xx_small", xxs)
    if fmt == "mmpretrain":
        sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}  # often stripped
    if wrap == "module":
        sd = {f"module.{k}": v for k, v in sd.items()}
    obj = {"state_dict": sd, "meta": {"epoch": 300}} if wrap == "state_dict" else sd
    path = tmp_path / f"{fmt}.pth"
    torch.save(obj, path)
    ckpt = load_checkpoint(path)
    assert (ckpt.format, ckpt.variant, ckpt.num_classes) == (fmt, "xx_small", 1000)
    model = load_model(path)
    x = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(model(x), xxs(x))


# ------------------------------------------------------------------------ Hugging Face peer
def _hf_model(variant: str):
    from transformers import MobileViTConfig, MobileViTForImageClassification

    torch.manual_seed(0)
    hf = MobileViTForImageClassification(MobileViTConfig(num_labels=1000, **HF_CONFIGS[variant])).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial weights and BatchNorm statistics, so the comparison can fail
        for m in hf.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.weight[0].numel() ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return hf


@pytest.mark.parametrize("variant", list(HF_CONFIGS))
def test_huggingface_peer_outputs_match(tmp_path, variant):
    from safetensors.torch import save_file

    hf = _hf_model(variant)
    sd = {k: v.contiguous() for k, v in hf.state_dict().items()}
    save_file(sd, tmp_path / "model.safetensors")
    torch.save(sd, tmp_path / "pytorch_model.bin")
    for path in (tmp_path / "model.safetensors", tmp_path / "pytorch_model.bin"):
        ckpt = load_checkpoint(path)
        assert (ckpt.format, ckpt.variant) == ("huggingface", variant)
        model = load_model(path)
        for size in (256, 224):  # 224 takes the odd-grid resize path at stride 32
            x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
            with torch.no_grad():
                ours, theirs = model(x), hf(pixel_values=x).logits
            assert theirs.abs().max() > 0.1
            assert (ours - theirs).abs().max().item() < 1e-5, (path.name, size)


# ------------------------------------------------------------------------------- our format
def test_our_format_roundtrip_with_class_names(tmp_path, xxs):
    from mobilevit import MobileViT

    model = MobileViT(get_config("xx_small", num_classes=3)).eval()
    path = save_checkpoint(model, tmp_path / "ft.pt", class_names=["cat", "dog", "owl"], origin="fine-tuned")
    ckpt = load_checkpoint(path)
    assert ckpt.format == "ours" and ckpt.class_names == ["cat", "dog", "owl"] and ckpt.num_classes == 3
    assert ckpt.origin == "fine-tuned" and len(ckpt.sha256) == 64
    loaded = load_model(path)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_failed_save_leaves_no_file(tmp_path, xxs, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(xxs, tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ bad inputs
def test_missing_file():
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        load_checkpoint("/nonexistent/mobilevit.pth")


def test_not_a_checkpoint(tmp_path):
    from mobilevit.images import base_photos

    path = tmp_path / "photo.pth"
    from PIL import Image

    Image.fromarray(next(iter(base_photos().values()))).save(path, format="JPEG")
    with pytest.raises(NotACheckpointError, match="is not a checkpoint"):
        load_checkpoint(path)
    (tmp_path / "list.pt").write_bytes(b"")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(NotACheckpointError, match="no state dict"):
        load_checkpoint(tmp_path / "list.pt")


def test_truncated_files(tmp_path, xxs):
    from safetensors.torch import save_file

    full = tmp_path / "full.pth"
    torch.save(_their_state_dict("timm", "xx_small", xxs), full)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(TruncatedCheckpointError, match="truncated"):
        load_checkpoint(cut)
    save_file({k: v.contiguous() for k, v in xxs.state_dict().items()}, tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(TruncatedCheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "cut.safetensors")


class _Payload:
    def __reduce__(self):
        return (print, ("this would run at load time",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Payload()}, f)
    with pytest.raises((UnsafeCheckpointError, NotACheckpointError), match="arbitrary code|not a PyTorch"):
        load_checkpoint(path)
    torch.save({"weights": torch.zeros(2), "cfg": np.dtype("float32")}, tmp_path / "numpy.pth")
    with pytest.raises(UnsafeCheckpointError, match="arbitrary code"):
        load_checkpoint(tmp_path / "numpy.pth")


def test_unknown_format(tmp_path):
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 2048)}, tmp_path / "r.pth")
    with pytest.raises(UnknownFormatError, match="unknown checkpoint format.*conv1.weight"):
        load_checkpoint(tmp_path / "r.pth")


def test_missing_and_unexpected_keys_are_listed(tmp_path, xxs):
    sd = _their_state_dict("cvnets", "xx_small", xxs)
    del sd["layer_3.1.global_rep.0.pre_norm_mha.1.qkv_proj.weight"]
    sd["layer_3.1.extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "c.pt")
    with pytest.raises(KeyMismatchError) as e:
        load_checkpoint(tmp_path / "c.pt")
    msg = str(e.value)
    assert "missing keys: layer_3.1.global_rep.0.pre_norm_mha.1.qkv_proj.weight" in msg
    assert "unexpected keys: layer_3.1.extra.weight" in msg


def test_shape_mismatch_names_key_and_closest_variant(tmp_path):
    sd = _their_state_dict("mmpretrain", "x_small")
    sd["backbone.layers.3.1.conv_proj.conv.weight"] = torch.zeros(80, 100, 1, 1)
    torch.save({"state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(ShapeMismatchError) as e:
        load_checkpoint(tmp_path / "bad.pth")
    assert "looks most like x_small" in str(e.value)
    assert "stages.3.1.conv_proj.conv.weight: checkpoint (80, 100, 1, 1) vs model (80, 120, 1, 1)" in str(e.value)


def test_checkpoint_for_another_variant(tmp_path):
    torch.save(_their_state_dict("timm", "x_small"), tmp_path / "xs.pth")
    with pytest.raises(VariantMismatchError, match="holds MobileViT x_small weights.*--variant x_small"):
        load_model(tmp_path / "xs.pth", variant="small")
