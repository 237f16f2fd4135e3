"""Deterministic synthetic demo data in the BreakHis layout and in a TMA-like folder layout.

The images come from the synthetic H&E painter (deepbc.data.synthetic_he: tissue architecture per
subtype or class, stain per patient, scale per magnification); this module decides which images
exist, their patients, magnifications and paths. Patients differ in stain more than classes do, so
a patient-wise split is harder than an image-level one, as on real slides.

Every image is drawn from a random generator seeded by (seed, image identity), so the output is
byte-identical for a seed whatever the number of worker processes or the order of work. Both
datasets are written into a temporary sibling folder that is renamed onto the target at the end,
so an interrupted run never leaves a folder that looks complete.

BreakHis demo: ``<out_root>/histology_slides/breast/{benign,malignant}/SOB/<subtype_dir>/
SOB_<B|M>_<T>_<YY>-<slide>/<mag>X/SOB_<B|M>_<T>-<YY>-<slide>-<mag>-<seq>.png`` (``out_root`` is
the ``BreaKHis_v1`` folder), with two of the real dataset's traps: slide folders 14-22549AB and
14-22549CD of one patient, and slide 14-13412 filed under both ductal and lobular carcinoma with
byte-identical images.

TMA demo: ``<out_root>/{breast,bladder,lung,lymphoma}/<patient>_<k>.{png,jpg}`` plus a patients
CSV (columns ``path,patient``, path relative to ``out_root``) outside ``out_root``, by default
``patients.csv`` beside it: the dataset root holds images only, so check_dataset rejects nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from deepbc.data.breakhis import SUBTYPES
from deepbc.data.datasets import DEMO_ROOT_FOLDERS
from deepbc.data.synthetic_he import MAG_SCALE, paint, rng_for
from deepbc.jobs import atomic
from deepbc.jobs.errors import UserError
from deepbc.jobs.logs import Progress

LOG = logging.getLogger("deepbc.data.demo")

BREAKHIS_SIZE = (112, 74)  # width, height: BreakHis' 700x460 aspect
TMA_SIZE = (96, 96)
TMA_CLASSES = ("breast", "bladder", "lung", "lymphoma")
MAGNIFICATIONS = (40, 100, 200, 400)
TMA_SCALE = 1.2
JPEG_QUALITY = 90
PATIENTS_CSV = "patients.csv"

# Patients per subtype, each a tuple of its slide ids; patient 0 of A, DC and LC carries the traps
# (so they exist whatever patients_per_subtype is). Real ids are used where the real subtype has
# enough patients not shared with another subtype; 14-24411, 14-26870G and 14-28155CD are made up.
DUPLICATE_SLIDE = "14-13412"  # filed under DC and LC, byte-identical images, drawn as DC
SLIDES: dict[str, tuple[tuple[str, ...], ...]] = {
    "A": (("14-22549AB", "14-22549CD"), ("14-29960CD",), ("14-24411",), ("14-26870G",)),
    "F": (("14-9133",), ("14-23222AB",), ("14-25197",), ("14-14134",)),
    "PT": (("14-22704",), ("14-29315EF",), ("14-21998AB",), ("14-28155CD",)),
    "TA": (("14-13200",), ("14-15275",), ("14-19854C",), ("14-21978AB",)),
    "DC": ((DUPLICATE_SLIDE,), ("14-10926",), ("14-11031",), ("14-11520",)),
    "LC": ((DUPLICATE_SLIDE,), ("14-12204",), ("14-15570",), ("14-16196",)),
    "MC": (("14-10147",), ("14-12773",), ("14-13413",), ("14-16456",)),
    "PC": (("14-12465",), ("14-15687B",), ("14-19440",), ("15-190EF",)),
}
MAX_PATIENTS_PER_SUBTYPE = min(len(p) for p in SLIDES.values())


# --------------------------------------------------------------------------- public API

def make_breakhis_demo(out_root: Path, seed: int, image_size: tuple[int, int] = BREAKHIS_SIZE,
                       patients_per_subtype: int = 4, images_per_magnification: int = 3,
                       workers: int = 1) -> int:
    """Write the BreakHis-layout demo into ``out_root`` (the ``BreaKHis_v1`` folder); return the file count.

    ``image_size`` is (width, height). Every subtype gets ``patients_per_subtype`` patients (at most
    4); every slide gets ``images_per_magnification`` images at each of 40X, 100X, 200X and 400X.
    The defaults give 396 PNG files: 33 slide folders, 32 distinct slides, 31 patients.
    """
    _check_common(seed, image_size, workers)
    _check_count("patients_per_subtype", patients_per_subtype, 1, MAX_PATIENTS_PER_SUBTYPE)
    _check_count("images_per_magnification", images_per_magnification, 1, 50)
    specs = breakhis_specs(seed, image_size, patients_per_subtype, images_per_magnification)
    return _generate(Path(out_root), seed, specs, workers, "BreakHis demo")


def make_tma_demo(out_root: Path, seed: int, image_size: tuple[int, int] = TMA_SIZE,
                  patients_per_class: int = 6, images_per_patient: int = 4, workers: int = 1,
                  patients_csv: Path | None = None) -> int:
    """Write the TMA-like folder demo into ``out_root``; return the number of image files.

    One folder per class (breast, bladder, lung, lymphoma), ``patients_per_class`` patients each
    with ``images_per_patient`` images; every second image of a patient is a JPEG, the rest PNG.
    ``patients_csv`` (``path,patient``; default ``patients.csv`` beside ``out_root``) maps every
    image to its patient.
    """
    _check_common(seed, image_size, workers)
    _check_count("patients_per_class", patients_per_class, 1, 99)
    _check_count("images_per_patient", images_per_patient, 1, 50)
    specs = tma_specs(seed, image_size, patients_per_class, images_per_patient)
    rows = sorted((path, spec.patient) for spec in specs for path in spec.paths)
    written = _generate(Path(out_root), seed, specs, workers, "TMA demo")
    atomic.write_text(patients_csv or Path(out_root).parent / PATIENTS_CSV,
                      "path,patient\n" + "".join(f"{p},{q}\n" for p, q in rows))
    return written


def make_demo(name: str, out: Path, seed: int, scale: int = 1, workers: int = 1) -> int:
    """One demo dataset as the workflow's make_demo rule writes it, into its root folder under ``out``
    (datasets_config.DEMO_ROOT_FOLDERS; the TMA demo's patients CSV beside it, ``out/patients.csv``):
    the default sizes, with ``scale`` times the images of every slide and magnification or of every
    TMA patient (the patients stay the same). Returns the file count."""
    _check_count("scale", scale, 1, 16)
    root = Path(out) / DEMO_ROOT_FOLDERS[name]
    if name == "breakhis":
        return make_breakhis_demo(root, seed, images_per_magnification=3 * scale, workers=workers)
    return make_tma_demo(root, seed, images_per_patient=4 * scale, workers=workers)


@dataclass(frozen=True)
class ImageSpec:
    """One image to draw and the paths (relative to the dataset root) it is written to."""

    identity: str   # seeds the drawing; has no label in it, so one slide filed twice draws the same
    patient: str    # seeds the stain and per-patient morphology
    style: str      # tissue architecture: a BreakHis subtype code or a TMA class
    scale: float    # pixels per unit, from the magnification
    size: tuple[int, int]
    paths: tuple[str, ...]


def breakhis_specs(seed: int, image_size=BREAKHIS_SIZE, patients_per_subtype: int = 4,
                   images_per_magnification: int = 3) -> list[ImageSpec]:
    """The images of the BreakHis demo, with their official relative paths (sorted, deterministic)."""
    by_identity: dict[str, ImageSpec] = {}
    for code, (tissue, subtype_dir) in SUBTYPES.items():
        letter = tissue[0].upper()
        for slides in SLIDES[code][:patients_per_subtype]:
            patient = _patient_of(slides[0])
            for slide_id in slides:
                year, slide = slide_id.split("-")
                slide_dir = f"{tissue}/SOB/{subtype_dir}/SOB_{letter}_{code}_{year}-{slide}"
                for mag in MAGNIFICATIONS:
                    for seq in _sequence_numbers(seed, slide_id, mag, images_per_magnification):
                        identity = f"{slide_id}/{mag}X/{seq:03d}"
                        path = (f"histology_slides/breast/{slide_dir}/{mag}X/"
                                f"SOB_{letter}_{code}-{year}-{slide}-{mag}-{seq:03d}.png")
                        if identity in by_identity:  # the slide filed under a second subtype
                            old = by_identity[identity]
                            by_identity[identity] = ImageSpec(identity, patient, old.style, old.scale,
                                                              old.size, old.paths + (path,))
                        else:
                            by_identity[identity] = ImageSpec(identity, patient, code, MAG_SCALE[mag],
                                                              tuple(image_size), (path,))
    return sorted(by_identity.values(), key=lambda s: s.paths)


def tma_specs(seed: int, image_size=TMA_SIZE, patients_per_class: int = 6,
              images_per_patient: int = 4) -> list[ImageSpec]:
    """The images of the TMA demo (sorted, deterministic). Patients are TMA01, TMA02, ... across classes."""
    specs = []
    number = 0
    for cls in TMA_CLASSES:
        for _ in range(patients_per_class):
            number += 1
            patient = f"TMA{number:02d}"
            for k in range(1, images_per_patient + 1):
                ext = "jpg" if k % 2 == 0 else "png"
                # TMA cores are imaged at one objective; a little zoom variation between cores.
                zoom = float(np.exp(rng_for(seed, "zoom", patient, k).normal(0.0, 0.08)))
                specs.append(ImageSpec(f"{patient}/{k}", patient, cls, TMA_SCALE * zoom, tuple(image_size),
                                       (f"{cls}/{patient}_{k}.{ext}",)))
    return specs


def render(spec: ImageSpec, seed: int) -> Image.Image:
    """Draw one image (RGB, ``spec.size``); a pure function of ``spec`` and ``seed``."""
    return paint(spec.style, spec.scale, spec.size, seed, spec.identity, spec.patient)


# --------------------------------------------------------------------------- generation

def _generate(out_root: Path, seed: int, specs: list[ImageSpec], workers: int, what: str) -> int:
    total = sum(len(s.paths) for s in specs)
    LOG.info("%s: drawing %d images (%d files) into %s with %d worker(s)", what, len(specs), total,
             out_root, workers)
    progress = Progress(len(specs), what, unit="images")
    with _atomic_dir(out_root) as tmp:
        for spec in specs:
            for path in spec.paths:
                (tmp / path).parent.mkdir(parents=True, exist_ok=True)
        jobs = [(tmp, seed, spec) for spec in specs]
        written = 0
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for n in pool.map(_write_one, jobs, chunksize=8):
                    written += n
                    progress.update()
        else:
            for job in jobs:
                written += _write_one(job)
                progress.update()
    LOG.info("%s: wrote %d files to %s", what, written, out_root)
    return written


def _write_one(job) -> int:
    root, seed, spec = job
    image = render(spec, seed)
    for path in spec.paths:
        if path.endswith(".jpg"):
            # Fixed settings and no EXIF: the bytes depend only on the pixels.
            image.save(root / path, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
        else:
            image.save(root / path, format="PNG", compress_level=6)
    return len(spec.paths)


@contextlib.contextmanager
def _atomic_dir(target: Path):
    """Yield a temporary sibling folder; on success it replaces ``target`` (any old one is removed)."""
    if target.exists() and not target.is_dir():
        raise UserError("the demo output path exists and is not a folder", where=str(target),
                        fix="remove that file or choose another output folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a dataset folder should not be
        if target.exists():
            # rename() onto an empty folder is allowed on POSIX, so the old tree moves aside first.
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, trash)
            os.replace(tmp, target)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _check_common(seed, image_size, workers) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"the demo seed must be a non-negative integer, got {seed!r}",
                        where="config key 'seed' (or --seed)", fix="set seed to an integer such as 42")
    if (len(tuple(image_size)) != 2 or not all(isinstance(v, (int, np.integer)) for v in image_size)
            or min(image_size) < 32 or max(image_size) > 2048):
        raise UserError(f"demo image size must be (width, height) with integers from 32 to 2048, got {image_size!r}",
                        where="image_size", fix="use for example (112, 74)")
    _check_count("workers", workers, 1, 256)


def _check_count(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise UserError(f"{name} must be an integer from {low} to {high}, got {value!r}", where=name,
                        fix=f"pass {name} between {low} and {high}")


def _patient_of(slide_id: str) -> str:
    year, slide = slide_id.split("-")
    return f"{year}-{slide.rstrip('ABCDEFGHIJKLMNOPQRSTUVWXYZ')}"


def _sequence_numbers(seed: int, slide_id: str, mag: int, n: int) -> list[int]:
    # Like the real files, sequence numbers are not always contiguous.
    pool = np.arange(1, n + 3)
    return sorted(rng_for(seed, "seq", slide_id, mag).choice(pool, size=n, replace=False).tolist())
