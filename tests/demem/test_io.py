"""demem.io: atomic writes, permissions from the umask."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pandas as pd
import pytest

from demem import io


def test_writers_round_trip_and_leave_no_temp_files(tmp_path):
    io.write_json(tmp_path / "a.json", {"x": np.float32(1.5), "y": np.arange(3)})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1.5, "y": [0, 1, 2]}
    io.write_npy(tmp_path / "keep.npy", np.array([True, False]))
    assert np.load(tmp_path / "keep.npy", allow_pickle=False).tolist() == [True, False]
    io.write_npz(tmp_path / "s.npz", phi=np.ones((2, 3), dtype=np.float32))
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        assert z["phi"].shape == (2, 3)
    io.write_parquet(tmp_path / "t.parquet", pd.DataFrame({"a": [1, 2]}, index=[5, 6]))
    assert pd.read_parquet(tmp_path / "t.parquet").to_dict("list") == {"a": [1, 2]}
    io.write_text(tmp_path / "sub" / "r.md", "hi\n")  # parents are created
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "keep.npy", "r.md", "s.npz", "sub", "t.parquet"]


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "x.txt"
    io.write_text(target, "old")
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["x.txt"]


def test_files_follow_the_umask(tmp_path):
    io._file_mode.cache_clear()
    old = os.umask(0o027)
    try:
        io._file_mode.cache_clear()
        path = io.write_text(tmp_path / "shared.txt", "x")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640  # not mkstemp's 0600
    finally:
        os.umask(old)
        io._file_mode.cache_clear()
