"""Stateless dropout for the training tower, so that a resumed run draws the masks it would have.

TF-Slim's ``slim.dropout`` (tf_slim/layers/layers.py) uses Keras' ``Dropout``, a stateful random
op: its position in the random sequence lives in the session, not in a checkpoint, so a restored
session starts over at step 1's masks. :func:`stateless_dropout` swaps, while a training graph is
built, the ``dropout`` that TF-Slim's network functions call (``layers_lib.dropout`` in
tf_slim.nets, ``slim.dropout`` in deepbc.training.nets.inception_v4: the same function, looked up at call
time) for one whose mask is a pure function of (run seed, global step, layer name):
``tf.nn.experimental.stateless_dropout`` seeded with
``stateless_fold_in([run seed, hash of the layer's scope], global step)``. Same semantics as
TF-Slim's: with probability ``keep_prob`` an element is kept and scaled by ``1 / keep_prob``,
otherwise zeroed; inputs unchanged when not training. Evaluation towers are built outside the
block (and have ``is_training=False``, hence no dropout).
"""

import contextlib
import hashlib
import sys

from deepbc.training.compat import import_slim


def layer_key(name: str) -> int:
    """A stable 31-bit integer for a layer's scope name (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") >> 1


def _make(run_seed: int, original):
    import tensorflow as tf
    from tf_slim.ops import arg_scope as arg_scope_lib

    key = arg_scope_lib.arg_scope_func_key(original)

    def dropout(inputs, keep_prob=0.5, noise_shape=None, is_training=True, outputs_collections=None,
                scope=None, seed=None):
        # ``seed`` (an op-level seed in TF-Slim) is ignored: the run seed and the layer decide.
        from tf_slim.layers import utils

        with tf.compat.v1.variable_scope(scope, "Dropout", [inputs]) as sc:
            inputs = tf.convert_to_tensor(inputs)
            step = tf.compat.v1.train.get_or_create_global_step()
            base = tf.constant([run_seed, layer_key(sc.name)], tf.int64)
            op_seed = tf.random.experimental.stateless_fold_in(base, tf.cast(step, tf.int64))

            def dropped():
                return tf.nn.experimental.stateless_dropout(
                    inputs, rate=1.0 - keep_prob, seed=op_seed, noise_shape=noise_shape)

            if isinstance(is_training, bool):
                outputs = dropped() if is_training else tf.identity(inputs)
            else:
                outputs = tf.cond(tf.cast(is_training, tf.bool), dropped, lambda: tf.identity(inputs))
            return utils.collect_named_outputs(outputs_collections, sc.name, outputs)

    def with_arg_scope(*args, **kwargs):
        # What add_arg_scope does, under the original's key: arg scopes naming slim.dropout (inside
        # or outside the network functions) apply to this one.
        scoped = arg_scope_lib.current_arg_scope().get(key, {})
        return dropout(*args, **{**scoped, **kwargs})

    with_arg_scope._key_op = key
    return with_arg_scope


@contextlib.contextmanager
def stateless_dropout(run_seed: int):
    """Inside the block, TF-Slim's dropout is stateless, seeded by (run_seed, global step, layer)."""
    slim = import_slim()
    layers_lib = sys.modules["tf_slim.layers.layers"]
    layers_pkg = sys.modules["tf_slim.layers"]
    owners = (layers_lib, layers_pkg, slim)
    original = layers_lib.dropout
    replaced = _make(int(run_seed), original)
    saved = [(m, m.dropout) for m in owners]
    for m in owners:
        m.dropout = replaced
    try:
        yield
    finally:
        for m, fn in saved:
            m.dropout = fn
