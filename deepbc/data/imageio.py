"""The one way image files become pixels: uint8 RGB arrays, the same for every reader.

The dataset check (``manifest``), the shard writer (``shard_writer.encode_image``) and ``predict_folder``
all decode with ``decode`` (or ``open_image``, ``load`` and ``rgb_image``/``to_rgb``), so training
and prediction see the same pixels, and a file the check accepts is one the others can read.

Accepted: PNG, JPEG and TIFF, at most ``MAX_PIXELS`` pixels. Pixel modes, to 8-bit RGB:

- ``1`` (bilevel): 0 and 255; ``L``: grey copied to the three channels; ``P``: the palette colours;
  ``RGB``, ``CMYK``, ``YCbCr``, ``LAB``: Pillow's conversion to RGB.
- 16-bit grey (``I;16``, ``I;16B``, ...): scaled, not clipped: ``round(v / 257)`` (65535 -> 255).
  16-bit colour PNGs and TIFFs are read by Pillow as ``RGB``/``RGBA`` keeping the high byte of
  each sample (``v >> 8``, at most one level from ``v / 257``).
- ``I`` (32-bit integer, TIFF): unsigned samples scaled from the declared ``BitsPerSample`` range
  (``v * 255 / (2**bits - 1)``); signed samples are rejected (``unsupported_mode``): they have no
  defined black and white levels.
- ``F`` (floating point): rejected (``unsupported_mode``) for the same reason; convert such images
  to 8 or 16 bits first.
- Alpha (``LA``, ``RGBA``, ``PA``, a palette with transparency) is composited on white, the colour
  of the empty glass of a slide: ``(c * a + 255 * (255 - a)) / 255``, rounded. A single
  transparent colour key of an ``L``/``RGB`` PNG (``tRNS``) is ignored: the shard writer stores
  such 8-bit RGB PNGs as they are, for TensorFlow's decoder, which keeps three channels.

EXIF orientation is ignored (as TensorFlow's decoders ignore it); a multi-page TIFF gives its first page.
Failures raise ``Rejected(reason, detail)`` with the reasons of ``manifest.REJECT_REASONS``.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import threading
import warnings

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

# Pillow format name -> our format name. MPO is how Pillow names some camera JPEGs.
FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "TIFF": "tiff"}
# The one pixel limit (docs/methods.md quotes it): Pillow's default MAX_IMAGE_PIXELS (about 9,459 x 9,459),
# 270 MB as RGB. Larger images (whole slides) must be cut into tiles first. Pillow's own check,
# which only fails at twice that, is off inside strict(), so every too_large detail states this one.
MAX_PIXELS = 89_478_485
_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
               b"II+\x00": "TIFF", b"MM\x00+": "TIFF"}
_TO_RGB = ("RGB", "CMYK", "YCbCr", "LAB", "HSV", "RGBX")
_TO_RGBA = ("RGBA", "RGBa", "PA")
_KNOWN = {"1", "L", "LA", "La", "P", "I", *_TO_RGB, *_TO_RGBA}


class Rejected(Exception):
    """A file that is not a usable image: ``reason`` (a manifest reject reason) and ``detail``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


# Pillow's leniency switch and its warning filters are process-wide: they are set while any
# thread decodes and restored when the last one is done.
_LOCK = threading.Lock()
_ACTIVE = 0
_SAVED: list = []


@contextlib.contextmanager
def strict():
    """Pillow refuses truncated data (it would pad with grey and report success), keeps quiet
    about e.g. corrupt EXIF (only pixel data matters; real errors still raise) and leaves the pixel
    limit to ``open_image`` (``MAX_PIXELS``). Thread-safe."""
    global _ACTIVE
    with _LOCK:
        if _ACTIVE == 0:
            catcher = warnings.catch_warnings()
            catcher.__enter__()
            warnings.simplefilter("ignore")
            _SAVED[:] = [ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS, catcher]
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            Image.MAX_IMAGE_PIXELS = None
        _ACTIVE += 1
    try:
        yield
    finally:
        with _LOCK:
            _ACTIVE -= 1
            if _ACTIVE == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS, catcher = _SAVED
                catcher.__exit__(None, None, None)


def read_file(path) -> bytes:
    """The bytes of an image file; raises Rejected for special files, OS errors and empty files."""
    try:
        with open(path, "rb") as fh:
            check_regular(fh)
            data = fh.read()
    except OSError as err:
        raise unreadable(err) from None
    if not data:
        raise Rejected("zero_bytes", "the file is empty")
    return data


def check_regular(fh) -> None:
    if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
        raise Rejected("not_an_image", "not a regular file")


def unreadable(err: OSError) -> Rejected:
    return Rejected("unreadable", f"cannot be read: {err}")


def open_image(source: bytes | io.IOBase) -> Image.Image:
    """Identify an image from its header without decoding it (Pillow reads lazily).

    Rejects files that are not PNG/JPEG/TIFF and images over ``MAX_PIXELS``. Call inside ``strict()``.
    """
    fh = io.BytesIO(source) if isinstance(source, bytes) else source
    start = fh.tell()
    try:
        im = Image.open(fh)
    except UnidentifiedImageError:
        fh.seek(start)
        head = fh.read(16)
        kind = next((k for sig, k in _SIGNATURES.items() if head.startswith(sig)), None)
        if kind:
            raise Rejected("undecodable", f"starts like a {kind} file but Pillow cannot read its header "
                                          f"(corrupted, or truncated before the image directory)") from None
        raise Rejected("not_an_image", f"not an image Pillow recognises (starts with {head[:8]!r})") from None
    except Exception as err:  # a readable signature whose header is not acceptable
        raise Rejected("undecodable", f"{type(err).__name__}: {err}") from None
    if FORMATS.get(im.format) is None:
        im.close()
        raise Rejected("not_an_image", f"a {im.format} image; accepted formats are PNG, JPEG, TIFF")
    width, height = im.size
    if width * height > MAX_PIXELS:
        im.close()
        raise Rejected("too_large", f"{width} x {height} = {width * height:,} pixels, more than the "
                                    f"{MAX_PIXELS:,} accepted; cut the image into tiles")
    return im


def load(im: Image.Image, reopen=None) -> None:
    """Decode the pixels of ``open_image``'s image, raising Rejected (``truncated``/``undecodable``).

    PNGs are also verified (every chunk's CRC and the IEND chunk, which ``load`` does not reach):
    ``reopen()`` must return a fresh file object at the image's start.
    """
    try:
        im.load()
        if im.format == "PNG" and reopen is not None:
            with reopen() as fh, Image.open(fh) as again:
                again.verify()
    except Rejected:
        raise
    except Exception as err:
        text = f"{type(err).__name__}: {err}"
        truncated = isinstance(err, EOFError) or "truncat" in str(err).lower()
        raise Rejected("truncated" if truncated else "undecodable", text) from None


def check_mode(im: Image.Image) -> None:
    """Raise Rejected (``unsupported_mode``) if ``rgb_image`` cannot convert ``im``; touches no pixels.

    Every other mode converts without fail, so a reader that only needs to know whether an image is
    usable (the dataset check) calls this instead of converting.
    """
    mode = im.mode
    if mode == "F":
        raise Rejected("unsupported_mode", "floating-point samples (mode F) have no defined black and white "
                                           "levels; convert the image to 8 or 16 bits per sample")
    if mode == "I":
        _unsigned_bits(im)
    elif not (mode in _KNOWN or mode.startswith("I;16")):
        raise Rejected("unsupported_mode", f"pixel mode {mode} has no defined conversion to RGB")


def rgb_image(im: Image.Image) -> Image.Image:
    """The decoded image in mode RGB, by the rules in the module docstring (``im`` itself if RGB)."""
    check_mode(im)
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _TO_RGB or mode in ("1", "L"):  # Pillow's conversions; 1 gives 0 and 255
        return im.convert("RGB")
    if mode == "P":
        return rgb_image(im.convert("RGBA" if "transparency" in im.info else "RGB"))
    if mode in _TO_RGBA:
        rgba = np.asarray(im if mode == "RGBA" else im.convert("RGBA"))
        return Image.fromarray(_on_white(rgba[..., :3], rgba[..., 3:]))
    if mode in ("LA", "La"):
        la = np.asarray(im.convert("LA") if mode == "La" else im)
        grey = _on_white(la[..., :1], la[..., 1:])[..., 0]
    elif mode == "I":
        # Pillow holds mode I as int32: unsigned 32-bit samples above 2**31 - 1 appear negative.
        grey = _scale(np.asarray(im).view(np.uint32).astype(np.int64), _unsigned_bits(im))
    else:  # I;16 and its byte orders
        grey = _scale(np.asarray(im).astype(np.int64), 16)
    return Image.fromarray(grey).convert("RGB")


def to_rgb(im: Image.Image) -> np.ndarray:
    """``rgb_image`` as uint8 [height, width, 3]."""
    return np.asarray(rgb_image(im))


def _scale(values: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    # Integer rounding of v * 255 / top, exact for every bit depth.
    return ((values * 255 * 2 + top) // (2 * top)).astype(np.uint8)


def _unsigned_bits(im: Image.Image) -> int:
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        raise Rejected("unsupported_mode", f"32-bit integer samples in a {im.format} file: unknown range")
    bits = tags.get(258, (32,))
    bits = bits[0] if isinstance(bits, tuple) else bits
    fmt = tags.get(339, (1,))
    fmt = fmt[0] if isinstance(fmt, tuple) else fmt
    if fmt != 1:
        raise Rejected("unsupported_mode", f"signed {bits}-bit integer samples have no defined black and "
                                           f"white levels; convert the image to unsigned 8 or 16 bits")
    return int(bits)


def _on_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    c, a = colour.astype(np.int32), alpha.astype(np.int32)
    return ((c * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def decode(source: bytes | str | os.PathLike) -> np.ndarray:
    """Decode image bytes or a file to uint8 RGB [height, width, 3], or raise Rejected."""
    data = source if isinstance(source, bytes) else read_file(source)
    if not data:
        raise Rejected("zero_bytes", "the file is empty")
    with strict(), open_image(data) as im:
        load(im, lambda: io.BytesIO(data))
        return to_rgb(im)
