"""Selective full int8 for TFLite (export.targets.tflite): kinds map onto the graph, floated ops stay float."""
import pytest
from torch import nn

from export.targets.tflite import quantize as T
from mobilevit.layers import UnknownKindError


def test_weight_shapes_in_tflite_layout():
    assert T._tflite_weight_shape(nn.Conv2d(16, 32, 1)) == (32, 1, 1, 16)
    assert T._tflite_weight_shape(nn.Conv2d(48, 48, 3, groups=48)) == (1, 3, 3, 48)
    assert T._tflite_weight_shape(nn.Linear(64, 192)) == (192, 64)


def test_unknown_kind_is_refused_before_any_work():
    with pytest.raises(UnknownKindError, match="choose from"):
        T.denylist(None, b"", float_kinds=("attention",))


def test_float_ops_refuse_typos_and_kind_ops():
    with pytest.raises(Exception, match="not TFLite builtin op names"):
        T.denylist(None, _empty_tflite(), float_ops=("SOFTMAXX",))
    with pytest.raises(Exception, match="carry layer kinds"):
        T.denylist(None, _empty_tflite(), float_ops=("CONV_2D",))


def _empty_tflite() -> bytes:
    """A flatbuffer with one empty subgraph (enough for denylist's argument checks)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT()
    model.version = 3
    model.subgraphs = [schema.SubGraphT()]
    model.subgraphs[0].operators, model.subgraphs[0].tensors = [], []
    model.buffers = [schema.BufferT()]
    builder = flatbuffers.Builder(64)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
