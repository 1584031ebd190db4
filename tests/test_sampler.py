"""The multi-scale sampler yields the sizes and batch sizes it promises and covers every sample once."""
import pytest

from training.sampler import MultiScaleSampler


def _sampler(**kw):
    args = dict(num_samples=1000, sizes=(160, 192, 256, 320), base_size=256, base_batch=32, seed=3)
    args.update(kw)
    return MultiScaleSampler(**args)


def test_batch_size_keeps_pixels_per_batch_constant():
    s = _sampler()
    assert [s.batch_size(x) for x in (160, 192, 256, 320)] == [82, 57, 32, 20]
    for size in (160, 192, 256, 320):
        pixels = s.batch_size(size) * size * size
        assert abs(pixels - 32 * 256 * 256) / (32 * 256 * 256) < 0.05
    assert _sampler(base_batch=1).batch_size(320) == 1  # never zero


def test_every_sample_exactly_once_per_epoch_with_promised_sizes():
    s = _sampler()
    for epoch in range(3):
        s.set_epoch(epoch)
        seen, sizes = [], set()
        batches = list(s)
        for size, idx in batches:
            assert size in (160, 192, 256, 320)
            sizes.add(size)
            seen += idx
        assert sorted(seen) == list(range(1000))
        assert all(len(idx) == s.batch_size(size) for size, idx in batches[:-1])
        assert len(batches[-1][1]) <= s.batch_size(batches[-1][0])
        assert sizes == {160, 192, 256, 320}
        assert len(s) == len(batches)


def test_deterministic_per_seed_and_epoch_and_different_across_epochs():
    a, b = _sampler(), _sampler()
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    assert list(_sampler(seed=4)) != list(b)


def test_no_shuffle_uses_base_size_in_order():
    batches = list(_sampler(shuffle=False, num_samples=70))
    assert [size for size, _ in batches] == [256, 256, 256]
    assert [i for _, idx in batches for i in idx] == list(range(70))


@pytest.mark.parametrize("kw", [dict(num_samples=0), dict(sizes=()), dict(base_batch=0)])
def test_bad_arguments(kw):
    with pytest.raises(ValueError):
        _sampler(**kw)
