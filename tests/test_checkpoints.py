"""Checkpoint import: the four public formats and ours, and a typed, explicit error for every bad input.

Hugging Face is tested against the real ``transformers`` model (random weights, non-trivial BatchNorm
statistics). mmpretrain, ml-cvnets and timm can be neither installed nor downloaded here, so each
gets a *skeleton*: its module tree rebuilt on the meta device with the library's own attribute
names, ``nn.Sequential`` positions, biases and norms, from the library's own architecture table.
``skeleton.state_dict()`` then has the real key names, shapes and order; nothing here calls the
remap code under test to produce them. The skeletons follow these files:

* mmpretrain @ ee7f2e88501f61aa95c742dd5f429f039935ee90: ``mmpretrain/models/backbones/mobilevit.py``
  (arch_settings, MobileVitBlock, MobileViT), ``mobilenet_v2.py`` (InvertedResidual.conv),
  ``vision_transformer.py`` (TransformerEncoderLayer), ``models/utils/attention.py``
  (MultiheadAttention.qkv/proj), ``models/heads/linear_head.py`` (LinearClsHead.fc); mmcv @
  a8073c74bf83d62ec36a103f835faa4837fb6585 ``mmcv/cnn/bricks/conv_module.py`` (conv, bn; bias='auto')
  and ``mmcv/cnn/bricks/transformer.py`` (FFN.layers).
* ml-cvnets @ 77717569ab4a852614dae01f010b32b820cb33bb: ``cvnets/models/classification/mobilevit.py``,
  ``.../config/mobilevit.py`` (get_configuration), ``cvnets/modules/mobilenetv2.py``,
  ``cvnets/modules/mobilevit_block.py``, ``cvnets/modules/transformer.py``,
  ``cvnets/layers/conv_layer.py``, ``cvnets/layers/multi_head_attention.py``; the names agree with
  transformers' ``convert_mlcvnets_to_pytorch.py`` (@ 01080c629600d4ff3121446bb4f4a2e240c2cf41),
  which renames the keys of Apple's released ``mobilevit_*.pt``.
* timm @ aa4b5850c1543fa488abf260f18390eda46cf85d: ``timm/models/mobilevit.py`` (model_cfgs,
  MobileVitBlock), ``timm/models/byobnet.py`` (BottleneckBlock, create_byob_stem, ByobNet),
  ``timm/models/vision_transformer.py`` (Block), ``timm/layers/mlp.py``, ``timm/layers/classifier.py``.

The three libraries register modules in the same order as our model, so the i-th tensor of a
skeleton's state dict is the i-th of ours (shapes asserted at every position): that is how our
weights are put under their names, independently of :func:`mobilevit.checkpoints.key_map`.
"""
from __future__ import annotations

import hashlib
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from mobilevit import MobileViT, get_config
from mobilevit.checkpoints import (
    OUR_FORMAT,
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointWriteError,
    KeyMismatchError,
    NotACheckpointError,
    ShapeMismatchError,
    TruncatedCheckpointError,
    UnknownFormatError,
    UnsafeCheckpointError,
    VariantMismatchError,
    convert_state_dict,
    from_cvnets,
    from_huggingface,
    from_mmpretrain,
    from_timm,
    load_checkpoint,
    load_model,
    save_checkpoint,
    to_format,
)

VARIANTS = ("xx_small", "x_small", "small")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are small: one thread is several times faster than two on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _named(**children) -> nn.Module:
    """A module whose children are registered in the order given (``None`` children are skipped)."""
    m = nn.Module()
    for name, child in children.items():
        if child is not None:
            m.add_module(name, child)
    return m


# ---------------------------------------------------------------------------------- mmpretrain
MMPRETRAIN_ARCH = {  # MobileViT.arch_settings: mobilenetv2: out, stride, blocks, expand;
    #                   mobilevit: out, stride, transformer dim, ffn dim, transformer blocks, expand
    "small": [["mobilenetv2", 32, 1, 1, 4], ["mobilenetv2", 64, 2, 3, 4],
              ["mobilevit", 96, 2, 144, 288, 2, 4], ["mobilevit", 128, 2, 192, 384, 4, 4],
              ["mobilevit", 160, 2, 240, 480, 3, 4]],
    "x_small": [["mobilenetv2", 32, 1, 1, 4], ["mobilenetv2", 48, 2, 3, 4],
                ["mobilevit", 64, 2, 96, 192, 2, 4], ["mobilevit", 80, 2, 120, 240, 4, 4],
                ["mobilevit", 96, 2, 144, 288, 3, 4]],
    "xx_small": [["mobilenetv2", 16, 1, 1, 2], ["mobilenetv2", 24, 2, 3, 2],
                 ["mobilevit", 48, 2, 64, 128, 2, 2], ["mobilevit", 64, 2, 80, 160, 4, 2],
                 ["mobilevit", 80, 2, 96, 192, 3, 2]],
}


def _mm_conv_module(cin, cout, k, groups=1, norm=True):
    """mmcv ConvModule: ``conv`` (bias='auto': none when a norm follows), then the norm named ``bn``."""
    return _named(conv=nn.Conv2d(cin, cout, k, groups=groups, bias=False),
                  bn=nn.BatchNorm2d(cout) if norm else None)


def _mm_inverted_residual(cin, cout, expand):
    hidden = int(round(cin * expand))
    layers = [_mm_conv_module(cin, hidden, 1)] if expand != 1 else []
    layers += [_mm_conv_module(hidden, hidden, 3, groups=hidden), _mm_conv_module(hidden, cout, 1)]
    return _named(conv=nn.Sequential(*layers))


def _mm_transformer_layer(dim, ffn_dim):
    attn = _named(qkv=nn.Linear(dim, 3 * dim), proj=nn.Linear(dim, dim))
    ffn = _named(layers=nn.Sequential(nn.Sequential(nn.Linear(dim, ffn_dim), nn.SiLU(), nn.Dropout()),
                                      nn.Linear(ffn_dim, dim), nn.Dropout()))
    return _named(ln1=nn.LayerNorm(dim), attn=attn, ln2=nn.LayerNorm(dim), ffn=ffn)


def mmpretrain_skeleton(arch: str, num_classes: int = 1000) -> nn.Module:
    """``ImageClassifier(backbone=MobileViT(arch), neck=GlobalAveragePooling, head=LinearClsHead)``."""
    layers, cin = [], 16
    for kind, cout, _stride, *rest in MMPRETRAIN_ARCH[arch]:
        if kind == "mobilenetv2":
            blocks, expand = rest
            layers.append(nn.Sequential(*[_mm_inverted_residual(cin if i == 0 else cout, cout, expand)
                                          for i in range(blocks)]))
        else:
            dim, ffn_dim, depth, expand = rest
            block = _named(
                local_rep=nn.Sequential(_mm_conv_module(cout, cout, 3),
                                        _mm_conv_module(cout, dim, 1, norm=False)),
                global_rep=nn.Sequential(*[_mm_transformer_layer(dim, ffn_dim) for _ in range(depth)],
                                         nn.LayerNorm(dim)),
                conv_proj=_mm_conv_module(dim, cout, 1), conv_fusion=_mm_conv_module(2 * cout, cout, 3))
            layers.append(nn.Sequential(_mm_inverted_residual(cin, cout, expand), block))
        cin = cout
    backbone = _named(stem=_mm_conv_module(3, 16, 3), layers=nn.Sequential(*layers),
                      conv_1x1_exp=_mm_conv_module(cin, 4 * cin, 1))
    return _named(backbone=backbone, head=_named(fc=nn.Linear(4 * cin, num_classes)))


# ----------------------------------------------------------------------------------- ml-cvnets
def _cvnets_arch(mv2_exp, widths, dims, ffns):  # get_configuration(): layer1..layer5
    return [dict(out_channels=widths[0], expand_ratio=mv2_exp, num_blocks=1, block_type="mv2"),
            dict(out_channels=widths[1], expand_ratio=mv2_exp, num_blocks=3, block_type="mv2")] + [
        dict(out_channels=w, transformer_channels=d, ffn_dim=f, transformer_blocks=n, mv_expand_ratio=mv2_exp,
             block_type="mobilevit") for w, d, f, n in zip(widths[2:], dims, ffns, (2, 4, 3))]


CVNETS_ARCH = {
    "xx_small": _cvnets_arch(2, (16, 24, 48, 64, 80), (64, 80, 96), (128, 160, 192)),
    "x_small": _cvnets_arch(4, (32, 48, 64, 80, 96), (96, 120, 144), (192, 240, 288)),
    "small": _cvnets_arch(4, (32, 64, 96, 128, 160), (144, 192, 240), (288, 384, 480)),
}


def _make_divisible(v, divisor=8):
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _cv_conv_layer(cin, cout, k, groups=1, norm=True, act=True):
    """ConvLayer2d: ``block`` = Sequential(conv[, norm][, act]), conv without bias."""
    block = OrderedDict(conv=nn.Conv2d(cin, cout, k, groups=groups, bias=False))
    if norm:
        block["norm"] = nn.BatchNorm2d(cout)
    if act:
        block["act"] = nn.SiLU()
    return _named(block=nn.Sequential(block))


def _cv_inverted_residual(cin, cout, expand):
    hidden = _make_divisible(int(round(cin * expand)), 8)
    block = OrderedDict()
    if expand != 1:
        block["exp_1x1"] = _cv_conv_layer(cin, hidden, 1)
    block["conv_3x3"] = _cv_conv_layer(hidden, hidden, 3, groups=hidden)
    block["red_1x1"] = _cv_conv_layer(hidden, cout, 1, act=False)
    return _named(block=nn.Sequential(block))


def _cv_transformer_encoder(dim, ffn_dim):
    mha = _named(qkv_proj=nn.Linear(dim, 3 * dim), attn_dropout=nn.Dropout(), out_proj=nn.Linear(dim, dim))
    return _named(
        pre_norm_mha=nn.Sequential(nn.LayerNorm(dim), mha, nn.Dropout()),
        pre_norm_ffn=nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ffn_dim), nn.SiLU(), nn.Dropout(),
                                   nn.Linear(ffn_dim, dim), nn.Dropout()))


def cvnets_skeleton(mode: str, num_classes: int = 1000) -> nn.Module:
    """``MobileViT`` classifier of ml-cvnets (``--model.classification.mit.mode``)."""
    children, cin = OrderedDict(conv_1=_cv_conv_layer(3, 16, 3)), 16
    for i, cfg in enumerate(CVNETS_ARCH[mode], start=1):
        cout = cfg["out_channels"]
        if cfg["block_type"] == "mv2":
            blocks = [_cv_inverted_residual(cin if j == 0 else cout, cout, cfg["expand_ratio"])
                      for j in range(cfg["num_blocks"])]
        else:
            dim, ffn_dim = cfg["transformer_channels"], cfg["ffn_dim"]
            mvit = _named(
                local_rep=nn.Sequential(OrderedDict(
                    conv_3x3=_cv_conv_layer(cout, cout, 3),
                    conv_1x1=_cv_conv_layer(cout, dim, 1, norm=False, act=False))),
                global_rep=nn.Sequential(*[_cv_transformer_encoder(dim, ffn_dim)
                                           for _ in range(cfg["transformer_blocks"])], nn.LayerNorm(dim)),
                conv_proj=_cv_conv_layer(dim, cout, 1), fusion=_cv_conv_layer(2 * cout, cout, 3))
            blocks = [_cv_inverted_residual(cin, cout, cfg["mv_expand_ratio"]), mvit]
        children[f"layer_{i}"] = nn.Sequential(*blocks)
        cin = cout
    exp = min(4 * cin, 960)
    children["conv_1x1_exp"] = _cv_conv_layer(cin, exp, 1)
    children["classifier"] = nn.Sequential(OrderedDict(global_pool=nn.Identity(), dropout=nn.Dropout(),
                                                       fc=nn.Linear(exp, num_classes)))
    return _named(**children)


# ---------------------------------------------------------------------------------------- timm
TIMM_CFGS = {  # model_cfgs: blocks (type, d, c, br[, transformer_dim, transformer_depth]), num_features
    "xx_small": ([("ir", 1, 16, 2.0), ("ir", 3, 24, 2.0), ("vit", 1, 48, 2.0, 64, 2),
                  ("vit", 1, 64, 2.0, 80, 4), ("vit", 1, 80, 2.0, 96, 3)], 320),
    "x_small": ([("ir", 1, 32, 4.0), ("ir", 3, 48, 4.0), ("vit", 1, 64, 4.0, 96, 2),
                 ("vit", 1, 80, 4.0, 120, 4), ("vit", 1, 96, 4.0, 144, 3)], 384),
    "small": ([("ir", 1, 32, 4.0), ("ir", 3, 64, 4.0), ("vit", 1, 96, 4.0, 144, 2),
               ("vit", 1, 128, 4.0, 192, 4), ("vit", 1, 160, 4.0, 240, 3)], 640),
}


def _timm_conv_norm_act(cin, cout, k, groups=1):
    return _named(conv=nn.Conv2d(cin, cout, k, groups=groups, bias=False), bn=nn.BatchNorm2d(cout))


def _timm_bottleneck(cin, cout, bottle_ratio):
    """BottleneckBlock(bottle_in=True, linear_out=True), downsample='': no shortcut parameters."""
    mid = _make_divisible(cin * bottle_ratio)
    return _named(conv1_1x1=_timm_conv_norm_act(cin, mid, 1),
                  conv2_kxk=_timm_conv_norm_act(mid, mid, 3, groups=mid),
                  conv3_1x1=_timm_conv_norm_act(mid, cout, 1))


def _timm_transformer_block(dim, mlp_ratio=2.0):
    hidden = int(dim * mlp_ratio)
    return _named(norm1=nn.LayerNorm(dim), attn=_named(qkv=nn.Linear(dim, 3 * dim), proj=nn.Linear(dim, dim)),
                  norm2=nn.LayerNorm(dim), mlp=_named(fc1=nn.Linear(dim, hidden), fc2=nn.Linear(hidden, dim)))


def timm_skeleton(variant: str, num_classes: int = 1000) -> nn.Module:
    """``ByobNet(model_cfgs['mobilevit_xxs' | 'mobilevit_xs' | 'mobilevit_s'])``; stem_type='3x3', no pool."""
    blocks_cfg, num_features = TIMM_CFGS[variant]
    stages, cin = [], 16
    for kind, depth, c, br, *vit in blocks_cfg:
        blocks = [_timm_bottleneck(cin if j == 0 else c, c, br) for j in range(depth)]
        if kind == "vit":
            dim, layers = vit
            blocks.append(_named(
                conv_kxk=_timm_conv_norm_act(c, c, 3), conv_1x1=nn.Conv2d(c, dim, 1, bias=False),
                transformer=nn.Sequential(*[_timm_transformer_block(dim) for _ in range(layers)]),
                norm=nn.LayerNorm(dim), conv_proj=_timm_conv_norm_act(dim, c, 1),
                conv_fusion=_timm_conv_norm_act(2 * c, c, 3)))
        stages.append(nn.Sequential(*blocks))
        cin = c
    return _named(stem=_timm_conv_norm_act(3, 16, 3), stages=nn.Sequential(*stages),
                  final_conv=_timm_conv_norm_act(cin, num_features, 1),
                  head=_named(fc=nn.Linear(num_features, num_classes)))


SKELETONS = {"mmpretrain": mmpretrain_skeleton, "cvnets": cvnets_skeleton, "timm": timm_skeleton}


def _skeleton_keys(fmt: str, variant: str, num_classes: int = 1000) -> dict[str, torch.Size]:
    with torch.device("meta"):
        sk = SKELETONS[fmt](variant, num_classes)
    return {k: v.shape for k, v in sk.state_dict().items()}


def _random_model(variant: str, num_classes: int = 1000, seed: int = 0) -> MobileViT:
    """Our model with every tensor random, BatchNorm statistics included, so a wrong mapping shows.

    Conv/linear weights have unit gain: PyTorch's default init decays activations into denormals
    (many times slower) within a few stages."""
    torch.manual_seed(seed)
    model = MobileViT(get_config(variant, num_classes=num_classes)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.normal_(0, m.weight[0].numel() ** -0.5)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
                m.num_batches_tracked.fill_(1000)
            elif isinstance(m, nn.LayerNorm):
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
            elif isinstance(m, nn.Linear):
                m.bias.normal_(0, 0.1)
    return model


def _their_state_dict(fmt: str, variant: str, model: MobileViT | None = None) -> dict[str, torch.Tensor]:
    """A state dict with ``fmt``'s real key names. mmpretrain/cvnets/timm hold ``model``'s tensors,
    placed by position in the skeleton (shapes checked at every position); ``huggingface`` is the
    state dict of a real, randomly initialised transformers model (``model`` must be None)."""
    if fmt == "huggingface":
        assert model is None, "the Hugging Face state dict comes from transformers itself"
        return {k: v.contiguous() for k, v in _hf_model(variant).state_dict().items()}
    model = model or _random_model(variant)
    ours = model.state_dict()
    theirs = _skeleton_keys(fmt, variant, model.cfg.num_classes)
    assert len(theirs) == len(ours), (fmt, len(theirs), len(ours))
    out = {}
    for (their_key, shape), (our_key, tensor) in zip(theirs.items(), ours.items()):
        assert shape == tensor.shape, f"{fmt}: {their_key} {shape} in place of {our_key} {tensor.shape}"
        out[their_key] = tensor.clone()
    return out


# ------------------------------------------------------------------------- public formats
def test_skeletons_have_the_documented_keys():
    """Spot checks of a few names quoted from the sources and from transformers' cvnets converter."""
    mm, cv, tm = (_skeleton_keys(f, "xx_small") for f in ("mmpretrain", "cvnets", "timm"))
    assert mm["backbone.layers.2.1.global_rep.0.attn.qkv.weight"] == (192, 64)
    assert mm["backbone.layers.2.1.local_rep.1.conv.weight"] == (64, 48, 1, 1)
    assert mm["backbone.layers.3.1.global_rep.3.ffn.layers.0.0.weight"] == (160, 80)
    assert mm["backbone.layers.4.1.global_rep.3.weight"] == (96,)  # LayerNorm after 3 layers
    assert mm["head.fc.weight"] == (1000, 320)
    assert cv["layer_3.1.global_rep.0.pre_norm_mha.1.qkv_proj.weight"] == (192, 64)
    assert cv["layer_3.1.global_rep.1.pre_norm_ffn.4.weight"] == (64, 128)
    assert cv["layer_4.1.global_rep.4.bias"] == (80,)
    assert cv["layer_1.0.block.exp_1x1.block.norm.num_batches_tracked"] == ()
    assert cv["conv_1x1_exp.block.conv.weight"] == (320, 80, 1, 1) and cv["classifier.fc.bias"] == (1000,)
    assert tm["stages.2.1.transformer.0.attn.qkv.weight"] == (192, 64)
    assert tm["stages.1.1.conv2_kxk.conv.weight"] == (48, 1, 3, 3)
    assert tm["final_conv.conv.weight"] == (320, 80, 1, 1) and tm["head.fc.weight"] == (1000, 320)


@pytest.mark.parametrize("fmt", list(SKELETONS))
@pytest.mark.parametrize("variant", VARIANTS)
def test_format_and_variant_are_detected_from_keys_and_shapes(fmt, variant):
    with torch.device("meta"):
        sd = SKELETONS[fmt](variant, 37).state_dict()
    conv = convert_state_dict(sd)
    assert (conv.format, conv.variant, conv.num_classes) == (fmt, variant, 37)
    want = MobileViT(get_config(variant, num_classes=37)).state_dict()
    assert {k: v.shape for k, v in conv.state_dict.items()} == {k: v.shape for k, v in want.items()}


@pytest.mark.parametrize("fmt,wrap", [("mmpretrain", "state_dict"), ("cvnets", None), ("timm", None),
                                      ("timm", "module")])
@pytest.mark.parametrize("variant,num_classes", [("xx_small", 1000), ("x_small", 10), ("small", 1000)])
def test_public_formats_load_strictly_and_compute_the_same(tmp_path, fmt, wrap, variant, num_classes):
    model = _random_model(variant, num_classes)
    sd = _their_state_dict(fmt, variant, model)
    if fmt == "mmpretrain":  # released files come as {"meta": ..., "state_dict": ...}
        sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}  # and may lack these
    if wrap == "module":  # DistributedDataParallel prefix
        sd = {f"module.{k}": v for k, v in sd.items()}
    obj = {"meta": {"epoch": 300, "seed": np.int64(0)}, "state_dict": sd} if wrap == "state_dict" else sd
    path = tmp_path / f"{fmt}.pth"
    torch.save(obj, path)
    ckpt = load_checkpoint(path)
    assert (ckpt.format, ckpt.variant, ckpt.num_classes) == (fmt, variant, num_classes)
    assert ckpt.class_names is None and ckpt.extra == {}
    assert ckpt.origin == f"{fmt}:{fmt}.pth" and ckpt.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_model(path)  # strict load inside
    assert not loaded.training
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_remaps_are_pure_and_return_early():
    model = _random_model("xx_small")
    for fmt, fn in (("mmpretrain", from_mmpretrain), ("cvnets", from_cvnets), ("timm", from_timm)):
        sd = _their_state_dict(fmt, "xx_small", model)
        before = dict(sd)
        ours = fn(sd)
        assert sd == before and set(sd) == set(before)  # input untouched
        assert set(ours) == set(model.state_dict())
        assert all(torch.equal(ours[k], v) for k, v in model.state_dict().items())
    ours = model.state_dict()
    assert from_timm(ours) is ours and from_huggingface(ours) is ours  # already our names: nothing to do
    with pytest.raises(UnknownFormatError, match="this is a cvnets state dict, not timm: use from_cvnets"):
        from_timm(_their_state_dict("cvnets", "xx_small", model))


# ------------------------------------------------------------------------ Hugging Face peer
HF_CONFIGS = {  # convert_mlcvnets_to_pytorch.py get_mobilevit_config (apple/mobilevit-*)
    "xx_small": dict(hidden_sizes=[64, 80, 96], neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320],
                     expand_ratio=2.0),
    "x_small": dict(hidden_sizes=[96, 120, 144], neck_hidden_sizes=[16, 32, 48, 64, 80, 96, 384]),
    "small": dict(hidden_sizes=[144, 192, 240], neck_hidden_sizes=[16, 32, 64, 96, 128, 160, 640]),
}


def _hf_model(variant: str, num_labels: int = 1000):
    from transformers import MobileViTConfig, MobileViTForImageClassification

    torch.manual_seed(0)
    hf = MobileViTForImageClassification(MobileViTConfig(num_labels=num_labels, **HF_CONFIGS[variant])).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial weights and BatchNorm statistics, so the comparison can fail
        for m in hf.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.weight[0].numel() ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return hf


@pytest.mark.parametrize("variant", VARIANTS)
def test_huggingface_peer_logits_match(tmp_path, variant):
    from safetensors.torch import save_file

    hf = _hf_model(variant)
    sd = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert "mobilevit.encoder.layer.2.transformer.layer.0.attention.attention.query.weight" in sd
    (tmp_path / "hub").mkdir()
    save_file(sd, tmp_path / "hub" / "model.safetensors")
    torch.save(sd, tmp_path / "pytorch_model.bin")
    inputs = {size: torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
              for size in (256, 224)}  # 224 gives odd grids at stride 32: the resize path
    with torch.no_grad():
        expected = {size: hf(pixel_values=x).logits for size, x in inputs.items()}
    for path in (tmp_path / "hub", tmp_path / "hub" / "model.safetensors", tmp_path / "pytorch_model.bin"):
        ckpt = load_checkpoint(path)
        assert (ckpt.format, ckpt.variant, ckpt.num_classes) == ("huggingface", variant, 1000)
        model = load_model(path)
        for size, x in inputs.items():
            with torch.no_grad():
                ours = model(x)
            assert expected[size].abs().max() > 0.1
            assert (ours - expected[size]).abs().max().item() < 1e-5, (path.name, size)


def test_to_format_gives_a_state_dict_transformers_loads():
    """``to_format`` (used by the HF baseline benchmark) round-trips through the real HF model."""
    model = _random_model("xx_small", num_classes=10)
    hf = _hf_model("xx_small", num_labels=10)
    hf.load_state_dict(to_format(model.state_dict(), "huggingface", model.cfg), strict=True)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert (hf(pixel_values=x).logits - model(x)).abs().max().item() < 1e-5


# ------------------------------------------------------------------------------- our format
def test_our_format_roundtrip_with_class_names(tmp_path):
    model = _random_model("xx_small", num_classes=3)
    path = save_checkpoint(model, tmp_path / "sub" / "ft.pt", class_names=["cat", "dog", "owl"],
                           origin="fine-tuned", extra={"val_top1": 0.9, "history": [{"epoch": 1}]})
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"format", "format_version", "variant", "num_classes", "class_names", "origin",
                        "extra", "state_dict"}
    assert (raw["format"], raw["format_version"]) == (OUR_FORMAT, 1)
    assert (raw["variant"], raw["num_classes"]) == ("xx_small", 3)
    ckpt = load_checkpoint(path)
    assert (ckpt.format, ckpt.variant, ckpt.num_classes) == ("ours", "xx_small", 3)
    assert ckpt.class_names == ["cat", "dog", "owl"] and ckpt.origin == "fine-tuned"
    assert ckpt.extra == {"val_top1": 0.9, "history": [{"epoch": 1}]}
    assert ckpt.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_model(path, variant="xx-small")
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert [p.name for p in path.parent.iterdir()] == ["ft.pt"]  # no temporary file left


@pytest.fixture(scope="module")
def tiny():
    return _random_model("xx_small", num_classes=2)


def test_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path, tiny, monkeypatch):
    path = save_checkpoint(tiny, tmp_path / "model.pt")
    before = path.read_bytes()

    def half_written(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(CheckpointWriteError, match="could not write .*No space left.*nothing was written"):
        save_checkpoint(tiny, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_unwritable_destination_leaves_nothing(tmp_path, tiny, monkeypatch):
    (tmp_path / "not_a_dir").write_text("a file where a folder should be")
    with pytest.raises(CheckpointWriteError, match="could not write"):
        save_checkpoint(tiny, tmp_path / "not_a_dir" / "model.pt")
    ro = tmp_path / "ro"
    ro.mkdir()

    def refuse(*a, **k):  # what a read-only folder does (root ignores chmod, so simulate it)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("os.replace", refuse)
    with pytest.raises(CheckpointWriteError, match="Permission denied.*writable"):
        save_checkpoint(tiny, ro / "model.pt")
    assert list(ro.iterdir()) == []


def test_metadata_that_a_safe_load_could_not_read_is_refused_at_save(tmp_path, tiny):
    with pytest.raises(TypeError, match=r"extra\['out'\] is a PosixPath"):
        save_checkpoint(tiny, tmp_path / "m.pt", extra={"out": tmp_path})
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ bad inputs
def test_missing_file():
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        load_checkpoint("/nonexistent/mobilevit.pth")


def test_not_a_checkpoint(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "photo.pth", format="JPEG")
    (tmp_path / "notes.pt").write_text("these are not weights\n")
    (tmp_path / "empty.bin").write_bytes(b"")
    for name in ("photo.pth", "notes.pt", "empty.bin"):
        with pytest.raises(NotACheckpointError, match=r"is not a checkpoint .*pass a \.pth/\.pt/\.bin or"):
            load_checkpoint(tmp_path / name)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(NotACheckpointError, match="holds no state dict .* list"):
        load_checkpoint(tmp_path / "list.pt")
    torch.save({"w": torch.zeros(1), "step": 3}, tmp_path / "mixed.pt")
    with pytest.raises(NotACheckpointError, match="besides tensors it has step"):
        load_checkpoint(tmp_path / "mixed.pt")


def test_truncated_files(tmp_path, tiny):
    from safetensors.torch import save_file

    sd = tiny.state_dict()
    torch.save(sd, tmp_path / "zip.pth")
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "m.safetensors")
    for name in ("zip.pth", "legacy.pth", "m.safetensors"):
        data = (tmp_path / name).read_bytes()
        cut = tmp_path / f"cut_{name}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(TruncatedCheckpointError, match="truncated or corrupt.*download it again"):
            load_checkpoint(cut)


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create a file at load time


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the raw pickle
def test_pickles_that_need_code_are_refused_without_running_it(tmp_path, tiny):
    marker = tmp_path / "payload_ran"
    torch.save({"state_dict": tiny.state_dict(), "hook": _RunsCode(marker)}, tmp_path / "evil.pth")
    with open(tmp_path / "raw.pkl", "wb") as f:
        pickle.dump({"state_dict": _RunsCode(marker)}, f)
    torch.save(tiny, tmp_path / "whole_model.pth")  # the whole nn.Module, a common mistake
    for name in ("evil.pth", "raw.pkl", "whole_model.pth"):
        with pytest.raises(UnsafeCheckpointError, match="needs arbitrary code to unpickle.*refused.*re-save"):
            load_checkpoint(tmp_path / name)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError, match=r"references mobilevit\.config\."):  # names its imports
        load_checkpoint(tmp_path / "whole_model.pth")


def test_unknown_format(tmp_path):
    resnet = {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.running_mean": torch.zeros(64),
              "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1), "fc.weight": torch.zeros(1000, 2048)}
    torch.save(resnet, tmp_path / "resnet50.pth")
    with pytest.raises(UnknownFormatError, match="unknown checkpoint format .*conv1.weight.*MobileViT v1"):
        load_checkpoint(tmp_path / "resnet50.pth")
    v2 = {"layer_3.1.global_rep.0.pre_norm_attn.1.qkv_proj.weight": torch.zeros(129, 128)}
    torch.save(v2, tmp_path / "v2.pt")
    with pytest.raises(UnknownFormatError, match="MobileViT v2"):
        load_checkpoint(tmp_path / "v2.pt")


def test_missing_and_unexpected_keys_are_listed(tmp_path, tiny):
    sd = _their_state_dict("cvnets", "xx_small", tiny)
    del sd["layer_3.1.global_rep.0.pre_norm_mha.1.qkv_proj.weight"]
    sd["layer_3.1.extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "c.pt")
    with pytest.raises(KeyMismatchError) as e:
        load_checkpoint(tmp_path / "c.pt")
    msg = str(e.value)
    assert "c.pt: the cvnets checkpoint does not fit MobileViT v1" in msg
    assert "missing keys: layer_3.1.global_rep.0.pre_norm_mha.1.qkv_proj.weight;" in msg
    assert "unexpected keys: layer_3.1.extra.weight;" in msg
    assert e.value.missing == ["layer_3.1.global_rep.0.pre_norm_mha.1.qkv_proj.weight"]


def test_long_key_lists_are_capped(tmp_path, tiny):
    sd = _their_state_dict("timm", "xx_small", tiny)
    torch.save({k: v for k, v in sd.items() if not k.startswith("stages.4")}, tmp_path / "cut.pth")
    first = r"stages\.4\.0\.conv1_1x1\.conv\.weight"
    with pytest.raises(KeyMismatchError, match=rf"missing keys: {first}, .*\(\+\d+ more\)"):
        load_checkpoint(tmp_path / "cut.pth")


def test_shape_mismatch_names_keys_shapes_and_closest_variant(tmp_path):
    sd = _their_state_dict("mmpretrain", "x_small")
    sd["backbone.layers.3.1.conv_proj.conv.weight"] = torch.zeros(80, 100, 1, 1)
    torch.save({"state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(ShapeMismatchError) as e:
        load_checkpoint(tmp_path / "bad.pth")
    msg = str(e.value)
    assert "matches no MobileViT v1 variant; it looks most like x_small" in msg
    assert ("stages.3.1.conv_proj.conv.weight (checkpoint key backbone.layers.3.1.conv_proj.conv.weight): "
            "checkpoint (80, 100, 1, 1) vs model (80, 120, 1, 1)") in msg


def test_requested_variant_that_does_not_fit(tmp_path):
    torch.save(_their_state_dict("timm", "x_small"), tmp_path / "xs.pth")
    expected = "holds MobileViT x_small weights .*not small: pass --variant x_small"
    with pytest.raises(VariantMismatchError, match=expected):
        load_model(tmp_path / "xs.pth", variant="small")
    with pytest.raises(VariantMismatchError, match="unknown MobileViT variant 'tiny'; choose one of"):
        load_checkpoint(tmp_path / "xs.pth", variant="tiny")
    assert isinstance(VariantMismatchError("x"), CheckpointError)


def test_newer_format_version_is_refused(tmp_path, tiny):
    path = save_checkpoint(tiny, tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)
    torch.save(dict(raw, format_version=2), path)
    with pytest.raises(UnknownFormatError, match="format version 2 .*update the toolkit"):
        load_checkpoint(path)
