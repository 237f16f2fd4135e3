"""Image preprocessing as TF-Slim does it (VGG style, Inception style), plus on-the-fly augmentation.

Modelled on research/slim/preprocessing/{vgg,inception}_preprocessing.py of tensorflow/models
(Apache License 2.0), at a configurable output size:

- ``vgg`` (ResNet V1, VGG): aspect-preserving resize of the shorter side to ``S = size * 256/224``,
  central crop ``size x size``, then ImageNet channel means subtracted (0..255 scale). Training with
  ``random_crop``, TF-Slim's ``preprocess_for_train``: shorter side uniform in [S, 2S] (TF-Slim's
  256..512 for 224) and a random crop.
- ``inception`` (Inception, ResNet V2): central crop of 87.5% of each side (76.6% of the area) and
  resize, scaled to [-1, 1]. Training with ``random_crop``, TF-Slim's ``preprocess_for_train``: a
  random box (``sample_distorted_bounding_box``, aspect 3/4..4/3) resized to the output, then
  TF-Slim's colour distortion (``distort_color``, fast mode: brightness +-32/255 and saturation
  x0.5..1.5, brightness first in one case of four, saturation first in the others, clipped).

Differences from TF-Slim, on purpose: resizing is antialiased (area averaging when shrinking),
because histology images of 700x460 px are shrunk up to 10x here and plain bilinear would alias
the texture; Inception's random boxes keep at least 25% of the area (TF-Slim: area 5-100% and at
least 10% of the image covered, so 10%), so that neither family magnifies a training image more
than 2x (VGG's [S, 2S]; TF-Slim's Inception up to 3.2x), BreakHis' smallest step between
magnifications (100X to 200X to 400X), since magnification carries class information in
histopathology. TF-Slim flips left-right only; here ``flip`` and ``rotate`` decide (the 8
symmetries of the square: our reading of the preprint's rotations and flips, whose number it does
not state in what deepbc/results/preprint.yaml quotes).

At evaluation the two families see different fields of view (TF-Slim's choice, which their
ImageNet weights were trained with): ``vgg`` the central square of 87.5% of the shorter side, on a
700x460 BreakHis image 50% of its area at its aspect ratio; ``inception`` 87.5% of each side, 77%
of the area, squashed to a square (by 1.5x across on BreakHis).

Training augmentation (never at evaluation): ``rotate`` (multiples of 90 degrees; 0/180 only when
the output is not square) and ``flip`` (left-right and up-down) together give all 8 symmetries of
the square (our reading of the preprint's); ``random_crop`` as above (with Inception's colour distortion);
``color_jitter``: mild brightness (+-0.1), saturation and contrast (x0.8..1.2) and hue (+-0.02)
changes, for stain variation;
``hed: {sigma, bias}`` (off when null): HED stain augmentation (Tellez et al. 2019, Med. Image
Anal. 58:101544 and IEEE TMI 37(9):2126): the image is converted to haematoxylin-eosin-DAB
densities, each channel ``s`` becomes ``alpha * s + beta`` with ``alpha ~ U(1 - sigma, 1 + sigma)``
and ``beta ~ U(-bias, bias)`` per image and channel, and converted back (:func:`hed_jitter`), in
the units Tellez et al.'s code perturbed (see ``RGB_FROM_HED``).

All random choices use stateless ops driven by one ``seed`` tensor per image, so a pipeline that
passes per-element seeds is reproducible whatever its parallelism. Only graph-safe tf ops are used:
the functions run inside ``tf.data.Dataset.map``.
"""

import math

import numpy as np
import tensorflow as tf

from deepbc.jobs.errors import UserError
from deepbc.training import settings as train_settings

STYLES = ("vgg", "inception")

# ImageNet RGB means of the Caffe-converted ResNet V1 / VGG checkpoints (vgg_preprocessing.py).
VGG_MEANS = (123.68, 116.78, 103.94)
INCEPTION_CENTRAL_FRACTION = 0.875
RANDOM_CROP_AREA = (0.25, 1.0)
RANDOM_CROP_ASPECT = (3 / 4, 4 / 3)
# TF-Slim's distort_color in fast mode (inception_preprocessing.py).
SLIM_BRIGHTNESS_DELTA = 32 / 255
SLIM_SATURATION = (0.5, 1.5)

# Ruifrok & Johnston's stain vectors (Anal. Quant. Cytol. Histol. 23(4):291-299, 2001), rows H, E,
# DAB, as scikit-image's skimage.color.colorconv.rgb_from_hed (not row-normalised). Tellez et al.
# perturbed the output of scikit-image's rgb2hed (DIAG's digitalpathology HedColorAugmenter calls
# skimage.color.rgb2hed and hed2rgb), whose densities were -log(rgb + 2) before scikit-image 0.19
# (2021) and log(max(rgb, 1e-6)) / log(1e-6) since: their HED-light and HED-strong sigma and bias
# are in the former units, which OD_SHIFT gives. In the newer units the same sigma and bias change
# an image about twice as much (HED-light on a synthetic H&E image: 27 grey levels on average
# against 15).
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
OD_SHIFT = 2.0
# The HED draws' key (and that of TF-Slim's colour distortion) is the element's seed folded with its
# tag, apart from the other augmentations' keys (stateless_split of the seed), as
# shard_reader.stream_key keeps each use of the run seed apart.
_HED_TAG = 4
_SLIM_COLOUR_TAG = 5


def get_preprocessing(name: str, is_training: bool, augment=None):
    """Return ``fn(image, height, width, seed=None) -> float32 [height, width, 3]``.

    ``name``: "vgg" or "inception" (``NETWORKS[arch].preprocessing``). ``image``: uint8
    [H, W, 3] of any size. ``seed``: int32/int64 [2] tensor for the stateless random ops (training
    only; when None one is drawn at random per call). ``augment`` applies only when ``is_training``:
    the settings' ``augment``, or a dict of some of its keys (the schema's defaults fill the rest;
    None: the defaults, rotate and flip on).
    """
    if name not in STYLES:
        raise UserError(f"unknown preprocessing {name!r}", where="preprocessing name",
                        fix=f"use one of: {', '.join(STYLES)}")
    if not is_training:
        aug = None
    elif augment is None or isinstance(augment, dict):
        aug = train_settings.augment(augment)
    else:
        aug = augment
    draws = aug is not None and any(train_settings.as_dict(aug).values())
    random_crop = bool(aug and aug.random_crop)

    def preprocess(image, height: int, width: int, seed=None):
        image = tf.convert_to_tensor(image)
        if image.dtype != tf.uint8:
            raise ValueError(f"preprocessing expects a uint8 image, got {image.dtype.name}")
        image.shape.assert_is_compatible_with([None, None, 3])
        with tf.name_scope(f"{name}_preprocessing"):
            if seed is None:
                # No draw without augmentation: under op determinism an unseeded random op raises.
                seed = (tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64) if draws
                        else tf.zeros([2], tf.int64))
            seeds = iter(tf.unstack(tf.random.experimental.stateless_split(seed, num=10)))
            crop = _vgg_crop if name == "vgg" else _inception_crop
            # Cropping and resizing the uint8 image first: one pass over the full-size pixels.
            image = crop(image, height, width, random_crop, seeds) / 255.0
            if random_crop and name == "inception":
                image = _slim_distort_colour(image, tf.random.experimental.stateless_fold_in(seed, _SLIM_COLOUR_TAG))
            if aug and aug.flip:
                image = tf.image.stateless_random_flip_left_right(image, next(seeds))
                image = tf.image.stateless_random_flip_up_down(image, next(seeds))
            if aug and aug.rotate:
                image = _random_rot90(image, height == width, next(seeds))
            if aug and aug.hed:
                key = tf.random.experimental.stateless_fold_in(seed, _HED_TAG)
                image = hed_jitter(image, aug.hed.sigma, aug.hed.bias, key)
            if aug and aug.color_jitter:
                image = _color_jitter(image, seeds)
            image.set_shape([height, width, 3])
            if name == "vgg":
                return image * 255.0 - tf.constant(VGG_MEANS, tf.float32)
            return (image - 0.5) * 2.0

    preprocess.min_source_side = lambda height, width: min_source_side(name, random_crop, height, width)
    return preprocess


def min_source_side(name: str, random_crop: bool, height: int, width: int) -> int | None:
    """The shorter side a source image needs so that preprocessing to (height, width) only shrinks it.

    Readers may decode a JPEG at a reduced scale down to this size (``records.decode_jpeg``) without
    changing what the network sees beyond resampling. None: the full image is needed (random
    crops may take a small part of it).
    """
    if random_crop:
        return None
    if name == "vgg":
        return round(min(height, width) * 256 / 224)
    return math.ceil(max(height, width) / INCEPTION_CENTRAL_FRACTION)


def _resize(image, size):
    """uint8 in, float32 0..255 out. Shrinking averages the source pixels under each output pixel
    (area: antialiased, and ~1.8x faster than antialiased bilinear, BENCHMARKS.md); enlarging is bilinear."""
    size = tf.convert_to_tensor(size, tf.int32)
    shrinking = tf.reduce_all(size <= tf.shape(image)[:2])
    return tf.cond(shrinking, lambda: tf.image.resize(image, size, method="area"),
                   lambda: tf.image.resize(image, size, method="bilinear", antialias=True))


def _vgg_crop(image, height, width, random_crop, seeds):
    side = round(min(height, width) * 256 / 224)
    if random_crop:
        side = tf.random.stateless_uniform([], next(seeds), side, 2 * side + 1, dtype=tf.int32)
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = tf.cast(side, tf.float32) / tf.minimum(h, w)
    new_h = tf.maximum(tf.cast(tf.round(h * scale), tf.int32), height)
    new_w = tf.maximum(tf.cast(tf.round(w * scale), tf.int32), width)
    image = _resize(image, tf.stack([new_h, new_w]))
    if random_crop:
        return tf.image.stateless_random_crop(image, [height, width, 3], next(seeds))
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return tf.slice(image, tf.stack([top, left, 0]), [height, width, 3])


def _inception_crop(image, height, width, random_crop, seeds):
    if random_crop:
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=next(seeds),
            min_object_covered=0.0, aspect_ratio_range=RANDOM_CROP_ASPECT, area_range=RANDOM_CROP_AREA,
            max_attempts=100, use_image_if_no_bounding_boxes=True)
        image = tf.slice(image, begin, size)
    else:
        image = tf.image.central_crop(image, INCEPTION_CENTRAL_FRACTION)
    return _resize(image, [height, width])


def _slim_distort_colour(image, key):
    """TF-Slim's Inception colour distortion of a float image in [0, 1] (fast mode), drawn from ``key``."""
    order, brightness, saturation = tf.unstack(tf.random.experimental.stateless_split(key, num=3))

    def bright(x):
        return tf.image.stateless_random_brightness(x, SLIM_BRIGHTNESS_DELTA, brightness)

    def saturate(x):
        return tf.image.stateless_random_saturation(x, *SLIM_SATURATION, saturation)

    # TF-Slim picks one of four orderings; in fast mode the first puts brightness first, the rest saturation.
    brightness_first = tf.equal(tf.random.stateless_uniform([], order, 0, 4, dtype=tf.int32), 0)
    image = tf.cond(brightness_first, lambda: saturate(bright(image)), lambda: bright(saturate(image)))
    return tf.clip_by_value(image, 0.0, 1.0)


def _random_rot90(image, square: bool, seed):
    if square:
        k = tf.random.stateless_uniform([], seed, 0, 4, dtype=tf.int32)
    else:  # a quarter turn would swap height and width
        k = 2 * tf.random.stateless_uniform([], seed, 0, 2, dtype=tf.int32)
    return tf.image.rot90(image, k)


def _color_jitter(image, seeds):
    image = tf.image.stateless_random_brightness(image, 0.1, next(seeds))
    image = tf.image.stateless_random_saturation(image, 0.8, 1.2, next(seeds))
    image = tf.image.stateless_random_hue(image, 0.02, next(seeds))
    image = tf.image.stateless_random_contrast(image, 0.8, 1.2, next(seeds))
    return tf.clip_by_value(image, 0.0, 1.0)


def rgb_to_hed(rgb):
    """RGB in [0, 1] (float, [..., 3]) to H, E, DAB densities as scikit-image's rgb2hed computed them
    before version 0.19 (``-log(rgb + 2) @ HED_FROM_RGB``; Tellez et al.'s units)."""
    return _times(_optical_density(rgb), tf.constant(HED_FROM_RGB, rgb.dtype))


def hed_to_rgb(hed):
    """H, E, DAB densities back to RGB clipped to [0, 1] (scikit-image's hed2rgb before 0.19)."""
    return _from_optical_density(_times(hed, tf.constant(RGB_FROM_HED, hed.dtype)))


def hed_jitter(rgb, sigma: float, bias: float, key):
    """Tellez et al.'s HED augmentation of one float RGB image in [0, 1]: each stain channel ``s``
    becomes ``alpha * s + beta``, ``alpha ~ U(1 - sigma, 1 + sigma)``, ``beta ~ U(-bias, bias)``,
    drawn per channel from the stateless ``key`` (int64 [2]).

    Equal to ``hed_to_rgb(rgb_to_hed(rgb) * alpha + beta)``, with the three linear steps folded into
    one 3x3 matrix and offset first: per pixel, one log, one 3x3 product and one exp.
    """
    alpha_key, beta_key = tf.unstack(tf.random.experimental.stateless_split(key, num=2))
    alpha = tf.random.stateless_uniform([3], alpha_key, 1.0 - sigma, 1.0 + sigma, dtype=rgb.dtype)
    beta = tf.random.stateless_uniform([3], beta_key, -bias, bias, dtype=rgb.dtype)
    to_rgb = tf.constant(RGB_FROM_HED, rgb.dtype)
    matrix = tf.constant(HED_FROM_RGB, rgb.dtype) @ (alpha[:, None] * to_rgb)
    offset = tf.linalg.matvec(to_rgb, beta, transpose_a=True)
    return _from_optical_density(_times(_optical_density(rgb), matrix) + offset)


def _optical_density(rgb):
    return -tf.math.log(rgb + OD_SHIFT)


def _from_optical_density(od):
    return tf.clip_by_value(tf.exp(-od) - OD_SHIFT, 0.0, 1.0)


def _times(pixels, matrix):
    """``pixels`` [..., 3] times a 3x3 ``matrix``, as one matrix product over the flattened pixels."""
    shape = tf.shape(pixels)
    return tf.reshape(tf.reshape(pixels, [-1, 3]) @ matrix, shape)
