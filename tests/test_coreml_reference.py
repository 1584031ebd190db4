"""The Core ML reference executor: op semantics, whole models, planted faults, clear errors."""
import shutil
from pathlib import Path

import coremltools as ct
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.converters.mil import Builder as mb

from data.photos import sample_batch
from data.synthetic import synthetic_model
from export import convert
from export.targets.coreml.reference import (
    CoreMLReference,
    CoreMLReferenceError,
    CoreMLReferenceRunner,
    UnsupportedOpError,
)
from export.targets.coreml.runner import coreml_runtime_available
from export.validate import drift
from mobilevit import STRATEGIES

RNG = np.random.default_rng(0)
FP16_BOUND = 2e-2  # max abs diff / max |logit| of an fp16 program vs PyTorch fp32 (measured ~3e-3)


def _save_program(prog, path, precision=ct.precision.FLOAT32, target=ct.target.iOS16):
    ml = ct.convert(prog, convert_to="mlprogram", compute_precision=precision, pass_pipeline=ct.PassPipeline.EMPTY,
                    minimum_deployment_target=target, skip_model_load=True)
    ml.save(str(path))
    return CoreMLReference(path)


def _run(prog, tmp_path, target=ct.target.iOS16, **inputs):
    ref = _save_program(prog, tmp_path / "p.mlpackage", target=target)
    out = ref.run(inputs)
    return [out[k] for k in ref.block.outputs]


# -------------------------------------------------------------------------------------- ops
# Input [1, 8, 8, 9], 3x3 kernel. Explicit pads (left, right, top, bottom), worked out by hand from the MIL spec's
# "same": out = ceil(in / stride), total = max((out - 1) * stride + (k - 1) * dil + 1 - in, 0), the smaller half
# first ("same_lower": the larger half first). Stride 2, dil 1: H (3 + 3 - 8 = 1) -> 0 + 1, W (8 + 3 - 9 = 2) -> 1 + 1.
# Stride 1: H (7 + 3 - 8) = 2, W (8 + 3 - 9) = 2 -> 1 + 1 each. Stride 2, dil 2 (k 5): H (6 + 5 - 8 = 3) -> 1 + 2,
# W (8 + 5 - 9 = 4) -> 2 + 2. Custom pad [top 1, bottom 2, left 0, right 1] -> (0, 1, 1, 2).
@pytest.mark.parametrize("pad_type,stride,groups,dil,torch_pad", [
    ("same", 2, 1, 1, (1, 1, 0, 1)), ("valid", 1, 1, 1, (0, 0, 0, 0)), ("same", 1, 4, 1, (1, 1, 1, 1)),
    ("same_lower", 2, 1, 1, (1, 1, 1, 0)), ("custom", 2, 2, 2, (0, 1, 1, 2)), ("same", 2, 8, 1, (1, 1, 0, 1)),
    ("same", 2, 1, 2, (2, 2, 1, 2)), ("same_lower", 2, 1, 2, (2, 2, 2, 1))])
def test_conv_matches_torch(tmp_path, pad_type, stride, groups, dil, torch_pad):
    """MIL conv against torch conv2d on the input padded explicitly by the pads written above."""
    x = RNG.standard_normal((1, 8, 8, 9)).astype(np.float32)
    w = RNG.standard_normal((8, 8 // groups, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(8).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS16)
    def prog(x):
        kw = {"pad": [1, 2, 0, 1]} if pad_type == "custom" else {}
        return mb.conv(x=x, weight=w, bias=b, strides=[stride, stride], pad_type=pad_type, groups=groups,
                       dilations=[dil, dil], **kw)

    (got,) = _run(prog, tmp_path, x=x)
    xt = F.pad(torch.from_numpy(x), torch_pad)
    want = F.conv2d(xt, torch.from_numpy(w), torch.from_numpy(b), stride=stride, groups=groups, dilation=dil)
    if pad_type.startswith("same"):
        assert got.shape[2:] == (-(-8 // stride), -(-9 // stride))  # "same" keeps ceil(in / stride)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tx,ty", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_transpose_and_broadcast(tmp_path, tx, ty):
    a = RNG.standard_normal((2, 3, 5, 4) if not tx else (2, 3, 4, 5)).astype(np.float32)
    b = RNG.standard_normal((4, 6) if not ty else (6, 4)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=a.shape)], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.matmul(x=x, y=b, transpose_x=tx, transpose_y=ty)

    (got,) = _run(prog, tmp_path, x=a)
    want = np.matmul(np.swapaxes(a, -1, -2) if tx else a, b.T if ty else b)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_slice_concat_reshape_transpose(tmp_path):
    x = RNG.standard_normal((2, 6, 5, 4)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS16)
    def prog(x):
        s = mb.slice_by_index(x=x, begin=[0, 1, 0, 3], end=[1, 6, 5, 0], stride=[1, 2, 2, 1],
                              begin_mask=[False, False, True, False], end_mask=[False, False, True, True],
                              squeeze_mask=[True, False, False, False])  # -> [3, 3, 1]
        c = mb.concat(values=[x, mb.mul(x=x, y=2.0)], axis=1, interleave=True)  # -> [2, 12, 5, 4]
        r = mb.reshape(x=c, shape=[0, 12, -1, 2])  # 0 keeps dim 0 -> [2, 12, 10, 2]
        t = mb.transpose(x=r, perm=[3, 0, 2, 1])
        return s, t

    s, t = _run(prog, tmp_path, x=x)
    np.testing.assert_array_equal(s, x[0, 1:6:2, ::2, 3:])
    inter = np.stack([x, x * 2], axis=2).reshape(2, 12, 5, 4)
    np.testing.assert_array_equal(t, inter.reshape(2, 12, 10, 2).transpose(3, 0, 2, 1))


def test_norms_softmax_reduce(tmp_path):
    x = RNG.standard_normal((2, 7, 16)).astype(np.float32) * 3
    g, b = RNG.standard_normal(16).astype(np.float32), RNG.standard_normal(16).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS16)
    def prog(x):
        return (mb.layer_norm(x=x, axes=[-1], gamma=g, beta=b, epsilon=1e-5), mb.softmax(x=x, axis=1),
                mb.reduce_mean(x=x, axes=[1, 2], keep_dims=False), mb.silu(x=x))

    ln, sm, rm, si = _run(prog, tmp_path, x=x)
    xt = torch.from_numpy(x)
    np.testing.assert_allclose(ln, F.layer_norm(xt, (16,), torch.from_numpy(g), torch.from_numpy(b)).numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(sm, xt.softmax(1).numpy(), atol=1e-6)
    np.testing.assert_allclose(rm, x.mean(axis=(1, 2)), atol=1e-6)
    np.testing.assert_allclose(si, F.silu(xt).numpy(), atol=1e-6)


def test_rsqrt_with_and_without_epsilon(tmp_path):
    x = (RNG.random((3, 5)) * 4).astype(np.float32)
    x[0, 0] = 0.0  # only the default epsilon keeps this finite

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.rsqrt(x=x), mb.rsqrt(x=x, epsilon=0.5)

    plain, eps = _run(prog, tmp_path, x=x)
    np.testing.assert_allclose(eps, 1.0 / np.sqrt(x + 0.5), rtol=1e-6)
    np.testing.assert_allclose(plain[0, 1:], 1.0 / np.sqrt(x[0, 1:]), rtol=1e-6)
    assert plain[0, 0] == pytest.approx(1e6, rel=1e-3)  # 1 / sqrt(0 + 1e-12)


# (6 -> 5 is left out on purpose: its fp32 scale 0.8333333 makes MIL infer floor(6 * s) = 4.)
@pytest.mark.parametrize("src,dst", [((5, 5), (6, 6)), ((8, 6), (4, 3)), ((7, 3), (8, 4))])
def test_upsample_bilinear_matches_torch_interpolate(tmp_path, src, dst):
    x = RNG.standard_normal((1, 3, *src)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.upsample_bilinear(x=x, scale_factor_height=dst[0] / src[0], scale_factor_width=dst[1] / src[1],
                                    align_corners=False)

    ref = _save_program(prog, tmp_path / "u.mlpackage")
    out = ref.run({"x": x})[ref.block.outputs[0]]
    want = F.interpolate(torch.from_numpy(x), size=dst, mode="bilinear", align_corners=False).numpy()
    assert out.shape == want.shape
    np.testing.assert_allclose(out, want, atol=1e-5)


def test_pixel_shuffle_pair_matches_torch(tmp_path):
    x = RNG.standard_normal((1, 8, 4, 6)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.pixel_shuffle(x=x, upscale_factor=2), mb.pixel_unshuffle(x=x, downscale_factor=np.uint32(2))

    up, down = _run(prog, tmp_path, x=x)
    np.testing.assert_array_equal(up, F.pixel_shuffle(torch.from_numpy(x), 2).numpy())
    np.testing.assert_array_equal(down, F.pixel_unshuffle(torch.from_numpy(x), 2).numpy())


# ------------------------------------------------------------- iOS17 activation quantization
def _quantized(prog, tmp_path, x):
    """The value of the program's (only) quantize op: int8 / uint8 program outputs get a cast to int32."""
    ref = _save_program(prog, tmp_path / "q.mlpackage", target=ct.target.iOS17)
    env = ref.run({"x": x}, keep=True)
    (op,) = [op for op in ref.block.operations if op.type == "quantize"]
    return env[op.outputs[0].name]


def test_quantize_int8_per_tensor_rounds_half_to_even_and_clips(tmp_path):
    x = np.array([[-1.0, -0.26, 0.25, 0.75, 1.3, 100.0, -100.0, 0.0]], np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.quantize(input=x, scale=np.float32(0.5), output_dtype="int8")

    q = _quantized(prog, tmp_path, x)
    # x / 0.5 = -2, -0.52, 0.5, 1.5, 2.6, 200, -200, 0 -> round half to even, clip to [-128, 127]
    assert q.dtype == np.int8
    np.testing.assert_array_equal(q, [[-2, -1, 0, 2, 3, 127, -128, 0]])


def test_quantize_uint8_per_axis_with_zero_point(tmp_path):
    x = np.array([[[1.0, -1.0], [0.3, 100.0]], [[-50.0, 2.5], [0.7, -0.7]]], np.float32)  # [2, 2, 2]

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS17)
    def prog(x):  # axis 1: row 0 of every slice uses scale 0.25, zero point 128; row 1 scale 0.1, zero point 10
        return mb.quantize(input=x, scale=np.array([0.25, 0.1], np.float32),
                           zero_point=np.array([128, 10], np.uint8), axis=1, output_dtype="uint8")

    q = _quantized(prog, tmp_path, x)
    # [0][0]: 1/0.25+128 = 132, -1/0.25+128 = 124   [0][1]: 0.3/0.1+10 = 13, 100/0.1+10 = 1010 -> 255
    # [1][0]: -50/0.25+128 = -72 -> 0, 2.5/0.25+128 = 138   [1][1]: 0.7/0.1+10 = 17, -0.7/0.1+10 = 3
    assert q.dtype == np.uint8
    np.testing.assert_array_equal(q, [[[132, 124], [13, 255]], [[0, 138], [17, 3]]])


def test_dequantize_per_tensor_and_per_axis(tmp_path):
    q8 = np.array([[-128, -3, 0, 5, 127]], np.int8)
    u8 = np.array([[0, 10, 255], [0, 10, 255]], np.uint8)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1,))], opset_version=ct.target.iOS17)
    def prog(x):
        a = mb.dequantize(input=q8, scale=np.float32(0.5), zero_point=np.int8(-3))
        b = mb.dequantize(input=u8, scale=np.array([2.0, 0.25], np.float32), zero_point=np.array([10, 0], np.uint8),
                          axis=0)
        return a, b, x

    a, b, _ = _run(prog, tmp_path, target=ct.target.iOS17, x=np.zeros(1, np.float32))
    np.testing.assert_array_equal(a, [[-62.5, 0.0, 1.5, 4.0, 65.0]])  # 0.5 * (q + 3)
    np.testing.assert_array_equal(b, [[-20.0, 0.0, 490.0], [0.0, 2.5, 63.75]])  # row 0: 2 * (q - 10); row 1: q / 4


def test_quantize_dequantize_fp16_round_trip(tmp_path):
    x = np.array([[0.1, -0.37, 1.0, -2.0]], np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape, dtype=ct.converters.mil.mil.types.fp16)],
                opset_version=ct.target.iOS17)
    def prog(x):
        q = mb.quantize(input=x, scale=np.float16(1 / 64), output_dtype="int8")
        return mb.dequantize(input=q, scale=np.float16(1 / 64))

    (y,) = _run(prog, tmp_path, target=ct.target.iOS17, x=x)
    assert y.dtype == np.float16
    # x * 64 = 6.4, -23.68, 64, -128 -> 6, -24, 64, -128 -> / 64
    np.testing.assert_array_equal(y, np.array([[6 / 64, -24 / 64, 1.0, -2.0]], np.float16))


# ------------------------------------------------------------------------------- whole models
@pytest.fixture(scope="module")
def photos_xxs():
    return sample_batch(synthetic_model("xx_small").cfg, 4, seed=3).numpy()


_PROGRAMS: dict[tuple, tuple] = {}


def _export(tmp_path_factory, variant, strategy, precision, attention="split", output="logits"):
    """``(model, package)``, converted once per session for each set of arguments (the equality test and the
    planted faults share xx_small's fp32 program; a test copies a package before it edits it)."""
    key = (variant, strategy, precision, attention, output)
    if key not in _PROGRAMS:
        model = synthetic_model(variant, patches=strategy).set_attention(attention)
        path = convert(model, "coreml", precision, tmp_path_factory.mktemp("ml"), input_kind="tensor",
                       output_kind=output)
        _PROGRAMS[key] = model, path
    return _PROGRAMS[key]


@pytest.mark.parametrize("variant,strategy", [(v, s) for s in STRATEGIES for v in ["xx_small"]]
                         + [("x_small", "pixel_shuffle"), ("small", "slice")])
def test_fp32_program_equals_pytorch(tmp_path_factory, variant, strategy):
    model, path = _export(tmp_path_factory, variant, strategy, "fp32",
                          attention="batched" if strategy == "reference" else "split")
    x = sample_batch(model.cfg, 3, seed=5).numpy()
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = CoreMLReferenceRunner(path)(x)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5


@pytest.fixture(scope="module")
def fp16_package(tmp_path_factory):
    """``fp16_package(variant)``: (model, path) of its fp16 program."""
    return lambda variant: _export(tmp_path_factory, variant, "pixel_shuffle", "fp16")


@pytest.mark.parametrize("variant", ["xx_small", "small"])
def test_fp16_program_within_bound_both_modes(fp16_package, variant):
    model, path = fp16_package(variant)
    x = sample_batch(model.cfg, 8, seed=6).numpy()
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    storage = drift(want, CoreMLReferenceRunner(path, accumulate="fp32")(x))
    pessimistic = drift(want, CoreMLReferenceRunner(path, accumulate="fp16", kernels="numpy")(x))
    for d in (storage, pessimistic):
        assert 1e-5 < d.max_abs_rel < FP16_BOUND  # fp16 really is in play, and bounded
        assert d.top1_agreement == 1.0
    assert pessimistic.max_abs >= 0.5 * storage.max_abs


# ------------------------------------------------------------------------------ planted faults
@pytest.fixture(scope="module")
def xxs_package(tmp_path_factory):
    return _export(tmp_path_factory, "xx_small", "pixel_shuffle", "fp32")


def _copy(path, tmp_path):
    dst = tmp_path / path.name
    shutil.copytree(path, dst)
    return dst


def _spec_file(pkg):
    return pkg / "Data" / "com.apple.CoreML" / "model.mlmodel"


def _edit_spec(pkg, fn):
    spec = ct.proto.Model_pb2.Model()
    spec.ParseFromString(_spec_file(pkg).read_bytes())
    main = spec.mlProgram.functions["main"]
    fn(main.block_specializations[main.opset])
    _spec_file(pkg).write_bytes(spec.SerializeToString())


def _outputs(pkg, x):
    return CoreMLReferenceRunner(pkg)(x)


def test_corrupted_weight_is_detected(xxs_package, tmp_path, photos_xxs):
    model, path = xxs_package
    pkg = _copy(path, tmp_path)
    blob = pkg / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = bytearray(blob.read_bytes())
    ref = CoreMLReference(path)
    offsets = [op.attributes["val"].blobFileValue.offset for op in ref.block.operations
               if op.type == "const" and op.attributes["val"].HasField("blobFileValue")]
    start = offsets[len(offsets) // 2] + 64  # skip the blob header, land in the data
    data[start:start + 64] = bytes(64 * [0x7F])
    blob.write_bytes(bytes(data))
    diff = np.abs(_outputs(pkg, photos_xxs[:1]) - _outputs(path, photos_xxs[:1]))
    assert not np.isfinite(diff).all() or diff.max() > 1e-3


def _blob_values(spec):
    """Every blob-file value of an ML program's main block: const values and op attributes / arguments."""
    main = spec.mlProgram.functions["main"]
    for op in main.block_specializations[main.opset].operations:
        values = list(op.attributes.values()) + [a.value for arg in op.inputs.values() for a in arg.arguments
                                                  if a.HasField("value")]
        yield from (v for v in values if v.HasField("blobFileValue"))


def test_the_package_reader_reads_every_blob_as_coremltools_does(tmp_path, xxs_package):
    """``package`` reads an .mlpackage without coremltools: the same spec as ``coremltools.utils.load_spec`` and
    the same bytes, blob by blob, as coremltools' native ``_BlobStorageReader`` (the peer), on xx_small's fp32
    program and on a program built here whose weights are int8 and uint8 (quantized), fp32 and fp16 blobs."""
    from coremltools.libmilstoragepython import _BlobStorageReader

    from export.targets.coreml.package import BlobFile, load_spec

    w8 = RNG.integers(-128, 128, (32, 16), dtype=np.int8)
    u8 = RNG.integers(0, 256, (32, 16), dtype=np.uint8)
    w = RNG.standard_normal((8, 32)).astype(np.float32)
    w16 = RNG.standard_normal((4, 8)).astype(np.float16)

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 16))], opset_version=ct.target.iOS16)
    def prog(x):
        a = mb.constexpr_affine_dequantize(quantized_data=w8, zero_point=np.int8(0), scale=np.float32(0.01), axis=0)
        b = mb.constexpr_affine_dequantize(quantized_data=u8, zero_point=np.uint8(128), scale=np.float32(0.02),
                                           axis=0)
        y = mb.linear(x=mb.add(x=mb.linear(x=x, weight=a), y=mb.linear(x=x, weight=b)), weight=w)
        return mb.cast(x=mb.linear(x=mb.cast(x=y, dtype="fp16"), weight=w16), dtype="fp32")

    _save_program(prog, tmp_path / "q.mlpackage")
    readers = {10: ("read_fp16_data", np.float16), 11: ("read_float_data", np.float32),
               21: ("read_int8_data", np.int8), 31: ("read_uint8_data", np.uint8)}
    seen = set()
    for pkg in (xxs_package[1], tmp_path / "q.mlpackage"):
        spec = load_spec(pkg)
        assert spec == ct.utils.load_spec(str(pkg))
        weights = str(_spec_file(pkg).parent / "weights" / "weight.bin")
        ours, peer = BlobFile(weights), _BlobStorageReader(weights)
        for value in _blob_values(spec):
            dt, offset = value.type.tensorType.dataType, value.blobFileValue.offset
            method, dtype = readers[dt]
            expected = np.asarray(getattr(peer, method)(offset))
            got = ours.array(offset, dtype)
            assert got.tobytes() == expected.tobytes(), (pkg.name, offset)
            seen.add(dt)
    assert seen == set(readers)  # fp16, fp32, int8, uint8 blobs were all compared


def test_running_a_package_in_a_fresh_process_does_not_import_coremltools(xxs_package, photos_xxs, tmp_path):
    """A process that only runs a package (a Ray worker, a validation) does not pay for ``import coremltools``
    (which imports TensorFlow, torchao and ExecuTorch's EXIR: seconds): same outputs as in this process, and
    coremltools imported afterwards reads the same spec classes."""
    import subprocess
    import sys

    np.save(tmp_path / "x.npy", photos_xxs[:1])
    script = (
        "import sys, numpy as np\n"
        "from export.targets.coreml.reference import CoreMLReferenceRunner\n"
        "r = CoreMLReferenceRunner(sys.argv[1], threads=1)\n"
        "np.save(sys.argv[3], r(np.load(sys.argv[2])))\n"
        "print(sorted(m for m in ('coremltools', 'tensorflow') if m in sys.modules))\n"
        "import coremltools as ct\n"
        "print(type(r.model.spec) is ct.proto.Model_pb2.Model)\n")
    done = subprocess.run([sys.executable, "-c", script, str(xxs_package[1]), str(tmp_path / "x.npy"),
                           str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=300,
                          cwd=str(Path(__file__).resolve().parent.parent))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["[]", "True"], done.stdout
    expected = CoreMLReferenceRunner(xxs_package[1], threads=1)(photos_xxs[:1])
    assert np.array_equal(np.load(tmp_path / "y.npy"), expected)


@pytest.mark.parametrize("damage,message", [
    (lambda data, offset: data[:32], "shorter than a weight file's header"),
    (lambda data, offset: data[:offset] + b"\0" * 4 + data[offset + 4:], "no blob at offset"),
    (lambda data, offset: data[:offset + 64 + 16], "cut short")])
def test_a_damaged_weight_file_is_a_clear_error(xxs_package, tmp_path, damage, message):
    """A weight file that is not what the spec says: too short for its header, a blob's sentinel overwritten, a
    blob cut short: ``CoreMLReferenceError`` naming the package and what is wrong, not numbers."""
    pkg = _copy(xxs_package[1], tmp_path)
    blob = pkg / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    offset = max(v.blobFileValue.offset for v in _blob_values(CoreMLReference(pkg).spec))  # the last blob
    blob.write_bytes(damage(blob.read_bytes(), offset))
    with pytest.raises(CoreMLReferenceError, match=f"{pkg.name}.*{message}"):
        CoreMLReference(pkg)


def _plant_perm(pkg, rank, edit, declare=False):
    """Rewrite the perm of the first transpose of ``rank``; returns (old, new) so a test can see they differ.
    ``declare``: also rewrite its declared output shape to the one the new perm gives (a consistent, wrong program)."""
    seen = []

    def change(block):
        for op in block.operations:
            if op.type != "transpose":
                continue
            perm_name = op.inputs["perm"].arguments[0].name
            target = next(o for o in block.operations if o.outputs and o.outputs[0].name == perm_name)
            vals = target.attributes["val"].immediateValue.tensor.ints.values
            if len(vals) == rank:
                seen.extend([list(vals), edit(list(vals))])
                vals[:] = seen[1]
                if declare:
                    dims = op.outputs[0].type.tensorType.dimensions
                    size_in = {p: dims[k].constant.size for k, p in enumerate(seen[0])}  # input dim p -> its size
                    for k, p in enumerate(seen[1]):
                        dims[k].constant.size = size_in[p]
                return
        raise AssertionError(f"no rank-{rank} transpose found")

    _edit_spec(pkg, change)
    return seen


def test_wrong_transpose_perm_changes_the_output(xxs_package, tmp_path, photos_xxs):
    """Tokens -> patches [0, 2, 3, 1] becomes [0, 2, 1, 3], its declared shape edited to match: the reshape after
    it still fits, the values do not."""
    _, path = xxs_package
    pkg = _copy(path, tmp_path)
    old, new = _plant_perm(pkg, 4, lambda v: [v[0], v[1], v[3], v[2]], declare=True)
    assert (old, new) == ([0, 2, 3, 1], [0, 2, 1, 3])  # the fault is really planted
    want = _outputs(path, photos_xxs[:1])
    got = _outputs(pkg, photos_xxs[:1])  # no exception: the executor must compute a (wrong) result
    assert got.shape == want.shape
    assert np.abs(got - want).max() > 1e-3 * np.abs(want).max()


def test_wrong_transpose_perm_is_a_named_shape_mismatch(xxs_package, tmp_path, photos_xxs):
    """k -> k^T [0, 2, 1] made the identity: the transpose computes [B, N, d] where the program declares
    [B, d, N], and the run stops there, naming both."""
    pkg = _copy(xxs_package[1], tmp_path)
    old, new = _plant_perm(pkg, 3, lambda v: sorted(v))
    assert (old, new) == ([0, 2, 1], [0, 1, 2])
    with pytest.raises(CoreMLReferenceError, match=r"transpose at op #\d+ .* computed shape \(4, 256, 64\); the "
                                                   r"program declares \(4, 64, 256\)"):
        _outputs(pkg, photos_xxs[:1])


def test_unknown_op_names_the_op(xxs_package, tmp_path, photos_xxs):
    pkg = _copy(xxs_package[1], tmp_path)

    def rename(block):
        next(op for op in block.operations if op.type == "silu").type = "swish_v2"

    _edit_spec(pkg, rename)
    with pytest.raises(UnsupportedOpError, match="'swish_v2' at op #"):
        _outputs(pkg, photos_xxs[:1])


def test_result_shape_differs_from_declared_is_named(tmp_path):
    """A kernel result whose shape is not the one the program declares stops the run, naming both shapes
    (planted: the transpose's declared [3, 2] output edited to [3, 7] in the saved spec), on both kernel sets."""
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3))], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.relu(x=mb.transpose(x=x, perm=[1, 0]))

    pkg = tmp_path / "p.mlpackage"
    _save_program(prog, pkg)

    def widen(block):
        op = next(op for op in block.operations if op.type == "transpose")
        op.outputs[0].type.tensorType.dimensions[1].constant.size = 7
    _edit_spec(pkg, widen)
    for kernels in ("numpy", "torch"):
        with pytest.raises(CoreMLReferenceError, match=r"transpose at op #\d+ .* computed shape \(3, 2\); the "
                                                       r"program declares \(3, 7\)"):
            CoreMLReference(pkg, kernels=kernels).run({"x": np.zeros((2, 3), np.float32)})


def test_not_an_mlpackage(tmp_path):
    (tmp_path / "fake.mlpackage").mkdir()
    with pytest.raises(CoreMLReferenceError, match="not an .mlpackage"):
        CoreMLReference(tmp_path / "fake.mlpackage")
    with pytest.raises(ValueError, match="accumulate"):
        CoreMLReference(tmp_path / "fake.mlpackage", accumulate="int8")


def test_image_input_and_classifier_like_an_app(tmp_path_factory, photos_xxs):
    """A PIL RGB image in, label + probabilities out, as MLModel.predict returns them."""
    from PIL import Image

    from mobilevit.labels import imagenet_labels

    model = synthetic_model("xx_small", patches="pixel_shuffle")
    path = convert(model, "coreml", "fp32", tmp_path_factory.mktemp("img"), labels=tuple(imagenet_labels()))
    bgr = photos_xxs[0]
    rgb_u8 = np.round(bgr[::-1].transpose(1, 2, 0) * 255).astype(np.uint8)
    out = CoreMLReference(path).predict({"image": Image.fromarray(rgb_u8)})
    with torch.no_grad():
        probs = model(torch.from_numpy(bgr[None])).softmax(-1).numpy()[0]
    assert out["classLabel"] == imagenet_labels()[int(probs.argmax())]
    got = np.array([out["classLabel_probs"][k] for k in imagenet_labels()])
    np.testing.assert_allclose(got, probs, atol=1e-6)


@pytest.mark.skipif(not coreml_runtime_available()[0], reason="Core ML runtime needs macOS")
def test_matches_the_real_core_ml_runtime(xxs_package, photos_xxs):  # pragma: no cover - macOS only
    from export.targets.coreml.runner import CoreMLRuntimeRunner

    _, path = xxs_package
    real = CoreMLRuntimeRunner(path)(photos_xxs)
    ours = CoreMLReferenceRunner(path)(photos_xxs)
    assert drift(real, ours).cosine_min > 0.9999


# ------------------------------------------------------------------ torch kernels against numpy
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_kernels_equal_numpy_op_by_op(xxs_package, fp16_package, photos_xxs, precision):
    """Every intermediate value of a real program, torch kernels against the numpy reference, with
    float64 sums: equal bit for bit (both round float64 sums to the same stored dtype; fp16 storage
    leaves no room for a tolerance: one ulp is 1e-3 of the value). The logits also within 1e-6 of
    their range over four photos."""
    path = xxs_package[1] if precision == "fp32" else fp16_package("xx_small")[1]
    numpy_ref, torch_ref = CoreMLReference(path), CoreMLReference(path, kernels="torch")
    feed = CoreMLReferenceRunner(path).prepare(photos_xxs[:1])
    want, got = numpy_ref.run(feed, keep=True), torch_ref.run(feed, keep=True)
    assert set(got) == set(want)
    compared = 0
    for op in numpy_ref.block.operations:
        for out in op.outputs:
            if isinstance(want[out.name], np.ndarray):
                assert got[out.name].dtype == want[out.name].dtype, (op.type, out.name)
                np.testing.assert_array_equal(got[out.name], want[out.name], err_msg=f"{op.type} {out.name}")
                compared += 1
    assert compared > 300
    logits = CoreMLReferenceRunner(path, kernels="numpy")(photos_xxs)
    torch_logits = CoreMLReferenceRunner(path, kernels="torch")(photos_xxs)
    assert np.abs(torch_logits - logits).max() <= 1e-6 * np.ptp(logits)


def test_torch_kernels_fp32_sums_and_refusals(xxs_package, photos_xxs, tmp_path):
    """float32 sums in torch's order stay within fp32 rounding of numpy's; the pessimistic fp16 mode
    and unknown kernel sets are refused by name; an unknown op is refused by both kernel sets."""
    path = xxs_package[1]
    want = CoreMLReferenceRunner(path, accumulate="fp32", kernels="numpy")(photos_xxs[:2])
    got = CoreMLReferenceRunner(path, accumulate="fp32", kernels="torch")(photos_xxs[:2])
    assert np.abs(got - want).max() <= 1e-5 * np.ptp(want)
    with pytest.raises(ValueError, match='no fp16 accumulate mode .* kernels="numpy"'):
        CoreMLReference(path, accumulate="fp16", kernels="torch")
    with pytest.raises(ValueError, match="kernels must be one of 'numpy', 'torch', got 'jax'"):
        CoreMLReference(path, kernels="jax")
    pkg = _copy(path, tmp_path)
    _edit_spec(pkg, lambda block: setattr(next(op for op in block.operations if op.type == "silu"), "type", "gelu_x"))
    for kernels in ("numpy", "torch"):
        with pytest.raises(UnsupportedOpError, match="'gelu_x' at op #"):
            CoreMLReference(pkg, kernels=kernels).run(CoreMLReferenceRunner(pkg).prepare(photos_xxs[:1]))
