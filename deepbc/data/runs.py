"""Run, split and model names, and the protocols' names. A run is a task under one protocol; every
fold of a run has the splits ``SPLITS``; each fold's model can be trained several times (repeats).
Dependency-free, so that the Snakefile, the config checks, the splits, the shards and the result
modules share it without importing each other.

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


# A model is (run, architecture, fold, repeat): train.repeats trains each fold's model that many
# times with different seeds, on the same split. Repeat 0 is named by its fold alone ("3"), as
# before repeats existed, so a study adds repeats without renaming or retraining its models;
# repeat r > 0 is "3_r{r}". The workflow's {fold} wildcard holds this model fold (its folder
# results/models/{run}/{arch}/fold3_r1, its predictions .../fold3_r1.parquet); a pooled file of
# repeat r is pooled_r{r}.json.
MODEL_FOLD = r"\d+(?:_r[1-9][0-9]*)?"
REPEAT_SUFFIX = r"(?:_r[1-9][0-9]*)?"


def repeat_suffix(repeat: int) -> str:
    """"" for repeat 0, "_r{repeat}" for the others."""
    return f"_r{int(repeat)}" if int(repeat) else ""


def model_fold(fold, repeat: int = 0) -> str:
    """The name of a fold's repeat: "3" for repeat 0, "3_r2" for repeat 2."""
    return f"{int(fold)}{repeat_suffix(repeat)}"


def parse_model_fold(name) -> tuple[int, int]:
    """(fold, repeat) of a model fold's name ("3" or "3_r2"); ValueError for anything else."""
    fold, suffix, repeat = str(name).partition("_r")
    if not _digits(fold) or (suffix and not (_digits(repeat) and repeat[0] != "0")):
        raise ValueError(f"not a fold (k) or a fold's repeat (k_r<r>, r >= 1): {name!r}")
    return int(fold), int(repeat or 0)


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def parse_repeat_suffix(suffix: str) -> int:
    """The repeat of a suffix ("" or "_r{r}")."""
    return parse_model_fold(f"0{suffix}")[1]


def model_label(name) -> str:
    """"fold 3" or "fold 3, repeat 2", for titles and messages."""
    fold, repeat = parse_model_fold(name)
    return f"fold {fold}" + (f", repeat {repeat}" if repeat else "")
