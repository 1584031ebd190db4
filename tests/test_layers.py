"""Layer kinds (the vocabulary of int8 recipes): counts and MACs against the architecture, by hand. No conversion."""
from __future__ import annotations

import copy

import pytest

from mobilevit.layers import KINDS, UnknownKindError, check_kinds, kind_of, layer_macs, layers
from tests.export_helpers import XXS_LAYER_COUNTS as XXS_COUNTS  # counted by hand from the architecture


def test_every_layer_has_a_kind_in_execution_order(synthetic_xxs):
    found = layers(synthetic_xxs)
    counts = {k: sum(1 for layer in found if layer.kind == k) for k in KINDS}
    assert counts == XXS_COUNTS
    names = [layer.name for layer in found]
    assert names[:4] == ["stem.conv", "stages.0.0.expand.conv", "stages.0.0.dw.conv", "stages.0.0.project.conv"]
    i = names.index("stages.2.1.transformer.0.attn.qkv")
    assert names[i + 1:i + 3] == ["stages.2.1.transformer.0.attn.matmul", "stages.2.1.transformer.0.attn.proj"]
    assert names[-2:] == ["conv_exp.conv", "head"]
    assert {layer.stage for layer in found} == {"stem", "0", "1", "2", "3", "4", "head"}


def test_the_rewritten_model_has_the_same_layers_with_three_qkv(synthetic_xxs):
    from mobilevit.rewrites import apply_rewrites

    m = apply_rewrites(copy.deepcopy(synthetic_xxs), ("layernorm_as_linear", "qkv_as_three_linears"))
    found = layers(m)
    assert sum(1 for layer in found if layer.kind == "qkv") == 3 * 9
    assert not any(".norm" in layer.name for layer in found)  # the norms' mean/variance linears are no layer
    assert kind_of("stages.3.1.transformer.2.attn.qkv.v") == "qkv"
    assert kind_of("stages.3.1.transformer.2.attn.matmul") == "attn_matmul"
    assert kind_of("stages.3.1.transformer.2.norm1") is None


def test_macs_per_layer_by_hand(synthetic_xxs):
    macs = layer_macs(synthetic_xxs, 256)
    assert macs["stem.conv"] == 128 * 128 * 16 * 3 * 3 * 3  # 16 filters of 3x3x3 at 128x128
    # stage 2 attention: 32x32 map, 2x2 patches -> 4 sequences of 256 tokens, width 64; q.k^T and attn.v
    assert macs["stages.2.1.transformer.0.attn.matmul"] == 2 * 4 * 256 * 256 * 64
    assert macs["head"] == 320 * 1000
    from mobilevit import count_macs

    assert sum(macs.values()) == count_macs(synthetic_xxs, 256)


def test_unknown_kinds_are_refused_with_the_valid_ones():
    assert check_kinds(["ffn", "qkv"]) == ("ffn", "qkv")
    with pytest.raises(UnknownKindError, match="unknown layer kind.*conv3x3.*choose from: stem, expand"):
        check_kinds(["conv3x3"])
