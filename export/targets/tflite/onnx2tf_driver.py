"""Run onnx2tf for only what an export asks for (a subprocess: ``python -P onnx2tf_driver.py SPEC.json``).

onnx2tf's command line always writes a SavedModel and both an fp32 and an fp16 ``.tflite``, and with
``-oiqt`` five more quantized models, each a full TFLite conversion. Here onnx2tf builds the Keras model
(its ``disable_model_save``), and this script converts that model only to the precisions requested, with
the converter settings onnx2tf's own outputs use. onnx2tf's input/output renaming (``-coion``) needs a
``flatc`` binary this environment does not have (it was a no-op with a warning), so it is not done here
either. It imports nothing of this project, so TensorFlow stays out of the caller.

Two choices make this script take 52 s on MobileViT small at 256x256 instead of about 120 s (AMD Zen 3, one
run each; same ops, same signature, outputs equal to the last bit on the same input):

- onnx2tf runs with ``disable_strict_mode`` first. Strict mode runs the partly built TensorFlow model, from
  the input, at every MatMul and Softmax to pick transpositions by comparing with onnxruntime: quadratic in
  the depth, half of onnx2tf's 75 s. The fast mode's Keras model is then run on one of the export's
  photos against onnxruntime on the ONNX file; only when they differ (the 512x512 segmentation graph: 0.8
  of the logit range) is the conversion redone in strict mode. On the classifiers both modes give the same
  ops. Either way every artifact is validated against PyTorch afterwards.
- The float models are converted from a plain SavedModel of the Keras model's variables and one
  ``serving_default`` function (as ``-osd`` writes it), not from the Keras model itself: the TFLite
  converter's own Keras save serialises every layer's config (36-46 s against 5 s, none of it in the
  output).

SPEC: ``{"onnx": path, "out": folder, "precisions": [...], "saved_model": bool, "sample": path}`` (``sample``:
an ``.npy`` float32 ``[1, 3, H, W]`` photo as the ONNX file takes it); writes
``model_<precision>.tflite`` (and ``saved_model/`` when asked) in ``out``.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def _signature(tf, model) -> list:
    return [tf.TensorSpec(t.shape, t.dtype, t.name) for t in model.inputs]


# Largest |Keras - onnxruntime| on the sample, as a share of onnxruntime's output range, that the fast mode may
# show (fp32 against fp32: about 1e-6 where the modes agree; a wrong transposition is of the order of 1).
FAST_MODE_AGREEMENT = 1e-3


def _onnx2tf(onnx2tf, onnx: bytes, folder: Path, *, strict: bool):
    """onnx2tf's Keras model of the ONNX file (it rewrites its input, so each run gets a fresh copy)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(onnx)
    return onnx2tf.convert(input_onnx_file_path=str(folder / "model.onnx"), output_folder_path=str(folder),
                           output_signaturedefs=True, disable_model_save=True, non_verbose=True,
                           disable_strict_mode=not strict)


def _disagreement(tf, model, onnx: bytes, sample) -> float:
    """Largest |Keras - onnxruntime| on ``sample`` over onnxruntime's output range (first output)."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    want = sess.run(None, {sess.get_inputs()[0].name: sample})[0]
    got = np.asarray(tf.nest.flatten(model(tf.constant(sample.transpose(0, 2, 3, 1))))[0])  # NCHW -> NHWC in
    if got.ndim == 4:
        got = got.transpose(0, 3, 1, 2)  # [1, h, w, K] -> [1, K, h, w], onnx2tf's channels-last output
    if got.shape != want.shape:
        return float("inf")
    return float(np.abs(got - want).max() / max(float(np.ptp(want)), 1e-12))


def _save(tf, tf_keras, model, folder: Path) -> None:
    """One ``serving_default`` signature: the model's input names in, its output names (``logits``) out."""
    names = list(model.output_names)
    archive = tf_keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default",
                         fn=lambda *inputs: dict(zip(names, tf.nest.flatten(model(inputs)))),
                         input_signature=_signature(tf, model))
    archive.write_out(str(folder))


def _converter(tf, *, saved: Path | None = None, model=None):
    """From the SavedModel (onnx2tf's fp32/fp16 outputs) or the model's concrete function (its dynamic-range
    one)."""
    if saved is not None:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    else:
        fn = tf.function(func=lambda *inputs: model(inputs), input_signature=_signature(tf, model))
        converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    converter.unfold_batchmatmul = False
    return converter


def _convert(tf, model, saved: Path, precision: str) -> bytes:
    """The settings of onnx2tf 1.29's ``_float32``, ``_float16`` and ``_dynamic_range_quant`` outputs."""
    if precision == "fp32":
        return _converter(tf, saved=saved).convert()
    if precision == "fp16":
        converter = _converter(tf, saved=saved)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
        return converter.convert()
    if precision == "int8_dynamic":
        converter = _converter(tf, model=model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = []
        converter._experimental_disable_per_channel = False
        return converter.convert()
    raise ValueError(f"onnx2tf_driver makes fp32, fp16 and int8_dynamic, not {precision!r}")


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    onnx_path, out = Path(spec["onnx"]), Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)

    import numpy as np
    import onnx2tf
    import tensorflow as tf
    import tf_keras

    onnx = onnx_path.read_bytes()
    model = _onnx2tf(onnx2tf, onnx, out / "fast", strict=False)
    off = _disagreement(tf, model, onnx, np.load(spec["sample"]))
    if off > FAST_MODE_AGREEMENT:
        print(f"onnx2tf_driver: the fast mode's model is {off:.3g} of the range off onnxruntime; "
              "converting again in strict mode", flush=True)
        model = _onnx2tf(onnx2tf, onnx, out / "strict", strict=True)
    saved = out / "saved_model"
    _save(tf, tf_keras, model, saved)
    for precision in spec["precisions"]:
        (out / f"model_{precision}.tflite").write_bytes(_convert(tf, model, saved, precision))
    if not spec.get("saved_model"):
        shutil.rmtree(saved)


if __name__ == "__main__":
    main(sys.argv[1])
