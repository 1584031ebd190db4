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
import os
import pickle
import stat

import numpy as np
import pytest
import torch

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
    UnknownTaskError,
    UnsafeCheckpointError,
    VariantMismatchError,
    convert_state_dict,
    from_cvnets,
    from_huggingface,
    from_mmpretrain,
    from_ours,
    from_timm,
    load_checkpoint,
    load_model,
    save_checkpoint,
    to_format,
)
from mobilevit.threads import torch_threads
from tests.checkpoint_helpers import (
    SKELETONS,
    _hf_model,
    _random_model,
    _skeleton_keys,
    _their_state_dict,
)

VARIANTS = ("xx_small", "x_small", "small")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are small: one thread is several times faster than two on a shared 2-core machine."""
    with torch_threads(1):
        yield


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
    expected = "this is a cvnets classification state dict, not timm: use from_cvnets"
    with pytest.raises(UnknownFormatError, match=expected):
        from_timm(_their_state_dict("cvnets", "xx_small", model))


def test_from_ours_checks_the_variant_and_returns_early():
    model = _random_model("xx_small")
    ours = model.state_dict()
    assert from_ours(ours) is ours  # complete: nothing to add
    stripped = {k: v for k, v in ours.items() if not k.endswith("num_batches_tracked")}
    assert len(stripped) < len(ours)
    filled = from_ours(stripped)
    assert list(filled) != list(stripped) and filled.keys() == ours.keys()
    assert all(filled[k] is v for k, v in stripped.items())
    assert all(int(filled[k]) == 0 for k in ours.keys() - stripped.keys())
    with pytest.raises(VariantMismatchError, match="holds MobileViT xx_small weights .*not small"):
        from_ours(ours, variant="small")
    with pytest.raises(UnknownFormatError, match="this is a timm classification state dict, not ours: use from_timm"):
        from_ours(_their_state_dict("timm", "xx_small", model))


# ------------------------------------------------------------------------ Hugging Face peer
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


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_saved_checkpoint_has_the_ordinary_permissions_of_the_umask(tmp_path, tiny, umask, mode):
    """A temporary file alone would be 0600 whatever the umask: the saved file gets 0666 minus the umask."""
    before = os.umask(umask)
    try:
        path = save_checkpoint(tiny, tmp_path / "model.pt")
    finally:
        os.umask(before)
    assert stat.S_IMODE(path.stat().st_mode) == mode


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
    expected = "unknown classification checkpoint format .*conv1.weight.*MobileViT v1"
    with pytest.raises(UnknownFormatError, match=expected):
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


def test_unknown_task_names_the_tasks(tmp_path, tiny):
    path = save_checkpoint(tiny, tmp_path / "m.pt")
    with pytest.raises(UnknownTaskError, match="unknown task 'detection'; choose one of: classification, segmentation"):
        load_checkpoint(path, task="detection")


def test_newer_format_version_is_refused(tmp_path, tiny):
    path = save_checkpoint(tiny, tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)
    torch.save(dict(raw, format_version=2), path)
    with pytest.raises(UnknownFormatError, match="format version 2 .*update the toolkit"):
        load_checkpoint(path)
