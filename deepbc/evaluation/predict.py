"""Classifying a folder of new images with a kept model or a SavedModel export (rule predict_folder):
one row per file, a reject reason where a file cannot be read, per-patient means with a patient CSV."""

import concurrent.futures
import io
import logging
import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from deepbc.data import imageio
from deepbc.evaluation.inference import frame, run_predictions
from deepbc.jobs import atomic, names
from deepbc.jobs.errors import UserError
from deepbc.jobs.logs import Progress
from deepbc.training import model_dir as model_folder

LOG = logging.getLogger("deepbc.evaluation.predict")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
# An image whose shorter side is below this fraction of the network's input is enlarged more than
# 2x to reach it: predict_folder warns, because the network was never trained on such images.
SMALL_IMAGE_FRACTION = 0.5
# An image none of whose channels has a standard deviation of this many 8-bit levels shows nothing
# (a flat colour; a fully transparent image, composited on white): predict_folder warns, because
# its probabilities say nothing about tissue. Real tissue, even empty glass, varies far more.
BLANK_MAX_STD = 1.0


def predict_folder(model_dir, folder, out_csv, patients_csv=None, out_patients_csv=None,
                   batch_size: int = 64, threads: int = 0) -> pd.DataFrame:
    """Class probabilities for every image under ``folder``; per patient too when a CSV maps them.

    Every file with an image suffix gets a row: ``width``, ``height``, ``prob_<class>``, ``pred``,
    or, for a file that cannot be used, ``reason`` and ``detail`` (as in the dataset check's
    rejects) and no probabilities. ``warning`` flags images whose shorter side is below
    ``SMALL_IMAGE_FRACTION`` of the network's input (they are enlarged that much, which the
    network never saw in training), blank images (``BLANK_MAX_STD``) and file names that are not
    UTF-8, whose ``path`` shows those bytes as ``\\xNN`` (``names.printable``; a patients CSV names
    them so too); several warnings are joined by "; ". Images are decoded as the dataset check and
    the shard writer decode them (``deepbc.data.imageio``); 8-bit RGB JPEGs as the shard reader does, at
    a reduced scale, unless the model was trained on stain-normalised shards (settings.json's
    ``stain``): then every image is decoded in full, normalised with the same parameters
    (``deepbc.shards.stain``) and stored as the shards stored it (JPEG shards: re-encoded, then decoded as
    the shard reader does).
    ``model_dir`` may also be a model's SavedModel export (``deepbc.training.export``): other images then
    reach it as PNGs (lossless), and it decodes and preprocesses them as evaluation does.
    """
    import tensorflow as tf

    from deepbc.shards import records
    from deepbc.training import export

    # Read before any prediction: a bad CSV found after them would lose the run's work.
    mapping = _patients(patients_csv) if patients_csv else None
    saved_model = export.is_saved_model(model_dir)
    settings = export.load_info(model_dir) if saved_model else model_folder.load_settings(model_dir)
    class_names, image_size = settings["class_names"], settings["image_size"]
    # An export normalises inside its graph.
    stain = None if saved_model else settings.get("stain")
    # Models trained before settings.json recorded it: normalised pixels go in as they are.
    encoding = settings.get("shard_encoding")
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError("the folder of images to predict does not exist", str(folder),
                        "pass a folder holding PNG, JPEG or TIFF images")
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise UserError("no images found (looked for .png, .jpg, .jpeg, .tif, .tiff)", str(folder),
                        "put the images to classify in this folder or its subfolders")
    # Keyed by position in paths, which is what travels with each image: a name that is not UTF-8 can be
    # neither a TensorFlow string of text nor a pandas one.
    rejected: dict[int, tuple[str, str]] = {}
    decoded: dict[int, _Decoded] = {}

    def inputs(preprocess, image_size, batch):
        min_side = preprocess.min_source_side(image_size, image_size)
        workers = threads or os.cpu_count() or 1
        spec = (tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.string), tf.TensorSpec([None, None, 3], tf.uint8))
        ds = tf.data.Dataset.from_generator(
            lambda: _decoded(folder, paths, min_side, workers, rejected, decoded, stain, encoding),
            output_signature=spec)

        def load(index, jpeg, pixels):
            image = tf.cond(tf.strings.length(jpeg) > 0, lambda: records.decode_jpeg(jpeg, min_side),
                            lambda: pixels)
            image.set_shape([None, None, 3])
            return preprocess(image, image_size, image_size), {"index": index}

        # A JPEG that Pillow decoded but TensorFlow cannot is dropped here and reported below.
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
        return ds.batch(batch).prefetch(tf.data.AUTOTUNE)

    def encoded_inputs(batch):
        spec = (tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.string), tf.TensorSpec([None, None, 3], tf.uint8))
        ds = tf.data.Dataset.from_generator(
            lambda: _decoded(folder, paths, None, threads or os.cpu_count() or 1, rejected, decoded),
            output_signature=spec)
        ds = ds.map(lambda index, jpeg, pixels: (tf.cond(tf.strings.length(jpeg) > 0, lambda: jpeg,
                                                         lambda: tf.io.encode_png(pixels)), {"index": index}))
        return ds.batch(batch)

    if saved_model:
        chunks = list(_run_saved_model(model_dir, encoded_inputs(batch_size), len(paths)))
    else:
        chunks = list(run_predictions(model_dir, inputs, len(paths), batch_size, threads))
    df = frame(chunks, class_names)
    if "index" not in df:  # nothing predicted
        df.insert(0, "index", pd.Series([], dtype="int64"))
    for i in sorted(set(decoded) - set(df["index"])):
        rejected[i] = ("undecodable", "TensorFlow's JPEG decoder failed on it (Pillow could decode it)")
    df = _with_rejects(df, paths, rejected, decoded, class_names, image_size)
    if mapping is not None:
        df = df.merge(mapping[["path", "patient"]], on="path", how="left")
        missing = df["patient"].isna().sum()
        if missing:
            LOG.warning("%d images are not in %s: each is its own patient", missing, patients_csv)
            df["patient"] = df["patient"].fillna(df["path"])
    atomic.write_csv(out_csv, df)
    predicted = df[df["reason"] == ""]
    LOG.info("%d of %d images predicted -> %s", len(predicted), len(df), out_csv)
    for row in df[df["reason"] != ""].itertuples():
        LOG.warning("not predicted: %s: %s (%s)", row.path, row.reason, row.detail)
    small = sum(_small(d, image_size) for d in decoded.values())
    if small:
        LOG.warning("%d image(s) have a shorter side below %d px, half the network's input (%d px): see the "
                    "warning column", small, math.ceil(image_size * SMALL_IMAGE_FRACTION), image_size)
    blank = sorted(names.printable(paths[i]) for i, d in decoded.items() if _blank(d))
    if blank:
        LOG.warning("%d image(s) are blank (no channel's standard deviation reaches %g level), so their predictions "
                    "say nothing: %s", len(blank), BLANK_MAX_STD, _some(blank))
    undecodable = [names.printable(p) for p in paths if not names.is_utf8(p)]
    if undecodable:
        LOG.warning("%d file name(s) are not valid UTF-8: the CSV shows their undecodable bytes as \\xNN, and so "
                    "must a patients CSV: %s", len(undecodable), _some(undecodable))
    if predicted.empty:
        raise UserError(f"none of the {len(df)} images could be read (reasons in {out_csv} and above)", str(folder),
                        "give PNG, JPEG or TIFF images that open in an image viewer")
    if patients_csv and out_patients_csv:
        prob_cols = [f"prob_{c}" for c in class_names]
        per_patient = predicted.groupby("patient", sort=True)[prob_cols].mean()
        per_patient.insert(0, "n_images", predicted.groupby("patient", sort=True).size())
        per_patient["pred"] = [class_names[i] for i in per_patient[prob_cols].to_numpy().argmax(axis=1)]
        atomic.write_csv(out_patients_csv, per_patient.reset_index())
    return df


def _patients(patients_csv) -> pd.DataFrame:
    """The patients CSV (``path,patient``, UTF-8), checked."""
    try:
        mapping = pd.read_csv(patients_csv, dtype=str)
    except UnicodeDecodeError as err:
        raise UserError(f"the patient CSV is not UTF-8 text ({err.reason} at byte {err.start})", str(patients_csv),
                        "save it as UTF-8 (a name that is not UTF-8 is written with its bytes as \\xNN, as the "
                        "predictions CSV shows it)") from None
    except (OSError, pd.errors.ParserError) as err:
        raise UserError(f"the patient CSV cannot be read: {err}", str(patients_csv),
                        "give a CSV with the header line path,patient") from None
    if not {"path", "patient"} <= set(mapping.columns):
        raise UserError("the patient CSV needs columns 'path' and 'patient'", str(patients_csv),
                        "add a header line: path,patient")
    return mapping


def _run_saved_model(export_dir, dataset, total: int):
    """Yield (probabilities, metadata) of a SavedModel export over a dataset of (encoded images, metadata)."""
    import tensorflow as tf

    from deepbc.training import export

    serve = tf.saved_model.load(str(export_dir)).signatures[export.SIGNATURE]
    progress = Progress(total, "predicting", "images")
    for encoded, meta in dataset:
        # A JPEG that Pillow decoded but TensorFlow cannot fails its whole batch: retry one by one.
        try:
            probs = serve(images=encoded)["probabilities"].numpy()
        except tf.errors.InvalidArgumentError:
            for i in range(len(encoded)):
                try:
                    p = serve(images=encoded[i:i + 1])["probabilities"].numpy()
                except tf.errors.InvalidArgumentError:
                    continue
                yield p, {k: v[i:i + 1].numpy() for k, v in meta.items()}
            progress.update(len(encoded))
            continue
        progress.update(len(probs))
        yield probs, {k: v.numpy() for k, v in meta.items()}


class _Decoded(NamedTuple):
    width: int
    height: int
    spread: float  # the largest standard deviation of one channel of the decoded pixels, in 8-bit levels


def _small(d: _Decoded, image_size: int) -> bool:
    return min(d.width, d.height) < image_size * SMALL_IMAGE_FRACTION


def _blank(d: _Decoded) -> bool:
    return d.spread < BLANK_MAX_STD


def _spread(pixels: np.ndarray) -> float:
    # One channel at a time in float32: at most 4 bytes a pixel on top of the image.
    return max(float(pixels[..., c].std(dtype=np.float32)) for c in range(3))


def _some(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def _decoded(folder: Path, paths: list[str], min_side, workers: int, rejected: dict, decoded: dict, stain=None,
             encoding=None):
    """Yield (position in ``paths``, JPEG bytes or b"", pixels) per usable file in order; record each
    in ``decoded`` (``_Decoded``), the others in ``rejected``, both by position.

    Decoding runs in threads (Pillow releases the GIL while decoding), a few files ahead of the network.
    """
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(paths), 4 * workers):
            chunk = paths[start:start + 4 * workers]
            results = pool.map(lambda r: _read_for_prediction(folder / r, min_side, stain, encoding), chunk)
            for i, result in enumerate(results, start):
                if isinstance(result, imageio.Rejected):
                    rejected[i] = (result.reason, result.detail)
                    continue
                jpeg, pixels, width, height, spread = result
                decoded[i] = _Decoded(width, height, spread)
                yield i, jpeg, pixels


_NO_PIXELS = np.zeros((0, 0, 3), np.uint8)


def _read_for_prediction(path: Path, min_side, stain=None, encoding=None):
    """(JPEG bytes, no pixels) for an 8-bit RGB JPEG, which TensorFlow decodes as the shard reader
    does; else (b"", imageio's pixels); with the width, the height and the ``_spread`` of the decoded
    pixels (before any stain normalisation). With ``stain``, imageio's pixels normalised (as the
    shard writer normalises, at full size) and stored as the shards stored them (``encoding``:
    ``deepbc.shards.stain.as_stored``). Returns imageio.Rejected, not raises."""
    try:
        data = imageio.read_file(path)
        with imageio.strict(), imageio.open_image(data) as im:
            width, height = im.size
            if im.format in ("JPEG", "MPO") and im.mode == "RGB" and not stain:
                if min_side:
                    # Checked at the scale TensorFlow will decode it: as thorough, a fraction of the work.
                    im.draft("RGB", (min_side, min_side))
                imageio.load(im)
                return data, _NO_PIXELS, width, height, _spread(np.asarray(im))
            imageio.load(im, lambda: io.BytesIO(data))
            rgb = imageio.to_rgb(im)
            if stain:
                from deepbc.shards import records
                from deepbc.shards import stain as stain_mod

                jpeg, pixels = records.as_stored(stain_mod.normalize(rgb, stain), encoding)
                return jpeg, _NO_PIXELS if pixels is None else pixels, width, height, _spread(rgb)
            return b"", rgb, width, height, _spread(rgb)
    except imageio.Rejected as rejected:
        return rejected


def _with_rejects(df: pd.DataFrame, paths: list[str], rejected: dict, decoded: dict, class_names,
                  image_size: int) -> pd.DataFrame:
    """The predictions (by position in ``paths``) plus a row per rejected file, sorted by path (printable),
    with size, reason and warning columns."""
    prob_cols = [f"prob_{c}" for c in class_names]
    df = df.assign(reason="", detail="")
    rows = pd.DataFrame([{"index": i, "reason": r, "detail": d} for i, (r, d) in rejected.items()],
                        columns=["index", "reason", "detail"])
    df = pd.concat([df, rows], ignore_index=True) if len(rows) else df
    df["pred_index"] = df["pred_index"].astype("Int64")
    df["pred"] = df["pred"].fillna("")
    df["width"] = pd.array([decoded[i].width if i in decoded else None for i in df["index"]], dtype="Int64")
    df["height"] = pd.array([decoded[i].height if i in decoded else None for i in df["index"]], dtype="Int64")
    df["warning"] = [_warning(paths[i], decoded.get(i), image_size) for i in df["index"]]
    df["path"] = [names.printable(paths[i]) for i in df["index"]]
    columns = ["path", "width", "height", *prob_cols, "pred", "pred_index", "warning", "reason", "detail"]
    # By index too: a name holding a backslash, "x", "e", "9" prints as one holding the byte 0xE9 does.
    return df.sort_values(["path", "index"], kind="stable")[columns].reset_index(drop=True)


def _warning(path: str, d: _Decoded | None, image_size: int) -> str:
    notes = []
    if not names.is_utf8(path):
        notes.append("the file name is not valid UTF-8: path shows its undecodable bytes as \\xNN")
    if d is not None and _small(d, image_size):
        side = min(d.width, d.height)
        notes.append(f"shorter side {side} px is below half the network input ({image_size} px): enlarged "
                     f"{image_size / side:.1f}x")
    if d is not None and _blank(d):
        notes.append(f"blank: no channel's standard deviation reaches {BLANK_MAX_STD:g} level (largest "
                     f"{d.spread:.2f}), e.g. a fully transparent image, composited on white; the prediction "
                     f"says nothing")
    return "; ".join(notes)
