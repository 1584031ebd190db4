"""What every target's int8 shares (export.int8): the options check, the recipe resolution, the layer matcher.

No conversion here: the matcher is fed op lists written out by hand from the model's layer list.
"""
import pytest
from torch import nn

from export.config import FLOAT_KINDS, INT8_RECIPES, load, target_config
from export.errors import ExportConfigError
from export.int8 import Int8Options, LayerMatchError, LayerOp, float_kinds, match_layers, ops_by_kind, ops_of_kinds
from mobilevit.layers import layers


@pytest.mark.parametrize("target", ["onnx", "tflite", "coreml", "executorch"])
def test_every_target_options_share_the_int8_check(target):
    cls = load(target_config(target).options)
    assert issubclass(cls, Int8Options) and cls.target == target
    with pytest.raises(ExportConfigError, match="unknown layer kind.*mlp; choose from: stem"):
        cls(float_kinds=("mlp",))
    assert cls(float_kinds=["ffn", "stem"]).float_kinds == ("ffn", "stem")  # any sequence, kept as a tuple


@pytest.mark.parametrize("target, int8, other", [
    ("onnx", ("int8",), ("fp32", "fp16", "int8_dynamic")),
    ("tflite", ("int8",), ("fp32", "fp16", "int8_dynamic")),
    ("executorch", ("int8",), ("fp32", "coreml-fp16")),
    ("coreml", ("int8", "w8a8"), ("fp16", "fp32", "palettize8")),  # int8 = weight-only: no recipe, takes kinds
])
def test_float_kinds_are_refused_for_every_precision_that_is_not_int8(target, int8, other):
    opts = load(target_config(target).options)(float_kinds=("stem",))
    assert opts.int8_precisions() == int8
    opts.check_precisions(int8)
    for precision in other:
        with pytest.raises(ExportConfigError, match=f"applies to {target} {', '.join(int8)}, not to {precision}:"):
            opts.check_precisions(int8 + (precision,))
    load(target_config(target).options)().check_precisions(other)  # no float_kinds: nothing to refuse


def test_none_means_the_recipe():
    assert float_kinds("onnx", "int8", None) == FLOAT_KINDS == INT8_RECIPES[("onnx", "int8")].float_kinds
    assert float_kinds("coreml", "w8a8", None) == FLOAT_KINDS
    assert float_kinds("coreml", "int8", None) == ()  # weight-only int8 has no recipe: nothing float
    assert float_kinds("tflite", "int8", ()) == ()  # given (even empty) wins
    assert float_kinds("executorch", "int8", ["ffn"]) == ("ffn",)


def _ops(model, heads=2):
    """One op per weighted layer (weight = the module's shape) and ``heads`` x 2 activation matmuls per attention."""
    modules = dict(model.named_modules())
    ops = []
    for i, layer in enumerate(layers(model)):
        if layer.weighted:
            ops.append(LayerOp(f"op{i}", layer.op.upper(), layer.op, tuple(modules[layer.name].weight.shape)))
        else:
            ops += [LayerOp(f"op{i}.{h}", "MATMUL", "matmul", None) for h in range(2 * heads)]
    return ops


def _shape(module):
    return (tuple(module.weight.shape),)


def test_the_matcher_gives_each_layer_its_ops_in_model_order(synthetic_xxs):
    ops = _ops(synthetic_xxs)
    matches = match_layers("toy", synthetic_xxs, ops, _shape)
    assert [layer for layer, _ in matches] == layers(synthetic_xxs)
    for i, (layer, ids) in enumerate(matches):
        assert ids == ([f"op{i}"] if layer.weighted else [f"op{i}.{h}" for h in range(4)])
    by_kind = ops_by_kind(matches)
    assert by_kind["stem"] == ["op0"] and len(by_kind["attn_matmul"]) == 4 * 9  # xx_small: 9 transformer layers
    assert ops_of_kinds(matches, ("stem", "classifier")) == ["op0", f"op{len(matches) - 1}"]


def test_the_matcher_names_the_target_the_op_and_the_layer(synthetic_xxs):
    ops = _ops(synthetic_xxs)
    with pytest.raises(LayerMatchError, match=r"toy: stem.conv \(stem\) expects conv weight \(16, 3, 3, 3\); the "
                                              r"graph's next weight-bearing op is CONV 'op1' \(weight \(32, 16, 1, 1"):
        match_layers("toy", synthetic_xxs, ops[1:], _shape)
    with pytest.raises(LayerMatchError, match="toy: 1 weight-bearing ops belong to no layer of the model "
                                              r"\(first: LINEAR 'extra'"):
        match_layers("toy", synthetic_xxs, ops + [LayerOp("extra", "LINEAR", "linear", (1, 1))], _shape)
    first_matmul = next(i for i, op in enumerate(ops) if op.family == "matmul")
    no_attention = ops[:first_matmul] + [op for op in ops[first_matmul:] if op.family != "matmul"]
    with pytest.raises(LayerMatchError, match=r"attn.matmul \(attn_matmul\) expects matmuls of two activations"):
        match_layers("toy", synthetic_xxs, no_attention, _shape)
    linear_as_conv = [LayerOp(o.id, o.type, "conv" if o.family == "linear" else o.family, o.weight) for o in ops]
    with pytest.raises(LayerMatchError, match=r"\(qkv\) expects linear weight"):
        match_layers("toy", synthetic_xxs, linear_as_conv, _shape)
    with pytest.raises(LayerMatchError, match="the graph has no weight-bearing op left"):
        match_layers("toy", synthetic_xxs, ops[:-1], _shape)


def test_a_weight_may_match_in_any_form_the_target_allows():
    model = nn.Sequential()
    model.add_module("head", nn.Linear(4, 3))  # mobilevit.layers: the classifier
    ops = [LayerOp("gemm", "MatMul", "linear", (4, 3))]  # stored transposed, as an ONNX MatMul keeps it
    with pytest.raises(LayerMatchError):
        match_layers("toy", model, ops, _shape)
    both = match_layers("toy", model, ops, lambda m: (tuple(m.weight.shape), tuple(m.weight.shape)[::-1]))
    assert [(layer.kind, ids) for layer, ids in both] == [("classifier", ["gemm"])]
