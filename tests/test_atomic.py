"""Atomic writes: nothing appears under the final name unless the write completed."""

import os

import pandas as pd
import pytest

from deepbc.jobs import atomic


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_written_files_get_the_umask_mode(tmp_path):
    atomic.write_json(tmp_path / "a.json", {"b": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_parquet_is_byte_identical_on_rewrite(tmp_path):
    df = pd.DataFrame({"path": ["b", "a"], "fold": [1, 0]})
    atomic.write_parquet(tmp_path / "1.parquet", df)
    atomic.write_parquet(tmp_path / "2.parquet", df.copy())
    assert (tmp_path / "1.parquet").read_bytes() == (tmp_path / "2.parquet").read_bytes()
