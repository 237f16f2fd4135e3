"""The reference data in shared/breakhis (the real BreakHis listing and counts, no images)."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def breakhis_reference_dir() -> Path:
    """shared/breakhis beside the clone, or under $DEEPBC_SHARED_DIR; missing fails in CI, skips elsewhere."""
    shared = Path(os.environ["DEEPBC_SHARED_DIR"]) if os.environ.get("DEEPBC_SHARED_DIR") else REPO.parent / "shared"
    folder = shared / "breakhis"
    if not (folder / "BreaKHis_v1_filelist.txt").is_file():
        msg = f"BreakHis reference listing not found in {folder} (set DEEPBC_SHARED_DIR to the shared/ folder)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return folder


def breakhis_listing() -> Path:
    return breakhis_reference_dir() / "BreaKHis_v1_filelist.txt"
