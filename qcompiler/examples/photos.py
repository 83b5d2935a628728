"""An offline pool of real photographs for calibrating and evaluating ImageNet models.

    for batch in calibration_pool(256, seed=0, batch_size=32):   # float32 [32, 3, 224, 224]
        ...
    evaluation = evaluation_pool(1000, seed=1)

The photographs ship inside registry packages, so nothing is downloaded:
scikit-image's `skimage.data` (astronaut, chelsea, coffee, rocket, the left view of
stereo_motorcycle, and the grayscale camera, coins, moon, clock, grass, gravel,
brick, replicated to three channels) and scikit-learn's `load_sample_images`
(china, flower). Only everyday-scene photographs and textures are used: the
scientific images (hubble_deep_field, retina, immunohistochemistry), synthetic
ones (colorwheel, logo, checkerboard) and tiny ones (lfw_subset) are far from
what an ImageNet model sees. A loader that fails (some `skimage.data` images need
an optional download) is skipped, and `load_source_images` says which and why.

Each item is a random crop of one source image (chosen uniformly), side 35-100 %
of the region's shorter side with aspect ratio in [3/4, 4/3], flipped left-right
with probability 1/2, resized to `size` x `size` with antialiased bilinear
interpolation, scaled to [0, 1] and normalised with the ImageNet mean and std
(the preprocessing torchvision's pretrained models expect).

Why calibration and evaluation never see the same pixels: every source image is
cut at its middle column; calibration crops lie entirely in the left half
(columns [0, W // 2)) and evaluation crops entirely in the right half (columns
[W // 2, W)). The seeds differ too by default, but the disjointness does not depend
on them. `PhotoPool.crops()` lists the boxes, so tests check it.

Determinism: crop k of a pool depends only on (role, seed, k) through its own numpy
generator, so it is the same whatever the batch size or how often the pool is read.
A pool is re-iterable and streams: each pass yields batches made on demand, and only
the source images (a few MB) stay in memory. `qc.quantize` reads calibration data
twice (calibration, then bias correction) and takes a re-iterable lazily.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from qcompiler.errors import import_optional

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# skimage.data loaders by name; stereo_motorcycle returns (left, right, disparity).
_SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle",
                   "camera", "coins", "moon", "clock", "grass", "gravel", "brick")
_SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
_ROLES = {"calibration": 0, "evaluation": 1}
_MIN_SIDE_FRACTION = 0.35
_MAX_LOG_ASPECT = float(np.log(4 / 3))


@dataclass(frozen=True)
class SourceImage:
    name: str
    pixels: np.ndarray  # uint8 [H, W, 3]


@dataclass(frozen=True)
class Crop:
    """A crop box in source-image pixels (before flipping and resizing)."""

    image: str
    top: int
    left: int
    height: int
    width: int
    flip: bool


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    if pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {pixels.dtype}")
    return np.ascontiguousarray(pixels[:, :, :3])


def load_source_images() -> tuple[list[SourceImage], dict[str, str]]:
    """The photographs that load offline, and {name: reason} for those that did not."""
    skimage_data = import_optional("skimage.data", "bench", "the photo crops of the demo, "
                                   "reports and benchmarks (qcompiler.examples.photos)")

    images, skipped = [], {}
    for name in _SKIMAGE_PHOTOS:
        try:
            pixels = getattr(skimage_data, name)()
            if name == "stereo_motorcycle":
                name, pixels = "motorcycle", pixels[0]
            images.append(SourceImage(name, _as_rgb(pixels)))
        # ImportError: the image needs the optional `pooch` download; OSError covers
        # network errors (requests' ConnectionError is one); ValueError odd formats.
        except (ImportError, OSError, ValueError, AttributeError) as error:
            skipped[name] = f"{type(error).__name__}: {error}"
    try:
        from sklearn.datasets import load_sample_images

        samples = load_sample_images()
        loaded = {path.rsplit("/", 1)[-1]: pixels for path, pixels in zip(samples.filenames, samples.images,
                                                                           strict=True)}
        for filename in _SKLEARN_PHOTOS:
            if filename in loaded:
                images.append(SourceImage(filename.removesuffix(".jpg"), _as_rgb(loaded[filename])))
            else:
                skipped[filename] = "not among sklearn's sample images"
    except (ImportError, OSError, ValueError) as error:
        skipped["sklearn sample images"] = f"{type(error).__name__}: {error}"
    if not images:
        raise RuntimeError(f"no photograph loaded (install the `bench` extra): {skipped}")
    return images, skipped


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] -> ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


def _region(role: str, width: int) -> tuple[int, int]:
    """The columns [start, stop) a role's crops may use (see the module docstring)."""
    middle = width // 2
    return (0, middle) if role == "calibration" else (middle, width)


def _draw_crop(rng: np.random.Generator, image: SourceImage, role: str) -> Crop:
    height, width = image.pixels.shape[:2]
    start, stop = _region(role, width)
    region_width = stop - start
    side = rng.uniform(_MIN_SIDE_FRACTION, 1.0) * min(height, region_width)
    aspect = float(np.exp(rng.uniform(-_MAX_LOG_ASPECT, _MAX_LOG_ASPECT)))  # width / height
    crop_width = int(np.clip(round(side * np.sqrt(aspect)), 1, region_width))
    crop_height = int(np.clip(round(side / np.sqrt(aspect)), 1, height))
    top = int(rng.integers(0, height - crop_height + 1))
    left = start + int(rng.integers(0, region_width - crop_width + 1))
    return Crop(image.name, top, left, crop_height, crop_width, bool(rng.random() < 0.5))


class PhotoPool:
    """`count` crops for one role, read as batches; re-iterable and deterministic."""

    def __init__(self, role: str, count: int, seed: int, batch_size: int = 32, size: int = 224,
                 images: list[SourceImage] | None = None):
        if role not in _ROLES:
            raise ValueError(f"role must be one of {sorted(_ROLES)}, got {role!r}")
        if count < 1 or batch_size < 1:
            raise ValueError(f"count and batch_size must be positive, got {count} and {batch_size}")
        self.role, self.count, self.seed = role, count, seed
        self.batch_size, self.size = batch_size, size
        self.images = images if images is not None else load_source_images()[0]
        self._by_name = {image.name: image for image in self.images}

    def crop(self, index: int) -> Crop:
        rng = np.random.default_rng([_ROLES[self.role], self.seed, index])
        image = self.images[int(rng.integers(len(self.images)))]
        return _draw_crop(rng, image, self.role)

    def crops(self) -> list[Crop]:
        return [self.crop(index) for index in range(self.count)]

    def render(self, crop: Crop) -> torch.Tensor:
        """One crop as a normalised float32 [3, size, size] tensor."""
        pixels = self._by_name[crop.image].pixels[crop.top:crop.top + crop.height,
                                                  crop.left:crop.left + crop.width]
        if crop.flip:
            pixels = pixels[:, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float() / 255
        resized = F.interpolate(tensor, size=(self.size, self.size), mode="bilinear",
                                align_corners=False, antialias=True)
        return normalize(resized)[0]

    def __len__(self) -> int:
        return -(-self.count // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for first in range(0, self.count, self.batch_size):
            indices = range(first, min(first + self.batch_size, self.count))
            yield torch.stack([self.render(self.crop(index)) for index in indices])


def calibration_pool(count: int, seed: int = 0, batch_size: int = 32, size: int = 224,
                     images: list[SourceImage] | None = None) -> PhotoPool:
    """Crops from the left half of every photograph (see the module docstring)."""
    return PhotoPool("calibration", count, seed, batch_size, size, images)


def evaluation_pool(count: int, seed: int = 1, batch_size: int = 32, size: int = 224,
                    images: list[SourceImage] | None = None) -> PhotoPool:
    """Crops from the right half of every photograph, disjoint from calibration crops."""
    return PhotoPool("evaluation", count, seed, batch_size, size, images)
