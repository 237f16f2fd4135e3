"""Named datasets from config: each entry's root, kind, classes, patients CSV and demo input.

``datasets: {<name>: {kind, root, classes, patients_csv, url, ...}}`` lists any number of datasets.
The top-level ``breakhis_dir``, ``tma_dir`` and ``tma_patients_csv`` are shortcuts that fill
``root`` / ``patients_csv`` of the entries named ``breakhis`` and ``tma``: the names the preprint
used, written here once so that no rule needs them. ``resolve`` is called once by the Snakefile
after schema validation; the rules then ask this module what a dataset needs.
"""

from __future__ import annotations

import copy
import os
import shlex

from deepbc.jobs.errors import UserError

# Shortcut config key -> (dataset name, dataset key it fills).
SHORTCUTS = {
    "breakhis_dir": ("breakhis", "root"),
    "tma_dir": ("tma", "root"),
    "tma_patients_csv": ("tma", "patients_csv"),
}
# The demo datasets, by name: the make_demo rule writes each into results/demo/{name}/, its root in
# the folder named here. A dataset whose root lies inside one needs that demo in demo mode.
DEMO_ROOT_FOLDERS = {"breakhis": "BreaKHis_v1", "tma": "images"}
DEMO_OUTPUTS = tuple(f"results/demo/{name}" for name in DEMO_ROOT_FOLDERS)


def resolve(config: dict) -> dict:
    """The ``datasets`` mapping with shortcuts applied and each entry checked; the config is not changed.

    A shortcut fills its key when the entry leaves it empty; when both are given they must agree
    (UserError otherwise, naming both keys). A shortcut for a dataset not listed is ignored.
    """
    datasets = copy.deepcopy(config.get("datasets") or {})
    for shortcut, (name, key) in SHORTCUTS.items():
        value = config.get(shortcut) or ""
        if not value or name not in datasets:
            continue
        own = datasets[name].get(key) or ""
        if own and own != value:
            raise UserError(f"{shortcut}={value!r} contradicts datasets.{name}.{key}={own!r}",
                            f"config keys {shortcut} and datasets.{name}.{key}",
                            "set only one of them, or give both the same value")
        datasets[name][key] = value
    for name, spec in datasets.items():
        where = f"config key datasets.{name}"
        if spec["kind"] == "folder":
            if not spec.get("classes"):
                raise UserError("a folder dataset needs its class folder names", f"{where}.classes",
                                "list them, e.g. classes: [benign, malignant]")
        else:
            extra = [k for k in ("classes", "patients_csv") if spec.get(k)]
            if extra:
                raise UserError(f"a {spec['kind']} dataset takes no {extra} (its layout gives classes and "
                                "patients)", f"{where}.{extra[0]}", f"remove {extra[0]} or set kind: folder")
    return datasets


def used(config: dict) -> list[str]:
    """The datasets the selected tasks train or test on, sorted."""
    names = set()
    for task in config["tasks"]:
        spec = config["task_definitions"].get(task, {})
        names.update(n for n in (spec.get("dataset"), spec.get("test_dataset")) if n)
    return sorted(names)


def root(datasets: dict, name: str) -> str:
    """A dataset's root folder; UserError if it has none."""
    value = datasets[name].get("root") or ""
    if not value:
        shortcut = [s for s, (n, _) in SHORTCUTS.items() if n == name and s.endswith("_dir")]
        raise UserError(f"dataset {name!r} has no root folder", f"config key datasets.{name}.root",
                        f"set datasets.{name}.root" + (f" (or {shortcut[0]})" if shortcut else "")
                        + " to the folder holding its images")
    return value


def demo_input(config: dict, datasets: dict, name: str) -> list[str]:
    """The make_demo output a dataset's root lies in, in demo mode; otherwise the root is user data."""
    if not config.get("demo"):
        return []
    path = os.path.normpath(root(datasets, name))
    return [out for out in DEMO_OUTPUTS if path == out or path.startswith(out + os.sep)]


def options(datasets: dict, name: str) -> str:
    """Command-line options of check_dataset.py for one dataset, each value shell-quoted."""
    spec = datasets[name]
    args = ["--kind", spec["kind"]]
    if spec["kind"] == "folder":
        args += ["--classes", *spec["classes"]]
        if spec.get("patients_csv"):
            args += ["--patients-csv", spec["patients_csv"]]
    if spec.get("url"):
        args += ["--url", spec["url"], "--sha256", spec["sha256"], "--download-dir", "downloads",
                 "--max-extracted-gb", str(spec["max_extracted_gb"]),
                 "--max-compression-ratio", str(spec["max_compression_ratio"])]
        if spec.get("allow_download"):
            args.append("--allow-download")
    return " ".join(shlex.quote(a) for a in args)
