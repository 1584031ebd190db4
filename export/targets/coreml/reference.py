"""A small, exact numpy executor for the Core ML ML programs this toolkit writes.

Core ML predicts only on macOS. So that Linux CI does not export Core ML models blind, this module
loads a saved ``.mlpackage`` from disk (the MIL program in its spec and ``weights/weight.bin``;
never the PyTorch model) and runs the ``main`` function op by op in numpy, following MIL
semantics.

Precision modes:

* ``accumulate="fp64"`` (default): every op rounds its result to the dtype the program declares for
  that output (fp16 programs keep fp16 storage and fp16 weights), and the sums inside matmul / linear
  / conv, softmax, layer_norm and reduce_mean are taken in float64 (a product of two float32 values is
  exact there). This shows the drift that fp16 *storage* causes, and nothing else: with float32 sums
  the result depends on how the BLAS splits them (its kernel for the CPU, its thread count; measured:
  1 or 2 OpenBLAS threads give different W8A8 activation ranges, scales and validation figures), and
  an int8 program turns such one-ulp differences into whole quantization steps. Rounded to the stored
  dtype, float64 sums agree on every CPU.
* ``accumulate="fp32"``: the same with float32 sums (the BLAS's own order).
* ``accumulate="fp16"`` (pessimistic): additionally, the sums inside matmul / linear / conv are
  rounded to fp16 every 32 products and accumulated in fp16, and softmax / layer_norm /
  reduce_mean reduce in fp16. Real hardware lies between the two modes.

Kernel sets: ``kernels="numpy"`` (the ops below) is the reference; ``kernels="torch"``
(``torch_kernels.py``) runs the same program walk on torch's kernels with the same storage
rounding and sums, and is checked against it op by op in the tests. The fp16 mode is numpy-only.

Quantized programs: weight-only modes decode their ``constexpr_*`` weights exactly; W8A8 programs
(iOS 17 ``quantize`` / ``dequantize`` pairs around conv, linear and add) quantize activations as
the MIL spec says, clip(round(x / scale) + zero_point), with round half to even and the division in
float32; an int8 device kernel that fuses the pairs may round its accumulators differently.

What it refuses: ``check_supported`` runs before every op and raises UnsupportedOpError (naming the op,
the attribute and its value) for what no kernel here computes (3-D conv, conv_transpose with pad type
"same" or another output shape than its pads give, ...); and a result whose shape is not the one the program
declares stops the run. Neither returns a silently different answer. ``tests/test_coreml_peer_ops.py`` checks
the kernels against coremltools' own op unit tests.

What it cannot prove: the Neural Engine's and GPU's own kernels (their accumulation order,
fused ops, their fp16 transcendental approximations) and Core ML's scheduling. It proves that the
saved program, with its saved weights, computes what PyTorch computes within fp32 rounding, and
brackets the error of fp16 storage.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from ...errors import ExportError

_DTYPES = {10: np.float16, 11: np.float32, 12: np.float64, 21: np.int8, 22: np.int16, 23: np.int32,
           24: np.int64, 31: np.uint8, 32: np.uint16, 33: np.uint32, 34: np.uint64, 1: np.bool_}
_CAST = {"fp16": np.float16, "fp32": np.float32, "int32": np.int32, "int64": np.int64, "bool": np.bool_,
         "int8": np.int8, "uint8": np.uint8, "int16": np.int16}
_BLOB_DTYPES = (10, 11, 21, 31, 22, 32, 23, 33)  # fp16, fp32, int8, uint8, int16, uint16, int32, uint32
_CHUNK = 32  # products per fp16 partial sum in the pessimistic mode


class CoreMLReferenceError(ExportError, RuntimeError):
    """The file is not an ML program this executor can run."""


class UnsupportedOpError(CoreMLReferenceError):
    """An op type the executor does not implement; names the op and where it occurs."""


# ------------------------------------------------------------------------------------------
# Reading values out of the spec
# ------------------------------------------------------------------------------------------
def _tensor_value(value, blobs) -> object:
    """Decode a MIL ``Value`` (immediate or blob-file) into numpy / Python."""
    vtype = value.type
    if value.HasField("blobFileValue"):
        dt = vtype.tensorType.dataType
        if dt not in _BLOB_DTYPES:
            raise CoreMLReferenceError(f"blob of data type {dt} is not supported")
        return blobs.array(value.blobFileValue.offset, _DTYPES[dt]).reshape(_shape(vtype.tensorType))
    imm = value.immediateValue
    kind = imm.WhichOneof("value")
    if kind == "list":
        return [_tensor_value(v, blobs) for v in imm.list.values]
    if kind == "tuple":
        return tuple(_tensor_value(v, blobs) for v in imm.tuple.values)
    t, dt = imm.tensor, vtype.tensorType.dataType
    field = t.WhichOneof("value")
    if field == "strings":
        vals = list(t.strings.values)
        return vals[0] if vtype.tensorType.rank == 0 else vals
    if field == "bytes":
        arr = np.frombuffer(t.bytes.values, dtype=_DTYPES[dt]).copy()
    elif field is None:
        arr = np.zeros(0, _DTYPES.get(dt, np.float32))
    else:
        arr = np.asarray(list(getattr(t, field).values), dtype=_DTYPES.get(dt, np.float32))
    shape = _shape(vtype.tensorType)
    return arr.reshape(shape) if shape is not None else arr


def _shape(tt):
    dims = []
    for d in tt.dimensions:
        if not d.HasField("constant"):
            return None
        dims.append(d.constant.size)
    return tuple(dims)


# ------------------------------------------------------------------------------------------
# Ops: each takes (inputs dict, attributes dict, ctx) and returns one array or a tuple
# ------------------------------------------------------------------------------------------
def _f32(x):
    return np.asarray(x, np.float32)


def _matmul(a, b, ctx):
    """a @ b with ``ctx``'s sums (float64 / float32), or with fp16 partial sums of _CHUNK products in the
    pessimistic mode."""
    a, b = _f32(a), _f32(b)
    if not ctx.fp16_accumulate:
        return np.matmul(a.astype(ctx.sum_dtype), b.astype(ctx.sum_dtype))
    k = a.shape[-1]
    acc = None
    for s in range(0, k, _CHUNK):
        part = np.matmul(a[..., s:s + _CHUNK], b[..., s:s + _CHUNK, :]).astype(np.float16)
        acc = part if acc is None else (acc + part).astype(np.float16)
    return acc.astype(np.float32)


def _reduce(x, axes, ctx, keepdims=True):
    if ctx.fp16_accumulate:
        return np.mean(np.asarray(x, np.float16), axis=axes, keepdims=keepdims, dtype=np.float16).astype(np.float32)
    return np.mean(np.asarray(x, ctx.sum_dtype), axis=axes, keepdims=keepdims)


def _pads(pad_type, pad, x_hw, k_hw, strides, dilations):
    """Explicit (top, bottom, left, right) padding for MIL pad types."""
    if pad_type == "valid":
        return (0, 0, 0, 0)
    if pad_type == "custom":
        return tuple(int(p) for p in pad)
    out = []
    for size, k, s, d in zip(x_hw, k_hw, strides, dilations):
        eff = (k - 1) * d + 1
        total = max((-(-size // s) - 1) * s + eff - size, 0)
        small, big = total // 2, total - total // 2
        out += [small, big] if pad_type == "same" else [big, small]  # same_lower puts the extra first
    return tuple(out)


def _lift_1d(i):
    """A 1-D conv / conv_transpose's inputs as those of a 2-D one over a height of 1 (exact: one kernel row)."""
    j = dict(i)
    j["x"] = np.asarray(i["x"])[:, :, None]  # [n, c, w] -> [n, c, 1, w]
    j["weight"] = np.asarray(i["weight"])[:, :, None]  # [o, c, k] -> [o, c, 1, k]
    for key in ("strides", "dilations"):
        if i.get(key) is not None:
            j[key] = [1] + [int(v) for v in i[key]]
    if i.get("pad") is not None:
        j["pad"] = [0, 0] + [int(v) for v in i["pad"]]  # (left, right) -> (top 0, bottom 0, left, right)
    return j


def _conv(i, a, ctx):
    if np.ndim(i["x"]) == 3:
        return _conv(_lift_1d(i), a, ctx)[:, :, 0]  # [n, o, 1, w] -> [n, o, w]
    x, w = np.asarray(i["x"], ctx.sum_dtype), np.asarray(i["weight"], ctx.sum_dtype)  # float32 values, exact
    strides = tuple(int(v) for v in i.get("strides", (1, 1)))
    dil = tuple(int(v) for v in i.get("dilations", (1, 1)))
    groups = int(i.get("groups", 1))
    t, b, l, r = _pads(str(i.get("pad_type", "valid")), i.get("pad", (0, 0, 0, 0)), x.shape[2:], w.shape[2:],
                       strides, dil)
    x = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)))
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ho = (h - (kh - 1) * dil[0] - 1) // strides[0] + 1
    wo = (wd - (kw - 1) * dil[1] - 1) // strides[1] + 1
    sn, sc, sh, sw = x.strides
    cols = np.lib.stride_tricks.as_strided(
        x, (n, groups, cg, kh, kw, ho, wo),
        (sn, sc * cg, sc, sh * dil[0], sw * dil[1], sh * strides[0], sw * strides[1]))
    wg = w.reshape(groups, o // groups, cg, kh, kw)
    if cg == 1 and o == groups and not ctx.fp16_accumulate:  # depthwise: a weighted sum of shifted views
        y = np.einsum("ngcijhw,gocij->ngohw", cols, wg, optimize=True)
    else:
        patches = cols.transpose(0, 1, 5, 6, 2, 3, 4).reshape(n, groups, ho * wo, cg * kh * kw)
        y = _matmul(patches, wg.reshape(groups, o // groups, -1).transpose(0, 2, 1), ctx)  # [n, g, hw, og]
        y = y.transpose(0, 1, 3, 2).reshape(n, groups, o // groups, ho, wo)
    y = y.reshape(n, o, ho, wo)
    if i.get("bias") is not None:
        y = y + _f32(i["bias"]).reshape(1, -1, 1, 1)
    return y


def _conv_transpose(i, a, ctx):
    """Transposed conv as a strided scatter of each input pixel times the kernel (tap p lands p * dilation
    rows down). ``check_supported`` has refused the pad types and output shapes this does not compute."""
    if np.ndim(i["x"]) == 3:
        return _conv_transpose(_lift_1d(i), a, ctx)[:, :, 0]  # [n, o, 1, w] -> [n, o, w]
    x, w = _f32(i["x"]), _f32(i["weight"])  # w: [C_in, C_out / groups, kh, kw]
    s = tuple(int(v) for v in i.get("strides", (1, 1)))
    d = tuple(int(v) for v in i.get("dilations", (1, 1)))
    groups = int(i.get("groups", 1))
    pad = [int(p) for p in i.get("pad", (0, 0, 0, 0))] if str(i.get("pad_type", "valid")) == "custom" else [0] * 4
    n, cin, h, wd = x.shape
    _, og, kh, kw = w.shape
    full = np.zeros((n, og * groups, (h - 1) * s[0] + (kh - 1) * d[0] + 1, (wd - 1) * s[1] + (kw - 1) * d[1] + 1),
                    np.float32)
    cg = cin // groups
    for g in range(groups):
        xs = x[:, g * cg:(g + 1) * cg]  # [n, cg, h, w]
        wg = w[g * cg:(g + 1) * cg]  # [cg, og, kh, kw]
        contrib = np.einsum("nchw,coij->noijhw", xs, wg)  # [n, og, kh, kw, h, w]
        for p in range(kh):
            for q in range(kw):
                r0, c0 = p * d[0], q * d[1]
                full[:, g * og:(g + 1) * og, r0:r0 + (h - 1) * s[0] + 1:s[0], c0:c0 + (wd - 1) * s[1] + 1:s[1]] += \
                    contrib[:, :, p, q]
    y = full[:, :, pad[0]:full.shape[2] - pad[1], pad[2]:full.shape[3] - pad[3]]
    if i.get("bias") is not None:
        y = y + _f32(i["bias"]).reshape(1, -1, 1, 1)
    return y


def _layer_norm(i, a, ctx):
    x = _f32(i["x"])
    axes = tuple(int(v) for v in i["axes"])
    eps = float(i.get("epsilon", 1e-5))
    mean = _reduce(x, axes, ctx)
    var = _reduce((x - mean) ** 2, axes, ctx)
    y = (x - mean) / np.sqrt(var + eps)
    # gamma / beta have the normalized shape (x's sizes on ``axes``, in axis order): put them on those axes
    param_shape = [x.shape[d] if d in {ax % x.ndim for ax in axes} else 1 for d in range(x.ndim)]
    if i.get("gamma") is not None:
        y = y * _f32(i["gamma"]).reshape(param_shape)
    if i.get("beta") is not None:
        y = y + _f32(i["beta"]).reshape(param_shape)
    return y


def _softmax(i, a, ctx):
    x = _f32(i["x"])
    axis = int(i.get("axis", -1))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    if ctx.fp16_accumulate:
        e = e.astype(np.float16)
        return (e / e.sum(axis=axis, keepdims=True, dtype=np.float16)).astype(np.float32)
    return e / e.sum(axis=axis, keepdims=True, dtype=ctx.sum_dtype)


def _matmul_op(i, a, ctx):
    x, y = _f32(i["x"]), _f32(i["y"])
    if bool(i.get("transpose_x", False)):
        x = np.swapaxes(x, -1, -2)
    if bool(i.get("transpose_y", False)):
        y = np.swapaxes(y, -1, -2)
    if x.ndim == 1 or y.ndim == 1:
        return np.matmul(x.astype(ctx.sum_dtype), y.astype(ctx.sum_dtype))
    return _matmul(x, y, ctx)


def _linear(i, a, ctx):
    x, w = _f32(i["x"]), _f32(i["weight"])  # w: [out, in]
    y = _matmul(x, w.T, ctx) if x.ndim > 1 else np.matmul(x.astype(ctx.sum_dtype), w.T.astype(ctx.sum_dtype))
    return y + _f32(i["bias"]) if i.get("bias") is not None else y


def _reshape(i, a, ctx):
    """MIL ``reshape``. A 0 copies the input dim it lines up with counting from the right, or is 1 past x's rank
    (iOS17; before it, 0 needs ``len(shape) == rank(x)``, where both countings agree)."""
    x, shape = np.asarray(i["x"]), [int(v) for v in i["shape"]]
    off = len(shape) - x.ndim  # shape[k] lines up with x.shape[k - off]
    shape = [(x.shape[k - off] if 0 <= k - off < x.ndim else 1) if v == 0 else v for k, v in enumerate(shape)]
    return np.reshape(x, shape)


def _slice_by_index(i, a, ctx):
    x = i["x"]
    nd = x.ndim
    begin = [int(v) for v in i["begin"]]
    end = [int(v) for v in i["end"]]
    stride = [int(v) for v in i.get("stride", [1] * nd)]
    bmask = [bool(v) for v in i.get("begin_mask", [False] * nd)]
    emask = [bool(v) for v in i.get("end_mask", [False] * nd)]
    smask = [bool(v) for v in i.get("squeeze_mask", [False] * nd)]
    idx = []
    for d in range(nd):
        if smask[d]:
            idx.append(begin[d])
            continue
        idx.append(slice(None if bmask[d] else begin[d], None if emask[d] else end[d], stride[d]))
    return x[tuple(idx)]


def _concat(i, a, ctx):
    values, axis = [np.atleast_1d(v) for v in i["values"]], int(i["axis"])
    if bool(i.get("interleave", False)):  # [a0, b0, a1, b1, ...] along axis
        stacked = np.stack(values, axis=axis + 1 if axis >= 0 else axis)
        shape = list(values[0].shape)
        shape[axis] = shape[axis] * len(values)
        return stacked.reshape(shape)
    return np.concatenate(values, axis=axis)


def _split(i, a, ctx):
    x, axis = i["x"], int(i["axis"])
    if i.get("split_sizes") is not None:
        bounds = np.cumsum([int(v) for v in i["split_sizes"]])[:-1]
        return tuple(np.split(x, bounds, axis=axis))
    return tuple(np.split(x, int(i["num_splits"]), axis=axis))


def _pixel_shuffle(i, a, ctx):
    x, r = i["x"], int(i["upscale_factor"])
    n, c, h, w = x.shape
    y = x.reshape(n, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3)  # CRD order, as torch
    return y.reshape(n, c // (r * r), h * r, w * r)


def _pixel_unshuffle(i, a, ctx):
    x, r = i["x"], int(i["downscale_factor"])
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // r, r, w // r, r).transpose(0, 1, 3, 5, 2, 4)
    return y.reshape(n, c * r * r, h // r, w // r)


def _bilinear_axis(n_in, n_out, align_corners, half_pixel_centers):
    """Source indices and weights along one axis. The ratio comes from the sizes (the program's
    declared output shape), not from the stored fp32 scale factor, whose rounding (1.2 for 5 -> 6)
    would shift every sample."""
    dst = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = dst * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    elif half_pixel_centers:  # clamped at 0: torch's F.interpolate(align_corners=False)
        src = np.maximum((dst + 0.5) * (n_in / n_out) - 0.5, 0.0)
    else:  # iOS16 half_pixel_centers=False: output pixel k samples input k * n_in / n_out
        src = dst * (n_in / n_out)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = (src - i0).astype(np.float32)
    return i0, i1, lam


def _upsample_bilinear(i, a, ctx):
    """MIL ``upsample_bilinear`` over the last two axes of a rank >= 3 ``x``; ``half_pixel_centers``
    (iOS16; absent before) defaults to ``not align_corners``."""
    x = _f32(i["x"])
    sh, sw = float(i.get("scale_factor_height", 1)), float(i.get("scale_factor_width", 1))
    ac = bool(i.get("align_corners", False))
    hpc = not ac if i.get("half_pixel_centers") is None else bool(i["half_pixel_centers"])
    out_shape = ctx.current_output_shape
    ho = out_shape[-2] if out_shape else int(np.floor(x.shape[-2] * sh + 1e-4))
    wo = out_shape[-1] if out_shape else int(np.floor(x.shape[-1] * sw + 1e-4))
    h0, h1, lh = _bilinear_axis(x.shape[-2], ho, ac, hpc)
    w0, w1, lw = _bilinear_axis(x.shape[-1], wo, ac, hpc)
    rows = x[..., h0, :] * (1 - lh)[:, None] + x[..., h1, :] * lh[:, None]
    return rows[..., w0] * (1 - lw) + rows[..., w1] * lw


def _batch_norm(i, a, ctx):
    x = _f32(i["x"])
    shape = (1, -1) + (1,) * (x.ndim - 2)
    var = _f32(i["variance"]).reshape(shape)
    y = (x - _f32(i["mean"]).reshape(shape)) / np.sqrt(var + float(i.get("epsilon", 1e-5)))
    if i.get("gamma") is not None:
        y = y * _f32(i["gamma"]).reshape(shape)
    if i.get("beta") is not None:
        y = y + _f32(i["beta"]).reshape(shape)
    return y


def _affine_dequantize(i, a, ctx):
    q = np.asarray(a["quantized_data"], np.float32)
    axis = int(a["axis"])
    shape = [1] * q.ndim
    zp, scale = np.asarray(a["zero_point"], np.float32), np.asarray(a["scale"], np.float32)
    if zp.ndim == 1 and zp.size > 1:
        shape[axis] = -1
        zp = zp.reshape(shape)
    if scale.ndim == 1 and scale.size > 1:
        shape[axis] = -1
        scale = scale.reshape(shape)
    return (q - zp) * scale


def _per_axis(param, ndim, axis):
    """A scale / zero point broadcast against a rank-``ndim`` tensor: a scalar as is, a vector along ``axis``."""
    param = np.asarray(param, np.float32)
    if param.ndim == 0 or axis is None:
        return param
    shape = [1] * ndim
    shape[int(axis) % ndim] = -1
    return param.reshape(shape)


_INT_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}


def _quantize(i, a, ctx):
    """iOS17 ``quantize``: clip(round(x / scale) + zero_point) to int8 / uint8; scale and zero point a
    scalar (per tensor) or a vector along ``axis``. Computed in float32; ``round`` is half-to-even
    (``np.rint``), as coremltools' own value inference (``np.around``) does."""
    x = _f32(i["input"])
    dtype = str(i["output_dtype"])
    if dtype not in _INT_RANGE:
        raise ValueError(f"quantize to {dtype!r}: only int8 and uint8 exist")
    axis = i.get("axis")
    q = np.rint(x / _per_axis(i["scale"], x.ndim, axis))
    if i.get("zero_point") is not None:
        q = q + _per_axis(i["zero_point"], x.ndim, axis)
    lo, hi = _INT_RANGE[dtype]
    return np.clip(q, lo, hi).astype(_CAST[dtype])


def _dequantize(i, a, ctx):
    """iOS17 ``dequantize``: scale * (q - zero_point), in the scale's float type."""
    q = np.asarray(i["input"]).astype(np.float32)
    axis = i.get("axis")
    if i.get("zero_point") is not None:
        q = q - _per_axis(i["zero_point"], q.ndim, axis)
    return q * _per_axis(i["scale"], q.ndim, axis)


def _lut_to_dense(i, a, ctx):
    """iOS16 palettization: indices packed LSB-first, nbits = log2(len(lut)), one shared LUT."""
    lut, packed, shape = np.asarray(a["lut"]), np.asarray(a["indices"], np.uint8), [int(v) for v in a["shape"]]
    nbits = int(np.log2(lut.shape[-1]))
    count = int(np.prod(shape))
    bits = np.unpackbits(packed, bitorder="little")[: count * nbits].reshape(count, nbits)
    idx = (bits.astype(np.int64) << np.arange(nbits)).sum(axis=1)
    return lut.reshape(-1)[idx].reshape(shape)


def _classify(i, a, ctx):
    probs = np.asarray(i["probabilities"], np.float32).reshape(-1)
    classes = list(i["classes"])
    ctx.classifier_probs = probs
    return classes[int(np.argmax(probs))], dict(zip(classes, probs.tolist()))


def _reduce_argmax(i, a, ctx):
    """MIL ``reduce_argmax``: int32 index of the largest value along ``axis`` (first on ties, as numpy)."""
    out = np.argmax(np.asarray(i["x"]), axis=int(i["axis"])).astype(np.int32)
    return np.expand_dims(out, int(i["axis"])) if bool(i.get("keep_dims", False)) else out


def _gather(i, a, ctx):
    """MIL ``gather``: ``np.take`` along ``axis``; with ``batch_dims`` b, the first b axes of ``x`` and
    ``indices`` pair up, and each pair is a gather of its own."""
    x, idx = np.asarray(i["x"]), np.asarray(i["indices"]).astype(np.int64)
    axis = int(i.get("axis", 0)) % x.ndim
    bd = int(i.get("batch_dims", 0))
    bd = bd + idx.ndim if bd < 0 else bd
    if bd == 0:
        return np.take(x, idx, axis=axis)
    lead = x.shape[:bd]
    parts = [np.take(x[b], idx[b], axis=axis - bd) for b in np.ndindex(*lead)]
    return np.stack(parts).reshape(lead + parts[0].shape)  # [prod(lead), ...] -> [*lead, ...]


def _reduce_mean(i, a, ctx):
    """MIL ``reduce_mean``; no ``axes`` means every axis."""
    axes = None if i.get("axes") is None else tuple(int(v) for v in i["axes"])
    return _reduce(i["x"], axes, ctx, bool(i.get("keep_dims", False)))


def _binary(fn):
    return lambda i, a, ctx: fn(_f32(i["x"]) if np.asarray(i["x"]).dtype.kind == "f" else np.asarray(i["x"]),
                                _f32(i["y"]) if np.asarray(i["y"]).dtype.kind == "f" else np.asarray(i["y"]))


OPS = {
    "conv": _conv, "conv_transpose": _conv_transpose, "linear": _linear, "matmul": _matmul_op,
    "layer_norm": _layer_norm, "batch_norm": _batch_norm, "softmax": _softmax,
    "silu": lambda i, a, ctx: _f32(i["x"]) / (1.0 + np.exp(-_f32(i["x"]))),
    "sigmoid": lambda i, a, ctx: 1.0 / (1.0 + np.exp(-_f32(i["x"]))),
    "relu": lambda i, a, ctx: np.maximum(_f32(i["x"]), 0),
    # MIL rsqrt: 1 / sqrt(x + epsilon), epsilon 1e-12 unless given
    "rsqrt": lambda i, a, ctx: 1.0 / np.sqrt(_f32(i["x"]) + np.float32(i.get("epsilon", 1e-12))),
    "add": _binary(np.add), "sub": _binary(np.subtract), "mul": _binary(np.multiply),
    "real_div": _binary(np.divide), "floor_div": _binary(np.floor_divide), "maximum": _binary(np.maximum),
    "minimum": _binary(np.minimum),
    "reshape": _reshape, "transpose": lambda i, a, ctx: np.transpose(i["x"], [int(p) for p in i["perm"]]),
    "slice_by_index": _slice_by_index, "concat": _concat, "split": _split,
    "squeeze": lambda i, a, ctx: np.squeeze(i["x"], axis=tuple(int(v) for v in i["axes"]) if i.get("axes")
                                            is not None else None),
    "expand_dims": lambda i, a, ctx: np.expand_dims(i["x"], tuple(int(v) for v in i["axes"])),
    "pixel_shuffle": _pixel_shuffle, "pixel_unshuffle": _pixel_unshuffle,
    "upsample_bilinear": _upsample_bilinear,
    "reduce_mean": _reduce_mean,
    "cast": lambda i, a, ctx: np.asarray(i["x"]).astype(_CAST[str(i["dtype"])]),
    "shape": lambda i, a, ctx: np.asarray(np.shape(i["x"]), np.int32),
    "gather": _gather,
    "identity": lambda i, a, ctx: i["x"],
    "tile": lambda i, a, ctx: np.tile(i["x"], [int(r) for r in i["reps"]]),  # MIL tile: x repeated reps times per axis
    "reduce_argmax": _reduce_argmax,
    "constexpr_affine_dequantize": _affine_dequantize, "constexpr_lut_to_dense": _lut_to_dense,
    "quantize": _quantize, "dequantize": _dequantize,
    "classify": _classify,
}


def _transpose_conv_size(x_shape, w_shape, i) -> tuple[int, ...]:
    """Spatial output size of a ``valid`` / ``custom`` conv_transpose, by the MIL spec:
    (D_in - 1) * stride + (K - 1) * dilation + 1 - pad_before - pad_after."""
    rank = len(x_shape) - 2
    strides = [int(v) for v in i.get("strides", [1] * rank)]
    dil = [int(v) for v in i.get("dilations", [1] * rank)]
    pad = [0] * 2 * rank
    if str(i.get("pad_type", "valid")) == "custom":
        pad = [int(v) for v in i.get("pad", pad)]
    return tuple((x_shape[2 + k] - 1) * strides[k] + (w_shape[2 + k] - 1) * dil[k] + 1 - pad[2 * k] - pad[2 * k + 1]
                 for k in range(rank))


def check_supported(op_type: str, inputs: dict, output_shape) -> None:
    """Refuse, before any kernel runs, an op whose inputs ask for something this executor does not compute,
    rather than return a silently different result. Raises UnsupportedOpError naming the op, the attribute
    and its value; ``output_shape`` is the program's declared shape of the op's first output (None if symbolic)."""
    def refuse(what: str, why: str):
        raise UnsupportedOpError(f"{op_type}: {what} is not supported by the reference executor ({why})")

    if op_type in ("conv", "conv_transpose") and np.ndim(inputs["x"]) not in (3, 4):
        refuse(f"x of rank {np.ndim(inputs['x'])}", f"a {np.ndim(inputs['x']) - 2}-D {op_type}; it runs 1-D and 2-D")
    if op_type == "conv_transpose":
        pad_type = str(inputs.get("pad_type", "valid"))
        if pad_type not in ("valid", "custom"):
            refuse(f"pad_type={pad_type!r}", "the MIL spec leaves its output underdetermined; 'valid' and 'custom' run")
        # the output_shape input, else the declared shape: the kernel computes only the size its pads give
        declared = inputs.get("output_shape")
        declared = output_shape if declared is None else [int(v) for v in declared]
        size = _transpose_conv_size(np.shape(inputs["x"]), np.shape(inputs["weight"]), inputs)
        if declared is not None and tuple(declared[2:]) != size:
            refuse(f"output_shape={list(declared)}", f"spatial {list(declared[2:])}, not the {list(size)} its "
                   "strides, dilations and pads give")
    if op_type == "upsample_bilinear" and bool(inputs.get("align_corners", False)) and bool(
            inputs.get("half_pixel_centers", False)):
        refuse("align_corners=True with half_pixel_centers=True", "the two place samples differently")


_ACCUMULATE = {"fp64": np.float64, "fp32": np.float32, "fp16": np.float32}  # mode -> dtype of its sums


class _Step(NamedTuple):
    """One non-const op of the program, as ``CoreMLReference.run`` executes it."""

    type: str
    where: str
    inputs: list  # (key, is_list, [(is_env_name, env name or immediate value)])
    attrs: dict  # constexpr ops only
    output_shape: tuple | None
    outputs: list  # (name, declared numpy dtype or None, declared shape or None)


class _NumpyKernels:
    """The reference kernel set: the ops above, values kept as numpy arrays."""

    ops = OPS

    @staticmethod
    def const(value):
        return value

    feed = const

    @staticmethod
    def store(value, dtype):
        return value.astype(dtype) if dtype is not None and isinstance(value, np.ndarray) else value

    @staticmethod
    def to_numpy(value):
        return value


KERNELS = ("numpy", "torch")


def _kernel_set(kernels: str, accumulate: str):
    """The op table and value handling ``run`` uses: numpy (the reference) or torch."""
    if kernels == "numpy":
        return _NumpyKernels
    if kernels == "torch":
        if accumulate == "fp16":
            raise ValueError('kernels="torch" has no fp16 accumulate mode (it is numpy-only): '
                             'use kernels="numpy" with accumulate="fp16"')
        from .torch_kernels import TorchKernels

        return TorchKernels(accumulate, OPS, _pads)
    raise ValueError(f"kernels must be one of {', '.join(map(repr, KERNELS))}, got {kernels!r}")


class _Context:
    def __init__(self, accumulate: str):
        self.fp16_accumulate = accumulate == "fp16"
        self.sum_dtype = _ACCUMULATE[accumulate]
        self.current_output_shape = None
        self.classifier_probs = None


# ------------------------------------------------------------------------------------------
# The executor
# ------------------------------------------------------------------------------------------
class CoreMLReference:
    """Run a saved ``.mlpackage`` ML program in numpy.

    ``predict`` mirrors ``MLModel.predict``: image inputs take a PIL image (RGB, as an app has it)
    or a float ``[1, 3, H, W]`` array already in the model's channel order and pixel scale
    (0...255, before the program's own scale); tensor inputs take arrays.
    """

    def __init__(self, path: str | Path, accumulate: str = "fp64", kernels: str = "numpy"):
        from .package import BlobFile, PackageError, load_spec

        if accumulate not in _ACCUMULATE:
            raise ValueError(f"accumulate must be one of {', '.join(map(repr, _ACCUMULATE))}, got {accumulate!r}")
        self.kernels = _kernel_set(kernels, accumulate)
        self.path = Path(path)
        manifest = self.path / "Manifest.json"
        if not self.path.is_dir() or not manifest.exists():
            raise CoreMLReferenceError(f"{self.path} is not an .mlpackage (no Manifest.json): export one with "
                                       "`python -m export coreml`")
        try:
            spec = load_spec(self.path)
        except PackageError as e:
            raise CoreMLReferenceError(f"{self.path}: cannot read the model spec ({e})") from e
        if spec.WhichOneof("Type") != "mlProgram":
            raise CoreMLReferenceError(f"{self.path} is a {spec.WhichOneof('Type')} model, not an ML program")
        self.spec = spec
        self.accumulate = accumulate
        main = spec.mlProgram.functions["main"]
        self.block = main.block_specializations[main.opset]
        self.function_inputs = {v.name: v for v in main.inputs}
        weights = self.path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
        self._consts: dict[str, object] = {}
        try:
            self._blobs = BlobFile(weights) if weights.exists() else None
            self._load_consts()
        except (OSError, PackageError) as e:
            raise CoreMLReferenceError(f"{self.path}: cannot read its weights ({e})") from e
        self._kernel_consts = {k: self.kernels.const(v) for k, v in self._consts.items()}
        self._steps = [self._step(index, op) for index, op in enumerate(self.block.operations) if op.type != "const"]

    # -- program structure ------------------------------------------------------------------
    def _attr(self, op, key):
        return _tensor_value(op.attributes[key], self._blobs)

    def _load_consts(self):
        for op in self.block.operations:
            if op.type == "const":
                self._consts[op.outputs[0].name] = self._attr(op, "val")

    def _step(self, index, op) -> _Step:
        """What ``run`` needs of one op, read out of the spec once: its inputs (env names, or immediate
        values already in the kernel set's form), constexpr attributes, declared output shape and dtypes."""
        inputs = []
        for key, arg in op.inputs.items():
            refs = [(True, b.name) if b.WhichOneof("binding") == "name"
                    else (False, self.kernels.const(_tensor_value(b.value, self._blobs))) for b in arg.arguments]
            inputs.append((key, key == "values", refs))
        attrs = {k: self._attr(op, k) for k in op.attributes if k != "name"} if op.type.startswith("constexpr") else {}
        first = op.outputs[0].type
        shape = _shape(first.tensorType) if first.HasField("tensorType") else None
        outputs = [(out.name, _DTYPES.get(out.type.tensorType.dataType), _shape(out.type.tensorType))
                   if out.type.HasField("tensorType") else (out.name, None, None) for out in op.outputs]
        return _Step(op.type, f"op #{index} (output {op.outputs[0].name!r})", inputs, attrs, shape, outputs)

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.spec.description.input]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.spec.description.output]

    def op_types(self) -> dict[str, int]:
        from collections import Counter

        return dict(Counter(op.type for op in self.block.operations))

    # -- inputs -------------------------------------------------------------------------------
    def _feed(self, inputs: dict) -> dict[str, np.ndarray]:
        env = {}
        for desc in self.spec.description.input:
            if desc.name not in inputs:
                raise KeyError(f"missing input {desc.name!r}; the model takes {self.input_names}")
            value = inputs[desc.name]
            if desc.type.HasField("imageType"):
                if not isinstance(value, np.ndarray):  # a PIL image, RGB as apps hold them
                    arr = np.asarray(value.convert("RGB"), np.float32)  # [H, W, 3] RGB
                    if desc.type.imageType.colorSpace == 30:  # BGR model: Core ML feeds B, G, R
                        arr = arr[..., ::-1]
                    value = np.ascontiguousarray(arr.transpose(2, 0, 1))[None]  # -> [1, 3, H, W]
            env[desc.name] = np.asarray(value, np.float32)
        return env

    # -- execution ------------------------------------------------------------------------------
    def run(self, inputs: dict, keep: bool = False) -> dict[str, object]:
        """Execute ``main``; returns the block outputs (or every intermediate value if ``keep``)."""
        ctx = _Context(self.accumulate)
        kernels = self.kernels
        env: dict[str, object] = dict(self._kernel_consts)
        env.update({k: kernels.feed(v) for k, v in self._feed(inputs).items()})
        for step in self._steps:
            fn = kernels.ops.get(step.type)
            if fn is None:
                raise UnsupportedOpError(f"unsupported MIL op {step.type!r} at {step.where} in {self.path}")
            args = {}
            for key, is_list, refs in step.inputs:
                vals = [env[v] if is_name else v for is_name, v in refs]
                args[key] = vals if is_list else vals[0]
            ctx.current_output_shape = step.output_shape
            try:
                check_supported(step.type, args, step.output_shape)
            except UnsupportedOpError as e:
                raise UnsupportedOpError(f"{e} (at {step.where} in {self.path})") from None
            try:
                result = fn(args, step.attrs, ctx)
            except CoreMLReferenceError:
                raise
            except (KeyError, ValueError, IndexError, TypeError, RuntimeError) as e:  # RuntimeError: torch's
                raise CoreMLReferenceError(f"{step.type} at {step.where} failed: {type(e).__name__}: {e}") from e
            results = result if isinstance(result, tuple) else (result,)
            for (name, dtype, declared), value in zip(step.outputs, results):
                # a kernel that misreads an attribute mostly shows here
                if declared is not None and hasattr(value, "shape") and tuple(value.shape) != declared:
                    raise CoreMLReferenceError(f"{step.type} at {step.where} computed shape {tuple(value.shape)}; "
                                               f"the program declares {declared}")
                env[name] = kernels.store(value, dtype)  # storage in the declared dtype (fp16 stays fp16)
        self._last_probs = ctx.classifier_probs
        if keep:
            return {k: self._consts[k] if k in self._consts else kernels.to_numpy(v) for k, v in env.items()}
        return {name: kernels.to_numpy(env[name]) for name in self.block.outputs}

    def predict(self, inputs: dict) -> dict[str, object]:
        """Outputs by their model-description names, like ``MLModel.predict``."""
        out = self.run(inputs)
        return {desc.name: out[desc.name] for desc in self.spec.description.output if desc.name in out}

    def scores(self, inputs: dict) -> np.ndarray:
        """The first output as float32: ``[1, K]`` logits, or probabilities for a classifier; a segmentation
        output keeps its shape (``[1, K, h, w]`` logits, ``[1, H, W]`` class map)."""
        out = self.run(inputs)
        if self._last_probs is not None:
            return self._last_probs.astype(np.float32).reshape(1, -1)
        y = np.asarray(out[self.block.outputs[0]], np.float32)
        return y if y.ndim > 2 else y.reshape(1, -1)


class CoreMLReferenceRunner:
    """Runner interface (see ``export.runners``) over :class:`CoreMLReference`.

    Takes the same float32 ``[B, 3, H, W]`` batch as PyTorch (model channel order, pixels / 255);
    for an image-input program it feeds ``x * 255`` (exact for inputs made from uint8 photos).
    Runs on the torch kernel set unless ``kernels="numpy"`` (the pessimistic ``accumulate="fp16"``
    mode is numpy-only); both give the same values (``tests/test_coreml_reference.py``). The torch
    kernels run at ``threads`` (torch's thread count is set for each call, as for the PyTorch runner).
    """

    runtime = "coreml-reference"
    timeable = False  # a re-implementation of Core ML: its speed says nothing about a device

    def __init__(self, path, threads: int | None = None, accumulate: str = "fp64", kernels: str = "torch"):
        from ...runners import default_threads

        self.path = Path(path)
        self.threads = default_threads() if threads is None else threads
        self.model = CoreMLReference(path, accumulate=accumulate, kernels=kernels)
        self.kernels = kernels
        desc = self.model.spec.description.input[0]
        self.input_name = desc.name
        self.is_image = desc.type.HasField("imageType")

    @property
    def version(self) -> str:
        if self.kernels == "torch":
            import torch

            return f"torch {torch.__version__} kernels ({self.model.accumulate} accumulate)"
        return f"numpy {np.__version__} ({self.model.accumulate} accumulate)"

    @property
    def settings(self) -> dict:
        return {"threads": self.threads if self.kernels == "torch" else "numpy's", "accumulate": self.model.accumulate,
                "kernels": self.kernels}

    def prepare(self, x: np.ndarray):
        x = x.astype(np.float32)
        return {self.input_name: np.round(x * 255.0) if self.is_image else x}

    def run(self, feed) -> np.ndarray:
        if self.kernels == "torch":
            import torch

            if torch.get_num_threads() != self.threads:
                torch.set_num_threads(self.threads)
        return self.model.scores(feed)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([self.run(self.prepare(x[k:k + 1])) for k in range(x.shape[0])])
