"""Core ML programs before publishing: the options, the float ML program of a model, its layers matched to MIL
ops, and int8 (weight compression, and w8a8: int8 activations and weights, calibrated by the reference executor).

Int8 recipes name the layers they keep in float by *kind* (``mobilevit.layers``): :func:`kind_ops`
maps each kind to the MIL ops of the converted program, in execution order, checked against the
PyTorch modules' weight shapes; :func:`layer_ops` maps layers by name (a searched set, ``search.py``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mobilevit.config import Preprocessing
from mobilevit.layers import Layer

from ...errors import ExportConfigError
from ...int8 import Int8Options, LayerOp, match_layers, ops_by_kind

IMAGE_INPUT = "image"
TENSOR_INPUT = "input"
LOGITS_OUTPUT = "logits"
PROBS_OUTPUT = "classLabel_probs"
LABEL_OUTPUT = "classLabel"
PREVIEW_TYPE = "com.apple.coreml.model.preview.type"  # user metadata key Xcode reads for its Preview tab
PREVIEW_PARAMS = "com.apple.coreml.model.preview.params"  # its parameters (JSON): a segmenter's class labels
CONVERSION_DATE = "com.github.apple.coremltools.conversion_date"  # user metadata key coremltools sets to the day
CLASSMAP_OUTPUT = "classmap"


# Which layers w8a8 keeps in float is the recipe in export.config.INT8_RECIPES (the sensitivity analysis,
# benchmarks.quant, chose it); weight-only int8 quantizes every layer unless float_kinds says otherwise.
W8A8_TARGET = "iOS17"  # quantize / dequantize are iOS 17 ops

INPUT_KINDS = ("image", "tensor")
# classmap: a segmentation model's [1, H, W] int32 class per pixel (export.tasks.ClassMap computes it)
OUTPUT_KINDS = ("classifier", "logits", "classmap")


@dataclass(frozen=True)
class CoreMLOptions(Int8Options):
    """Core ML-only choices (keyword arguments of ``export.convert(model, "coreml", ...)``); ``float_kinds``
    (the layer kinds int8 / w8a8 keep in float; None = the precision's recipe): see ``export.int8.Int8Options``."""

    target = "coreml"
    weight_only = ("int8",)  # weight-only int8 has no recipe: every layer int8 unless float_kinds says otherwise
    input_kind: str = "image"  # image (what an app passes) | tensor
    output_kind: str = "classifier"  # classifier (softmax + class names) | logits
    labels: tuple[str, ...] | None = None  # classifier names; default: the model's (ImageNet for 1000 classes)
    metadata: dict[str, str] = field(default_factory=dict)  # user-defined metadata fields
    preprocessing: Preprocessing = Preprocessing()  # channel order and scale of the image input

    def __post_init__(self):
        super().__post_init__()
        if self.int8_budget is not None:  # an objective the runtime here cannot measure: refused before any work
            from ...int8search import resolve_objective
            from .runner import runner_class

            resolve_objective(self.int8_objective, runner_class())
        if self.input_kind not in INPUT_KINDS:
            raise ExportConfigError(f"unknown input kind {self.input_kind!r}; choose one of: {', '.join(INPUT_KINDS)}")
        if self.output_kind not in OUTPUT_KINDS:
            raise ExportConfigError(
                f"unknown output kind {self.output_kind!r}; choose one of: {', '.join(OUTPUT_KINDS)}")

    @property
    def outputs_probabilities(self) -> bool:
        """A classifier returns softmax probabilities (validation compares them with PyTorch's softmax)."""
        return self.output_kind == "classifier"



class _Probabilities(torch.nn.Module):
    """Classifier head for Core ML: ``classify`` expects probabilities, so add the softmax."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).softmax(dim=-1)


def _input_shape(sizes: tuple[int, ...]):
    import coremltools as ct

    if len(sizes) == 1:
        return (1, 3, sizes[0], sizes[0])
    shapes = [(1, 3, s, s) for s in sizes]
    return ct.EnumeratedShapes(shapes=shapes, default=shapes[0])


def float_program(model: torch.nn.Module, precision: str, sizes: tuple[int, ...], opts: CoreMLOptions):
    """The ML program ``precision`` starts from, before any compression: fp32 compute for fp32, else fp16;
    iOS 17 for w8a8 (its quantize / dequantize ops), else iOS 16."""
    import coremltools as ct

    size = sizes[0]
    classifier = opts.output_kind == "classifier"
    module = (_Probabilities(model) if classifier else model).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, torch.zeros(1, 3, size, size))
    shape = _input_shape(sizes)
    pre = opts.preprocessing
    if opts.input_kind == "image":
        inputs = [ct.ImageType(name=IMAGE_INPUT, shape=shape, scale=pre.pixel_scale,
                               color_layout=getattr(ct.colorlayout, pre.channel_order))]
    else:
        inputs = [ct.TensorType(name=TENSOR_INPUT, shape=shape)]
    kwargs = {}
    if classifier:
        if not opts.labels:
            raise ValueError("a classifier output needs class labels")
        kwargs["classifier_config"] = ct.ClassifierConfig(list(opts.labels), predicted_feature_name=LABEL_OUTPUT)
    else:
        kwargs["outputs"] = [ct.TensorType(name=CLASSMAP_OUTPUT if opts.output_kind == "classmap" else LOGITS_OUTPUT)]
    compute = ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16
    target = getattr(ct.target, W8A8_TARGET) if precision == "w8a8" else ct.target.iOS16
    return ct.convert(traced, convert_to="mlprogram", inputs=inputs, compute_precision=compute,
                      minimum_deployment_target=target, skip_model_load=True, **kwargs)


# ------------------------------------------------------------------------------------------
# Layer kinds -> MIL ops
# ------------------------------------------------------------------------------------------
MIL_LAYER_OPS = ("conv", "linear", "matmul")


def _op_name(op) -> str:
    """A MIL op's name (what ``OptimizationConfig.op_name_configs`` is keyed by)."""
    if "name" in op.attributes:
        return op.attributes["name"].immediateValue.tensor.strings.values[0]
    return op.outputs[0].name


def mil_layer_ops(spec) -> list[tuple[str, str, tuple[int, ...] | None, int]]:
    """``(name, type, weight shape, groups)`` of every conv / linear / matmul of ``main``, in program order
    (a matmul has no weight: MobileViT's are the attention products of two activations)."""
    main = spec.mlProgram.functions["main"]
    block = main.block_specializations[main.opset]
    shapes, ints = {}, {}
    for op in block.operations:
        for out in op.outputs:
            if out.type.HasField("tensorType"):
                shapes[out.name] = tuple(d.constant.size for d in out.type.tensorType.dimensions)
        if op.type == "const":
            tensor = op.attributes["val"].immediateValue.tensor
            if tensor.WhichOneof("value") == "ints" and len(tensor.ints.values) == 1:
                ints[op.outputs[0].name] = int(tensor.ints.values[0])
    out = []
    for op in block.operations:
        if op.type not in MIL_LAYER_OPS:
            continue
        weight = groups = None
        if op.type != "matmul":
            weight = shapes.get(op.inputs["weight"].arguments[0].name)
            groups = ints.get(op.inputs["groups"].arguments[0].name, 1) if "groups" in op.inputs else 1
        out.append((_op_name(op), op.type, weight, groups))
    return out


def layer_matches(spec, model: torch.nn.Module) -> list[tuple[Layer, list[str]]]:
    """``[(layer, [MIL op names])]``: each quantizable layer of ``model`` matched to the program's conv / linear /
    matmul ops in program order (``export.int8.match_layers``). A conv must carry the module's weight shape
    and groups (so a depthwise 3x3 cannot meet a pointwise 1x1), a linear its weight shape; an attention's
    matmul layer takes the run of ``matmul`` ops that follows its qkv (2 per head with split attention)."""
    ops = [LayerOp(name, typ, typ, None if typ == "matmul" else (weight, groups))
           for name, typ, weight, groups in mil_layer_ops(spec)]

    def weights(module) -> tuple:
        return ((tuple(module.weight.shape), getattr(module, "groups", 1)),)
    return match_layers("coreml", model, ops, weights)


def layer_ops(spec, model: torch.nn.Module, names: Sequence[str]) -> list[str]:
    """The MIL op names that compute the layers ``names`` of ``model`` (:func:`layer_matches`)."""
    want = set(names)
    ops = [i for layer, ids in layer_matches(spec, model) if layer.name in want for i in ids]
    if not ops and want:
        raise ExportConfigError(f"none of the layers {sorted(want)[:3]}... is an op of this Core ML program")
    return ops


def kind_ops(spec, model: torch.nn.Module) -> dict[str, list[str]]:
    """``{kind: [MIL op names]}`` of :func:`layer_matches`."""
    return ops_by_kind(layer_matches(spec, model))


# ------------------------------------------------------------------------------------------
# W8A8
# ------------------------------------------------------------------------------------------
def keep_shared_consts_consistent(spec, config):
    """Give every const that feeds ops with different weight configs its own entry (``None``: not
    compressed), in place. coremltools deduplicates equal consts (the zero biases of synthetic
    weights end up shared by layers of different kinds) and ``linear_quantize_weights`` refuses a
    const whose consumers disagree, even a rank-1 bias it would never compress."""
    main = spec.mlProgram.functions["main"]
    block = main.block_specializations[main.opset]
    consts = {op.outputs[0].name: _op_name(op) for op in block.operations if op.type == "const"}
    users: dict[str, set[str]] = {}
    for op in block.operations:
        if op.type == "const":
            continue
        for arg in op.inputs.values():
            for binding in arg.arguments:
                if binding.WhichOneof("binding") == "name" and binding.name in consts:
                    users.setdefault(binding.name, set()).add(_op_name(op))
    for var, names in users.items():
        const = consts[var]
        if len(names) > 1 and const not in config.op_name_configs:
            configs = [config.op_name_configs.get(n, config.global_config) for n in names]
            if any(c != configs[0] for c in configs):
                config.op_name_configs[const] = None
    return config


def _calibration_feeds(calibration: np.ndarray, input_kind: str, pre: Preprocessing) -> list[dict]:
    """One input dict per photo, as the program takes it (an image input gets pixels 0..255)."""
    name = IMAGE_INPUT if input_kind == "image" else TENSOR_INPUT
    x = np.asarray(calibration, np.float32)
    if input_kind == "image":
        x = np.round(x * 255.0)
    return [{name: x[k:k + 1]} for k in range(x.shape[0])]


def w8a8_configs(ops_by_kind: dict[str, list[str]], float_kinds=(), only_ops: Sequence[str] | None = None, *,
                 float_adds: bool = False, mode: str = "linear_symmetric"):
    """``(activation config, weight config)`` for :func:`quantize_w8a8`.

    Default: every op coremltools can quantize (conv, linear, add; int8 symmetric, per-tensor
    activations, per-channel weights) except those of ``float_kinds``. ``only_ops``: quantize those
    MIL ops and nothing else (not even the residual adds) -- a searched layer set.
    ``float_adds``: keep the adds (residual connections; they belong to no kind) in float.
    ``mode``: of the activations (``linear``: with a zero point).
    """
    import coremltools.optimize.coreml as cto

    act = cto.OpLinearQuantizerConfig(mode=mode, dtype="int8")
    # weight_threshold 0: every conv / linear weight of a quantized op is int8, also the small
    # stem and depthwise kernels (coremltools never compresses rank-1 consts such as biases)
    weight = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", weight_threshold=0)
    if only_ops is not None:
        return (cto.OptimizationConfig(op_name_configs={n: act for n in only_ops}),
                cto.OptimizationConfig(op_name_configs={n: weight for n in only_ops}))
    floating = {n: None for kind in float_kinds for n in ops_by_kind.get(kind, [])}
    # weights: only those of conv / linear ops (the global config would also take other consts)
    weighted = {n: weight for kind, names in ops_by_kind.items() if kind not in float_kinds for n in names}
    return (cto.OptimizationConfig(global_config=act, op_name_configs=floating,
                                   op_type_configs={"add": None} if float_adds else None),
            cto.OptimizationConfig(op_name_configs=weighted))


def activation_ranges(path: str | Path, samples: list[dict]) -> dict[str, dict[str, float]]:
    """``{var: {"rmin", "rmax"}}`` over every float value of the saved program at ``path`` across
    ``samples``, computed by the reference executor (``export.targets.coreml.reference``) with float64 sums.

    coremltools calibrates with ``MLModel.predict``, which exists on macOS only; its own loop also
    keeps only the *last* sample's range (``ModelDebugger.record_intermediate_output`` overwrites
    before taking the min/max, coremltools 9.0). Here the range is the min / max over all samples.
    Float64 sums rounded to the program's fp16 storage give the same ranges, hence the same scales and
    the same artifact, on every CPU (float32 sums follow the BLAS's split: 1 and 2 OpenBLAS threads gave
    different scales and validation cosines 0.99793 and 0.99777).
    """
    from .reference import CoreMLReference

    ref = CoreMLReference(path, accumulate="fp64", kernels="torch")
    consts = set(ref._consts)
    stats: dict[str, dict[str, float]] = {}
    for feed in samples:
        env = ref.run(feed, keep=True)
        for name, value in env.items():
            if name in consts or not isinstance(value, np.ndarray) or value.dtype.kind != "f" or not value.size:
                continue
            lo, hi = float(value.min()), float(value.max())
            if name in stats:
                lo, hi = min(lo, stats[name]["rmin"]), max(hi, stats[name]["rmax"])
            stats[name] = {"rmin": lo, "rmax": hi}
    return stats


def activation_passes(mlmodel, stats: dict, config) -> list:
    """The graph passes of coremltools 9.0's ``linear_quantize_activations`` with ranges given
    (``activation_ranges``) instead of measured with ``MLModel.predict``: quantize / dequantize pairs
    before and after conv, linear and add (matmul is not among them), the same concat range sharing."""
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.optimize.coreml.experimental._model_debugger import ModelDebugger
    from coremltools.optimize.coreml.experimental._post_training_quantization import (
        _adjust_concat_surrounding_activation_stats,
    )

    stats = {k: dict(v) for k, v in stats.items()}
    _adjust_concat_surrounding_activation_stats(ModelDebugger(mlmodel)._get_concat_op_info(), stats)
    passes = []
    for name in ("compression::insert_prefix_quantize_dequantize_pair",
                 "compression::insert_suffix_quantize_dequantize_pair"):
        graph_pass = PASS_REGISTRY[name]
        graph_pass.set_options([PassOption("config", config)])
        graph_pass.set_options([PassOption("activation_stats", stats)])
        passes.append(graph_pass)
    return passes + [PASS_REGISTRY["common::dequantize_quantize_pair_elimination"]]


def quantize_w8a8(mlmodel, samples: list[dict], act_config, weight_config, stats: dict | None = None):
    """Int8 activations (ranges from ``samples``, or ``stats`` already measured) and int8 weights.

    The activation passes and ``linear_quantize_weights``' pass run in one conversion: each of coremltools'
    calls converts the program again through its whole default pipeline (92 passes, each followed by a
    validation of the whole program). One conversion makes the same program as the two (the same ops and
    weight file; a few variable names differ where the second conversion renamed them) in about half the
    time: 6.2 s -> 3.4 s for all 72 layers of xx_small at 128x128 (Intel Xeon)."""
    import tempfile

    from coremltools import _SPECIFICATION_VERSION_IOS_17
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models import utils as model_utils

    if stats is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "float.mlpackage"
            mlmodel.save(str(path))
            stats = activation_ranges(path, samples)
    weights = PASS_REGISTRY["compression::linear_quantize_weights"]
    weights.set_options([PassOption("config", keep_shared_consts_consistent(mlmodel.get_spec(), weight_config)),
                         PassOption("joint_compression", False)])
    return model_utils._apply_graph_pass(mlmodel, activation_passes(mlmodel, stats, act_config) + [weights],
                                         spec_version=_SPECIFICATION_VERSION_IOS_17, pymil_load_func=milproto_load,
                                         skip_model_load=True)


def compress_weights(mlmodel, scheme: str, ops_by_kind: dict[str, list[str]] | None = None, float_kinds=()):
    """8-bit symmetric linear quantization (``int8``) or 8-bit k-means palettization of weights;
    ``int8`` keeps the weights of ``float_kinds``' ops (``ops_by_kind`` from :func:`kind_ops`) in float."""
    import coremltools.optimize.coreml as cto

    if scheme == "int8":
        floating = {n: None for kind in float_kinds for n in (ops_by_kind or {}).get(kind, [])}
        config = cto.OptimizationConfig(
            global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"),
            op_name_configs=floating)
        return cto.linear_quantize_weights(mlmodel, keep_shared_consts_consistent(mlmodel.get_spec(), config))
    if scheme == "palettize8":
        config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=8))
        return cto.palettize_weights(mlmodel, config)
    raise ValueError(f"unknown Core ML weight compression {scheme!r}")
