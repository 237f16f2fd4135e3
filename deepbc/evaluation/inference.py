"""Running a kept model over images: the one way a model is loaded and run (its session built as
training builds it), and a split's predictions parquet. Below ``evaluate``, ``gradcam`` and
``predict``, which build their inputs and call it."""

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from deepbc.data.runs import COPY
from deepbc.jobs import atomic
from deepbc.jobs.errors import UserError
from deepbc.jobs.logs import Progress
from deepbc.training import model_dir as model_folder

LOG = logging.getLogger("deepbc.evaluation.inference")


def prediction_graph(model_dir, build_inputs, batch_size: int, threads: int = 0, more_outputs=None):
    """The graph ``run_predictions`` runs: (graph, probabilities, metadata, saver, session config).
    Arguments as for ``run_predictions``; bench/host_overhead.py loops over it bare."""
    import tensorflow as tf

    from deepbc.training import nets, precision, preprocessing

    settings = model_folder.load_settings(model_dir)
    arch, image_size = settings["arch"], settings["image_size"]
    spec = nets.NETWORKS[arch]
    graph = tf.Graph()
    with graph.as_default():
        preprocess = preprocessing.get_preprocessing(spec.preprocessing, is_training=False, augment=None)
        dataset = build_inputs(preprocess, image_size, batch_size)
        images, meta = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
        logits, end_points = nets.get_network_fn(arch, settings["num_classes"], is_training=False)(images)
        probs = tf.nn.softmax(tf.cast(logits, tf.float32))
        if more_outputs:
            meta = {**meta, **more_outputs(images, logits, end_points)}
        saver = tf.compat.v1.train.Saver(var_list=model_folder.model_variables(tf, spec))
    config = model_folder.session_config(tf, threads, precision.INFERENCE)
    return graph, probs, meta, saver, config


def run_predictions(model_dir, build_inputs, total: int, batch_size: int, threads: int = 0, more_outputs=None):
    """Run the network over the batches of ``build_inputs(preprocess_fn, image_size, batch_size)``.

    ``build_inputs`` returns a dataset of (images, metadata dict); yields (probabilities, metadata).
    ``more_outputs(images, logits, end_points) -> dict of tensors``: run with each batch too, and
    added to its metadata (deepbc.evaluation.gradcam's maps). The session is built as training builds it
    (threads), but computes in float32 whatever the model was trained in (``precision.INFERENCE``), as
    the SavedModel export does.
    """
    import tensorflow as tf

    graph, probs, meta, saver, config = prediction_graph(model_dir, build_inputs, batch_size, threads, more_outputs)
    progress = Progress(total, "predicting", "images")
    with tf.compat.v1.Session(graph=graph, config=config) as sess:
        saver.restore(sess, model_folder.checkpoint_prefix(model_dir))
        while True:
            try:
                p, m = sess.run([probs, meta])
            except tf.errors.OutOfRangeError:
                break
            progress.update(len(p))
            yield p, m


def frame(chunks, class_names) -> pd.DataFrame:
    """The (probabilities, metadata) chunks of ``run_predictions`` as one frame: the metadata columns,
    ``prob_<class>``, ``pred_index`` and ``pred``."""
    probs = np.concatenate([p for p, _ in chunks]) if chunks else np.zeros((0, len(class_names)))
    meta = {k: np.concatenate([m[k] for _, m in chunks]) for k in (chunks[0][1] if chunks else {})}
    df = pd.DataFrame({k: [v.decode() if isinstance(v, bytes) else v for v in vals] for k, vals in meta.items()})
    for i, name in enumerate(class_names):
        df[f"prob_{name}"] = probs[:, i].astype("float64")
    df["pred_index"] = probs.argmax(axis=1).astype("int64") if len(probs) else np.zeros(0, "int64")
    df["pred"] = [class_names[i] for i in df["pred_index"]]
    return df


def shard_inputs(shard_index):
    """``build_inputs`` of ``run_predictions`` over a split's shards: every member once, with its
    metadata and label index."""
    from deepbc.shards import reader as shard_reader

    def inputs(preprocess, image_size, batch):
        ds = shard_reader.make_dataset(shard_index, batch_size=batch, is_training=False, preprocess_fn=preprocess,
                                       image_size=image_size, repeat=False, with_metadata=True)
        return ds.map(lambda images, labels, meta: (images, {**meta, "label_index": labels}))

    return inputs


def predict_shards(model_dir, shard_index, out_path, batch_size: int = 64, threads: int = 0) -> pd.DataFrame:
    """Predict every image of a split (test, or validation for temperature scaling) and write the
    predictions parquet; its ``precision`` column says what the probabilities were computed in. An
    index of image copies (the augment-then-split protocol) gives a row per copy, with its ``copy``
    id after ``path`` (deepbc.data.runs.COPIES)."""
    from deepbc.training import precision

    index = json.loads(Path(shard_index).read_text())
    class_names = model_folder.load_settings(model_dir)["class_names"]
    if index["class_names"] != class_names:
        raise UserError(f"the model's classes {class_names} differ from the shards' {index['class_names']}",
                        str(shard_index), "evaluate a model on shards of the task it was trained on")

    chunks = list(run_predictions(model_dir, shard_inputs(shard_index), index["count"], batch_size, threads))
    df = frame(chunks, class_names).rename(columns={"filename": "path"})
    key = ["path", COPY] if COPY in df.columns else ["path"]
    columns = [*key, "patient", "magnification", "label", "label_index",
               *[f"prob_{c}" for c in class_names], "pred", "pred_index", "precision"]
    df = df.astype({c: "int64" for c in ("label_index", COPY) if c in df.columns})
    df["label"] = [class_names[i] for i in df["label_index"]]
    df["precision"] = precision.INFERENCE.name
    df = df[columns]
    df = df.sort_values(key, kind="stable").reset_index(drop=True)
    atomic.write_parquet(out_path, df)
    LOG.info("%d predictions written to %s (image-level accuracy %.3f)", len(df), out_path,
             float((df["pred_index"] == df["label_index"]).mean()))
    return df

