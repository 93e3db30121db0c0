import pytest
import torch

from data_pipelines.augment import AugmentConfig, ColorJitter, Compose, RandomCrop, RandomShift, Resize


def images(b=3, n=2, h=24, w=32, seed=0):
    return torch.rand(b, n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_resize_always_applies():
    x = images()
    assert Resize((16, 20))(x, train=False).shape == (3, 2, 3, 16, 20)
    assert Resize((24, 32))(x) is x


@pytest.mark.parametrize("t", [RandomShift(3), RandomCrop(0.8), ColorJitter(0.3, 0.3, 0.3)])
def test_deterministic_identity_in_eval_and_varied(t):
    x = images()
    a = t(x, generator=torch.Generator().manual_seed(5))
    b = t(x, generator=torch.Generator().manual_seed(5))
    c = t(x, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert t(x, train=False) is x
    # each camera of each sample draws its own parameters
    assert not torch.allclose(a[0, 0] - x[0, 0], a[0, 1] - x[0, 1])


def test_shift_is_an_integer_translation():
    x = images(b=1, n=1, h=16, w=16)
    y = RandomShift(2)(x, generator=torch.Generator().manual_seed(1))
    found = [
        (dy, dx)
        for dy in range(-2, 3)
        for dx in range(-2, 3)
        if torch.equal(y[0, 0, :, 2:-2, 2:-2], x[0, 0, :, 2 + dy : 14 + dy, 2 + dx : 14 + dx])
    ]
    assert len(found) == 1


def test_color_jitter_identity_at_zero_and_brightness_only():
    x = images()
    torch.testing.assert_close(ColorJitter(0, 0, 0)(x), x)
    y = ColorJitter(0.5, 0, 0)(x * 0.5, generator=torch.Generator().manual_seed(0))
    ratio = y / (x * 0.5)  # one brightness factor per (sample, camera)
    flat = ratio.flatten(2)
    torch.testing.assert_close(flat.min(-1).values, flat.max(-1).values, rtol=1e-4, atol=1e-4)


def test_compose_from_config_matches_manual():
    cfg = AugmentConfig(crop_scale=0.9, shift_pad=1)
    pipe = cfg.build()
    x = images()
    manual = Compose((RandomCrop(0.9), RandomShift(1), ColorJitter()))
    torch.testing.assert_close(
        pipe(x, generator=torch.Generator().manual_seed(2)), manual(x, generator=torch.Generator().manual_seed(2))
    )
    assert pipe(x, train=False) is x
    assert AugmentConfig(enabled=False).build() is None
    assert AugmentConfig(crop_scale=1, brightness=0, contrast=0, saturation=0).build() is None
    with pytest.raises(ValueError, match="augment.crop_scale"):
        AugmentConfig(crop_scale=1.5)


def test_per_sample_generators_make_a_sample_independent_of_its_batch():
    """With one generator per sample, sample i's augmentation is the same in any batch (the trainer's DDP case)."""
    pipe = AugmentConfig(crop_scale=0.8, shift_pad=2).build()
    x = images(b=4)

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    whole = pipe(x, generator=gens([10, 11, 12, 13]))
    halves = torch.cat([pipe(x[:2], generator=gens([10, 11])), pipe(x[2:], generator=gens([12, 13]))])
    torch.testing.assert_close(whole, halves, rtol=0, atol=1e-6)
    assert not torch.equal(whole[0], pipe(x, generator=gens([20, 11, 12, 13]))[0])
    with pytest.raises(ValueError, match="3 generators for a draw of shape"):
        pipe(x, generator=gens([1, 2, 3]))


def test_shape_error_names_images():
    with pytest.raises(ValueError, match="images: expected"):
        RandomShift(2)(torch.rand(2, 3, 8, 8))
