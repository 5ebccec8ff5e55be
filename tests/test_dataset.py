"""Dataset4D: lazy access, chunking, byte order, fingerprint, errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from polmap.io.dataset import Calibration, Dataset4D, DatasetError


def _cube(rng: np.random.Generator, shape=(5, 7, 6, 8), dtype=np.uint16) -> np.ndarray:
    return rng.integers(0, 1000, size=shape).astype(dtype)


def test_shapes_and_access(rng):
    a = _cube(rng)
    ds = Dataset4D.from_array(a, name="t")
    assert ds.scan_shape == (5, 7) and ds.detector_shape == (6, 8)
    assert ds.n_patterns == 35 and ds.nbytes == a.nbytes
    np.testing.assert_array_equal(ds.pattern(3, 4), a[3, 4])
    np.testing.assert_array_equal(ds.block(slice(1, 3), slice(2, 5)), a[1:3, 2:5])
    pos = np.array([[4, 6], [0, 0], [4, 1], [2, 3]])
    np.testing.assert_array_equal(ds.patterns_at(pos), a[pos[:, 0], pos[:, 1]])


def test_out_of_range_position_names_the_scan(rng):
    ds = Dataset4D.from_array(_cube(rng), name="scanA")
    with pytest.raises(IndexError, match=r"scanA.*\(row=5, col=0\).*\(5, 7\)"):
        ds.pattern(5, 0)


@pytest.mark.parametrize("max_bytes", [1, 6 * 8 * 2 * 7 * 2, 10**9])
def test_chunks_cover_scan_exactly(rng, max_bytes):
    a = _cube(rng)
    ds = Dataset4D.from_array(a)
    rows = []
    for sl, block in ds.iter_chunks(max_bytes=max_bytes):
        np.testing.assert_array_equal(block, a[sl])
        rows.extend(range(sl.start, sl.stop))
    assert rows == list(range(5))
    assert ds.chunk_rows(6 * 8 * 2 * 7 * 2) == 2


def test_big_endian_is_served_native(tmp_path, rng):
    a = _cube(rng).astype(">u2")
    path = tmp_path / "be.h5"
    with h5py.File(path, "w") as f:
        f["data"] = a
    f = h5py.File(path, "r")
    ds = Dataset4D(f["data"], source=str(path), closer=f.close)
    assert ds.dtype == np.dtype("=u2")
    p = ds.pattern(1, 2)
    assert p.dtype.byteorder in ("=", "<") and np.array_equal(p, a[1, 2])
    got = ds.patterns_at(np.array([[4, 6], [4, 0], [0, 3]]))
    np.testing.assert_array_equal(got, a[[4, 4, 0], [6, 0, 3]])
    ds.close()
    assert not f.id.valid


def test_fingerprint_tracks_content(rng):
    a = _cube(rng, shape=(20, 20, 4, 4))
    fp = Dataset4D.from_array(a).fingerprint
    assert fp == Dataset4D.from_array(a.copy()).fingerprint
    b = a.copy()
    b[0, 0, 0, 0] += 1  # the first pattern is always sampled
    assert Dataset4D.from_array(b).fingerprint != fp
    assert Dataset4D.from_array(a.astype(np.float32)).fingerprint != fp


def test_not_4d_is_rejected_with_shape():
    with pytest.raises(DatasetError, match=r"expected a 4-D scan.*found 3-D data of shape \(2, 3, 4\)"):
        Dataset4D(np.zeros((2, 3, 4)), source="x.npy")


def test_calibration_round_trip():
    c = Calibration(real_step=0.5, real_units="nm", reciprocal_step=0.8, reciprocal_units="mrad", beam_energy_kev=200)
    assert Calibration.from_dict(c.to_dict() | {"unknown": 1}) == c
    assert Calibration.from_dict(None) == Calibration()
