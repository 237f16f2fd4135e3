"""Grad-CAM (Selvaraju et al. 2017, ICCV, "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization") for a fixed, seeded sample of a fold's test images.

The map of an image is ``ReLU(sum_k w_k A_k)`` over the feature maps ``A_k`` of the network's
last convolutional block (``NetSpec.gradcam_end_point``), with ``w_k`` the spatial mean of the
gradient of the predicted class's logit with respect to ``A_k``; it is resized bilinearly to the
network's input and scaled to a maximum of 1 per image. The model is built and restored by
deepbc.evaluation.inference's own code, on the same preprocessed test images the predictions came from.

The sample: per true class, up to ``per_kind`` correctly and ``per_kind`` wrongly classified
test images, drawn by ``numpy.random.default_rng(seed)`` from the predictions sorted by path (and
copy, under the augment-then-split protocol, whose test images are copies), so the same predictions
and seed give the same images (and figure).
"""

import logging

import numpy as np
import pandas as pd

from deepbc.data.runs import COPY
from deepbc.jobs.errors import UserError

LOG = logging.getLogger("deepbc.evaluation.gradcam")
PER_KIND = 2


def select_samples(predictions: pd.DataFrame, class_names: list[str], seed: int,
                   per_kind: int = PER_KIND) -> pd.DataFrame:
    """Rows ``path, copy, label, pred, prob, correct`` (``copy``: the copy id, 0 for predictions
    without copies; ``prob``: of the predicted class), class by class in ``class_names`` order,
    correct before wrong, each group in path and copy order."""
    df = predictions if COPY in predictions.columns else predictions.assign(**{COPY: 0})
    df = df.sort_values(["path", COPY], kind="stable").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    picked = []
    for label in class_names:
        for correct in (True, False):
            rows = df[(df["label"] == label) & ((df["pred"] == df["label"]) == correct)]
            take = np.sort(rng.choice(len(rows), size=min(per_kind, len(rows)), replace=False))
            # Rows as dicts: a class name need not be a Python identifier (itertuples would rename it).
            for row in rows.iloc[take].to_dict("records"):
                picked.append({"path": row["path"], COPY: int(row[COPY]), "label": label, "pred": row["pred"],
                               "prob": float(row[f"prob_{row['pred']}"]), "correct": correct})
    return pd.DataFrame(picked, columns=["path", COPY, "label", "pred", "prob", "correct"])


def gradcam_maps(model_dir, shard_index, images: list[tuple[str, int]], threads: int = 0) -> dict[tuple, dict]:
    """``{(path, copy): {"image": float [H, W, 3] in 0..1, "map": float [H, W] in 0..1}}`` for the
    test ``images`` (path, copy id; 0 where the shards hold no copies) of the shards of
    ``shard_index``, as the model of ``model_dir`` sees them."""
    import tensorflow as tf

    from deepbc.evaluation import inference
    from deepbc.shards import reader as shard_reader
    from deepbc.training import model_dir as model_folder
    from deepbc.training import nets, preprocessing

    images = sorted((str(path), int(copy)) for path, copy in images)
    if not images:
        return {}
    settings = model_folder.load_settings(model_dir)
    spec = nets.get_spec(settings["arch"])

    def inputs(preprocess, image_size, batch):
        paths = tf.constant([path for path, _ in images])
        copies = tf.constant([copy for _, copy in images], tf.int32)
        ds = shard_reader.make_dataset(shard_index, batch_size=batch, is_training=False, preprocess_fn=preprocess,
                                 image_size=image_size, repeat=False, with_metadata=True).unbatch()

        def copy(meta):
            return tf.cast(meta.get(COPY, 0), tf.int32)

        ds = ds.filter(lambda image, label, meta: tf.reduce_any(
            tf.equal(meta["filename"], paths) & tf.equal(copy(meta), copies)))
        return ds.map(lambda image, label, meta: (image, {"path": meta["filename"], COPY: copy(meta)})).batch(batch)

    def outputs(images, logits, end_points):
        features = end_points[spec.gradcam_end_point]
        logits = tf.cast(logits, tf.float32)
        predicted = tf.one_hot(tf.argmax(logits, 1), logits.shape[-1])
        # Images are independent in inference mode, so the gradient of the sum is each image's own.
        grads = tf.gradients(tf.reduce_sum(logits * predicted), features)[0]
        weights = tf.reduce_mean(tf.cast(grads, tf.float32), [1, 2], keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(features, tf.float32), -1, keepdims=True))
        return {"map": tf.image.resize(cam, tf.shape(images)[1:3], method="bilinear")[..., 0],
                "image": _displayable(images, spec.preprocessing, preprocessing.VGG_MEANS)}

    found = {}
    for _, meta in inference.run_predictions(model_dir, inputs, len(images), len(images), threads, outputs):
        for path, copy, image, cam in zip(meta["path"], meta[COPY], meta["image"], meta["map"]):
            peak = cam.max()
            found[(path.decode(), int(copy))] = {"image": image, "map": cam / peak if peak > 0 else cam}
    missing = sorted(set(images) - set(found))
    if missing:
        raise UserError(f"{len(missing)} predicted image(s) are not in the shards, e.g. {missing[0]}",
                        str(shard_index), "remake the predictions from these shards (delete the predictions parquet)")
    return found


def _displayable(images, style: str, vgg_means):
    """Preprocessed network input back to RGB in [0, 1] (the inverse of deepbc.training.preprocessing's scaling)."""
    import tensorflow as tf

    if style == "vgg":
        rgb = (images + tf.constant(vgg_means, images.dtype)) / 255.0
    else:
        rgb = images / 2.0 + 0.5
    return tf.clip_by_value(rgb, 0.0, 1.0)


def plot_gradcam(model_dir, shard_index, predictions_path, class_names: list[str], seed: int, title: str,
                 out_png, threads: int = 0, per_kind: int = PER_KIND, split_audits=()):
    """The Grad-CAM figure of one fold: a row per true class; per sampled image, the network's input and
    the map over it, titled correct/wrong, true and predicted class and the predicted class's probability.
    ``split_audits``: the run's split audit (a predefined split or repeated holdouts is named in the title)."""
    from matplotlib.figure import Figure

    from deepbc.data.splits import with_split_label
    from deepbc.jobs import atomic
    from deepbc.training import model_dir as model_folder
    from deepbc.training import nets

    predictions = pd.read_parquet(predictions_path)
    sample = select_samples(predictions, class_names, seed, per_kind)
    maps = gradcam_maps(model_dir, shard_index, list(zip(sample["path"], sample[COPY])), threads)
    end_point = nets.get_spec(model_folder.load_settings(model_dir)["arch"]).gradcam_end_point
    columns = 2 * per_kind
    fig = Figure(figsize=(2.0 * 2 * columns, 2.3 * len(class_names) + 0.6))
    axes = fig.subplots(len(class_names), 2 * columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for r, label in enumerate(class_names):
        rows = sample[sample["label"] == label]
        correct, wrong = list(rows[rows["correct"]].itertuples()), list(rows[~rows["correct"]].itertuples())
        # Correct images in the left half, wrong ones in the right half.
        for c, row in enumerate(correct + [None] * (per_kind - len(correct)) + wrong):
            if row is None:
                continue
            shown = maps[(row.path, getattr(row, COPY))]
            image_ax, map_ax = axes[r, 2 * c], axes[r, 2 * c + 1]
            image_ax.imshow(shown["image"])
            image_ax.set_title(f"{'correct' if row.correct else 'WRONG'}: true {row.label}\n"
                               f"pred {row.pred} (p={row.prob:.2f})", fontsize=7)
            map_ax.imshow(shown["image"])
            map_ax.imshow(shown["map"], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            map_ax.set_title("Grad-CAM", fontsize=7)
        if rows.empty:
            axes[r, 0].text(0, 0.5, f"no test image of class {label}", fontsize=8)
    fig.suptitle(with_split_label(f"{title}: Grad-CAM of the predicted class on {end_point}", split_audits),
                 fontsize=9)
    fig.tight_layout()
    atomic.write_figure(fig, out_png=out_png)
    LOG.info("Grad-CAM of %d test images -> %s", len(sample), out_png)
    return fig, sample

