"""The photo pool: deterministic, calibration and evaluation crops disjoint, ImageNet-normalised."""

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")
pytest.importorskip("sklearn")

from qcompiler.examples.photos import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    PhotoPool,
    calibration_pool,
    evaluation_pool,
    load_source_images,
    normalize,
)


@pytest.fixture(scope="module")
def images():
    return load_source_images()[0]


def test_loads_the_offline_photographs(images):
    names = {image.name for image in images}
    # The two scikit-learn photographs and the bundled scikit-image colour photographs
    # are always present; optional-download images are never in the list.
    assert {"china", "flower", "astronaut", "chelsea", "coffee", "rocket"} <= names
    for image in images:
        assert image.pixels.dtype == np.uint8 and image.pixels.ndim == 3 and image.pixels.shape[2] == 3


def test_batches_have_the_requested_shape_and_count(images):
    pool = calibration_pool(10, batch_size=4, size=64, images=images)
    batches = list(pool)
    assert [b.shape for b in batches] == [(4, 3, 64, 64), (4, 3, 64, 64), (2, 3, 64, 64)]
    assert len(pool) == 3
    assert all(b.dtype == torch.float32 for b in batches)


def test_pool_is_deterministic_and_independent_of_batch_size(images):
    first = torch.cat(list(evaluation_pool(6, seed=3, batch_size=4, size=48, images=images)))
    again = torch.cat(list(evaluation_pool(6, seed=3, batch_size=4, size=48, images=images)))
    rebatched = torch.cat(list(evaluation_pool(6, seed=3, batch_size=5, size=48, images=images)))
    assert torch.equal(first, again)
    assert torch.equal(first, rebatched)
    pool = evaluation_pool(6, seed=3, batch_size=4, size=48, images=images)
    assert torch.equal(torch.cat(list(pool)), torch.cat(list(pool)))  # re-iterable


def test_seed_changes_the_crops(images):
    assert calibration_pool(8, seed=0, images=images).crops() != \
        calibration_pool(8, seed=1, images=images).crops()


def test_calibration_and_evaluation_crops_share_no_pixel(images):
    widths = {image.name: image.pixels.shape[1] for image in images}
    # Same seed on purpose: disjointness must not rest on the seeds differing.
    calibration = calibration_pool(300, seed=0, images=images).crops()
    evaluation = evaluation_pool(300, seed=0, images=images).crops()
    for crop in calibration:
        assert crop.left + crop.width <= widths[crop.image] // 2
    for crop in evaluation:
        assert crop.left >= widths[crop.image] // 2
        assert crop.left + crop.width <= widths[crop.image]
    used = {crop.image for crop in calibration} & {crop.image for crop in evaluation}
    assert len(used) > len(images) // 2  # both roles draw from most of the photographs


def test_no_evaluation_tensor_equals_a_calibration_tensor(images):
    calibration = torch.cat(list(calibration_pool(24, seed=0, size=32, images=images)))
    evaluation = torch.cat(list(evaluation_pool(24, seed=0, size=32, images=images)))
    distances = torch.cdist(calibration.flatten(1), evaluation.flatten(1))
    assert distances.min() > 1.0


def test_crops_stay_inside_their_image_and_vary(images):
    heights = {image.name: image.pixels.shape[0] for image in images}
    crops = evaluation_pool(200, images=images).crops()
    for crop in crops:
        assert crop.top >= 0 and crop.top + crop.height <= heights[crop.image]
        assert crop.height >= 1 and crop.width >= 1
    assert 0.3 < np.mean([crop.flip for crop in crops]) < 0.7
    assert len({crop.image for crop in crops}) == len(images)


def test_normalize_maps_the_imagenet_mean_to_zero_and_one_std_to_one():
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(normalize(mean), torch.zeros(2, 3, 4, 4), atol=1e-6)
    assert torch.allclose(normalize(mean + std), torch.ones(2, 3, 4, 4), atol=1e-6)


def test_pool_values_are_normalised_photographs(images):
    batch = torch.cat(list(calibration_pool(48, size=64, images=images)))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = batch * std + mean
    # Antialiased bilinear resizing is a convex combination: values stay in [0, 1].
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    # Natural photographs are not constant: each channel varies within the pool and
    # its normalised mean is within one ImageNet std of zero.
    channel_mean = batch.mean(dim=(0, 2, 3))
    channel_std = batch.std(dim=(0, 2, 3))
    assert torch.all(channel_mean.abs() < 1.0)
    assert torch.all((channel_std > 0.3) & (channel_std < 2.0))


def test_rejects_bad_arguments(images):
    with pytest.raises(ValueError, match="role must be one of"):
        PhotoPool("training", 4, 0, images=images)
    with pytest.raises(ValueError, match="count and batch_size must be positive"):
        calibration_pool(0, images=images)
