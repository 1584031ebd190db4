"""The Core ML reference executor judged by coremltools' own op unit tests.

Each case rebuilds a builder program from coremltools' op tests (``coremltools/converters/mil/mil/ops/tests/``,
coremltools 9.0; file and test named above each case), saves it as an ``.mlpackage`` and runs it through
:class:`CoreMLReference`. The expected values are those the coremltools test states: its hand-written
``expected_outputs`` copied here as data, or, where it takes them from a peer (torch, numpy indexing,
coremltools' own value inference), that same peer. The tolerance is that of coremltools'
``run_compare_builder`` (atol 1e-4, rtol 1e-5) unless the test sets its own.

Attributes the executor does not compute are refused before any kernel runs (``check_supported``): those
cases expect UnsupportedOpError naming the op, the attribute and its value.
"""
import coremltools as ct
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

from export.targets.coreml.reference import CoreMLReference, UnsupportedOpError

ATOL, RTOL = 1e-4, 1e-5  # coremltools' run_compare_builder defaults


KERNELS = ("numpy", "torch")  # every case runs on both kernel sets of the executor


def _save(prog, tmp_path, target=ct.target.iOS16, name="p"):
    """Save the program as an fp32 ML program, graph passes off (so every op stays as built)."""
    ml = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target,
                    compute_precision=ct.precision.FLOAT32, pass_pipeline=ct.PassPipeline.EMPTY, skip_model_load=True)
    path = tmp_path / f"{name}.mlpackage"
    ml.save(str(path))
    return path


def _reference(prog, tmp_path, target=ct.target.iOS16, name="p", kernels="numpy") -> CoreMLReference:
    return CoreMLReference(_save(prog, tmp_path, target, name), kernels=kernels)


def _run(prog, tmp_path, op_type, target=ct.target.iOS16, **inputs) -> list:
    """The program's outputs in order (numpy kernels), after checking the saved program still holds ``op_type``
    and that the torch kernels give the same outputs (to 1e-6 of their range)."""
    path = _save(prog, tmp_path, target)
    outs = {}
    for kernels in KERNELS:
        ref = CoreMLReference(path, kernels=kernels)
        assert op_type in ref.op_types(), f"{op_type} not in the saved program: {ref.op_types()}"
        out = ref.run(inputs)
        outs[kernels] = [out[k] for k in ref.block.outputs]
    for k, (a, b) in enumerate(zip(outs["numpy"], outs["torch"])):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, f"output {k}: torch kernels give shape {b.shape}, numpy {a.shape}"
        if a.dtype.kind in "fc" and a.size:
            scale = max(float(np.abs(a.astype(np.float64)).max()), 1e-30)
            np.testing.assert_allclose(b.astype(np.float64), a.astype(np.float64), rtol=0, atol=1e-6 * scale,
                                       err_msg=f"output {k}: torch kernels")
        else:
            np.testing.assert_array_equal(b, a, err_msg=f"output {k}: torch kernels")
    return outs["numpy"]


def _assert_all_close(got, want, atol=ATOL, rtol=RTOL):
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        w = np.asarray(w)
        assert np.shape(g) == w.shape, f"output {k}: shape {np.shape(g)} != {w.shape}"
        np.testing.assert_allclose(np.asarray(g, np.float64), w.astype(np.float64), atol=atol, rtol=rtol,
                                   err_msg=f"output {k}")


def _refused(prog, tmp_path, feed, *words, target=ct.target.iOS16):
    """Running the program raises UnsupportedOpError whose message holds each of ``words``, on both kernel sets."""
    path = _save(prog, tmp_path, target)
    for kernels in KERNELS:
        with pytest.raises(UnsupportedOpError) as info:
            CoreMLReference(path, kernels=kernels).run(feed)
        for word in words:
            assert word in str(info.value), f"{word!r} not in {info.value} ({kernels} kernels)"


T23 = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)  # the [2, 3] input of several activation tests
X23 = np.array([[1, 2, 3], [4, 5, 6]], np.float32)  # the [2, 3] input of several transformation tests


# ------------------------------------------------------------------------ activations, unary, binary
def test_activations_and_rsqrt(tmp_path):
    """iOS14/test_activation.py: TestReLU, TestSigmoid, TestSiLU, TestSoftmax (test_builder_to_backend_smoke /
    test_buidler_to_backend_smoke); iOS14/test_elementwise_unary.py: TestElementwiseUnary smoke, mode rsqrt."""
    silu_x = np.array([-1.1, 2.2, -3.3, 4.4], np.float32).reshape(1, 2, 1, 2)

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3)), mb.TensorSpec(shape=(1, 2, 1, 2)),
                             mb.TensorSpec(shape=(2, 3))], opset_version=ct.target.iOS16)
    def prog(t, s, r):
        return (mb.relu(x=t), mb.sigmoid(x=t), mb.softmax(x=t, axis=0), mb.silu(x=s), mb.rsqrt(x=r))

    got = _run(prog, tmp_path, "silu", t=T23, s=silu_x, r=X23)
    _assert_all_close(got, [
        [[0, 2, 0], [4, 0, 6]],
        [[0.2689414213699951, 0.8807970779778823, 0.04742587], [0.98201376, 0.00669285, 0.9975274]],
        [[6.69285092e-03, 9.99088949e-01, 1.23394576e-04], [9.93307149e-01, 9.11051194e-04, 9.99876605e-01]],
        np.array([-0.2747, 1.9805, -0.1174, 4.3466]).reshape(1, 2, 1, 2),
        [[1.0, 0.70710678, 0.57735027], [0.5, 0.4472136, 0.40824829]],  # rsqrt of X23
    ])


def test_cast_truncates(tmp_path):
    """iOS14/test_elementwise_unary.py: TestElementwiseUnary smoke, mode cast (fp32 -> int32)."""
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3))], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.cast(x=x, dtype="int32")

    (got,) = _run(prog, tmp_path, "cast", x=np.array([[-1.2, 2, -3.6], [4.5, -5, 6.7]], np.float32))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, [[-1, 2, -3], [4, -5, 6]])


def test_elementwise_binary(tmp_path):
    """iOS14/test_elementwise_binary.py: TestElementwiseBinary.test_builder_to_backend_smoke, modes add, sub, mul,
    maximum, minimum (x1, y1) and real_div, floor_div (x2, y2)."""
    x2 = np.array([[10, 20, 30], [40, 50, 60]], np.float32)
    y2 = np.array([[11, 12, 13], [14, 15, 16]], np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3)) for _ in range(4)], opset_version=ct.target.iOS16)
    def prog(x1, y1, x2, y2):
        return (mb.add(x=x1, y=y1), mb.sub(x=x1, y=y1), mb.mul(x=x1, y=y1), mb.maximum(x=x1, y=y1),
                mb.minimum(x=x1, y=y1), mb.real_div(x=x2, y=y2), mb.floor_div(x=x2, y=y2))

    got = _run(prog, tmp_path, "floor_div", x1=X23, y1=T23, x2=x2, y2=y2)
    _assert_all_close(got, [
        [[0, 4, 0], [8, 0, 12]], [[2, 0, 6], [0, 10, 0]], [[-1, 4, -9], [16, -25, 36]], [[1, 2, 3], [4, 5, 6]],
        [[-1, 2, -3], [4, -5, 6]], [[0.90909091, 1.66666667, 2.30769231], [2.85714286, 3.33333333, 3.75]],
        [[0, 1, 2], [2, 3, 3]],
    ])


# ------------------------------------------------------------------------------------ linear, matmul
def test_linear_and_matmul(tmp_path):
    """iOS14/test_linear.py: TestLinear.test_builder_to_backend_smoke and TestMatMul.test_builder_to_backend_smoke."""
    lin_x = np.array([[-4.7182, 11.94], [-3.3939, 9.2166]], np.float32)
    lin_w = np.array([[1.2313, -0.095], [-1.4075, -0.8816]], np.float32)
    x_val = np.array([[-4.0, 13.0], [-3.0, 9.0]], np.float32)
    y_val = np.array([[1.0, -7.0], [-1.0, -8.0]], np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 2)) for _ in range(3)], opset_version=ct.target.iOS16)
    def prog(lx, x, y):
        return (mb.linear(x=lx, weight=lin_w, bias=np.array([1.0, 2.0], np.float32)),
                mb.matmul(x=x_val, y=y), mb.matmul(x=x, y=y_val), mb.matmul(x=x, y=y),
                mb.matmul(x=x, y=y, transpose_x=True, transpose_y=True),
                mb.matmul(x=x_val, y=y, transpose_x=True, transpose_y=True),
                mb.matmul(x=x, y=y_val, transpose_x=True, transpose_y=True),
                mb.matmul(x=x, y=y_val, transpose_x=True, transpose_y=False),
                mb.matmul(x=x, y=y_val, transpose_x=False, transpose_y=True))

    got = _run(prog, tmp_path, "linear", lx=lin_x, x=x_val, y=y_val)
    plain, both_t = [[-17.0, -76.0], [-12.0, -51.0]], [[17.0, 28.0], [-50.0, -85.0]]
    _assert_all_close(got, [[[-5.9438195, -1.8854373], [-4.054486, -1.3484411]], plain, plain, plain,
                            both_t, both_t, both_t, [[-1.0, 52.0], [4.0, -163.0]], [[-95.0, -100.0], [-66.0, -69.0]]])


# ------------------------------------------------------------------------------------ normalization
def test_batch_norm(tmp_path):
    """iOS14/test_normalization.py: TestNormalizationBatchNorm.test_builder_to_backend_smoke (fp32)."""
    x = np.array([[[[-16.0, 13.0], [11.0, -16.0]], [[13.0, -15.0], [13.0, 9.0]], [[-9.0, -4.0], [-6.0, 3.0]]]],
                 np.float32)
    mean, var = np.array([9.0, 6.0, 3.0], np.float32), np.array([6.0, 1.0, 7.0], np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS16)
    def prog(x):
        return (mb.batch_norm(x=x, mean=mean, variance=var),
                mb.batch_norm(x=x, mean=mean, variance=var, gamma=np.ones(3, np.float32),
                              beta=np.array([1.0, 3.0, 0.0], np.float32), epsilon=np.float32(1e-4)))

    got = _run(prog, tmp_path, "batch_norm", x=x)
    _assert_all_close(got, [
        [[[[-10.206199, 1.6329918], [0.8164959, -10.206199]], [[6.999965, -20.999895], [6.999965, 2.9999852]],
          [[-4.53557, -2.6457493], [-3.4016776, 0.0]]]],
        [[[[-9.206122, 2.6329796], [1.8164899, -9.206122]], [[9.99965, -17.998951], [9.99965, 5.9998503]],
          [[-4.535541, -2.6457324], [-3.4016557, 0.0]]]],
    ])


def test_layer_norm_smoke(tmp_path):
    """iOS14/test_normalization.py: TestNormalizationLayerNorm.test_builder_to_backend_smoke and
    test_builder_to_backend_smoke_rank_2."""
    x3 = np.array([[[1.0, -7.0], [5.0, -6.0], [-3.0, -5.0]]], np.float32)
    gamma, beta = np.array([1.0, 1.0], np.float32), np.array([1.0, 0.0], np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 2)), mb.TensorSpec(shape=(3, 2))],
                opset_version=ct.target.iOS16)
    def prog(x, x2):
        return (mb.layer_norm(x=x, axes=[2], epsilon=1e-4), mb.layer_norm(x=x, axes=[-2, -1], epsilon=1e-4),
                mb.layer_norm(x=x, axes=[2], epsilon=1e-4, gamma=gamma, beta=beta),
                mb.layer_norm(x=x2, axes=[1], epsilon=1e-4),
                mb.layer_norm(x=x2, axes=[1], epsilon=1e-4, gamma=gamma, beta=beta))

    got = _run(prog, tmp_path, "layer_norm", x=x3, x2=x3[0])
    unit = [[0.9999969, -0.9999969], [0.99999833, -0.99999833], [0.99995005, -0.99995005]]
    shifted = [[1.9999969, -0.9999969], [1.99999833, -0.99999833], [1.99995005, -0.99995005]]
    _assert_all_close(got, [[unit], [[[0.82687193, -1.06312108], [1.77186835, -0.82687193],
                                      [-0.11812456, -0.59062278]]], [shifted], unit, shifted])


# TestNormalizationLayerNorm.test_builder_to_backend_stress_numpy: rank and axes as coremltools lists them, with
# gamma and beta; these put gamma / beta on non-trailing axes (coremltools' fuse_layernorm_or_instancenorm also
# emits axes=[1] with a [C] gamma for a rank-4 channel norm, included as the last case).
LAYER_NORM_STRESS = [((3, 4, 5), [0, 2]), ((3, 4, 5), [-2]), ((2, 3, 4, 5), [0, 1, 3]), ((2, 3, 2, 2, 4), [0, 4]),
                     ((1, 6, 3, 4), [1])]


def test_layer_norm_gamma_beta_on_any_axes(tmp_path):
    """The expected values are coremltools' own evaluation of the same op (its value inference, which
    test_builder_eval_stress checks against numpy), x, gamma and beta drawn as in the stress test (-100...100)."""
    rng = np.random.default_rng(0)
    cases = []
    for shape, axes in LAYER_NORM_STRESS:
        norm_shape = [shape[d] for d in range(len(shape)) if d in {a % len(shape) for a in axes}]
        cases.append((rng.uniform(-100, 100, shape).astype(np.float32),
                      rng.uniform(-100, 100, norm_shape).astype(np.float32),
                      rng.uniform(-100, 100, norm_shape).astype(np.float32), axes))

    @mb.program(input_specs=[], opset_version=ct.target.iOS16)
    def evaluated():
        return tuple(mb.layer_norm(x=x, axes=axes, epsilon=1e-4, gamma=g, beta=b) for x, g, b, axes in cases)

    want = [op.outputs[0].val for op in evaluated.functions["main"].operations if op.op_type == "layer_norm"]

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape) for x, *_ in cases], opset_version=ct.target.iOS16)
    def prog(x0, x1, x2, x3, x4):  # one input per case
        return tuple(mb.layer_norm(x=x, axes=axes, epsilon=1e-4, gamma=g, beta=b)
                     for x, (_, g, b, axes) in zip((x0, x1, x2, x3, x4), cases))

    ref = _reference(prog, tmp_path)
    out = ref.run({name: x for name, (x, *_) in zip(ref.input_names, cases)})
    _assert_all_close([out[k] for k in ref.block.outputs], want, atol=1e-3, rtol=1e-4)  # the stress test's own


# -------------------------------------------------------------------------------------------- conv
def _torch_conv(x, w, pads, stride=1, dilation=1, groups=1):
    """torch's conv on x padded explicitly by ``pads`` (torch F.pad order: last axis first)."""
    conv = F.conv1d if x.ndim == 3 else F.conv2d
    return conv(F.pad(torch.from_numpy(x), pads), torch.from_numpy(w), stride=stride, dilation=dilation,
                groups=groups).numpy()


def test_conv_pad_modes_1d_and_2d(tmp_path):
    """iOS14/test_conv.py: TestConv.test_padding_mode_stress, conv1d and conv2d, pad types same_lower, same,
    valid: input [1, 1, 4, 5] (1-D: [1, 1, 4]), kernel [2, 4] (1-D: [2]). Expected: torch (as there).
    MIL pads by hand: total = k - 1 at stride 1; "same" puts the smaller half first, "same_lower" the larger:
    k 2 -> (0, 1) / (1, 0); k 4 -> (1, 2) / (2, 1)."""
    rng = np.random.default_rng(1)
    x2, w2 = rng.standard_normal((1, 1, 4, 5)).astype(np.float32), rng.standard_normal((1, 1, 2, 4)).astype(np.float32)
    x1, w1 = x2[:, :, 0], w2[:, :, 0, :2]  # [1, 1, 5], kernel [1, 1, 2]

    @mb.program(input_specs=[mb.TensorSpec(shape=x1.shape), mb.TensorSpec(shape=x2.shape)],
                opset_version=ct.target.iOS16)
    def prog(a, b):
        return tuple(mb.conv(x=v, weight=w, pad_type=p) for v, w in ((a, w1), (b, w2))
                     for p in ("same_lower", "same", "valid"))

    got = _run(prog, tmp_path, "conv", a=x1, b=x2)
    _assert_all_close(got, [_torch_conv(x1, w1, (1, 0)), _torch_conv(x1, w1, (0, 1)), _torch_conv(x1, w1, (0, 0)),
                            _torch_conv(x2, w2, (2, 1, 1, 0)), _torch_conv(x2, w2, (1, 2, 0, 1)),
                            _torch_conv(x2, w2, (0, 0, 0, 0))])


def test_conv_stride_dilation_groups_1d_and_2d(tmp_path):
    """iOS14/test_conv.py: TestConv.test_builder_to_backend_stress, conv1d and conv2d, the config with padding 2,
    stride 2, dilation (2, 1), groups 2, H 12, W 14, kernel (2, 4), C_in 2, C_out 4. Expected: torch."""
    rng = np.random.default_rng(2)
    x2 = rng.standard_normal((1, 2, 12, 14)).astype(np.float32)
    w2 = rng.standard_normal((4, 1, 2, 4)).astype(np.float32)  # [C_out, C_in / groups, kh, kw]
    x1, w1 = x2[:, :, :, 0], w2[:, :, :, 0]  # [1, 2, 12], kernel [4, 1, 2]

    @mb.program(input_specs=[mb.TensorSpec(shape=x1.shape), mb.TensorSpec(shape=x2.shape)],
                opset_version=ct.target.iOS16)
    def prog(a, b):
        return (mb.conv(x=a, weight=w1, pad_type="custom", pad=[2, 2], strides=[2], dilations=[2], groups=2),
                mb.conv(x=b, weight=w2, pad_type="custom", pad=[2, 2, 2, 2], strides=[2, 2], dilations=[2, 1],
                        groups=2))

    got = _run(prog, tmp_path, "conv", a=x1, b=x2)
    _assert_all_close(got, [_torch_conv(x1, w1, (2, 2), 2, 2, 2), _torch_conv(x2, w2, (2, 2, 2, 2), 2, (2, 1), 2)])


def test_conv_3d_refused(tmp_path):
    """iOS14/test_conv.py: TestConv.test_padding_mode_stress, conv3d (input [1, 1, 4, 5, 6], kernel [2, 4, 3])."""
    w = np.ones((1, 1, 2, 4, 3), np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 1, 4, 5, 6))], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.conv(x=x, weight=w, pad_type="same")

    _refused(prog, tmp_path, {"x": np.zeros((1, 1, 4, 5, 6), np.float32)}, "conv", "x of rank 5", "3-D")


# iOS14/test_conv.py: TestConvTranspose.test_builder_to_backend_stress configs (padding, H, W, Kh, Kw, stride,
# dilation, bias, groups, output_shape given), conv1d and conv2d; C_in = groups, C_out = 2 * groups.
CONV_TRANSPOSE_STRESS = [
    ((1, 2), 12, 14, 2, 4, (2, 1), (1, 1), False, 1, True),
    ((2, 2), 12, 14, 2, 4, (2, 2), (2, 1), False, 2, False),
    ((1, 2), 7, 7, 2, 2, (2, 2), (2, 1), True, 1, False),
    ((2, 2), 7, 7, 2, 2, (2, 1), (1, 1), True, 2, False),
]


@pytest.mark.parametrize("config", CONV_TRANSPOSE_STRESS, ids=["plain", "dilated-groups", "dilated-bias", "groups"])
def test_conv_transpose_1d_and_2d(tmp_path, config):
    """Expected: torch's conv_transpose1d / 2d with the same weights, as the coremltools test uses."""
    pad, h, w_, kh, kw, stride, dil, has_bias, groups, give_shape = config
    rng = np.random.default_rng(3)
    x2 = rng.standard_normal((1, groups, h, w_)).astype(np.float32)
    w2 = rng.standard_normal((groups, 2, kh, kw)).astype(np.float32)  # [C_in, C_out / groups, kh, kw]
    bias = rng.standard_normal(2 * groups).astype(np.float32) if has_bias else None
    x1, w1 = x2[:, :, :, 0], w2[:, :, :, 0]
    tb = None if bias is None else torch.from_numpy(bias)
    want1 = F.conv_transpose1d(torch.from_numpy(x1), torch.from_numpy(w1), tb, stride=stride[0], padding=pad[0],
                               dilation=dil[0], groups=groups).numpy()
    want2 = F.conv_transpose2d(torch.from_numpy(x2), torch.from_numpy(w2), tb, stride=stride, padding=pad,
                               dilation=dil, groups=groups).numpy()

    @mb.program(input_specs=[mb.TensorSpec(shape=x1.shape), mb.TensorSpec(shape=x2.shape)],
                opset_version=ct.target.iOS16)
    def prog(a, b):
        extra1 = {"bias": bias} if has_bias else {}
        extra2 = dict(extra1)
        if give_shape:
            extra1["output_shape"], extra2["output_shape"] = list(want1.shape), list(want2.shape)
        return (mb.conv_transpose(x=a, weight=w1, pad=[pad[0]] * 2, pad_type="custom", strides=[stride[0]],
                                  dilations=[dil[0]], groups=groups, **extra1),
                mb.conv_transpose(x=b, weight=w2, pad=[pad[0], pad[0], pad[1], pad[1]], pad_type="custom",
                                  strides=list(stride), dilations=list(dil), groups=groups, **extra2))

    got = _run(prog, tmp_path, "conv_transpose", a=x1, b=x2)
    _assert_all_close(got, [want1, want2])


def test_conv_transpose_same_and_wider_output_shape_refused(tmp_path):
    """pad_type "same" and an output_shape wider than the pads give (both allowed by the MIL spec, whose output
    is then underdetermined) are refused, each naming the attribute and its value."""
    w = np.ones((1, 1, 3, 3), np.float32)
    feed = {"x": np.ones((1, 1, 4, 4), np.float32)}

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 1, 4, 4))], opset_version=ct.target.iOS16)
    def same(x):
        return mb.conv_transpose(x=x, weight=w, pad_type="same", strides=[2, 2])

    _refused(same, tmp_path / "same", feed, "conv_transpose", "pad_type='same'")

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 1, 4, 4))], opset_version=ct.target.iOS16)
    def wider(x):  # valid at stride 2 gives 9 x 9; torch's output_padding=1 would ask 10 x 10
        return mb.conv_transpose(x=x, weight=w, strides=[2, 2], output_shape=[1, 1, 10, 10])

    _refused(wider, tmp_path / "wider", feed, "conv_transpose", "output_shape=[1, 1, 10, 10]", "[9, 9]")


# ---------------------------------------------------------------------------------- image resizing
def test_upsample_bilinear_rank3_and_half_pixel_centers(tmp_path):
    """iOS14/test_image_resizing.py: TestUpsampleBilinear.test_builder_to_backend_smoke (rank-3 x [1, 1, 2],
    scale 3 align_corners, scale 2.6 not); iOS16/test_image_resizing.py: TestUpsampleBilinear
    .test_builder_to_backend_smoke_iOS16 (x [1, 1, 1, 2], scales 2 x 3, each valid align_corners /
    half_pixel_centers pair)."""
    pairs = [(True, False), (True, None), (False, True), (False, False), (False, None)]

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 1, 2)), mb.TensorSpec(shape=(1, 1, 1, 2))],
                opset_version=ct.target.iOS16)
    def prog(r3, r4):
        return (mb.upsample_bilinear(x=r3, scale_factor_height=1, scale_factor_width=3, align_corners=True),
                mb.upsample_bilinear(x=r3, scale_factor_height=1.0, scale_factor_width=2.6, align_corners=False),
                *(mb.upsample_bilinear(x=r4, scale_factor_height=2, scale_factor_width=3, align_corners=ac,
                                       half_pixel_centers=hpc) for ac, hpc in pairs))

    got = _run(prog, tmp_path, "upsample_bilinear", r3=np.array([0, 1], np.float32).reshape(1, 1, 2),
               r4=np.array([1, 2], np.float32).reshape(1, 1, 1, 2))
    corners = np.array([1.0, 1.2, 1.4, 1.6, 1.8, 2.0] * 2).reshape(1, 1, 2, 6)
    half = np.array([1.0, 1.0, 1.33334, 1.66667, 2.0, 2.0] * 2).reshape(1, 1, 2, 6)
    asym = np.array([1.0, 1.33334, 1.66667, 2.0, 2.0, 2.0] * 2).reshape(1, 1, 2, 6)
    _assert_all_close(got, [np.array([0, 0.2, 0.4, 0.6, 0.8, 1]).reshape(1, 1, 6),
                            np.array([0, 0.1, 0.5, 0.9, 1]).reshape(1, 1, 5), corners, corners, half, asym, half])


def test_upsample_bilinear_stress_against_torch(tmp_path):
    """iOS14/test_image_resizing.py: TestUpsampleBilinear.test_builder_to_backend_stress, input [2, 5, 10, 22],
    scales (3, 4), (2.5, 2.0), (0.5, 0.75), align_corners both ways, recompute_scale_factor=True. Expected:
    torch's interpolate, as there (there with rtol 0.5; here with the default tolerance)."""
    x = np.random.default_rng(4).uniform(-100, 100, (2, 5, 10, 22)).astype(np.float32)
    cases = [(s, ac) for s in ((3, 4), (2.5, 2.0), (0.5, 0.75)) for ac in (True, False)]

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS16)
    def prog(x):
        return tuple(mb.upsample_bilinear(x=x, scale_factor_height=s[0], scale_factor_width=s[1], align_corners=ac)
                     for s, ac in cases)

    got = _run(prog, tmp_path, "upsample_bilinear", x=x)
    want = [F.interpolate(torch.from_numpy(x), scale_factor=s, mode="bilinear", align_corners=ac,
                          recompute_scale_factor=True).numpy() for s, ac in cases]
    _assert_all_close(got, want, atol=1e-3, rtol=1e-5)  # |x| <= 100: 1e-3 is ~1e-5 relative to the range


def test_upsample_bilinear_align_corners_and_half_pixel_centers_refused(tmp_path):
    """The pair coremltools' iOS16 smoke test skips as invalid; the builder accepts it, the executor refuses it."""
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 1, 1, 2))], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.upsample_bilinear(x=x, scale_factor_height=2, scale_factor_width=3, align_corners=True,
                                    half_pixel_centers=True)

    _refused(prog, tmp_path, {"x": np.ones((1, 1, 1, 2), np.float32)}, "upsample_bilinear",
             "align_corners=True with half_pixel_centers=True")


def test_pixel_shuffle_and_unshuffle(tmp_path):
    """iOS14/test_tensor_transformation.py: TestPixelShuffle.test_builder_to_backend_smoke;
    iOS16/test_tensor_transformation.py: TestPixelUnshuffle.test_builder_to_backend_smoke."""
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 1, 1)), mb.TensorSpec(shape=(1, 1, 2, 2))],
                opset_version=ct.target.iOS16)
    def prog(a, b):
        return mb.pixel_shuffle(x=a, upscale_factor=2), mb.pixel_unshuffle(x=b, downscale_factor=np.uint32(2))

    got = _run(prog, tmp_path, "pixel_unshuffle", a=np.array([9.0, 5.0, 1.0, 3.0], np.float32).reshape(1, 4, 1, 1),
               b=np.array([[[[9.0, 5.0], [1.0, 3.0]]]], np.float32))
    _assert_all_close(got, [[[[[9.0, 5.0], [1.0, 3.0]]]], np.array([9.0, 5.0, 1.0, 3.0]).reshape(1, 4, 1, 1)])


# ------------------------------------------------------------------------------------ gather, reduce
GATHER_X = np.array([[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]], np.float32)
GATHER_I = np.array([[[1, 0], [0, 1]], [[1, 0], [0, 0]]], np.int32)


def test_gather_axis_and_batch_dims(tmp_path):
    """iOS14/test_scatter_gather.py: TestGather.test_builder_to_backend_smoke (indices an input);
    iOS16/test_scatter_gather.py: TestGather.test_builder_to_backend_smoke (fp32 x, int32 indices, static),
    axis 1 / 2 with batch_dims 0, 1, 2."""
    dims = [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3)), mb.TensorSpec(shape=(2,), dtype=types.int32),
                             mb.TensorSpec(shape=GATHER_X.shape)], opset_version=ct.target.iOS16)
    def prog(x, indices, x3):
        return (*(mb.gather(x=x, indices=indices, axis=axis) for axis in (0, 1, -2, -1)),
                mb.gather(x=x, indices=indices),
                *(mb.gather(x=x3, indices=GATHER_I, axis=axis, batch_dims=bd) for axis, bd in dims))

    got = _run(prog, tmp_path, "gather", x=X23, indices=np.array([1, 0], np.int32), x3=GATHER_X)
    rows, cols = [[4, 5, 6], [1, 2, 3]], [[2, 1], [5, 4]]
    _assert_all_close(got, [
        rows, cols, rows, cols, rows,
        [[[[[4, 5, 6], [1, 2, 3]], [[1, 2, 3], [4, 5, 6]]], [[[4, 5, 6], [1, 2, 3]], [[1, 2, 3], [1, 2, 3]]]],
         [[[[10, 11, 12], [7, 8, 9]], [[7, 8, 9], [10, 11, 12]]], [[[10, 11, 12], [7, 8, 9]], [[7, 8, 9], [7, 8, 9]]]]],
        [[[[4, 5, 6], [1, 2, 3]], [[1, 2, 3], [4, 5, 6]]], [[[10, 11, 12], [7, 8, 9]], [[7, 8, 9], [7, 8, 9]]]],
        [[[[[2, 1], [1, 2]], [[2, 1], [1, 1]]], [[[5, 4], [4, 5]], [[5, 4], [4, 4]]]],
         [[[[8, 7], [7, 8]], [[8, 7], [7, 7]]], [[[11, 10], [10, 11]], [[11, 10], [10, 10]]]]],
        [[[[2, 1], [1, 2]], [[5, 4], [4, 5]]], [[[8, 7], [7, 7]], [[11, 10], [10, 10]]]],
        [[[2, 1], [4, 5]], [[8, 7], [10, 10]]],
    ])


def test_reduce_mean_and_argmax(tmp_path):
    """iOS14/test_reduction.py: TestReduction.test_builder_to_backend_smoke (modes mean, argmax),
    test_builder_to_backend_global_pool_2d, _global_pool_none (no axes) and _global_pool_3d, mode mean."""
    v2 = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3)), mb.TensorSpec(shape=(1, 1, 2, 3)),
                             mb.TensorSpec(shape=(1, 2, 2, 3)), mb.TensorSpec(shape=(1, 1, 1, 2, 3))],
                opset_version=ct.target.iOS16)
    def prog(a, b, c, d):
        return (mb.reduce_mean(x=a, axes=[1], keep_dims=False), mb.reduce_argmax(x=a, axis=1, keep_dims=False),
                mb.reduce_mean(x=b, axes=[3, -2], keep_dims=True), mb.reduce_mean(x=c, axes=None, keep_dims=True),
                mb.reduce_mean(x=d, axes=[-3, 3, 4], keep_dims=True))

    got = _run(prog, tmp_path, "reduce_mean", a=v2, b=v2.reshape(1, 1, 2, 3), c=np.stack([v2, v2])[None],
               d=v2.reshape(1, 1, 1, 2, 3))
    assert got[1].dtype == np.int32
    _assert_all_close(got, [[2.0, 5.0], [2, 2], [[[[3.5]]]], [[[[3.5]]]], [[[[[3.5]]]]]])


def test_reduce_argmax_output_dtype_ios17(tmp_path):
    """iOS17/test_reduction.py: TestReduction.test_reduce_arg_ios17_output_dtype, reduce_argmax, int32 and uint16."""
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3))], opset_version=ct.target.iOS17)
    def prog(x):
        return (mb.reduce_argmax(x=x, axis=1, keep_dims=False, output_dtype="int32"),
                mb.reduce_argmax(x=x, axis=1, keep_dims=False, output_dtype="uint16"))

    ref = _reference(prog, tmp_path, ct.target.iOS17)
    # Core ML outputs no uint16: the converter appends a cast to int32 after the uint16 argmax
    assert ref.op_types()["reduce_argmax"] == 2 and "cast" in ref.op_types()
    out = ref.run({"x": X23}, keep=True)
    uint16 = next(op.outputs[0].name for op in ref.block.operations if op.type == "reduce_argmax"
                  and op.outputs[0].type.tensorType.dataType == 32)  # 32: UINT16 in the MIL spec
    assert out[uint16].dtype == np.uint16
    _assert_all_close([out[k] for k in ref.block.outputs] + [out[uint16]], [[2, 2], [2, 2], [2, 2]])


# ------------------------------------------------------------------------ tensor transformation / ops
def test_shape_changing_ops(tmp_path):
    """iOS14/test_tensor_transformation.py: TestExpandDims, TestReshape, TestSqueeze, TestTranspose, TestSplit,
    TestConcat (test_builder_to_backend_smoke each); iOS14/test_tensor_operation.py: TestTile, TestShape,
    TestIdentity (test_builder_to_backend_smoke each)."""
    sq = np.array([[[[1], [2], [3]]]], np.float32)
    sp = np.array([[1, 2], [3, 4], [5, 6]], np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3)), mb.TensorSpec(shape=sq.shape), mb.TensorSpec(shape=(3, 2)),
                             mb.TensorSpec(shape=(2, 2)), mb.TensorSpec(shape=(1, 2))], opset_version=ct.target.iOS16)
    def prog(x, s, p, c1, c2):
        return (*(mb.expand_dims(x=x, axes=a) for a in ([0], [1], [2], [-1], [0, 1], [-2, -1])),
                *(mb.reshape(x=x, shape=sh) for sh in ([3, 2], [2, -1], [2, 1, 1, 3])),
                mb.squeeze(x=s, axes=(-1,)), mb.squeeze(x=s, axes=(-3, 0)), mb.squeeze(x=s, axes=(0, 1, 3)),
                mb.squeeze(x=s),
                *(mb.transpose(x=x, perm=pm) for pm in ((0, 1), (1, 0), (-1, 0), (-2, -1))),
                *mb.split(x=p, num_splits=2, axis=1), *mb.split(x=p, split_sizes=[1, 2], axis=0),
                mb.concat(values=(c1, c2), axis=0),
                mb.tile(x=x, reps=(1, 1)), mb.tile(x=x, reps=(2, 1)), mb.shape(x=x), mb.identity(x=x))

    got = _run(prog, tmp_path, "squeeze", x=X23, s=sq, p=sp, c1=np.array([[1, 2], [4, 5]], np.float32),
               c2=np.array([[7, 8]], np.float32))
    col = [[[1], [2], [3]], [[4], [5], [6]]]
    _assert_all_close(got, [
        [[[1, 2, 3], [4, 5, 6]]], [[[1, 2, 3]], [[4, 5, 6]]], col, col, [[[[1, 2, 3], [4, 5, 6]]]],
        [[[[1]], [[2]], [[3]]], [[[4]], [[5]], [[6]]]],
        [[1, 2], [3, 4], [5, 6]], [[1, 2, 3], [4, 5, 6]], [[[[1.0, 2.0, 3.0]]], [[[4.0, 5.0, 6.0]]]],
        [[[1, 2, 3]]], [[1], [2], [3]], [1, 2, 3], [1, 2, 3],
        X23, X23.T, X23.T, X23,
        [[1], [3], [5]], [[2], [4], [6]], [[1, 2]], [[3, 4], [5, 6]],
        [[1, 2], [4, 5], [7, 8]],
        X23, [[1, 2, 3], [4, 5, 6], [1, 2, 3], [4, 5, 6]], [2, 3], X23,
    ])
    assert got[-2].dtype == np.int32


def test_reshape_zero_counts_from_the_right_ios17(tmp_path):
    """iOS17/test_tensor_transformation.py: TestReshape.test_reshape_with_zero_different_len_iOS17 ([2, 3] with
    shape [1, 0, -1, 0] -> [[[[1, 2, 3], [4, 5, 6]]]]); and [2, 3, 4] with shape [0, -1]: by the iOS17 rule quoted
    there the 0 lines up with x's dim 1 (3), so [3, 8], as coremltools' type inference declares it."""
    x3 = np.arange(24, dtype=np.float32).reshape(2, 3, 4)

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3)), mb.TensorSpec(shape=x3.shape)], opset_version=ct.target.iOS17)
    def prog(x, y):
        return mb.reshape(x=x, shape=[1, 0, -1, 0]), mb.reshape(x=y, shape=[0, -1])

    got = _run(prog, tmp_path, "reshape", target=ct.target.iOS17, x=X23, y=x3)
    _assert_all_close(got, [[[[[1, 2, 3], [4, 5, 6]]]], x3.reshape(3, 8)])


# iOS14/test_tensor_transformation.py: TestSliceByIndex.test_builder_eval, the cases with their numpy answers
# (x = arange(24) as [2, 3, 4]); each entry: slice_by_index arguments, then the answer as coremltools writes it.
_X = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
SLICES = [
    (dict(begin=[1, 1, 1], end=[2, 2, 2]), _X[1:2, 1:2, 1:2]),
    (dict(begin=[1, 1, 1], end=[2, 3, 4], stride=[1, 1, 2]), _X[1:2, 1:3, 1:4:2]),
    (dict(begin=[-3, -3, -3], end=[-1, -1, -1]), _X[-3:-1, -3:-1, -3:-1]),
    (dict(begin=[0, 0, -3], end=[-1, -2, -2]), _X[0:-1, 0:-2, -3:-2]),
    (dict(begin=[-1, -1, -1], end=[0, 1, -3], stride=[-2, -1, -3]), _X[-1:0:-2, -1:1:-1, -1:-3:-3]),
    (dict(begin=[1, 1, 1], end=[2, 3, 4], stride=[1, 1, 2], begin_mask=[True, False, True]), _X[:2, 1:3, :4:2]),
    (dict(begin=[1, 1, 1], end=[2, 3, 4], stride=[1, 1, 2], begin_mask=[True, False, True],
          end_mask=[True, True, False]), _X[:, 1:, :4:2]),
    (dict(begin=[1, 1, 1], end=[2, 3, 3], stride=[1, 1, 2], begin_mask=[False, False, True],
          end_mask=[True, False, False], squeeze_mask=[False, True, False]), _X[1::1, 1, :3:2]),
    (dict(begin=[1, 1, 1], end=[2, 2, 0], stride=[1, 1, 1], squeeze_mask=[False, False, True]), _X[1:2, 1:2, 1]),
    (dict(begin=[0, 0, 0], end=[0, 0, 0], stride=[1, 1, -1], begin_mask=[True] * 3, end_mask=[True] * 3),
     _X[..., ::-1]),
]


def test_slice_by_index(tmp_path):
    """The test_builder_eval cases above, plus TestSliceByIndex.test_builder_to_backend_smoke (begin / end as
    inputs and as consts: [[[17, 18], [21, 22]]])."""
    @mb.program(input_specs=[mb.TensorSpec(shape=_X.shape), mb.TensorSpec(shape=(3,), dtype=types.int32),
                             mb.TensorSpec(shape=(3,), dtype=types.int32)], opset_version=ct.target.iOS16)
    def prog(x, begin, end):
        return (mb.slice_by_index(x=x, begin=begin, end=end),
                mb.slice_by_index(x=x, begin=np.array([1, 1, 1], np.int32), end=np.array([2, 3, 3], np.int32)),
                *(mb.slice_by_index(x=x, **kw) for kw, _ in SLICES))

    got = _run(prog, tmp_path, "slice_by_index", x=_X, begin=np.array([1, 1, 1], np.int32),
               end=np.array([2, 3, 3], np.int32))
    _assert_all_close(got, [[[[17, 18], [21, 22]]]] * 2 + [want for _, want in SLICES])


# ----------------------------------------------------------------------------- compression, quantization
def test_constexpr_affine_dequantize_and_lut_to_dense(tmp_path):
    """iOS16/test_constexpr_ops.py: TestConstexprAffineDequantize.test_builder_to_backend_smoke and
    TestConstexprLutToDense.test_builder_to_backend_smoke (each adds the decompressed constant to the input)."""
    lut = np.array([-19.0, 4.0, 0.0, -1.0, 1.0, 3.0, 5.0, -8.0, 19, 13, 42, 4.5, 5.4, 2.0, -6, -7], np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 1, 2, 2)), mb.TensorSpec(shape=(4, 1))],
                opset_version=ct.target.iOS16)
    def prog(a, b):
        qa = mb.constexpr_affine_dequantize(quantized_data=np.array([3, 5, 5, 6], np.uint8).reshape(1, 1, 2, 2),
                                            zero_point=np.array([2, 4], np.uint8),
                                            scale=np.array([1, 2], np.float32), axis=3)
        lb = mb.constexpr_lut_to_dense(lut=lut, indices=np.array([212, 21], np.uint8),
                                       shape=np.array([4, 1], np.uint32))
        return mb.add(x=a, y=qa), mb.add(x=b, y=lb)

    ref = _reference(prog, tmp_path)
    assert {"constexpr_affine_dequantize", "constexpr_lut_to_dense"} <= set(ref.op_types())
    out = ref.run({"a": np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2),
                   "b": np.arange(4, dtype=np.float32).reshape(4, 1)})
    decompressed = np.array([1, 2, 3, 4], np.float32)  # both tests' decompressed_constant
    _assert_all_close([out[k] for k in ref.block.outputs],
                      [np.arange(4).reshape(1, 1, 2, 2) + decompressed.reshape(1, 1, 2, 2),
                       np.arange(4).reshape(4, 1) + decompressed.reshape(4, 1)])


def test_quantize_dequantize_ios17(tmp_path):
    """iOS17/test_quantization.py: TestQuantize.test_smoke_builder_to_backend_quantize_per_tensor and
    _per_channel (fp16), TestDequantize.test_smoke_builder_to_backend_dequantize_per_tensor (fp32, atol 1e-3)."""
    @mb.program(input_specs=[mb.TensorSpec(shape=(4,)), mb.TensorSpec(shape=(2, 2)), mb.TensorSpec(shape=(4,))],
                opset_version=ct.target.iOS17)
    def prog(a, b, c):
        qa = mb.quantize(input=mb.cast(x=a, dtype="fp16"), zero_point=np.int8(10), scale=np.float16(0.1),
                         output_dtype="int8")
        qb = mb.quantize(input=mb.cast(x=b, dtype="fp16"), zero_point=np.uint8([10, 0]),
                         scale=np.float16([0.1, 0.01]), axis=0, output_dtype="uint8")
        qc = mb.quantize(input=c, scale=np.float32(1), output_dtype="uint8")
        return (mb.dequantize(input=qa, scale=np.float16(1)), mb.dequantize(input=qb, scale=np.float16(1)),
                mb.dequantize(input=qc, zero_point=np.uint8(5), scale=np.float32(0.2)))

    got = _run(prog, tmp_path, "quantize", target=ct.target.iOS17, a=np.array([-1.0, 0.0, 1.0, 2.0], np.float32),
               b=np.array([[-1.0, 0.0], [1.0, 2.0]], np.float32), c=np.array([5, 10, 15, 20], np.float32))
    _assert_all_close(got[:2], [[0, 10, 20, 30], [[0, 10], [100, 200]]])
    _assert_all_close(got[2:], [[0, 1, 2, 3]], atol=1e-3, rtol=1e-3)
