"""Fine-tuning a TF-Slim network on TFRecord shards, as the preprint did: reproducibly and resumably.

Two stages when starting from ImageNet weights (TF-Slim's recipe): stage ``logits`` trains only the
logits (``trainable_scopes``), stage ``all_layers`` all layers at a lower learning rate, continuing
from stage 1. From ImageNet with ``stage2_steps: 0`` only the ``logits`` stage runs; from scratch,
one ``all_layers`` stage trains everything. Early stopping ends a stage (the next one starts), not
the run. The graph (deepbc.training.graph) holds a training tower reading the training shards and a
validation tower reading the validation shards; this module runs it and keeps its state; the
finished model is published to its folder by deepbc.training.model_dir, which evaluation reads.

Precision (``precision: fp32 | mixed``, deepbc.training.precision): ``mixed`` computes in float16 (with
dynamic loss scaling, logged and in training.csv's ``loss_scale``) on a CUDA GPU of compute
capability 7.0 or more, in bfloat16 on a CPU with bfloat16 instructions, else in float32;
variables and checkpoints stay float32, settings.json records the precision used, and the state
is bound to it. ``xla: true`` turns on XLA auto-clustering of the session.

Reproducible (``deterministic``, default on): TensorFlow's op determinism, a deterministic input
stream (shard_reader.make_dataset) and seeded initialisation, so the same config, seed and machine give
the same curve and weights.

Resuming: every ``save_every_steps`` the full state (weights, optimizer slots, global step) and the
curve are saved under ``state_dir``; a rerun restores the newest state and continues from its step,
exactly: the input stream restarts at the records the restored steps consumed, the stage, its
patience and the best score are derived from the restored curve, kept ("best") weights of steps
after the restored one are dropped, and dropout masks are stateless functions of (seed, global step,
layer) (deepbc.training.nets.dropout), so the restored steps draw the masks they would have drawn. The state is bound to its inputs (``inputs.json``: settings,
architecture, seed, ImageNet checkpoint, train/val shards with their hashes): a state of other
inputs is discarded, saying what changed. The final outputs (kept checkpoint, training.csv,
settings.json) are written to ``out_dir`` only at the end, after which the state is removed.
"""

import contextlib
import hashlib
import json
import logging
import math
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from deepbc.jobs import atomic, gpu
from deepbc.jobs.logs import PROGRESS, format_seconds
from deepbc.shards.reader import read_index
from deepbc.training import graph as train_graph
from deepbc.training import model_dir
from deepbc.training import precision as precision_mod
from deepbc.training.code_version import code_version
from deepbc.training.code_version import describe as describe_code
from deepbc.training.model_dir import MODEL_PREFIX
from deepbc.training.model_dir import write_history as _write_history
from deepbc.training.settings import TrainSettings, as_dict

LOG = logging.getLogger("deepbc.training.train")

INPUTS_FILE = "inputs.json"
# The share of the job's memory (the train rule's mem_mb) the decoded training images may take;
# the network, its activations and TensorFlow's own buffers need the rest.
DECODED_SHARE = 0.5
# Settings that change when states are saved, never what is computed: not part of the fingerprint.
_SCHEDULE_ONLY = ("save_every_steps",)


def stage_plan(settings: TrainSettings) -> list[dict]:
    """The stages to run: (name, steps, learning rate, whether only the logits train)."""
    if settings.init == "imagenet":
        stages = [{"name": "logits", "steps": settings.max_number_of_steps,
                   "learning_rate": settings.learning_rate, "logits_only": True}]
        if settings.stage2_steps > 0:
            stages.append({"name": "all_layers", "steps": settings.stage2_steps,
                           "learning_rate": settings.stage2_learning_rate, "logits_only": False})
        return stages
    return [{"name": "all_layers", "steps": settings.max_number_of_steps,
             "learning_rate": settings.learning_rate, "logits_only": False}]


# --------------------------------------------------------------------------------------------
# The state's inputs
# --------------------------------------------------------------------------------------------

def training_inputs(train_json, val_json, arch: str, settings: TrainSettings, seed: int, checkpoint: str | None,
                    precision: str) -> dict:
    """Everything that determines the trained model, by component (compared one by one on resume).
    ``precision`` is what the graph computes in here (fp32, bf16, fp16): the same ``precision:
    mixed`` computes differently on another machine, so a state moved there is not resumed.
    ``code``: the version of the training code (deepbc.training.code_version), so a state saved
    before a fix to it is not resumed by the fixed code."""
    return {
        "code": code_version(),
        "arch": arch,
        "seed": int(seed),
        "precision": precision,
        "settings": {k: v for k, v in sorted(as_dict(settings).items()) if k not in _SCHEDULE_ONLY},
        "checkpoint": _checkpoint_identity(checkpoint) if settings.init == "imagenet" else None,
        "train_shards": _shards_identity(Path(train_json)),
        "val_shards": _shards_identity(Path(val_json)),
    }


def fingerprint(inputs: dict) -> str:
    """sha256 of the canonical JSON of ``inputs``."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _checkpoint_identity(prefix: str | None) -> dict | None:
    """sha256 of each of the checkpoint's files, by suffix (``.index``, ``.data-00000-of-00001``):
    its contents, not where it lies or when it was written, so a copy keeps a valid state and
    another checkpoint never passes for it. Streamed; costs about 1 s per GB (ImageNet checkpoints
    are 0.05-0.6 GB) once per training job."""
    if not prefix:
        return None
    name = Path(prefix).name
    files = sorted(Path(prefix).parent.glob(name + ".*"))
    identity = {}
    for path in files:
        with path.open("rb") as fh:
            identity[path.name[len(name):]] = hashlib.file_digest(fh, "sha256").hexdigest()
    return {"files": identity}


def _shards_identity(index_path: Path) -> dict:
    """The index as written (without the absolute paths read_index adds: the fingerprint does not
    depend on where the project lies); shards of an index that records no hashes count by size and mtime."""
    index = read_index(index_path)
    del index["paths"]
    # Thousands of members: their hash keeps the state record small.
    index["members"] = hashlib.sha256(json.dumps(index["members"]).encode()).hexdigest()
    if "shard_sha256" not in index:
        stats = {n: (index_path.parent / n).stat() for n in index["shards"]}
        index["shard_stat"] = {n: [s.st_size, s.st_mtime_ns] for n, s in stats.items()}
    return index


def _describe_changes(old: dict, new: dict) -> str:
    changes = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if key == "settings" and isinstance(old.get(key), dict):
            a, b = old[key], new[key]
            changes += [f"{k} {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}"
                        for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif key in ("arch", "seed", "precision"):
            changes.append(f"{key} {old.get(key)!r} -> {new.get(key)!r}")
        elif key == "code":
            changes.append(f"training code {describe_code(old.get(key))} -> {describe_code(new.get(key))}")
        else:
            changes.append(key.replace("_", " "))
    return ", ".join(changes)


def _bind_state(state_dir: Path, inputs: dict) -> None:
    """Keep the state in ``state_dir`` only if it was made from ``inputs``; record them otherwise."""
    record = state_dir / INPUTS_FILE
    if state_dir.exists() and any(state_dir.iterdir()):
        old = json.loads(record.read_text()) if record.exists() else None
        if old is not None and old.get("fingerprint") == fingerprint(inputs):
            return
        reason = (_describe_changes(old["inputs"], inputs) if old is not None
                  else "the state records no inputs")
        LOG.info("discarding the training state in %s, its inputs changed: %s; training from step 1",
                 state_dir, reason)
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(record, {"fingerprint": fingerprint(inputs), "inputs": inputs})


@contextlib.contextmanager
def op_determinism(on: bool):
    """TensorFlow's op determinism on or off inside the block, as it was after: the switch is
    process-wide, and under it any later graph with an unseeded random op would raise."""
    # disable_op_determinism is not exported as tf.config.experimental in TF 2.21.
    from tensorflow.python.framework import config as tf_config

    was = tf_config.is_op_determinism_enabled()
    (tf_config.enable_op_determinism if on else tf_config.disable_op_determinism)()
    try:
        yield
    finally:
        (tf_config.enable_op_determinism if was else tf_config.disable_op_determinism)()


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

class _Stages:
    """Which stage the next step belongs to, the best score and the stage's patience, all derived
    from the curve row by row, so a resumed run replays its restored history into the same state.

    A stage ends after its steps, or when ``patience`` evaluations in it brought no improvement on
    the best score of that stage (early stopping); the next stage then starts from the current
    (last) weights, as TF-Slim's two-stage recipe does. The kept weights are the best of the run.
    With ``keep_best_by: last`` the patience counts on the validation loss (the last step has no
    score to improve on: by it, every evaluation would be an improvement and no stage would stop).
    """

    def __init__(self, stages: list[dict], keep_best_by: str, patience: int):
        self.stages, self.keep_best_by, self.patience = stages, keep_best_by, patience
        self.index, self.start = 0, 0  # start: the global step before the stage's first step
        self.best, self.stage_best, self.evals_since_best = None, None, 0

    @property
    def finished(self) -> bool:
        return self.index >= len(self.stages)

    @property
    def current(self) -> dict:
        return self.stages[self.index]

    def remaining_steps(self, step: int) -> int:
        return self.start + self.current["steps"] - step + sum(s["steps"] for s in self.stages[self.index + 1:])

    def is_last_step(self, step: int) -> bool:
        return self.index == len(self.stages) - 1 and step == self.start + self.current["steps"]

    def update(self, row: dict) -> tuple[bool, bool]:
        """Account for one finished step; returns (improved the run's best score, stopped its stage early)."""
        improved = stopped = False
        if not math.isnan(row["val_loss"]):
            score = _score(row, self.keep_best_by)
            if self.best is None or score < self.best:
                self.best, improved = score, True
            stage_score = _score(row, "val_loss") if self.keep_best_by == "last" else score
            if self.stage_best is None or stage_score < self.stage_best:
                self.stage_best, self.evals_since_best = stage_score, 0
            else:
                self.evals_since_best += 1
        done = row["step"] - self.start >= self.current["steps"]
        stopped = not done and bool(self.patience) and self.evals_since_best >= self.patience
        if done or stopped:
            self.index, self.start, self.evals_since_best, self.stage_best = self.index + 1, row["step"], 0, None
        return improved, stopped


def decode_once(stages: list[dict], batch_size: int, train_count: int, start_step: int, memory_mb: int | None,
                job: contextlib.ExitStack):
    """``graph.build``'s ``decode_once`` for a run: (memory budget in bytes, spill folder) when the
    steps still to run read the training images more than once, else None (decoding them all first
    would cost more than it saves). The decoded images get ``DECODED_SHARE`` of the job's memory
    (None: no bound); the rest go to a folder on local disk (TMPDIR) that lives as long as ``job``."""
    if (sum(s["steps"] for s in stages) - start_step) * batch_size <= train_count:
        return None
    spill = job.enter_context(tempfile.TemporaryDirectory(prefix="deepbc-decoded-"))
    return (None if memory_mb is None else int(memory_mb * 2**20 * DECODED_SHARE)), spill


def train(train_json, val_json, out_dir, state_dir, arch: str, settings: TrainSettings, seed: int,
          checkpoint: str | None = None, threads: int = 0, log_every: int = 10, memory_mb: int | None = None,
          decode_images_once: bool = True) -> dict:
    """Train ``arch`` on the shards of the ``train_json`` index, validating on those of ``val_json``;
    write the kept model to ``out_dir``.

    ``settings``: the TrainSettings (``deepbc.training.settings.build``: every value filled in and checked).
    ``memory_mb``: the job's memory (the train rule's ``mem_mb``), which bounds the training images
    kept decoded in memory (:func:`decode_once`); None: no bound. ``decode_images_once=False``: decode
    every training image at every epoch (what the trainer did before; the benchmarks compare).

    Returns the summary written to ``out_dir/settings.json``.
    """
    if settings.xla:
        precision_mod.allow_cpu_xla()
    import tensorflow as tf

    from deepbc.training import nets

    out_dir, state_dir = Path(out_dir), Path(state_dir)
    train_index = read_index(train_json)
    val_index = read_index(val_json)
    spec = nets.NETWORKS[arch]
    stages = stage_plan(settings)
    random.seed(seed)
    np.random.seed(seed)

    precision = precision_mod.for_this_machine(settings.precision)
    inputs = training_inputs(train_json, val_json, arch, settings, seed, checkpoint, precision.name)
    done = model_dir.published_summary(out_dir, fingerprint(inputs))
    if done is not None:
        # E.g. a trainer orphaned by a killed Snakemake finished while this job waited for its lock.
        LOG.info("%s already holds a model trained with these inputs (step %d kept): not training again",
                 out_dir, done["best_step"])
        shutil.rmtree(state_dir, ignore_errors=True)  # as a finished job leaves it
        return done
    _bind_state(state_dir, inputs)
    start_step = _saved_step(tf, state_dir)
    history = model_dir.read_history(state_dir / model_dir.CURVE_FILE, start_step)
    _drop_best_after(state_dir, start_step)
    with contextlib.ExitStack() as job:
        decoded = (decode_once(stages, settings.batch_size, train_index["count"], start_step, memory_mb, job)
                   if decode_images_once else None)
        g = train_graph.build(tf, arch, settings, seed, train_json, val_json, train_index, stages, checkpoint,
                              first_record=start_step * settings.batch_size, precision=precision, decode_once=decoded)
        LOG.info("training %s on %s: %d classes, %d train / %d val images, %d steps in %d stage(s),"
                 " starting at step %d%s", arch, train_json, len(train_index["class_names"]), train_index["count"],
                 val_index["count"], sum(s["steps"] for s in stages), len(stages), start_step,
                 ", deterministic" if settings.deterministic else "")
        config = model_dir.session_config(tf, threads, precision, settings.xla)
        with op_determinism(settings.deterministic), tf.compat.v1.Session(graph=g.graph, config=config) as sess:
            _initialise(sess, tf, g, state_dir, start_step)
            _start_input(sess, g)
            writer = tf.compat.v1.summary.FileWriter(str(out_dir.parent / f"{out_dir.name}.events"),
                                                     g.graph if start_step == 0 else None)
            try:
                _run_steps(sess, tf, g, stages, settings, state_dir, history, writer, log_every)
            finally:
                writer.close()
            if settings.keep_best_by == "last":
                _save_best(sess, g, state_dir, history[-1]["step"])

    summary = {"arch": arch, "class_names": train_index["class_names"],
               "num_classes": len(train_index["class_names"]),
               "image_size": settings.image_size,
               "preprocessing": spec.preprocessing, "settings": as_dict(settings), "seed": seed,
               "steps": history[-1]["step"], "stages": stages, "kept": settings.keep_best_by,
               "best_step": _best_step(history, settings.keep_best_by),
               "train_images": train_index["count"], "val_images": val_index["count"],
               "tensorflow": tf.__version__, "code_version": inputs["code"],
               # What actually ran the job: a GPU job on the CPU would otherwise go unnoticed.
               "device": gpu.describe_device(threads, precision.name),
               "precision": precision.name,
               # The shards' stain normalization: predict_folder and the export apply the same.
               "stain": train_index["encoding"].get("stain"),
               # How the shards stored the images (normalised ones re-encoded): predict_folder and
               # the export store normalised images the same way before decoding them as the reader.
               "shard_encoding": {k: train_index["encoding"][k] for k in ("format", "jpeg_quality", "max_shorter_side")},
               "inputs_fingerprint": fingerprint(inputs)}
    model_dir.publish(state_dir / "best", out_dir, history, summary)
    shutil.rmtree(state_dir)  # published: a rerun starts afresh
    return summary


def _run_steps(sess, tf, g: train_graph.Graph, stages, settings, state_dir: Path, history: list[dict], writer,
               log_every: int) -> None:
    """The training loop, from the step after ``history``'s last to the end of the last stage."""
    batch_size = settings.batch_size
    plan = _Stages(stages, settings.keep_best_by, settings.early_stopping_patience)
    for row in history:
        plan.update(row)
    step = history[-1]["step"] if history else 0
    # One callable per (stage, with summaries): session.run would rebuild its fetch and feed
    # handling at every step, which is most of what the host spends on a step of a small network.
    steps = {}

    def step_fn(stage_idx: int, write_summary: bool):
        if (stage_idx, write_summary) not in steps:
            fetches = [g.train_ops[stage_idx], g.step_values[stage_idx]]
            if write_summary:  # the summary ops run only on the steps whose summaries are written
                fetches.append(g.summaries)
            steps[stage_idx, write_summary] = sess.make_callable(fetches, [g.stage_start])
        return steps[stage_idx, write_summary]

    images_seen, t_start = 0, time.monotonic()
    while not plan.finished:
        stage, stage_idx = plan.current, plan.index
        write_summary = (step + 1) % log_every == 0
        loss_scale = g.loss_scales[stage_idx]
        # loss, accuracy, learning rate (and the scale this step's loss was multiplied by)
        values = step_fn(stage_idx, write_summary)(plan.start)
        loss_v, acc_v, lr_v = values[1][:3]
        step += 1
        images_seen += batch_size
        rate = images_seen / max(time.monotonic() - t_start, 1e-9)
        if not math.isfinite(loss_v):
            raise FloatingPointError(f"loss became {loss_v} at step {step}: lower the learning rate")
        row = {"step": step, "stage": stage["name"], "loss": float(loss_v), "accuracy": float(acc_v),
               "learning_rate": float(lr_v), "images_per_sec": rate, "val_loss": math.nan,
               "val_accuracy": math.nan}
        if loss_scale is not None:
            row[model_dir.LOSS_SCALE_FIELD] = float(values[1][3])
        is_eval = step % settings.eval_every_steps == 0 or plan.is_last_step(step)
        if is_eval:
            row["val_loss"], row["val_accuracy"] = _validate(sess, tf, g)
        remaining = plan.remaining_steps(step)
        improved, stopped = plan.update(row)
        history.append(row)
        if improved and settings.keep_best_by != "last":
            _save_best(sess, g, state_dir, step)
        if write_summary:
            writer.add_summary(values[2], step)
        if step % log_every == 0 or is_eval:
            LOG.info("step %d/%d stage=%s loss=%.4f acc=%.3f lr=%.2e%s %.1f images/s ETA %s%s",
                     step, step + remaining, row["stage"], loss_v, acc_v, lr_v,
                     f" loss_scale={row[model_dir.LOSS_SCALE_FIELD]:g}" if loss_scale is not None else "", rate,
                     format_seconds(remaining * batch_size / rate),
                     f" val_loss={row['val_loss']:.4f} val_acc={row['val_accuracy']:.3f}" if is_eval else "",
                     extra=PROGRESS)
        if stopped:
            LOG.info("early stopping of stage %s at step %d: no validation improvement in %d evaluations%s",
                     stage["name"], step, plan.patience,
                     "" if plan.finished else f"; stage {plan.current['name']} starts")
        if step % settings.save_every_steps == 0 or plan.finished:
            _save_state(sess, g, state_dir, step, history)


def _save_state(sess, g: train_graph.Graph, state_dir: Path, step: int, history: list[dict]) -> None:
    """The curve first, then the checkpoint: a kill between the two leaves a curve that reaches
    past the newest checkpoint, which resuming trims, never one that stops short of it. Kept
    weights older than the newest are then obsolete: the saved curve says which is best."""
    _write_history(state_dir / model_dir.CURVE_FILE, history)
    g.state_saver.save(sess, str(state_dir / "state.ckpt"), global_step=step, write_meta_graph=False)
    steps = _best_steps(state_dir)
    for old in steps[:-1]:
        _remove_best(state_dir, old)


def _save_best(sess, g: train_graph.Graph, state_dir: Path, step: int) -> None:
    g.best_saver.save(sess, str(state_dir / "best" / MODEL_PREFIX), global_step=step, write_meta_graph=False,
                      write_state=False)


def _best_steps(state_dir: Path) -> list[int]:
    """Steps of the kept weights in ``state_dir/best`` (``model.ckpt-{step}``), ascending."""
    names = (p.name for p in (state_dir / "best").glob(f"{MODEL_PREFIX}-*.index"))
    return sorted(int(n[len(MODEL_PREFIX) + 1:-len(".index")]) for n in names)


def _remove_best(state_dir: Path, step: int) -> None:
    for path in (state_dir / "best").glob(f"{MODEL_PREFIX}-{step}.*"):
        path.unlink()


def _drop_best_after(state_dir: Path, step: int) -> None:
    """Kept weights saved after the restored step belong to steps that are redone."""
    for later in (s for s in _best_steps(state_dir) if s > step):
        LOG.info("dropping kept weights of step %d, after the restored step %d", later, step)
        _remove_best(state_dir, later)


def _saved_step(tf, state_dir: Path) -> int:
    latest = tf.train.latest_checkpoint(str(state_dir))
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def _initialise(sess, tf, g: train_graph.Graph, state_dir: Path, start_step: int) -> None:
    if start_step:
        latest = tf.train.latest_checkpoint(str(state_dir))
        g.state_saver.restore(sess, latest)
        LOG.info("resuming from %s at step %d", latest, start_step)
        return
    sess.run(tf.compat.v1.global_variables_initializer())
    if g.restore_init is not None:
        g.restore_init(sess)


def _start_input(sess, g: train_graph.Graph) -> None:
    start = time.monotonic()
    sizes = train_graph.start_input(sess, g)
    if sizes is not None:
        LOG.info("decoded the training images once in %.1f s: %.1f MB in memory, %.1f MB on local disk",
                 time.monotonic() - start, sizes[0] / 2**20, sizes[1] / 2**20)


def _validate(sess, tf, g: train_graph.Graph) -> tuple[float, float]:
    sess.run(g.val_iter.initializer)
    total_loss = total_correct = n = 0.0
    while True:
        try:
            l, c, k = sess.run(g.val_fetches)
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


def _best_step(history: list[dict], keep_best_by: str) -> int:
    evaluated = [r for r in history if not math.isnan(r["val_loss"])]
    if keep_best_by == "last" or not evaluated:
        return history[-1]["step"] if history else 0
    return min(evaluated, key=lambda r: (_score(r, keep_best_by), r["step"]))["step"]
