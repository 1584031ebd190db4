"""TFLite exports through onnx2tf: xx_small in every precision, small in fp32/fp16, x_small fp32."""
import numpy as np
import pytest

from export.targets.tflite.graph import inspect_tflite
from tests.export_helpers import TFLITE_ALL, exported

PASSING = TFLITE_ALL
MAX_TRANSPOSES_XXS = 21  # slice patches + split attention, measured; the HF export as-is has 54


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tflite")


@pytest.mark.parametrize("precision", PASSING)
def test_xx_small_every_precision_validates(root, precision):
    res = exported(root, "tflite", "xx_small", PASSING)[precision]
    v = res.manifest["validation"]
    assert v["passed"] and v["runtime"].startswith("litert"), v
    assert res.manifest["input"]["layout"] == "NHWC"
    report = inspect_tflite(res.artifact)
    assert report.max_rank <= 4
    assert report.shape_ops == {}
    assert report.transposes <= MAX_TRANSPOSES_XXS


def test_int8_recipe_kinds_are_int8_and_the_rest_float(root):
    """In the published full-int8 model, the recipe's int8 kinds run int8 kernels and everything else is float,
    with float input/output; expected counts from xx_small's architecture (tests.export_helpers)."""
    from collections import Counter

    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from export.config import int8_recipe
    from export.targets.tflite import quantize as T
    from tests.export_helpers import XXS_HEADS, XXS_LAYER_COUNTS

    res = exported(root, "tflite", "xx_small", PASSING)["int8"]
    recipe = int8_recipe("tflite", "int8")
    assert res.manifest["int8_recipe"]["float_kinds"] == list(recipe.float_kinds)
    interp = Interpreter(model_path=str(res.artifact), num_threads=1)
    interp.allocate_tensors()
    io = interp.get_input_details() + interp.get_output_details()
    assert [d["dtype"] for d in io] == [np.float32, np.float32]
    int8_outputs = {d["name"] for d in interp.get_tensor_details() if d["dtype"] == np.int8}
    ops = Counter((op.op, op.output in int8_outputs) for op in T.graph_ops(res.artifact.read_bytes()))
    int8_linears = sum(XXS_LAYER_COUNTS[k] for k in ("qkv", "attn_out", "ffn", "classifier")
                       if k not in recipe.float_kinds)
    assert ops[("FULLY_CONNECTED", True)] == int8_linears > 0
    assert ops[("BATCH_MATMUL", True)] == (0 if "attn_matmul" in recipe.float_kinds
                                          else 2 * XXS_HEADS * XXS_LAYER_COUNTS["attn_matmul"])
    assert ops[("SOFTMAX", True)] == 0 and ops[("MEAN", True)] == 0  # "*": no op outside a layer is int8


def test_small_fp32_fp16(root):
    for res in exported(root, "tflite", "small", ("fp32", "fp16")).values():
        assert res.manifest["validation"]["passed"]


def test_x_small_fp32_fp16(root):
    for res in exported(root, "tflite", "x_small", ("fp32", "fp16")).values():
        assert res.manifest["validation"]["passed"]


def test_mediapipe_image_classifier_ranks_classes_as_pytorch_does(root, photos, synthetic_xxs):
    """MediaPipe Tasks' ImageClassifier (the app-side API of Android, iOS and the web) loads the exported
    .tflite from its metadata alone (RGB input, /255 normalisation, labels.txt) and returns PyTorch's top-5
    classes on real photos. The photos are handed over already center-cropped to 256x256, so MediaPipe's
    own resize (a stretch, no crop) has nothing to do and both sides see the same pixels."""
    import mediapipe as mp
    import torch
    from mediapipe.tasks.python import BaseOptions, vision

    from export.targets.tflite.metadata import LABELS_FILE, packed_files
    from mobilevit.preprocess import resize_and_crop, to_tensor

    res = exported(root, "tflite", "xx_small", PASSING)["fp32"]
    labels = (res.artifact.parent / "labels.txt").read_text().splitlines()
    assert packed_files(res.artifact.read_bytes())[LABELS_FILE].decode().splitlines() == labels
    crops = [resize_and_crop(p, 256) for p in photos]  # uint8 RGB [256, 256, 3], what an app passes
    with torch.no_grad():  # the exported weights, fed what the crops are in PyTorch's own order (BGR / 255)
        logits = synthetic_xxs(to_tensor(crops, synthetic_xxs.cfg.preprocessing)).numpy()
    opts = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(res.artifact)), max_results=5)
    with vision.ImageClassifier.create_from_options(opts) as classifier:
        for crop, row in zip(crops, logits):
            got = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=crop)).classifications[0]
            want = np.argsort(-row)[:5]  # PyTorch's top-5, best first
            assert [c.index for c in got.categories] == want.tolist()
            assert [c.category_name for c in got.categories] == [labels[i] for i in want]
            np.testing.assert_allclose([c.score for c in got.categories], row[want], atol=1e-4)  # logits


def test_what_onnx2tf_cannot_convert_is_a_conversion_error_with_its_log_and_no_file(tmp_path):
    """A file that is not ONNX fails inside onnx2tf (export.targets.tflite.onnx2tf_driver): the error names the
    precision and carries onnx2tf's own last lines; a precision the Keras model is not converted to is refused."""
    from export.errors import ExportConfigError
    from export.targets.tflite.convert import TFLiteConversionError, onnx_to_tflite

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an ONNX file")
    photos = np.zeros((1, 3, 32, 32), np.float32)
    with pytest.raises(TFLiteConversionError, match=r"did not produce the fp32 model \(exit [1-9]") as err:
        onnx_to_tflite(bad, tmp_path / "out", precisions=("fp32",), calibration=photos)
    assert "Traceback" in str(err.value) or "Error" in str(err.value)
    assert list((tmp_path / "out").iterdir()) == []  # its scratch folder is gone too
    with pytest.raises(ExportConfigError, match="onnx2tf makes fp32, fp16, int8_dynamic, not \\['int8'\\]"):
        onnx_to_tflite(bad, tmp_path / "out", precisions=("fp32", "int8"), calibration=photos)
