"""The target registry (one small config per export target) and the tolerance table.

Adding a target means one new module (its converter, options, runner and graph inspector) and one
``register(TargetConfig(...))`` call below; ``export.convert``, the CLI, validation, publishing and
every benchmark find it here. Entries name their parts as ``"module:attribute"`` strings, imported
only when used, so this module imports nothing heavy and no module of the package imports another
in a cycle.

Default patch strategies and attention layouts were chosen by measurement (README, "Patch
strategies"): each target gets the rewrite that converted cleanly, validated, and ran fastest.
``split`` attention (heads as channel slices) is exactly equal to the public ``batched`` layout
and needs 1 transpose per transformer layer instead of 4; for Core ML it also follows
ml-ane-transformers' principle of splitting heads into separate ops. ExecuTorch's XNNPACK backend
instead wants ``bmm`` attention (3-D batched matmuls) and the model rewrites its entry names
(``mobilevit.rewrites``): with them the whole program is one XNNPACK delegate.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ExportConfigError


@dataclass(frozen=True)
class Tolerance:
    """Limits on drift from PyTorch fp32 over the validation photographs.

    ``max_abs_rel`` is max |artifact - torch| divided by max |torch| for logits (logit scale differs
    between checkpoints), and max |artifact - torch| itself for a classifier's probabilities (their scale
    is 1; ``export.validate.drift``); ``top1_min`` is the fraction of photos whose top-1 class must agree.
    """

    max_abs_rel: float
    cosine_min: float
    top1_min: float


# (target, precision) -> tolerance. One visible table: change a limit here, nowhere else.
# Each limit keeps a margin over the worst figure measured across photo seeds (`make margins`: xx_small,
# calibrated synthetic weights, 16 photos x seeds 1, 0, 11, 2, 3; ONNX and TFLite rows on an AMD Zen 4 with
# AVX-512 VNNI/BF16, Core ML, ExecuTorch and ONNX int8 on an AMD Zen 3, AVX2 only; neither has AMX):
# 1 - cosine_min >= 2x the worst 1 - cosine, max_abs_rel >= 1.5x the worst, top1_min <= the worst minus one
# photo of 16 (100% stands while 2x max_abs_rel is under the smallest top-1 gap, 8.4e-4 of the logit range).
# The comment on each row: worst max_abs_rel / cosine / top-1 over the seeds, from
# benchmarks/results/margins.json (tests/test_margins.py holds the table to the policy over that file).
# int8 rows: the recipes of INT8_RECIPES; on synthetic weights fp16 itself flips 1 of 16 photos, and one photo's
# largest logit error is 0.29 of the logit range on every int8 target.
TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("onnx", "fp32"): Tolerance(1e-4, 0.99999, 1.0),  # 2.5e-6 / 1 - 5e-12 / 100% (margins.json)
    ("onnx", "fp16"): Tolerance(2e-2, 0.999, 0.875),  # 0.0052 / 0.999964 / 94% (margins.json)
    # onnx int8: 0.293 / 0.997782 / 88% (margins.json: uint8 weights, U8U8, on AMD Zen 3, AVX2 only); its int8
    # weights before (U8S8, export/targets/onnx/quantize.py) gave 0.293 / 0.997773 / 88% on AMD Zen 4 with VNNI
    ("onnx", "int8"): Tolerance(0.44, 0.9955, 0.8),
    ("onnx", "int8_dynamic"): Tolerance(0.5, 0.95, 0.6),  # 0.041 / 0.997924 / 88% (margins.json)
    ("tflite", "fp32"): Tolerance(1e-4, 0.99999, 1.0),  # 2.4e-6 / 1 - 6e-12 / 100% (margins.json)
    ("tflite", "fp16"): Tolerance(2e-2, 0.999, 0.875),  # 0.0052 / 0.999964 / 94% (margins.json)
    ("tflite", "int8_dynamic"): Tolerance(0.5, 0.95, 0.6),  # 0.072 / 0.994134 / 88% (margins.json)
    ("tflite", "int8"): Tolerance(0.44, 0.9954, 0.8),  # 0.293 / 0.997708 / 88% (margins.json)
    # Core ML and ExecuTorch rows: margins.json, measured on AMD Zen 3 (AVX2 only); Core ML in the reference executor
    # (float64 sums: the same figures on every CPU). Logits rows; the classifier rows (probabilities) drift less.
    ("coreml", "fp32"): Tolerance(1e-4, 0.99999, 1.0),  # 1.8e-6 / 1 - 1e-12 / 100%
    ("coreml", "fp16"): Tolerance(5e-2, 0.999, 0.875),  # 0.0054 / 0.999966 / 94% (the top-1 limit was 0.9: short)
    ("coreml", "int8"): Tolerance(0.2, 0.99, 0.8),  # 0.064 / 0.997138 / 88%
    # 0.091 / 0.994060 / 81% (limits were 0.99 and 0.8: short by the policy)
    ("coreml", "palettize8"): Tolerance(0.2, 0.988, 0.75),
    # w8a8, tensor in / logits out, reference executor with float64 sums (the same figures on every CPU), validation
    # seeds 0-5 (the exporter's is 1): max abs / max |logit| 0.025-0.045 (worst 0.0446, seed 5), worst cosine
    # 0.99813-0.99892 (worst seed 3; seed 1: 0.99855), mean cosine 0.99927-0.99942, top-1 88-94% (seed 2: 2 of 16);
    # image in / classifier out, probabilities judged as such: max abs 7e-5-1.7e-3 (worst seed 1), worst cosine
    # 0.99876 (seed 1; others >= 0.99985), top-1 88-100%;
    # limits by the margin policy of benchmarks.margins (1-cosine 2x, max abs 1.5x the worst seen, top-1 one photo
    # below it): 2 x 0.00187 -> 0.996, 1.5 x 0.0446 -> 0.07
    ("coreml", "w8a8"): Tolerance(0.07, 0.996, 0.8),
    ("executorch", "fp32"): Tolerance(1e-4, 0.99999, 1.0),  # 2.3e-6 / 1 - 1e-12 / 100%
    # 0.297 / 0.991394 / 88% (limits were 0.35 and 0.985: short by the policy)
    ("executorch", "int8"): Tolerance(0.45, 0.982, 0.8),
    ("executorch", "coreml-fp16"): Tolerance(5e-2, 0.999, 0.875),  # 0.0062 / 0.999960 / 94% (top-1 was 0.9: short)
}


@dataclass(frozen=True)
class SegmentationTolerance:
    """Limits for a segmentation artifact (``export.tasks``): its logits as a classifier's (max |diff| over
    max |torch|, worst per-photo cosine of the flattened logits; not checked for a class-map output), and its
    class map against PyTorch's at the input resolution: the worst photo's pixel agreement and the mean IoU."""

    max_abs_rel: float
    cosine_min: float
    pixel_min: float
    miou_min: float


# (target, precision) -> segmentation tolerance; the precisions offered for segmentation are this table's.
SEGMENTATION_TOLERANCES: dict[tuple[str, str], SegmentationTolerance] = {
    ("coreml", "fp16"): SegmentationTolerance(5e-2, 0.999, 0.97, 0.9),
    ("coreml", "fp32"): SegmentationTolerance(1e-4, 0.99999, 0.999, 0.99),
    ("onnx", "fp32"): SegmentationTolerance(1e-4, 0.99999, 0.999, 0.99),
    ("onnx", "fp16"): SegmentationTolerance(5e-2, 0.999, 0.97, 0.9),
    ("tflite", "fp32"): SegmentationTolerance(1e-4, 0.99999, 0.999, 0.99),
    ("tflite", "fp16"): SegmentationTolerance(5e-2, 0.999, 0.97, 0.9),
    ("executorch", "fp32"): SegmentationTolerance(1e-4, 0.99999, 0.999, 0.99),
}


@dataclass(frozen=True)
class Int8Recipe:
    """What an int8 artifact keeps in float, and how its activation ranges are calibrated.

    ``float_kinds`` are :mod:`mobilevit.layers` kinds left in float; every other weight-bearing layer
    (and the attention matmuls, unless listed) is int8. Chosen from the sensitivity table
    (``python -m benchmarks.quant``: each kind quantized alone, its drift measured in the target's
    runtime on photos it was not calibrated on); ``measured`` says what the recipe reached there.
    """

    float_kinds: tuple[str, ...]
    calibration: str = "minmax"  # minmax | percentile | entropy, where the target's tool offers them
    # op types that carry no layer kind and stay float, in the target's own op names ("*": all of them)
    float_ops: tuple[str, ...] = ()
    measured: str = ""


# (target, precision) -> int8 recipe: one visible table, like the tolerances. ``float_kinds=`` in a
# target's options overrides it for one conversion (the sensitivity analysis does that).
# The layer kinds every int8 recipe keeps in float (the same float exceptions on every target). Chosen
# from the sensitivity table (`make quant`, benchmarks/results/quant.md; xx_small, calibrated synthetic
# weights, drift on photos calibration never saw): each of these, int8 alone, costs more than 1e-3 of mean
# cosine on at least two targets (the stem and the inverted residuals' convolutions 5e-3 to 4e-2;
# conv_in, fusion3x3 and local3x3 0.8e-3 to 1.9e-3; attn_out 0.5e-3 to 1.3e-3), or, for the attention
# matmuls, wrecks TFLite (its softmax output is quantized in steps of 1/256, so with 256 tokens a uniform
# attention weight is one step: cosine 0.82 with that kind alone). What stays int8: qkv, ffn, conv_proj,
# conv_exp and the classifier, 30% of the multiply-accumulates; the recipe rows reach mean cosine 0.99933
# (onnxruntime), 0.99917 (LiteRT), 0.99924 (Core ML reference executor) and 0.99861 (ExecuTorch).
FLOAT_KINDS = ("stem", "expand", "depthwise", "project", "local3x3", "conv_in", "fusion3x3", "attn_matmul",
               "attn_out")

INT8_RECIPES: dict[tuple[str, str], Int8Recipe] = {
    # static QDQ over the kinds' Conv / MatMul / Gemm; calibration methods measured equal on these layers
    ("onnx", "int8"): Int8Recipe(FLOAT_KINDS, "minmax"),
    # TFLite's MLIR quantizer; "*": every op that is not a layer (LayerNorm, softmax, SiLU, residual adds) in
    # float: int8 LayerNorm alone costs 0.3 of cosine and int8 SOFTMAX / LayerNorm leave XNNPACK
    ("tflite", "int8"): Int8Recipe(FLOAT_KINDS, "minmax", float_ops=("*",)),
    # coremltools' activation quantization passes with ranges measured by the reference executor (their
    # own calibration needs macOS), then int8 weights; "add": the residual adds (no kind) stay fp16,
    # int8 alone they cost 0.018 of cosine. coremltools never quantizes matmul (attn_matmul stays fp16).
    ("coreml", "w8a8"): Int8Recipe(FLOAT_KINDS, "minmax", float_ops=("add",)),
    # PT2E, XNNPACK quantizer (its histogram observer), conv / linear / bmm of the other kinds
    ("executorch", "int8"): Int8Recipe(FLOAT_KINDS, "histogram"),
}


def int8_recipe(target: str, precision: str) -> Int8Recipe | None:
    return INT8_RECIPES.get((target, precision))


# Where INT8_SENSITIVITY was measured: `python -m benchmarks.quant` (make quant) on 2026-11-25, results in
# benchmarks/results/quant.json (tests/test_architecture.py checks this copy against it).
INT8_SENSITIVITY_MEASURED = ("xx_small, calibrated synthetic weights, AMD EPYC; mean cosine to PyTorch fp32 on 16 "
                             "validation views calibration never saw (32 views of their own pool)")

# Mean cosine to PyTorch fp32 with one layer kind alone int8 (every other kind float): what an int8 artifact
# that fails validation is explained with (export.validate.int8_blame); the lower, the more to blame.
# One row per kind, one column per (target, precision) of INT8_RECIPES:
#                 onnx int8   tflite int8   coreml w8a8   executorch int8
_SENSITIVITY = {
    "stem":        (0.995298,     0.995298,     0.995384,     0.995581),
    "expand":      (0.980927,     0.983223,     0.977598,     0.990428),
    "depthwise":   (0.980482,     0.980688,     0.960108,     0.989244),
    "project":     (0.986904,     0.988785,     0.970228,     0.990603),
    "local3x3":    (0.998844,     0.999150,     0.999213,     0.998972),
    "conv_in":     (0.998575,     0.998609,     0.998125,     0.998955),
    "qkv":         (0.999818,     0.999834,     0.999837,     0.999189),
    "attn_matmul": (0.999489,     0.816382,     0.999991,     0.999474),
    "attn_out":    (0.999317,     0.999249,     0.999506,     0.998750),
    "ffn":         (0.999804,     0.999635,     0.999682,     0.999258),
    "conv_proj":   (0.999868,     0.999872,     0.999882,     0.999240),
    "fusion3x3":   (0.998631,     0.998583,     0.998570,     0.999160),
    "conv_exp":    (0.999962,     0.999962,     0.999932,     0.999447),
    "classifier":  (0.999872,     0.999872,     0.999819,     0.999334),
}
INT8_SENSITIVITY: dict[tuple[str, str], dict[str, float]] = {
    column: {kind: cosines[i] for kind, cosines in _SENSITIVITY.items()}
    for i, column in enumerate((("onnx", "int8"), ("tflite", "int8"), ("coreml", "w8a8"), ("executorch", "int8")))
}


@dataclass(frozen=True)
class Baseline:
    """A benchmark baseline row: the Hugging Face model converted with ``options``; our fp32 must run at most
    ``speed_limit`` times its latency (a ratio judged on one run's samples, ``benchmarks.report``)."""

    source: str  # hf-as-is: TorchScript/as-is exporter, no rewrites | hf-our-exporter: our settings, no rewrites
    options: dict
    speed_limit: float
    label: str


@dataclass(frozen=True)
class TargetConfig:
    """What a target accepts, what it does by default, and where its parts live."""

    name: str
    precisions: tuple[str, ...]  # the one list of this target's precisions
    default_precision: str
    default_patches: str  # patch strategy (``mobilevit.patches``) measured best for this converter
    default_attention: str  # batched | split | bmm
    suffix: str  # artifact file suffix; also how ``make_runner``/``inspect`` recognise an artifact
    converter: str  # convert(model, precisions, workdir, *, sizes, calibration, options) -> {precision: Path}
    options: str  # the target's options dataclass (its extra keyword arguments to ``export.convert``)
    runner: str  # runner(path, threads) -> export.runners.Runner
    inspector: str  # inspect(path) -> export.graph.GraphReport
    calibrated: tuple[str, ...] = ()  # precisions whose conversion needs calibration photos
    multi_size: bool = False  # one artifact can take several input sizes
    # options that make the artifact take a float [B, 3, H, W] tensor and return logits, as PyTorch does
    # (what benchmarks and drift localisation compare); empty where that is already the default
    logits_options: dict = field(default_factory=dict)
    # model rewrites (``mobilevit.rewrites``) ``export.convert`` applies to a copy before converting
    rewrites: tuple[str, ...] = ()
    notes: str = ""
    # --- hooks: what the CLI, the request, the pipeline and the benchmarks ask the target, never its name
    # heavy modules the CLI imports up front, their import-time noise silenced (``export.quiet``)
    preload: tuple[str, ...] = ()
    # the request's generic fields (CLI flags) this target's options take: input_kind, output_kind, dynamic_hw
    request_fields: tuple[str, ...] = ()
    # default output of a segmentation export: logits | classmap
    segmentation_output: str = "logits"
    # "module:function"(*, task, output_kind, names, card, provenance, preprocessing) -> dict: the options that
    # carry labels and metadata into the artifact; "" = none
    metadata_options: str = ""
    # "module:function"(artifact path) -> dict: preprocessing facts the artifact declares itself (e.g. its
    # channel order), merged over the model's in the manifest; "" = the model's
    artifact_preprocessing: str = ""
    # "module:function"(path) -> runner that also returns every intermediate tensor: ``intermediates(x) ->
    # [{"name", "shape", "value"}]``, for drift localisation; "" = localise by ablation (``benchmarks.localize``)
    intermediates: str = ""
    # "module:function"(path, x, threads, runs) -> {"ops": {op type: {"ms", "calls"}}, "source", "total_ms", ...}:
    # per-op time from the runtime's own profiler (``benchmarks.profile``); "" = the runtime has none we can call
    profiler: str = ""
    # "module:function"(path) -> export.targets.onnx.chains.ChainReport-like (``islands``, ``breaks``,
    # ``integer_ops``, ``describe()``): the float islands between int8 kernels in the graph the runtime really
    # runs; "" = no such check for this runtime yet
    int8_chains: str = ""
    # "module:function"(model, calibration, heldout, work, size) -> an object with ``layers``, ``fp32`` (path),
    # ``sensitivity()``, ``evaluate(float_layers) -> figures`` and ``quantize(int8_layers) -> path``: any layer
    # set int8, measured in the runtime (export.int8search);
    # its options then take ``int8_budget``; "" = no search for this target yet
    int8_search: str = ""
    # the benchmark harness's Hugging Face baseline rows for this target, each with its speed target
    baselines: tuple[Baseline, ...] = ()
    timed_on_device: bool = False  # its artifacts can also be timed on an attached Android phone
    # seconds to convert every precision of the digits demo (xx_small at 64x64, AMD Zen 3, one run): when several
    # targets convert side by side (``benchmarks.accuracy``), the longest starts first; only the order matters
    conversion_seconds: float = 0.0


TARGETS: dict[str, TargetConfig] = {}


def register(cfg: TargetConfig) -> TargetConfig:
    """Add a target; refuses a duplicate name or suffix and a default that is not offered."""
    if cfg.name in TARGETS:
        raise ValueError(f"target {cfg.name!r} is already registered")
    clash = [t.name for t in TARGETS.values() if t.suffix == cfg.suffix]
    if clash:
        raise ValueError(f"suffix {cfg.suffix!r} of {cfg.name!r} is already used by {clash[0]!r}")
    if cfg.default_precision not in cfg.precisions:
        raise ValueError(f"{cfg.name}: default precision {cfg.default_precision!r} is not in {cfg.precisions}")
    missing = [p for p in cfg.precisions if (cfg.name, p) not in TOLERANCES]
    if missing:
        raise ValueError(f"{cfg.name}: no tolerance for {missing}: add them to TOLERANCES")
    TARGETS[cfg.name] = cfg
    return cfg


register(TargetConfig(
    "coreml", ("fp16", "fp32", "int8", "palettize8", "w8a8"), "fp16", "pixel_shuffle", "split", ".mlpackage",
    converter="export.targets.coreml.convert:convert", options="export.targets.coreml.convert:CoreMLOptions",
    runner="export.targets.coreml.runner:coreml_runner", inspector="export.targets.coreml.graph:inspect_coreml",
    calibrated=("w8a8",), multi_size=True, logits_options={"input_kind": "tensor", "output_kind": "logits"},
    preload=("coremltools",), request_fields=("input_kind", "output_kind"), segmentation_output="classmap",
    metadata_options="export.targets.coreml.convert:metadata_options", conversion_seconds=106,
    int8_search="export.targets.coreml.search:layer_search",
    notes="ML program; image input (the checkpoint's channel order and scale) and classifier output by "
          "default; int8 = 8-bit linear weight quantization, palettize8 = 8-bit k-means palettization "
          "(both on fp16 compute); w8a8 = int8 activations (calibrated on real photos) and int8 weights "
          "for the int8 recipe's layers (INT8_RECIPES) or the layers --int8-budget searched, iOS 17."))
register(TargetConfig(
    "onnx", ("fp32", "fp16", "int8", "int8_dynamic"), "fp32", "slice", "split", ".onnx",
    converter="export.targets.onnx.convert:convert", options="export.targets.onnx.convert:OnnxOptions",
    runner="export.targets.onnx.runner:OnnxRuntimeRunner", inspector="export.targets.onnx.graph:inspect_onnx",
    profiler="export.targets.onnx.profile:profile", int8_chains="export.targets.onnx.chains:check",
    int8_search="export.targets.onnx.search:layer_search", calibrated=("int8",), preload=("onnxruntime", "onnxscript"),
    request_fields=("dynamic_hw",), conversion_seconds=22,
    metadata_options="export.targets.onnx.convert:metadata_options",
    baselines=(Baseline("hf-as-is", {"exporter": "as-is"}, 0.85, "onnxruntime fp32 / HF as-is"),
               Baseline("hf-our-exporter", {}, 1.0,
                        "onnxruntime fp32 / HF through our exporter (the rewrites alone)")),
    notes="opset 18, single file (batch 1 with slice patches); int8 = static QDQ of the int8 recipe's layers "
          "(INT8_RECIPES), calibrated on real photos; int8_dynamic = dynamic quantization of MatMul/Gemm weights."))
register(TargetConfig(
    "tflite", ("fp32", "fp16", "int8_dynamic", "int8"), "fp32", "slice", "split", ".tflite",
    converter="export.targets.tflite.convert:convert", options="export.targets.tflite.convert:TFLiteOptions",
    runner="export.targets.tflite.runner:LiteRTRunner", inspector="export.targets.tflite.graph:inspect_tflite",
    calibrated=("fp32", "fp16", "int8_dynamic", "int8"),
    preload=("tensorflow", "onnx2tf", "ai_edge_litert.interpreter"),
    metadata_options="export.targets.tflite.convert:metadata_options",
    artifact_preprocessing="export.targets.tflite.metadata:declared_preprocessing",
    intermediates="export.targets.tflite.runner:preserving_runner", conversion_seconds=48,
    int8_search="export.targets.tflite.search:layer_search",
    baselines=(Baseline("hf-as-is", {"exporter": "as-is"}, 0.7, "TFLite fp32 / HF as-is"),), timed_on_device=True,
    notes="via onnx2tf; NHWC RGB input (the stem's input channels reversed), MediaPipe image-classifier metadata "
          "with labels; int8_dynamic = dynamic-range weights, "
          "int8 = integer kernels for the int8 recipe's layers (INT8_RECIPES; TensorFlow's quantizer on onnx2tf's "
          "SavedModel, calibrated on real photos), float I/O."))
register(TargetConfig(
    "executorch", ("fp32", "int8", "coreml-fp16"), "fp32", "reference", "bmm", ".pte",
    converter="export.targets.executorch.convert:convert",
    options="export.targets.executorch.program:ExecuTorchOptions",
    runner="export.targets.executorch.runner:runner", inspector="export.targets.executorch.runner:inspect_pte",
    profiler="export.targets.executorch.profile:profile", conversion_seconds=146,
    int8_search="export.targets.executorch.search:layer_search",
    calibrated=("int8",), rewrites=("layernorm_as_linear", "qkv_as_three_linears", "pool_keepdim"),
    preload=("torchao", "executorch.exir", "executorch.runtime"),
    baselines=(Baseline("hf-as-is", {"exporter": "as-is"}, 1.0,
                        "ExecuTorch fp32 / HF as-is (one XNNPACK delegate vs the public graph's many)"),),
    notes="torch.export -> .pte, batch 1; fp32 and int8 (PT2E, XNNPACK quantizer, the int8 recipe's layers "
          "(INT8_RECIPES) with per-channel weights, calibrated on real photos) fully delegated to XNNPACK; "
          "coreml-fp16 = the Core ML backend "
          "(iOS 17, fp16), validated on Linux by running the Core ML program it carries in the reference "
          "executor."))

# Sizes a multi-scale Core ML model accepts by default (the paper's 160..320 range).
DEFAULT_ENUMERATED_SIZES = (160, 192, 224, 256, 288, 320)
MIN_SIZE, MAX_SIZE = 64, 1024


def target_config(name: str) -> TargetConfig:
    if name not in TARGETS:
        raise ExportConfigError(f"unknown target {name!r}; choose one of: {', '.join(TARGETS)}")
    return TARGETS[name]


def precisions(target: str) -> tuple[str, ...]:
    """Every precision ``target`` offers (the CLI, the benchmarks and the accuracy matrix all use this)."""
    return target_config(target).precisions


def check_precision(target: str, precision: str) -> str:
    cfg = target_config(target)
    if precision not in cfg.precisions:
        raise ExportConfigError(
            f"precision {precision!r} is not available for {target}; choose one of: "
            f"{', '.join(cfg.precisions)}")
    return precision


def check_sizes(target: str, sizes: tuple[int, ...]) -> tuple[int, ...]:
    """Refuse sizes MobileViT or ``target`` cannot take, naming the ones it can."""
    if not sizes:
        raise ExportConfigError("no input size given")
    for s in sizes:
        if not isinstance(s, int) or s % 32 or s < MIN_SIZE or s > MAX_SIZE:
            raise ExportConfigError(
                f"size {s} is not accepted: MobileViT takes multiples of 32 between {MIN_SIZE} and {MAX_SIZE} "
                f"(e.g. {', '.join(map(str, DEFAULT_ENUMERATED_SIZES))})")
    if len(sizes) > 1:
        if not target_config(target).multi_size:
            multi = [t.name for t in TARGETS.values() if t.multi_size]
            raise ExportConfigError(
                f"{target} exports one size (got {sizes}); several sizes in one model: {', '.join(multi)}; "
                "use --dynamic-hw for ONNX, or export each size separately")
        odd = [s for s in sizes if s % 64]
        if odd:
            raise ExportConfigError(
                f"sizes {odd} give an odd patch grid at stride 32, which needs a resize that one "
                "multi-size model cannot switch on and off; use multiples of 64 "
                f"(e.g. {', '.join(str(s) for s in DEFAULT_ENUMERATED_SIZES if s % 64 == 0)}) or export "
                "those sizes as separate models")
    return tuple(sizes)


def tolerance(target: str, precision: str) -> Tolerance:
    return TOLERANCES[(target, precision)]


def preload_modules(names) -> tuple[str, ...]:
    """The heavy modules of the named targets (their entries' ``preload``), each once, in registry order."""
    return tuple(dict.fromkeys(m for t in TARGETS.values() if t.name in names for m in t.preload))


def hook(cfg: TargetConfig, name: str):
    """The target's hook ``name`` (a ``"module:attribute"`` field of its entry) loaded, or None if it has none."""
    ref = getattr(cfg, name)
    return load(ref) if ref else None


def target_for_path(path: str | Path) -> TargetConfig:
    """The target whose artifacts end like ``path``."""
    suffix = Path(path).suffix
    for cfg in TARGETS.values():
        if cfg.suffix == suffix:
            return cfg
    raise ExportConfigError(f"{path} is not an artifact this toolkit knows: unknown suffix {suffix!r} "
                            f"(known: {', '.join(t.suffix for t in TARGETS.values())})")


def load(ref: str):
    """Import ``"module:attribute"`` (a registry entry's part)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)
