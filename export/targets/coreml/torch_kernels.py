"""The Core ML reference executor's torch kernel set: the numpy ops of ``reference.py`` on torch's kernels.

``CoreMLReference(path, kernels="torch")`` walks the same program with these ops. Values stay torch
tensors between ops (no copies), stored after every op in the dtype the program declares, as the
numpy path stores them. What keeps the two paths equal:

* Sums (conv, matmul, linear, softmax, layer_norm, reduce_mean) are taken in the mode's dtype
  (float64 for ``accumulate="fp64"``), so each rounds to the stored dtype as the numpy sum does;
  only the summation order differs, far below one ulp of the storage.
* A float64 result is rounded to fp16 storage *directly*, as numpy's ``astype`` does; torch's own
  ``double -> half`` goes through float32 and rounds twice (``_round_to_half``).
* Element-wise float ops run in float32 with IEEE-exact arithmetic (+, -, *, /, sqrt are correctly
  rounded in both libraries); ``exp`` (silu, sigmoid, softmax) is numpy's own, called on the tensor's
  memory, since torch's vectorised exp differs from numpy's in the last ulp.
* Ops with no torch kernel here run the numpy op itself on the tensors' memory (``_numpy_op``), so
  both kernel sets implement exactly the same ops.

``accumulate="fp32"`` takes float32 sums in torch's own order (the numpy path's follow its BLAS);
the pessimistic ``"fp16"`` mode exists in numpy only.

Speed (xx_small, 256x256, one thread, CPU time on a loaded 2-core AVX-512 VM): fp16 program 149 ms
against numpy's 206 ms, fp32 program 113 against 113; with float32 sums 67 ms. The float64 sums set
the floor: PyTorch's own float64 forward of the model took 70 ms there, its float32 one 26 ms.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_TORCH_DTYPES = {np.dtype(k): v for k, v in {
    np.float16: torch.float16, np.float32: torch.float32, np.float64: torch.float64, np.int8: torch.int8,
    np.int16: torch.int16, np.int32: torch.int32, np.int64: torch.int64, np.uint8: torch.uint8,
    np.bool_: torch.bool}.items()}
_INT_RANGE = {"int8": (-128, 127, torch.int8), "uint8": (0, 255, torch.uint8)}


def _round_to_odd_half(x: torch.Tensor) -> torch.Tensor:
    """float64 -> float16 rounded once: float64 -> float32 rounded *to odd* (truncate, then set the last
    bit if inexact) keeps what decides the fp16 rounding, float32 having 13 more bits than fp16."""
    f = x.to(torch.float32)
    back = f.to(torch.float64)
    bits = f.view(torch.int32)
    away = (back.abs() > x.abs()).to(torch.int32)  # rounded away from zero: step back one ulp
    odd = torch.where(back != x, (bits - away) | 1, bits)
    return odd.view(torch.float32).to(torch.float16)


def _round_to_half(x: torch.Tensor) -> torch.Tensor:
    """float64 -> float16 rounded once (to nearest, ties to even), as numpy's ``astype``. Torch rounds
    through float32, which differs only where the float32 value is an fp16 tie (its last 13 bits
    1000000000000) or an fp16 subnormal (below 2**-14): those few are rounded to odd first. The
    bit tests run in numpy, measured 4x faster than torch's at one thread."""
    f = x.to(torch.float32).contiguous()
    h = f.to(torch.float16)
    bits = f.numpy().reshape(-1).view(np.int32)
    suspects = np.flatnonzero(((bits & 0x1FFF) == 0x1000) | ((bits & 0x7FFFFFFF) < 0x38800000))
    if suspects.size:
        index = torch.from_numpy(suspects)
        h.view(-1)[index] = _round_to_odd_half(x.reshape(-1)[index])
    return h


def _f32(t):
    return t.to(torch.float32) if t.is_floating_point() else t


def _ints(v) -> list[int]:
    return [int(k) for k in v]


def _contiguous(a: np.ndarray) -> np.ndarray:
    """``a`` as C-contiguous memory torch can share: a copy where it is not, or where any stride is negative (numpy
    calls a reversed view over size-1 dims contiguous; torch refuses it). Keeps 0-d arrays 0-d, which
    ``np.ascontiguousarray`` does not (it makes them shape (1,))."""
    a = np.asarray(a)
    return a if a.flags.c_contiguous and not any(s < 0 for s in a.strides) else a.copy()


def _to_numpy(value):
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, list):
        return [_to_numpy(v) for v in value]
    return value


def _numpy_op(fn):
    """A numpy op of ``reference.py`` on tensors: run on their memory, result back as a tensor."""
    def run(i, a, ctx):
        result = fn({k: _to_numpy(v) for k, v in i.items()}, a, ctx)
        return tuple(_from_numpy(r) for r in result) if isinstance(result, tuple) else _from_numpy(result)
    return run


def _from_numpy(value):
    if isinstance(value, np.generic):  # a numpy scalar (np.take with a 0-d index): a 0-d tensor
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        return value
    return torch.from_numpy(_contiguous(value))


def _numpy_f32_op(fn):
    """A numpy element-wise op (its ``exp`` is the reference's) on float32 tensors, fp16 widened by torch."""
    def run(i, a, ctx):
        return torch.from_numpy(np.asarray(fn({"x": _f32(i["x"]).numpy()}, a, ctx)))
    return run


class TorchKernels:
    """The torch kernel set for ``CoreMLReference``: ops, and how values are held and stored."""

    def __init__(self, accumulate: str, numpy_ops: dict, pads):
        """``numpy_ops``: the reference's op table (``reference.OPS``), run where torch has no kernel here;
        ``pads``: its MIL padding rule (``reference._pads``)."""
        self.pads = pads
        self.sum_dtype = torch.float64 if accumulate == "fp64" else torch.float32
        self._const_ids: set[int] = set()  # consts live as long as the executor: their widened copies are cached
        self._consts: list[torch.Tensor] = []
        self._wide: dict[int, torch.Tensor] = {}
        ops = {name: _numpy_op(fn) for name, fn in numpy_ops.items()}
        fallback = {name: ops[name] for name in ("add", "sub", "mul", "real_div", "maximum", "minimum",
                                                 "slice_by_index", "concat")}
        ops.update({
            "conv": self._conv, "linear": self._linear, "matmul": self._matmul, "softmax": self._softmax,
            "layer_norm": self._layer_norm, "reduce_mean": self._reduce_mean,
            "silu": _numpy_f32_op(numpy_ops["silu"]), "sigmoid": _numpy_f32_op(numpy_ops["sigmoid"]),
            "relu": lambda i, a, ctx: torch.clamp_min(_f32(i["x"]), 0),
            "rsqrt": lambda i, a, ctx: 1.0 / torch.sqrt(_f32(i["x"]) + np.float32(i.get("epsilon", 1e-12))),
            **{name: _binary(fn, fallback[name]) for name, fn in (
                ("add", torch.add), ("sub", torch.sub), ("mul", torch.mul), ("real_div", torch.div),
                ("maximum", torch.maximum), ("minimum", torch.minimum))},
            "reshape": _reshape, "transpose": lambda i, a, ctx: i["x"].permute(_ints(i["perm"])),
            "slice_by_index": lambda i, a, ctx: _slice_by_index(i, fallback["slice_by_index"]),
            "concat": lambda i, a, ctx: _concat(i, fallback["concat"]), "split": _split,
            "squeeze": _squeeze, "expand_dims": _expand_dims,
            "pixel_shuffle": lambda i, a, ctx: F.pixel_shuffle(i["x"], int(i["upscale_factor"])),
            "pixel_unshuffle": lambda i, a, ctx: F.pixel_unshuffle(i["x"], int(i["downscale_factor"])),
            "identity": lambda i, a, ctx: i["x"],
            "quantize": _quantize, "dequantize": _dequantize,
        })
        # attribute cases the torch kernels above do not take run the numpy reference op itself
        for name, numpy_case in _NUMPY_CASES.items():
            ops[name] = _unless(numpy_case, ops[name], _numpy_op(numpy_ops[name]))
        self.ops = ops

    # -- values ---------------------------------------------------------------------------------
    def const(self, value):
        """A const or immediate value as the ops take it: arrays as tensors (kept: see ``_const_ids``)."""
        if isinstance(value, list):
            return [self.const(v) for v in value]
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiub":
            return value
        t = torch.from_numpy(_contiguous(value))
        self._const_ids.add(id(t))
        self._consts.append(t)
        return t

    @staticmethod
    def feed(value: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(_contiguous(value))

    @staticmethod
    def store(value, dtype):
        """``value`` in the declared dtype, rounded once, as numpy's ``astype``."""
        if dtype is None:
            return value
        if isinstance(value, np.ndarray):
            return torch.from_numpy(_contiguous(value.astype(dtype)))
        if not isinstance(value, torch.Tensor):
            return value
        want = _TORCH_DTYPES[np.dtype(dtype)]
        if value.dtype == want:
            return value
        if want == torch.float16 and value.dtype == torch.float64:
            return _round_to_half(value)
        return value.to(want)

    @staticmethod
    def to_numpy(value):
        return value.numpy() if isinstance(value, torch.Tensor) else value

    def wide(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` in the sum dtype; a const's copy is made once."""
        if id(t) not in self._const_ids:
            return t if t.dtype == self.sum_dtype else torch.empty(t.shape, dtype=self.sum_dtype).copy_(t)
        w = self._wide.get(id(t))
        if w is None:
            w = self._wide[id(t)] = t.to(self.sum_dtype)
        return w

    # -- ops with sums: float64 (or float32) as the numpy ops ------------------------------------
    def _conv(self, i, a, ctx):
        x, w = self.wide(i["x"]), self.wide(i["weight"])
        strides = tuple(_ints(i.get("strides", (1, 1))))
        dil = tuple(_ints(i.get("dilations", (1, 1))))
        groups = int(i.get("groups", 1))
        t, b, l, r = self.pads(str(i.get("pad_type", "valid")), i.get("pad", (0, 0, 0, 0)), x.shape[2:], w.shape[2:],
                               strides, dil)
        if t or b or l or r:
            x = F.pad(x, (l, r, t, b))
        o, cg, kh, kw = w.shape
        if cg == 1 and o == groups and x.shape[1] == groups:
            y = _depthwise(x, w, strides, dil)
        elif kh == kw == 1 and groups == 1 and strides == (1, 1):
            n, c, h, wd = x.shape
            y = torch.matmul(w.reshape(o, c), x.reshape(n, c, h * wd)).reshape(n, o, h, wd)  # 1x1: [O, C] @ [N, C, HW]
        else:
            y = F.conv2d(x, w, None, strides, 0, dil, groups)
        if i.get("bias") is not None:
            y += self.wide(i["bias"]).reshape(1, -1, 1, 1)
        return y

    def _matmul(self, i, a, ctx):
        x, y = self.wide(i["x"]), self.wide(i["y"])
        if bool(i.get("transpose_x", False)):
            x = x.transpose(-1, -2)
        if bool(i.get("transpose_y", False)):
            y = y.transpose(-1, -2)
        if x.shape[-1] != y.shape[-2 if y.ndim > 1 else -1]:
            raise ValueError(f"matmul: operand shapes {tuple(x.shape)} and {tuple(y.shape)} have a mismatch in "
                             "its core dimension")
        return torch.matmul(x, y)

    def _linear(self, i, a, ctx):
        y = torch.matmul(self.wide(i["x"]), self.wide(i["weight"]).T)  # weight: [out, in]
        return y + self.wide(i["bias"]) if i.get("bias") is not None else y

    def _softmax(self, i, a, ctx):
        x = _f32(i["x"])
        axis = int(i.get("axis", -1))
        e = torch.from_numpy(np.exp((x - x.amax(axis, keepdim=True)).numpy()))  # numpy's exp, as the reference
        return e.to(self.sum_dtype) / e.sum(axis, keepdim=True, dtype=self.sum_dtype)

    def _layer_norm(self, i, a, ctx):
        x = i["x"].to(self.sum_dtype)  # (x - mean) is taken in the sum dtype, as numpy promotes it
        axes = _ints(i["axes"])
        mean = x.mean(axes, keepdim=True)
        y = (x - mean) / torch.sqrt(((x - mean) ** 2).mean(axes, keepdim=True) + float(i.get("epsilon", 1e-5)))
        if i.get("gamma") is not None:
            y = y * self.wide(i["gamma"])
        if i.get("beta") is not None:
            y = y + self.wide(i["beta"])
        return y

    def _reduce_mean(self, i, a, ctx):
        return i["x"].to(self.sum_dtype).mean(_ints(i["axes"]), keepdim=bool(i.get("keep_dims", False)))


def _trailing(axes, ndim: int) -> bool:
    return sorted(a % ndim for a in axes) == list(range(ndim - len(axes), ndim))


_NUMPY_CASES = {  # op -> the inputs for which the numpy op runs instead (see the numpy op for why)
    "conv": lambda i: i["x"].ndim != 4,  # 1-D conv
    "layer_norm": lambda i: not _trailing(_ints(i["axes"]), i["x"].ndim),  # gamma / beta on other axes
    "reduce_mean": lambda i: i.get("axes") is None,  # every axis
    "reshape": lambda i: 0 in _ints(i["shape"]),  # 0 copies a dim (counted from the right on iOS17)
}


def _unless(numpy_case, fast, reference):
    def run(i, a, ctx):
        return reference(i, a, ctx) if numpy_case(i) else fast(i, a, ctx)
    return run


def _depthwise(x, w, strides, dil):
    """Depthwise conv as the sum of its kh * kw shifted, strided views times their tap (torch's own
    float64 depthwise kernel is several times slower). x: [N, C, H, W] padded, w: [C, 1, kh, kw]."""
    _, _, kh, kw = w.shape
    ho = (x.shape[2] - (kh - 1) * dil[0] - 1) // strides[0] + 1
    wo = (x.shape[3] - (kw - 1) * dil[1] - 1) // strides[1] + 1
    y = None
    for p in range(kh):
        for q in range(kw):
            view = x[:, :, p * dil[0]:p * dil[0] + (ho - 1) * strides[0] + 1:strides[0],
                     q * dil[1]:q * dil[1] + (wo - 1) * strides[1] + 1:strides[1]]  # [N, C, ho, wo]
            tap = w[:, 0, p, q].reshape(1, -1, 1, 1)
            y = view * tap if y is None else y.addcmul_(view, tap)
    return y


# -- element-wise and data movement: exact in any library -------------------------------------------
def _binary(fn, fallback):
    def run(i, a, ctx):
        x, y = i["x"], i["y"]
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.is_floating_point() \
                and y.is_floating_point():
            return fn(_f32(x), _f32(y))
        return fallback(i, a, ctx)  # ints or mixed: numpy's promotion rules
    return run


def _reshape(i, a, ctx):
    x, shape = i["x"], _ints(i["shape"])
    return x.reshape([x.shape[k] if v == 0 else v for k, v in enumerate(shape)])  # 0 copies the input dim


def _slice_by_index(i, numpy_slice):
    x = i["x"]
    nd = x.ndim
    stride = _ints(i.get("stride", [1] * nd))
    if any(s < 0 for s in stride):  # torch slices step forward only
        return numpy_slice(i, {}, None)
    begin, end = _ints(i["begin"]), _ints(i["end"])
    bmask = [bool(v) for v in i.get("begin_mask", [False] * nd)]
    emask = [bool(v) for v in i.get("end_mask", [False] * nd)]
    smask = [bool(v) for v in i.get("squeeze_mask", [False] * nd)]
    idx = tuple(begin[d] if smask[d] else slice(None if bmask[d] else begin[d], None if emask[d] else end[d], stride[d])
                for d in range(nd))
    return x[idx]


def _concat(i, numpy_concat):
    if bool(i.get("interleave", False)):
        return numpy_concat(i, {}, None)
    return torch.cat([torch.atleast_1d(v) for v in i["values"]], dim=int(i["axis"]))


def _split(i, a, ctx):
    x, axis = i["x"], int(i["axis"])
    if i.get("split_sizes") is not None:  # cut at the same bounds as the numpy op (the last part takes the rest)
        return tuple(torch.tensor_split(x, np.cumsum(_ints(i["split_sizes"]))[:-1].tolist(), dim=axis))
    n = int(i["num_splits"])
    if x.shape[axis] % n:
        raise ValueError(f"split: {x.shape[axis]} does not divide into {n} equal parts")
    return tuple(torch.split(x, x.shape[axis] // n, dim=axis))


def _squeeze(i, a, ctx):
    x = i["x"]
    if i.get("axes") is None:
        return x.squeeze()
    return x.squeeze(tuple(_ints(i["axes"])))


def _expand_dims(i, a, ctx):
    x = i["x"]
    nd = x.ndim + len(i["axes"])
    axes = sorted(v % nd for v in _ints(i["axes"]))
    shape = list(x.shape)
    for ax in axes:  # positions in the output, as numpy's expand_dims
        shape.insert(ax, 1)
    return x.reshape(shape)


def _per_axis(param, ndim, axis):
    """A scale / zero point (float32) against a rank-``ndim`` tensor: a scalar as is, a vector along ``axis``."""
    param = torch.as_tensor(param).to(torch.float32)
    if param.ndim == 0 or axis is None:
        return param
    shape = [1] * ndim
    shape[int(axis) % ndim] = -1
    return param.reshape(shape)


def _quantize(i, a, ctx):
    """As ``reference._quantize``: float32 division, ``torch.round`` is half-to-even as ``np.rint``."""
    x = _f32(i["input"])
    dtype = str(i["output_dtype"])
    if dtype not in _INT_RANGE:
        raise ValueError(f"quantize to {dtype!r}: only int8 and uint8 exist")
    axis = i.get("axis")
    q = torch.round(x / _per_axis(i["scale"], x.ndim, axis))
    if i.get("zero_point") is not None:
        q = q + _per_axis(i["zero_point"], x.ndim, axis)
    lo, hi, tdtype = _INT_RANGE[dtype]
    return torch.clamp(q, lo, hi).to(tdtype)


def _dequantize(i, a, ctx):
    q = i["input"].to(torch.float32)
    axis = i.get("axis")
    if i.get("zero_point") is not None:
        q = q - _per_axis(i["zero_point"], q.ndim, axis)
    return q * _per_axis(i["scale"], q.ndim, axis)
