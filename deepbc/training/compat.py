"""Make tf-slim 1.1.0 work on TensorFlow 2.21 / tf-keras 2.21, and keep graph mode explicit.

The failure: ``slim.batch_norm`` (tf_slim/layers/layers.py, ``normalization_layers.BatchNormalization``
where ``normalization_layers`` is ``tensorflow.python.layers.normalization``) reaches TensorFlow's
lazy loader in tensorflow/python/layers/normalization.py, which imports
``tf_keras.legacy_tf_layers.normalization``. tf-keras 2.21 ships that module only as
``tf_keras.src.legacy_tf_layers.normalization``, so building any network with batch norm fails with
``ModuleNotFoundError: No module named 'tf_keras.legacy_tf_layers'``.

The fix: register the shipped modules under the old names in ``sys.modules`` before tf_slim needs
them. Every module of this package that needs slim gets it through :func:`import_slim`.

Graph mode: TF-Slim builds TF1 graphs. Rather than switching eager execution off for the whole
process (which would leak into other code and tests), callers build inside
``with tf.Graph().as_default():``; :func:`require_graph_mode` turns a forgotten graph context into a
clear error instead of an obscure one deep inside tf_slim.
"""

import importlib
import sys

# The names TensorFlow's lazy loader asks for, and where tf-keras 2.21 keeps them.
_ALIASES = {
    "tf_keras.legacy_tf_layers": "tf_keras.src.legacy_tf_layers",
    "tf_keras.legacy_tf_layers.normalization": "tf_keras.src.legacy_tf_layers.normalization",
}


def install_legacy_layers_alias() -> None:
    """Register tf_keras.src.legacy_tf_layers(.normalization) under the names TensorFlow imports.

    Idempotent; leaves the names alone where the installed tf-keras already provides them.
    """
    for old, new in _ALIASES.items():
        if old in sys.modules:
            continue
        try:
            importlib.import_module(old)
        except ModuleNotFoundError:
            sys.modules[old] = importlib.import_module(new)


def import_slim():
    """Return the ``tf_slim`` module, with the legacy-layers alias installed first."""
    install_legacy_layers_alias()
    import tf_slim

    return tf_slim


def require_graph_mode(what: str) -> None:
    """Raise a clear error if called eagerly: TF-Slim networks must be built inside a tf.Graph."""
    import tensorflow as tf

    if tf.executing_eagerly():
        raise RuntimeError(
            f"{what} builds a TF1 graph: call it inside `with tf.Graph().as_default():` "
            "(eager execution is left on globally on purpose)")
