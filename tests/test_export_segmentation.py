"""Segmentation exports (``--task segmentation``): DeepLabV3-MobileViT xx_small at 512x512 on every target,
validated by pixel agreement and mean IoU with PyTorch's class map; what each artifact tells its app."""
import json

import numpy as np
import pytest
import torch

from mobilevit.config import VOC_CLASSES
from tests.export_helpers import exported

SEG = {"task": "segmentation"}
# Core ML at 256x256: its validation runs in the numpy reference executor, 9 s per 512x512 photo
COREML = {**SEG, "sizes": (256,)}
# (target, precisions exported together, precision checked, size): each target's default segmentation export
CASES = [("coreml", (), "fp16", 256), ("onnx", (), "fp32", 512), ("onnx", (), "fp16", 512),
         ("tflite", ("fp32",), "fp32", 512), ("executorch", (), "fp32", 512)]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("segmentation")


@pytest.mark.parametrize("target,precisions,precision,size", CASES)
def test_every_target_is_validated_by_pixels_and_miou(root, target, precisions, precision, size):
    from export.config import SEGMENTATION_TOLERANCES

    res = exported(root, target, "xx_small", precisions, **(COREML if target == "coreml" else SEG))[precision]
    m = res.manifest
    assert res.artifact.name == f"deeplabv3_mobilevit_xx_small_{precision}{res.artifact.suffix}"
    assert m["task"] == "segmentation" and m["validation"]["passed"], m["validation"]
    assert m["num_classes"] == 21 and m["input"]["sizes"] == [size]
    figures = m["validation"]["by_size"][str(size)]
    tol = SEGMENTATION_TOLERANCES[(target, precision)]
    assert figures["images"] == 8
    assert figures["pixel_agreement_min"] >= tol.pixel_min and figures["miou"] >= tol.miou_min
    if precision == "fp32":  # fp32 makes PyTorch's masks (but for a near-tie here and there)
        assert figures["pixel_agreement"] >= 0.9999 and figures["miou"] >= 0.999
    output = m["output"][0]
    if m["output_kind"] == "classmap":  # Core ML's default: the class of every input pixel
        assert target == "coreml" and output["shape"] == [1, size, size] and figures["cosine_min"] is None
    else:  # logits at 1/16 of the input (channels last in a .tflite, as onnx2tf writes it)
        assert output["shape"] == ([1, 32, 32, 21] if target == "tflite" else [1, 21, 32, 32])
        assert figures["cosine_min"] >= tol.cosine_min
    assert (res.artifact.parent / "labels.txt").read_text().split() == list(VOC_CLASSES)


def test_coreml_class_map_is_a_segmenter_for_xcode_and_vision(root):
    """Image in (BGR, /255 as the weights expect), int32 class map out, labels and Xcode's segmenter preview."""
    import coremltools as ct

    res = exported(root, "coreml", "xx_small", (), **COREML)["fp16"]
    spec = ct.utils.load_spec(str(res.artifact))
    (inp,), (out,) = spec.description.input, spec.description.output
    assert inp.type.imageType.width == inp.type.imageType.height == 256
    assert inp.type.imageType.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.BGR
    assert out.name == "classmap" and list(out.type.multiArrayType.shape) == [1, 256, 256]
    assert out.type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.INT32
    meta = spec.description.metadata.userDefined
    assert meta["com.apple.coreml.model.preview.type"] == "imageSegmenter"
    assert json.loads(meta["com.apple.coreml.model.preview.params"])["labels"] == list(VOC_CLASSES)
    assert json.loads(meta["labels"]) == list(VOC_CLASSES) and meta["task"] == "segmentation"
    assert "semantic segmentation" in spec.description.metadata.shortDescription


def test_onnx_and_tflite_say_what_they_are(root):
    """onnxruntime's get_modelmeta and our TFLite entry name the task, the classes and the layouts."""
    import onnxruntime as ort

    from export.targets.tflite.metadata import read_json

    onnx = exported(root, "onnx", "xx_small", (), **SEG)["fp32"].artifact
    props = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert props["task"] == "segmentation" and props["output"] == "logits"
    assert json.loads(props["labels"]) == list(VOC_CLASSES)
    entry = read_json(exported(root, "tflite", "xx_small", ("fp32",), **SEG)["fp32"].artifact.read_bytes())
    assert entry["task"] == "segmentation" and entry["labels"] == list(VOC_CLASSES)
    assert entry["output_layout"] == "NHWC" and entry["channel_order"] == "RGB"


def test_a_huggingface_segmentation_checkpoint_exports_to_what_transformers_computes(tmp_path, photos):
    """transformers' MobileViTForSemanticSegmentation, saved with save_pretrained, exported to ONNX through the
    CLI's pipeline: onnxruntime's logits on real photos equal transformers' own."""
    import onnxruntime as ort

    from export.pipeline import ExportRequest, run_export
    from mobilevit.config import get_segmentation_config
    from mobilevit.preprocess import preprocess
    from tests.checkpoint_helpers import _hf_segmentation_model

    hf = _hf_segmentation_model("xx_small")
    hf.save_pretrained(tmp_path / "hf")
    (res,) = run_export(ExportRequest(target="onnx", variant=None, weights=str(tmp_path / "hf"),
                                      precisions=("fp32",), out=tmp_path / "out", **SEG))
    assert res.manifest["variant"] == "xx_small" and res.manifest["weights"]["format"] == "huggingface"
    x = preprocess(photos[:2], get_segmentation_config("xx_small"), 512)  # [2, 3, 512, 512], BGR / 255
    with torch.no_grad():
        want = hf(pixel_values=x).logits.numpy()  # [2, 21, 32, 32]
    session = ort.InferenceSession(str(res.artifact), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    got = np.concatenate([session.run(None, {name: x[i:i + 1].numpy()})[0] for i in range(2)])
    assert got.shape == want.shape == (2, 21, 32, 32)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_mediapipe_image_segmenter_loads_the_tflite_and_returns_pytorch_masks(root, photos):
    """MediaPipe Tasks' ImageSegmenter (the app-side API) loads the .tflite from its metadata (RGB, /255, the 21
    labels): its confidence masks are PyTorch's logits upsampled to the photo, and its category mask is their
    argmax, upsampled with aligned corners (MediaPipe's way, and ml-cvnets'), on real 512x512 crops."""
    import mediapipe as mp
    import torch.nn.functional as F
    from mediapipe.tasks.python import BaseOptions, vision

    from data.synthetic import synthetic_segmentation_model
    from mobilevit.preprocess import resize_and_crop, to_tensor
    from mobilevit.segmentation import upsample_logits

    res = exported(root, "tflite", "xx_small", ("fp32",), **SEG)["fp32"]
    model = synthetic_segmentation_model("xx_small", size=256)  # the exported weights (export.request.load_model)
    crops = [resize_and_crop(p, 512, 512) for p in photos[:2]]  # uint8 RGB, what an app passes
    with torch.no_grad():
        logits = model(to_tensor(crops, model.cfg.preprocessing))  # [2, 21, 32, 32], BGR / 255 inside
        confidence = upsample_logits(logits, (512, 512)).numpy()  # [2, 21, 512, 512]
        category = F.interpolate(logits, (512, 512), mode="bilinear", align_corners=True).argmax(1).numpy()
    opts = vision.ImageSegmenterOptions(base_options=BaseOptions(model_asset_path=str(res.artifact)),
                                        output_category_mask=True, output_confidence_masks=True)
    with vision.ImageSegmenter.create_from_options(opts) as segmenter:
        assert segmenter.labels == list(VOC_CLASSES)
        for i, crop in enumerate(crops):
            got = segmenter.segment(mp.Image(image_format=mp.ImageFormat.SRGB, data=crop))
            masks = np.stack([m.numpy_view().squeeze(-1) for m in got.confidence_masks])  # [21, 512, 512]
            np.testing.assert_allclose(masks, confidence[i], rtol=0, atol=1e-4 * np.abs(confidence[i]).max())
            assert (got.category_mask.numpy_view().squeeze(-1) == category[i]).mean() > 0.999
