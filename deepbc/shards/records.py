"""The stored record format, shared by the writer, the reader and everything that must see an image
as the network saw it: the features of a record and their types, the image encodings, encoding an
image and decoding it back (JPEG at libjpeg's reduced scales), a store's index, and an image "as
stored" (encoded and decoded as the shards store it) for predict_folder and the export.

Each record is a ``tf.train.Example`` with TF-Slim's keys (``image/encoded``, ``image/format``,
``image/height``, ``image/width``) plus ``image/filename`` (path relative to the dataset root),
``image/patient`` and ``image/magnification``, and no label: a store serves every task of its
dataset. TensorFlow is imported inside the functions that need it, so the encoding workers (Pillow
only) and the index writer start without it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from deepbc.jobs.errors import UserError, rebuild_store

# The image encodings (``image/format``), also the schema's shards.format enum (tests/test_schema.py
# checks they agree); the writer refuses others and the reader refuses an index with another.
FORMATS = ("jpeg", "png", "raw")
# The record's features and their types: what the writer stores and the reader parses.
FEATURES = {
    "image/encoded": "bytes",
    "image/format": "bytes",
    "image/height": "int64",
    "image/width": "int64",
    "image/filename": "bytes",
    "image/patient": "bytes",
    "image/magnification": "bytes",
}
# A dataset's store: its shards beside this index of them (deepbc.shards.writer.encode_store).
STORE_INDEX = "store.json"


def encode(image, image_format: str, jpeg_quality: int, scale: float) -> tuple[bytes, int, int]:
    """A Pillow RGB ``image`` resized by ``scale`` and encoded as ``image_format``: (bytes, height, width)."""
    from PIL import Image

    if scale != 1.0:
        # Round so the shorter side is exactly max_shorter_side.
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if image_format == "jpeg":
        image.save(out, format="JPEG", quality=jpeg_quality)
    elif image_format == "png":
        image.save(out, format="PNG")
    else:
        out.write(np.asarray(image, dtype=np.uint8).tobytes())
    return out.getvalue(), image.height, image.width


def example(encoded: bytes, image_format: str, row, height: int, width: int) -> bytes:
    """The serialized record of one image (``row``: its path, patient and magnification)."""
    import tensorflow as tf

    def feature(kind, v):
        if kind == "int64":
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    values = {
        "image/encoded": encoded,
        "image/format": image_format.encode(),
        "image/height": height,
        "image/width": width,
        "image/filename": str(row.path).encode(),
        "image/patient": str(row.patient).encode(),
        "image/magnification": str(row.magnification).encode(),
    }
    # Every feature the reader parses, typed as it parses it (one without a value here is a KeyError).
    # deterministic=True: protobuf otherwise orders the feature map by a per-process hash, so the
    # same shard would differ in bytes (and sha256) from one job to the next.
    example = tf.train.Example(features=tf.train.Features(
        feature={key: feature(kind, values[key]) for key, kind in FEATURES.items()}))
    return example.SerializeToString(deterministic=True)


def _features():
    import tensorflow as tf

    dtypes = {"bytes": tf.string, "int64": tf.int64}
    return {key: tf.io.FixedLenFeature([], dtypes[kind]) for key, kind in FEATURES.items()}


def parse_example(serialized):
    """Parse one serialized Example into a dict of scalar tensors keyed as in the record."""
    import tensorflow as tf

    return tf.io.parse_single_example(serialized, _features())


def decode_jpeg(data, min_side: int | None = None):
    """Decode a JPEG to uint8 RGB, at the smallest of libjpeg's scales (1, 1/2, 1/4, 1/8) whose
    shorter side is still at least ``min_side`` (None: full size).

    Scaling happens inside the inverse DCT, so a reduced decode costs a fraction of a full one; for
    a network input much smaller than the stored image this is most of the reading time.
    """
    import tensorflow as tf

    if not min_side:
        return tf.io.decode_jpeg(data, channels=3)
    shape = tf.image.extract_jpeg_shape(data)
    shorter = tf.minimum(shape[0], shape[1])
    # libjpeg rounds scaled sizes up; the conditions hold for a prefix of the ratios.
    halvings = tf.add_n([tf.cast((shorter + r - 1) // r >= min_side, tf.int32) for r in (2, 4, 8)])
    return tf.switch_case(halvings, [lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r) for r in (1, 2, 4, 8)])


def decode(features: dict, image_format: str, min_side: int | None = None):
    """The uint8 RGB image [height, width, 3] of parsed ``features`` stored as ``image_format``.

    ``min_side``: a JPEG may be decoded at a reduced scale, keeping its shorter side >= min_side.
    """
    import tensorflow as tf

    encoded = features["image/encoded"]
    if image_format == "jpeg":
        image = decode_jpeg(encoded, min_side)
    elif image_format == "png":
        image = tf.io.decode_png(encoded, channels=3, dtype=tf.uint8)
    else:
        shape = tf.stack([features["image/height"], features["image/width"], 3])
        image = tf.reshape(tf.io.decode_raw(encoded, tf.uint8), tf.cast(shape, tf.int32))
    image.set_shape([None, None, 3])
    return image


def read_store(path) -> dict:
    """A store's ``store.json``, as written by ``deepbc.shards.writer.encode_store``."""
    path = Path(path)
    try:
        store = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise UserError("encoded store index not found", str(path),
                        "run the workflow's encode_dataset rule for this dataset") from err
    except json.JSONDecodeError as err:
        raise UserError(f"encoded store index is not valid JSON: {err}", str(path), rebuild_store(path.parent)) from err
    return store


def as_stored(pixels: np.ndarray, encoding: dict | None):
    """Normalised ``pixels`` as the shard writer stores them under the shards' ``encoding``
    (settings.json's ``shard_encoding``: resized, encoded): (JPEG bytes, None) for JPEG shards, to be
    decoded as the shard reader decodes them, else (b"", the stored pixels). Without it the pixels
    as they are; a model then sees lossless pixels where training saw JPEG q95 (docs/methods.md)."""
    if not encoding:
        return b"", pixels
    from PIL import Image

    from deepbc.data import imageio
    
    height, width = pixels.shape[:2]
    shorter, limit = min(height, width), encoding["max_shorter_side"]
    scale = limit / shorter if limit and shorter > limit else 1.0
    data, height, width = encode(Image.fromarray(pixels, "RGB"), encoding["format"], encoding["jpeg_quality"], scale)
    if encoding["format"] == "jpeg":
        return data, None
    if encoding["format"] == "png":
        return b"", imageio.decode(data)
    return b"", np.frombuffer(data, np.uint8).reshape(height, width, 3)


def as_stored_tf(image, encoding: dict | None, min_side):
    """``as_stored`` as TensorFlow ops, then decoded as the shard reader decodes (``min_side``):
    tf.io.encode_jpeg at the same quality gives Pillow's pixels (tests/test_stain.py); the resize
    (``max_shorter_side``) is TensorFlow's antialiased Lanczos, close to but not Pillow's."""
    import tensorflow as tf

    if not encoding:
        return image
    limit = encoding["max_shorter_side"]
    if limit:
        size = tf.cast(tf.shape(image)[:2], tf.float64)
        scale = limit / tf.reduce_min(size)

        def shrink():
            new = tf.cast(tf.round(size * scale), tf.int32)
            resized = tf.image.resize(image, new, method="lanczos3", antialias=True)
            return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

        image = tf.cond(scale < 1, shrink, lambda: image)
    if encoding["format"] == "jpeg":
        return decode_jpeg(tf.io.encode_jpeg(image, quality=encoding["jpeg_quality"]), min_side)
    return image
