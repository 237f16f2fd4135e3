"""Datasets laid out as one subfolder per class (the TMA dataset), with an optional patient CSV.

Layout: ``<root>/<class>/**/<image>`` (PNG, JPEG or TIFF; nested folders inside a class folder are
allowed). The optional CSV has columns ``path`` (relative to the root, POSIX) and ``patient``.
Without it every image is its own patient group, which a patient-wise split cannot make safe if
several images come from one patient; the manifest says so in ``patient_source``.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

import pandas as pd

from deepbc.data.breakhis import UnparsableName
from deepbc.jobs.errors import UserError

LOG = logging.getLogger(__name__)


def _obtain_hint(dataset: str, classes: list[str]) -> str:
    return (f"put the {dataset} images in one subfolder per class ({', '.join(c + '/' for c in classes)}) under "
            f"this folder, as PNG, JPEG or TIFF; obtain them from the dataset's provider, or set "
            f"datasets.{dataset}.url, sha256 and allow_download: true, or run with demo: true for the synthetic "
            f"demo dataset")


def validate_classes(classes) -> list[str]:
    classes = list(classes or [])
    if not classes:
        raise UserError("a folder dataset needs its class names", where="datasets.<name>.classes (--classes)",
                        fix="list the class folder names, e.g. classes: [breast, bladder, lung, lymphoma]")
    bad = [c for c in classes if not c or "/" in c or "\\" in c or c in (".", "..")]
    if bad:
        raise UserError(f"class names must be plain folder names, got {bad}", where="--classes",
                        fix="use the names of the class subfolders")
    dupes = sorted({c for c in classes if classes.count(c) > 1})
    if dupes:
        raise UserError(f"class names listed twice: {dupes}", where="--classes", fix="list each class once")
    return classes


def resolve_root(path: str | Path, classes, dataset: str = "folder dataset") -> Path:
    """Check that ``path`` holds a folder per class; return it."""
    classes = validate_classes(classes)
    root = Path(path)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise UserError(f"the {dataset} root {what}", where=str(root), fix=_obtain_hint(dataset, classes))
    if not any(root.iterdir()):
        raise UserError(f"the {dataset} root is empty", where=str(root), fix=_obtain_hint(dataset, classes))
    missing = [c for c in classes if not (root / c).is_dir()]
    if missing:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise UserError(f"class folder(s) missing from the {dataset} root: {', '.join(missing)} "
                        f"(folders found: {', '.join(found) or 'none'})",
                        where=str(root), fix=_obtain_hint(dataset, classes) +
                        "; or change the classes in the config to match the folders")
    return root


def label_of(relpath: str, classes) -> str:
    """The class of an image from its path relative to the root (its top-level folder)."""
    parts = PurePosixPath(relpath).parts
    if len(parts) < 2:
        raise UnparsableName(relpath, f"not inside a class folder; expected <class>/<image> with class one of "
                                      f"{', '.join(classes)}")
    if parts[0] not in classes:
        raise UnparsableName(relpath, f"in folder {parts[0]!r}, which is not one of the classes "
                                      f"{', '.join(classes)}")
    return parts[0]


def _normalise(relpath: str) -> str | None:
    """POSIX form of a CSV path relative to the root, or None if it is absolute or leaves the root."""
    p = PurePosixPath(relpath.strip().replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        return None
    return p.as_posix()  # drops "./" prefixes and doubled slashes


def read_patients_csv(csv_path: str | Path) -> dict[str, str]:
    """Map image path (relative to the root, POSIX) -> patient id, from a CSV with columns path, patient."""
    csv_path = Path(csv_path)
    fix = "give a CSV with columns path (relative to the dataset root) and patient, one row per image"
    if not csv_path.is_file():
        raise UserError("the patients CSV does not exist", where=str(csv_path),
                        fix=fix + ", or leave the dataset's patients_csv (tma_patients_csv for tma) empty to "
                        "treat every image as its own patient")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"the patients CSV cannot be read: {err}", where=str(csv_path), fix=fix) from err
    missing = [c for c in ("path", "patient") if c not in df.columns]
    if missing:
        raise UserError(f"the patients CSV lacks column(s) {missing} (columns: {list(df.columns)})",
                        where=str(csv_path), fix=fix)
    line = df.index + 2  # 1-based, after the header line
    paths = df["path"].map(_normalise)
    patients = df["patient"].str.strip()
    problems = []
    for what, mask in (("path is empty, absolute or leaves the root", paths.isna()),
                       ("patient is empty", patients == ""),
                       ("path listed more than once", paths.notna() & paths.duplicated(keep=False))):
        if mask.any():
            shown = ", ".join(f"line {n}" for n in line[mask][:10]) + (", ..." if mask.sum() > 10 else "")
            problems.append(f"{mask.sum()} row(s) where the {what} ({shown})")
    if problems:
        raise UserError("the patients CSV is invalid: " + "; ".join(problems), where=str(csv_path), fix=fix)
    return dict(zip(paths, patients))
