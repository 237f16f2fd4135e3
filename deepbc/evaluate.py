"""Predictions of a trained model: on a fold's test shards, or on a folder of new images."""

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from deepbc import atomic
from deepbc.errors import UserError
from deepbc.logs import Progress

LOG = logging.getLogger("deepbc.evaluate")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}


def load_model_settings(model_dir) -> dict:
    path = Path(model_dir) / "settings.json"
    if not path.exists():
        raise UserError("no trained model here (settings.json is missing)", str(model_dir),
                        "point at a folder results/models/{task}/{arch}/fold{k} written by the train rule")
    return json.loads(path.read_text())


def _run_predictions(model_dir, build_inputs, total: int, batch_size: int, threads: int = 0):
    """Run the network over the batches of ``build_inputs(preprocess_fn, image_size)``.

    ``build_inputs`` returns a dataset of (images, metadata dict); yields (probabilities, metadata).
    """
    import tensorflow as tf

    from deepbc import nets, preprocessing

    settings = load_model_settings(model_dir)
    arch, image_size = settings["arch"], settings["image_size"]
    spec = nets.NETWORKS[arch]
    graph = tf.Graph()
    with graph.as_default():
        preprocess = preprocessing.get_preprocessing(spec.preprocessing, is_training=False, augment=None)
        dataset = build_inputs(preprocess, image_size, batch_size)
        images, meta = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
        logits, _ = nets.get_network_fn(arch, settings["num_classes"], is_training=False)(images)
        probs = tf.nn.softmax(tf.cast(logits, tf.float32))
        model_vars = [v for v in tf.compat.v1.global_variables() if v.name.startswith(spec.scope + "/")]
        saver = tf.compat.v1.train.Saver(var_list=model_vars)
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads,
                                          inter_op_parallelism_threads=threads)
        config.gpu_options.allow_growth = True
        progress = Progress(total, "predicting", "images")
        with tf.compat.v1.Session(graph=graph, config=config) as sess:
            saver.restore(sess, str(Path(model_dir) / "model.ckpt"))
            while True:
                try:
                    p, m = sess.run([probs, meta])
                except tf.errors.OutOfRangeError:
                    break
                progress.update(len(p))
                yield p, m


def _frame(chunks, class_names) -> pd.DataFrame:
    probs = np.concatenate([p for p, _ in chunks]) if chunks else np.zeros((0, len(class_names)))
    meta = {k: np.concatenate([m[k] for _, m in chunks]) for k in (chunks[0][1] if chunks else {})}
    df = pd.DataFrame({k: [v.decode() if isinstance(v, bytes) else v for v in vals] for k, vals in meta.items()})
    for i, name in enumerate(class_names):
        df[f"prob_{name}"] = probs[:, i].astype("float64")
    df["pred_index"] = probs.argmax(axis=1).astype("int64") if len(probs) else np.zeros(0, "int64")
    df["pred"] = [class_names[i] for i in df["pred_index"]]
    return df


def predict_shards(model_dir, shard_index, out_path, batch_size: int = 64, threads: int = 0) -> pd.DataFrame:
    """Predict every image of a split (usually test) and write the predictions parquet."""
    from deepbc import shards

    index = json.loads(Path(shard_index).read_text())
    class_names = load_model_settings(model_dir)["class_names"]
    if index["class_names"] != class_names:
        raise UserError(f"the model's classes {class_names} differ from the shards' {index['class_names']}",
                        str(shard_index), "evaluate a model on shards of the task it was trained on")

    def inputs(preprocess, image_size, batch):
        ds = shards.make_dataset(shard_index, batch_size=batch, is_training=False, preprocess_fn=preprocess,
                                 image_size=image_size, repeat=False, with_metadata=True)
        return ds.map(lambda images, labels, meta: (images, {**meta, "label_index": labels}))

    chunks = list(_run_predictions(model_dir, inputs, index["count"], batch_size, threads))
    df = _frame(chunks, class_names).rename(columns={"filename": "path"})
    df["label_index"] = df["label_index"].astype("int64")
    df["label"] = [class_names[i] for i in df["label_index"]]
    df = df[["path", "patient", "magnification", "label", "label_index",
             *[f"prob_{c}" for c in class_names], "pred", "pred_index"]]
    df = df.sort_values("path", kind="stable").reset_index(drop=True)
    atomic.write_parquet(out_path, df)
    LOG.info("%d predictions written to %s (image-level accuracy %.3f)", len(df), out_path,
             float((df["pred_index"] == df["label_index"]).mean()) if len(df) else float("nan"))
    return df


def predict_folder(model_dir, folder, out_csv, patients_csv=None, out_patients_csv=None,
                   batch_size: int = 64, threads: int = 0) -> pd.DataFrame:
    """Class probabilities for every image under ``folder``; per patient too when a CSV maps them."""
    import tensorflow as tf

    from deepbc import shards

    class_names = load_model_settings(model_dir)["class_names"]
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError("the folder of images to predict does not exist", str(folder),
                        "pass a folder holding PNG, JPEG or TIFF images")
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise UserError("no images found (looked for .png, .jpg, .jpeg, .tif, .tiff)", str(folder),
                        "put the images to classify in this folder or its subfolders")

    def decode(rel, min_side):
        data = tf.io.read_file(tf.strings.join([str(folder) + "/", rel]))
        # JPEGs are decoded as the shard reader decodes them, so a folder's predictions match the test split's.
        image = tf.cond(tf.io.is_jpeg(data), lambda: shards.decode_jpeg(data, min_side),
                        lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
        image.set_shape([None, None, 3])
        return image

    def inputs(preprocess, image_size, batch):
        min_side = preprocess.min_source_side(image_size, image_size)
        ds = tf.data.Dataset.from_tensor_slices(paths)
        ds = ds.map(lambda rel: (preprocess(decode(rel, min_side), image_size, image_size), {"path": rel}),
                    num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(batch).prefetch(tf.data.AUTOTUNE)

    chunks = list(_run_predictions(model_dir, inputs, len(paths), batch_size, threads))
    df = _frame(chunks, class_names)
    if patients_csv:
        mapping = pd.read_csv(patients_csv, dtype=str)
        if not {"path", "patient"} <= set(mapping.columns):
            raise UserError("the patient CSV needs columns 'path' and 'patient'", str(patients_csv),
                            "add a header line: path,patient")
        df = df.merge(mapping[["path", "patient"]], on="path", how="left")
        missing = df["patient"].isna().sum()
        if missing:
            LOG.warning("%d images are not in %s: each is its own patient", missing, patients_csv)
            df["patient"] = df["patient"].fillna(df["path"])
    atomic.write_csv(out_csv, df)
    LOG.info("%d images predicted -> %s", len(df), out_csv)
    if patients_csv and out_patients_csv:
        prob_cols = [f"prob_{c}" for c in class_names]
        per_patient = df.groupby("patient", sort=True)[prob_cols].mean()
        per_patient.insert(0, "n_images", df.groupby("patient", sort=True).size())
        per_patient["pred"] = [class_names[i] for i in per_patient[prob_cols].to_numpy().argmax(axis=1)]
        atomic.write_csv(out_patients_csv, per_patient.reset_index())
    return df
