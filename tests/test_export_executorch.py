"""ExecuTorch exports: xx_small in every precision, x_small and small in fp32; each validated in a real
runtime (ExecuTorch's for XNNPACK, the Core ML reference executor for the Core ML program a .pte carries)."""
import numpy as np
import pytest
import torch

from export.targets.executorch.runner import delegation, extract_coreml, inspect_pte, runner
from tests.export_helpers import exported

XNNPACK_ONLY = {"segments": 1, "backends": {"XnnpackBackend": 1}, "non_delegated_ops": {}}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("executorch")


@pytest.fixture(scope="module")
def xxs(root):
    return exported(root, "executorch", "xx_small", ("fp32", "int8", "coreml-fp16"))


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_xx_small_xnnpack_is_one_delegate_and_validated_in_executorch(xxs, precision):
    res = xxs[precision]
    m = res.manifest
    assert m["validation"]["passed"] and m["validation"]["runtime"].startswith("executorch 1.5.1"), m["validation"]
    assert m["delegation"] == XNNPACK_ONLY
    assert delegation(res.artifact) == XNNPACK_ONLY  # read back from the published file itself
    assert m["rewrites"] == ["layernorm_as_linear", "qkv_as_three_linears", "pool_keepdim"]
    assert m["attention_layout"] == "bmm" and m["patch_strategy"] == "reference"
    assert m["input"]["shape"] == [1, 3, 256, 256] and m["output"][0]["shape"] == [1, 1000]
    assert m["tool_versions"]["executorch"] == "1.5.1"


def test_int8_is_quantized_smaller_and_drifts_more_than_fp32(xxs):
    fp32, int8 = xxs["fp32"].artifact, xxs["int8"].artifact
    assert int8.stat().st_size < 0.6 * fp32.stat().st_size  # int8 linears: 2.8 MB vs 5.2 MB measured
    d32 = xxs["fp32"].manifest["validation"]["by_size"]["256"]
    d8 = xxs["int8"].manifest["validation"]["by_size"]["256"]
    assert d32["max_abs_rel"] < 1e-4 and d32["top1_agreement"] == 1.0
    assert d8["max_abs_rel"] > 10 * d32["max_abs_rel"]  # really computed in int8, not fp32 again
    from export.config import int8_recipe

    recipe = xxs["int8"].manifest["int8_recipe"]
    assert recipe["float_kinds"] == list(int8_recipe("executorch", "int8").float_kinds)
    assert recipe["source"] == "recipe" and "qkv" in recipe["int8_kinds"]


def test_coreml_delegated_pte_is_validated_through_the_reference_executor(xxs, tmp_path):
    res = xxs["coreml-fp16"]
    m = res.manifest
    assert m["delegation"] == {"segments": 1, "backends": {"CoreMLBackend": 1}, "non_delegated_ops": {}}
    assert m["validation"]["passed"]
    assert m["validation"]["runtime"].startswith("coreml-reference (.pte)")
    assert "extracted from the .pte" in m["validation"]["runtime"]
    packages = extract_coreml(res.artifact, tmp_path)
    assert len(packages) == 1 and (packages[0] / "Manifest.json").exists()
    from export.targets.coreml.graph import inspect_coreml

    ops = inspect_coreml(packages[0]).ops
    assert ops.get("linear", 0) > 0 and "layer_norm" not in ops  # the rewritten graph, in Core ML ops


def test_runners_with_different_threads_share_the_process_pool(xxs, photos):
    """ExecuTorch's thread pool is process-wide; two runners with different threads, called in turn,
    must both keep working (a resized pool breaks methods loaded before; the runner reloads)."""
    from data.synthetic import synthetic_model
    from mobilevit.preprocess import preprocess

    x = preprocess(photos[:2], synthetic_model("xx_small").cfg, 256).numpy()
    one, two = runner(xxs["fp32"].artifact, 1), runner(xxs["fp32"].artifact, 2)
    outs = [r(x) for r in (one, two, one, two)]
    for y in outs[1:]:
        np.testing.assert_allclose(y, outs[0], rtol=0, atol=1e-4 * np.abs(outs[0]).max())


def test_without_the_rewrites_xnnpack_leaves_ops_on_portable_kernels(tmp_path):
    """The public graph (nn.LayerNorm, fused qkv, 4-D matmuls, mean without keepdim) is cut into many
    delegate segments: what the target's rewrites exist to fix (issue 12 measured 50 segments)."""
    from data.synthetic import synthetic_model
    from export import convert

    pte = convert(synthetic_model("xx_small"), "executorch", "fp32", tmp_path, exporter="as-is")
    d = delegation(pte)
    assert d == {"segments": 50, "backends": {"XnnpackBackend": 50},  # executorch 1.5.1, as the issue measured
                 "non_delegated_ops": {"aten::expand_copy.out": 36, "aten::native_layer_norm.out": 21,
                                       "aten::split_with_sizes_copy.out": 9, "aten::mean.out": 1}}
    report = inspect_pte(pte)
    assert report.ops["delegate:XnnpackBackend"] == d["segments"]


@pytest.mark.parametrize("variant", ["x_small", "small"])
def test_larger_variants_export_in_fp32(root, variant):
    res = exported(root, "executorch", variant, ("fp32",))["fp32"]
    assert res.manifest["validation"]["passed"]
    assert res.manifest["delegation"] == XNNPACK_ONLY


def test_a_file_that_is_not_a_pte_is_refused_with_the_fix(tmp_path):
    from export.errors import ExportConfigError
    from export.runners import make_runner

    bad = tmp_path / "model.pte"
    bad.write_bytes(b"not a program")
    with pytest.raises(ExportConfigError, match="not an ExecuTorch program.*python -m export executorch"):
        make_runner(bad)


def test_unknown_option_and_precision_are_refused():
    from export import convert
    from export.errors import ExportConfigError

    with pytest.raises(ExportConfigError, match="deployment target 'iOS9'; choose one of: iOS16, iOS17, iOS18"):
        convert(torch.nn.Identity(), "executorch", "fp32", "unused", coreml_deployment_target="iOS9")
    with pytest.raises(ExportConfigError, match="no option dynamic_batch; its options are: coreml_deployment_target"):
        convert(torch.nn.Identity(), "executorch", "fp32", "unused", dynamic_batch=True)
    with pytest.raises(ExportConfigError, match="fp32, int8, coreml-fp16"):
        convert(torch.nn.Identity(), "executorch", "fp16", "unused")


def test_int8_filter_follows_the_float_kinds(synthetic_xxs):
    """The PT2E node filter quantizes exactly the conv / linear / bmm nodes of the kinds not kept float.

    Expected counts come from xx_small's architecture (3 MobileViT blocks with 2, 4 and 3 transformer
    layers = 9 attentions; 7 inverted residuals), not from ``mobilevit.layers``."""
    import copy

    from export import with_target_defaults
    from export.config import TARGETS
    from export.targets.executorch.program import int8_filter
    from mobilevit.layers import KINDS
    from mobilevit.rewrites import apply_rewrites

    m = apply_rewrites(copy.deepcopy(with_target_defaults(synthetic_xxs, "executorch")), TARGETS["executorch"].rewrites)
    graph = torch.export.export(m, (torch.zeros(1, 3, 256, 256),), strict=False).graph
    calls = [n for n in graph.nodes if n.op == "call_function"]

    def chosen(float_kinds, op):
        keep = int8_filter(tuple(float_kinds))
        return sum(1 for n in calls if n.target == op and keep(n))

    linear, conv, bmm = torch.ops.aten.linear.default, torch.ops.aten.conv2d.default, torch.ops.aten.bmm.default
    assert chosen((), linear) == 9 * 6 + 1  # q, k, v, proj, fc1, fc2 per layer + head; never the norms' 2 x 21
    assert chosen((), conv) == 1 + 7 * 3 + 3 * 4 + 1  # stem, inverted residuals, MobileViT blocks, conv_exp
    assert chosen((), bmm) == 9 * 2
    everything_else = [k for k in KINDS if k != "depthwise"]
    assert chosen(everything_else, conv) == 7 and chosen(everything_else, linear) == 0
    only_ffn = [k for k in KINDS if k != "ffn"]
    assert chosen(only_ffn, linear) == 9 * 2 and chosen(only_ffn, bmm) == 0
    assert chosen(KINDS, linear) + chosen(KINDS, conv) + chosen(KINDS, bmm) == 0
    assert all(int8_filter(())(n) for n in graph.nodes if n.op == "placeholder")  # weights are asked about too
    add = next(n for n in calls if n.target == torch.ops.aten.add.Tensor)
    assert not int8_filter(())(add)


def test_the_ptq_quantizer_quantizes_as_xnnpacks_own(synthetic_xxs):
    """``ptq_quantizer`` (XNNPACK's quantizer without its QAT-only conv + batch_norm patterns, which exported their
    pattern graphs again in every ``prepare_pt2e``) gives the program XNNPACK's own quantizer gives: the same
    converted graph and the same outputs, bit for bit, for every layer int8 and for one layer alone (a
    depthwise conv, whose BatchNorm was folded before annotation). The peer is ExecuTorch's quantizer itself."""
    import copy

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from export import with_target_defaults
    from export.config import TARGETS
    from export.targets.executorch.program import _export, layer_filter, ptq_quantizer
    from export.targets.executorch.search import graph_layers
    from mobilevit.rewrites import apply_rewrites

    m = apply_rewrites(copy.deepcopy(with_target_defaults(synthetic_xxs, "executorch")), TARGETS["executorch"].rewrites)
    graph = _export(m.eval(), torch.zeros(1, 3, 64, 64)).module()
    layers = graph_layers(graph.graph)
    photos = torch.randn(3, 1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    depthwise = "stages.1.0.dw.conv"
    assert depthwise in layers

    def program(quantizer_class, int8):
        q = quantizer_class().set_global(get_symmetric_quantization_config(is_per_channel=True))
        q.set_filter_function(layer_filter(int8.__contains__))
        prepared = prepare_pt2e(copy.deepcopy(graph), q)
        for x in photos[:2]:
            prepared(x)
        converted = convert_pt2e(prepared)
        weights = sum(1 for n in converted.graph.nodes if "dequantize_per_channel" in str(n.target))
        with torch.no_grad():
            return converted.code, converted(photos[2]), weights

    for int8 in (set(layers), {depthwise}):
        code, out, weights = program(ptq_quantizer(), int8)
        want_code, want_out, _ = program(XNNPACKQuantizer, int8)
        assert code == want_code and torch.equal(out, want_out)
        # int8 weights, by hand: every layer: 35 convs + 55 linears (test_int8_filter_follows_the_float_kinds's
        # counts; the 9 attention matmuls have none); the depthwise conv alone: its own
        assert weights == (90 if len(int8) > 1 else 1)
