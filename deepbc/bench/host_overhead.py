"""Host overhead per step: what the trainer and the evaluation add around ``session.run``.

With a network whose compute is negligible (``TINY``: one 1x1 convolution with batch norm, a
global mean and 1x1 logits, registered only inside the benchmark's processes), a step costs what
the host spends on it: the input pipeline's delivery of a batch, ``session.run`` itself, and what
the caller does around it. Variants, each in a fresh process, interleaved over ``repeats``:

- ``trainer``: ``deepbc.training.train.train`` as the train rule runs it (deterministic, its own
  log interval, validation and state saving pushed past the end so that only the step loop is
  timed); time per step from its training.csv (cumulative images/s at every step);
- ``bare_train``: the same graph (``deepbc.training.graph.build``), session configuration and op
  determinism, ``sess.run(train_op)`` in a loop: the difference is what the trainer adds per step;
- ``loop``: the trainer's step loop (``train._run_steps``) and the bare loop alternating in one
  process on one graph, two blocks of each per repeat: the same comparison without the noise
  between processes (on a shared 2-core machine it is of the order of the difference); also the
  main thread's CPU time per step of each (``time.thread_time``), what the Python thread driving
  the steps spends, which other processes' load hardly moves;
- ``predict``: ``deepbc.evaluation.inference.predict_shards`` over a split (wall time of the call:
  graph, session, restore, the loop, the predictions table and its parquet);
- ``bare_predict``: the same graph (``inference.prediction_graph``) built, restored and run in a
  loop fetching the same tensors, nothing else.

``input_from``: ``memory`` (default) has both training variants repeat their first batch, made by
the trainer's own pipeline, from memory, so that the steps time the host and not tf.data's
per-element work, which on a GPU machine runs on other cores; ``shards`` keeps the whole
pipeline (images decoded once, augmentation at every step).

``one_process`` (the smoke test's) runs everything in one new interpreter: a check, not a measurement.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import tempfile
import time
from pathlib import Path

from deepbc.bench import common, training

LOG = logging.getLogger("deepbc.bench.host_overhead")
TINY = "bench_1x1"
VARIANTS = ("trainer", "bare_train", "loop", "predict", "bare_predict")
# Where the training variants' batches come from: their first batch repeated from memory (the host's
# own cost), or the shards through the trainer's whole input pipeline.
INPUTS = ("memory", "shards")
TRAINING = ("trainer", "bare_train", "loop")
GOALS = {"trainer_overhead_ms": 2.0, "trainer_vs_bare": 0.9, "trainer_steps_per_s": 400}
# Validation and state saving past the end of the run: the step loop alone is timed.
NEVER = 10**9


def tiny_network(inputs, num_classes, is_training=True, scope=TINY):
    """(logits [batch, 1, 1, classes], end points): a 1x1 convolution (batch norm, ReLU from the
    ResNet arg scope), a global mean, 1x1 logits. A few thousand multiply-adds per pixel."""
    import tensorflow as tf

    from deepbc.training.compat import import_slim

    slim = import_slim()
    with tf.compat.v1.variable_scope(scope):
        with slim.arg_scope([slim.batch_norm], is_training=is_training):
            net = slim.conv2d(inputs, 8, [1, 1], scope="conv1")
        net = tf.reduce_mean(net, [1, 2], keepdims=True)
        logits = slim.conv2d(net, num_classes, [1, 1], activation_fn=None, normalizer_fn=None, scope="logits")
    return logits, {"last": net}


def register_tiny() -> None:
    """Add ``TINY`` to this process's network registry (never to the workflow's: config names only
    the registry's own networks)."""
    from deepbc.training import nets

    nets.NETWORKS[TINY] = nets.NetSpec(
        name=TINY, network=f"{__name__}:tiny_network", arg_scope="tf_slim.nets.resnet_v1:resnet_arg_scope",
        scope=TINY, exclude_scopes=(f"{TINY}/logits",), default_image_size=32, min_image_size=1,
        preprocessing="vgg", checkpoint_url=None, checkpoint_file=f"{TINY}.ckpt", checkpoint_classes=None,
        gradcam_end_point="last")


def _init(threads: int) -> None:
    common.log_to_stderr()
    register_tiny()


def run(arch: str = TINY, image_size: int = 32, batch_size: int = 32, steps: int = 400, warmup: int = 20,
        images: int = 256, predict_images: int = 2048, threads: int = 2, seed: int = 0, repeats: int = 3,
        workdir: str | None = None, variants=VARIANTS, input_from: str = "memory", one_process: bool = False) -> dict:
    if steps < 2 or warmup < 1 or repeats < 1:
        raise ValueError("need steps >= 2, warmup >= 1 and repeats >= 1")
    if input_from not in INPUTS:
        raise ValueError(f"input_from must be one of {INPUTS}")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)}: use {VARIANTS}")
    settings = dict(training.SETTINGS, image_size=image_size, batch_size=batch_size,
                    max_number_of_steps=warmup + steps, eval_every_steps=NEVER, save_every_steps=NEVER)
    # The source size the preprocessing needs for image_size: no resampling beyond it.
    side = round(image_size * 256 / 224)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp, common.runner(one_process, _init, (threads,)) as call:
        tmp = Path(tmp)
        shard_dir = call(_prepare, tmp, images, predict_images, side, seed)
        model = tmp / "model"
        call(_train, shard_dir, tmp, model, arch, dict(settings, max_number_of_steps=2), seed, threads)
        jobs = {"trainer": (_trainer_step_ms, shard_dir, tmp, arch, settings, seed, threads, warmup),
                "bare_train": (_bare_train_step_ms, shard_dir, arch, settings, seed, threads, warmup),
                "loop": (_loop_and_bare_step_ms, shard_dir, arch, settings, seed, threads, warmup, 2),
                "predict": (_predict_ms_per_image, model, shard_dir / "val.json", tmp, threads),
                "bare_predict": (_bare_predict_ms_per_image, model, shard_dir / "val.json", threads)}
        runs = {name: [] for name in variants}
        for repeat in range(repeats):
            for name in variants:
                func, *args = jobs[name]
                runs[name].append(call(_with_tiny, input_from if name in TRAINING else "shards", func, *args))
                LOG.info("%s (%d/%d): %s ms", name, repeat + 1, repeats, runs[name][-1])
    blocks = runs.pop("loop", [])
    median = {k: statistics.median(v) for k, v in runs.items()}
    result = {"arch": arch, "input": input_from, "image_size": image_size, "batch_size": batch_size, "steps": steps, "warmup": warmup,
              "images": images, "predict_images": predict_images, "threads": threads, "repeats": repeats,
              "ms_per_step": {k: round(median[k], 4) for k in ("trainer", "bare_train") if k in median},
              "ms_per_image": {k: round(median[k], 4) for k in ("predict", "bare_predict") if k in median},
              "runs_ms": {k: [round(x, 4) for x in v] for k, v in runs.items()}}
    if {"trainer", "bare_train"} <= set(runs):
        pairs = list(zip(runs["trainer"], runs["bare_train"]))
        result["trainer_overhead_ms"] = round(median["trainer"] - median["bare_train"], 4)
        result["trainer_overhead_ms_runs"] = [round(t - b, 4) for t, b in pairs]
        result["trainer_vs_bare"] = common.ratio(median["bare_train"], median["trainer"])  # rates: inverse of times
        result["trainer_vs_bare_runs"] = [common.ratio(b, t) for t, b in pairs]
        result["trainer_steps_per_s"] = round(1000 / median["trainer"], 1)
        result["bare_steps_per_s"] = round(1000 / median["bare_train"], 1)
    if blocks:
        loop = [x for b in blocks for x in b["loop"]]
        bare = [x for b in blocks for x in b["bare"]]
        result["loop_ms_per_step"] = {"loop": round(statistics.median(loop), 4), "bare": round(statistics.median(bare), 4)}
        result["loop_runs_ms"] = {"loop": [round(x, 4) for x in loop], "bare": [round(x, 4) for x in bare]}
        result["loop_overhead_ms"] = round(statistics.median([a - b for a, b in zip(loop, bare)]), 4)
        result["loop_overhead_ms_runs"] = [round(a - b, 4) for a, b in zip(loop, bare)]
        result["loop_vs_bare"] = common.ratio(statistics.median(bare), statistics.median(loop))
        result["loop_steps_per_s"] = round(1000 / statistics.median(loop), 1)
        loop_cpu = [x for b in blocks for x in b["loop_cpu"]]
        bare_cpu = [x for b in blocks for x in b["bare_cpu"]]
        result["thread_cpu_ms_per_step"] = {"loop": round(statistics.median(loop_cpu), 4),
                                            "bare": round(statistics.median(bare_cpu), 4)}
        result["thread_cpu_runs_ms"] = {"loop": [round(x, 4) for x in loop_cpu], "bare": [round(x, 4) for x in bare_cpu]}
        result["loop_thread_cpu_overhead_ms"] = round(statistics.median([a - b for a, b in zip(loop_cpu, bare_cpu)]), 4)
    if {"predict", "bare_predict"} <= set(runs):
        pairs = list(zip(runs["predict"], runs["bare_predict"]))
        result["predict_images_per_s"] = round(1000 / median["predict"], 1)
        result["bare_predict_images_per_s"] = round(1000 / median["bare_predict"], 1)
        result["predict_vs_bare"] = common.ratio(median["bare_predict"], median["predict"])
        result["predict_vs_bare_runs"] = [common.ratio(b, p) for p, b in pairs]
    result["goals"] = GOALS
    return result


def _with_tiny(input_from: str, func, *args):
    register_tiny()  # a fresh process has only the registry's networks
    if input_from == "memory":
        _first_batch_repeated()
    return func(*args)


def _first_batch_repeated() -> None:
    """Make training streams of this process repeat their first batch from memory: the input
    pipeline's cost per step (tf.data's per-element work, about 0.2-0.3 ms an image on this
    machine whatever the image size) then leaves the host's own per-step cost measurable."""
    from deepbc.shards import reader

    make_dataset = reader.make_dataset

    def repeating(*args, **kwargs):
        dataset = make_dataset(*args, **kwargs)
        return dataset.take(1).cache().repeat() if kwargs.get("is_training") else dataset

    reader.make_dataset = repeating


def _prepare(tmp: Path, images: int, predict_images: int, side: int, seed: int) -> Path:
    """Shards of ``images`` training and ``predict_images`` validation images (and the two test
    images a fold needs) of side x side px, so that preprocessing crops without resampling."""
    import pandas as pd

    from deepbc.shards import writer as shard_writer

    root = tmp / "images"
    rels = [f"img{i:05d}.png" for i in range(images + predict_images + 2)]
    common.write_he_images(root, rels, seed, size=(side, side))
    labels = [i % 2 for i in range(len(rels))]
    table = pd.DataFrame({"path": rels, "patient": [f"p{i}" for i in range(len(rels))], "magnification": "200X",
                          "label": [["benign", "malignant"][k] for k in labels], "label_index": labels,
                          "fold": 0, "split": ["train"] * images + ["val"] * predict_images + ["test"] * 2, "protocol": "patient"})
    shard_dir = tmp / "shards"
    shard_writer.write_shards(table, 0, root, shard_dir, seed=seed, shards={"images_per_shard": 256})
    return shard_dir


def _train(shard_dir: Path, tmp: Path, out: Path, arch: str, values: dict, seed: int, threads: int) -> None:
    from deepbc.training import train
    from deepbc.training.settings import build

    register_tiny()
    train.train(shard_dir / "train.json", shard_dir / "val.json", out, tmp / "state", arch, build(values, arch),
                seed, threads=threads)


def _trainer_step_ms(shard_dir: Path, tmp: Path, arch: str, values: dict, seed: int, threads: int,
                     warmup: int) -> float:
    result = training.trainer_rate(shard_dir, tmp, arch, values, seed, threads, warmup)
    return 1000 * values["batch_size"] / result["images_per_s"]


def _bare_train_step_ms(shard_dir: Path, arch: str, values: dict, seed: int, threads: int, warmup: int) -> float:
    with _training_session(shard_dir, arch, values, seed, threads) as (sess, g, settings, _):
        ends = _bare_steps(sess, g, settings.max_number_of_steps)
    return 1000 * settings.batch_size / training.steady_rate(ends, settings.batch_size, warmup)


def _loop_and_bare_step_ms(shard_dir: Path, arch: str, values: dict, seed: int, threads: int, warmup: int,
                           blocks: int) -> dict:
    """The trainer's step loop (``train._run_steps``) and the bare loop on one graph and session,
    alternating in ``blocks`` blocks of the run's steps: both see the same machine load, so their
    difference is the loop's own cost, not the noise between processes. The loop's steps are timed
    by its own curve (cumulative images/s at each step), which leaves out the validation and the
    state saving it does after its last step."""
    import tensorflow as tf

    from deepbc.training import train

    out = {"loop": [], "bare": [], "loop_cpu": [], "bare_cpu": []}
    with _training_session(shard_dir, arch, values, seed, threads) as (sess, g, settings, tmp):
        batch, steps = settings.batch_size, settings.max_number_of_steps
        stages = train.stage_plan(settings)
        writer = tf.compat.v1.summary.FileWriter(str(tmp / "events"))
        for block in range(blocks):
            history: list[dict] = []
            cpu = time.thread_time()
            with _without_last_step_extras(train):
                train._run_steps(sess, tf, g, stages, settings, tmp / f"state{block}", history, writer, 10)
            out["loop_cpu"].append(1000 * (time.thread_time() - cpu) / steps)
            ends = [r["step"] * batch / r["images_per_sec"] for r in history]
            out["loop"].append(1000 * batch / training.steady_rate(ends, batch, warmup))
            cpu = time.thread_time()
            ends = _bare_steps(sess, g, steps)
            out["bare_cpu"].append(1000 * (time.thread_time() - cpu) / steps)
            out["bare"].append(1000 * batch / training.steady_rate(ends, batch, warmup))
        writer.close()
    return out


@contextlib.contextmanager
def _training_session(shard_dir: Path, arch: str, values: dict, seed: int, threads: int):
    """The trainer's graph and session, built as ``train.train`` builds them, its input started (the
    images decoded once, no memory bound): (session, graph, settings, a scratch folder)."""
    import tensorflow as tf

    from deepbc.shards.reader import read_index
    from deepbc.training import graph as train_graph
    from deepbc.training import model_dir, train
    from deepbc.training import precision as precision_mod
    from deepbc.training.settings import build

    settings = build(values, arch)
    precision = precision_mod.for_this_machine(settings.precision)
    train_json = shard_dir / "train.json"
    index = read_index(train_json)
    stages = train.stage_plan(settings)
    with contextlib.ExitStack() as job:
        decoded = train.decode_once(stages, settings.batch_size, index["count"], 0, None, job)
        g = train_graph.build(tf, arch, settings, seed, train_json, shard_dir / "val.json", index, stages, None,
                              first_record=0, precision=precision, decode_once=decoded)
        config = model_dir.session_config(tf, threads, precision, settings.xla)
        tmp = Path(job.enter_context(tempfile.TemporaryDirectory()))
        with train.op_determinism(settings.deterministic), tf.compat.v1.Session(graph=g.graph, config=config) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            train_graph.start_input(sess, g)
            yield sess, g, settings, tmp


@contextlib.contextmanager
def _without_last_step_extras(train):
    """The loop without the validation and state saving of its last step (validation and saving
    are pushed past the end otherwise): its main thread's CPU time is then the steps' alone."""
    validate, save_state = train._validate, train._save_state
    train._validate = lambda *args: (math.nan, math.nan)
    train._save_state = lambda *args: None
    try:
        yield
    finally:
        train._validate, train._save_state = validate, save_state


def _bare_steps(sess, g, steps: int) -> list[float]:
    """The end times of ``steps`` runs of the first stage's train op, and nothing else."""
    train_op, feed = g.train_ops[0], _stage_feed(g)
    ends = []
    for _ in range(steps):
        sess.run(train_op, feed_dict=feed)
        ends.append(time.perf_counter())
    return ends


def _stage_feed(g) -> dict:
    """What the first stage's train op needs fed: the global step before its first step."""
    return {g.stage_start: 0}


def _predict_ms_per_image(model: Path, index: Path, tmp: Path, threads: int) -> float:
    import tensorflow  # noqa: F401  imported before the clock starts, as the bare loop has it

    from deepbc.evaluation import inference

    out = Path(tempfile.mkdtemp(dir=tmp)) / "predictions.parquet"
    start = time.perf_counter()
    df = inference.predict_shards(model, index, out, threads=threads)
    return 1000 * (time.perf_counter() - start) / len(df)


def _bare_predict_ms_per_image(model: Path, index: Path, threads: int) -> float:
    import tensorflow as tf

    from deepbc.evaluation import inference
    from deepbc.training import model_dir

    start = time.perf_counter()
    graph, probs, meta, saver, config = inference.prediction_graph(model, inference.shard_inputs(index), 64, threads)
    n = 0
    with tf.compat.v1.Session(graph=graph, config=config) as sess:
        saver.restore(sess, model_dir.checkpoint_prefix(model))
        while True:
            try:
                p, _ = sess.run([probs, meta])
            except tf.errors.OutOfRangeError:
                break
            n += len(p)
    return 1000 * (time.perf_counter() - start) / n

