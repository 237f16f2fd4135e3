"""Inception V4 (Szegedy et al. 2016, arXiv:1602.07261) written with tf-slim layers.

The tf-slim package does not ship Inception V4. The architecture, scope names and layer shapes here
follow the official TF-Slim implementation, research/slim/nets/inception_v4.py and
nets/inception_utils.py in tensorflow/models (Copyright 2016 The TensorFlow Authors, Apache License
2.0), so that the official ImageNet checkpoint ``inception_v4.ckpt`` restores into this network:
every variable is ``InceptionV4/<block>/<Branch_i>/<layer>/{weights,BatchNorm/...}`` as there.
The blocks are described as data (lists of branches) instead of one function per block.
"""

import tensorflow as tf

from deepbc.training.compat import import_slim

slim = import_slim()


def _conv(depth, kernel, name, stride=1, padding="SAME"):
    return ("conv", depth, kernel, stride, padding, name)


def _pool(kind, name, stride=1, padding="SAME", kernel=3):
    return (kind, None, kernel, stride, padding, name)


def _fork(*convs):
    """Parallel convolutions on the same input, concatenated (the 1x3 / 3x1 pairs of block C)."""
    return ("fork", convs)


# The stem's plain convolutions (299 -> 147 px), before the first mixed block.
_STEM = [_conv(32, 3, "Conv2d_1a_3x3", 2, "VALID"), _conv(32, 3, "Conv2d_2a_3x3", 1, "VALID"),
         _conv(64, 3, "Conv2d_2b_3x3")]

# Each block is a list of branches (Branch_0, Branch_1, ...); each branch a list of steps.
_MIXED_3A = [
    [_pool("max", "MaxPool_0a_3x3", 2, "VALID")],
    [_conv(96, 3, "Conv2d_0a_3x3", 2, "VALID")],
]
_MIXED_4A = [
    [_conv(64, 1, "Conv2d_0a_1x1"), _conv(96, 3, "Conv2d_1a_3x3", 1, "VALID")],
    [_conv(64, 1, "Conv2d_0a_1x1"), _conv(64, [1, 7], "Conv2d_0b_1x7"),
     _conv(64, [7, 1], "Conv2d_0c_7x1"), _conv(96, 3, "Conv2d_1a_3x3", 1, "VALID")],
]
_MIXED_5A = [
    [_conv(192, 3, "Conv2d_1a_3x3", 2, "VALID")],
    [_pool("max", "MaxPool_1a_3x3", 2, "VALID")],
]
_INCEPTION_A = [
    [_conv(96, 1, "Conv2d_0a_1x1")],
    [_conv(64, 1, "Conv2d_0a_1x1"), _conv(96, 3, "Conv2d_0b_3x3")],
    [_conv(64, 1, "Conv2d_0a_1x1"), _conv(96, 3, "Conv2d_0b_3x3"), _conv(96, 3, "Conv2d_0c_3x3")],
    [_pool("avg", "AvgPool_0a_3x3"), _conv(96, 1, "Conv2d_0b_1x1")],
]
_REDUCTION_A = [
    [_conv(384, 3, "Conv2d_1a_3x3", 2, "VALID")],
    [_conv(192, 1, "Conv2d_0a_1x1"), _conv(224, 3, "Conv2d_0b_3x3"),
     _conv(256, 3, "Conv2d_1a_3x3", 2, "VALID")],
    [_pool("max", "MaxPool_1a_3x3", 2, "VALID")],
]
_INCEPTION_B = [
    [_conv(384, 1, "Conv2d_0a_1x1")],
    [_conv(192, 1, "Conv2d_0a_1x1"), _conv(224, [1, 7], "Conv2d_0b_1x7"),
     _conv(256, [7, 1], "Conv2d_0c_7x1")],
    [_conv(192, 1, "Conv2d_0a_1x1"), _conv(192, [7, 1], "Conv2d_0b_7x1"),
     _conv(224, [1, 7], "Conv2d_0c_1x7"), _conv(224, [7, 1], "Conv2d_0d_7x1"),
     _conv(256, [1, 7], "Conv2d_0e_1x7")],
    [_pool("avg", "AvgPool_0a_3x3"), _conv(128, 1, "Conv2d_0b_1x1")],
]
_REDUCTION_B = [
    [_conv(192, 1, "Conv2d_0a_1x1"), _conv(192, 3, "Conv2d_1a_3x3", 2, "VALID")],
    [_conv(256, 1, "Conv2d_0a_1x1"), _conv(256, [1, 7], "Conv2d_0b_1x7"),
     _conv(320, [7, 1], "Conv2d_0c_7x1"), _conv(320, 3, "Conv2d_1a_3x3", 2, "VALID")],
    [_pool("max", "MaxPool_1a_3x3", 2, "VALID")],
]
_INCEPTION_C = [
    [_conv(256, 1, "Conv2d_0a_1x1")],
    [_conv(384, 1, "Conv2d_0a_1x1"),
     _fork(_conv(256, [1, 3], "Conv2d_0b_1x3"), _conv(256, [3, 1], "Conv2d_0c_3x1"))],
    [_conv(384, 1, "Conv2d_0a_1x1"), _conv(448, [3, 1], "Conv2d_0b_3x1"),
     _conv(512, [1, 3], "Conv2d_0c_1x3"),
     _fork(_conv(256, [1, 3], "Conv2d_0d_1x3"), _conv(256, [3, 1], "Conv2d_0e_3x1"))],
    [_pool("avg", "AvgPool_0a_3x3"), _conv(256, 1, "Conv2d_0b_1x1")],
]

# The blocks after the three stem convolutions, in order: 35x35 -> 17x17 -> 8x8 at 299 px.
LAYOUT = (
    [("Mixed_3a", _MIXED_3A), ("Mixed_4a", _MIXED_4A), ("Mixed_5a", _MIXED_5A)]
    + [(f"Mixed_5{c}", _INCEPTION_A) for c in "bcde"]
    + [("Mixed_6a", _REDUCTION_A)]
    + [(f"Mixed_6{c}", _INCEPTION_B) for c in "bcdefgh"]
    + [("Mixed_7a", _REDUCTION_B)]
    + [(f"Mixed_7{c}", _INCEPTION_C) for c in "bcd"]
)
ENDPOINTS = [step[-1] for step in _STEM] + [name for name, _ in LAYOUT]


def _step(net, step):
    kind = step[0]
    if kind == "fork":
        return tf.concat([_step(net, conv) for conv in step[1]], axis=3)
    _, depth, kernel, stride, padding, name = step
    if kind == "conv":
        return slim.conv2d(net, depth, kernel, stride=stride, padding=padding, scope=name)
    pool = slim.max_pool2d if kind == "max" else slim.avg_pool2d
    return pool(net, kernel, stride=stride, padding=padding, scope=name)


def _block(net, branches, scope):
    with tf.compat.v1.variable_scope(scope):
        outputs = []
        for i, steps in enumerate(branches):
            with tf.compat.v1.variable_scope(f"Branch_{i}"):
                branch = net
                for step in steps:
                    branch = _step(branch, step)
                outputs.append(branch)
        return tf.concat(outputs, axis=3)


def inception_v4_base(inputs, final_endpoint="Mixed_7d", scope=None):
    """Inception V4 up to ``final_endpoint`` (one of ENDPOINTS); returns (net, end_points)."""
    if final_endpoint not in ENDPOINTS:
        raise ValueError(f"unknown final endpoint {final_endpoint!r}; choose from {ENDPOINTS}")
    end_points = {}
    with tf.compat.v1.variable_scope(scope, "InceptionV4", [inputs]):
        with slim.arg_scope([slim.conv2d, slim.max_pool2d, slim.avg_pool2d], stride=1, padding="SAME"):
            net = inputs
            for step in _STEM:
                net = end_points[step[-1]] = _step(net, step)
                if step[-1] == final_endpoint:
                    return net, end_points
            for name, branches in LAYOUT:
                net = end_points[name] = _block(net, branches, name)
                if name == final_endpoint:
                    break
    return net, end_points


def inception_v4(inputs, num_classes=1001, is_training=True, dropout_keep_prob=0.8, reuse=None,
                 scope="InceptionV4", create_aux_logits=True):
    """Inception V4 classifier: returns (logits [batch, num_classes], end_points).

    With ``num_classes`` 0 or None the global-pooled features are returned instead of logits.
    ``end_points['AuxLogits']`` holds the auxiliary head (from Mixed_6h) when built.
    """
    with tf.compat.v1.variable_scope(scope, "InceptionV4", [inputs], reuse=reuse) as var_scope:
        with slim.arg_scope([slim.batch_norm, slim.dropout], is_training=is_training):
            net, end_points = inception_v4_base(inputs, scope=var_scope)
            with slim.arg_scope([slim.conv2d, slim.max_pool2d, slim.avg_pool2d], stride=1, padding="SAME"):
                if create_aux_logits and num_classes:
                    with tf.compat.v1.variable_scope("AuxLogits"):
                        aux = slim.avg_pool2d(end_points["Mixed_6h"], [5, 5], stride=3, padding="VALID",
                                              scope="AvgPool_1a_5x5")
                        aux = slim.conv2d(aux, 128, [1, 1], scope="Conv2d_1b_1x1")
                        # The kernel covers the whole map (5x5 at 299 px), as in the official net.
                        aux = slim.conv2d(aux, 768, aux.get_shape()[1:3], padding="VALID", scope="Conv2d_2a")
                        aux = slim.flatten(aux)
                        end_points["AuxLogits"] = slim.fully_connected(aux, num_classes, activation_fn=None,
                                                                       scope="Aux_logits")
                with tf.compat.v1.variable_scope("Logits"):
                    kernel = net.get_shape()[1:3]
                    if kernel.is_fully_defined():
                        net = slim.avg_pool2d(net, kernel, padding="VALID", scope="AvgPool_1a")
                    else:
                        net = tf.reduce_mean(net, axis=[1, 2], keepdims=True, name="global_pool")
                    end_points["global_pool"] = net
                    if not num_classes:
                        return net, end_points
                    net = slim.dropout(net, dropout_keep_prob, scope="Dropout_1b")
                    net = slim.flatten(net, scope="PreLogitsFlatten")
                    end_points["PreLogitsFlatten"] = net
                    logits = slim.fully_connected(net, num_classes, activation_fn=None, scope="Logits")
                    end_points["Logits"] = logits
                    end_points["Predictions"] = tf.nn.softmax(logits, name="Predictions")
    return logits, end_points


inception_v4.default_image_size = 299


def inception_v4_arg_scope(weight_decay=0.00004, use_batch_norm=True, batch_norm_decay=0.9997,
                           batch_norm_epsilon=0.001):
    """The arg scope of the official inception_utils.inception_arg_scope (BN without gamma)."""
    batch_norm_params = {
        "decay": batch_norm_decay,
        "epsilon": batch_norm_epsilon,
        "updates_collections": tf.compat.v1.GraphKeys.UPDATE_OPS,
    }
    with slim.arg_scope([slim.conv2d, slim.fully_connected],
                        weights_regularizer=slim.l2_regularizer(weight_decay)):
        with slim.arg_scope([slim.conv2d],
                            weights_initializer=slim.variance_scaling_initializer(),
                            activation_fn=tf.nn.relu,
                            normalizer_fn=slim.batch_norm if use_batch_norm else None,
                            normalizer_params=batch_norm_params if use_batch_norm else {}) as sc:
            return sc
