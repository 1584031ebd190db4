"""Run onnx2tf for only what an export asks for (a subprocess: ``python -P onnx2tf_driver.py SPEC.json``).

onnx2tf's command line always writes a SavedModel and both an fp32 and an fp16 ``.tflite``, and with
``-oiqt`` five more quantized models, each a full TFLite conversion. Here onnx2tf builds the Keras model
(its ``disable_model_save``), and this script converts that model only to the precisions requested, with
the converter settings onnx2tf's own outputs use, and writes the SavedModel only when asked (as ``-osd``
writes it: one ``serving_default`` signature). onnx2tf's input/output renaming (``-coion``) needs a
``flatc`` binary this environment does not have (it was a no-op with a warning), so it is not done here
either. It imports nothing of this project, so TensorFlow stays out of the caller.

SPEC: ``{"onnx": path, "out": folder, "precisions": [...], "saved_model": bool}``; writes
``model_<precision>.tflite`` (and ``saved_model/``) in ``out``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _signature(tf, model) -> list:
    return [tf.TensorSpec(t.shape, t.dtype, t.name) for t in model.inputs]


def _converter(tf, model, concrete: bool = False):
    """From the Keras model (onnx2tf's fp32/fp16 outputs) or its concrete function (its dynamic-range one)."""
    if concrete:
        fn = tf.function(func=lambda *inputs: model(inputs), input_signature=_signature(tf, model))
        converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()])
    else:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    converter.unfold_batchmatmul = False
    return converter


def _convert(tf, model, precision: str) -> bytes:
    """The settings of onnx2tf 1.29's ``_float32``, ``_float16`` and ``_dynamic_range_quant`` outputs."""
    if precision == "fp32":
        return _converter(tf, model).convert()
    if precision == "fp16":
        converter = _converter(tf, model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
        return converter.convert()
    if precision == "int8_dynamic":
        converter = _converter(tf, model, concrete=True)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = []
        converter._experimental_disable_per_channel = False
        return converter.convert()
    raise ValueError(f"onnx2tf_driver makes fp32, fp16 and int8_dynamic, not {precision!r}")


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    onnx_path, out = Path(spec["onnx"]), Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)

    import onnx2tf
    import tensorflow as tf
    import tf_keras

    model = onnx2tf.convert(input_onnx_file_path=str(onnx_path), output_folder_path=str(out),
                            output_signaturedefs=True, disable_model_save=True, non_verbose=True)
    for precision in spec["precisions"]:
        (out / f"model_{precision}.tflite").write_bytes(_convert(tf, model, precision))
    if spec.get("saved_model"):
        archive = tf_keras.export.ExportArchive()
        archive.add_endpoint(name="serving_default", fn=lambda *inputs: model(inputs),
                             input_signature=_signature(tf, model))
        archive.write_out(str(out / "saved_model"))


if __name__ == "__main__":
    main(sys.argv[1])
