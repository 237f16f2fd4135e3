"""Config checks and lookups shared by the Snakefile and the scripts.

The JSON schema (config/schema.yaml) checks keys and types and, through Snakemake's validate, fills
in every default: the functions here take a validated config and repeat no default. This module
checks what a schema cannot express (a class a dataset does not have, a fold beyond k) and answers
the workflow's questions (which runs, which settings, which inputs and options a job gets), so that
the rules stay thin and the logic is tested.
"""

import copy
import functools
import hashlib
import json
import os

from deepbc.data import breakhis
from deepbc.data.runs import LEAKY, parse_run, run_name
from deepbc.jobs.errors import UserError, rebuild_store

# The values of the BreakHis manifest's label columns, from the parser that produces them.
BREAKHIS_LABELS = {
    "tissue": list(breakhis.TISSUES),
    "subtype": list(breakhis.SUBTYPES),
    "subtype_name": list(breakhis.SUBTYPE_NAMES.values()),
    "magnification": list(breakhis.MAGNIFICATIONS),
}


def check(config: dict) -> None:
    """Raise UserError on the first value the schema cannot catch, naming the key and what is allowed."""
    from deepbc.data import datasets as datasets_config

    datasets = datasets_config.resolve(config)
    shards = config.get("shards", {})
    if shards.get("stain_normalization", "none") != "none":
        from deepbc.shards import stain  # numpy: only when it is on, so the workflow starts as fast otherwise

        stain.check_setting(shards["stain_normalization"], shards.get("stain_reference"))
    defined = config["task_definitions"]
    unknown = [t for t in config["tasks"] if t not in defined]
    if unknown:
        raise UserError(f"unknown task(s) {unknown}", "config key tasks",
                        f"allowed values (task_definitions): {sorted(defined)}")
    _check_predefined_scope(config)
    for name in config["tasks"]:
        task = defined[name]
        where = f"config key task_definitions.{name}"
        if "__" in name:
            raise UserError(f"task name {name!r} contains '__', which is reserved for run names",
                            where, "rename the task")
        ds = task["dataset"]
        if ds not in datasets:
            raise UserError(f"task uses dataset {ds!r}, which is not configured under datasets",
                            f"{where}.dataset", f"add datasets.{ds} or use one of {sorted(datasets)}")
        _check_task_on(task, ds, datasets[ds], where, external=False)
        _check_split(config, name)
        if task.get("leaderboard"):
            from deepbc.results import leaderboard

            leaderboard.check_task(name, task, split_settings(config, name))
        test = task.get("test_dataset")
        if test is None:
            continue
        if test not in datasets:
            raise UserError(f"task tests on dataset {test!r}, which is not configured under datasets",
                            f"{where}.test_dataset", f"add datasets.{test} or use one of {sorted(datasets)}")
        if test == ds:
            raise UserError(f"test_dataset is the task's own dataset {ds!r}", f"{where}.test_dataset",
                            "name another dataset, or remove test_dataset for patient-wise k-fold testing")
        if list(task.get("protocols", ["patient"])) != ["patient"]:
            raise UserError("an external test runs under the patient protocol only (the leaky protocols "
                            f"{list(LEAKY)} measure leakage inside one dataset)", f"{where}.protocols",
                            "set protocols: [patient]")
        _check_task_on(task, test, datasets[test], f"{where} (test_dataset {test!r})", external=True)
    for name in datasets_config.used(config):
        datasets_config.root(datasets, name)
    # per_architecture's names are checked by the schema (the network registry's enum).
    typos = sorted(set(config["train"].get("per_task") or {}) - set(defined))
    if typos:
        raise UserError(f"train.per_task names task(s) {typos} that are not defined, so their settings would "
                        "never apply", "config key train.per_task",
                        f"name a task of task_definitions: {sorted(defined)}")
    # Here rather than uniqueItems in the schema: folds given on the command line are strings.
    listed = [] if config.get("folds", "all") == "all" else [int(f) for f in config["folds"]]
    repeated = sorted({f for f in listed if listed.count(f) > 1})
    if repeated:
        raise UserError(f"fold(s) {repeated} listed more than once", "config key folds",
                        "list each fold once, e.g. folds=[0,1]")
    for name in config["tasks"]:
        count, what = fold_count(config, name)
        for fold in [] if what == "predefined" else listed:
            if fold >= count:
                raise UserError(f"fold {fold} does not exist with {what}={count} (task {name!r})", "config key folds",
                                f"use fold indices 0..{count - 1}")


def _check_split(config: dict, name: str) -> None:
    """The task's split settings fit it: k >= 2 unless it tests on another dataset; a repeated holdout
    or a predefined split only on its own dataset, a predefined split only patient-wise, its file there."""
    task, split = config["task_definitions"][name], split_settings(config, name)
    own = "task_definitions.{name}.splits" if "splits" in task else "splits"
    external = task.get("test_dataset") is not None
    if split["predefined"]:
        if external or list(task.get("protocols", ["patient"])) != ["patient"]:
            raise UserError(f"task {name!r} has a predefined split (config key {own.format(name=name)}.predefined) "
                            "and " + ("a test_dataset" if external else f"a leaky protocol {list(LEAKY)}") + ": a predefined "
                            "split is patient-wise, tested on its own dataset", f"config key task_definitions.{name}",
                            "remove its test_dataset and set protocols: [patient], or give it no predefined split")
        if not os.path.isfile(split["predefined"]):
            raise UserError(f"the predefined split file of task {name!r} does not exist", split["predefined"],
                            f"set config key {own.format(name=name)}.predefined to an existing CSV (key,split; a path "
                            "relative to the working directory)")
    elif split["scheme"] == "repeated_holdout":
        if external:
            raise UserError(f"task {name!r} tests on another dataset (test_dataset), which has no patients to hold "
                            "out", f"config key {own.format(name=name)}.scheme",
                            "use scheme kfold for it (its k folds train and validate; every fold tests on the "
                            "test_dataset)")
    elif split["k"] < 2 and not external:
        raise UserError(f"splits.k={split['k']} leaves no test patients for task {name!r}, which has no "
                        "test_dataset", f"config key {own.format(name=name)}.k",
                        f"set k to 2 or more, or give task {name!r} an external test_dataset")


def _check_predefined_scope(config: dict) -> None:
    """splits.predefined (for every task) names keys of one dataset: the tasks must all be on it."""
    if not config["splits"]["predefined"]:
        return
    own = {t for t in config["tasks"] if "predefined" in (config["task_definitions"][t].get("splits") or {})}
    datasets = sorted({config["task_definitions"][t]["dataset"] for t in config["tasks"] if t not in own})
    if len(datasets) > 1:
        raise UserError(f"splits.predefined applies to every task, but the tasks are on datasets {datasets}: its "
                        "keys name images of one dataset", "config key splits.predefined",
                        "move predefined (and predefined_key) under task_definitions.<task>.splits of the tasks "
                        "on the dataset it lists")


def check_layering(config: dict, configfiles, demo_config) -> None:
    """Refuse a study (demo: false) built on the demo's config file.

    ``configfiles`` are the files given with --configfile (Snakemake reads ``demo_config``,
    config/config.yaml, only when there are none). The demo's small-data settings (64 px, 60 steps,
    one fold) must never train on real data: a study comes from a config file of its own.
    """
    demo_file_read = not configfiles or any(os.path.exists(f) and os.path.samefile(f, demo_config)
                                            for f in configfiles)
    if demo_file_read and not config.get("demo"):
        raise UserError("demo: false on the demo's config (config/config.yaml): its small-data settings "
                        "(64 px inputs, 60 steps, one fold of three, a small network from scratch) would "
                        "train on your data", "config key demo",
                        "give a study config with --configfile, e.g. snakemake --cores 8 --resources gpu=1 "
                        "--configfile config/paper.yaml --config breakhis_dir=/data/BreaKHis_v1 tma_dir=/data/tma "
                        "(or a copy of config/paper.yaml edited for your data; config/README.md)")


def _check_task_on(task: dict, name: str, spec: dict, where: str, external: bool) -> None:
    """The task's label, classes, filter and magnification exist in dataset ``name``.

    On an external test dataset the classes may be a subset of the task's: each of the dataset's
    classes must be one of the task's, and a filter must be on columns the dataset has.
    """
    if spec["kind"] == "breakhis":
        _check_breakhis_task(task, where)
        return
    if task["label"] != "label":
        raise UserError(f"folder dataset {name!r} has one label column, 'label', not {task['label']!r}",
                        f"{where}.label", "set label: label, or use a dataset of the same kind")
    allowed = spec.get("classes")
    if external:
        _check_values(allowed, task["classes"], f"config key datasets.{name}.classes")
        if task.get("filter"):
            raise UserError(f"folder dataset {name!r} has no columns to filter on", f"{where}.filter",
                            "remove the filter or test on a dataset of the task's kind")
    elif allowed:
        _check_values(task["classes"], allowed, f"{where}.classes")
    if task.get("magnification", "all") != "all":
        raise UserError(f"folder dataset {name!r} has no magnification", f"{where}.magnification",
                        "set magnification: all")


def _check_breakhis_task(task: dict, where: str) -> None:
    label = task["label"]
    if label not in BREAKHIS_LABELS:
        raise UserError(f"BreakHis has no label column {label!r}", f"{where}.label",
                        f"use one of {sorted(BREAKHIS_LABELS)}")
    _check_values(task["classes"], BREAKHIS_LABELS[label], f"{where}.classes")
    for column, values in (task.get("filter") or {}).items():
        if column not in BREAKHIS_LABELS:
            raise UserError(f"BreakHis has no column {column!r} to filter on", f"{where}.filter",
                            f"filter on one of {sorted(BREAKHIS_LABELS)}")
        _check_values(values if isinstance(values, list) else [values], BREAKHIS_LABELS[column],
                      f"{where}.filter.{column}")


def _check_values(values, allowed, where: str) -> None:
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise UserError(f"unknown value(s) {unknown}", where, f"allowed values: {list(allowed)}")


def runs(config: dict) -> list[str]:
    return [run_name(task, protocol)
            for task, spec in selected_tasks(config).items()
            for protocol in spec["protocols"]]


def selected_tasks(config: dict) -> dict:
    """The definitions of the tasks to run, in the order config["tasks"] lists them."""
    return {name: config["task_definitions"][name] for name in config["tasks"]}


def partial_folds_warning(config: dict) -> str | None:
    """A warning when a study (not the demo) runs only some of its folds."""
    if config.get("demo"):
        return None
    partial: dict = {}
    for task in config["tasks"]:
        run, (count, what) = folds(config, task), fold_count(config, task)
        if len(run) < count:
            partial.setdefault(f"fold(s) {run} of splits.{what}={count}", []).append(task)
    if not partial:
        return None
    listed = "; ".join(f"{folds_run} (tasks {', '.join(tasks)})" for folds_run, tasks in partial.items())
    return (f"training and testing only {listed} (config key folds): every table averages over these folds "
            "only; set folds: all to run every fold")


def split_settings(config: dict, task: str) -> dict:
    """The task's split settings: the splits section, with task_definitions.<task>.splits over it."""
    return {**config["splits"], **(config["task_definitions"][task].get("splits") or {})}


def fold_count(config: dict, task: str) -> tuple[int, str]:
    """(how many folds the task's split has, the key that says so): k folds, a repeated holdout's
    repeats, or the one fold of a predefined split."""
    split = split_settings(config, task)
    if split["predefined"]:
        return 1, "predefined"
    if split["scheme"] == "repeated_holdout":
        return split["repeats"], "repeats"
    return split["k"], "k"


def folds(config: dict, task: str) -> list[int]:
    """The task's folds to run (a repeat of a repeated holdout is a fold): config key folds, or all of
    them; a predefined split's one fold 0 whatever folds says. Values given on the command line
    arrive as strings."""
    count, what = fold_count(config, task)
    listed = config.get("folds", "all")
    if listed == "all" or what == "predefined":
        return list(range(count))
    return [int(f) for f in listed]


def train_settings(config: dict, task: str, arch: str) -> dict:
    """Training settings for one task and architecture: defaults < per_architecture < per_task.

    An absent image_size is the network's own (224 px for ResNet V1, 299 for Inception V3...),
    written out so that the job's settings, settings.json and a dry run's command say it.
    """
    from deepbc.training.nets import NETWORKS  # the registry imports no TensorFlow

    train = config["train"]
    settings = copy.deepcopy(train["defaults"])
    for layer in (train["per_architecture"].get(arch), train["per_task"].get(task)):
        for key, value in (layer or {}).items():
            if isinstance(value, dict):
                settings[key] = {**settings.get(key, {}), **value}
            else:
                settings[key] = value
    settings.setdefault("image_size", NETWORKS[arch].default_image_size)
    return settings


def has_both_protocols(config: dict) -> bool:
    """Whether some selected task runs patient-wise and under a leaky protocol (then the leakage
    table is made)."""
    return any("patient" in spec["protocols"] and set(spec["protocols"]) & set(LEAKY)
               for spec in selected_tasks(config).values())


def run_train_settings(config: dict, run: str, arch: str) -> dict:
    """A run's training settings: its task's (``train_settings``), except that an augment-then-split
    run does not rotate or flip on the fly. Its images are the rotations and mirror images; drawn
    again in training, each training copy would come in all 8 orientations, the very pixels of its
    image's test copies among them: a larger leak than the preprint's, and no longer copies fixed
    before the split. Its other augmentations (random crops, colour, HED) stay the run's."""
    task, protocol = parse_run(run)
    settings = train_settings(config, task, arch)
    if protocol == "augmented_image":
        settings["augment"] = {**settings["augment"], "rotate": False, "flip": False}
    return settings


def train_settings_json(config: dict, run: str, arch: str) -> str:
    """The training settings of a run's model as the one JSON argument of train_model.py."""
    return json.dumps(run_train_settings(config, run, arch), sort_keys=True)


def checkpoint_record(config: dict, run: str, arch: str) -> str | None:
    """The ImageNet checkpoint record a model trains from, or None for a model trained from scratch."""
    if run_train_settings(config, run, arch)["init"] == "imagenet":
        return f"results/checkpoints/{arch}.json"
    return None


def model_fingerprint(config: dict, run: str, arch: str) -> str:
    """A short hash of what the train rule trains a run's models with, as known when the DAG is
    built: the training settings, architecture, seed and ImageNet checkpoint record (the train
    job's params and checkpoint input). A param of every rule that reads a model's files.

    When a model is missing, Snakemake remakes it only for a job that must run: a trainer killed
    after a config change leaves no model (its outputs are deleted), while the evaluation and
    metrics of the old model are up to date by their files and params. With this param, the
    readers' params change with the training settings, so they rerun, and the model is trained
    first, for any target that reads the model or what is made from it.
    """
    inputs = {"settings": run_train_settings(config, run, arch), "arch": arch, "seed": config["seed"],
              "checkpoint": checkpoint_record(config, run, arch)}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def _listed_shards(store_path: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    """The shards a store.json lists. Snakemake asks for each store many times while it builds the
    DAG, and a store.json (with a record per image) takes milliseconds to parse: parsed once per
    version of the file (``mtime_ns``, ``size``)."""
    with open(store_path, encoding="utf-8") as fh:
        return tuple(json.load(fh).get("shards", []))


def check_store_shards(store_path) -> None:
    """Raise UserError if a dataset's store.json exists but a shard it lists does not.

    Nothing rebuilds such a store by itself (its store.json is up to date) and every job reading
    it would fail: the input functions of the jobs that read a store call this, so that
    ``snakemake -n`` reports it. A missing store.json is Snakemake's to remake (encode_dataset runs
    again, then write_shards rewrites the indexes listing the store: the store is an input of every
    job that reads it); an unreadable one is left to the job, which names what is wrong with it.
    """
    try:
        stat = os.stat(store_path)
        listed = _listed_shards(os.fspath(store_path), stat.st_mtime_ns, stat.st_size)
    except (OSError, ValueError, AttributeError):
        return
    folder = os.path.dirname(store_path)
    missing = [os.path.join(folder, name) for name in listed if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise UserError(f"{len(missing)} shard(s) listed in this encoded store are missing, e.g. {missing[0]}",
                        str(store_path), rebuild_store(folder))


def default_rate_limit(limit) -> bool:
    """Whether Snakemake's --max-jobs-per-timespan is its default, 100 jobs per second (the Snakefile
    drops it from local runs), not a rate the user gave."""
    return limit is not None and (limit.max_jobs, limit.timespan) == (100, 1)
