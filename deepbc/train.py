"""Fine-tuning a TF-Slim network on TFRecord shards, as the preprint did, resumably.

Two stages when starting from ImageNet weights (TF-Slim's recipe): stage 1 trains only the logits
(``trainable_scopes``), stage 2 all layers at a lower learning rate, continuing from stage 1. From
scratch, one stage trains everything. The graph holds a training tower reading the training shards
and a validation tower (shared variables, inference-mode batch norm) reading the validation shards.

Resuming: every ``save_every_steps`` the full state (weights, optimizer slots, global step) is saved
under ``state_dir``; a rerun restores the newest state and continues from its step. The final
outputs (kept checkpoint, training.csv, settings.json) are written to ``out_dir`` only at the end.
"""

import csv
import json
import logging
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np

from deepbc import atomic, gpu
from deepbc.logs import format_seconds

LOG = logging.getLogger("deepbc.train")

CSV_FIELDS = ["step", "stage", "loss", "accuracy", "learning_rate", "images_per_sec",
              "val_loss", "val_accuracy"]
MODEL_PREFIX = "model.ckpt"


def stage_plan(settings: dict) -> list[dict]:
    """The stages to run: (name, steps, learning rate, whether only the logits train)."""
    if settings["init"] == "imagenet" and settings.get("stage2_steps", 0) > 0:
        return [
            {"name": "logits", "steps": settings["max_number_of_steps"],
             "learning_rate": settings["learning_rate"], "logits_only": True},
            {"name": "all_layers", "steps": settings["stage2_steps"],
             "learning_rate": settings["stage2_learning_rate"], "logits_only": False},
        ]
    return [{"name": "all_layers", "steps": settings["max_number_of_steps"],
             "learning_rate": settings["learning_rate"],
             "logits_only": settings["init"] == "imagenet"}]


def class_weights(count_per_class: list[int]) -> list[float]:
    """Inverse-frequency weights, normalised so that a balanced set gets weight 1 everywhere."""
    total, n = sum(count_per_class), len(count_per_class)
    return [total / (n * c) if c else 0.0 for c in count_per_class]


def _read_index(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _make_optimizer(tf, settings, learning_rate):
    name = settings["optimizer"]
    if name == "rmsprop":
        return tf.compat.v1.train.RMSPropOptimizer(
            learning_rate, decay=settings["rmsprop_decay"], momentum=settings["rmsprop_momentum"],
            epsilon=settings["opt_epsilon"])
    if name == "adam":
        return tf.compat.v1.train.AdamOptimizer(learning_rate, epsilon=settings["opt_epsilon"])
    if name == "momentum":
        return tf.compat.v1.train.MomentumOptimizer(learning_rate, momentum=settings["rmsprop_momentum"])
    return tf.compat.v1.train.GradientDescentOptimizer(learning_rate)


def train(shard_dir, out_dir, state_dir, arch: str, settings: dict, seed: int,
          checkpoint: str | None = None, threads: int = 0, log_every: int = 10) -> dict:
    """Train ``arch`` on ``shard_dir/{train,val}.json``; write the kept model to ``out_dir``.

    Returns the summary written to ``out_dir/settings.json``.
    """
    import tensorflow as tf

    from deepbc import checkpoints, nets, preprocessing, shards

    shard_dir, out_dir, state_dir = Path(shard_dir), Path(out_dir), Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    train_index = _read_index(shard_dir / "train.json")
    val_index = _read_index(shard_dir / "val.json")
    class_names = train_index["class_names"]
    num_classes = len(class_names)
    spec = nets.NETWORKS[arch]
    image_size = settings.get("image_size") or spec.default_image_size
    batch_size = settings["batch_size"]
    stages = stage_plan(settings)
    total_steps = sum(s["steps"] for s in stages)
    steps_per_epoch = max(1, train_index["count"] // batch_size)
    decay_steps = max(1, int(steps_per_epoch * settings["num_epochs_per_decay"]))

    random.seed(seed)
    np.random.seed(seed)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(seed)
        global_step = tf.compat.v1.train.get_or_create_global_step()
        train_pre = preprocessing.get_preprocessing(spec.preprocessing, is_training=True,
                                                    augment=settings.get("augment"))
        eval_pre = preprocessing.get_preprocessing(spec.preprocessing, is_training=False, augment=None)
        train_ds = shards.make_dataset(shard_dir / "train.json", batch_size=batch_size, is_training=True,
                                       preprocess_fn=train_pre, image_size=image_size, seed=seed,
                                       repeat=True)
        val_ds = shards.make_dataset(shard_dir / "val.json", batch_size=batch_size, is_training=False,
                                     preprocess_fn=eval_pre, image_size=image_size, seed=seed,
                                     repeat=False)
        images, labels = tf.compat.v1.data.make_one_shot_iterator(train_ds).get_next()
        val_iter = tf.compat.v1.data.make_initializable_iterator(val_ds)
        val_images, val_labels = val_iter.get_next()

        net_kwargs = {"weight_decay": settings["weight_decay"],
                      "batch_norm_decay": settings.get("batch_norm_decay")}
        train_net = nets.get_network_fn(arch, num_classes, is_training=True, **net_kwargs)
        eval_net = nets.get_network_fn(arch, num_classes, is_training=False, **net_kwargs)
        logits, _ = train_net(images)
        with tf.compat.v1.variable_scope(tf.compat.v1.get_variable_scope(), reuse=True):
            val_logits, _ = eval_net(val_images)

        weights = None
        if settings.get("class_balance") == "loss_weights":
            counts = [train_index["count_per_class"][c] for c in class_names]
            table = tf.constant(class_weights(counts), tf.float32)
            weights = tf.gather(table, labels)
        xent = tf.compat.v1.losses.sparse_softmax_cross_entropy(
            labels, logits, weights=1.0 if weights is None else weights)
        loss = xent + tf.add_n([tf.constant(0.0)] + tf.compat.v1.losses.get_regularization_losses())
        accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32),
                                                   tf.cast(labels, tf.int32)), tf.float32))
        val_xent_sum = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(val_labels, tf.int32), logits=val_logits))
        val_correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(val_logits, 1, output_type=tf.int32),
                                                     tf.cast(val_labels, tf.int32)), tf.float32))
        val_count = tf.shape(val_labels)[0]

        model_vars = [v for v in tf.compat.v1.global_variables() if v.name.startswith(spec.scope + "/")]
        logits_vars = [v for v in model_vars if any(v.op.name.startswith(s) for s in spec.exclude_scopes)]
        update_ops = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
        train_ops, lr_tensors, stage_start = [], [], 0
        for stage in stages:
            local_step = tf.maximum(tf.cast(global_step, tf.int64) - stage_start, 0)
            lr = tf.compat.v1.train.exponential_decay(
                stage["learning_rate"], local_step, decay_steps, settings["learning_rate_decay_factor"],
                staircase=True)
            var_list = logits_vars if stage["logits_only"] else [
                v for v in tf.compat.v1.trainable_variables() if v in set(model_vars)]
            with tf.compat.v1.variable_scope(f"optimizer_{stage['name']}"):
                opt = _make_optimizer(tf, settings, lr)
                with tf.control_dependencies(update_ops):
                    train_ops.append(opt.minimize(loss, global_step=global_step, var_list=var_list))
            lr_tensors.append(lr)
            stage_start += stage["steps"]

        tf.compat.v1.summary.scalar("loss", loss)
        tf.compat.v1.summary.scalar("accuracy", accuracy)
        summaries = tf.compat.v1.summary.merge_all()
        state_saver = tf.compat.v1.train.Saver(max_to_keep=2)
        model_saver = tf.compat.v1.train.Saver(var_list=model_vars, max_to_keep=1)
        restore_init = None
        if settings["init"] == "imagenet":
            restore_init = checkpoints.restore_fn(arch, checkpoint, spec.exclude_scopes)[0]

        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads,
                                          inter_op_parallelism_threads=threads)
        config.gpu_options.allow_growth = True  # share a leased GPU without grabbing all its memory
        with tf.compat.v1.Session(graph=graph, config=config) as sess:
            start_step = _initialise(sess, tf, state_saver, state_dir, restore_init)
            history = _load_history(state_dir / "training.csv", start_step)
            writer = tf.compat.v1.summary.FileWriter(str(out_dir.parent / f"{out_dir.name}.events"),
                                                     graph if start_step == 0 else None)
            best = _best_so_far(history, settings["keep_best_by"])
            patience = settings.get("early_stopping_patience", 0)
            evals_since_best = 0
            LOG.info("training %s on %s: %d classes, %d train / %d val images, %d steps in %d stage(s),"
                     " starting at step %d", arch, shard_dir, num_classes, train_index["count"],
                     val_index["count"], total_steps, len(stages), start_step)
            step, images_seen, t_start = start_step, 0, time.monotonic()
            while step < total_steps:
                stage_idx = _stage_of(step, stages)
                fetches = [train_ops[stage_idx], loss, accuracy, lr_tensors[stage_idx], summaries]
                _, loss_v, acc_v, lr_v, summ = sess.run(fetches)
                step += 1
                images_seen += batch_size
                row = {"step": step, "stage": stages[stage_idx]["name"], "loss": float(loss_v),
                       "accuracy": float(acc_v), "learning_rate": float(lr_v),
                       "images_per_sec": images_seen / max(time.monotonic() - t_start, 1e-9),
                       "val_loss": math.nan, "val_accuracy": math.nan}
                if not math.isfinite(loss_v):
                    raise FloatingPointError(f"loss became {loss_v} at step {step}: lower the learning rate")
                is_eval = step % settings["eval_every_steps"] == 0 or step == total_steps
                if is_eval:
                    row["val_loss"], row["val_accuracy"] = _validate(
                        sess, val_iter, val_xent_sum, val_correct, val_count)
                    score = _score(row, settings["keep_best_by"])
                    if best is None or score < best:
                        best, evals_since_best = score, 0
                        model_saver.save(sess, str(state_dir / "best" / MODEL_PREFIX), write_meta_graph=False)
                    else:
                        evals_since_best += 1
                history.append(row)
                if step % log_every == 0 or is_eval:
                    writer.add_summary(summ, step)
                    rate = images_seen / max(time.monotonic() - t_start, 1e-9)
                    eta = (total_steps - step) * batch_size / rate
                    LOG.info("step %d/%d stage=%s loss=%.4f acc=%.3f lr=%.2e %.1f images/s ETA %s%s",
                             step, total_steps, row["stage"], loss_v, acc_v, lr_v, rate,
                             format_seconds(eta),
                             f" val_loss={row['val_loss']:.4f} val_acc={row['val_accuracy']:.3f}"
                             if is_eval else "")
                stop_early = patience and evals_since_best >= patience
                if stop_early:
                    LOG.info("early stopping at step %d: no validation improvement in %d evaluations",
                             step, patience)
                if stop_early or step % settings["save_every_steps"] == 0 or step == total_steps:
                    _save_state(sess, state_saver, state_dir, step, history)
                if stop_early:
                    break
            writer.close()
            if settings["keep_best_by"] == "last":
                model_saver.save(sess, str(state_dir / "best" / MODEL_PREFIX), write_meta_graph=False)

    summary = {"arch": arch, "class_names": class_names, "num_classes": num_classes,
               "image_size": image_size, "preprocessing": spec.preprocessing, "settings": settings,
               "seed": seed, "steps": step, "stages": stages, "kept": settings["keep_best_by"],
               "best_step": _best_step(history, settings["keep_best_by"]),
               "train_images": train_index["count"], "val_images": val_index["count"],
               "tensorflow": tf.__version__,
               # What actually ran the job: a GPU job on the CPU would otherwise go unnoticed.
               "device": gpu.describe_device(threads)}
    _publish(state_dir, out_dir, history, summary)
    return summary


def _save_state(sess, state_saver, state_dir: Path, step: int, history: list[dict]) -> None:
    """The curve first, then the checkpoint: a kill between the two leaves a curve that reaches
    past the newest checkpoint, which resuming trims, never one that stops short of it."""
    _write_history(state_dir / "training.csv", history)
    state_saver.save(sess, str(state_dir / "state.ckpt"), global_step=step, write_meta_graph=False)


def _initialise(sess, tf, state_saver, state_dir: Path, restore_init) -> int:
    latest = tf.train.latest_checkpoint(str(state_dir))
    if latest:
        state_saver.restore(sess, latest)
        step = int(latest.rsplit("-", 1)[1])
        LOG.info("resuming from %s at step %d", latest, step)
        return step
    sess.run(tf.compat.v1.global_variables_initializer())
    if restore_init is not None:
        restore_init(sess)
    return 0


def _stage_of(step: int, stages: list[dict]) -> int:
    end = 0
    for i, stage in enumerate(stages):
        end += stage["steps"]
        if step < end:
            return i
    return len(stages) - 1


def _validate(sess, val_iter, xent_sum, correct, count) -> tuple[float, float]:
    sess.run(val_iter.initializer)
    total_loss = total_correct = n = 0.0
    import tensorflow as tf

    while True:
        try:
            l, c, k = sess.run([xent_sum, correct, count])
        except tf.errors.OutOfRangeError:
            break
        total_loss, total_correct, n = total_loss + l, total_correct + c, n + k
    if n == 0:
        return math.nan, math.nan
    return total_loss / n, total_correct / n


def _score(row: dict, keep_best_by: str) -> float:
    """Lower is better."""
    if keep_best_by == "val_accuracy":
        return -row["val_accuracy"]
    if keep_best_by == "val_loss":
        return row["val_loss"]
    return -row["step"]


def _best_so_far(history: list[dict], keep_best_by: str):
    scores = [_score(r, keep_best_by) for r in history if not math.isnan(r["val_loss"])]
    return min(scores) if scores else None


def _best_step(history: list[dict], keep_best_by: str) -> int:
    evaluated = [r for r in history if not math.isnan(r["val_loss"])]
    if keep_best_by == "last" or not evaluated:
        return history[-1]["step"] if history else 0
    return min(evaluated, key=lambda r: (_score(r, keep_best_by), r["step"]))["step"]


def _load_history(path: Path, up_to_step: int) -> list[dict]:
    """Rows of an interrupted run up to the restored step; later ones are redone."""
    if not path.exists() or up_to_step == 0:
        return []
    with path.open() as fh:
        rows = [{k: (v if k == "stage" else float(v)) for k, v in r.items()} for r in csv.DictReader(fh)]
    for r in rows:
        r["step"] = int(r["step"])
    return [r for r in rows if r["step"] <= up_to_step]


def _write_history(path: Path, history: list[dict]) -> None:
    with atomic.atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, CSV_FIELDS, lineterminator="\n")
        w.writeheader()
        w.writerows(history)


def _publish(state_dir: Path, out_dir: Path, history: list[dict], summary: dict) -> None:
    """Copy the kept checkpoint and the curve into out_dir; settings.json last marks completion."""
    out_dir.mkdir(parents=True, exist_ok=True)
    best_dir = state_dir / "best"
    for src in sorted(best_dir.glob(MODEL_PREFIX + ".*")):
        with atomic.atomic_path(out_dir / src.name) as tmp:
            shutil.copyfile(src, tmp)
    _write_history(out_dir / "training.csv", history)
    atomic.write_json(out_dir / "settings.json", summary)
