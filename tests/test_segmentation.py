"""DeepLabV3-MobileViT: architecture, parameter counts and checkpoint import, against transformers and ml-cvnets.

The peer is ``transformers.MobileViTForSemanticSegmentation`` built from the configuration of the
apple/deeplabv3-mobilevit-* models as transformers' converter writes it (``output_stride=16``, as ml-cvnets'
released ``deeplabv3_mobilevit_*.yaml``; ASPP 256 channels, rates 6/12/18; output stride 8 is checked too), with random
unit-gain weights and random BatchNorm statistics (see ``checkpoint_helpers._randomize_``), written
with its own ``save_pretrained`` and imported through our loader. ml-cvnets cannot be installed here:
its segmentation state dict comes from a skeleton with the module names of
``cvnets/models/segmentation/enc_dec.py`` (``encoder``, ``seg_head``), ``heads/base_seg_head.py``
(``aux_head``: conv 3x3 + Dropout2d + conv 1x1), ``heads/deeplabv3.py`` (``aspp.aspp_layer``,
``classifier``) and ``cvnets/modules/aspp_block.py`` (``convs``, ``ASPPPooling.aspp_pool.conv_1x1``,
``project``) @ ml-cvnets 0c0f79822f0ae6670319b5befccb7be24adca16e; its head names are cross-checked
against the renames of transformers' ``convert_mlcvnets_to_pytorch.py``.

Logit tolerance: max abs difference below 1e-5 (these random models give logits within about +-0.7,
so that is also below 1e-5 relative to the largest logit).
"""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from mobilevit import InputSizeError, build, count_params
from mobilevit.checkpoints import (
    CheckpointError,
    KeyMismatchError,
    ShapeMismatchError,
    TaskMismatchError,
    UnknownFormatError,
    VariantMismatchError,
    convert_state_dict,
    from_cvnets,
    from_huggingface,
    load_checkpoint,
    load_model,
    save_checkpoint,
    to_format,
)
from mobilevit.config import VOC_CLASSES, dilate, get_config, get_segmentation_config
from mobilevit.model import ATTENTION_LAYOUTS
from mobilevit.patches import STRATEGIES
from mobilevit.segmentation import build_segmentation, upsample_logits
from mobilevit.threads import torch_threads
from tests.checkpoint_helpers import (
    _cv_conv_layer,
    _hf_segmentation_model,
    _named,
    _randomize_,
    cvnets_skeleton,
)

VARIANTS = ("xx_small", "x_small", "small")
# transformers' MobileViTForSemanticSegmentation with the apple/deeplabv3-mobilevit-* configs: its parameter count,
# written down once (the test also recounts it live)
HF_PARAMS = {"xx_small": 1_854_853, "x_small": 2_944_069, "small": 6_357_941}
# Hugging Face model cards / the paper: parameters (M), PASCAL VOC 2012 val mIoU (%)
MODEL_CARDS = {"xx_small": (1.9, 73.6), "x_small": (2.9, 77.1), "small": (6.4, 79.1)}
# ml-cvnets examples/README-mobilevit.md (@ d38a116f): mIoU of its released deeplabv3_mobilevit_*.pt
CVNETS_README_MIOU = {"xx_small": 72.8, "x_small": 77.1, "small": 79.3}
SIZES = [(512, 512), (256, 384)]  # the public size, and a non-square one (catches an H/W mix-up)
TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are small: one thread is faster than two on a shared 2-core machine."""
    with torch_threads(1):
        yield


def _image(size, seed=0):
    return torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------- architecture
def test_dilation_is_what_transformers_and_cvnets_build():
    """Output stride 16 (the public models): stage 4 keeps stride 1, undilated (the dilation removed before it
    is 1); output stride 8: stage 3 too, and stage 4 gets dilation 2; 32 is the classifier's backbone."""
    cfg = get_config("small")

    def strides(c):
        return [(s.stride, s.dilation) for s in c.stages]

    assert strides(dilate(cfg, 8)) == [(1, 1), (2, 1), (2, 1), (1, 1), (1, 2)]
    assert strides(dilate(cfg, 16)) == [(1, 1), (2, 1), (2, 1), (2, 1), (1, 1)]
    assert dilate(cfg, 32) == cfg
    with pytest.raises(ValueError, match="output_stride 4"):
        get_segmentation_config("small", output_stride=4)


@pytest.mark.parametrize("variant,output_stride", [(v, 16) for v in VARIANTS] + [("small", 8)])
def test_every_conv_has_transformers_geometry(variant, output_stride):
    """Both models register their convs in the same order; each pair agrees in channels, kernel, stride,
    padding, dilation, groups and bias (ASPP rates, dilated stages and the classifier included)."""
    cfg = get_segmentation_config(variant, output_stride=output_stride)
    ours = [m for m in build_segmentation(cfg).modules() if isinstance(m, nn.Conv2d)]
    hf = [m for m in _hf_segmentation_model(variant, output_stride=output_stride).modules()
          if isinstance(m, nn.Conv2d)]
    assert len(ours) == len(hf)

    def geometry(c):
        return (c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups,
                c.bias is not None)

    assert [geometry(c) for c in ours] == [geometry(c) for c in hf]
    backbone = {(2, 2)} if output_stride == 8 else set()  # stage 4's depthwise conv at output stride 8
    assert {c.dilation for c in ours} == {(1, 1), (6, 6), (12, 12), (18, 18)} | backbone
    assert sum(c.stride == (2, 2) for c in ours) == {16: 4, 8: 3}[output_stride]  # stem + strided stages


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_counts_match_transformers_and_the_model_cards(variant):
    ours = count_params(build_segmentation(variant))
    hf = sum(p.numel() for p in _hf_segmentation_model(variant).parameters())
    assert ours == hf == HF_PARAMS[variant]
    assert round(ours / 1e6, 1) == MODEL_CARDS[variant][0]
    public = get_segmentation_config(variant).public
    assert (public.params_m, public.miou) == MODEL_CARDS[variant]
    assert public.miou_cvnets == CVNETS_README_MIOU[variant]


def test_defaults_are_the_public_models():
    cfg = get_segmentation_config("xx_small")
    assert (cfg.num_classes, cfg.output_stride, cfg.aspp_out_channels, cfg.atrous_rates) == (21, 16, 256, (6, 12, 18))
    assert (cfg.aspp_dropout, cfg.classifier_dropout, cfg.input_size) == (0.1, 0.1, 512)
    assert cfg.class_names == VOC_CLASSES and len(VOC_CLASSES) == 21
    assert VOC_CLASSES[0] == "background" and VOC_CLASSES[15] == "person" and VOC_CLASSES[20] == "tvmonitor"
    model = build_segmentation("xx_small", num_classes=5)
    assert model.head.classifier.out_channels == 5 and model.cfg.class_names[4] == "class_4"


def test_patch_strategies_attention_layouts_and_sizes():
    """The backbone's unfold/fold strategies and attention layouts compute the same logits; sizes that are
    not multiples of 32 are refused with the classifier's typed error."""
    model = _randomize_(build_segmentation("xx_small"))
    x = _image((256, 320))
    with torch.no_grad():
        ref = model(x)
        for name in STRATEGIES:
            assert (model.set_patches(name)(x) - ref).abs().max().item() < TOL, name
        model.set_patches("reference")
        for layout in ATTENTION_LAYOUTS:
            assert (model.set_attention(layout)(x) - ref).abs().max().item() < TOL, layout
        with pytest.raises(InputSizeError, match="250x256"):
            model(torch.zeros(1, 3, 250, 256))


def test_synthetic_weights_are_calibrated_and_seeded():
    """Calibrated synthetic weights (BatchNorm statistics from photographs, here at 128 for speed): logits
    in a realistic range that use many classes, and the same model for the same seed, calibrated twice; the
    process's copy of them hands out a new model each time, which its user may change."""
    from data.photos import sample_batch
    from data.synthetic import forget_synthetic_weights, synthetic_segmentation_model

    a = synthetic_segmentation_model("xx_small", size=128, seed=3)
    forget_synthetic_weights()  # b is calibrated again, not a copy of a's weights
    b = synthetic_segmentation_model("xx_small", size=128, seed=3)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    with torch.no_grad():
        synthetic_segmentation_model("xx_small", size=128, seed=3).head.aspp.project.bn.running_var.zero_()
    c = synthetic_segmentation_model("xx_small", size=128, seed=3)
    assert c is not b and all(torch.equal(v, c.state_dict()[k]) for k, v in b.state_dict().items())
    assert not c.training
    assert not torch.allclose(a.head.aspp.project.bn.running_var, torch.ones(256))
    x = sample_batch(a.cfg, count=1, size=256, seed=9)
    with torch.no_grad():
        y = a(x)
    assert torch.isfinite(y).all() and 0.1 < y.std().item() < 10
    assert y.argmax(1).unique().numel() > 3


# --------------------------------------------------------------------------------- Hugging Face
@pytest.mark.parametrize("variant", VARIANTS)
def test_huggingface_peer_logits_match(tmp_path, variant):
    """A folder written by transformers' save_pretrained, loaded by ours: same logits, VOC class names."""
    hf = _hf_segmentation_model(variant, id2label=dict(enumerate(VOC_CLASSES)))
    with torch.no_grad():
        hf.save_pretrained(tmp_path, safe_serialization=True)
    ckpt = load_checkpoint(tmp_path, task="segmentation")
    assert (ckpt.format, ckpt.variant, ckpt.num_classes) == ("huggingface", variant, 21)
    assert ckpt.class_names == list(VOC_CLASSES)
    model = load_model(tmp_path, task="segmentation")
    with torch.no_grad():
        for size in SIZES:
            x = _image(size)
            expected = hf(pixel_values=x).logits
            got = model(x)
            assert got.shape == (1, 21, size[0] // 16, size[1] // 16) == expected.shape
            err = (got - expected).abs().max().item()
            assert err < TOL, (variant, size, err)
            assert err / expected.abs().max().item() < TOL
    model.upsample = True
    with torch.no_grad():
        x = _image(SIZES[1])
        full = model(x)
        assert full.shape == (1, 21, *SIZES[1])
        assert (full - upsample_logits(hf(pixel_values=x).logits, SIZES[1])).abs().max().item() < TOL


def test_output_stride_and_rates_come_from_the_huggingface_config(tmp_path):
    """No tensor shows them: a folder saying output_stride 8 and other rates is built that way, like transformers;
    one saying 4 (which no MobileViT stage can give) is refused."""
    hf = _hf_segmentation_model("xx_small", num_labels=4, output_stride=8, atrous_rates=[3, 5, 7])
    with torch.no_grad():
        hf.save_pretrained(tmp_path, safe_serialization=True)
    ckpt = load_checkpoint(tmp_path, task="segmentation")
    assert ckpt.architecture == {"output_stride": 8, "atrous_rates": (3, 5, 7)} and ckpt.class_names is None
    model = load_model(tmp_path, task="segmentation")
    for size in (256, 512):
        x = _image((size, size))
        with torch.no_grad():
            expected, got = hf(pixel_values=x).logits, model(x)
        assert got.shape == expected.shape == (1, 4, size // 8, size // 8)
        assert (got - expected).abs().max().item() < TOL
    config = tmp_path / "config.json"
    config.write_text(config.read_text().replace('"output_stride": 8', '"output_stride": 4'))
    with pytest.raises(CheckpointError, match="config.json: output_stride 4 is not supported"):
        load_checkpoint(tmp_path, task="segmentation")


def test_remaps_are_pure_and_return_early():
    hf = _hf_segmentation_model("xx_small")
    sd = {k: v.contiguous() for k, v in hf.state_dict().items()}
    before = {k: v.clone() for k, v in sd.items()}
    ours = from_huggingface(sd, task="segmentation")
    assert sd.keys() == before.keys() and all(torch.equal(sd[k], before[k]) for k in sd)  # input untouched
    assert from_huggingface(ours, task="segmentation") is ours and from_cvnets(ours, task="segmentation") is ours
    with pytest.raises(UnknownFormatError, match="huggingface segmentation state dict, not cvnets"):
        from_cvnets(sd, task="segmentation")


# ------------------------------------------------------------------------------------ ml-cvnets
def _cv_classifier(cin, n):
    """ConvLayer2d(use_norm=False, use_act=False, bias=True): ``block.conv`` with a bias."""
    return _named(block=nn.Sequential(OrderedDict(conv=nn.Conv2d(cin, n, 1, bias=True))))


def cvnets_segmentation_skeleton(mode: str, num_classes: int = 21, aux_head: bool = False) -> nn.Module:
    """``SegEncoderDecoder(encoder=MobileViT(mode), seg_head=DeeplabV3)``; ``aux_head``: as recipes with
    ``use_aux_head`` train it (the released yaml files do not set it)."""
    encoder = cvnets_skeleton(mode)
    del encoder.conv_1x1_exp, encoder.classifier  # SegEncoderDecoder sets both to None (use_level5_exp False)
    c4, c5 = (encoder.get_submodule(f"layer_{i}.0.block.red_1x1.block.conv").out_channels for i in (4, 5))
    aux_inner = max(c4 // 4, 128)
    aspp = _named(
        convs=nn.ModuleList([_cv_conv_layer(c5, 256, 1)] + [_cv_conv_layer(c5, 256, 3) for _ in range(3)] + [
            _named(aspp_pool=nn.Sequential(OrderedDict(global_pool=nn.AdaptiveAvgPool2d(1),
                                                       conv_1x1=_cv_conv_layer(c5, 256, 1))))]),
        project=_cv_conv_layer(5 * 256, 256, 1), dropout_layer=nn.Dropout2d())
    seg_head = _named(aux_head=nn.Sequential(_cv_conv_layer(c4, aux_inner, 3), nn.Dropout2d(),
                                             _cv_classifier(aux_inner, num_classes)) if aux_head else None,
                      aspp=_named(aspp_layer=aspp), classifier=_cv_classifier(256, num_classes))
    return _named(encoder=encoder, seg_head=seg_head)


def _cvnets_state_dict(model) -> dict[str, torch.Tensor]:
    """``model``'s tensors under ml-cvnets' names, placed by position (shapes asserted at each), plus a random
    auxiliary head; independent of the remap code under test."""
    with torch.device("meta"):
        theirs = {k: v.shape for k, v in cvnets_segmentation_skeleton(model.cfg.name, model.cfg.num_classes, True)
                  .state_dict().items()}
    aux = {k: s for k, s in theirs.items() if k.startswith("seg_head.aux_head.")}
    main = [(k, s) for k, s in theirs.items() if k not in aux]
    ours = list(model.state_dict().items())
    assert len(main) == len(ours)
    out = {}
    for (their_key, shape), (our_key, tensor) in zip(main, ours):
        assert shape == tensor.shape, f"{their_key} {shape} in place of {our_key} {tuple(tensor.shape)}"
        out[their_key] = tensor.clone()
    g = torch.Generator().manual_seed(3)
    out.update({k: torch.randn(s, generator=g) if len(s) else torch.tensor(0) for k, s in aux.items()})
    return out


def test_cvnets_head_names_are_the_converters():
    """Apply transformers' convert_mlcvnets_to_pytorch renames to the skeleton's head keys: transformers' own keys."""
    with torch.device("meta"):
        cv = cvnets_segmentation_skeleton("xx_small", aux_head=True).state_dict()
    renamed = set()
    for k in cv:
        if k.startswith("seg_head.aux_head."):
            continue  # the converter drops it
        if k.startswith("seg_head."):
            k = (k.replace("seg_head.", "segmentation_head.").replace(".aspp_layer.", ".")
                 .replace(".aspp_pool.", ".").replace(".block.conv.", ".convolution.")
                 .replace(".block.norm.", ".normalization."))
            renamed.add(k)
    hf = {k for k in _hf_segmentation_model("xx_small").state_dict() if k.startswith("segmentation_head.")}
    assert renamed == hf
    assert cv["seg_head.aspp.aspp_layer.convs.1.block.conv.weight"].shape == (256, 80, 3, 3)
    assert cv["seg_head.aspp.aspp_layer.convs.4.aspp_pool.conv_1x1.block.norm.running_var"].shape == (256,)
    assert cv["seg_head.aspp.aspp_layer.project.block.conv.weight"].shape == (256, 1280, 1, 1)
    assert cv["seg_head.classifier.block.conv.bias"].shape == (21,)
    assert "encoder.conv_1x1_exp.block.conv.weight" not in cv


@pytest.mark.parametrize("variant", VARIANTS)
def test_cvnets_layout_is_detected(variant):
    with torch.device("meta"):
        sd = cvnets_segmentation_skeleton(variant, 7).state_dict()
    conv = convert_state_dict(sd, task="segmentation")
    assert (conv.format, conv.variant, conv.num_classes) == ("cvnets", variant, 7)


def test_cvnets_checkpoint_loads_exactly(tmp_path):
    """Any class count: 5 classes; the auxiliary head is dropped, every other tensor lands where it came from."""
    model = _randomize_(build_segmentation("xx_small", num_classes=5))
    path = tmp_path / "deeplabv3_mobilevit_xxs.pt"
    torch.save({"state_dict": _cvnets_state_dict(model)}, path)
    ckpt = load_checkpoint(path, task="segmentation")
    assert (ckpt.format, ckpt.variant, ckpt.num_classes, ckpt.class_names) == ("cvnets", "xx_small", 5, None)
    want = model.state_dict()
    assert ckpt.state_dict.keys() == want.keys()
    assert all(torch.equal(ckpt.state_dict[k], want[k]) for k in want)
    loaded = load_model(path, task="segmentation")
    x = _image((256, 256))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_our_own_state_dict_loads_as_is(tmp_path):
    model = _randomize_(build_segmentation("x_small", num_classes=3))
    path = tmp_path / "ours.pt"
    torch.save(model.state_dict(), path)
    ckpt = load_checkpoint(path, task="segmentation")
    assert (ckpt.format, ckpt.variant, ckpt.num_classes) == ("ours", "x_small", 3)
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in model.state_dict().items())


def test_our_format_keeps_class_names_and_origin(tmp_path):
    model = _randomize_(build_segmentation("xx_small", num_classes=3))
    path = save_checkpoint(model, tmp_path / "seg.pt", class_names=["road", "car", "tree"], origin="fine-tuned")
    ckpt = load_checkpoint(path, task="segmentation")
    assert (ckpt.format, ckpt.variant, ckpt.num_classes) == ("ours", "xx_small", 3)
    assert (ckpt.class_names, ckpt.origin) == (["road", "car", "tree"], "fine-tuned")
    loaded = load_model(path, task="segmentation", upsample=True)
    model.upsample = True
    x = _image((256, 256))
    with torch.no_grad():
        got = loaded(x)
        assert torch.equal(got, model(x))
    assert got.shape == (1, 3, 256, 256)  # upsample=True reached the model


# --------------------------------------------------------------------------------------- errors
def test_classification_checkpoints_are_refused_by_task(tmp_path):
    cls = build("xx_small")
    path = tmp_path / "classifier.pt"
    torch.save(to_format(cls.state_dict(), "huggingface", cls.cfg), path)
    with pytest.raises(TaskMismatchError, match="classification checkpoint \\(huggingface format\\)"):
        load_checkpoint(path, task="segmentation")
    with torch.device("meta"):
        cv = cvnets_skeleton("small").state_dict()
    with pytest.raises(TaskMismatchError, match="cvnets format"):
        convert_state_dict(cv, task="segmentation")
    with pytest.raises(UnknownFormatError, match="unknown segmentation checkpoint format"):
        convert_state_dict({"weight": torch.zeros(3)}, task="segmentation")


def test_segmentation_checkpoint_given_to_the_classifier_loader(tmp_path):
    hf = _hf_segmentation_model("xx_small")
    path = tmp_path / "seg.pt"
    torch.save(hf.state_dict(), path)
    with pytest.raises(KeyMismatchError, match="unexpected keys: segmentation_head"):
        load_checkpoint(path)


def test_wrong_variant_missing_keys_and_shapes_are_typed():
    sd = {k: v.contiguous() for k, v in _hf_segmentation_model("xx_small").state_dict().items()}
    with pytest.raises(VariantMismatchError, match="holds DeepLabV3-MobileViT xx_small weights .*not small: "
                                                   "pass --variant xx_small"):
        convert_state_dict(sd, variant="small", task="segmentation")
    with pytest.raises(VariantMismatchError, match="unknown MobileViT variant 'tiny'"):
        convert_state_dict(sd, variant="tiny", task="segmentation")
    missing = {k: v for k, v in sd.items() if k != "segmentation_head.classifier.convolution.bias"}
    with pytest.raises(KeyMismatchError) as e:
        convert_state_dict(missing, task="segmentation")
    assert e.value.missing == ["segmentation_head.classifier.convolution.bias"] and not e.value.unexpected
    bad = dict(sd)
    bad["segmentation_head.aspp.convs.2.convolution.weight"] = torch.zeros(256, 80, 1, 1)
    with pytest.raises(ShapeMismatchError, match="head.aspp.convs.2.conv.weight .*\\(256, 80, 1, 1\\) vs model "
                                                 "\\(256, 80, 3, 3\\)"):
        convert_state_dict(bad, task="segmentation")
