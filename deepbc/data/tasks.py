"""Task definitions from config: which images of a manifest, under which label, in which class order.

A task (config key ``tasks.<name>``) names a dataset, a label column, the classes (their order
defines ``label_index``), an optional filter (column -> value or list of values), a magnification
(``all`` or one of ``40X``..``400X``) and the protocols it runs under. ``select`` turns a manifest
into the labelled table that ``deepbc.data.splits`` splits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pandas as pd

from deepbc.data.runs import PROTOCOLS
from deepbc.jobs.errors import UserError

LOG = logging.getLogger(__name__)

MAGNIFICATIONS = ("all", "40X", "100X", "200X", "400X")
__all__ = ["Task", "select", "MAGNIFICATIONS", "PROTOCOLS"]


@dataclass(frozen=True)
class Task:
    name: str
    dataset: str
    label: str
    classes: tuple[str, ...]
    filter: dict = field(default_factory=dict)
    magnification: str = "all"
    protocols: tuple[str, ...] = ("patient",)
    # External validation: the dataset tested on, instead of held-out patients of ``dataset``.
    test_dataset: str | None = None

    @classmethod
    def from_config(cls, name: str, spec: dict) -> "Task":
        """Build a task from its config mapping, refusing unknown keys and values with the key path."""
        where = f"config key tasks.{name}"
        # splits: the task's split settings, which the splits take separately (deepbc.data.splits.SplitSettings).
        known = {"dataset", "label", "classes", "filter", "magnification", "protocols", "test_dataset", "splits"}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise UserError(f"unknown task key(s) {unknown}", where, f"use only {sorted(known)}")
        for key in ("dataset", "label", "classes"):
            if key not in spec:
                raise UserError(f"task has no {key!r}", where, f"add {key}: to the task")
        classes = tuple(str(c) for c in spec["classes"])
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise UserError(f"classes must be at least two distinct names, got {list(classes)}",
                            f"{where}.classes", "list each class once")
        magnification = str(spec.get("magnification", "all"))
        if magnification not in MAGNIFICATIONS:
            raise UserError(f"unknown magnification {magnification!r}", f"{where}.magnification",
                            f"use one of {list(MAGNIFICATIONS)}")
        protocols = tuple(spec.get("protocols", ["patient"]))
        bad = [p for p in protocols if p not in PROTOCOLS]
        if bad or not protocols:
            raise UserError(f"unknown protocol(s) {bad or protocols}", f"{where}.protocols",
                            f"use one or more of {list(PROTOCOLS)}")
        filt = spec.get("filter") or {}
        if not isinstance(filt, dict):
            raise UserError(f"filter must map a column to a value or a list of values, got {filt!r}",
                            f"{where}.filter", "write e.g. filter: {tissue: benign}")
        return cls(name=name, dataset=str(spec["dataset"]), label=str(spec["label"]), classes=classes,
                   filter={str(k): v for k, v in filt.items()}, magnification=magnification,
                   protocols=protocols,
                   test_dataset=None if spec.get("test_dataset") is None else str(spec["test_dataset"]))


def select(manifest: pd.DataFrame, task: Task, exclude_label_conflicts: bool = True,
           dataset: str | None = None) -> pd.DataFrame:
    """The task's images: the manifest rows after filter and magnification, with ``label`` and ``label_index``.

    Raises UserError if a remaining row's label is not one of the task's classes (listing the
    unexpected labels, their counts and an example path each), or if a class has no image.
    Rows flagged ``label_conflict`` (the same bytes under two labels) are dropped unless
    ``exclude_label_conflicts`` is false. The result is sorted by ``path``.
    ``dataset``: the task's external test dataset the manifest is of (default the task's own); its
    classes may be a subset of the task's, so there an empty class is only logged.
    """
    external = dataset is not None and dataset != task.dataset
    dataset = dataset or task.dataset
    where = f"task {task.name!r} on dataset {dataset!r}"
    needed = {"path", task.label, *task.filter}
    if task.magnification != "all":
        needed.add("magnification")
    if exclude_label_conflicts:
        needed.add("label_conflict")
    missing = sorted(needed - set(manifest.columns))
    if missing:
        raise UserError(f"the manifest has no column(s) {missing}", where,
                        f"use a manifest of dataset {dataset!r} (its columns are {list(manifest.columns)}) "
                        "or fix the task's label/filter")

    df = manifest
    for column, values in task.filter.items():
        allowed = [str(v) for v in (values if isinstance(values, list) else [values])]
        df = df[df[column].astype(str).isin(allowed)]
        LOG.info("%s: filter %s in %s keeps %d images", task.name, column, allowed, len(df))
    if task.magnification != "all":
        df = df[df["magnification"].astype(str) == task.magnification]
        LOG.info("%s: magnification %s keeps %d images", task.name, task.magnification, len(df))

    if exclude_label_conflicts:
        conflict = df["label_conflict"].astype(bool)
        if conflict.any():
            dropped = df[conflict]
            detail = dropped.groupby(task.label).size().to_dict()
            slides = sorted(dropped["slide"].astype(str).unique()) if "slide" in dropped else []
            LOG.warning("%s: excluded %d label-conflict images (the same bytes under two labels) by %s: %s%s",
                        task.name, len(dropped), task.label, detail,
                        f"; slides {slides}" if slides else "")
            df = df[~conflict]
        else:
            LOG.info("%s: no label-conflict images", task.name)

    labels = df[task.label].astype(str)
    unexpected = ~labels.isin(task.classes)
    if unexpected.any():
        bad = df[unexpected].assign(_label=labels[unexpected]).groupby("_label")
        listing = "; ".join(f"{lab!r}: {len(g)} image(s), e.g. {g['path'].iloc[0]}" for lab, g in bad)
        raise UserError(f"images whose {task.label!r} is not one of the task's classes {list(task.classes)}: "
                        f"{listing}", where,
                        "add the label(s) to the task's classes or narrow the task's filter to leave them out")
    counts = labels.value_counts()
    empty = [c for c in task.classes if counts.get(c, 0) == 0]
    if empty and external and len(empty) < len(task.classes):
        LOG.warning("%s: the external test dataset %r has no image of class(es) %s", task.name, dataset, empty)
    elif empty:
        raise UserError(f"class(es) {empty} have no images after filter {task.filter or 'none'} and "
                        f"magnification {task.magnification}", where,
                        "check the dataset (did check_dataset reject them? see its rejects CSV) "
                        "or remove the class(es) from the task")

    index = {c: i for i, c in enumerate(task.classes)}
    out = df.assign(label=labels, label_index=labels.map(index).astype("int64"))
    out = out.sort_values("path", kind="stable").reset_index(drop=True)
    LOG.info("%s: %d images, per class %s", task.name, len(out),
             {c: int(counts.get(c, 0)) for c in task.classes})
    return out
