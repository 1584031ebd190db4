"""Model rewrites (``mobilevit.rewrites``) and the ``bmm`` attention layout: equal to the reference,
idempotent, and they remove the ops they exist to remove from the exported graph (no conversion)."""
import copy
from collections import Counter

import pytest
import torch

from data.synthetic import synthetic_model
from mobilevit import build
from mobilevit.model import ATTENTION_LAYOUTS
from mobilevit.rewrites import REWRITES, UnknownRewriteError, apply_rewrites, get_rewrite

ALL = tuple(REWRITES)


@pytest.fixture(scope="module")
def model():
    return synthetic_model("xx_small")


@pytest.fixture(scope="module")
def x(photos):
    from mobilevit.preprocess import preprocess

    return preprocess(photos[:2], synthetic_model("xx_small").cfg, 256)


def _aten_ops(model, x) -> Counter:
    ep = torch.export.export(model, (x[:1],), strict=False)
    return Counter(str(n.target) for n in ep.graph.nodes if n.op == "call_function")


@pytest.mark.parametrize("layout", ATTENTION_LAYOUTS)
def test_attention_layouts_are_equal(model, x, layout):
    ref = model(x)
    other = copy.deepcopy(model).set_attention(layout)
    torch.testing.assert_close(other(x), ref, rtol=0, atol=2e-5 * ref.abs().max().item())


@pytest.mark.parametrize("name", ALL)
def test_each_rewrite_keeps_the_output_and_the_input_model(model, x, name):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = model(x)
    rewritten = apply_rewrites(copy.deepcopy(model), [name])
    assert type(rewritten) is type(model)
    torch.testing.assert_close(rewritten(x), ref, rtol=0, atol=2e-5 * ref.abs().max().item())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_all_rewrites_together_are_idempotent(model, x):
    once = apply_rewrites(copy.deepcopy(model).set_attention("bmm"), ALL)
    twice = apply_rewrites(copy.deepcopy(once), ALL)
    assert [type(m).__name__ for m in once.modules()] == [type(m).__name__ for m in twice.modules()]
    assert torch.equal(once(x), twice(x))


def test_rewrites_remove_the_ops_xnnpack_cannot_take(model, x):
    """ExecuTorch-tester style: the ops that stayed on portable kernels are gone from the exported graph."""
    naive = _aten_ops(model, x)
    assert naive["aten.layer_norm.default"] == 21  # 9 transformer layers x 2 + 3 final norms
    assert naive["aten.chunk.default"] == 9  # the fused qkv, once per layer
    assert naive["aten.matmul.default"] == 18  # 4-D attention matmuls
    done = _aten_ops(apply_rewrites(copy.deepcopy(model).set_attention("bmm"), ALL), x)
    for op in ("aten.layer_norm.default", "aten.chunk.default", "aten.split.Tensor", "aten.matmul.default"):
        assert done[op] == 0, (op, done[op])
    assert done["aten.bmm.default"] == 18
    assert done["aten.rsqrt.default"] == 21
    assert done["aten.linear.default"] == naive["aten.linear.default"] + 2 * 9 + 2 * 21  # q,k,v and 2 means
    means = [n for n in torch.export.export(apply_rewrites(copy.deepcopy(model), ["pool_keepdim"]), (x[:1],),
                                            strict=False).graph.nodes if n.target == torch.ops.aten.mean.dim]
    assert len(means) == 1 and means[0].args[1] == [2, 3] and means[0].args[2] is True


def test_layernorm_rewrite_only_takes_last_axis_norms():
    from mobilevit.rewrites import LinearMeanLayerNorm

    with pytest.raises(ValueError, match="last axis"):
        LinearMeanLayerNorm(torch.nn.LayerNorm([4, 4]))


def test_unknown_rewrite_names_the_valid_ones():
    with pytest.raises(UnknownRewriteError) as e:
        get_rewrite("fuse_everything")
    assert all(name in str(e.value) for name in ALL)


def test_features_only_model_takes_the_rewrites():
    m = build("xx_small", features_only=True)
    feats = apply_rewrites(copy.deepcopy(m), ALL)(torch.zeros(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [16, 24, 48, 64, 80]


def test_reversed_input_channels_take_rgb_where_the_model_took_bgr(model, photos):
    """The TFLite target's interface rewrite: the copy fed the RGB crops gives the model's logits on the
    BGR ones (the preprocessing written out by hand here: pixel / 255, channels reversed)."""
    import numpy as np

    from mobilevit.preprocess import resize_and_crop
    from mobilevit.rewrites import reverse_input_channels

    rgb = np.stack([resize_and_crop(p, 256) for p in photos[:2]]).astype(np.float32) / 255  # [2, 256, 256, 3]
    rgb = torch.from_numpy(rgb).permute(0, 3, 1, 2)  # -> [2, 3, 256, 256], R G B
    bgr = rgb[:, [2, 1, 0]]  # what the public weights expect
    flipped = reverse_input_channels(copy.deepcopy(model))
    with torch.no_grad():
        ref = model(bgr)
        torch.testing.assert_close(flipped(rgb), ref, rtol=0, atol=2e-5 * ref.abs().max().item())
        assert (flipped(bgr) - ref).abs().max() > 100 * 2e-5 * ref.abs().max()  # the order matters to the model
    assert torch.equal(reverse_input_channels(flipped).stem[0].weight, model.stem[0].weight)  # twice = undone
