"""Reading one split of a fold: its index JSON, the store shards it lists (keeping only the
split's members, with their labels), record parsing and decoding, the tf.data pipeline with its
seeded stream, and naming a corrupt shard.

The store shards, their records and the index keys are written by ``deepbc.shards.writer`` (layout
in its docstring). TensorFlow is imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from deepbc.jobs.errors import UserError, delete_and_rerun, rebuild_store
from deepbc.shards.records import FORMATS, decode, parse_example, read_store

# Marks the reader's own checks of an index against the shards it reads (naming_corrupt_shards).
STALE = "shard index does not match its store"


def read_index(path) -> dict:
    """Load a ``{split}.json`` index and check it; ``paths`` (absolute shard paths) is added."""
    path = Path(path)
    if not path.is_file():
        raise UserError("shard index not found", str(path), "run the workflow's write_shards rule for this run and fold")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"shard index is not valid JSON: {err}", str(path), _rewrite_fold(path)) from err
    keys = ["count", "count_per_class", "class_names", "store", "shards", "shard_records", "shard_sha256",
            "members", "encoding"]
    missing = [k for k in keys if k not in index]
    if missing:
        raise UserError(f"shard index lacks key(s) {missing} (an index of per-run shards, before the "
                        "per-dataset store, lacks shard_records and members)", str(path), _rewrite_fold(path))
    if len(index["members"]) != index["count"] or len(index["shard_records"]) != len(index["shards"]):
        raise UserError(f"shard index lists {len(index['members'])} members for a count of {index['count']} "
                        f"and {len(index['shard_records'])} shard sizes for {len(index['shards'])} shards",
                        str(path), _rewrite_fold(path))
    # The listed shards are the dataset's store's, named relative to the index.
    index["paths"] = [os.path.normpath(path.parent / name) for name in index["shards"]]
    absent = [p for p in index["paths"] if not os.path.isfile(p)]
    if absent:
        raise UserError(f"{len(absent)} shard(s) listed in the index are missing, e.g. {absent[0]}", str(path),
                        rebuild_store(os.path.dirname(absent[0])))
    _check_against_store(index, path)
    if index["encoding"]["format"] not in FORMATS:
        raise UserError(f"unknown image format {index['encoding']['format']!r}", str(path),
                        f"rewrite the shards with one of {list(FORMATS)}")
    return index


def _rewrite_fold(index_path) -> str:
    """What to do about a broken index: delete its fold's indexes, which write_shards writes together."""
    return delete_and_rerun(Path(index_path).parent, folder=True, remakes="write_shards rewrites the fold's indexes")


def _rewrite_run(index_path: Path) -> str:
    """What to do about an index older than its store's last encoding: so are all the run's indexes
    (results/tfrecords/{run}/fold{k}/{split}.json)."""
    return delete_and_rerun(index_path.parent.parent, folder=True,
                            remakes="write_shards rewrites the run's indexes, which predate the store's last encoding")


def _check_against_store(index: dict, path: Path) -> None:
    """Refuse an index written over an earlier encoding of its store: a store re-encoded with other
    settings (jpeg_quality, stain fit) may keep its file names and sizes, and the index would then
    pass on a stale encoding (settings.json, predict_folder, export) and stale shard hashes (resume)."""
    store_path = Path(os.path.normpath(path.parent / index["store"]))
    store = read_store(store_path)
    by_name = {name: k for k, name in enumerate(store["shards"])}
    stale = []
    for shard_path, sha, records in zip(index["paths"], index["shard_sha256"], index["shard_records"]):
        k = by_name.get(os.path.basename(shard_path))
        if (k is None or os.path.dirname(shard_path) != str(store_path.parent) or store["shard_sha256"][k] != sha
                or store["shard_sizes"][k] != records):
            stale.append(os.path.basename(shard_path))
    if stale or store["encoding"] != index["encoding"]:
        what = (f"{len(stale)} listed shard(s) differ from the store's (sha256 or size), e.g. {stale[0]}"
                if stale else f"its encoding {index['encoding']} differs from the store's {store['encoding']}")
        raise UserError(f"shard index is stale: {what} ({store_path})", str(path), _rewrite_run(path))


def default_preprocess(image, height: int, width: int, seed=None):
    """Cast to float32 (0..255) and resize to (height, width); no cropping, no augmentation (``seed`` unused)."""
    import tensorflow as tf

    return tf.image.resize(tf.cast(image, tf.float32), [height, width])


# Each use of the run seed in the training stream has its own tag, so no two uses share a key.
_STREAM_TAGS = {"file_order": 1, "shuffle": 2, "augment": 3}


def stream_key(seed, use: str, counter):
    """The stateless key (int64 [2]) of one use of randomness in the training stream: ``use`` is
    "file_order" or "shuffle" (``counter``: the epoch) or "augment" (``counter``: the element's
    position in the stream); keys of different uses never coincide by construction of their tags."""
    import tensorflow as tf

    base = tf.constant([int(seed), _STREAM_TAGS[use]], tf.int64)
    return tf.random.experimental.stateless_fold_in(base, tf.cast(counter, tf.int64))


def _member_table(index: dict, where) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Each listed shard's first record number, and for every record of the listed shards (numbered
    through them in listed order) its label (-1: not a member), expected file name, copy id
    (deepbc.data.runs.COPIES; None when no member is a copy: every image as stored) and source: the
    number of the same stored record where its shard is first listed (a shard is listed once per
    copy id, so the copies of one image are records of the same source)."""
    offsets = [0]
    for n in index["shard_records"][:-1]:
        offsets.append(offsets[-1] + int(n))
    total = offsets[-1] + int(index["shard_records"][-1]) if offsets else 0
    labels = np.full(total, -1, np.int64)
    names = np.full(total, b"", object)
    copies = np.zeros(total, np.int64)
    sources = np.arange(total, dtype=np.int64)
    first_listed = {}
    for shard, path in enumerate(index["paths"]):
        first = first_listed.setdefault(path, shard)
        size = int(index["shard_records"][shard])
        sources[offsets[shard]:offsets[shard] + size] = np.arange(offsets[first], offsets[first] + size)
    for shard, position, filename, label, *copy in index["members"]:
        if not 0 <= position < index["shard_records"][shard]:
            raise UserError(f"member {filename} is record {position} of a shard of {index['shard_records'][shard]}",
                            str(where), _rewrite_fold(where))
        labels[offsets[shard] + position] = label
        names[offsets[shard] + position] = filename.encode()
        copies[offsets[shard] + position] = copy[0] if copy else 0
    return offsets, labels, names, (copies if any(len(m) > 4 for m in index["members"]) else None), sources


def as_copy(image, copy):
    """Copy ``copy`` of a decoded image (deepbc.data.runs.COPIES): mirrored left to right when
    copy >= 4, then turned copy % 4 quarter turns counter-clockwise."""
    import tensorflow as tf

    mirrored = tf.cond(copy >= 4, lambda: tf.image.flip_left_right(image), lambda: image)
    return tf.image.rot90(mirrored, tf.cast(copy % 4, tf.int32))


class _Members:
    """The split's members among the records of its listed shards, as constants of the pipeline
    (a lookup table would be a stateful resource, which one-shot iterators cannot capture)."""

    def __init__(self, index: dict, where):
        import tensorflow as tf

        offsets, labels, names, copies, sources = _member_table(index, where)
        self.where = where
        self.copies = None if copies is None else tf.constant(copies)
        self.paths = tf.constant(index["paths"])
        self.offsets = tf.constant(offsets, tf.int64)
        self.sizes = tf.constant(index["shard_records"], tf.int64)
        self.labels = tf.constant(labels)
        self.names = tf.constant(names.astype(bytes))
        self.cycle = min(len(index["paths"]), 8)
        # The stored records the members are copies of (themselves, without copies): what decoding
        # once decodes, each once, from the shards as first listed.
        members = labels >= 0
        self.sources = tf.constant(sources)
        needed = np.zeros(len(labels), bool)
        needed[sources[members]] = True
        source_names = np.full(len(labels), b"", object)
        source_names[sources[members]] = names[members]
        self.source_count = int(needed.sum())
        self.source_needed = tf.constant(needed)
        self.source_names = tf.constant(source_names.astype(bytes))
        self.first_listed = [i for i, path in enumerate(index["paths"]) if index["paths"].index(path) == i]

    def _interleaved(self, files, per_file, num_parallel_calls, deterministic: bool):
        import tensorflow as tf

        # tf.data refuses more parallel calls than the cycle length (e.g. 2 threads over 1 shard).
        calls = num_parallel_calls if num_parallel_calls == tf.data.AUTOTUNE else min(num_parallel_calls, self.cycle)
        return files.interleave(per_file, cycle_length=self.cycle, num_parallel_calls=calls, deterministic=deterministic)

    def records(self, files, num_parallel_calls, deterministic: bool, keep=None):
        """(record number, serialized record) of the members in ``files``, a dataset of (shard path,
        number of its first record, its number of records) in the order to read them; ``keep``
        (bool per record number): these records instead of the members."""
        import tensorflow as tf

        def numbered(path, base, size):
            def number(i, record):
                # A shard with more records than the index says would shift every later number.
                check = tf.debugging.assert_less(i, size, message=f"{STALE}: a shard has more records than "
                                                                  f"{self.where} lists")
                with tf.control_dependencies([check]):
                    return base + i, record

            return tf.data.TFRecordDataset(path).enumerate().map(number)

        records = self._interleaved(files, numbered, num_parallel_calls, deterministic)
        # Only the record number is looked at: non-members are skipped before being parsed.
        keep = self.labels >= 0 if keep is None else keep
        return records.filter(lambda number, record: tf.gather(keep, number))

    def numbers(self, files, num_parallel_calls, deterministic: bool):
        """The record numbers ``records`` would give for ``files``, in the same order, as 1-tuples,
        without reading the shards: interleaving and filtering depend on the record counts only."""
        import tensorflow as tf

        def numbered(path, base, size):
            return tf.data.Dataset.range(size).map(lambda i: base + i)

        numbers = self._interleaved(files, numbered, num_parallel_calls, deterministic)
        return numbers.filter(lambda number: tf.gather(self.labels, number) >= 0).map(lambda number: (number,))

    def in_order(self, num_parallel_calls, deterministic: bool):
        import tensorflow as tf

        files = tf.data.Dataset.from_tensor_slices((self.paths, self.offsets, self.sizes))
        return self.records(files, num_parallel_calls, deterministic)

    def sources_in_order(self, num_parallel_calls):
        """(record number, serialized record) of each source (``sources``) once, in index order,
        its file name checked against the index."""
        import tensorflow as tf

        first = self.first_listed
        files = tf.data.Dataset.from_tensor_slices((tf.gather(self.paths, first), tf.gather(self.offsets, first),
                                                    tf.gather(self.sizes, first)))

        def checked(number, record):
            name = parse_example(record)["image/filename"]
            check = tf.debugging.assert_equal(name, tf.gather(self.source_names, number),
                                              message=f"{STALE}: a store record is not the image {self.where} "
                                                      "lists there")
            with tf.control_dependencies([check]):
                return number, tf.identity(record)

        return self.records(files, num_parallel_calls, True, keep=self.source_needed).map(checked)

    def label(self, number, features):
        """The member's label, once its record's file name is checked against the index."""
        import tensorflow as tf

        # A store rebuilt after the index was written could otherwise pair records with wrong labels.
        check = tf.debugging.assert_equal(features["image/filename"], tf.gather(self.names, number),
                                          message=f"{STALE}: a store record is not the member {self.where} "
                                                  "lists there")
        with tf.control_dependencies([check]):
            return tf.gather(self.labels, number)

    def image(self, number, image):
        """The member's image: the decoded record, or its copy (the augment-then-split protocol's)."""
        import tensorflow as tf

        return image if self.copies is None else as_copy(image, tf.gather(self.copies, number))


def member_records(index_json_path):
    """The split's members as a dataset of (serialized record, label), in evaluation order."""
    members = _Members(read_index(index_json_path), index_json_path)
    return members.in_order(1, True).map(
        lambda number, record: (record, members.label(number, parse_example(record))))


def _min_side(preprocess_fn, image_size: int) -> int | None:
    """A preprocessing that says how large a source it needs lets JPEGs decode at a reduced scale."""
    needs = getattr(preprocess_fn, "min_source_side", None)
    return needs(image_size, image_size) if needs else None


class DecodedImages:
    """Every member of a training split decoded once per job, as ``make_dataset`` would decode it
    (at the reduced JPEG scale its preprocessing allows), kept by record number: in memory up to
    ``budget_bytes`` (None: no limit), the rest as files in ``spill_dir`` (local disk). The copies
    of an image (the augment-then-split protocol) share its one decoded source and are turned
    after. Everything random (crops, flips, rotations, colour) happens after it, in
    ``make_dataset``, so every epoch still draws new augmentations, from the same keys as without it.

    Run ``fill`` (a [bytes in memory, bytes on disk] tensor) once in the session before the
    training iterator's initializer: it reads and decodes every source in index order, checking
    each record against the index and that none is missing. The store is no variable: checkpoints do not hold it.
    """

    def __init__(self, index_json_path, preprocess_fn, image_size: int, budget_bytes: int | None, spill_dir,
                 num_parallel_calls=None, deterministic: bool = True):
        import tensorflow as tf

        self.index_json_path = index_json_path
        index = read_index(index_json_path)
        members = _Members(index, index_json_path)
        calls = tf.data.AUTOTUNE if num_parallel_calls is None else num_parallel_calls
        image_format = index["encoding"]["format"]
        min_side = _min_side(preprocess_fn, image_size)
        self.spill_dir = str(spill_dir)
        saveables = tf.compat.v1.get_collection_ref(tf.compat.v1.GraphKeys.SAVEABLE_OBJECTS)
        saved = list(saveables)
        self.table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.string, default_value="")
        saveables[:] = saved  # a table registers itself for checkpoints: the decoded images stay out of them
        budget = tf.constant(-1 if budget_bytes is None else int(budget_bytes), tf.int64)

        def decoded(number, record):
            data = tf.io.serialize_tensor(decode(parse_example(record), image_format, min_side))
            return number, data, tf.cast(tf.strings.length(data), tf.int64)

        def running_total(total, element):
            number, data, size = element
            total += size
            return total, (number, data, size, (budget < 0) | (total <= budget))

        def keep(number, data, size, in_memory):
            def to_memory():
                with tf.control_dependencies([self.table.insert(number[None], data[None])]):
                    return tf.stack([size, tf.constant(0, tf.int64)])

            def to_disk():
                with tf.control_dependencies([tf.io.write_file(self._spilled(number), data)]):
                    return tf.stack([tf.constant(0, tf.int64), size])

            return tf.cond(in_memory, to_memory, to_disk)

        # In index order, so the same images stay in memory whatever the parallelism.
        stream = members.sources_in_order(calls).map(decoded, num_parallel_calls=calls, deterministic=True)
        stream = stream.scan(tf.constant(0, tf.int64), running_total)
        stream = stream.map(keep, num_parallel_calls=calls, deterministic=deterministic)
        sizes = stream.reduce(tf.zeros([3], tf.int64), lambda total, sizes: total + tf.concat([sizes, [1]], 0))
        # A shard with fewer records than the index says would leave members without an image.
        check = tf.debugging.assert_equal(sizes[2], tf.constant(members.source_count, tf.int64),
                                          message=f"{STALE}: a shard has fewer records than {index_json_path} lists")
        with tf.control_dependencies([check]):
            self.fill = tf.identity(sizes[:2])
        self.sources = members.sources

    def _spilled(self, number):
        import tensorflow as tf

        return tf.strings.join([self.spill_dir, "/", tf.strings.as_string(number), ".tensor"])

    def image(self, number):
        """The decoded uint8 image of record ``number`` (after ``fill`` has run)."""
        import tensorflow as tf

        source = tf.gather(self.sources, number)  # the copies of an image share its decoded source
        data = self.table.lookup(source)
        data = tf.cond(tf.strings.length(data) > 0, lambda: data, lambda: tf.io.read_file(self._spilled(source)))
        image = tf.io.parse_tensor(data, tf.uint8)
        image.set_shape([None, None, 3])
        return image


def make_dataset(index_json_path, batch_size: int, is_training: bool, preprocess_fn=None, image_size: int = 224,
                 shuffle_buffer: int = 1024, seed: int = 0, num_parallel_calls=None,
                 repeat: bool = False, with_metadata: bool = False, first_record: int = 0,
                 deterministic: bool = True, decoded: DecodedImages | None = None):
    """A tf.data pipeline over the shards of one index JSON.

    Yields ``(images, labels)`` batches (float images from ``preprocess_fn(image_uint8, image_size,
    image_size[, seed])``, int64 labels), or ``(images, labels, metadata)`` with ``with_metadata``,
    where metadata is a dict of string tensors ``filename``, ``patient``, ``magnification`` (and the
    int64 ``copy`` for an index of image copies, whose images are turned by ``as_copy`` after decoding).

    Training: a stream of epochs (one, or endless with ``repeat``); in each, the shard order and
    the records (buffer ``shuffle_buffer``) are shuffled by seeds that depend only on (``seed``,
    epoch), and each image gets a stateless augmentation seed from (``seed``, its position in the
    stream), each use with its own key (:func:`stream_key`), so the stream is the same whatever the
    parallelism. ``first_record`` starts the stream that many records in (a resumed run passes the records its restored steps consumed);
    the skipped records are read but not decoded. The last partial batch is dropped.
    Only the split's members (the index's ``members``) are kept from the listed store shards, each
    with its label from the index; the stream counts members only.
    Evaluation: the listed shards in index order (interleaved), every member once per pass.
    ``deterministic=False`` lets parallel stages deliver out of order (faster, not reproducible).
    ``decoded`` (training only; a :class:`DecodedImages` of this index): images come from it, not
    from the shards, which are then not read at all; the stream (order, augmentation keys) is the
    same, and so are the batches. A dataset using it needs an initializable iterator.
    Works eagerly and in tf.compat.v1 graph mode (one-shot or initializable iterators).
    """
    import inspect

    import tensorflow as tf

    index = read_index(index_json_path)
    count = index["count"]
    if count == 0:
        raise UserError("the shard index lists no images", str(index_json_path), "remake the splits and shards")
    autotune = tf.data.AUTOTUNE
    calls = autotune if num_parallel_calls is None else num_parallel_calls
    preprocess = preprocess_fn or default_preprocess
    takes_seed = "seed" in inspect.signature(preprocess).parameters
    image_format = index["encoding"]["format"]
    min_side = _min_side(preprocess, image_size)
    members = _Members(index, index_json_path)
    paths = index["paths"]
    if decoded is not None and (not is_training or with_metadata or decoded.index_json_path != index_json_path):
        raise ValueError("decoded images serve the training stream of their own index, without metadata")

    if is_training:
        def epoch_records(epoch):
            order = tf.argsort(tf.random.stateless_uniform([len(paths)], stream_key(seed, "file_order", epoch)))
            files = tf.data.Dataset.from_tensor_slices((tf.gather(members.paths, order),
                                                        tf.gather(members.offsets, order),
                                                        tf.gather(members.sizes, order)))
            # Shuffle serialized records (or record numbers), not decoded images: a tenth of the memory
            # per buffered element.
            shuffle_seed = tf.random.stateless_uniform([], stream_key(seed, "shuffle", epoch), minval=None,
                                                       maxval=None, dtype=tf.int64)
            records = (members.numbers if decoded else members.records)(files, calls, deterministic)
            records = records.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
            return records.enumerate().map(
                lambda i, element: (stream_key(seed, "augment", epoch * count + i), *element))

        first_epoch, offset = divmod(int(first_record), count)
        last_epoch = 2**62 if repeat else first_epoch + 1
        records = tf.data.Dataset.range(first_epoch, last_epoch).flat_map(epoch_records).skip(offset)
    else:
        records = members.in_order(calls, deterministic)
        records = records.map(lambda number, record: (tf.zeros([2], tf.int64), number, record))
        if repeat:
            records = records.repeat()

    def preprocessed(image, element_seed):
        if takes_seed:
            return preprocess(image, image_size, image_size, seed=element_seed)
        return preprocess(image, image_size, image_size)

    def load(element_seed, number, serialized):
        features = parse_example(serialized)
        image = preprocessed(members.image(number, decode(features, image_format, min_side)), element_seed)
        label = members.label(number, features)
        if with_metadata:
            copy = {} if members.copies is None else {"copy": tf.gather(members.copies, number)}
            return image, label, {"filename": features["image/filename"], "patient": features["image/patient"],
                                  "magnification": features["image/magnification"], **copy}
        return image, label

    def load_decoded(element_seed, number):
        return preprocessed(members.image(number, decoded.image(number)), element_seed), tf.gather(members.labels, number)

    dataset = records.map(load_decoded if decoded else load, num_parallel_calls=calls, deterministic=deterministic)
    dataset = dataset.batch(batch_size, drop_remainder=is_training)
    return dataset.prefetch(autotune)


def find_corrupt_shards(index_paths) -> list[tuple[str, str]]:
    """(shard path, reader's message) of every shard of these indexes that does not read to the end,
    each shard once (the splits of a fold list the same store shards)."""
    import tensorflow as tf

    corrupt = []
    paths = dict.fromkeys(p for index_path in index_paths for p in read_index(index_path)["paths"])
    for path in paths:
        try:
            for _ in tf.compat.v1.io.tf_record_iterator(path):
                pass
        except tf.errors.DataLossError as err:
            corrupt.append((path, err.message))
    return corrupt


@contextlib.contextmanager
def naming_corrupt_shards(index_paths):
    """Turn TensorFlow's 'corrupted record at N', which names no file, into a UserError naming the
    shard and how to rebuild it; and the reader's own checks of an index against its shards (a
    record that is not the listed member, a shard with more records than listed), raised by
    TensorFlow as InvalidArgumentError, into a UserError naming the index and how to rewrite it."""
    try:
        yield
    except Exception as err:
        # Without TensorFlow imported, the error cannot be one of its own.
        tf = sys.modules.get("tensorflow")
        if tf is None or not isinstance(err, (tf.errors.DataLossError, tf.errors.InvalidArgumentError)):
            raise
        if isinstance(err, tf.errors.InvalidArgumentError):
            if STALE not in err.message:
                raise
            named = [p for p in map(str, index_paths) if p in err.message]
            index_path = Path(named[0] if named else list(index_paths)[0])
            detail = err.message.split(STALE, 1)[1].split("\n", 1)[0].lstrip(": ")
            # read_index found the index as its store.json says: the shard files are what changed.
            store_dir = os.path.dirname(os.path.normpath(index_path.parent / read_index(index_path)["store"]))
            raise UserError(f"{STALE}: {detail}", str(index_path), rebuild_store(store_dir)) from err
        corrupt = find_corrupt_shards(index_paths)
        if not corrupt:
            raise
        path, detail = corrupt[0]
        others = f" (and {len(corrupt) - 1} more shard(s) of this fold)" if len(corrupt) > 1 else ""
        raise UserError(f"corrupt shard: {detail}{others}", path, rebuild_store(Path(path).parent)) from err
