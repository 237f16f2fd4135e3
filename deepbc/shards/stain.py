"""Stain normalization of H&E images: Macenko (2009) and Reinhard (2001), on torchstain's numpy backend.

``fit(reference)`` returns the parameters as a plain JSON-able dict (the method, its reference
statistics, the torchstain version); ``normalize(image, params)`` maps a uint8 RGB image onto the
reference's colours. The workflow fits once per workflow on one configured reference image
(``shards.stain_reference``, never an image of the workflow's datasets: ``check_reference``), the
shard writer applies it to every image, the trainer copies the parameters into the model's
settings.json, and predict_folder and the SavedModel export (``deepbc.training.export``, a TensorFlow port
of ``normalize`` with fixed parameters) apply the same ones.

Macenko without a reference image uses torchstain's default stain matrix and maximal
concentrations, the values of Macenko's published reference implementation
(https://github.com/mitkovetta/staining-normalization, normalizeStaining.m: HERef, maxCRef).

Departures from torchstain, on purpose (on a tile that is tissue everywhere the results equal
torchstain's; tests/test_stain.py): the statistics (Macenko's 99th-percentile maximal
concentrations, Reinhard's LAB means and standard deviations) are taken over the tissue pixels
(optical density >= beta in every channel), for the reference as for every tile. torchstain takes
them over all pixels: on a tile with background (a TMA core on white) they are mostly the
background's, and the tissue's colour then depends on how much background the tile has.

Tiles on which a fit fails get a reasoned fallback instead of NaNs or a crash (``apply`` names it):

- ``no_tissue``: no tissue pixel (white background): the tile is returned unchanged, there is no
  stain to map.
- ``few_tissue``: fewer than ``MIN_TISSUE_PIXELS`` tissue pixels. Macenko: the tile's own stain
  vectors (1st/99th percentile angles) would rest on a handful of pixels, so the reference stain
  matrix is used as the tile's own, and both stains are scaled by one factor, that of the stain
  densest relative to the reference (a per-stain factor would amplify the noise of a stain the
  tile lacks into a false colour). Reinhard: the tile is returned unchanged (its LAB statistics
  would rest on a handful of pixels).
- ``one_stain``: Macenko's two estimated stain vectors are less than ``MIN_STAIN_ANGLE_DEG`` apart
  (a tile of one stain: the second eigenvector is noise), which makes unmixing ill-conditioned: as
  Macenko's ``few_tissue``.
- ``non_finite``: the tile's own Macenko fit gave a non-finite or non-positive maximal
  concentration: as ``few_tissue``; if that too is non-finite, the tile is returned unchanged.
- Reinhard ``flat_channel``: a LAB channel with (near) zero standard deviation cannot be scaled
  (torchstain divides by it): that channel is only shifted to the reference mean.
"""

from __future__ import annotations

import json
import logging
from importlib import metadata
from pathlib import Path

import numpy as np

from deepbc.jobs.errors import UserError, delete_and_rerun

LOG = logging.getLogger(__name__)

# shards.stain_normalization's enum in config/schema.yaml, apart from "none" (tests/test_stain.py).
METHODS = ("macenko", "reinhard")
# torchstain's (and Macenko's) defaults: transmitted light intensity, the percentile of the stain
# angles, the optical-density threshold of a tissue pixel.
IO, ALPHA, BETA = 240.0, 1.0, 0.15
# Fewer tissue pixels than this give no usable stain vectors or LAB statistics.
MIN_TISSUE_PIXELS = 200
# H and E of Macenko's reference are 22 degrees apart; vectors within 5 degrees are one stain.
MIN_STAIN_ANGLE_DEG = 5.0
# LAB standard deviations below this (on L in 0..100, a/b in -128..127) are a flat channel.
MIN_STD = 1e-3


def torchstain_version() -> str:
    return metadata.version("torchstain")


def published_macenko() -> dict:
    """Macenko's published reference (torchstain's defaults, from the original implementation)."""
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

    n = NumpyMacenkoNormalizer()
    return _macenko_params(n.HERef, n.maxCRef, {"published": "Macenko et al. 2009 (normalizeStaining.m)"})


def fit(reference: np.ndarray, method: str, source: dict | None = None) -> dict:
    """The parameters of ``method`` fitted on ``reference`` (uint8 RGB, HxWx3); ``source`` describes it.

    Estimated as ``apply`` estimates a tile (statistics over the tissue pixels), so that a reference
    with some background gets the same maximal concentrations / LAB statistics as its tissue alone;
    on a reference that is tissue everywhere this is torchstain's fit."""
    _check_method(method)
    reference = _rgb(reference)
    where = (source or {}).get("path", "reference image")
    od, tissue = _tissue(reference.reshape(-1, 3))
    if int(tissue.sum()) < MIN_TISSUE_PIXELS:
        raise UserError(f"the stain reference image has too little tissue (fewer than {MIN_TISSUE_PIXELS} pixels "
                        f"of optical density >= {BETA})", where, "choose a reference image mostly covered by "
                        "H&E-stained tissue")
    with np.errstate(all="ignore"):
        if method == "macenko":
            he = _stain_vectors(od[tissue])
            c, max_c = _concentrations(he, od, tissue)
            if not (_two_stains(he) and _usable(c, max_c)):
                raise UserError("Macenko's fit on the stain reference image failed (one stain or a non-finite "
                                "stain matrix)", where, "choose a reference image with both haematoxylin and eosin")
            return _macenko_params(he, max_c, source)
        stats = [_mean_std(x, tissue) for x in _labs(reference)]
    if any(std < MIN_STD for _, std in stats):
        raise UserError("the stain reference image has a flat LAB channel (one colour)", where,
                        "choose an H&E image of tissue")
    return {"method": "reinhard", "means": [float(m) for m, _ in stats], "stds": [float(s) for _, s in stats],
            "source": source or {}, "torchstain": torchstain_version()}


def _macenko_params(he, max_c, source) -> dict:
    return {"method": "macenko", "HERef": np.asarray(he, float).tolist(),
            "maxCRef": np.asarray(max_c, float).tolist(), "Io": IO, "alpha": ALPHA, "beta": BETA,
            "source": source or {}, "torchstain": torchstain_version()}


def normalize(image: np.ndarray, params: dict) -> np.ndarray:
    """``image`` (uint8 RGB) with the reference's stain colours."""
    return apply(image, params)[0]


def apply(image: np.ndarray, params: dict) -> tuple[np.ndarray, str | None]:
    """(normalised uint8 image, the fallback used or None); see the module's docstring."""
    _check_method(params.get("method"))
    image = _rgb(image)
    with np.errstate(all="ignore"):
        if params["method"] == "macenko":
            return _macenko(image, params)
        return _reinhard(image, params)


def _tissue(pixels: np.ndarray):
    """Optical density of every pixel and the mask of tissue pixels (OD >= beta in every channel)."""
    od = -np.log((pixels.astype(float) + 1) / IO)
    return od, ~np.any(od < BETA, axis=1)


def _stain_vectors(od_hat: np.ndarray) -> np.ndarray:
    """torchstain's H and E vectors [3, 2] of the tissue pixels' optical densities."""
    _, eigvecs = np.linalg.eigh(np.cov(od_hat.T))
    plane = eigvecs[:, 1:3]
    phi = np.arctan2(*(od_hat @ plane).T[::-1])
    v_min = plane @ np.array([np.cos(np.percentile(phi, ALPHA)), np.sin(np.percentile(phi, ALPHA))])
    v_max = plane @ np.array([np.cos(np.percentile(phi, 100 - ALPHA)), np.sin(np.percentile(phi, 100 - ALPHA))])
    # Haematoxylin first (torchstain's heuristic).
    return np.array((v_min, v_max)).T if v_min[0] > v_max[0] else np.array((v_max, v_min)).T


def _two_stains(he: np.ndarray) -> bool:
    cos = abs(float(he[:, 0] @ he[:, 1]))  # unit vectors
    return bool(np.isfinite(cos)) and np.degrees(np.arccos(min(cos, 1.0))) >= MIN_STAIN_ANGLE_DEG


def _concentrations(he, od, tissue):
    """Every pixel's concentrations [2, N] and their 99th percentiles over the tissue pixels.
    torchstain takes the percentiles over all pixels: on a tile with background these are the
    background's, and the tissue's colour then jumps with the tissue fraction."""
    c = np.linalg.lstsq(he, od.T, rcond=None)[0]
    return c, np.percentile(c[:, tissue], 99, axis=1)


def _usable(c, max_c) -> bool:
    return bool(np.all(np.isfinite(c)) and np.all(np.isfinite(max_c)) and np.all(max_c > 0))


def _macenko(image: np.ndarray, params: dict) -> tuple[np.ndarray, str | None]:
    """torchstain's NumpyMacenkoNormalizer.normalize (same operations; same results on a tile that
    is tissue everywhere) with the percentiles over tissue pixels and the fallbacks."""
    he_ref, max_c_ref = np.asarray(params["HERef"], float), np.asarray(params["maxCRef"], float)
    h, w, _ = image.shape
    od, tissue = _tissue(image.reshape(-1, 3))
    n_tissue = int(tissue.sum())
    if n_tissue == 0:
        return image.copy(), "no_tissue"
    fallback = None
    if n_tissue < MIN_TISSUE_PIXELS:
        fallback = "few_tissue"
    else:
        he = _stain_vectors(od[tissue])
        if not _two_stains(he):
            fallback = "one_stain"
        else:
            c, max_c = _concentrations(he, od, tissue)
            if _usable(c, max_c):
                ratio = max_c / max_c_ref
            else:
                fallback = "non_finite"
    if fallback:
        c, max_c = _concentrations(he_ref, od, tissue)
        # One factor for both stains, the densest stain's: per-stain factors would blow up the
        # noise of a stain the tile lacks (its 99th percentile is ~0) into a false colour.
        scale = np.max(max_c / max_c_ref)
        if not (np.all(np.isfinite(c)) and np.isfinite(scale) and scale > 0):
            return image.copy(), "non_finite"
        ratio = np.array([scale, scale])
    c2 = c / ratio[:, np.newaxis]
    out = IO * np.exp(-he_ref @ c2)
    out[out > 255] = 255
    return np.reshape(out.T, (h, w, 3)).astype(np.uint8), fallback


def _labs(image: np.ndarray):
    from torchstain.numpy.utils import lab_split, rgb2lab

    return lab_split(rgb2lab(image.astype("float32") / 255))


def _mean_std(channel, tissue):
    """torchstain's get_mean_std over the tissue pixels (over all pixels it would follow the background)."""
    from torchstain.numpy.utils import get_mean_std

    return get_mean_std(channel.reshape(-1)[tissue])


def _reinhard(image: np.ndarray, params: dict) -> tuple[np.ndarray, str | None]:
    """torchstain's NumpyReinhardNormalizer.normalize (its colour conversions), with the LAB
    statistics over the tissue pixels, tiles without enough tissue unchanged and flat channels
    only shifted."""
    from torchstain.numpy.utils import lab2rgb, lab_merge

    _, tissue = _tissue(image.reshape(-1, 3))
    n_tissue = int(tissue.sum())
    if n_tissue < MIN_TISSUE_PIXELS:
        return image.copy(), "no_tissue" if n_tissue == 0 else "few_tissue"
    result, fallback = [], None
    for x, mu_t, std_t in zip(_labs(image), params["means"], params["stds"]):
        mu, std = _mean_std(x, tissue)
        if std < MIN_STD:
            result.append(x - mu + mu_t)
            fallback = "flat_channel"
        else:
            result.append((x - mu) / std * std_t + mu_t)
    return (lab2rgb(lab_merge(*result)) * 255).astype("uint8"), fallback


def _rgb(image) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
    return image


def _check_method(method) -> None:
    if method not in METHODS:
        raise UserError(f"unknown stain normalization {method!r}", "config key shards.stain_normalization",
                        f"use none or one of {list(METHODS)}")


# --------------------------------------------------------------------------------------------
# The workflow's reference
# --------------------------------------------------------------------------------------------

def check_setting(method: str, reference) -> None:
    """The config's method and reference make sense together (the workflow checks this at start)."""
    _check_method(method)
    if reference is None and method != "macenko":
        raise UserError(f"{method} normalization needs a reference image", "config key shards.stain_reference",
                        "set shards.stain_reference to an H&E image outside the workflow's datasets")


def check_reference(reference, manifests, roots=()) -> str:
    """The reference image's sha256; a UserError if it lies under a dataset root (resolved paths) or
    any image of the manifests has the same bytes (every dataset image is a test image in some fold,
    so a reference among them leaks test colours). A dataset image re-saved or cropped outside the
    roots is not caught: comparing decoded pixels would mean decoding every dataset image."""
    import pandas as pd

    from deepbc.data.download import sha256_file

    where, fix = f"config key shards.stain_reference = {reference}", \
        "use an H&E image from outside the workflow's datasets (or null for macenko)"
    resolved = Path(reference).resolve()
    for root in roots:
        if resolved.is_relative_to(Path(root).resolve()):
            raise UserError(f"the stain reference image lies under the dataset root {root}: every dataset image is "
                            "a test image in some fold, so fitting on it would leak test data", where, fix)
    digest = sha256_file(reference)
    for manifest in manifests:
        table = pd.read_parquet(manifest, columns=["path", "sha256"])
        same = table.loc[table["sha256"] == digest, "path"]
        if len(same):
            raise UserError(f"the stain reference image is the dataset image {same.iloc[0]} of {manifest}: every "
                            "dataset image is a test image in some fold, so fitting on it would leak test data",
                            where, fix)
    return digest


def fit_reference(method: str, reference, manifests, out_json, roots=()) -> dict:
    """Fit ``method`` on the configured reference image (or Macenko's published reference when
    ``reference`` is None), after the leakage check against the dataset ``roots`` and ``manifests``;
    write the parameters to ``out_json``."""
    from deepbc.data import imageio
    from deepbc.jobs.atomic import write_json

    check_setting(method, reference)
    if reference is None:
        params = published_macenko()
    else:
        path = Path(reference)
        try:
            pixels = imageio.decode(path)
        except imageio.Rejected as err:
            raise UserError(f"cannot read the stain reference image ({err.reason}: {err.detail})",
                            f"config key shards.stain_reference = {path}",
                            "point it at an existing PNG, JPEG or TIFF H&E image") from err
        digest = check_reference(path, manifests, roots)
        params = fit(pixels, method, {"path": path.name, "sha256": digest})
    LOG.info("stain normalization %s: %s", method, {k: v for k, v in params.items() if k != "torchstain"})
    write_json(out_json, params)
    return params


def load(path) -> dict:
    params = json.loads(Path(path).read_text(encoding="utf-8"))
    _check_method(params.get("method"))
    return params


def params_for(method: str, stain_json) -> dict | None:
    """The parameters the shard writer applies for ``shards.stain_normalization`` = ``method``:
    None for none, else those of ``stain_json``, which must be of that method."""
    if method == "none":
        return None
    _check_method(method)
    if not stain_json:
        raise UserError(f"shards.stain_normalization is {method} but no fitted parameters were given",
                        "write_shards --stain-json", "pass results/stain/reference.json written by fit_stain.py")
    params = load(stain_json)
    if params["method"] != method:
        raise UserError(f"the stain parameters are of {params['method']}, the config asks for {method}",
                        str(stain_json), delete_and_rerun(stain_json, remakes="fit_stain fits it again"))
    return params


# --------------------------------------------------------------------------------------------
# TensorFlow port (the SavedModel export): ``normalize`` with fixed parameters as graph ops
# --------------------------------------------------------------------------------------------

def normalize_tf(image, params: dict):
    """``normalize`` as TensorFlow ops on a uint8 [H, W, 3] tensor, fallbacks included, so that an
    exported model normalises without this package. Same arithmetic in the same precision (float64
    for Macenko, float32 as torchstain for Reinhard); tests/test_stain.py bounds the difference."""
    import tensorflow as tf

    _check_method(params.get("method"))
    if params["method"] == "macenko":
        return _macenko_tf(tf, image, params)
    return _reinhard_tf(tf, image, params)


def _percentile_tf(tf, x, q):
    """numpy's default (linear) percentile of the last axis of a float64 tensor."""
    x = tf.sort(x, axis=-1)
    n = tf.shape(x)[-1]
    pos = tf.constant(q / 100.0, tf.float64) * tf.cast(n - 1, tf.float64)
    lo = tf.cast(tf.floor(pos), tf.int32)
    hi = tf.minimum(lo + 1, n - 1)
    t = pos - tf.floor(pos)
    a, b = tf.gather(x, lo, axis=-1), tf.gather(x, hi, axis=-1)
    # numpy's _lerp: the formula from the nearer end.
    return tf.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)


def _solve_tf(tf, he, y):
    """Least squares ``he`` [3, 2] x = ``y`` [3, N] by the normal equations (inf/NaN when singular)."""
    g = tf.matmul(he, he, transpose_a=True)
    det = g[0, 0] * g[1, 1] - g[0, 1] * g[1, 0]
    inverse = tf.stack([tf.stack([g[1, 1], -g[0, 1]]), tf.stack([-g[1, 0], g[0, 0]])]) / det
    return tf.matmul(inverse, tf.matmul(he, y, transpose_a=True))


def _usable_tf(tf, c, max_c):
    return (tf.reduce_all(tf.math.is_finite(c)) & tf.reduce_all(tf.math.is_finite(max_c))
            & tf.reduce_all(max_c > 0))


def _macenko_tf(tf, image, params):
    """``_macenko``; each fallback is computed only when taken (tf.cond runs one branch)."""
    f64 = tf.float64
    he_ref = tf.constant(params["HERef"], f64)
    max_c_ref = tf.constant(params["maxCRef"], f64)
    shape = tf.shape(image)
    pixels = tf.reshape(tf.cast(image, f64), [-1, 3])
    od = -tf.math.log((pixels + 1) / IO)
    y = tf.transpose(od)
    tissue = tf.reduce_all(od >= BETA, axis=1)
    n_tissue = tf.reduce_sum(tf.cast(tissue, tf.int32))

    def concentrations(he):
        c = _solve_tf(tf, he, y)
        return c, _percentile_tf(tf, tf.boolean_mask(c, tissue, axis=1), 99)

    def render(c, ratio):
        out = IO * tf.exp(-tf.matmul(he_ref, c / ratio[:, tf.newaxis]))
        return tf.cast(tf.reshape(tf.transpose(tf.minimum(out, 255.0)), shape), tf.uint8)

    def fallback():
        c, max_c = concentrations(he_ref)
        scale = tf.reduce_max(max_c / max_c_ref)
        usable = tf.reduce_all(tf.math.is_finite(c)) & tf.math.is_finite(scale) & (scale > 0)
        return tf.cond(usable, lambda: render(c, tf.stack([scale, scale])), lambda: image)

    def own():
        od_hat = tf.boolean_mask(od, tissue)
        centred = od_hat - tf.reduce_mean(od_hat, axis=0)
        cov = tf.matmul(centred, centred, transpose_a=True) / tf.cast(n_tissue - 1, f64)
        _, eigvecs = tf.linalg.eigh(cov)
        plane = eigvecs[:, 1:3]
        t = tf.matmul(od_hat, plane)
        phi = tf.atan2(t[:, 1], t[:, 0])

        def vector(angle):
            return tf.linalg.matvec(plane, tf.stack([tf.cos(angle), tf.sin(angle)]))

        v_min, v_max = vector(_percentile_tf(tf, phi, ALPHA)), vector(_percentile_tf(tf, phi, 100 - ALPHA))
        he = tf.where(v_min[0] > v_max[0], tf.stack([v_min, v_max], axis=1), tf.stack([v_max, v_min], axis=1))
        cos = tf.minimum(tf.abs(tf.reduce_sum(he[:, 0] * he[:, 1])), 1.0)
        two_stains = tf.math.is_finite(cos) & (tf.acos(cos) * (180 / np.pi) >= MIN_STAIN_ANGLE_DEG)

        def unmix():
            c, max_c = concentrations(he)
            return tf.cond(_usable_tf(tf, c, max_c), lambda: render(c, max_c / max_c_ref), fallback)

        return tf.cond(two_stains, unmix, fallback)

    return tf.cond(tf.equal(n_tissue, 0), lambda: image,
                   lambda: tf.cond(n_tissue < MIN_TISSUE_PIXELS, fallback, own))


def _reinhard_tf(tf, image, params):
    """``_reinhard``: torchstain's numpy rgb2lab / lab2rgb (float32, the back conversion's matrix
    product in float64)."""
    from torchstain.numpy.utils.rgb2lab import _rgb2xyz

    f32 = tf.float32
    od = -tf.math.log((tf.cast(image, tf.float64) + 1) / IO)
    tissue = tf.reduce_all(od >= BETA, axis=-1)

    def normalise():
        white = tf.constant([0.95047, 1.0, 1.08883], f32)
        rgb = tf.cast(image, f32) / 255
        rgb = tf.where(rgb > 0.04045, tf.pow((rgb + 0.055) / 1.055, 2.4), rgb / 12.92)
        xyz = tf.tensordot(rgb, tf.constant(_rgb2xyz.T, f32), 1) / white
        xyz = tf.where(xyz > 0.008856, tf.pow(tf.maximum(xyz, 0.008856), 1 / 3), 7.787 * xyz + 16.0 / 116)
        x, y, z = tf.unstack(xyz, axis=-1)
        # torchstain's round trip through OpenCV's LAB scaling, kept: it rounds in float32.
        labs = [(116 * y - 16) * 2.55 / 2.55, 500 * (x - y) + 128 - 128, 200 * (y - z) + 128 - 128]
        result = []
        for channel, mu_t, std_t in zip(labs, params["means"], params["stds"]):
            values = tf.boolean_mask(channel, tissue)
            mu = tf.reduce_mean(values)
            std = tf.math.reduce_std(values)
            result.append(tf.where(std < MIN_STD, channel - mu + mu_t, (channel - mu) / std * std_t + mu_t))
        l, a, b = result[0] * 2.55 / 2.55, result[1] + 128 - 128, result[2] + 128 - 128
        y = (l + 16) / 116
        xyz = tf.stack([a / 500 + y, y, y - b / 200], axis=-1)
        xyz = tf.where(xyz > 0.2068966, tf.pow(xyz, 3), (xyz - 16.0 / 116) / 7.787) * white
        rgb = tf.tensordot(tf.cast(xyz, tf.float64), tf.constant(np.linalg.inv(_rgb2xyz).T, tf.float64), 1)
        rgb = tf.where(rgb > 0.0031308, 1.055 * tf.pow(tf.maximum(rgb, 0.0031308), 1 / 2.4) - 0.055, rgb * 12.92)
        return tf.cast(tf.clip_by_value(rgb, 0, 1) * 255, tf.uint8)

    return tf.cond(tf.reduce_sum(tf.cast(tissue, tf.int32)) < MIN_TISSUE_PIXELS, lambda: image, normalise)
