"""How a segmentation artifact is judged (export.tasks) and drawn (benchmarks.segmentation), against values
worked out by hand; no conversion."""
import numpy as np
import pytest
import torch

from export.tasks import ClassMap, class_maps, mean_iou, segmentation_drift, segmentation_failures


def test_mean_iou_by_hand():
    ref = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    out = np.array([[0, 1, 1, 1], [0, 0, 1, 2]])
    # class 0: 3 shared of 4 | class 1: 3 shared of 5 (union) | class 2: 0 of 1 -> (0.75 + 0.6 + 0) / 3
    assert mean_iou(ref, out) == pytest.approx((3 / 4 + 3 / 5 + 0) / 3)
    assert mean_iou(ref, ref) == 1.0


def test_drift_of_class_maps_and_of_logits():
    ref = np.zeros((2, 4, 4), np.int32)
    out = ref.copy()
    out[1, 0, :2] = 3  # photo 2: 2 of 16 pixels differ
    d = segmentation_drift(ref, out.astype(np.float32), (4, 4))  # a runner returns float32
    assert d.pixel_agreement_min == pytest.approx(14 / 16) and d.pixel_agreement == pytest.approx(30 / 32)
    assert d.miou == pytest.approx((30 / 32 + 0) / 2) and d.max_abs is None  # class 0: 30/32, class 3: 0/2
    logits = np.random.default_rng(0).normal(size=(2, 3, 2, 2)).astype(np.float32)
    same = segmentation_drift(logits, logits.copy(), (8, 8))
    assert same.pixel_agreement == 1.0 and same.miou == 1.0 and same.max_abs == 0.0
    assert same.cosine_min == pytest.approx(1.0)
    flipped = -logits  # every pixel's argmax moves
    d = segmentation_drift(logits, flipped, (8, 8))
    assert d.cosine_min == pytest.approx(-1.0) and d.pixel_agreement < 0.5


def test_failures_name_each_broken_limit():
    from export.config import SegmentationTolerance

    d = segmentation_drift(np.zeros((1, 2, 2)), np.array([[[0, 0], [0, 1]]], np.float32), (2, 2))
    problems = segmentation_failures(d, SegmentationTolerance(1e-4, 0.9999, 0.99, 0.9), "512x512")
    assert len(problems) == 2 and "75.00% of one photo's pixels" in problems[0] and "mean IoU" in problems[1]


def test_class_map_is_the_argmax_of_upsampled_logits():
    """ClassMap (what a --output classmap artifact computes) equals class_maps (what validation does with
    logits), on a model whose logits are a fixed bilinear field."""
    class Tiny(torch.nn.Module):
        cfg = None

        def forward(self, x):  # [B, 3, 8, 8] -> logits [B, 3, 2, 2]
            return torch.nn.functional.avg_pool2d(x, 4)

    x = torch.rand(2, 3, 8, 8)
    got = ClassMap(Tiny())(x)
    assert got.dtype == torch.int32 and got.shape == (2, 8, 8)
    np.testing.assert_array_equal(got.numpy(), class_maps(Tiny()(x).numpy(), (8, 8)))


def test_voc_palette_colours():
    """PASCAL VOC's published colours: background black, aeroplane (128, 0, 0), person (192, 128, 128)."""
    from benchmarks.segmentation import voc_palette

    p = voc_palette(21)
    assert p[0].tolist() == [0, 0, 0] and p[1].tolist() == [128, 0, 0] and p[15].tolist() == [192, 128, 128]
    assert p[20].tolist() == [0, 64, 128] and len({tuple(c) for c in p}) == 21
