"""One decode for every reader: each Pillow mode to the documented uint8 RGB, in the dataset check,
the shard writer and predict_folder's decoder alike."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepbc.data import imageio
from deepbc.data.manifest import build_manifest
from deepbc.evaluation import predict
from deepbc.shards import records
from deepbc.shards import writer as shard_writer

RNG = np.random.default_rng(11)
GREY = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
RGB = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
ALPHA = np.array([0, 1, 128, 254, 255] * 6, np.uint8).reshape(6, 5)
WIDE = (np.arange(30, dtype=np.int64).reshape(6, 5) * 2259).astype(np.uint16)  # 0 .. 65511


def _on_white(c, a):
    c, a = c.astype(np.float64), a.astype(np.float64)
    return np.round((c * a + 255 * (255 - a)) / 255).astype(np.uint8)


def _grey3(g):
    return np.repeat(np.asarray(g, np.uint8)[..., None], 3, axis=2)


def _save(im: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def _unsigned_32bit_tiff(values: np.ndarray) -> bytes:
    """Pillow writes mode I as signed; flip the SampleFormat tag (339) to unsigned."""
    im = Image.frombytes("I", values.shape[::-1], values.astype("<u4").tobytes(), "raw", "I;32N")
    data = _save(im, "TIFF")
    signed = b"\x53\x01\x03\x00\x01\x00\x00\x00\x02\x00"
    assert data.count(signed) == 1
    return data.replace(signed, signed[:-2] + b"\x01\x00")


def _cases():
    """name -> (file bytes, expected uint8 RGB pixels or the reject reason)."""
    palette = np.array([[200, 10, 10], [10, 200, 10], [10, 10, 200], [90, 90, 90]], np.uint8)
    index = (np.arange(30) % 4).reshape(6, 5).astype(np.uint8)
    p = Image.fromarray(index, "P")
    p.putpalette(palette.ravel().tolist())
    p_alpha = np.array([0, 128, 255, 255], np.uint8)
    cmyk = np.concatenate([RGB, np.zeros((6, 5, 1), np.uint8)], axis=2)  # K = 0: RGB = 255 - CMY
    la = Image.fromarray(np.stack([GREY, ALPHA], axis=2), "LA")
    rgba = Image.fromarray(np.concatenate([RGB, ALPHA[..., None]], axis=2), "RGBA")
    wide32 = np.array([0, 1, 2**31, 2**32 - 1, 123456789, 3 * 10**9] * 5, np.uint64).reshape(6, 5)
    cases = {
        "1.png": (_save(Image.fromarray(GREY > 127), "PNG"), _grey3((GREY > 127) * 255)),
        "1.tif": (_save(Image.fromarray(GREY > 127), "TIFF"), _grey3((GREY > 127) * 255)),
        "L.png": (_save(Image.fromarray(GREY), "PNG"), _grey3(GREY)),
        "L.jpg": (None, None),  # lossy: compared with Pillow's own decode below
        "LA.png": (_save(la, "PNG"), _grey3(_on_white(GREY, ALPHA))),
        "LA.tif": (_save(la, "TIFF"), _grey3(_on_white(GREY, ALPHA))),
        "P.png": (_save(p, "PNG"), palette[index]),
        "P.tif": (_save(p, "TIFF"), palette[index]),
        "P-transparent.png": (_save(p, "PNG", transparency=p_alpha.tobytes()),
                              _on_white(palette[index], p_alpha[index][..., None])),
        "RGB.png": (_save(Image.fromarray(RGB), "PNG"), RGB),
        "RGB.tif": (_save(Image.fromarray(RGB), "TIFF"), RGB),
        "RGBA.png": (_save(rgba, "PNG"), _on_white(RGB, ALPHA[..., None])),
        "RGBA.tif": (_save(rgba, "TIFF"), _on_white(RGB, ALPHA[..., None])),
        "CMYK.tif": (_save(Image.fromarray(cmyk, "CMYK"), "TIFF"), 255 - RGB),
        "I16.png": (_save(Image.fromarray(WIDE), "PNG"), _grey3(np.round(WIDE / 257))),
        "I16.tif": (_save(Image.fromarray(WIDE), "TIFF"), _grey3(np.round(WIDE / 257))),
        "I16B.tif": (_save(Image.frombytes("I;16B", (5, 6), WIDE.astype(">u2").tobytes()), "TIFF"),
                     _grey3(np.round(WIDE / 257))),
        "I32-unsigned.tif": (_unsigned_32bit_tiff(wide32), _grey3(np.round(wide32 * 255 / (2**32 - 1)))),
        "I32-signed.tif": (_save(Image.fromarray(WIDE.astype(np.int32)), "TIFF"), "unsupported_mode"),
        "F.tif": (_save(Image.fromarray(GREY.astype(np.float32) / 255), "TIFF"), "unsupported_mode"),
    }
    cases["L.jpg"] = (_save(Image.fromarray(GREY), "JPEG"), None)
    cases["CMYK.jpg"] = (_save(Image.fromarray(cmyk, "CMYK"), "JPEG"), None)
    return cases


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_mode_decodes_to_the_documented_pixels(name):
    data, expected = CASES[name]
    if isinstance(expected, str):
        with pytest.raises(imageio.Rejected) as err:
            imageio.decode(data)
        assert err.value.reason == expected and "no defined black and white levels" in err.value.detail
        return
    pixels = imageio.decode(data)
    assert pixels.dtype == np.uint8 and pixels.shape == (6, 5, 3)
    if expected is None:  # JPEG: Pillow's own RGB conversion of the same decode
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(pixels, expected)


def test_the_check_the_shard_writer_and_predict_folder_agree_on_every_mode(tmp_path):
    """Every file the dataset check accepts is stored in the shards, and read by predict_folder, with
    exactly imageio's pixels; the ones it rejects predict_folder rejects too."""
    for name, (data, _) in CASES.items():
        (tmp_path / "x").mkdir(exist_ok=True)
        (tmp_path / "x" / name).write_bytes(data)
    manifest, rejects = build_manifest(tmp_path, "folder", classes=["x"])
    assert dict(zip(rejects["path"], rejects["reason"])) == {
        f"x/{n}": e for n, (_, e) in CASES.items() if isinstance(e, str)}
    assert len(manifest) == len(CASES) - len(rejects)
    for row in manifest.itertuples():
        path = str(tmp_path / row.path)
        pixels = imageio.decode(Path(path))
        assert (row.height, row.width) == pixels.shape[:2]
        for fmt in ("png", "raw"):
            encoded, height, width, _ = shard_writer.encode_image(path, fmt, 95, 0, row.sha256)
            features = {"image/encoded": encoded, "image/height": height, "image/width": width}
            np.testing.assert_array_equal(records.decode(features, fmt).numpy(), pixels, err_msg=f"{row.path} {fmt}")
        jpeg, predicted, width, height, _ = predict._read_for_prediction(Path(path), None)
        assert (height, width) == pixels.shape[:2]
        if row.path in ("x/CMYK.jpg", "x/L.jpg"):  # not 8-bit RGB: decoded by imageio, not as JPEG bytes
            assert jpeg == b""
        if jpeg:  # 8-bit RGB JPEGs go to TensorFlow's decoder, as in the shard reader
            assert jpeg == Path(path).read_bytes()
        else:
            np.testing.assert_array_equal(predicted, pixels, err_msg=row.path)
    for name in ("x/F.tif", "x/I32-signed.tif"):
        assert predict._read_for_prediction(tmp_path / name, None).reason == "unsupported_mode"
