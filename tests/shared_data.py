"""The BreakHis reference data carried in tests/data/breakhis (the real listing and counts, no images).

The listing is stored gzipped (22 kB instead of 934 kB); it is unpacked once per test process
into a temporary folder, so the tests and benchmark scripts read it as the plain text file.
"""

import atexit
import gzip
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "breakhis"
LISTING = "BreaKHis_v1_filelist.txt"


@lru_cache(maxsize=1)
def breakhis_reference_dir() -> Path:
    """A folder holding BreaKHis_v1_filelist.txt and BreaKHis_v1_counts.csv."""
    folder = Path(tempfile.mkdtemp(prefix="deepbc-breakhis-reference."))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    with gzip.open(DATA / f"{LISTING}.gz", "rb") as src, open(folder / LISTING, "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copy(DATA / "BreaKHis_v1_counts.csv", folder)
    return folder


def breakhis_listing() -> Path:
    return breakhis_reference_dir() / LISTING
