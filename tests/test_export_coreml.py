"""Core ML exports: the default artifact, options, compression, multi-size, graph checks.

On Linux, validation runs the saved .mlpackage in the reference executor
(``export.targets.coreml.reference``); on macOS, in Core ML itself. A validation that did not run fails
these tests: nothing is "validated" silently.
"""
import json
from collections import Counter

import coremltools as ct
import pytest

from data.synthetic import synthetic_model
from export import with_target_defaults
from export.errors import ExportError
from export.targets.coreml.convert import CoreMLOptions, convert_coreml
from export.targets.coreml.graph import inspect_coreml
from export.targets.coreml.labels import classifier_labels
from export.targets.coreml.program import _op_name, kind_ops, mil_layer_ops
from export.targets.coreml.reference import CoreMLReference
from mobilevit.labels import imagenet_labels
from mobilevit.layers import KINDS, layers
from tests.export_helpers import exported


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("coreml")


def _validated(res):
    v = res.manifest["validation"]
    assert not v["skipped"], v["skipped"]
    assert v["passed"] and v["by_size"], v
    return v


def test_default_artifact_is_an_xcode_ready_classifier(root):
    res = exported(root, "coreml", "xx_small")["fp16"]
    _validated(res)
    spec = ct.utils.load_spec(str(res.artifact))
    inp = spec.description.input[0]
    assert inp.name == "image" and inp.type.HasField("imageType")
    assert inp.type.imageType.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.BGR
    assert (inp.type.imageType.width, inp.type.imageType.height) == (256, 256)
    assert spec.description.predictedFeatureName == "classLabel"
    assert classifier_labels(spec) == imagenet_labels()
    meta = spec.description.metadata
    assert "SYNTHETIC" in meta.shortDescription and meta.author and meta.license and meta.versionString
    assert meta.userDefined["variant"] == "xx_small" and meta.userDefined["synthetic"] == "true"
    assert meta.userDefined["com.apple.coreml.model.preview.type"] == "imageClassifier"  # Xcode's Preview tab
    # no day stamp: the same export made after midnight must stay byte-identical (coremltools adds one)
    assert not [k for k in meta.userDefined if "date" in k.lower()]
    assert spec.description.input[0].shortDescription
    manifest = json.loads((res.folder / "manifest.json").read_text())
    assert manifest["precision"] == "fp16" and manifest["patch_strategy"] == "pixel_shuffle"


def test_fp32_tensor_input_raw_logits(root):
    res = exported(root, "coreml", "xx_small", ("fp32",), input_kind="tensor", output_kind="logits")["fp32"]
    v = _validated(res)
    assert v["by_size"]["256"]["max_abs_rel"] < 1e-4
    spec = ct.utils.load_spec(str(res.artifact))
    assert spec.description.input[0].name == "input" and spec.description.output[0].name == "logits"


@pytest.mark.parametrize("precision", ["int8", "palettize8"])
def test_compressed_weights(root, precision):
    res = exported(root, "coreml", "xx_small", (precision,))[precision]
    _validated(res)
    ops = inspect_coreml(res.artifact).ops
    assert ops.get("constexpr_affine_dequantize", 0) + ops.get("constexpr_lut_to_dense", 0) > 30


def test_multi_size_model_validates_every_size(root):
    res = exported(root, "coreml", "xx_small", ("fp16",), sizes=(256, 192, 320))["fp16"]
    v = _validated(res)
    assert set(v["by_size"]) == {"192", "256", "320"}
    spec = ct.utils.load_spec(str(res.artifact))
    sizes = {(s.width, s.height) for s in spec.description.input[0].type.imageType.enumeratedSizes.sizes}
    assert sizes == {(192, 192), (256, 256), (320, 320)}


@pytest.mark.parametrize("variant", ["x_small", "small"])
def test_other_variants(root, variant):
    _validated(exported(root, "coreml", variant, ("fp16",))["fp16"])


@pytest.mark.parametrize("variant", ["x_small", "small"])
def test_other_variants_fp32(root, variant):
    _validated(exported(root, "coreml", variant, ("fp32",), output_kind="logits")["fp32"])


def test_static_graph_rank_and_shape_ops(root):
    report = inspect_coreml(exported(root, "coreml", "xx_small")["fp16"].artifact)
    assert report.max_rank <= 4
    assert report.shape_ops == {}
    assert report.transposes <= 15  # pixel_shuffle + split attention: 9 layers + 6 patch permutes



@pytest.fixture(scope="module")
def xxs_coreml():
    return with_target_defaults(synthetic_model("xx_small"), "coreml")


def test_kind_ops_map_every_layer_in_execution_order(xxs_coreml):
    model = xxs_coreml
    spec = convert_coreml(model, "fp16", (256,), CoreMLOptions(input_kind="tensor", output_kind="logits")).get_spec()
    ops = kind_ops(spec, model)
    assert set(ops) == set(KINDS)
    counts = Counter(layer.kind for layer in layers(model))
    mil = {name: (typ, weight, groups) for name, typ, weight, groups in mil_layer_ops(spec)}
    assert sum(len(v) for v in ops.values()) == len(mil)  # every conv / linear / matmul has exactly one kind
    for kind, names in ops.items():
        if kind == "attn_matmul":  # split attention: q.k^T and attn.v per head
            assert len(names) % (2 * counts[kind]) == 0 and {mil[n][0] for n in names} == {"matmul"}
        else:
            assert len(names) == counts[kind]
    assert all(mil[n][2] == mil[n][1][0] and mil[n][1][1] == 1 for n in ops["depthwise"])
    assert all(mil[n][1][2:] == (1, 1) for k in ("expand", "project", "conv_in", "conv_proj", "conv_exp")
               for n in ops[k])
    assert all(mil[n][1][2:] == (3, 3) and mil[n][2] == 1 for k in ("stem", "local3x3", "fusion3x3")
               for n in ops[k])
    with pytest.raises(ExportError, match="expects conv weight"):
        kind_ops(spec, synthetic_model("x_small"))  # another model's shapes do not fit this program


def test_w8a8_int8_activations_and_weights_except_float_kinds(root, xxs_coreml):
    from export.config import int8_recipe

    res = exported(root, "coreml", "xx_small", ("w8a8",), input_kind="tensor", output_kind="logits")["w8a8"]
    _validated(res)
    ref = CoreMLReference(res.artifact)
    ops = ref.op_types()
    assert ops["quantize"] > 20 and ops["dequantize"] > 20 and ops["constexpr_affine_dequantize"] > 10
    assert ref.spec.specificationVersion >= 8  # iOS 17
    producer = {o.name: op.type for op in ref.block.operations for o in op.outputs}
    kind = {name: k for k, names in kind_ops(ref.spec, xxs_coreml).items() for name in names}
    for op in ref.block.operations:
        if op.type not in ("conv", "linear"):
            continue
        k = kind[_op_name(op)]
        x_from = producer.get(op.inputs["x"].arguments[0].name)
        w_from = producer.get(op.inputs["weight"].arguments[0].name)
        # a float kind's input may still be a quantized neighbour's dequantized output
        if k in int8_recipe("coreml", "w8a8").float_kinds:
            assert w_from == "const", (k, op.outputs[0].name)
        else:
            assert x_from == "dequantize" and w_from == "constexpr_affine_dequantize", (k, op.outputs[0].name)


def test_int8_float_kinds_keep_those_weights_float(xxs_coreml):
    from export.errors import ExportConfigError

    opts = CoreMLOptions(input_kind="tensor", output_kind="logits", float_kinds=("ffn", "project"))
    spec = convert_coreml(xxs_coreml, "int8", (256,), opts).get_spec()
    main = spec.mlProgram.functions["main"]
    block = main.block_specializations[main.opset]
    producer = {o.name: op.type for op in block.operations for o in op.outputs}
    kind = {name: k for k, names in kind_ops(spec, xxs_coreml).items() for name in names}
    weight_from = {}
    for op in block.operations:
        if op.type in ("conv", "linear"):
            weight_from.setdefault(kind[_op_name(op)], set()).add(producer[op.inputs["weight"].arguments[0].name])
    assert weight_from["ffn"] == weight_from["project"] == {"const"}
    assert weight_from["qkv"] == weight_from["conv_exp"] == {"constexpr_affine_dequantize"}  # > 2048 weights
    with pytest.raises(ExportConfigError, match="unknown layer kind"):
        CoreMLOptions(float_kinds=("mlp",))
    with pytest.raises(ExportConfigError, match="applies to coreml int8, w8a8, not to fp16"):
        convert_coreml(xxs_coreml, "fp16", (256,), CoreMLOptions(float_kinds=("ffn",)))


def test_w8a8_artifact_and_its_figures_are_the_same_on_every_cpu(tmp_path, xxs_coreml):
    """What differs from one machine to the next, forced here: the BLAS's thread count (how it splits
    float32 sums: 1 and 2 OpenBLAS threads gave different activation ranges, scales and a validation
    cosine of 0.99793 against 0.99777 with float32 sums) and flush-to-zero / denormals-are-zero, which MKL,
    TensorFlow, onnxruntime or ``torch.set_flush_denormal`` switch on. The artifact's bytes and what the
    validator computes from it must not move."""
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    from data.photos import photo_variants
    from export.convert import calibration_photos
    from export.request import VALIDATION_SEED
    from export.targets.coreml.convert import normalise_package
    from export.targets.coreml.reference import CoreMLReferenceRunner
    from mobilevit.preprocess import preprocess

    calibration = calibration_photos(xxs_coreml.cfg, 256, count=8)
    photos = preprocess(photo_variants(4, seed=VALIDATION_SEED), xxs_coreml.cfg, 256).numpy()
    opts = CoreMLOptions(input_kind="tensor", output_kind="logits")
    made = {}
    for condition, threads, flush in (("2 BLAS threads", 2, False), ("1 BLAS thread", 1, False),
                                      ("flush-to-zero", 2, True)):
        path = tmp_path / f"{threads}-{flush}.mlpackage"
        with threadpool_limits(threads, user_api="blas"):
            assert torch.set_flush_denormal(flush) or not flush, "this CPU cannot flush denormals"
            try:
                convert_coreml(xxs_coreml, "w8a8", (256,), opts, calibration=calibration).save(str(path))
                outputs = CoreMLReferenceRunner(normalise_package(path))(photos)
            finally:
                torch.set_flush_denormal(False)
        files = {f.relative_to(path).as_posix(): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}
        made[condition] = files, outputs
    files, outputs = made.pop("2 BLAS threads")
    for condition, (other_files, other_outputs) in made.items():
        assert set(other_files) == set(files), condition
        differ = [name for name in files if other_files[name] != files[name]]
        assert not differ, f"{condition}: {differ} differ"
        assert np.array_equal(other_outputs, outputs), f"{condition}: the validator's outputs differ"


def test_w8a8_in_one_pipeline_is_coremltools_two_calls(tmp_path, xxs_coreml):
    """``quantize_w8a8`` applies the activation and weight passes in one conversion (each of coremltools' calls
    converts the program again through its whole default pipeline). Its program must be the one coremltools'
    own two calls make (the activation passes converted, then the public ``linear_quantize_weights`` on that,
    its shared consts given their own configs first, as before): the same ops and the same weight file byte for
    byte, the same outputs in the executor bit for bit, and a spec that differs in variable names at most (the
    second conversion renames some); for the export's default (every op it can quantize) and for a searched set
    of two ops, whose weights alone are int8."""
    import coremltools.optimize.coreml as cto
    import numpy as np
    from coremltools import _SPECIFICATION_VERSION_IOS_17
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load
    from coremltools.models import utils as model_utils

    from export.convert import calibration_photos
    from export.targets.coreml.program import (
        _calibration_feeds,
        activation_passes,
        activation_ranges,
        float_program,
        keep_shared_consts_consistent,
        kind_ops,
        quantize_w8a8,
        w8a8_configs,
    )

    opts = CoreMLOptions(input_kind="tensor", output_kind="logits")
    base = float_program(xxs_coreml, "w8a8", (64,), opts)
    base.save(str(tmp_path / "float.mlpackage"))
    photos = calibration_photos(xxs_coreml.cfg, 64, count=3)
    stats = activation_ranges(tmp_path / "float.mlpackage", _calibration_feeds(photos[:2], "tensor",
                                                                                 opts.preprocessing))
    by_kind = kind_ops(base.get_spec(), xxs_coreml)
    conv, linear = by_kind["stem"][0], by_kind["ffn"][0]
    for name, configs, int8_weights in (("default", lambda: w8a8_configs(by_kind), 72),  # xx_small's conv / linear
                                        ("two ops", lambda: w8a8_configs({}, only_ops=[conv, linear]), 2)):
        fused = quantize_w8a8(base, [], *configs(), stats=stats)
        act, weight = configs()
        activations = model_utils._apply_graph_pass(base, activation_passes(base, stats, act),
                                                    spec_version=_SPECIFICATION_VERSION_IOS_17,
                                                    pymil_load_func=milproto_load, skip_model_load=True)
        peer = cto.linear_quantize_weights(activations, keep_shared_consts_consistent(activations.get_spec(), weight))
        saved = {}
        for model, folder in ((fused, "fused"), (peer, "peer")):
            saved[folder] = tmp_path / name / f"{folder}.mlpackage"
            model.save(str(saved[folder]))
        weights = [(p / "Data/com.apple.CoreML/weights/weight.bin").read_bytes() for p in saved.values()]
        assert weights[0] == weights[1], name
        ours, theirs = (str(m.get_spec()).splitlines() for m in (fused, peer))
        assert len(ours) == len(theirs), name
        renamed = [(a, b) for a, b in zip(ours, theirs) if a != b]
        assert all(a.split(":")[0] == b.split(":")[0] and a.strip().split(":")[0] in ("name", "values")
                   for a, b in renamed), (name, renamed[:4])
        outputs = [CoreMLReference(p).run({"input": photos[2:]})["logits"] for p in saved.values()]
        assert np.array_equal(outputs[0], outputs[1]), name
        assert inspect_coreml(saved["fused"]).ops.get("constexpr_affine_dequantize", 0) == int8_weights, name


def test_the_executor_benchmark_times_each_kernel_set_against_the_numpy_reference(root, tmp_path, capsys):
    """benchmarks.executor on the session's default program: the torch kernels with float64 sums give the numpy
    reference's outputs bit for bit (the executor's design: same roundings, same sums); float32 sums do not, but
    stay within fp16 storage drift of them. A mode a kernel set does not have, or an artifact whose runner has
    no kernel sets, is exit 2 with the reason."""
    import json

    from benchmarks import executor

    pkg = exported(root, "coreml", "xx_small")["fp16"].artifact
    assert executor.main([str(pkg), "--images", "2", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "executor.json").read_text())["artifacts"][0]["modes"]
    assert [(r["kernels"], r["accumulate"]) for r in rows] == [("numpy", "fp64"), ("torch", "fp64"), ("torch", "fp32")]
    assert rows[0]["bit_equal"] and rows[0]["speedup"] == 1.0 and rows[0]["max_diff_over_range"] == 0.0
    assert rows[1]["bit_equal"] and rows[1]["max_diff_over_range"] == 0.0
    assert not rows[2]["bit_equal"] and 0 < rows[2]["max_diff_over_range"] < 1e-2
    assert all(r["cpu_ms_per_image"] > 0 for r in rows)
    assert "| xx_small fp16 (256px) | torch | fp64 |" in (tmp_path / "executor.md").read_text()
    capsys.readouterr()
    assert executor.main([str(pkg), "--modes", "numpy:fp64,torch:fp16", "--out", str(tmp_path / "x")]) == 2
    assert "no fp16 accumulate mode" in capsys.readouterr().err
    onnx_file = exported(root, "onnx", "xx_small", ("fp32", "fp16", "int8", "int8_dynamic"))["fp32"].artifact  # shared
    assert executor.main([str(onnx_file), "--out", str(tmp_path / "y")]) == 2
    assert "its runner has no kernel sets" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
