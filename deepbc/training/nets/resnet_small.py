"""A small ResNet V1 built from tf-slim's own blocks, for the demo and the tests.

Same code path as resnet_v1_50 (tf_slim.nets.resnet_v1.resnet_v1 with bottleneck blocks, the
ResNet arg scope, the 7x7/2 root block and max pool), but three blocks of one unit each with base
depths 16/32/64, so it trains at several hundred 64x64 images/s on a CPU. Variable names follow the
ResNet pattern under the scope ``resnet_small`` (e.g. ``resnet_small/block1/unit_1/bottleneck_v1/
conv1/weights``, ``resnet_small/logits/weights``), so restoring works exactly as for the big nets.
"""

from deepbc.training.compat import import_slim

import_slim()  # installs the batch-norm import fix before tf_slim.nets is imported
from tf_slim.nets.resnet_v1 import resnet_v1, resnet_v1_block  # noqa: E402

BLOCKS = (("block1", 16, 2), ("block2", 32, 2), ("block3", 64, 1))  # (scope, base depth, stride)


def resnet_small(inputs, num_classes=None, is_training=True, global_pool=True, reuse=None,
                 scope="resnet_small"):
    """Returns (net, end_points) like tf_slim's resnet_v1_50; logits are [batch, 1, 1, classes]."""
    blocks = [resnet_v1_block(name, base_depth=depth, num_units=1, stride=stride)
              for name, depth, stride in BLOCKS]
    return resnet_v1(inputs, blocks, num_classes, is_training, global_pool, output_stride=None,
                     include_root_block=True, reuse=reuse, scope=scope)


resnet_small.default_image_size = 64
