"""The tf-slim 1.1.0 / tf-keras 2.21 batch-norm import fix, and the graph-mode guard."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from deepbc.training.compat import import_slim, require_graph_mode

# In a fresh interpreter (this test process may already hold the alias): build a batch norm with
# plain tf_slim, which must fail, then install the fix and build again in the same process.
FAIL_THEN_FIX = textwrap.dedent("""
    import tensorflow as tf
    import tf_slim as slim

    def build():
        with tf.Graph().as_default():
            slim.batch_norm(tf.compat.v1.placeholder(tf.float32, [2, 4, 4, 3]), is_training=True)

    try:
        build()
        print("plain: built")
    except ModuleNotFoundError as err:
        print(f"plain: {err}")
    from deepbc.training.compat import import_slim
    import_slim()
    build()
    print("fixed: built")
""")


def test_batch_norm_fails_without_the_fix_and_builds_with_it():
    run = subprocess.run([sys.executable, "-c", FAIL_THEN_FIX], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines() == ["plain: No module named 'tf_keras.legacy_tf_layers'", "fixed: built"]


def test_batch_norm_normalises_and_updates_moving_statistics():
    slim = import_slim()
    data = np.random.default_rng(0).normal(5.0, 3.0, size=(16, 4, 4, 3)).astype(np.float32)
    with tf.Graph().as_default():
        x = tf.constant(data)
        y = slim.batch_norm(x, is_training=True, decay=0.0, scale=True)
        names = sorted(v.op.name for v in slim.get_model_variables())
        updates = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
        moving_mean = [v for v in slim.get_model_variables() if v.op.name.endswith("moving_mean")][0]
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            out, _ = sess.run([y, updates])
            mean_after = sess.run(moving_mean)
    assert names == ["BatchNorm/beta", "BatchNorm/gamma", "BatchNorm/moving_mean", "BatchNorm/moving_variance"]
    assert len(updates) == 2
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(0, 1, 2)), 1.0, atol=1e-2)
    # decay 0: the moving mean becomes the batch mean after one update.
    np.testing.assert_allclose(mean_after, data.mean(axis=(0, 1, 2)), rtol=1e-5)


def test_import_slim_is_idempotent():
    assert import_slim() is import_slim()
    assert "tf_keras.legacy_tf_layers.normalization" in sys.modules


def test_require_graph_mode():
    with pytest.raises(RuntimeError, match="tf.Graph"):
        require_graph_mode("test")
    with tf.Graph().as_default():
        require_graph_mode("test")


def test_tensorflow_imported_after_the_package_does_not_load_keras_3():
    """Keras 3's import is about 1 s of CPU in each of the workflow's TensorFlow processes, for
    modules nothing here uses (TF-Slim uses tf-keras)."""
    from tests.trainkit import packages_imported

    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    assert packages_imported("deepbc, tensorflow", "keras", env) == []
