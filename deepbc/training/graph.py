"""The training graph: a training tower reading the training shards and a validation tower (shared
variables, inference-mode batch norm) reading the validation shards, TF-Slim's loss, one optimizer
per stage (with dynamic loss scaling where the graph computes in float16), and the savers of the
training state and of the kept weights. deepbc.training.train runs it."""

from dataclasses import dataclass

from deepbc.jobs.errors import UserError
from deepbc.training import model_dir
from deepbc.training import precision as precision_mod

# TF-Slim's train_image_classifier: weights=0.4 on the cross-entropy of end_points['AuxLogits'].
AUX_LOSS_WEIGHT = 0.4


def class_weights(count_per_class: list[int]) -> list[float]:
    """Inverse-frequency weights, normalised so that a balanced set gets weight 1 everywhere."""
    total, n = sum(count_per_class), len(count_per_class)
    return [total / (n * c) if c else 0.0 for c in count_per_class]


def make_optimizer(tf, settings, learning_rate):
    name = settings.optimizer
    if name == "rmsprop":
        return tf.compat.v1.train.RMSPropOptimizer(
            learning_rate, decay=settings.rmsprop_decay, momentum=settings.rmsprop_momentum,
            epsilon=settings.opt_epsilon)
    if name == "adam":
        return tf.compat.v1.train.AdamOptimizer(learning_rate, epsilon=settings.opt_epsilon)
    if name == "momentum":  # the schema defaults momentum to TF-Slim's 0.9
        return tf.compat.v1.train.MomentumOptimizer(learning_rate, momentum=settings.momentum)
    return tf.compat.v1.train.GradientDescentOptimizer(learning_rate)


def model_loss(tf, arch: str, num_classes: int, images, labels, settings, weights=None, seed: int = 0):
    """The training tower: (total loss, logits). TF-Slim's loss: cross-entropy of the logits, plus
    0.4 x that of Inception's auxiliary logits, plus the weight decay terms. Its dropout layers are
    stateless, seeded by (``seed``, global step, layer), so a resumed run draws the same masks."""
    from deepbc.training import nets
    from deepbc.training.nets.dropout import stateless_dropout

    network = nets.get_network_fn(arch, num_classes, is_training=True, weight_decay=settings.weight_decay,
                                  batch_norm_decay=settings.batch_norm_decay)
    with stateless_dropout(seed):
        logits, end_points = network(images)
    weights = 1.0 if weights is None else weights
    loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits, weights=weights)
    if "AuxLogits" in end_points:
        aux = tf.reshape(end_points["AuxLogits"], [-1, num_classes])
        loss += tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, aux, weights=AUX_LOSS_WEIGHT * weights,
                                                                 scope="aux_loss")
    loss += tf.add_n([tf.constant(0.0)] + tf.compat.v1.losses.get_regularization_losses())
    return loss, logits


def train_step(tf, opt, loss, global_step, var_list, update_ops):
    """(train op, the loss scale its step multiplies the loss by, or None without loss scaling).

    The scale is read before the step: the train op updates it, and a read fetched in the same
    run with no order between the two could return the old or the updated value."""
    scale = precision_mod.loss_scale(opt)
    with tf.control_dependencies(update_ops + ([scale] if scale is not None else [])):
        return opt.minimize(loss, global_step=global_step, var_list=var_list), scale


@dataclass
class Graph:
    graph: object
    train_ops: list
    stage_start: object  # placeholder: global step before the current stage's first step
    summaries: object
    loss_scales: list  # per stage: its optimizer's current loss scale (float16 only), else None
    step_values: list  # per stage: float32 [loss, accuracy, learning rate(, loss scale)], one fetch per step
    val_iter: object
    val_fetches: list
    state_saver: object
    best_saver: object
    restore_init: object
    train_iter: object  # initializable: run its initializer after ``fill``
    fill: object  # decodes the training images once (shard_reader.DecodedImages.fill), or None
    spill_dir: str | None  # where decoded images beyond the memory budget go


def start_input(sess, g: Graph):
    """Fill the decoded images (if the run keeps them) and start the training stream; returns the
    fill's [bytes in memory, bytes on disk], or None."""
    import tensorflow as tf

    sizes = None
    if g.fill is not None:
        try:
            sizes = sess.run(g.fill)
        except tf.errors.OpError as err:
            # The fill's only file writes are the spilled images (the message names the path only
            # down to the part that failed).
            if "WriteFile" not in err.message:
                raise
            raise UserError(f"could not keep the decoded training images on local disk: "
                            f"{err.message.splitlines()[0]}", g.spill_dir,
                            "free space there or point TMPDIR at a larger local disk, or raise "
                            "resources.train_mem_mb so that more of them stay in memory; then rerun the same "
                            "snakemake command") from err
    sess.run(g.train_iter.initializer)
    return sizes


def build(tf, arch, settings, seed, train_json, val_json, train_index, stages, checkpoint, first_record,
          precision: precision_mod.Precision, decode_once: tuple | None = None) -> Graph:
    """The graph of a run whose input stream starts at record ``first_record`` (a resumed run's).
    ``decode_once``: (memory budget in bytes or None, spill folder) to decode each training image
    once (shard_reader.DecodedImages), or None to decode it at every epoch."""
    from deepbc.shards import reader as shard_reader
    from deepbc.training import checkpoints, nets, preprocessing

    spec = nets.NETWORKS[arch]
    class_names = train_index["class_names"]
    num_classes = len(class_names)
    image_size = settings.image_size
    batch_size = settings.batch_size
    deterministic = settings.deterministic
    steps_per_epoch = max(1, train_index["count"] // batch_size)
    decay_steps = max(1, int(steps_per_epoch * settings.num_epochs_per_decay))
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(seed)
        global_step = tf.compat.v1.train.get_or_create_global_step()
        train_pre = preprocessing.get_preprocessing(spec.preprocessing, is_training=True,
                                                    augment=settings.augment)
        eval_pre = preprocessing.get_preprocessing(spec.preprocessing, is_training=False, augment=None)
        decoded = None
        if decode_once is not None:
            decoded = shard_reader.DecodedImages(train_json, train_pre, image_size, *decode_once,
                                                 deterministic=deterministic)
        train_ds = shard_reader.make_dataset(train_json, batch_size=batch_size, is_training=True,
                                             preprocess_fn=train_pre, image_size=image_size, seed=seed, repeat=True,
                                             first_record=first_record, deterministic=deterministic, decoded=decoded)
        val_ds = shard_reader.make_dataset(val_json, batch_size=batch_size, is_training=False,
                                     preprocess_fn=eval_pre, image_size=image_size, deterministic=deterministic)
        train_iter = tf.compat.v1.data.make_initializable_iterator(train_ds)
        images, labels = train_iter.get_next()
        val_iter = tf.compat.v1.data.make_initializable_iterator(val_ds)
        val_images, val_labels = val_iter.get_next()

        weights = None
        if settings.class_balance == "loss_weights":
            counts = [train_index["count_per_class"][c] for c in class_names]
            weights = tf.gather(tf.constant(class_weights(counts), tf.float32), labels)
        loss, logits = model_loss(tf, arch, num_classes, images, labels, settings, weights, seed=seed)
        eval_net = nets.get_network_fn(arch, num_classes, is_training=False, weight_decay=settings.weight_decay,
                                       batch_norm_decay=settings.batch_norm_decay)
        with tf.compat.v1.variable_scope(tf.compat.v1.get_variable_scope(), reuse=True):
            val_logits, _ = eval_net(val_images)
        accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32),
                                                   tf.cast(labels, tf.int32)), tf.float32))
        val_labels = tf.cast(val_labels, tf.int32)
        val_fetches = [
            tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=val_labels, logits=val_logits)),
            tf.reduce_sum(tf.cast(tf.equal(tf.argmax(val_logits, 1, output_type=tf.int32), val_labels), tf.float32)),
            tf.shape(val_labels)[0]]

        model_vars = model_dir.model_variables(tf, spec)
        logits_vars = [v for v in model_vars if any(v.op.name.startswith(s) for s in spec.exclude_scopes)]
        trainable = [v for v in tf.compat.v1.trainable_variables() if v in set(model_vars)]
        update_ops = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
        stage_start = tf.compat.v1.placeholder(tf.int64, [], name="stage_start")
        local_step = tf.maximum(tf.cast(global_step, tf.int64) - stage_start, 0)
        train_ops, lr_tensors, loss_scales = [], [], []
        for stage in stages:
            lr = tf.compat.v1.train.exponential_decay(
                stage["learning_rate"], local_step, decay_steps, settings.learning_rate_decay_factor,
                staircase=True)
            with tf.compat.v1.variable_scope(f"optimizer_{stage['name']}"):
                opt = precision_mod.wrap_optimizer(make_optimizer(tf, settings, lr), precision)
                train_op, scale = train_step(tf, opt, loss, global_step,
                                             logits_vars if stage["logits_only"] else trainable, update_ops)
            train_ops.append(train_op)
            lr_tensors.append(lr)
            loss_scales.append(scale)

        # What the curve records of each step, as one fetch: each fetched tensor costs the host time.
        step_values = [tf.stack([tf.cast(t, tf.float32) for t in (loss, accuracy, lr)
                                 + ((scale,) if scale is not None else ())])
                       for lr, scale in zip(lr_tensors, loss_scales)]
        summaries = tf.compat.v1.summary.merge([tf.compat.v1.summary.scalar("loss", loss),
                                                tf.compat.v1.summary.scalar("accuracy", accuracy)])
        restore_init = None
        if settings.init == "imagenet":
            restore_init = checkpoints.restore_fn(arch, checkpoint, spec.exclude_scopes)[0]
        return Graph(graph=graph, train_ops=train_ops, stage_start=stage_start, summaries=summaries, loss_scales=loss_scales,
                     step_values=step_values, val_iter=val_iter,
                     val_fetches=val_fetches, state_saver=tf.compat.v1.train.Saver(max_to_keep=2),
                     best_saver=tf.compat.v1.train.Saver(var_list=model_vars, max_to_keep=None),
                     restore_init=restore_init, train_iter=train_iter,
                     fill=decoded.fill if decoded is not None else None,
                     spill_dir=decoded.spill_dir if decoded is not None else None)

