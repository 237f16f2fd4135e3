"""A kept model as a TensorFlow SavedModel that needs neither this package nor TF-Slim to serve.

The serving signature (``serving_default``) takes ``images``: a batch of encoded JPEG or PNG
strings (also BMP/GIF, first frame), and returns ``probabilities`` [batch, classes] and
``class_names`` [classes]. The network's evaluation preprocessing is inside, exactly as evaluation
does it: a JPEG decoded at the reduced scale the shard reader uses (``records.decode_jpeg``),
others decoded in full, then ``preprocessing.get_preprocessing(..., is_training=False)``.
A model trained on stain-normalised shards (settings.json's ``stain``) has the normalization
inside, with its fitted parameters, as TensorFlow ops (``deepbc.shards.stain.normalize_tf``), after a full
decode, then stored as the shards stored it (``deepbc.shards.records.as_stored_tf``: JPEG shards re-encoded
and decoded at the reader's scale), as predict_folder does it.
The graph computes in float32 whatever precision the model was trained in, as evaluation does
(``precision.INFERENCE``), so it reproduces the evaluation's probabilities. ``export.json`` beside
``saved_model.pb`` records the class names, input size and that precision.
"""

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from deepbc.jobs import atomic
from deepbc.jobs.errors import UserError
from deepbc.training import model_dir as model_folder

LOG = logging.getLogger("deepbc.training.export")
SIGNATURE = "serving_default"
INFO_FILE = "export.json"


def is_saved_model(path) -> bool:
    return (Path(path) / "saved_model.pb").is_file()


def load_info(export_dir) -> dict:
    path = Path(export_dir) / INFO_FILE
    if not path.is_file():
        raise UserError(f"a SavedModel without {INFO_FILE}: not an export of this workflow", str(export_dir),
                        "point at a folder results/export/{run}/{arch}/fold{k} written by the export_model rule")
    return json.loads(path.read_text())


def export_saved_model(model_dir, out_dir, threads: int = 0) -> Path:
    """Write the kept checkpoint of ``model_dir`` as a SavedModel in ``out_dir`` (replaced as a whole);
    ``threads``: TensorFlow threads of the session that restores it (0: one per core)."""
    import tensorflow as tf

    from deepbc.shards import records, stain
    from deepbc.training import nets, precision, preprocessing

    settings = model_folder.load_settings(model_dir)
    arch, image_size, class_names = settings["arch"], settings["image_size"], settings["class_names"]
    spec = nets.NETWORKS[arch]
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed onto it: a killed job leaves no SavedModel that looks complete.
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        graph = tf.Graph()
        with graph.as_default():
            preprocess = preprocessing.get_preprocessing(spec.preprocessing, is_training=False, augment=None)
            min_side = preprocess.min_source_side(image_size, image_size)
            encoded = tf.compat.v1.placeholder(tf.string, [None], name="images")

            params = settings.get("stain")

            def one(data):
                def full():
                    return tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)

                if params:  # normalised at full size and stored, as the shard writer and predict_folder do
                    image = records.as_stored_tf(stain.normalize_tf(full(), params), settings.get("shard_encoding"),
                                               min_side)
                else:
                    image = tf.cond(tf.io.is_jpeg(data), lambda: records.decode_jpeg(data, min_side), full)
                image.set_shape([None, None, 3])
                return preprocess(image, image_size, image_size)

            images = tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32))
            logits, _ = nets.get_network_fn(arch, settings["num_classes"], is_training=False)(images)
            probs = tf.nn.softmax(tf.cast(logits, tf.float32), name="probabilities")
            names = tf.constant(class_names, tf.string, name="class_names")
            saver = tf.compat.v1.train.Saver(var_list=model_folder.model_variables(tf, spec))
            info = tf.compat.v1.saved_model.utils.build_tensor_info
            signature = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
                inputs={"images": info(encoded)},
                outputs={"probabilities": info(probs), "class_names": info(names)},
                method_name=tf.compat.v1.saved_model.signature_constants.PREDICT_METHOD_NAME)
            with tf.compat.v1.Session(graph=graph, config=model_folder.session_config(
                    tf, threads, precision.INFERENCE)) as sess:
                saver.restore(sess, model_folder.checkpoint_prefix(model_dir))
                builder = tf.compat.v1.saved_model.Builder(str(staging / "model"))
                builder.add_meta_graph_and_variables(
                    sess, [tf.compat.v1.saved_model.tag_constants.SERVING],
                    signature_def_map={SIGNATURE: signature}, strip_default_attrs=True)
                builder.save()
        atomic.write_json(staging / "model" / INFO_FILE, {
            "arch": arch, "class_names": class_names, "image_size": image_size, "stain": settings.get("stain"),
            "precision": precision.INFERENCE.name, "signature": SIGNATURE, "input": "images",
            "outputs": ["probabilities", "class_names"]})
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging / "model", out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    LOG.info("SavedModel of %s written to %s", model_dir, out_dir)
    return out_dir
