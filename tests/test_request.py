"""The request stage: defaults resolved and bad requests refused before any work (no conversion here)."""
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.errors import ExportConfigError
from export.request import (
    VALIDATION_IMAGES,
    ExportRequest,
    calibration,
    destination,
    resolve,
    validation_photos,
)
from mobilevit import get_config


def test_defaults_come_from_the_target_registry():
    req = resolve(ExportRequest(target="onnx", variant="xx_small", precisions=("int8", "fp32", "int8")))
    assert req.precisions == ("int8", "fp32") and req.patches == "slice" and req.attention == "split"
    assert req.sizes == (256,) and destination(req, "int8") == Path("artifacts/mobilevit_xx_small_onnx_int8")
    coreml = resolve(ExportRequest(target="coreml", variant="xx_small", sizes=(256, 192)))
    assert coreml.precisions == ("fp16",) and coreml.patches == "pixel_shuffle"
    assert destination(coreml, "fp16").name == "mobilevit_xx_small_coreml_fp16_256-192"


@pytest.mark.parametrize("kw, says", [
    ({"target": "coreml", "input_kind": "video"}, "unknown input kind 'video'; choose one of: image, tensor"),
    ({"target": "coreml", "output_kind": "boxes"}, "unknown output kind 'boxes'"),
    ({"target": "onnx", "sizes": (256, 320)}, "onnx exports one size"),
    ({"target": "onnx", "dynamic_hw": True, "sizes": (224,)}, "needs --size to be a multiple of 64"),
    ({"target": "tflite", "attention": "sideways"}, "unknown attention layout 'sideways'"),
])
def test_bad_requests_are_refused_at_resolution(kw, says):
    with pytest.raises(ExportConfigError, match=re.escape(says)):
        resolve(ExportRequest(variant="xx_small", **kw))


@pytest.mark.parametrize("target, precisions, refused", [
    ("tflite", ("fp32",), "fp32"),
    ("tflite", ("int8", "int8_dynamic"), "int8_dynamic"),
    ("executorch", ("fp32", "int8"), "fp32"),
    ("executorch", ("coreml-fp16",), "coreml-fp16"),
    ("coreml", ("fp16",), "fp16"),
    ("onnx", ("fp16",), "fp16"),
])
def test_float_kinds_for_a_precision_that_is_not_int8_are_refused_at_resolution(target, precisions, refused):
    """The same refusal on every target (export.int8.Int8Options), naming the precision and the fix."""
    req = ExportRequest(target=target, variant="xx_small", precisions=precisions, float_kinds=("stem",))
    with pytest.raises(ExportConfigError, match=f"applies to {target} .*, not to {refused}: drop --float-kinds"):
        resolve(req)


@pytest.mark.parametrize("target, precision", [("tflite", "int8"), ("executorch", "int8"), ("coreml", "w8a8"),
                                               ("coreml", "int8"), ("onnx", "int8")])
def test_float_kinds_for_int8_pass_resolution(target, precision):
    req = resolve(ExportRequest(target=target, variant="xx_small", precisions=(precision,), float_kinds=("stem",)))
    assert req.float_kinds == ("stem",) and req.precisions == (precision,)


def test_a_user_folder_keeps_calibration_apart_from_validation(tmp_path):
    """With enough images, int8 is calibrated on photos validation never sees."""
    from data.photos import photo_variants

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, img in enumerate(photo_variants(VALIDATION_IMAGES + 6, seed=5)):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    req = resolve(ExportRequest(target="onnx", variant="xx_small", images=str(folder)))
    cfg = get_config("xx_small")
    val, cal = validation_photos(req, cfg)[256], calibration(req, cfg)
    assert len(val) == VALIDATION_IMAGES and len(cal) == 6
    flat_val = {v.tobytes() for v in val}
    assert not any(c.tobytes() in flat_val for c in cal)
    assert val.dtype == np.float32 and val.shape[1:] == (3, 256, 256)
