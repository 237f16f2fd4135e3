"""Input pipeline: shard read + parse + decode + preprocess + batch against its limit, and against what
the trainer consumes.

- ``shards``: ``shard_reader.make_dataset`` in training mode (shard shuffle, record shuffle, repeat), with
  the network's training preprocessing and augmentation, as the trainer builds it;
- ``memory``: the same encoded bytes already in memory, decoded and preprocessed by the same
  functions with the same parallelism: the limit, with no file reading or record parsing;
- ``trainer``: what the project's network consumes when training on this CPU (its in-memory
  bound from the training benchmark), at the same image and batch size;
- ``shards_hed``: ``shards`` with HED stain augmentation added (``HED``, Tellez' "HED-light"),
  timed in ``rounds`` alternating with ``shards`` so that both see the same machine load; the
  result gives each one's median and range over the rounds, and the cost of HED per image;
- ``decoded``: the trainer's pipeline when a run reads its images more than once: every image
  decoded once (``shard_reader.DecodedImages``, in memory; the fill is not timed), then the same
  augmentation at every epoch; timed in the same rounds.

``cores_per_4000`` is how many cores of this machine each pipeline needs to deliver ~4,000 images/s,
what one H100 trains ResNet-50 at in mixed precision (BENCHMARKS.md 1b): 4,000 / (images/s per
thread, the rate divided by ``parallel``).

Each measurement runs in a fresh process; ``one_process`` (the smoke test's) runs the data
preparation and all of them in one new interpreter: a check that they run, not a measurement.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

from deepbc.bench import common, training

LOG = logging.getLogger("deepbc.bench.input_pipeline")
HED = {"sigma": 0.05, "bias": 0.05}


def run(images: int = 128, batches: int = 150, batch_size: int = 32, image_size: int = 224, parallel: int = 2,
        arch: str = "resnet_v1_50", trainer_steps: int = 4, trainer_batch_size: int = 16, seed: int = 0,
        workdir: str | None = None, rounds: int = 3, one_process: bool = False) -> dict:
    runner = common.runner(one_process)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp, runner as call:
        tmp = Path(tmp)
        shard_dir, arrays = training.prepare_data(tmp, arch, images, image_size, seed, call)
        rates = call(_pipeline_rates, shard_dir / "train.json", arch, batch_size, image_size,
                                          parallel, batches, seed, rounds)
        if trainer_steps:
            settings = dict(training.SETTINGS, image_size=image_size, batch_size=trainer_batch_size,
                            max_number_of_steps=trainer_steps + 1)
            LOG.info("measuring what %s consumes in training", arch)
            rates["trainer"] = call(training.in_memory_rate, arrays, arch, settings, seed, parallel, 1)["images_per_s"]
        encoding = json.loads((shard_dir / "train.json").read_text())["encoding"]
    result = {"arch": arch, "image_size": image_size, "batch_size": batch_size, "parallel": parallel,
              "batches": batches, "images": images, "source_size": [common.BREAKHIS_HEIGHT, common.BREAKHIS_WIDTH],
              "shard_encoding": encoding,
              "rounds": rounds,
              "images_per_s": {k: round(v, 1) for k, v in rates.items() if not k.endswith("_range")},
              "images_per_s_range": {k.removesuffix("_range"): [round(x, 1) for x in v]
                                     for k, v in rates.items() if k.endswith("_range")},
              # Per image, from the medians: 1/rate(with) - 1/rate(without).
              "hed_ms_per_image": round(1000 * (1 / rates["shards_hed"] - 1 / rates["shards"]), 3),
              "hed_vs_without": common.ratio(rates["shards_hed"], rates["shards"]),
              "decoded_vs_shards": common.ratio(rates["decoded"], rates["shards"]),
              "cores_per_4000": {k: round(4000 / (rates[k] / parallel), 1) for k in ("shards", "decoded", "memory")},
              "shards_vs_memory": common.ratio(rates["shards"], rates["memory"]),
              "goals": {"shards_vs_memory": 0.9, "shards_vs_trainer": 10}}
    if "trainer" in rates:
        result["shards_vs_trainer"] = common.ratio(rates["shards"], rates["trainer"])
    return result


def _pipeline_rates(index_json: Path, arch: str, batch_size: int, image_size: int, parallel: int, batches: int,
                    seed: int, rounds: int) -> dict:
    import tensorflow as tf

    from deepbc.shards import reader as shard_reader
    from deepbc.shards import records
    from deepbc.training import nets, preprocessing

    index = shard_reader.read_index(index_json)
    image_format = index["encoding"]["format"]
    pre = preprocessing.get_preprocessing(nets.get_spec(arch).preprocessing, is_training=True,
                                          augment=None)  # the schema's defaults, as the trainer's in training.SETTINGS
    options = tf.data.Options()
    options.threading.private_threadpool_size = parallel  # both pipelines get the same threads

    from_shards = shard_reader.make_dataset(index_json, batch_size=batch_size, is_training=True, preprocess_fn=pre,
                                      image_size=image_size, seed=seed, num_parallel_calls=parallel, repeat=True)
    encoded, labels = [], []
    for record, label in shard_reader.member_records(index_json):
        encoded.append(records.parse_example(record)["image/encoded"].numpy())
        labels.append(int(label))

    min_side = pre.min_source_side(image_size, image_size)

    def decode_in_memory(data, label):
        return pre(records.decode({"image/encoded": data}, image_format, min_side), image_size, image_size), label

    from_memory = (tf.data.Dataset.from_tensor_slices((encoded, labels)).repeat()
                   .map(decode_in_memory, num_parallel_calls=parallel).batch(batch_size, drop_remainder=True)
                   .prefetch(tf.data.AUTOTUNE))
    hed_pre = preprocessing.get_preprocessing(nets.get_spec(arch).preprocessing, is_training=True,
                                              augment={"hed": HED})
    with_hed = shard_reader.make_dataset(index_json, batch_size=batch_size, is_training=True, preprocess_fn=hed_pre,
                                   image_size=image_size, seed=seed, num_parallel_calls=parallel, repeat=True)
    with tempfile.TemporaryDirectory() as spill:
        decoded = shard_reader.DecodedImages(index_json, pre, image_size, None, spill, num_parallel_calls=parallel)
        from_decoded = shard_reader.make_dataset(index_json, batch_size=batch_size, is_training=True,
                                                 preprocess_fn=pre, image_size=image_size, seed=seed,
                                                 num_parallel_calls=parallel, repeat=True, decoded=decoded)
        return _rates(from_memory, from_shards, with_hed, from_decoded, options, batches, batch_size, rounds)


def _rates(from_memory, from_shards, with_hed, from_decoded, options, batches: int, batch_size: int,
           rounds: int) -> dict:
    rates = {"memory": _images_per_s(from_memory.with_options(options), batches, batch_size)}
    LOG.info("memory: %.1f images/s", rates["memory"])
    rounds_of = {"shards": [], "shards_hed": [], "decoded": []}
    for _ in range(rounds):
        for name, dataset in (("shards", from_shards), ("shards_hed", with_hed), ("decoded", from_decoded)):
            rounds_of[name].append(_images_per_s(dataset.with_options(options), batches, batch_size))
            LOG.info("%s: %.1f images/s", name, rounds_of[name][-1])
    for name, values in rounds_of.items():
        rates[name] = statistics.median(values)
        rates[f"{name}_range"] = [min(values), max(values)]
    return rates


def _images_per_s(dataset, batches: int, batch_size: int) -> float:
    iterator = iter(dataset)
    for _ in range(min(3, batches)):  # warm-up: thread pools, page cache, kernels
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)
