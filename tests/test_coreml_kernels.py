"""The Core ML reference executor's torch kernels on small hand-built cases: the fp16 storage rounding,
the depthwise conv, and a small fp16 program of every op kind the models use, against the numpy kernels."""
import coremltools as ct
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.converters.mil import Builder as mb

from export.targets.coreml.reference import CoreMLReference
from export.targets.coreml.torch_kernels import _depthwise, _round_to_half

RNG = np.random.default_rng(0)


def _ties(scale: float, n: int = 20000) -> np.ndarray:
    """float64 values just off fp16 ties: the midpoint between two neighbouring fp16 values, moved by
    a relative 2**-40 (far below a float32 ulp, so float32 rounds them onto the tie)."""
    lo = (RNG.standard_normal(n) * scale).astype(np.float16)
    hi = np.nextafter(lo, np.where(lo < 0, np.float16(-np.inf), np.float16(np.inf)))
    mid = (lo.astype(np.float64) + hi.astype(np.float64)) / 2
    return mid * (1 + RNG.choice([-1.0, 1.0], n) * 2.0 ** -40)


@pytest.mark.parametrize("scale", [1.0, 300.0, 3e-6, 1e-7])  # normal fp16, large, fp16 subnormals
def test_round_to_half_rounds_once_like_numpy(scale):
    """numpy's float64 -> float16 ``astype`` rounds once; torch's goes through float32 and rounds twice.
    On values next to a tie they disagree, and ``_round_to_half`` must side with numpy."""
    x = np.concatenate([_ties(scale), RNG.standard_normal(20000) * scale, [0.0, -0.0, 65520.0, -1e6, 1e-30]])
    with np.errstate(over="ignore"):  # 65520 and -1e6 overflow to inf, on purpose
        want = x.astype(np.float16)
    twice = torch.from_numpy(x).to(torch.float16).numpy()
    assert (twice.view(np.int16) != want.view(np.int16)).sum() > 100  # the cases are really there
    got = _round_to_half(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got.view(np.int16), want.view(np.int16))
    strided = torch.from_numpy(x[: 40000].reshape(200, 200)).T  # a non-contiguous input
    np.testing.assert_array_equal(_round_to_half(strided).numpy(), x[:40000].reshape(200, 200).T.astype(np.float16))


@pytest.mark.parametrize("stride,dil", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_depthwise_taps_equal_torch_conv2d(stride, dil):
    x = torch.from_numpy(RNG.standard_normal((2, 5, 11, 10)))
    w = torch.from_numpy(RNG.standard_normal((5, 1, 3, 3)))
    want = F.conv2d(x, w, None, stride, 0, dil, groups=5)
    got = _depthwise(x, w, (stride, stride), (dil, dil))
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-13)


def test_small_fp16_program_equal_in_both_kernel_sets(tmp_path):
    """One fp16 program with every op kind of the exported models (depthwise, 1x1, strided and grouped
    convs, linear, matmul, softmax, layer_norm, silu, quantize / dequantize, shape ops): the torch
    kernels' values equal the numpy kernels' at every op."""
    x = RNG.standard_normal((1, 8, 12, 12)).astype(np.float32) * 3
    dw = RNG.standard_normal((8, 1, 3, 3)).astype(np.float32)
    pw = RNG.standard_normal((16, 8, 1, 1)).astype(np.float32)
    full = RNG.standard_normal((16, 4, 3, 3)).astype(np.float32)
    lin = RNG.standard_normal((16, 16)).astype(np.float32)
    bias = RNG.standard_normal(16).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS17)
    def prog(x):
        y = mb.silu(x=mb.conv(x=x, weight=dw, groups=8, pad_type="same"))
        y = mb.conv(x=y, weight=pw, bias=bias)  # [1, 16, 12, 12]
        y = mb.conv(x=y, weight=full, groups=4, strides=[2, 2], pad_type="same_lower", dilations=[1, 1])
        q = mb.quantize(input=y, scale=np.float32(0.05), zero_point=np.int8(3), output_dtype="int8")
        y = mb.dequantize(input=q, scale=np.float32(0.05), zero_point=np.int8(3))
        t = mb.transpose(x=mb.reshape(x=y, shape=[1, 16, 36]), perm=[0, 2, 1])  # [1, 36, 16]
        t = mb.layer_norm(x=mb.linear(x=t, weight=lin, bias=bias), axes=[-1], epsilon=1e-5)
        a, b = mb.split(x=t, num_splits=2, axis=-1)  # [1, 36, 8] each
        att = mb.softmax(x=mb.matmul(x=a, y=b, transpose_y=True), axis=-1)  # [1, 36, 36]
        out = mb.concat(values=[mb.matmul(x=att, y=b), a], axis=-1)
        return mb.reduce_mean(x=mb.sigmoid(x=out), axes=[1], keep_dims=False)

    ml = ct.convert(prog, convert_to="mlprogram", compute_precision=ct.precision.FLOAT16,
                    minimum_deployment_target=ct.target.iOS17, skip_model_load=True)
    path = tmp_path / "p.mlpackage"
    ml.save(str(path))
    numpy_ref, torch_ref = CoreMLReference(path), CoreMLReference(path, kernels="torch")
    want, got = numpy_ref.run({"x": x}, keep=True), torch_ref.run({"x": x}, keep=True)
    kinds, stored = set(), {}
    for op in numpy_ref.block.operations:
        for out in op.outputs:
            if op.type != "const":
                assert got[out.name].dtype == want[out.name].dtype, (op.type, out.name)
                np.testing.assert_array_equal(got[out.name], want[out.name], err_msg=f"{op.type} {out.name}")
                kinds.add(op.type)
                stored[op.type] = want[out.name].dtype
    assert {"conv", "linear", "matmul", "softmax", "layer_norm", "quantize", "silu", "reduce_mean"} <= kinds
    assert stored["softmax"] == stored["conv"] == np.float16  # fp16 storage is in play


def test_scalar_shape_arithmetic_stays_0d_in_both_kernel_sets(tmp_path):
    """What a multi-size (enumerated shapes) program does with its input's size: shape -> gather of one dim
    (a 0-d int) -> concat into a new shape -> reshape. Both kernel sets keep the gathered dim 0-d, as declared
    (numpy's ``ascontiguousarray`` would make it [1], and ``np.take`` returns a numpy scalar)."""
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 4, 6))], opset_version=ct.target.iOS16)
    def prog(x):
        h = mb.gather(x=mb.shape(x=x), indices=np.int32(2), axis=0)  # 0-d: 4
        new = mb.concat(values=[np.array([1, 3], np.int32), mb.expand_dims(x=h, axes=[0]),
                                np.array([-1], np.int32)], axis=0)
        return mb.reshape(x=x, shape=new), h

    ml = ct.convert(prog, convert_to="mlprogram", compute_precision=ct.precision.FLOAT32,
                    pass_pipeline=ct.PassPipeline.EMPTY, minimum_deployment_target=ct.target.iOS16,
                    skip_model_load=True)
    ml.save(str(tmp_path / "p.mlpackage"))
    x = np.arange(72, dtype=np.float32).reshape(1, 3, 4, 6)
    for kernels in ("numpy", "torch"):
        ref = CoreMLReference(tmp_path / "p.mlpackage", kernels=kernels)
        assert {"shape", "gather", "concat", "reshape"} <= set(ref.op_types())
        y, h = (ref.run({"x": x})[k] for k in ref.block.outputs)
        assert np.shape(h) == () and int(h) == 4, kernels
        np.testing.assert_array_equal(y, x.reshape(1, 3, 4, 6), err_msg=kernels)
