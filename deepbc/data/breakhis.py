"""The BreakHis v1 layout: path parser and root resolution.

Official layout (Spanhol et al. 2016), relative to the archive root::

    BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<subtype_dir>/
        SOB_<B|M>_<T>_<YY>-<slide>/<mag>X/SOB_<B|M>_<T>-<YY>-<slide>-<mag>-<seq>.png

Only the file name and its five parent folders are parsed, so a path works whatever folder the
user's ``breakhis_dir`` points at. The patient is the numeric id (``14-22549`` for slides
``14-22549AB``, ``14-22549CD``, ``14-22549G``): the 82 slide folders carry only 70 numeric ids,
and grouping by the number can never put one patient on both sides of a split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePath

from deepbc.jobs.errors import UserError

DOWNLOAD_URL = "https://web.inf.ufpr.br/vri/databases/breast-cancer-histopathological-database-breakhis/"
ARCHIVE_NAME = "BreaKHis_v1.tar.gz"

TISSUES = ("benign", "malignant")
CLASS_LETTERS = {"B": "benign", "M": "malignant"}
# code -> (tissue, subtype folder name, which is also the subtype_name)
SUBTYPES = {
    "A": ("benign", "adenosis"),
    "F": ("benign", "fibroadenoma"),
    "PT": ("benign", "phyllodes_tumor"),
    "TA": ("benign", "tubular_adenoma"),
    "DC": ("malignant", "ductal_carcinoma"),
    "LC": ("malignant", "lobular_carcinoma"),
    "MC": ("malignant", "mucinous_carcinoma"),
    "PC": ("malignant", "papillary_carcinoma"),
}
SUBTYPE_NAMES = {code: name for code, (_, name) in SUBTYPES.items()}
BENIGN_SUBTYPES = tuple(c for c, (t, _) in SUBTYPES.items() if t == "benign")
MALIGNANT_SUBTYPES = tuple(c for c, (t, _) in SUBTYPES.items() if t == "malignant")
MAGNIFICATIONS = ("40X", "100X", "200X", "400X")

LAYOUT = ("BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<subtype_dir>/"
          "SOB_<B|M>_<T>_<YY>-<slide>/<mag>X/SOB_<B|M>_<T>-<YY>-<slide>-<mag>-<seq>.png")
FILE_PATTERN = "SOB_<B|M>_<T>-<YY>-<slide>-<mag>-<seq>.png"

_FILE_RE = re.compile(r"SOB_(?P<cls>[A-Z]+)_(?P<sub>[A-Z]+)-(?P<year>\d{2})-(?P<slide>\d+[A-Z]*)"
                      r"-(?P<mag>\d+)-(?P<seq>\d+)\.png")
_SLIDE_DIR_RE = re.compile(r"SOB_(?P<cls>[A-Z]+)_(?P<sub>[A-Z]+)_(?P<year>\d{2})-(?P<slide>\d+[A-Z]*)")
_MAG_DIR_RE = re.compile(r"(?P<mag>\d+)X")
_SLIDE_NUMBER_RE = re.compile(r"\d+")


@dataclass(frozen=True)
class BreakHisRecord:
    tissue: str         # benign | malignant
    subtype: str        # A, F, PT, TA, DC, LC, MC, PC
    subtype_name: str   # adenosis, ..., papillary_carcinoma
    year: int           # 2014 for "14"
    slide: str          # "22549AB"
    slide_id: str       # "14-22549AB"
    patient: str        # "14-22549": the numeric id, shared by sibling slides
    magnification: str  # 40X | 100X | 200X | 400X
    seq: int


class UnparsableName(ValueError):
    """A path that is not a BreakHis image path; ``reason`` says which part is wrong."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


def parse_path(path: str | PurePath) -> BreakHisRecord:
    """Parse ``.../<tissue>/SOB/<subtype_dir>/<slide_dir>/<mag>X/<file>.png``.

    Every field that appears both in a folder name and in the file name must agree (class letter
    vs tissue folder, subtype vs subtype folder, slide vs slide folder, magnification vs
    magnification folder). Raises UnparsableName with the reason otherwise.
    """
    parts = PurePath(str(path).replace("\\", "/")).parts
    if len(parts) < 6:
        raise UnparsableName(path, f"expected <tissue>/SOB/<subtype_dir>/<slide_dir>/<mag>X/{FILE_PATTERN}, "
                                   f"but the path has only {len(parts)} component(s)")
    tissue_dir, sob_dir, subtype_dir, slide_dir, mag_dir, name = parts[-6:]

    m = _FILE_RE.fullmatch(name)
    if not m:
        raise UnparsableName(path, f"file name {name!r} does not match {FILE_PATTERN}")
    cls, sub, year, slide, mag, seq = m["cls"], m["sub"], m["year"], m["slide"], m["mag"], int(m["seq"])
    if cls not in CLASS_LETTERS:
        raise UnparsableName(path, f"class letter {cls!r} in the file name is not B or M")
    if sub not in SUBTYPES:
        raise UnparsableName(path, f"subtype {sub!r} in the file name is not one of {', '.join(SUBTYPES)}")
    magnification = f"{mag}X"
    if magnification not in MAGNIFICATIONS:
        raise UnparsableName(path, f"magnification {mag!r} in the file name is not one of 40, 100, 200, 400")
    tissue, subtype_name = SUBTYPES[sub]
    if CLASS_LETTERS[cls] != tissue:
        raise UnparsableName(path, f"class letter {cls} contradicts subtype {sub} ({tissue}) in the file name")

    if tissue_dir != tissue:
        raise UnparsableName(path, f"class letter {cls} ({tissue}) in the file name but the file is under "
                                   f"{tissue_dir!r}/, not {tissue}/")
    if sob_dir != "SOB":
        raise UnparsableName(path, f"expected the folder 'SOB' between {tissue_dir}/ and {subtype_dir}/, "
                                   f"found {sob_dir!r}")
    if subtype_dir != subtype_name:
        raise UnparsableName(path, f"subtype {sub} ({subtype_name}) in the file name but the file is under "
                                   f"{subtype_dir!r}/")
    s = _SLIDE_DIR_RE.fullmatch(slide_dir)
    if not s:
        raise UnparsableName(path, f"slide folder {slide_dir!r} does not match SOB_<B|M>_<T>_<YY>-<slide>")
    folder_fields = (s["cls"], s["sub"], s["year"], s["slide"])
    if folder_fields != (cls, sub, year, slide):
        raise UnparsableName(path, f"file name says {cls}_{sub} {year}-{slide} but the slide folder is "
                                   f"{slide_dir!r}")
    g = _MAG_DIR_RE.fullmatch(mag_dir)
    if not g or g["mag"] != mag:
        raise UnparsableName(path, f"magnification {mag} in the file name but the file is under {mag_dir!r}/, "
                                   f"not {magnification}/")

    number = _SLIDE_NUMBER_RE.match(slide).group()
    return BreakHisRecord(tissue=tissue, subtype=sub, subtype_name=subtype_name, year=2000 + int(year),
                          slide=slide, slide_id=f"{year}-{slide}", patient=f"{year}-{number}",
                          magnification=magnification, seq=seq)


def _is_breast_dir(path: Path) -> bool:
    return all((path / t).is_dir() for t in TISSUES)


def _not_found(root: Path, what: str) -> UserError:
    hint = ""
    if root.is_dir() and any(root.glob("BreaKHis_v1*.tar*")):
        hint = f" The archive is there but not extracted: run `tar -xzf {ARCHIVE_NAME}` in {root}."
    return UserError(
        f"BreakHis not found: {what}",
        where=str(root),
        fix=(f"point the dataset's root (datasets.<name>.root, or breakhis_dir) at the folder holding BreaKHis_v1/, at BreaKHis_v1/ itself, or at any folder "
             f"down to BreaKHis_v1/histology_slides/breast, laid out as {LAYOUT}. BreakHis (CC BY 4.0) is "
             f"{ARCHIVE_NAME} from {DOWNLOAD_URL}, or set datasets.<name>.url, sha256 and "
             f"allow_download: true.{hint}"))


def resolve_root(path: str | Path) -> Path:
    """The ``breast`` folder (holding ``benign/`` and ``malignant/``) that ``path`` designates.

    ``path`` may be the folder holding ``BreaKHis_v1/``, ``BreaKHis_v1/``, ``histology_slides/`` or
    ``breast/``. A folder inside ``breast/`` (e.g. ``breast/benign``) is refused: it holds only part of
    the dataset and the benign-vs-malignant task needs both halves.
    """
    root = Path(path)
    if not root.exists():
        raise _not_found(root, "the folder does not exist")
    if not root.is_dir():
        raise _not_found(root, "this is a file, not a folder")
    for candidate in (root, root / "breast", root / "histology_slides" / "breast",
                      root / "BreaKHis_v1" / "histology_slides" / "breast"):
        present = [t for t in TISSUES if (candidate / t).is_dir()]
        if len(present) == len(TISSUES):
            return candidate
        if present:
            absent = [t for t in TISSUES if t not in present]
            raise _not_found(candidate, f"{present[0]}/ is there but {absent[0]}/ is not: the dataset is incomplete")
    for ancestor in root.resolve().parents:
        if _is_breast_dir(ancestor):
            raise UserError(
                "the dataset's root points inside the BreakHis tree, at a part of the dataset only",
                where=str(root),
                fix=f"point the root (datasets.<name>.root, or breakhis_dir) at {ancestor} (the folder holding benign/ and malignant/) or a folder above it")
    entries = sorted(p.name for p in root.iterdir())
    if not entries:
        raise _not_found(root, "the folder is empty")
    shown = ", ".join(entries[:10]) + (", ..." if len(entries) > 10 else "")
    raise _not_found(root, f"no benign/ and malignant/ folders at any expected depth (found: {shown})")
