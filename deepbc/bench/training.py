"""Training throughput: the project's trainer against plain Keras and against its own in-memory bound.

The variants train on the same images, at the same image size and batch size, each in a fresh
process (so that threading settings, graph state and Keras' global dtype policy do not leak between
them):

- ``trainer``: ``deepbc.training.train.train`` reading the TFRecord shards through ``shard_reader.make_dataset``
  with the network's preprocessing and augmentation: what ``rule train`` runs (``deterministic``,
  ``precision: fp32``);
- ``trainer_mixed``, ``trainer_mixed_xla``: the same with ``precision: mixed`` (bfloat16 where the
  CPU has it, float16 on a recent GPU, else float32: each result records what it computed in), and
  with ``xla: true`` as well;
- ``trainer_nondeterministic``: ``deterministic: false`` (no op determinism, out-of-order
  tf.data): what bit-reproducibility costs;
- ``trainer_every_epoch``, ``trainer_mixed_every_epoch``: the trainer decoding every image at
  every epoch, as before it decoded each once per job (``train.train(decode_images_once=False)``): what decoding
  once buys, at each precision;
- ``in_memory``, ``in_memory_mixed``: the same TF-Slim network, loss and optimizer, in the same
  session configuration (deepbc.training.model_dir.session_config) and op determinism, fed from
  preprocessed arrays already in memory: the trainer's upper bound at each precision, with no
  input pipeline at all;
- ``keras``, ``keras_mixed_bfloat16``: ``keras.applications.ResNet50(weights=None)`` compiled with
  the same optimizer and trained with ``model.fit`` on the same preprocessed arrays, at float32 and
  under the ``mixed_bfloat16`` dtype policy: what a user would write instead.

Throughput is images per second over the steps after ``warmup`` (graph optimisation, first
allocation and the trainer's validation pass fall outside it). ``repeats`` measures every variant
that many times, interleaved, for the spread. ``one_process`` (the smoke test's ``--quick``) runs
the data preparation and every variant in one new interpreter instead: a check that each variant
runs, without a TensorFlow import per variant, not a measurement.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from deepbc.bench import common

LOG = logging.getLogger("deepbc.bench.training")

# The preprint's optimiser (config/paper.yaml; the schema's defaults), from scratch: every layer
# trains. The values the schema does not default; deepbc.training.settings fills in the rest.
SETTINGS = {"init": "scratch", "learning_rate": 0.01, "stage2_learning_rate": 0.001, "keep_best_by": "last",
            # No validation or state saving between the timed steps.
            "eval_every_steps": 10**9, "save_every_steps": 10**9}
VARIANTS = ("trainer", "trainer_mixed", "trainer_mixed_xla", "trainer_nondeterministic", "trainer_every_epoch",
            "trainer_mixed_every_epoch", "in_memory", "in_memory_mixed", "keras", "keras_mixed_bfloat16")
# (numerator, denominator) of the ratios reported: the goals of issue 14 and what they rest on.
RATIOS = [("trainer_mixed", "trainer"), ("trainer_mixed_xla", "trainer_mixed"), ("trainer", "keras"),
          ("trainer_mixed", "keras_mixed_bfloat16"), ("trainer", "in_memory"), ("trainer_mixed", "in_memory_mixed"),
          ("in_memory", "keras"), ("trainer", "trainer_nondeterministic"), ("trainer", "trainer_every_epoch"),
          ("trainer_mixed", "trainer_mixed_every_epoch"), ("trainer_every_epoch", "in_memory"),
          ("trainer_mixed_every_epoch", "in_memory_mixed")]
GOALS = {"trainer_mixed_vs_trainer": 1.4, "trainer_vs_keras": 1.3, "trainer_mixed_vs_keras_mixed_bfloat16": 1.3,
         "trainer_vs_in_memory": 0.95, "trainer_mixed_vs_in_memory_mixed": 0.95}


def run(arch: str = "resnet_v1_50", image_size: int = 128, batch_size: int = 16, steps: int = 30,
        warmup: int = 5, images: int = 64, threads: int = 2, seed: int = 0, keras_model: str = "ResNet50",
        workdir: str | None = None, variants=VARIANTS, repeats: int = 1, one_process: bool = False) -> dict:
    """Measure the variants; return images/s of each (median over ``repeats``, and every
    measurement) and the ratios of the issues."""
    if steps < 2 or warmup < 1 or repeats < 1:
        raise ValueError("need steps >= 2, warmup >= 1 and repeats >= 1")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)}: use {VARIANTS}")
    runner = common.runner(one_process, _one_process_init, (threads,))
    with tempfile.TemporaryDirectory(dir=workdir) as tmp, runner as call:
        tmp = Path(tmp)
        shard_dir, arrays = prepare_data(tmp, arch, images, image_size, seed, call)
        settings = dict(SETTINGS, image_size=image_size, batch_size=batch_size, max_number_of_steps=warmup + steps)
        mixed = dict(settings, precision="mixed")
        jobs = {
            "trainer": (trainer_rate, shard_dir, tmp, arch, settings, seed, threads, warmup),
            "trainer_mixed": (trainer_rate, shard_dir, tmp, arch, mixed, seed, threads, warmup),
            "trainer_mixed_xla": (trainer_rate, shard_dir, tmp, arch, dict(mixed, xla=True), seed, threads, warmup),
            "trainer_nondeterministic": (trainer_rate, shard_dir, tmp, arch, dict(settings, deterministic=False),
                                         seed, threads, warmup),
            "trainer_every_epoch": (trainer_rate, shard_dir, tmp, arch, settings, seed, threads, warmup, False),
            "trainer_mixed_every_epoch": (trainer_rate, shard_dir, tmp, arch, mixed, seed, threads, warmup, False),
            "in_memory": (in_memory_rate, arrays, arch, settings, seed, threads, warmup),
            "in_memory_mixed": (in_memory_rate, arrays, arch, mixed, seed, threads, warmup),
            "keras": (keras_rate, arrays, keras_model, settings, seed, threads, warmup, "float32"),
            "keras_mixed_bfloat16": (keras_rate, arrays, keras_model, settings, seed, threads, warmup,
                                     "mixed_bfloat16"),
        }
        results = {name: [] for name in variants}
        for repeat in range(repeats):
            for name in variants:
                func, *args = jobs[name]
                LOG.info("measuring %s (%d/%d)", name, repeat + 1, repeats)
                results[name].append(call(func, *args))
                LOG.info("%s: %.2f images/s", name, results[name][-1]["images_per_s"])
    runs = {name: [r["images_per_s"] for r in rs] for name, rs in results.items()}
    rates = {name: float(np.median(r)) for name, r in runs.items()}
    ratios = {f"{a}_vs_{b}": common.ratio(rates[a], rates[b]) for a, b in RATIOS if a in rates and b in rates}
    # Per repeat, from the interleaved pairs: the spread of each ratio within this run.
    ratio_runs = {f"{a}_vs_{b}": [common.ratio(x, y) for x, y in zip(runs[a], runs[b])]
                  for a, b in RATIOS if a in runs and b in runs}
    return {
        "arch": arch, "keras_model": keras_model, "image_size": image_size, "batch_size": batch_size,
        "steps": steps, "warmup": warmup, "threads": threads, "images": images, "repeats": repeats,
        "images_per_s": {k: round(v, 2) for k, v in rates.items()},
        "images_per_s_runs": {k: [round(v, 2) for v in r] for k, r in runs.items()},
        **({"keras_jit_compile": results["keras"][0]["jit_compile"]} if "keras" in results else {}),
        # What each variant computed in on this machine (precision: mixed falls back to fp32 without bf16/fp16).
        "precision": {name: rs[0]["precision"] for name, rs in results.items()},
        **ratios,
        "ratio_runs": ratio_runs,
        "goals": {k: v for k, v in GOALS.items() if k in ratios},
    }


def prepare_data(tmp: Path, arch: str, images: int, image_size: int, seed: int,
                 call=common.in_fresh_process) -> tuple[Path, Path]:
    """BreakHis-sized PNGs -> the workflow's JPEG shards, and the same images preprocessed into an
    .npz (by ``call``: in a fresh process by default)."""
    import pandas as pd

    from deepbc.shards import writer as shard_writer

    root = tmp / "images"
    val_test = 2 * max(2, images // 8)
    rels = [f"img{i:04d}.png" for i in range(images + val_test)]
    common.write_he_images(root, rels, seed)
    split = ["train"] * images + ["val", "test"] * (val_test // 2)
    labels = [i % 2 for i in range(len(rels))]
    table = pd.DataFrame({"path": rels, "patient": [f"p{i}" for i in range(len(rels))], "magnification": "200X",
                          "label": [["benign", "malignant"][k] for k in labels], "label_index": labels,
                          "fold": 0, "split": split, "protocol": "patient"})
    shard_dir = tmp / "shards"
    shard_writer.write_shards(table, 0, root, shard_dir, seed=seed, shards={"images_per_shard": 32})
    arrays = tmp / "arrays.npz"
    call(_preprocess_to_npz, shard_dir / "train.json", arch, image_size, arrays)
    return shard_dir, arrays


def _one_process_init(threads: int) -> None:
    """The shared interpreter of ``one_process``: what a variant sets process-wide and TensorFlow
    fixes once it has started, set once before anything runs: XLA's CPU clustering (the XLA
    variant's, read at the first graph) and the thread counts (the Keras variants')."""
    common.log_to_stderr()
    from deepbc.training import precision

    precision.allow_cpu_xla()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def _preprocess_to_npz(index_json: Path, arch: str, image_size: int, out: Path) -> None:
    """The training images decoded and preprocessed as the network expects them (no augmentation)."""
    from deepbc.shards import reader as shard_reader
    from deepbc.training import nets, preprocessing

    pre = preprocessing.get_preprocessing(nets.get_spec(arch).preprocessing, is_training=False)
    batches = list(shard_reader.make_dataset(index_json, batch_size=64, is_training=False, preprocess_fn=pre,
                                       image_size=image_size))
    np.savez(out, x=np.concatenate([b[0].numpy() for b in batches]),
             y=np.concatenate([b[1].numpy() for b in batches]).astype(np.int32))


def steady_rate(step_ends: list[float], batch_size: int, warmup: int) -> float:
    """Images/s between the end of step ``warmup`` and the end of the last step."""
    measured = len(step_ends) - warmup
    return measured * batch_size / (step_ends[-1] - step_ends[warmup - 1])


def trainer_rate(shard_dir: Path, tmp: Path, arch: str, values: dict, seed: int, threads: int,
                 warmup: int, decode_once: bool = True) -> dict:
    """``decode_once=False``: decode every image at every epoch (the trainer before it decoded once)."""
    import csv

    from deepbc.training import train
    from deepbc.training.settings import build

    settings = build(values, arch)
    # A folder per measurement: in one already holding this model the trainer would not train again,
    # and a repeat would read the first measurement's curve.
    run_dir = Path(tempfile.mkdtemp(dir=tmp, prefix="trainer-"))
    out = run_dir / "model"
    summary = train.train(shard_dir / "train.json", shard_dir / "val.json", out, run_dir / "state", arch,
                          settings, seed, threads=threads, decode_images_once=decode_once)
    with (out / "training.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    # The trainer logs cumulative images/s since its first step: elapsed = images seen / rate.
    batch = settings.batch_size
    ends = [int(r["step"]) * batch / float(r["images_per_sec"]) for r in rows]
    return {"images_per_s": steady_rate(ends, batch, warmup), "precision": summary["precision"]}


def in_memory_rate(arrays: Path, arch: str, values: dict, seed: int, threads: int, warmup: int) -> dict:
    import tensorflow as tf

    from deepbc.training import model_dir, nets, train
    from deepbc.training import precision as precision_mod
    from deepbc.training.settings import build

    settings = build(values, arch)
    chosen = precision_mod.for_this_machine(settings.precision)
    data = np.load(arrays)
    x, y = data["x"], data["y"]
    batch, steps = settings.batch_size, settings.max_number_of_steps
    num_classes = int(y.max()) + 1
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(seed)
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(batch).prefetch(2)
        images, labels = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
        network = nets.get_network_fn(arch, max(2, num_classes), weight_decay=settings.weight_decay,
                                      is_training=True)
        logits, _ = network(images)
        loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits) + tf.add_n(
            [tf.constant(0.0)] + tf.compat.v1.losses.get_regularization_losses())
        optimizer = tf.compat.v1.train.RMSPropOptimizer(settings.learning_rate, decay=settings.rmsprop_decay,
                                                        momentum=settings.rmsprop_momentum,
                                                        epsilon=settings.opt_epsilon)
        with tf.control_dependencies(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)):
            optimizer = precision_mod.wrap_optimizer(optimizer, chosen)
            train_op = optimizer.minimize(loss, global_step=tf.compat.v1.train.get_or_create_global_step())
        config = model_dir.session_config(tf, threads, chosen, settings.xla)
        # With the trainer's op determinism: what it costs (section 1a) is not the input's share.
        with train.op_determinism(settings.deterministic), tf.compat.v1.Session(graph=graph, config=config) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            ends = []
            for _ in range(steps):
                sess.run([train_op, loss])
                ends.append(time.perf_counter())
    return {"images_per_s": steady_rate(ends, batch, warmup), "precision": chosen.name}


def keras_rate(arrays: Path, model_name: str, values: dict, seed: int, threads: int, warmup: int,
               policy: str) -> dict:
    import tensorflow as tf

    from deepbc.training.settings import build

    settings = build(values)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras

    keras.utils.set_random_seed(seed)
    keras.mixed_precision.set_global_policy(policy)
    data = np.load(arrays)
    batch, steps = settings.batch_size, settings.max_number_of_steps
    reps = -(-steps * batch // len(data["x"]))
    x, y = np.concatenate([data["x"]] * reps), np.concatenate([data["y"]] * reps)
    model = getattr(keras.applications, model_name)(weights=None, input_shape=x.shape[1:],
                                                    classes=max(2, int(y.max()) + 1))
    model.compile(optimizer=keras.optimizers.RMSprop(settings.learning_rate, rho=settings.rmsprop_decay,
                                                     momentum=settings.rmsprop_momentum,
                                                     epsilon=settings.opt_epsilon),
                  loss="sparse_categorical_crossentropy")
    ends: list[float] = []
    timer = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs=None: ends.append(time.perf_counter()))
    model.fit(x, y, batch_size=batch, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0, callbacks=[timer])
    return {"images_per_s": steady_rate(ends, batch, warmup), "jit_compile": bool(model.jit_compile),
            "precision": {"float32": "fp32", "mixed_bfloat16": "bf16"}[policy]}
