"""The reference model: public sizes, MACs, patch strategies, sizes, features."""
import pytest
import torch

import mobilevit
from mobilevit import InputSizeError, build, count_macs, count_params
from mobilevit.config import UnknownVariantError, get_config
from mobilevit.patches import STRATEGIES, UnknownPatchStrategyError, get_strategy

PARAMS = {"xx_small": 1_272_024, "x_small": 2_317_848, "small": 5_578_632}
MACS_G = {"xx_small": 0.407, "x_small": 1.026, "small": 2.001}
# The MobileViT v1 paper / model cards, at 256x256: parameters (M) and GFLOPs as the paper counts them (MACs).
PAPER = {"xx_small": (1.27, 0.42), "x_small": (2.32, 1.05), "small": (5.58, 2.03)}


def _hf_model(variant):
    """transformers' own MobileViT, built from the apple/mobilevit-* config: an architecture we did not write."""
    from checkpoint_helpers import HF_CONFIGS
    from transformers import MobileViTConfig, MobileViTForImageClassification

    return MobileViTForImageClassification(MobileViTConfig(num_labels=1000, **HF_CONFIGS[variant])).eval()


def _flop_counter_macs(model, size=256):
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("variant", PARAMS)
def test_parameter_count_matches_transformers_and_the_paper(variant):
    """Exactly transformers' parameter count for the same variant; the paper's figure to its 2 decimals."""
    ours = count_params(build(variant))
    hf = sum(p.numel() for p in _hf_model(variant).parameters())
    assert ours == hf == PARAMS[variant]
    assert ours / 1e6 == pytest.approx(PAPER[variant][0], abs=0.005)
    assert get_config(variant).public.params_m == PAPER[variant][0]  # the table quotes the paper


@pytest.mark.parametrize("variant", PARAMS)
def test_macs_match_transformers_and_are_within_5_percent_of_the_paper(variant):
    """Same MACs as transformers' model; within 5% of the paper (counting conventions differ)."""
    macs = count_macs(build(variant))
    assert macs == _flop_counter_macs(_hf_model(variant))
    assert macs / 1e9 == pytest.approx(MACS_G[variant], abs=0.002)
    assert abs(macs / 1e9 - PAPER[variant][1]) / PAPER[variant][1] < 0.05
    assert get_config(variant).public.gflops == PAPER[variant][1]


@pytest.mark.parametrize("variant", PARAMS)
@pytest.mark.parametrize("size", [(160, 160), (256, 256), (224, 320)])
def test_every_patch_strategy_equals_reference(variant, size):
    torch.manual_seed(0)
    model = build(variant)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = model(x)
        for name in STRATEGIES:
            out = model.set_patches(name)(x)
            assert torch.equal(out, ref), name
    model.set_patches("reference")


@pytest.mark.parametrize("variant", PARAMS)
def test_split_attention_equals_batched(variant):
    torch.manual_seed(1)
    model = build(variant, patches="slice")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(model.set_attention("split")(x), ref, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="batched, split"):
        model.set_attention("fused")


@pytest.mark.parametrize("name", list(STRATEGIES))
@pytest.mark.parametrize("shape", [(1, 8, 4, 6), (3, 5, 8, 8), (2, 16, 16, 2)])
def test_unfold_fold_roundtrip_and_grouping(name, shape):
    """Each strategy inverts itself and groups the same pixels as the reference."""
    s, ref = get_strategy(name), get_strategy("reference")
    x = torch.randn(shape)
    t = s.unfold(x, 2)
    assert t.shape == (shape[0] * 4, shape[2] * shape[3] // 4, shape[1])
    assert torch.equal(s.fold(t, shape, 2), x)
    # Same multiset of sequences: sort the sequence axis and compare.
    a = torch.sort(t.reshape(-1, t.shape[-1] * t.shape[-2]), dim=0).values
    b = torch.sort(ref.unfold(x, 2).reshape(-1, t.shape[-1] * t.shape[-2]), dim=0).values
    assert torch.equal(a, b)


@pytest.mark.parametrize("size", [(250, 256), (256, 100), (16, 16)])
def test_bad_input_size_is_a_clear_error(size):
    with pytest.raises(InputSizeError, match="multiples of 32"):
        build("xx_small")(torch.zeros(1, 3, *size))


def test_wrong_channels_is_a_clear_error():
    with pytest.raises(InputSizeError, match=r"\[B, 3, H, W\]"):
        build("xx_small")(torch.zeros(1, 4, 256, 256))


def test_features_only_returns_five_stages():
    model = build("x_small", features_only=True)
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 256, 256))
    assert [tuple(f.shape) for f in feats] == [
        (1, 32, 128, 128), (1, 48, 64, 64), (1, 64, 32, 32), (1, 80, 16, 16), (1, 96, 8, 8)]
    model = build("x_small", features_only=True, out_indices=(2, -1))
    with torch.no_grad():
        assert [f.shape[1] for f in model(torch.randn(1, 3, 256, 256))] == [64, 96]


def test_unknown_names_list_the_choices():
    with pytest.raises(UnknownVariantError, match="xx_small, x_small, small"):
        get_config("medium")
    with pytest.raises(UnknownPatchStrategyError, match="reference"):
        get_strategy("magic")


def test_variant_table_metadata():
    for name, cfg in mobilevit.VARIANTS.items():
        assert cfg.input_size == 256 and cfg.preprocessing.channel_order == "BGR"
        assert set(cfg.public.checkpoints) == {"mmpretrain", "cvnets", "timm", "huggingface"}
        assert cfg.name == name


def test_synthetic_weights_stay_out_of_denormals(synthetic_xxs):
    from data.photos import sample_batch

    x = sample_batch(synthetic_xxs.cfg, 4)
    with torch.no_grad():
        feats = synthetic_xxs.forward_stages(x)
        logits = synthetic_xxs(x)
    for f in feats:
        assert 0.05 < f.std().item() < 20
    assert logits.std().item() > 0.05
    assert len(set(logits.argmax(1).tolist())) > 1  # photos do not all collapse to one class


def test_synthetic_weights_are_the_same_at_any_torch_thread_count():
    """Calibrated with torch at 2 threads and at 1 (each time from scratch), the synthetic weights are the same bits:
    a second export with synthetic weights is the same file whatever threads the process had been left at (2
    threads used to sum the BatchNorm statistics in another order: a Core ML export's weight.bin differed in CI)."""
    from data.synthetic import forget_synthetic_weights, synthetic_model
    from mobilevit.threads import torch_threads

    weights = []
    with torch_threads():
        for t in (2, 1):
            torch.set_num_threads(t)
            forget_synthetic_weights()  # calibrated again, not the process's copy
            weights.append(synthetic_model("xx_small").state_dict())
            assert torch.get_num_threads() == t  # the caller's count is left as it was
    assert all(torch.equal(v, weights[1][k]) for k, v in weights[0].items())


def test_torch_threads_gives_the_caller_its_count_back_also_on_error():
    """The block runs at the count asked (or sets its own, with ``None``); after it, on return or on an exception,
    torch has the count it had before (by hand: 1 before, 2 inside)."""
    from mobilevit.threads import torch_threads

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch_threads(2):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
        with pytest.raises(KeyError), torch_threads(2):
            raise KeyError("work that fails")
        assert torch.get_num_threads() == 1
        with torch_threads():
            torch.set_num_threads(2)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
