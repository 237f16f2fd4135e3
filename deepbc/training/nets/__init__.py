"""Registry of networks by TF-Slim name, in the manner of research/slim/nets/nets_factory.py.

``NETWORKS[name]`` is a :class:`NetSpec` that says how to build the network, at what size and with
which preprocessing it was trained on ImageNet, where its official checkpoint is and which scopes to
leave out when restoring it. The registry itself imports no TensorFlow (functions are referenced
by module path), so configuration can be checked cheaply; :func:`get_network_fn` builds.

Checkpoint URLs and file names are those of the table "Pre-trained Models" in
tensorflow/models research/slim/README.md. ResNet V2 checkpoints were trained with Inception
preprocessing at 299 px (footnote of that table), so their specs say so.
"""

import functools
import importlib
import inspect
from dataclasses import dataclass, field

from deepbc.jobs.errors import UserError

_TF_MODELS = "http://download.tensorflow.org/models/"


@dataclass(frozen=True)
class NetSpec:
    """How to build one network and restore its ImageNet checkpoint.

    name: TF-Slim name (registry key). network / arg_scope: "module:function" of the network
    function ``f(images, num_classes, is_training=..., **extra_kwargs) -> (logits, end_points)`` and
    of its arg-scope function ``g(weight_decay=...)``. scope: the top variable scope, under which all
    variables live (``resnet_v1_50``, ``InceptionV3``, ``vgg_16``). exclude_scopes: scopes whose
    variables depend on the number of classes and are left out when restoring ImageNet weights.
    default_image_size / min_image_size: the ImageNet training size, and the smallest input the
    network can be built for. preprocessing: "vgg" or "inception" (deepbc.training.preprocessing).
    checkpoint_url: official archive (None: no official checkpoint; a user-made file
    ``checkpoint_file`` in the checkpoint directory is still used). checkpoint_file: the checkpoint
    prefix inside the archive. checkpoint_classes: logits width of the official checkpoint (1000 for
    ResNet V1 and VGG, converted from Caffe; 1001 with a background class otherwise).
    gradcam_end_point: the key in ``end_points`` of the last convolutional block's output, where
    Grad-CAM (deepbc.evaluation.gradcam) weighs feature maps by their gradients (Selvaraju et al. 2017).
    """

    name: str
    network: str
    arg_scope: str
    scope: str
    exclude_scopes: tuple[str, ...]
    default_image_size: int
    min_image_size: int
    preprocessing: str
    checkpoint_url: str | None
    checkpoint_file: str
    checkpoint_classes: int | None
    gradcam_end_point: str
    extra_kwargs: dict = field(default_factory=dict)

    @property
    def network_fn(self):
        return _resolve(self.network)

    @property
    def arg_scope_fn(self):
        return _resolve(self.arg_scope)


def _resolve(ref: str):
    from deepbc.training.compat import import_slim

    import_slim()  # every tf_slim.nets module needs the batch-norm fix in place first
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _resnet(version: int, depth: int, archive_date: str | None) -> NetSpec:
    name = f"resnet_v{version}_{depth}"
    v2 = version == 2
    return NetSpec(
        name=name, network=f"tf_slim.nets.resnet_v{version}:{name}",
        arg_scope=f"tf_slim.nets.resnet_v{version}:resnet_arg_scope", scope=name,
        exclude_scopes=(f"{name}/logits",), default_image_size=299 if v2 else 224, min_image_size=32,
        preprocessing="inception" if v2 else "vgg",
        checkpoint_url=f"{_TF_MODELS}{name}_{archive_date}.tar.gz" if archive_date else None,
        checkpoint_file=f"{name}.ckpt", checkpoint_classes=1001 if v2 else 1000,
        gradcam_end_point=f"{name}/block4")


def _inception(version: int, archive_date: str, image_size: int, min_size: int, aux: bool,
               last_block: str) -> NetSpec:
    name, scope = f"inception_v{version}", f"InceptionV{version}"
    module = "deepbc.training.nets.inception_v4" if version == 4 else f"tf_slim.nets.inception_v{version}"
    return NetSpec(
        name=name, network=f"{module}:{name}", arg_scope=f"{module}:{name}_arg_scope", scope=scope,
        exclude_scopes=(f"{scope}/Logits",) + ((f"{scope}/AuxLogits",) if aux else ()),
        default_image_size=image_size, min_image_size=min_size, preprocessing="inception",
        checkpoint_url=f"{_TF_MODELS}{name}_{archive_date}.tar.gz", checkpoint_file=f"{name}.ckpt",
        checkpoint_classes=1001, gradcam_end_point=last_block)


def _vgg(depth: int) -> NetSpec:
    name = f"vgg_{depth}"
    return NetSpec(
        name=name, network=f"tf_slim.nets.vgg:{name}", arg_scope="tf_slim.nets.vgg:vgg_arg_scope",
        scope=name, exclude_scopes=(f"{name}/fc8",), default_image_size=224,
        # fc6 is a 7x7 VALID convolution on the 1/32 map.
        min_image_size=224, preprocessing="vgg",
        checkpoint_url=f"{_TF_MODELS}{name}_2016_08_28.tar.gz", checkpoint_file=f"{name}.ckpt",
        checkpoint_classes=1000, gradcam_end_point=f"{name}/conv5/conv5_{3 if depth == 16 else 4}",
        # Logits are pooled by get_network_fn, so inputs larger than 224 work too.
        extra_kwargs={"spatial_squeeze": False})


# min_image_size: the smallest square input each network builds for, found by bisection (graph
# construction at 1..default size), floored at 32 px: ResNets and Inception V2 build for any size,
# but below their nominal output stride of 32 the last block sees less than one pixel.
NETWORKS: dict[str, NetSpec] = {spec.name: spec for spec in [
    _resnet(1, 50, "2016_08_28"), _resnet(1, 101, "2016_08_28"), _resnet(1, 152, "2016_08_28"),
    _resnet(1, 200, None),
    _resnet(2, 50, "2017_04_14"), _resnet(2, 101, "2017_04_14"), _resnet(2, 152, "2017_04_14"),
    _inception(1, "2016_08_28", 224, 193, aux=False, last_block="Mixed_5c"),
    _inception(2, "2016_08_28", 224, 32, aux=False, last_block="Mixed_5c"),
    _inception(3, "2016_08_28", 299, 107, aux=True, last_block="Mixed_7c"),
    _inception(4, "2016_09_09", 299, 107, aux=True, last_block="Mixed_7d"),
    _vgg(16), _vgg(19),
    NetSpec(name="resnet_small", network="deepbc.training.nets.resnet_small:resnet_small",
            arg_scope="tf_slim.nets.resnet_v1:resnet_arg_scope", scope="resnet_small",
            exclude_scopes=("resnet_small/logits",), default_image_size=64, min_image_size=32,
            preprocessing="vgg", checkpoint_url=None, checkpoint_file="resnet_small.ckpt",
            checkpoint_classes=None, gradcam_end_point="resnet_small/block3"),
]}


def get_spec(name: str) -> NetSpec:
    """The NetSpec of ``name``, or a UserError listing the known names."""
    try:
        return NETWORKS[name]
    except KeyError:
        raise UserError(f"unknown network {name!r}", where="architectures / --arch",
                        fix=f"use one of: {', '.join(sorted(NETWORKS))}") from None


def get_network_fn(name: str, num_classes: int, weight_decay: float = 4e-5, is_training: bool = False,
                   batch_norm_decay: float | None = None):
    """Return ``network_fn(images) -> (logits, end_points)`` as TF-Slim's nets_factory does.

    ``images``: float32 [batch, height, width, 3], already preprocessed. ``logits``: [batch,
    num_classes]; 4-D logits of ResNet and VGG are squeezed (or averaged over space when the input
    is larger than the network's native size). Must be called inside ``tf.Graph().as_default()``.
    ``end_points`` holds ``AuxLogits`` for Inception V3/V4 (an auxiliary loss may use it).
    The returned function carries ``.default_image_size`` and ``.spec``.
    ``batch_norm_decay``: the moving-average decay of batch norm (None: the arg scope's default,
    0.997 for ResNet). Short runs need a lower one, or inference-mode statistics lag training.
    """
    spec = get_spec(name)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise UserError(f"num_classes must be an integer >= 2, got {num_classes!r}",
                        where=f"network {name}", fix="give the number of classes of the task")
    func, arg_scope_fn = spec.network_fn, spec.arg_scope_fn
    scope_kwargs = {"weight_decay": weight_decay}
    # Inception V1/V2's arg scopes in tf-slim 1.1.0 fix the decay at 0.9997; _with_batch_norm_decay
    # rewrites it in their normalizer_params instead.
    decay_as_argument = "batch_norm_decay" in inspect.signature(arg_scope_fn).parameters
    if batch_norm_decay is not None and decay_as_argument:
        scope_kwargs["batch_norm_decay"] = batch_norm_decay

    @functools.wraps(func)
    def network_fn(images):
        import tensorflow as tf

        from deepbc.training.compat import import_slim, require_graph_mode

        require_graph_mode(f"network {name}")
        _check_size(spec, images)
        slim = import_slim()
        scope = arg_scope_fn(**scope_kwargs)
        if batch_norm_decay is not None and not decay_as_argument:
            scope = _with_batch_norm_decay(scope, batch_norm_decay, name)
        with slim.arg_scope(scope):
            logits, end_points = func(images, num_classes, is_training=is_training, **spec.extra_kwargs)
        if logits.shape.rank == 4:
            if tuple(logits.shape[1:3]) == (1, 1):
                logits = tf.squeeze(logits, [1, 2], name="SpatialSqueeze")
            else:
                logits = tf.reduce_mean(logits, [1, 2], name="SpatialMean")
        return logits, end_points

    network_fn.default_image_size = spec.default_image_size
    network_fn.spec = spec
    return network_fn


def _with_batch_norm_decay(scope: dict, decay: float, name: str) -> dict:
    """A copy of the arg scope ``scope`` whose layers normalise with batch-norm decay ``decay``."""
    changed, found = {}, False
    for op, kwargs in scope.items():
        params = kwargs.get("normalizer_params")
        if isinstance(params, dict) and "decay" in params:
            kwargs, found = {**kwargs, "normalizer_params": {**params, "decay": decay}}, True
        changed[op] = kwargs
    if not found:
        raise UserError(f"network {name} has no batch norm, so batch_norm_decay does not apply",
                        where="train settings batch_norm_decay", fix="remove batch_norm_decay for this network")
    return changed


def _check_size(spec: NetSpec, images) -> None:
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        return  # checked by the graph itself when the size is only known at run time
    if min(height, width) < spec.min_image_size:
        raise UserError(
            f"{spec.name} cannot be built for {height}x{width} images: it needs at least "
            f"{spec.min_image_size}x{spec.min_image_size}",
            where="train image_size", fix=f"use image_size >= {spec.min_image_size} "
            f"(ImageNet size of {spec.name}: {spec.default_image_size})")
