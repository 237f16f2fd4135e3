"""Scan a dataset root, verify every file, and split them into a manifest and rejects.

Every file under the scanned folder (hidden ones too) ends in exactly one of the two tables:

- manifest: one row per usable image, sorted by ``path`` (columns in ``BREAKHIS_COLUMNS`` /
  ``FOLDER_COLUMNS``, see docs/DESIGN.md);
- rejects: ``path, reason, detail`` with reason one of ``REJECT_REASONS``; a ``path`` shows each byte
  that is not UTF-8 as ``\\xNN`` (``names.printable``).

``path`` is always relative to the root the user gave (``breakhis_dir``/``tma_dir``), so
``Path(root) / path`` opens the image. For BreakHis only the resolved ``breast/`` folder is scanned
(a download folder holding the archive is not part of the dataset).

Checks, in order (the first failing one is the reason): the OS refuses to open or read it, e.g.
permission denied (``unreadable``, the OS error in the detail), not a regular file
(``not_an_image``), empty (``zero_bytes``), Pillow cannot identify it or it is not PNG/JPEG/TIFF
(``not_an_image``), more than ``imageio.MAX_PIXELS`` pixels by its header (``too_large``), the full
decode or the PNG chunk checksums fail (``truncated`` when the data ends early, ``undecodable``
otherwise), its pixel mode has no defined conversion to 8-bit RGB (``unsupported_mode``, see
``deepbc.data.imageio``), the path is not valid UTF-8 (``undecodable_name``: manifests, shards and CSVs
hold paths as UTF-8 text, so the detail gives a command renaming it; see ``deepbc.jobs.names``), the path
does not parse to labels (``unparsable_name``),
identical bytes already kept under the same labels (``duplicate``). Identical bytes under
*different* labels are all kept with ``label_conflict`` set, because neither copy can be trusted
more than the other (BreakHis slide 14-13412 is filed under both ductal and lobular carcinoma).
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import stat
from collections import Counter
from pathlib import Path

import pandas as pd

from deepbc.data import breakhis, folder_dataset, imageio
from deepbc.data.breakhis import UnparsableName
from deepbc.jobs import names
from deepbc.jobs.atomic import write_csv, write_parquet
from deepbc.jobs.errors import UserError
from deepbc.jobs.logs import Progress

LOG = logging.getLogger(__name__)

KINDS = ("breakhis", "folder")
REJECT_REASONS = ("unreadable", "zero_bytes", "not_an_image", "too_large", "undecodable", "truncated",
                  "unsupported_mode", "undecodable_name", "unparsable_name", "duplicate")
REJECT_COLUMNS = ["path", "reason", "detail"]
_COMMON = {"path": "str", "sha256": "str", "bytes": "int64", "width": "int64", "height": "int64", "format": "str"}
_TAIL = {"slide": "str", "patient": "str", "magnification": "str", "label_conflict": "bool"}
BREAKHIS_DTYPES = {**_COMMON, "tissue": "str", "subtype": "str", "subtype_name": "str", "year": "int64",
                   "seq": "int64", **_TAIL}
# patient_source: "csv" when the patients CSV gave the patient, "image" when each image is its own group.
FOLDER_DTYPES = {**_COMMON, "label": "str", **_TAIL, "patient_source": "str"}
BREAKHIS_COLUMNS = list(BREAKHIS_DTYPES)
FOLDER_COLUMNS = list(FOLDER_DTYPES)


def inspect_file(path: str) -> dict:
    """Check one file: header, pixel count, full decode, then sha256. Runs in pool workers, hence plain types.

    Returns ``bytes``, ``sha256``, ``width``, ``height``, ``format``, and ``reason``/``detail``
    (None when the file is a usable image). Reads no more than it needs: a file that is not an
    image is rejected from its first bytes, an image too large from its header, and the sha256 is
    computed in chunks, so memory stays small whatever the file's size.
    """
    out = {"bytes": 0, "sha256": "", "width": 0, "height": 0, "format": "", "reason": None, "detail": None}
    try:
        # stat before open: opening a FIFO would block until someone writes to it.
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            out.update(reason="not_an_image", detail="not a regular file")
            return out
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            out["bytes"] = size
            if size == 0:
                out.update(reason="zero_bytes", detail="the file is empty")
                return out
            try:
                out.update(_decode(fh))
            except imageio.Rejected as rejected:
                out.update(reason=rejected.reason, detail=rejected.detail)
                return out
            fh.seek(0)
            out["sha256"] = hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as err:
        out.update(reason="unreadable", detail=f"cannot be read: {err}")
    return out


def _decode(fh) -> dict:
    """Decode as every reader does (``imageio``); ``check_mode`` is ``rgb_image``'s only way to fail,
    so the pixels need not be converted to know they can be."""
    def reopen():
        # A second handle on the same open file: no second lookup of the path.
        again = open(os.dup(fh.fileno()), "rb")
        again.seek(0)
        return again

    with imageio.strict(), imageio.open_image(fh) as im:
        width, height = im.size
        fmt = imageio.FORMATS[im.format]
        imageio.load(im, reopen)
        imageio.check_mode(im)
    return {"width": width, "height": height, "format": fmt}


def list_files(scan_root: Path) -> list[Path]:
    """Every file under ``scan_root`` (hidden ones too), following folder links, sorted."""
    files: list[Path] = []
    seen: set[str] = set()

    def failed(err: OSError):
        raise UserError(f"cannot list a folder of the dataset: {err.strerror}", where=err.filename,
                        fix="make the folder readable")

    for dirpath, dirnames, filenames in os.walk(scan_root, onerror=failed, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            # A link back to a folder already scanned would loop forever.
            LOG.warning("not scanning %s again: it links to %s, which is already scanned", dirpath, real)
            dirnames[:] = []
            continue
        seen.add(real)
        files.extend(Path(dirpath) / f for f in filenames)
    return sorted(files, key=lambda p: p.as_posix())


def _inspect_all(paths: list[Path], workers: int) -> list[dict]:
    progress = Progress(len(paths), "checking files", unit="files")
    args = [str(p) for p in paths]
    results = []
    if workers <= 1 or len(args) < 2:
        for a in args:
            results.append(inspect_file(a))
            progress.update()
        return results
    chunksize = max(1, min(64, len(args) // (workers * 8)))
    with multiprocessing.Pool(workers) as pool:
        # imap keeps the input order, so the result does not depend on scheduling.
        for res in pool.imap(inspect_file, args, chunksize=chunksize):
            results.append(res)
            progress.update()
    return results


def build_manifest(root: str | Path, kind: str, classes=None, patients_csv: str | Path | None = None,
                   workers: int = 1, dataset: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scan ``root`` and verify every file; return ``(manifest, rejects)``, both sorted by path.

    kind: ``breakhis`` (official layout, labels from the path) or ``folder`` (one subfolder per
    class in ``classes``, patients from ``patients_csv`` if given). ``workers`` > 1 decodes in a
    process pool. Logs a summary (totals, reasons, conflicts, patients, per-label counts).
    """
    if kind not in KINDS:
        raise UserError(f"unknown dataset kind {kind!r}", where="datasets.<name>.kind (--kind)",
                        fix=f"use one of {', '.join(KINDS)}")
    dataset = dataset or kind
    root = Path(root)
    patients_csv = Path(patients_csv) if patients_csv not in (None, "") else None
    if kind == "breakhis":
        if classes or patients_csv:
            raise UserError("classes and a patients CSV apply to folder datasets only; BreakHis takes its labels "
                            "and patients from the file paths", where="--classes / --patients-csv",
                            fix="drop these options for a breakhis dataset")
        scan_root = breakhis.resolve_root(root)
        patient_map = None
    else:
        classes = folder_dataset.validate_classes(classes)
        scan_root = folder_dataset.resolve_root(root, classes, dataset)
        patient_map = folder_dataset.read_patients_csv(patients_csv) if patients_csv else None

    files = list_files(scan_root)
    LOG.info("%s: scanning %d files under %s%s", dataset, len(files), scan_root,
             "" if scan_root == root else f" (resolved from {root}; paths are relative to {root})")
    if not files:
        raise UserError(f"no files under the {dataset} root", where=str(scan_root),
                        fix="check the folder; see the dataset's documentation for its layout")

    csv_real = os.path.realpath(patients_csv) if patients_csv else None
    rel = [p.relative_to(root).as_posix() for p in files]
    is_csv = [csv_real is not None and os.path.realpath(p) == csv_real for p in files]
    if any(is_csv):
        LOG.info("the patients CSV %s lies under the root: listed in the rejects as not_an_image", patients_csv)
    checked = _inspect_all([p for p, c in zip(files, is_csv) if not c], workers)
    checks = iter(checked)

    rows, rejects = [], []
    for path, csv in zip(rel, is_csv):
        if csv:
            rejects.append((path, "not_an_image", "the patients CSV (--patients-csv): patient metadata, not an image"))
            continue
        info = next(checks)
        if info["reason"]:
            rejects.append((path, info["reason"], info["detail"]))
            continue
        if not names.is_utf8(path):
            rejects.append((path, "undecodable_name", f"the path is not valid UTF-8, which manifests, shards and "
                                                      f"CSVs need; rename it: {names.rename_command(root, path)}"))
            continue
        row = {"path": path, "sha256": info["sha256"], "bytes": info["bytes"], "width": info["width"],
               "height": info["height"], "format": info["format"]}
        try:
            row.update(_labels(kind, path, classes, patient_map))
        except UnparsableName as err:
            rejects.append((path, "unparsable_name", err.reason))
            continue
        rows.append(row)

    columns = BREAKHIS_DTYPES if kind == "breakhis" else FOLDER_DTYPES
    label_keys = ["tissue", "subtype"] if kind == "breakhis" else ["label"]
    if patient_map is not None:
        _check_csv_coverage(rows, patient_map, rel, patients_csv)
    rows, dup_rejects = _resolve_duplicates(rows, label_keys)
    rejects.extend(dup_rejects)

    manifest = pd.DataFrame(rows, columns=list(columns)).astype(columns)
    manifest = manifest.sort_values("path", ignore_index=True)
    rejects = [(names.printable(path), reason, names.printable(detail)) for path, reason, detail in rejects]
    rejects_df = pd.DataFrame(rejects, columns=REJECT_COLUMNS).astype("str")
    rejects_df = rejects_df.sort_values("path", ignore_index=True)
    assert len(manifest) + len(rejects_df) == len(files), "every file must land in exactly one table"
    _summarise(dataset, kind, manifest, rejects_df, label_keys)
    return manifest, rejects_df


def _labels(kind: str, path: str, classes, patient_map) -> dict:
    if kind == "breakhis":
        rec = breakhis.parse_path(path)
        return {"tissue": rec.tissue, "subtype": rec.subtype, "subtype_name": rec.subtype_name, "year": rec.year,
                "seq": rec.seq, "slide": rec.slide_id, "patient": rec.patient, "magnification": rec.magnification}
    label = folder_dataset.label_of(path, classes)
    if patient_map is None:
        patient, source = path, "image"
    else:
        patient, source = patient_map.get(path), "csv"
    # Folder datasets know no slides: the patient is the finest grouping there is.
    return {"label": label, "slide": patient, "patient": patient, "magnification": "NA", "patient_source": source}


def _check_csv_coverage(rows: list[dict], patient_map: dict, rel: list[str], csv_path: Path) -> None:
    """Images absent from the CSV are an error (their patient is unknown, so no split can be made
    safe); CSV rows naming no file are reported and otherwise harmless."""
    existing = set(rel)
    stale = sorted(p for p in patient_map if p not in existing)
    if stale:
        # Logged before any error below: all rows stale usually means paths not relative to the root.
        LOG.warning("%d of %d row(s) of the patients CSV %s name files that do not exist under the root; they are "
                    "ignored: %s", len(stale), len(patient_map), csv_path,
                    ", ".join(stale[:5]) + (", ..." if len(stale) > 5 else ""))
    unlisted = [r["path"] for r in rows if r["patient"] is None]
    if unlisted:
        shown = ", ".join(unlisted[:5]) + (", ..." if len(unlisted) > 5 else "")
        raise UserError(f"{len(unlisted)} image(s) under the root are not in the patients CSV ({shown}); "
                        f"their patient is unknown, so a patient-wise split cannot place them safely",
                        where=str(csv_path),
                        fix="add a row (path relative to the root, patient) for each, or remove the images")


def _resolve_duplicates(rows: list[dict], label_keys: list[str]) -> tuple[list[dict], list[tuple]]:
    """Same bytes under the same labels: keep the first path (sorted order), reject the others.
    Same bytes under different labels: keep one per label, all flagged ``label_conflict``."""
    by_hash: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: r["path"]):
        by_hash.setdefault(row["sha256"], []).append(row)
    kept, rejects = [], []
    for group in by_hash.values():
        first_by_label: dict[tuple, dict] = {}
        for row in group:
            key = tuple(row[k] for k in label_keys)
            if key in first_by_label:
                rejects.append((row["path"], "duplicate", f"same bytes (sha256 {row['sha256'][:12]}...) and labels "
                                                          f"as {first_by_label[key]['path']}"))
            else:
                first_by_label[key] = row
        conflict = len(first_by_label) > 1
        for row in first_by_label.values():
            kept.append({**row, "label_conflict": conflict})
    return kept, rejects


def _summarise(dataset: str, kind: str, manifest: pd.DataFrame, rejects: pd.DataFrame, label_keys) -> None:
    total = len(manifest) + len(rejects)
    reasons = Counter(rejects["reason"])
    LOG.info("%s: %d files scanned, %d usable, %d rejected (%s)", dataset, total, len(manifest), len(rejects),
             ", ".join(f"{r}: {reasons.get(r, 0)}" for r in REJECT_REASONS))
    for row in rejects.head(20).itertuples():
        LOG.warning("rejected %s: %s (%s)", row.path, row.reason, row.detail)
    if len(rejects) > 20:
        LOG.warning("... and %d more rejects, listed in the rejects CSV", len(rejects) - 20)

    conflicts = manifest[manifest["label_conflict"]]
    LOG.info("%s: %d images whose bytes appear under another label (label_conflict)", dataset, len(conflicts))
    if len(conflicts):
        labels = conflicts.assign(labels=conflicts[label_keys].astype(str).agg("/".join, axis=1))
        per_hash = labels.groupby("sha256").agg(labels=("labels", lambda s: " vs ".join(sorted(s))),
                                                 slides=("slide", lambda s: ", ".join(sorted(set(s)))))
        for (what, slides), n in per_hash.value_counts().sort_index().items():
            LOG.warning("label conflict: %d distinct image(s) filed as %s (slide(s) %s)", n, what, slides)

    LOG.info("%s: %d patients, %d slides", dataset, manifest["patient"].nunique(), manifest["slide"].nunique())
    if kind == "breakhis":
        orders = {"tissue": breakhis.TISSUES, "subtype": tuple(breakhis.SUBTYPES),
                  "magnification": breakhis.MAGNIFICATIONS}
    else:
        orders = {"label": tuple(sorted(set(manifest["label"]))), "patient_source": ("csv", "image")}
    for col, order in orders.items():
        stats = manifest.groupby(col).agg(images=("path", "size"), patients=("patient", "nunique"))
        LOG.info("%s per %s: %s", dataset, col, ", ".join(f"{k} {stats.loc[k, 'images']} images/"
                                                          f"{stats.loc[k, 'patients']} patients"
                                                          for k in order if k in stats.index))
        absent = [k for k in order if k not in stats.index]
        if kind == "breakhis" and absent:
            LOG.warning("%s: no usable images for %s %s", dataset, col, ", ".join(absent))
    if kind == "folder":
        _warn_patients_in_several_classes(dataset, manifest)
    if kind == "folder" and (manifest["patient_source"] == "image").any():
        LOG.warning("%s: no patients CSV, so every image is its own patient group; if several images come "
                    "from one patient a patient-wise split can leak. Give a CSV (path, patient) to fix this.",
                    dataset)


def _warn_patients_in_several_classes(dataset: str, manifest: pd.DataFrame) -> None:
    """A patient of the patients CSV with images in two class folders: legitimate (two diagnoses) or a
    CSV mistake (two patients sharing an id); either way the user should know what the split does."""
    counts = manifest.groupby(["patient", "label"]).size()
    per_patient = counts.groupby(level="patient").size()
    mixed = per_patient.index[per_patient > 1]
    if mixed.empty:
        return
    shown = ", ".join(f"{p} (" + ", ".join(f"{label} {n}" for label, n in counts.loc[p].items()) + ")"
                      for p in mixed[:5]) + (", ..." if len(mixed) > 5 else "")
    LOG.warning("%s: %d patient(s) of the patients CSV have images in more than one class folder (images per "
                "class): %s. The patient-wise split keeps each patient's images together, so such a patient lands "
                "in one split with images of several labels. If these are different patients sharing an id, give "
                "them distinct ids in the patients CSV.", dataset, len(mixed), shown)


def check_dataset(dataset: str, kind: str, root: str | Path, manifest_path: str | Path, rejects_path: str | Path,
                  classes=None, patients_csv: str | Path | None = None, workers: int = 1, url: str = "",
                  sha256: str = "", allow_download: bool = False, download_dir: str | Path | None = None,
                  max_extracted_gb: float | None = None, max_compression_ratio: float | None = None) -> None:
    """Fetch the dataset if a URL is configured, build and write its manifest and rejects.

    ``max_extracted_gb``, ``max_compression_ratio``: limits on extracting the archive (config
    ``datasets.<name>``, defaults in config/schema.yaml), needed with a URL.
    """
    root = Path(root)
    if url:
        # Only needed, and only imported, for a configured download.
        from deepbc.data.download import ExtractLimits, ensure_root
        if download_dir is None or max_extracted_gb is None or max_compression_ratio is None:
            raise UserError("a dataset URL is set but no download folder or extraction limits",
                            where="--download-dir, --max-extracted-gb, --max-compression-ratio",
                            fix="give all three (the workflow passes them from the dataset's config entry)")
        limits = ExtractLimits.from_config(max_extracted_gb, max_compression_ratio, f"datasets.{dataset}")
        ensure_root(root, url, sha256, allow_download, Path(download_dir), limits)
    manifest, rejects = build_manifest(root, kind, classes=classes, patients_csv=patients_csv, workers=workers,
                                       dataset=dataset)
    if manifest.empty:
        raise UserError(f"no usable image in the {dataset} dataset ({len(rejects)} files, all rejected: see the "
                        f"reasons logged above)", where=str(root), fix="check the dataset files and their layout")
    if kind == "folder":
        empty = [c for c in classes if c not in set(manifest["label"])]
        if empty:
            raise UserError(f"class(es) without any usable image in {dataset}: {', '.join(empty)}", where=str(root),
                            fix="add images to these class folders (see the rejects logged above) or drop the "
                                "classes from the config")
    write_csv(rejects_path, rejects)
    write_parquet(manifest_path, manifest)
    LOG.info("%s: wrote %s (%d rows) and %s (%d rows)", dataset, manifest_path, len(manifest), rejects_path,
             len(rejects))
