"""The int8 layer search on each target's own graphs: a planted sensitive layer (its weights given one outlier
per output channel) found first and returned to float first in onnxruntime, LiteRT, ExecuTorch (simulation,
checked against the lowered program) and Core ML w8a8; ExecuTorch's per-layer profile matching. Apart from
``test_int8search.py`` so that the two halves of the search tests run on different test workers."""
from __future__ import annotations

import pytest

from export.int8search import Budget, rank, search

PLANTED = "stages.3.1.transformer.0.mlp.fc1"
# ExecuTorch and Core ML measure a set in about 1.6 s and 3.4 s whatever the size, most of it quantizing (PT2E,
# coremltools' passes), and lower or convert at a cost that grows with it: their tests run at 128x128 (the planted
# layer alone drifted 70x and 85x the next feed-forward linear in ExecuTorch, two photo seeds, 965x in Core ML;
# this Xeon)
SMALL = 128


def _plant(model) -> None:
    """``PLANTED`` rescaled at equal function (see the ONNX test below): input feature 0 made 1024x smaller by
    the LayerNorm before it, and that column of its weights 1024x larger."""
    import torch

    modules = dict(model.named_modules())
    with torch.no_grad():
        norm = modules[PLANTED.replace("mlp.fc1", "norm2")]
        norm.weight[0] /= 1024
        norm.bias[0] /= 1024
        modules[PLANTED].weight[:, 0] *= 1024  # [out, in]: column 0 meets feature 0


def test_onnx_search_returns_a_planted_sensitive_layer_to_float_first(tmp_path, synthetic_xxs):
    """A feed-forward linear (a kind that is harmless in int8 on these weights) rescaled at equal function: its
    input feature 0 made 1024x smaller (the LayerNorm before it: gamma and beta / 1024) and that column of its
    weights 1024x larger. fp32 computes the same, but per-channel int8 now spends every row's range on the
    large column, and the other weights fall to a few steps: this layer alone int8 must drift more than any
    other (measured in onnxruntime), and the search (ranked by drift) returns it to float first."""
    import copy

    from data.photos import photo_variants
    from export import convert_all, with_target_defaults
    from export.convert import calibration_photos
    from export.targets.onnx.search import OnnxLayerSearch
    from mobilevit import get_config
    from mobilevit.preprocess import preprocess

    model = with_target_defaults(copy.deepcopy(synthetic_xxs), "onnx")
    _plant(model)
    cfg = get_config("xx_small")
    fp32 = convert_all(model, "onnx", ["fp32"], tmp_path / "fp32", size=256)["fp32"]
    s = OnnxLayerSearch(model, fp32, calibration_photos(cfg, 256, count=16),
                        preprocess(photo_variants(8, seed=0), cfg, 256).numpy(), tmp_path / "search")
    drift = s.sensitivity()
    ranked = rank(drift)
    assert ranked[0] == PLANTED, sorted(drift.items(), key=lambda kv: -kv[1])[:3]
    others = max(v for k, v in drift.items() if k != PLANTED)
    assert drift[PLANTED] > 3 * others  # not a near tie
    all_int8 = s.evaluate([])["cosine"]
    without = s.evaluate([PLANTED])["cosine"]
    assert without > all_int8  # returning it to float helps
    found = search(ranked, s.evaluate, Budget("cosine", (all_int8 + without) / 2))
    assert found.float_layers[:1] == [PLANTED] and found.met


def _planted_ffn_goes_first(s) -> tuple[list[str], dict]:
    """Among the feed-forward linears of search ``s`` (the planted model's; the kind whose layers all sit in the
    same place of the network), ``PLANTED`` alone int8 drifts the most, by far, and the search returns it to float
    first. Returns the feed-forward linears and the figures with all of them int8 (everything else float)."""
    ffn = [n for n in s.layers if s.kinds[n] == "ffn"]
    assert len(ffn) == 18 and PLANTED in ffn  # 9 transformer layers, 2 linears each (by hand)
    drift = s.sensitivity(ffn)
    ranked = rank(drift)
    assert ranked[0] == PLANTED, sorted(drift.items(), key=lambda kv: -kv[1])[:3]
    assert drift[PLANTED] > 3 * max(v for k, v in drift.items() if k != PLANTED)  # not a near tie
    fixed = [n for n in s.layers if n not in ffn]  # the feed-forward linears int8, everything else float
    measured: dict[frozenset, dict] = {}  # each set once: the search starts from the two sets measured here

    def evaluate(float_layers):
        key = frozenset(float_layers)
        if key not in measured:
            measured[key] = s.evaluate(float_layers)
        return measured[key]
    all_ffn = evaluate(fixed)
    without = evaluate(fixed + [PLANTED])["cosine"]
    assert without > all_ffn["cosine"]  # returning it to float helps
    found = search(ranked, evaluate, Budget("cosine", (all_ffn["cosine"] + without) / 2), always_float=fixed)
    assert found.float_layers[len(fixed):len(fixed) + 1] == [PLANTED] and found.met
    return ffn, all_ffn


def test_tflite_search_ranks_a_planted_sensitive_layer_first_and_returns_it_to_float_first(tmp_path,
                                                                                            synthetic_xxs):
    """The same planted feed-forward linear (see the ONNX test), now in LiteRT: among the feed-forward linears
    (the kind whose layers all sit in the same place of the network), it alone int8 drifts the most, by far,
    measured on the TFLite graph's own ops; the search returns it to float first."""
    import copy

    from data.photos import photo_variants
    from export import with_target_defaults
    from export.convert import calibration_photos
    from export.targets.tflite.quantize import TFLiteLayerSearch
    from export.targets.tflite.search import onnx2tf_files
    from mobilevit import get_config
    from mobilevit.preprocess import preprocess

    model = with_target_defaults(copy.deepcopy(synthetic_xxs), "tflite")
    _plant(model)
    cfg = get_config("xx_small")
    calibration = calibration_photos(cfg, 256, count=16)
    saved, fp32 = onnx2tf_files(model, calibration, tmp_path, 256)
    s = TFLiteLayerSearch(model, saved, fp32, calibration, preprocess(photo_variants(8, seed=0), cfg, 256).numpy(),
                          tmp_path / "search")
    _planted_ffn_goes_first(s)


def test_executorch_search_ranks_a_planted_sensitive_layer_first_and_its_simulation_predicts_the_program(
        tmp_path, synthetic_xxs):
    """The same planted feed-forward linear (see the ONNX test), on ExecuTorch: measured in simulation (the PT2E
    program in torch), it alone int8 drifts the most of the feed-forward linears, by far, and the search returns
    it to float first. The simulation predicts the lowered program: with every feed-forward linear int8, the
    ``.pte`` in ExecuTorch drifts within 5% of the simulated drift (measured at 128x128: within 1.2% and 1.1%, two
    photo seeds; within 0.2% at 256x256)."""
    import copy

    from data.photos import photo_variants
    from export import with_target_defaults
    from export.convert import calibration_photos
    from export.targets.executorch.search import layer_search
    from mobilevit import get_config
    from mobilevit.preprocess import preprocess

    model = with_target_defaults(copy.deepcopy(synthetic_xxs), "executorch")
    _plant(model)
    cfg = get_config("xx_small")
    s = layer_search(model, calibration_photos(cfg, SMALL, count=16),
                     preprocess(photo_variants(8, seed=0), cfg, SMALL).numpy(), tmp_path, SMALL)
    ffn, simulated = _planted_ffn_goes_first(s)
    lowered = s.figures(s.quantize(ffn))  # the .pte, in ExecuTorch's runtime
    assert abs((1 - lowered["cosine"]) - (1 - simulated["cosine"])) < 0.05 * (1 - simulated["cosine"]), \
        (lowered, simulated)


def test_coreml_search_ranks_a_planted_sensitive_layer_first_and_returns_it_to_float_first(tmp_path, synthetic_xxs):
    """The same planted feed-forward linear (see the ONNX test), as Core ML w8a8 (coremltools' activation and weight
    quantization) run in the reference executor: among the feed-forward linears it alone int8 drifts the most, by
    far, and the search returns it to float first. The search's layers are xx_small's 72 convolutions and linears
    (by hand: stem 1, stage 0 3, stage 1 9, stages 2-4 3 + 4 convolutions + 4 linears per transformer layer with
    2, 4, 3 layers, head 2); its 9 attention matmuls are not among them (coremltools never quantizes matmul)."""
    import copy

    from data.photos import photo_variants
    from export import with_target_defaults
    from export.convert import calibration_photos
    from export.targets.coreml.search import layer_search
    from mobilevit import get_config
    from mobilevit.preprocess import preprocess

    model = with_target_defaults(copy.deepcopy(synthetic_xxs), "coreml")
    _plant(model)
    cfg = get_config("xx_small")
    s = layer_search(model, calibration_photos(cfg, SMALL, count=16),
                     preprocess(photo_variants(8, seed=0), cfg, SMALL).numpy(), tmp_path, SMALL)
    assert len(s.layers) == 72 and not [n for n in s.layers if n.endswith(".matmul")]
    _planted_ffn_goes_first(s)
    # the published program (image in, classifier out: other op names) takes the layers by name: int8 weights and
    # int8 inputs on exactly their ops, 1 conv and 1 linear (by hand)
    from export.targets.coreml.convert import CoreMLOptions, convert_coreml

    opts = CoreMLOptions(labels=tuple(f"class {k}" for k in range(cfg.num_classes)))
    spec = convert_coreml(model, "w8a8", (SMALL,), opts, calibration=calibration_photos(cfg, SMALL, count=8),
                          int8_layers=["stem.conv", PLANTED]).get_spec()
    main = spec.mlProgram.functions["main"]
    block = main.block_specializations[main.opset]
    producer = {o.name: op.type for op in block.operations for o in op.outputs}
    int8 = sorted(op.type for op in block.operations if op.type in ("conv", "linear")
                  and producer.get(op.inputs["weight"].arguments[0].name) == "constexpr_affine_dequantize"
                  and producer.get(op.inputs["x"].arguments[0].name) == "dequantize")
    assert int8 == ["conv", "linear"]


def test_executorch_layer_times_match_the_profile_to_the_graph_and_charge_conversions_to_int8_layers():
    """``layer_times`` on the exported xx_small graph and a profile written by hand: one event per conv / linear
    / bmm node in graph order (1 ms each), conversions of 0.5 ms placed by hand. Expected by hand: a layer's time
    is its nodes' events (an attention matmul runs two bmm: 2 ms; the stem one conv: 1 ms), a conversion goes to
    the nearest int8 layer's event; the LayerNorm rewrite's linears belong to no layer. A profile with one GEMM
    event missing, or a bmm event where a linear runs, is refused."""
    import torch

    from data.synthetic import synthetic_model
    from export import with_target_defaults
    from export.config import TARGETS
    from export.errors import ConversionError
    from export.targets.executorch.search import layer_times
    from mobilevit.rewrites import apply_rewrites

    model = apply_rewrites(with_target_defaults(synthetic_model("xx_small"), "executorch"),
                           TARGETS["executorch"].rewrites).eval()
    graph = torch.export.export(model, (torch.zeros(1, 3, 256, 256),), strict=False).graph
    names = {torch.ops.aten.conv2d.default: "Convolution (NHWC, F32) IGEMM",
             torch.ops.aten.linear.default: "Fully Connected (NC, F32) GEMM",
             torch.ops.aten.bmm.default: "Batch Matrix Multiply (NC, F32) GEMM"}
    gemm = [(f"{names[n.target]} #{i}", 1.0) for i, n in enumerate(
        n for n in graph.nodes if n.op == "call_function" and n.target in names)]
    assert len(gemm) == 1 + 7 * 3 + 3 * 4 + 1 + 9 * 6 + 1 + 2 * 21 + 9 * 2  # by hand: convs, linears, norms, bmm
    plain = layer_times(graph, [("Transpose (ND, X32) #1", 0.3)] + gemm + [("Sigmoid (NC) #1", 0.2)])
    assert plain["stem.conv"] == 1.0 and plain["head"] == 1.0
    assert plain["stages.2.1.transformer.0.attn.matmul"] == 2.0
    assert plain["stages.2.1.transformer.0.attn.qkv.q"] == 1.0
    assert len(plain) == 99 and sum(plain.values()) == len(gemm) - 2 * 21  # the norms' linears: no layer
    # conversions: one before the stem's event, one after the head's, one right after the stem's (nearest: stem)
    events = [("Convert (NC) #1", 0.5), gemm[0], ("Convert (NC) #2", 0.5)] + gemm[1:] + [("Convert (NC) #3", 0.5)]
    charged = layer_times(graph, events, {"stem.conv", "head"})
    assert charged["stem.conv"] == 2.0 and charged["head"] == 1.5 and charged["stages.0.0.expand.conv"] == 1.0
    with pytest.raises(ConversionError, match="149 GEMM-like operator events for the graph's 150"):
        layer_times(graph, gemm[1:])
    swapped = list(gemm)
    first_linear = next(i for i, (name, _) in enumerate(gemm) if name.startswith("Fully"))
    swapped[first_linear] = ("Batch Matrix Multiply (NC, F32) GEMM #99", 1.0)
    with pytest.raises(ConversionError, match="does not compute"):
        layer_times(graph, swapped)
