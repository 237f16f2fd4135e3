"""Run and split names. A run is a task under one protocol; every fold of a run has the splits
``SPLITS``. Dependency-free, so that the Snakefile, the config checks, the splits, the shards and the
result modules share it without importing each other."""

SPLITS = ("train", "val", "test")
IMAGE_LEVEL_SUFFIX = "__image_level"


def run_name(task: str, protocol: str) -> str:
    """The leaky image-level protocol is named as such; the patient-wise run is the task's name."""
    return task if protocol == "patient" else f"{task}{IMAGE_LEVEL_SUFFIX}"


def parse_run(run: str) -> tuple[str, str]:
    """(task, protocol) of a run name."""
    if run.endswith(IMAGE_LEVEL_SUFFIX):
        return run[: -len(IMAGE_LEVEL_SUFFIX)], "image"
    return run, "patient"
