"""Drift localisation: find the first stage (or block) where an artifact's drift from PyTorch appears.

Two ways, both comparing intermediate feature maps with PyTorch's on the same photos:

* **TFLite: inside the artifact that was measured.** The ``.tflite`` file is run once more with
  every intermediate tensor preserved (LiteRT's built-in kernels, XNNPACK off, since a delegate
  does not materialise its intermediates). onnx2tf's tensor names do not name our modules, so
  each checkpoint is found by shape in execution order: a stage's output is the last tensor of
  that stage's NHWC shape; inside a MobileViT stage, the strided inverted residual's output is the
  first one, and the transformer's output (after its LayerNorm, ``[P, N, d]`` tokens) the last
  token-shaped tensor before the block output. int8 tensors are dequantised with their own scale.
  A fp32 artifact then matches PyTorch at every checkpoint to ~1e-6, which is how the matching
  is tested (``tests/test_benchmarks_tflite.py``).
* **ONNX and Core ML: truncated models.** The same conversion is repeated on models cut after
  stage ``k`` (``features_only=True, out_indices=(k,)``, sharing the weights) and each output is
  compared. These convert in seconds.

At every checkpoint the row's tolerance applies, without its top-1 limit (an arg-max of a feature
map means nothing): the first checkpoint that breaks it is where to look.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export.config import Tolerance
from export.validate import drift, failures
from mobilevit import MobileViT
from mobilevit.model import MobileViTBlock


def _feature_tolerance(tol: Tolerance) -> Tolerance:
    """The row's tolerance for a feature map: max-abs (relative) and cosine; no top-1."""
    return Tolerance(tol.max_abs_rel, tol.cosine_min, 0.0)


def _stride(stage: int) -> int:
    return 2 ** (stage + 1)


def _check(label: str, stage: int, ref: np.ndarray, out: np.ndarray, tol: Tolerance) -> dict:
    d = drift(ref.reshape(len(ref), -1), out.reshape(len(out), -1))
    bad = failures(d, _feature_tolerance(tol), label)
    return {"point": label, "stage": stage, "cosine_min": d.cosine_min, "max_abs_rel": d.max_abs_rel,
            "ok": not bad}


def _verdict(points: list[dict], method: str, **extra) -> dict:
    first = next((p for p in points if not p["ok"]), None)
    if first is None:
        message = ("every stage is within tolerance: the drift appears in the head "
                   "(1x1 conv, pool, linear)")
    else:
        message = f"drift appears at {first['point']} (stride {_stride(first['stage'])})"
    return {"method": method, "first_bad_stage": None if first is None else first["stage"],
            "first_bad_point": None if first is None else first["point"], "points": points,
            "message": message, **extra}


# ------------------------------------------------------------------------ truncated models (ONNX, Core ML)
class _Flat(torch.nn.Module):
    """Stage ``k`` output, flattened to ``[B, C*H*W]`` so the usual drift metrics apply."""

    def __init__(self, model: MobileViT, k: int):
        super().__init__()
        self.body = MobileViT(model.cfg, patches=model.patches, features_only=True, out_indices=(k,)).eval()
        self.body.load_state_dict({n: t for n, t in model.state_dict().items()
                                   if n.startswith(("stem", "stages"))})
        self.body.set_attention(model.attention_layout)

    def forward(self, x):
        return self.body(x)[0].flatten(1)


def _convert_and_run(target: str, precision: str, module: torch.nn.Module, x: np.ndarray, calib: np.ndarray,
                     work: Path) -> np.ndarray:
    """The truncated model through the one conversion path, run in the target's runtime."""
    from export import convert, make_runner, target_config

    path = convert(module, target, precision, work, size=x.shape[-1], calibration=calib,
                   **target_config(target).logits_options)
    return make_runner(path, threads=2)(x)


def localize(model: MobileViT, target: str, precision: str, tol: Tolerance, x: np.ndarray,
             calib: np.ndarray) -> dict:
    """Convert truncated copies of ``model`` stage by stage; stop at the first that breaks ``tol``.

    ``model`` must carry the patch strategy and attention layout the artifact was exported with.
    """
    points = []
    for k in range(len(model.cfg.stages)):
        module = _Flat(model, k)
        with torch.no_grad():
            ref = module(torch.from_numpy(x)).numpy()
        with tempfile.TemporaryDirectory() as tmp:
            out = _convert_and_run(target, precision, module, x, calib, Path(tmp))
        points.append(_check(f"stage {k} output", k, ref, out, tol))
        if not points[-1]["ok"]:
            break
    return _verdict(points, f"truncated {target} {precision} models, one per stage")


# ------------------------------------------------------------------------ TFLite: intermediate tensors
@dataclass
class _Point:
    """A checkpoint in the network: where PyTorch's value comes from and how to find it in TFLite."""

    label: str
    stage: int
    role: str  # "residual" (the strided inverted residual), "tokens" (transformer + LayerNorm), "output"
    shape: tuple[int, ...] = ()  # the TFLite tensor shape for one image
    ref: list | None = None  # per-image PyTorch values, in TFLite's layout


def _reference_points(model: MobileViT, x: np.ndarray) -> list[_Point]:
    """PyTorch values at every checkpoint for each image of ``x`` (batch 1 each), in NHWC / token layout."""
    points, hooks = [], []
    for k, stage in enumerate(model.stages):
        vit = next((m for m in stage if isinstance(m, MobileViTBlock)), None)
        if vit is not None:
            points.append((_Point(f"stage {k} inverted residual", k, "residual"), stage[0]))
            points.append((_Point(f"stage {k} transformer (tokens after LayerNorm)", k, "tokens"), vit.norm))
        points.append((_Point(f"stage {k} output", k, "output"), stage))
    for p, module in points:
        p.ref = []

        def hook(_m, _inp, out, p=p):
            y = out.detach().numpy()
            p.ref.append(y.transpose(0, 2, 3, 1) if y.ndim == 4 else y)  # [1, C, H, W] -> [1, H, W, C]
        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for i in range(len(x)):
                model(torch.from_numpy(x[i:i + 1]))
    finally:
        for h in hooks:
            h.remove()
    for p, _ in points:
        p.shape = tuple(p.ref[0].shape)
    return [p for p, _ in points]


def match_points(points: list[_Point], ops: list[dict],
                 shapes: dict[int, tuple[int, ...]]) -> list[int | None]:
    """For each checkpoint, its tensor among ``ops`` (LiteRT op details in execution order), or None.

    A stage's output is the last tensor of its shape in the whole graph (later stages are smaller,
    the head is wider). Between the previous stage's output and this one: the tokens are the last
    tensor of their shape, and the inverted residual's output is the first input of the last
    concatenation of twice the stage's channels (the MobileViT block's ``cat((shortcut, y))``;
    its own shape is shared by half a dozen tensors in the stage, so shape alone cannot tell).
    """
    flat = [(n, t) for n, op in enumerate(ops) for t in op["outputs"] if t >= 0]  # (op position, tensor)
    found: list[int | None] = [None] * len(points)
    after = -1  # op position of the previous stage's output
    for stage in sorted({p.stage for p in points}):
        idx = {points[i].role: i for i in range(len(points)) if points[i].stage == stage}
        out_shape = points[idx["output"]].shape
        ends = [(n, t) for n, t in flat if shapes[t] == out_shape and n > after]
        if not ends:
            continue
        end, found[idx["output"]] = ends[-1]
        if "tokens" in idx:
            hits = [t for n, t in flat if after < n < end and shapes[t] == points[idx["tokens"]].shape]
            found[idx["tokens"]] = hits[-1] if hits else None
        if "residual" in idx:
            cat_shape = out_shape[:-1] + (2 * out_shape[-1],)
            cats = [op for op in ops[after + 1:end] if op["op_name"] == "CONCATENATION"
                    and [shapes[t] for t in op["outputs"]] == [cat_shape]]
            found[idx["residual"]] = cats[-1]["inputs"][0] if cats else None
        after = end
    return found


def localize_in_artifact(model: MobileViT, runner, tol: Tolerance, x: np.ndarray) -> dict:
    """Every checkpoint's drift inside the measured artifact itself; the first over ``tol`` is named.

    ``runner`` is the target's intermediates runner (its entry's ``intermediates`` hook: ``op_details()``,
    ``tensor_details()``, ``tensor_value(index)``, NHWC feature maps). ``model`` must carry the patch strategy
    and attention layout the artifact was exported with. Also reports the logits' drift under the runner's
    built-in kernels, to tell delegate-only drift apart.
    """
    points = _reference_points(model, x)
    details = runner.tensor_details()
    shapes = {t: d["shape"] for t, d in details.items()}
    tensors = match_points(points, runner.op_details(), shapes)
    values: list[list[np.ndarray]] = [[] for _ in points]
    logits = []
    for i in range(len(x)):
        logits.append(runner(x[i:i + 1]))
        for j, t in enumerate(tensors):
            if t is not None:
                values[j].append(runner.tensor_value(t))
    checked, missing = [], []
    for p, t, vals in zip(points, tensors, values):
        if t is None:
            missing.append(p.label)
            continue
        checked.append({**_check(p.label, p.stage, np.concatenate(p.ref), np.concatenate(vals), tol),
                        "tensor": details[t]["name"]})
    with torch.no_grad():
        ref_logits = model(torch.from_numpy(x)).numpy()
    builtin = drift(ref_logits, np.concatenate(logits))
    return _verdict(checked, f"intermediate tensors of the artifact ({runner.runtime} built-in kernels, no delegate)",
                    unmatched=missing, builtin_kernels_logits={"cosine_min": builtin.cosine_min,
                                                              "max_abs_rel": builtin.max_abs_rel,
                                                              "top1_agreement": builtin.top1_agreement})
