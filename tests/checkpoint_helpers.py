"""Checkpoints in the public formats, written by the peer libraries' own code (shared by test modules)."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from mobilevit import MobileViT, get_config

HF_CONFIGS = {  # convert_mlcvnets_to_pytorch.py get_mobilevit_config (apple/mobilevit-*)
    "xx_small": dict(hidden_sizes=[64, 80, 96], neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320],
                     expand_ratio=2.0),
    "x_small": dict(hidden_sizes=[96, 120, 144], neck_hidden_sizes=[16, 32, 48, 64, 80, 96, 384]),
    "small": dict(hidden_sizes=[144, 192, 240], neck_hidden_sizes=[16, 32, 64, 96, 128, 160, 640]),
}


def huggingface_folder(path: Path, model, id2label: dict[int, str] | None = None):
    """A Hugging Face model folder (``config.json`` + ``model.safetensors``) written by ``transformers``'
    ``save_pretrained``, holding ``model``'s weights (our calibrated synthetic ones, so no denormals);
    returns the transformers model."""
    import torch
    from transformers import MobileViTConfig, MobileViTForImageClassification

    from mobilevit.checkpoints import to_format

    n = model.cfg.num_classes
    config = MobileViTConfig(num_labels=n, **HF_CONFIGS[model.cfg.name])
    if id2label is not None:
        config.id2label, config.label2id = dict(id2label), {v: k for k, v in id2label.items()}
    hf = MobileViTForImageClassification(config).eval()
    hf.load_state_dict(to_format(model.state_dict(), "huggingface", model.cfg), strict=True)
    with torch.no_grad():
        hf.save_pretrained(path, safe_serialization=True)
    return hf


# Skeletons of the peer libraries' modules, with their attribute names and nn.Sequential indices (sources
# in test_checkpoints' docstring): state dicts with the real key layout of mmpretrain, ml-cvnets and timm.
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


def _hf_model(variant: str, num_labels: int = 1000):
    from transformers import MobileViTConfig, MobileViTForImageClassification

    torch.manual_seed(0)
    hf = MobileViTForImageClassification(MobileViTConfig(num_labels=num_labels, **HF_CONFIGS[variant])).eval()
    return _randomize_(hf)


def _hf_segmentation_model(variant: str, num_labels: int = 21, id2label: dict[int, str] | None = None,
                           **config_overrides):
    """transformers' ``MobileViTForSemanticSegmentation`` as its converter builds apple/deeplabv3-mobilevit-*
    (``output_stride=16``; ASPP defaults 256 channels, rates 6/12/18), with random weights and statistics."""
    from transformers import MobileViTConfig, MobileViTForSemanticSegmentation

    config = MobileViTConfig(num_labels=num_labels, **({"output_stride": 16} | HF_CONFIGS[variant] | config_overrides))
    if id2label is not None:
        config.id2label, config.label2id = dict(id2label), {v: k for k, v in id2label.items()}
    torch.manual_seed(0)
    return _randomize_(MobileViTForSemanticSegmentation(config).eval())


def _randomize_(hf: nn.Module, seed: int = 1) -> nn.Module:
    """Unit-gain conv/linear weights (transformers' init decays into denormals), random biases, norm
    affines and BatchNorm running statistics: every tensor matters, so a wrong mapping shows."""
    g = torch.Generator().manual_seed(seed)
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
