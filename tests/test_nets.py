"""The network registry: every network builds in a fresh graph with its official checkpoint's names."""

import numpy as np
import pytest
import tensorflow as tf

from deepbc.jobs.errors import UserError
from deepbc.training.compat import import_slim
from deepbc.training.nets import NETWORKS, get_network_fn, get_spec
from deepbc.training.preprocessing import STYLES
from tests import trainkit

slim = import_slim()

# Variables every official checkpoint holds, with their shapes (from the TF-Slim definitions; the
# logits widths are those of the published checkpoints: 1000 for ResNet V1 and VGG, else 1001).
KNOWN = {
    "resnet_v1_50": {
        "resnet_v1_50/conv1/weights": [7, 7, 3, 64],
        "resnet_v1_50/conv1/BatchNorm/moving_mean": [64],
        "resnet_v1_50/block1/unit_1/bottleneck_v1/conv1/weights": [1, 1, 64, 64],
        "resnet_v1_50/block1/unit_1/bottleneck_v1/shortcut/weights": [1, 1, 64, 256],
        "resnet_v1_50/block3/unit_6/bottleneck_v1/conv2/weights": [3, 3, 256, 256],
        "resnet_v1_50/block4/unit_3/bottleneck_v1/conv3/BatchNorm/gamma": [2048],
        "resnet_v1_50/logits/weights": [1, 1, 2048, 1000],
        "resnet_v1_50/logits/biases": [1000],
    },
    "resnet_v1_101": {"resnet_v1_101/block3/unit_23/bottleneck_v1/conv2/weights": [3, 3, 256, 256]},
    "resnet_v1_152": {"resnet_v1_152/block2/unit_8/bottleneck_v1/conv1/weights": [1, 1, 512, 128],
                      "resnet_v1_152/block3/unit_36/bottleneck_v1/conv3/weights": [1, 1, 256, 1024]},
    "resnet_v1_200": {"resnet_v1_200/block2/unit_24/bottleneck_v1/conv2/BatchNorm/beta": [128]},
    "resnet_v2_50": {
        "resnet_v2_50/conv1/weights": [7, 7, 3, 64],
        "resnet_v2_50/conv1/biases": [64],
        "resnet_v2_50/block1/unit_1/bottleneck_v2/preact/beta": [64],
        "resnet_v2_50/block1/unit_1/bottleneck_v2/shortcut/weights": [1, 1, 64, 256],
        "resnet_v2_50/postnorm/moving_variance": [2048],
        "resnet_v2_50/logits/weights": [1, 1, 2048, 1001],
    },
    "resnet_v2_101": {"resnet_v2_101/block3/unit_23/bottleneck_v2/conv3/biases": [1024]},
    "resnet_v2_152": {"resnet_v2_152/block3/unit_36/bottleneck_v2/conv2/weights": [3, 3, 256, 256]},
    "inception_v1": {
        "InceptionV1/Conv2d_1a_7x7/weights": [7, 7, 3, 64],
        "InceptionV1/Mixed_5c/Branch_3/Conv2d_0b_1x1/weights": [1, 1, 832, 128],
        "InceptionV1/Logits/Conv2d_0c_1x1/weights": [1, 1, 1024, 1001],
    },
    "inception_v2": {
        "InceptionV2/Conv2d_1a_7x7/depthwise_weights": [7, 7, 3, 8],
        "InceptionV2/Conv2d_1a_7x7/pointwise_weights": [1, 1, 24, 64],
        "InceptionV2/Logits/Conv2d_1c_1x1/weights": [1, 1, 1024, 1001],
    },
    "inception_v3": {
        "InceptionV3/Conv2d_1a_3x3/weights": [3, 3, 3, 32],
        "InceptionV3/Conv2d_1a_3x3/BatchNorm/beta": [32],
        "InceptionV3/Mixed_7c/Branch_2/Conv2d_0d_3x1/weights": [3, 1, 384, 384],
        "InceptionV3/AuxLogits/Conv2d_2a_5x5/weights": [5, 5, 128, 768],
        "InceptionV3/AuxLogits/Conv2d_2b_1x1/weights": [1, 1, 768, 1001],
        "InceptionV3/Logits/Conv2d_1c_1x1/weights": [1, 1, 2048, 1001],
    },
    "inception_v4": {
        "InceptionV4/Conv2d_1a_3x3/weights": [3, 3, 3, 32],
        "InceptionV4/Mixed_7d/Branch_2/Conv2d_0e_3x1/weights": [3, 1, 512, 256],
        "InceptionV4/Logits/Logits/weights": [1536, 1001],
    },
    "vgg_16": {
        "vgg_16/conv1/conv1_1/weights": [3, 3, 3, 64],
        "vgg_16/conv5/conv5_3/biases": [512],
        "vgg_16/fc6/weights": [7, 7, 512, 4096],
        "vgg_16/fc8/weights": [1, 1, 4096, 1000],
    },
    "vgg_19": {"vgg_19/conv5/conv5_4/weights": [3, 3, 512, 512], "vgg_19/fc8/biases": [1000]},
    "resnet_small": {
        "resnet_small/conv1/weights": [7, 7, 3, 64],
        "resnet_small/block1/unit_1/bottleneck_v1/conv1/weights": [1, 1, 64, 16],
        "resnet_small/block3/unit_1/bottleneck_v1/conv3/weights": [1, 1, 64, 256],
        "resnet_small/logits/weights": [1, 1, 256, 1000],
    },
}

# Building the biggest graphs takes several seconds each on two shared cores: they run with -m slow.
# Measured: 8-15 s each for these, 0.2-4 s for the others (inception_v4: 10 s, in its own test).
SLOW = {"resnet_v1_101", "resnet_v1_152", "resnet_v1_200", "resnet_v2_101", "resnet_v2_152"}


def model_variables(graph) -> dict[str, list[int]]:
    with graph.as_default():
        return {v.op.name: v.shape.as_list() for v in slim.get_model_variables()}


def test_every_registered_network_is_checked():
    assert set(KNOWN) == set(NETWORKS)


def check_official_names(name: str, graph, logits, classes: int) -> dict[str, list[int]]:
    spec = NETWORKS[name]
    assert logits.shape.as_list() == [1, classes]
    variables = model_variables(graph)
    assert all(v.startswith(spec.scope + "/") for v in variables), "a variable outside the top scope"
    for var, shape in KNOWN[name].items():
        assert variables.get(var) == shape, var
    for scope in spec.exclude_scopes:
        assert any(v.startswith(scope + "/") for v in variables), f"exclude scope {scope} matches nothing"
    with graph.as_default():
        trainable = {v.op.name for v in tf.compat.v1.trainable_variables()}
    assert not any(v.endswith(("moving_mean", "moving_variance")) for v in trainable)
    return variables


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in sorted(NETWORKS) if n != "inception_v4"])
def test_network_builds_with_official_variable_names(name):
    classes = NETWORKS[name].checkpoint_classes or 1000
    graph, logits, end_points = trainkit.build_network(name, classes)
    check_official_names(name, graph, logits, classes)
    check_gradcam_end_point(name, end_points)


def check_gradcam_end_point(name: str, end_points) -> None:
    """Grad-CAM's end point is a feature map, and the last one with space in it (VGG's pool5 aside)."""
    point = NETWORKS[name].gradcam_end_point
    assert end_points[point].shape.rank == 4 and end_points[point].shape[1] > 1
    keys = list(end_points)
    for key in keys[keys.index(point) + 1:]:
        shape = end_points[key].shape.as_list()
        assert len(shape) < 4 or shape[1:3] == [1, 1] or key == f"{name}/pool5", (key, shape)


# (name, shape) of representative Inception V4 variables, read off the official
# research/slim/nets/inception_v4.py (one per kind of layer and block, plus the heads).
INCEPTION_V4 = {
    "Conv2d_1a_3x3/weights": [3, 3, 3, 32],
    "Conv2d_1a_3x3/BatchNorm/beta": [32],
    "Conv2d_1a_3x3/BatchNorm/moving_mean": [32],
    "Conv2d_1a_3x3/BatchNorm/moving_variance": [32],
    "Conv2d_2a_3x3/weights": [3, 3, 32, 32],
    "Conv2d_2b_3x3/weights": [3, 3, 32, 64],
    "Mixed_3a/Branch_1/Conv2d_0a_3x3/weights": [3, 3, 64, 96],
    "Mixed_4a/Branch_0/Conv2d_0a_1x1/weights": [1, 1, 160, 64],
    "Mixed_4a/Branch_0/Conv2d_1a_3x3/weights": [3, 3, 64, 96],
    "Mixed_4a/Branch_1/Conv2d_0b_1x7/weights": [1, 7, 64, 64],
    "Mixed_4a/Branch_1/Conv2d_0c_7x1/weights": [7, 1, 64, 64],
    "Mixed_4a/Branch_1/Conv2d_1a_3x3/weights": [3, 3, 64, 96],
    "Mixed_5a/Branch_0/Conv2d_1a_3x3/weights": [3, 3, 192, 192],
    "Mixed_5b/Branch_0/Conv2d_0a_1x1/weights": [1, 1, 384, 96],
    "Mixed_5b/Branch_2/Conv2d_0c_3x3/weights": [3, 3, 96, 96],
    "Mixed_5e/Branch_3/Conv2d_0b_1x1/weights": [1, 1, 384, 96],
    "Mixed_6a/Branch_0/Conv2d_1a_3x3/weights": [3, 3, 384, 384],
    "Mixed_6a/Branch_1/Conv2d_0b_3x3/weights": [3, 3, 192, 224],
    "Mixed_6a/Branch_1/Conv2d_1a_3x3/weights": [3, 3, 224, 256],
    "Mixed_6b/Branch_0/Conv2d_0a_1x1/weights": [1, 1, 1024, 384],
    "Mixed_6b/Branch_1/Conv2d_0c_7x1/weights": [7, 1, 224, 256],
    "Mixed_6e/Branch_2/Conv2d_0b_7x1/weights": [7, 1, 192, 192],
    "Mixed_6h/Branch_2/Conv2d_0e_1x7/weights": [1, 7, 224, 256],
    "Mixed_6h/Branch_3/Conv2d_0b_1x1/weights": [1, 1, 1024, 128],
    "Mixed_7a/Branch_0/Conv2d_1a_3x3/weights": [3, 3, 192, 192],
    "Mixed_7a/Branch_1/Conv2d_0b_1x7/weights": [1, 7, 256, 256],
    "Mixed_7a/Branch_1/Conv2d_1a_3x3/weights": [3, 3, 320, 320],
    "Mixed_7b/Branch_0/Conv2d_0a_1x1/weights": [1, 1, 1536, 256],
    "Mixed_7b/Branch_1/Conv2d_0b_1x3/weights": [1, 3, 384, 256],
    "Mixed_7b/Branch_1/Conv2d_0c_3x1/weights": [3, 1, 384, 256],
    "Mixed_7c/Branch_2/Conv2d_0b_3x1/weights": [3, 1, 384, 448],
    "Mixed_7c/Branch_2/Conv2d_0c_1x3/weights": [1, 3, 448, 512],
    "Mixed_7d/Branch_2/Conv2d_0d_1x3/weights": [1, 3, 512, 256],
    "Mixed_7d/Branch_3/Conv2d_0b_1x1/BatchNorm/moving_variance": [256],
    "AuxLogits/Conv2d_1b_1x1/weights": [1, 1, 1024, 128],
    "AuxLogits/Conv2d_2a/weights": [5, 5, 128, 768],
    "AuxLogits/Aux_logits/weights": [768, 1001],
    "AuxLogits/Aux_logits/biases": [1001],
    "Logits/Logits/weights": [1536, 1001],
    "Logits/Logits/biases": [1001],
}


def test_inception_v4_matches_the_official_structure():
    graph, logits, end_points = trainkit.build_network("inception_v4", 1001)
    variables = check_official_names("inception_v4", graph, logits, 1001)
    for var, shape in INCEPTION_V4.items():
        assert variables.get(f"InceptionV4/{var}") == shape, var
    # Convolutions of the official definition: stem 3, Mixed_3a 1, Mixed_4a 6, Mixed_5a 1,
    # 4 Inception-A x 7, Reduction-A 4, 7 Inception-B x 10, Reduction-B 6, 3 Inception-C x 10,
    # and 2 in the auxiliary head; each with weights and 3 batch-norm variables (no gamma).
    convs = 3 + 1 + 6 + 1 + 4 * 7 + 4 + 7 * 10 + 6 + 3 * 10 + 2
    assert sum(v.endswith("/weights") for v in variables) == convs + 2  # + the two fully connected
    assert not any(v.endswith("gamma") for v in variables)
    assert len(variables) == convs * 4 + 2 * 2
    with graph.as_default():
        trainable = [v for v in tf.compat.v1.trainable_variables() if "/AuxLogits/" not in v.op.name]
    params = sum(int(np.prod(v.shape)) for v in trainable)
    assert abs(params - 42.7e6) < 0.1e6, params  # 42.7M published for Inception V4
    assert end_points["Mixed_6h"].shape.as_list() == [1, 17, 17, 1024]
    assert end_points["Mixed_7d"].shape.as_list() == [1, 8, 8, 1536]
    assert end_points["AuxLogits"].shape.as_list() == [1, 1001]
    check_gradcam_end_point("inception_v4", end_points)


def test_inception_v4_base_stops_at_the_final_endpoint():
    from deepbc.training.nets.inception_v4 import inception_v4_base

    with tf.Graph().as_default():
        net, end_points = inception_v4_base(tf.compat.v1.placeholder(tf.float32, [1, 299, 299, 3]),
                                            final_endpoint="Mixed_4a")
        assert list(end_points)[-1] == "Mixed_4a"
        assert net.shape.as_list() == [1, 71, 71, 192]
        with pytest.raises(ValueError, match="unknown final endpoint"):
            inception_v4_base(net, final_endpoint="Mixed_9z")


def test_registry_carries_the_official_checkpoints():
    urls = {name: spec.checkpoint_url for name, spec in NETWORKS.items() if spec.checkpoint_url}
    base = "http://download.tensorflow.org/models/"
    assert urls == {
        "inception_v1": base + "inception_v1_2016_08_28.tar.gz",
        "inception_v2": base + "inception_v2_2016_08_28.tar.gz",
        "inception_v3": base + "inception_v3_2016_08_28.tar.gz",
        "inception_v4": base + "inception_v4_2016_09_09.tar.gz",
        "resnet_v1_50": base + "resnet_v1_50_2016_08_28.tar.gz",
        "resnet_v1_101": base + "resnet_v1_101_2016_08_28.tar.gz",
        "resnet_v1_152": base + "resnet_v1_152_2016_08_28.tar.gz",
        "resnet_v2_50": base + "resnet_v2_50_2017_04_14.tar.gz",
        "resnet_v2_101": base + "resnet_v2_101_2017_04_14.tar.gz",
        "resnet_v2_152": base + "resnet_v2_152_2017_04_14.tar.gz",
        "vgg_16": base + "vgg_16_2016_08_28.tar.gz",
        "vgg_19": base + "vgg_19_2016_08_28.tar.gz",
    }
    for name, spec in NETWORKS.items():
        assert spec.checkpoint_file == f"{name}.ckpt"
        assert spec.preprocessing in STYLES
        assert all(s.startswith(spec.scope + "/") for s in spec.exclude_scopes)
        assert spec.min_image_size <= spec.default_image_size
    assert NETWORKS["inception_v3"].exclude_scopes == ("InceptionV3/Logits", "InceptionV3/AuxLogits")
    assert NETWORKS["vgg_16"].exclude_scopes == ("vgg_16/fc8",)
    assert NETWORKS["resnet_v1_50"].preprocessing == "vgg"
    assert NETWORKS["resnet_v2_50"].preprocessing == "inception"  # README: trained at 299, Inception style
    assert NETWORKS["inception_v4"].default_image_size == 299


def test_unknown_network_lists_the_known_ones():
    with pytest.raises(UserError, match="resnet_v1_50") as err:
        get_spec("resnet_50")
    assert "unknown network 'resnet_50'" in str(err.value)


def test_bad_arguments_are_clear():
    with pytest.raises(UserError, match="num_classes"):
        get_network_fn("resnet_small", 1)
    fn = get_network_fn("vgg_16", 4)
    with pytest.raises(RuntimeError, match="tf.Graph"):
        fn(tf.zeros([1, 224, 224, 3]))
    with tf.Graph().as_default(), pytest.raises(UserError, match="at least 224x224"):
        fn(tf.compat.v1.placeholder(tf.float32, [1, 64, 64, 3]))


def test_vgg_logits_are_pooled_above_its_native_size():
    _, logits, _ = trainkit.build_network("vgg_16", 5, size=256)
    assert logits.shape.as_list() == [1, 5]
    assert logits.op.name == "SpatialMean"


def test_resnet_small_trains_and_updates_batch_norm():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 64, 64, 3)).astype(np.float32)
    y = rng.integers(0, 4, 16)
    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(0)
        logits, _ = get_network_fn("resnet_small", 4, is_training=True)(tf.constant(x))
        assert logits.shape.as_list() == [16, 4]
        loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(y, logits)
        updates = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
        assert len(updates) == 2 * sum(v.op.name.endswith("moving_mean") for v in slim.get_model_variables())
        with tf.control_dependencies(updates):
            train = tf.compat.v1.train.AdamOptimizer(1e-3).minimize(loss)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            first = sess.run(loss)
            for _ in range(15):
                sess.run(train)
            last = sess.run(loss)
    assert last < 0.5 * first


@pytest.mark.parametrize("name,size", [("resnet_small", 32), ("inception_v1", 193)])
def test_batch_norm_decay_reaches_every_batch_norm_network(name, size):
    """Inception V1's arg scope takes no decay argument: the setting must still reach its layers.
    Two updates on one batch give m2 / m1 = 1 + decay for a moving mean starting at 0."""
    decay = 0.25
    x = np.random.default_rng(0).uniform(0, 1, (2, size, size, 3)).astype(np.float32)
    with tf.Graph().as_default():
        get_network_fn(name, 2, is_training=True, batch_norm_decay=decay)(tf.constant(x))
        updates = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
        mean = [v for v in slim.get_model_variables() if v.op.name.endswith("moving_mean")][0]
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(updates)
            m1 = sess.run(mean)
            sess.run(updates)
            m2 = sess.run(mean)
    assert np.abs(m1).max() > 0
    big = np.abs(m1) > 0.01 * np.abs(m1).max()
    np.testing.assert_allclose(m2[big] / m1[big], 1 + decay, rtol=1e-3)


def test_batch_norm_decay_is_refused_without_batch_norm():
    with tf.Graph().as_default(), pytest.raises(UserError, match="no batch norm"):
        get_network_fn("vgg_16", 2, batch_norm_decay=0.9)(tf.compat.v1.placeholder(tf.float32, [1, 224, 224, 3]))
