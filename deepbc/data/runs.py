"""Run and split names, and the protocols' names. A run is a task under one protocol; every fold of
a run has the splits ``SPLITS``. Dependency-free, so that the Snakefile, the config checks, the
splits, the shards and the result modules share it without importing each other.

Protocols (``task_definitions.<task>.protocols``; docs/methods.md):

- ``patient``: patient-wise splits (the honest one); the run is the task's name.
- ``image``: the original images split at random, augmented on the fly in training; run
  ``{task}__image_level``. Patients sit on both sides, but no copy of a test image is trained on.
- ``augmented_image``: augment, then split (the preprint's leak): each original image becomes the
  ``COPIES`` of the square's symmetry group, separate images, and the copies are split at random,
  so other copies of a test image sit in training; run ``{task}__augmented_image_level``.
"""

SPLITS = ("train", "val", "test")
IMAGE_LEVEL_SUFFIX = "__image_level"
AUGMENTED_SUFFIX = "__augmented_image_level"
PROTOCOLS = ("patient", "image", "augmented_image")
# The protocols that put one patient's images on both sides of a split, by design.
LEAKY = ("image", "augmented_image")
# How every table, figure and log names a protocol.
PROTOCOL_LABELS = {"patient": "patient-wise",
                   "image": "image-level (originals split at random)",
                   "augmented_image": "augment-then-split (the preprint's leak)"}
# The augment-then-split protocol's copies of an image, by copy id t: mirrored left to right when
# t >= 4, then turned t % 4 quarter turns counter-clockwise (numpy's rot90, TensorFlow's
# tf.image.rot90): the 8 symmetries of the square, the identity (the original) first.
COPIES = ("original", "rot90", "rot180", "rot270", "mirror", "mirror_rot90", "mirror_rot180", "mirror_rot270")
# The splits' and predictions' column holding a row's copy id (absent: the image as stored).
COPY = "copy"
_SUFFIXES = {"image": IMAGE_LEVEL_SUFFIX, "augmented_image": AUGMENTED_SUFFIX}


def run_name(task: str, protocol: str) -> str:
    """The leaky protocols' runs are named as such; the patient-wise run is the task's name."""
    return task if protocol == "patient" else f"{task}{_SUFFIXES[protocol]}"


def parse_run(run: str) -> tuple[str, str]:
    """(task, protocol) of a run name."""
    for protocol, suffix in _SUFFIXES.items():
        if run.endswith(suffix):
            return run[: -len(suffix)], protocol
    return run, "patient"
