"""polmap.io: every format opened lazily with exact values, real detector files, every bad input."""

from __future__ import annotations

import argparse
import io
import json
import sys
import types
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

import data_factories as F
from polmap.io.dataset import Dataset4D, DatasetError
from polmap.io import Candidate, list_4d_datasets, open_dataset, read_ground_truth
from polmap.io._common import NavReshaped


def assert_same(ds: Dataset4D, a: np.ndarray) -> None:
    """Exact equality with the source array through every access path."""
    assert ds.shape == a.shape
    assert ds.dtype == a.dtype.newbyteorder("=")
    assert ds.dtype.byteorder in ("=", "|")
    R, C = a.shape[:2]
    for r in range(R):
        for c in range(C):
            p = ds.pattern(r, c)
            assert p.dtype.byteorder in ("=", "|")
            np.testing.assert_array_equal(p, a[r, c])
    np.testing.assert_array_equal(ds.block(slice(1, R), slice(0, C, 2)), a[1:R, 0:C:2])
    pos = np.array([[R - 1, C - 1], [0, 0], [R // 2, 1]])
    np.testing.assert_array_equal(ds.patterns_at(pos), a[pos[:, 0], pos[:, 1]])
    full = ds.to_array()
    assert full.dtype.byteorder in ("=", "|")
    np.testing.assert_array_equal(full, a)


@pytest.fixture
def cube() -> np.ndarray:
    return F.make_cube((3, 4, 8, 10), np.uint16)


# ================================================================ HDF5
def test_plain_hdf5_is_lazy_and_exact(tmp_path, cube):
    p = F.write_h5(tmp_path / "plain.h5", {"/entry/scan": cube})
    ds = open_dataset(p)
    assert isinstance(ds._array, h5py.Dataset)
    assert ds.dataset_path == "/entry/scan"
    assert ds.source == str(p.resolve())
    assert_same(ds, cube)
    h5 = ds._array
    ds.close()
    assert not h5.id.valid  # the file handle is released


def test_hdf5_chunked_big_endian(tmp_path, cube):
    a = cube.astype(">u2")
    p = F.write_h5(tmp_path / "be.hdf5", {"/data": a}, chunks=True)
    with open_dataset(p) as ds:
        assert ds.dtype == np.dtype("uint16")
        assert_same(ds, cube)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint32, np.int16, np.float32, np.float64])
def test_hdf5_numeric_types(tmp_path, dtype):
    a = F.make_cube((2, 3, 5, 6), dtype)
    with open_dataset(F.write_h5(tmp_path / "t.h5", {"/d": a})) as ds:
        assert_same(ds, a)


def test_ambiguous_hdf5_lists_candidates_and_dataset_path_chooses(tmp_path, cube):
    other = F.make_cube((2, 2, 8, 8), np.float32, seed=3)
    p = F.write_h5(tmp_path / "amb.h5", {"/a/first": cube, "/b/second": other, "/nav": np.zeros((3, 4))})
    with pytest.raises(DatasetError) as e:
        open_dataset(p)
    msg = str(e.value)
    assert "amb.h5" in msg and "found 2" in msg
    assert "/a/first (3, 4, 8, 10) uint16" in msg and "/b/second (2, 2, 8, 8) float32" in msg
    assert list_4d_datasets(p) == [
        Candidate("/a/first", (3, 4, 8, 10), "uint16"),
        Candidate("/b/second", (2, 2, 8, 8), "float32"),
    ]
    with open_dataset(p, dataset_path="b/second") as ds:
        assert ds.dataset_path == "/b/second"
        assert_same(ds, other)


def test_missing_dataset_path_lists_candidates(tmp_path, cube):
    p = F.write_h5(tmp_path / "one.h5", {"/data": cube})
    with pytest.raises(DatasetError, match=r"one\.h5.*'/nope' does not exist.*/data \(3, 4, 8, 10\) uint16"):
        open_dataset(p, dataset_path="/nope")


@pytest.mark.parametrize(
    "units, expect",
    [
        (("nm", "mrad"), (0.5, "nm", 0.25, "mrad")),
        (("A", "A^-1"), (0.5, "A", 0.25, "1/A")),
        (("pixels", "pixels"), (None, "px", None, "px")),
    ],
)
def test_py4dstem_emd_calibration(tmp_path, cube, units, expect):
    p = F.write_emd(tmp_path / "cube.emd", cube, r_step=0.5, r_units=units[0], q_step=0.25, q_units=units[1])
    with open_dataset(p) as ds:
        assert isinstance(ds._array, h5py.Dataset)
        assert ds.metadata["format"] == "py4DSTEM EMD 1.0"
        c = ds.calibration
        assert (c.real_step, c.real_units, c.reciprocal_step, c.reciprocal_units) == expect
        assert_same(ds, cube)


def test_polmap_simulated_file(tmp_path, cube):
    lm = (np.arange(12).reshape(3, 4) % 5).astype(np.int16)
    p = F.write_polmap_sim(tmp_path / "sim.h5", cube, label_map=lm, metadata={"seed": 7, "preset": "stripes"})
    with open_dataset(p) as ds:
        c = ds.calibration
        assert (c.real_step, c.real_units, c.reciprocal_step, c.reciprocal_units) == (0.4, "nm", 0.5, "mrad")
        assert (c.beam_energy_kev, c.convergence_mrad) == (300.0, 2.1)
        assert ds.metadata["format"] == "polmap simulation"
        assert ds.metadata["simulation"] == {"seed": 7, "preset": "stripes"}
        gt = ds.ground_truth
        np.testing.assert_array_equal(gt.label_map, lm)
        assert gt.class_names == ["none", "+x", "-x", "+y", "-y"]
        assert gt.class_colors[0] == "#808080"
        assert gt.wall_mask.dtype == bool and gt.wall_mask[:, 2].all() and gt.wall_mask.sum() == 3
        assert gt.extra["polarization"].shape == (3, 4, 2)
        assert gt.extra["thickness_nm"][0, 0] == pytest.approx(20.0)
        assert_same(ds, cube)


def test_hdf5_3d_stack_with_scan_shape_stays_lazy(tmp_path, cube):
    stack = cube.reshape(12, 8, 10)
    p = F.write_h5(tmp_path / "stack.h5", {"/frames": stack})
    with pytest.raises(DatasetError, match=r"stack\.h5.*found none.*/frames \(12, 8, 10\).*scan_shape"):
        open_dataset(p)
    with open_dataset(p, scan_shape=(3, 4)) as ds:
        assert isinstance(ds._array, NavReshaped)
        assert_same(ds, cube)
        rows = [r for sl, b in ds.iter_chunks(max_bytes=1) for r in range(sl.start, sl.stop)]
        assert rows == [0, 1, 2]
    with open_dataset(p, dataset_path="/frames", scan_shape=(4, 3)) as ds:
        assert_same(ds, stack.reshape(4, 3, 8, 10))


# ================================================================ NumPy
def test_npy_memmap(tmp_path, cube):
    p = F.write_npy(tmp_path / "c.npy", cube)
    with open_dataset(p) as ds:
        assert isinstance(ds._array, np.memmap)
        assert_same(ds, cube)


@pytest.mark.parametrize("order", ["C", "F"])
def test_npy_big_endian_float_and_fortran(tmp_path, order):
    a = F.make_cube((2, 3, 6, 5), np.float32).astype(">f4")
    a = np.asfortranarray(a) if order == "F" else a
    with open_dataset(F.write_npy(tmp_path / "be.npy", a)) as ds:
        assert ds.dtype == np.dtype("float32")
        assert_same(ds, np.ascontiguousarray(a))


def test_npz_uncompressed_is_mapped_compressed_is_loaded(tmp_path, cube):
    p = F.write_npz(tmp_path / "u.npz", {"scan": cube, "mask": np.ones((8, 10), bool)})
    with open_dataset(p) as ds:
        assert isinstance(ds._array, np.memmap) and ds.dataset_path == "scan"
        assert_same(ds, cube)
    q = F.write_npz(tmp_path / "c.npz", {"scan": cube}, compressed=True)
    with open_dataset(q) as ds:
        assert "loaded_into_memory" in ds.metadata
        assert_same(ds, cube)


def test_npz_ambiguous_and_choice(tmp_path, cube):
    other = cube[:2] + 1
    p = F.write_npz(tmp_path / "two.npz", {"a": cube, "b": other})
    with pytest.raises(DatasetError, match=r"two\.npz.*found 2: a \(3, 4, 8, 10\) uint16, b \(2, 4, 8, 10\) uint16"):
        open_dataset(p)
    assert [c.path for c in list_4d_datasets(p)] == ["a", "b"]
    with open_dataset(p, dataset_path="b") as ds:
        assert_same(ds, other)
    with pytest.raises(DatasetError, match=r"'c' is not an array.*a \(3, 4, 8, 10\)"):
        open_dataset(p, dataset_path="c")


# ================================================================ EMPAD
def test_empad_square_scan_from_size_drops_footer(tmp_path):
    a = F.make_cube((3, 3, 128, 128), np.float32)
    p = F.write_empad_raw(tmp_path / "scan.raw", a, footer_value=-7.0)
    assert p.stat().st_size == 9 * F.EMPAD_FRAME_BYTES
    with open_dataset(p) as ds:
        assert isinstance(ds._array, np.memmap)
        assert ds.detector_shape == (128, 128) and ds.dtype == np.float32
        assert (ds.to_array() != -7.0).all()
        assert_same(ds, a)


def test_empad_scan_shape_from_name_or_argument(tmp_path):
    a = F.make_cube((2, 3, 128, 128), np.float32)
    p = F.write_empad_raw(tmp_path / "scan_x3_y2.raw", a)
    with open_dataset(p) as ds:
        assert_same(ds, a)
    q = F.write_empad_raw(tmp_path / "other.raw", a)
    with pytest.raises(DatasetError, match=r"other\.raw.*found 3-D.*stack of 6 patterns.*scan_shape"):
        open_dataset(q)
    with open_dataset(q, scan_shape=(2, 3)) as ds:
        assert isinstance(ds._array, np.memmap)
        assert_same(ds, a)


def test_empad_scan_shape_from_xml_sidecar(tmp_path):
    a = F.make_cube((2, 3, 128, 128), np.float32)
    p = F.write_empad_raw(tmp_path / "acq.raw", a)
    F.write_empad_xml(tmp_path / "acq.xml", "acq.raw", (2, 3))
    F.write_empad_xml(tmp_path / "other.xml", "another.raw", (3, 2))  # names a different .raw: ignored
    with open_dataset(p) as ds:
        assert ds.metadata["scan_shape_source"] == "scan shape from acq.xml"
        assert_same(ds, a)


# ================================================================ Merlin .mib
@pytest.mark.parametrize("kind, dtype", [("U08", np.uint8), ("U16", np.uint16), ("U32", np.uint32)])
def test_mib_with_hdr(tmp_path, kind, dtype):
    a = F.make_cube((3, 4, 16, 12), dtype)
    p = F.write_mib(tmp_path / "acq.mib", a, kind=kind)
    with open_dataset(p) as ds:
        assert isinstance(ds._array, np.memmap)
        assert ds.metadata["format"] == "Merlin MIB" and ds.metadata["hdr_file"] == "acq.hdr"
        assert_same(ds, a)
    with open_dataset(p.with_suffix(".hdr")) as ds:  # the header opens its data file
        assert_same(ds, a)
    with open_dataset(p, flip_mib=False) as ds:
        np.testing.assert_array_equal(ds.pattern(1, 2), a[1, 2, ::-1])


def test_mib_scan_shape_from_timestamps_without_hdr(tmp_path):
    a = F.make_cube((3, 5, 16, 16), np.uint16)
    p = F.write_mib(tmp_path / "nohdr.mib", a, hdr=False)
    with open_dataset(p) as ds:
        assert ds.metadata["hdr_file"] is None
        assert_same(ds, a)
    with open_dataset(p, scan_shape=(5, 3)) as ds:
        assert_same(ds, a.reshape(5, 3, 16, 16))


# ================================================================ .blo / .dm4
def test_blockfile(tmp_path):
    a = F.make_cube((3, 2, 16, 16), np.uint8)
    p = F.write_blo(tmp_path / "x.blo", a, scan_step_nm=1.5)
    with open_dataset(p) as ds:
        assert isinstance(ds._array, np.memmap)
        assert ds.calibration.real_step == pytest.approx(1.5) and ds.calibration.real_units == "nm"
        assert_same(ds, a)


def test_dm4_through_py4dstem(tmp_path, cube):
    p = F.write_dm4(tmp_path / "x.dm4", cube, r_step=2.0, r_units="nm", q_step=0.5, q_units="1/nm")
    with open_dataset(p) as ds:
        assert isinstance(ds._array, np.memmap)
        c = ds.calibration
        assert (c.real_step, c.real_units) == (2.0, "nm")
        assert c.reciprocal_step == pytest.approx(0.05) and c.reciprocal_units == "1/A"  # 0.5 1/nm
        assert_same(ds, cube)


def test_dm4_writer_agrees_with_rosettasciio(tmp_path, cube):
    # The factory's DM4 writer is checked against a reader that shares no code with py4DSTEM/ncempy.
    from rsciio.digitalmicrograph import file_reader

    p = F.write_dm4(tmp_path / "x.dm4", cube)
    np.testing.assert_array_equal(file_reader(str(p))[0]["data"], cube)


# ================================================================ .zip, uploads, arrays, demo
def test_zip_of_mixed_members(tmp_path, cube):
    d = tmp_path / "src"
    d.mkdir()
    h5 = F.write_h5(d / "a.h5", {"/data": cube})
    mib = F.write_mib(d / "b.mib", cube[:2])
    z = F.write_zip(tmp_path / "both.zip", [h5, mib, mib.with_suffix(".hdr")])
    with pytest.raises(DatasetError, match=r"both\.zip.*found 2: a\.h5 \(\d+ bytes\), b\.mib"):
        open_dataset(z)
    assert list_4d_datasets(z) == [
        Candidate("a.h5:/data", (3, 4, 8, 10), "uint16"),
        Candidate("b.mib", (2, 4, 8, 10), ">u2"),
    ]
    ds = open_dataset(z, dataset_path="b")
    tmp = Path(ds._array.filename).parent
    assert ds.dataset_path == "b.mib" and ds.source == str(z.resolve())
    assert_same(ds, cube[:2])
    ds.close()
    assert not tmp.exists()  # extracted files go with close()
    with open_dataset(z, dataset_path="a.h5:/data") as ds:
        assert_same(ds, cube)


def test_upload_bytes_hdf5_npy_blo_without_temp_files(tmp_path, cube):
    h5 = F.write_h5(tmp_path / "u.h5", {"/data": cube})
    with open_dataset(h5.read_bytes(), filename="u.h5") as ds:
        assert isinstance(ds._array, h5py.Dataset)
        assert ds.source == "upload:u.h5"
        assert_same(ds, cube)
    npy = F.write_npy(tmp_path / "u.npy", cube)
    raw = npy.read_bytes()
    with open_dataset(raw, filename="u.npy") as ds:
        assert not ds._array.flags.owndata  # a view of the upload, not a copy
        assert_same(ds, cube)
    with open_dataset(io.BytesIO(raw)) as ds:  # no name: the format is sniffed
        assert_same(ds, cube)
    a8 = F.make_cube((3, 2, 16, 16), np.uint8)
    blo = F.write_blo(tmp_path / "u.blo", a8)
    with open_dataset(io.BytesIO(blo.read_bytes()), filename="u.blo") as ds:
        assert_same(ds, a8)


def test_upload_dm4_bytes(tmp_path, cube):
    p = F.write_dm4(tmp_path / "up.dm4", cube)
    with open_dataset(io.BytesIO(p.read_bytes()), filename="up.dm4") as ds:
        assert ds.source == "upload:up.dm4" and ds.calibration.real_step == 2.0
        assert_same(ds, cube)


def test_upload_mib_uses_a_temp_file_removed_on_close(tmp_path):
    a = F.make_cube((2, 3, 16, 16), np.uint16)
    p = F.write_mib(tmp_path / "up.mib", a, hdr=False)
    ds = open_dataset(p.read_bytes(), filename="up.mib")
    tmp_file = Path(ds._array.filename)
    assert tmp_file.exists() and tmp_file.parent != tmp_path
    assert_same(ds, a)
    ds.close()
    assert not tmp_file.parent.exists()


def test_array_sources(cube):
    with open_dataset(cube) as ds:
        assert ds.source == "array:array"
        assert_same(ds, cube)
    stack = cube.reshape(12, 8, 10)
    ds = open_dataset(stack, scan_shape=(3, 4), filename="mine")
    assert ds.name == "mine" and np.shares_memory(ds._array, stack)
    assert_same(ds, cube)


def test_demo_opens_the_simulated_file(tmp_path, cube, monkeypatch):
    p = F.write_polmap_sim(tmp_path / "demo.h5", cube)
    fake = types.ModuleType("polmap.simulate")
    fake.demo_path = lambda: p
    monkeypatch.setitem(sys.modules, "polmap.simulate", fake)
    with open_dataset("demo") as ds:
        assert ds.source == "demo" and ds.metadata["demo"] is True
        assert ds.ground_truth is not None
        assert_same(ds, cube)


# ================================================================ real detector files
def _mib_frames_by_hand(data: bytes, rows: int, cols: int, head: int = 384) -> np.ndarray:
    # Independent of rosettasciio: fixed-size header + uint8 pixels per frame, rows stored bottom-up.
    step = head + rows * cols
    n = len(data) // step
    frames = [np.frombuffer(data, np.uint8, rows * cols, k * step + head).reshape(rows, cols)[::-1] for k in range(n)]
    return np.stack(frames)


@pytest.mark.parametrize(
    "member, shape",
    [("001_4x2_6bit.mib", (2, 4, 256, 256)), ("002_4x2_6bit_roi128.mib", (2, 4, 128, 256))],
)
def test_real_merlin_acquisitions(shared_real, member, shape):
    z = shared_real / "Merlin_navigation4x2_ROI.zip"
    with zipfile.ZipFile(z) as zf:
        expected = _mib_frames_by_hand(zf.read(member), *shape[2:]).reshape(shape)
    with open_dataset(z, dataset_path=member) as ds:
        assert ds.shape == shape and ds.dtype == np.uint8
        assert isinstance(ds._array, np.memmap)
        assert ds.metadata["exposure_ms"] == pytest.approx(100.0)
        assert int(ds.metadata["hdr"]["Frames in Acquisition (Number)"]) == 8
        assert expected.max() > 0  # the check compares real counts, not zeros
        assert_same(ds, expected)


def test_real_merlin_zip_needs_a_choice(shared_real):
    z = shared_real / "Merlin_navigation4x2_ROI.zip"
    with pytest.raises(DatasetError, match=r"Merlin_navigation4x2_ROI\.zip.*found 2.*001_4x2_6bit\.mib.*002_4x2_6bit_roi128\.mib"):
        open_dataset(z)
    assert list_4d_datasets(z) == [
        Candidate("001_4x2_6bit.mib", (2, 4, 256, 256), "uint8"),
        Candidate("002_4x2_6bit_roi128.mib", (2, 4, 128, 256), "uint8"),
    ]


def test_real_merlin_agrees_with_rosettasciio(shared_real, tmp_path):
    from rsciio.quantumdetector import file_reader

    with zipfile.ZipFile(shared_real / "Merlin_navigation4x2_ROI.zip") as zf:
        zf.extractall(tmp_path)
    for name in ("001_4x2_6bit.mib", "002_4x2_6bit_roi128.mib"):
        ref = file_reader(str(tmp_path / name))[0]["data"]
        with open_dataset(tmp_path / name) as ds:
            assert_same(ds, np.asarray(ref))


def test_real_blockfile(shared_real):
    from rsciio.blockfile import file_reader

    p = shared_real / "blockfile_test1.blo"
    ref = file_reader(str(p))[0]
    with open_dataset(p) as ds:
        assert ds.shape == (3, 2, 144, 144) and ds.dtype == np.uint8
        assert isinstance(ds._array, np.memmap)
        assert ds.calibration.real_step == pytest.approx(12.8) and ds.calibration.real_units == "nm"
        assert ds.calibration.beam_energy_kev == pytest.approx(200.0)
        assert ds.metadata["blockfile_header"]["DP_SZ"] == 144
        assert ref["data"].max() > 0
        assert_same(ds, ref["data"])


# ================================================================ fingerprint
def test_fingerprint_same_content_same_print_across_formats(tmp_path, cube):
    prints = set()
    for ds in (
        open_dataset(cube),
        open_dataset(F.write_npy(tmp_path / "f.npy", cube)),
        open_dataset(F.write_h5(tmp_path / "f.h5", {"/data": cube.astype(">u2")})),
        open_dataset(F.write_mib(tmp_path / "f.mib", cube, kind="U16")),
        open_dataset(F.write_dm4(tmp_path / "f.dm4", cube)),
    ):
        with ds:
            prints.add(ds.fingerprint)
    assert len(prints) == 1


def test_fingerprint_changes_with_one_pattern(tmp_path, cube):
    base = open_dataset(F.write_npy(tmp_path / "a.npy", cube)).fingerprint
    for r, c in [(0, 0), (2, 3), (1, 1)]:
        changed = cube.copy()
        changed[r, c, 4, 4] += 1
        assert open_dataset(F.write_npy(tmp_path / f"b{r}{c}.npy", changed)).fingerprint != base


# ================================================================ bad input: one test per case
def test_error_file_not_found(tmp_path):
    p = tmp_path / "missing.h5"
    with pytest.raises(DatasetError, match=r"missing\.h5: expected a 4D-STEM data file; found nothing.*not found"):
        open_dataset(p)


def test_error_directory(tmp_path):
    with pytest.raises(DatasetError, match=r"expected a file; found a directory"):
        open_dataset(tmp_path)


def test_error_3d_stack_suggests_scan_shape(tmp_path):
    p = F.write_npy(tmp_path / "stack.npy", np.zeros((12, 8, 8), np.uint16))
    with pytest.raises(DatasetError) as e:
        open_dataset(p)
    msg = str(e.value)
    assert "stack.npy" in msg and "expected a 4-D scan" in msg and "found 3-D data of shape (12, 8, 8)" in msg
    assert "scan_shape" in msg and "(3, 4)" in msg


def test_error_2d(tmp_path):
    with pytest.raises(DatasetError, match=r"img\.npy: expected a 4-D scan.*found 2-D data of shape \(8, 8\)"):
        open_dataset(F.write_npy(tmp_path / "img.npy", np.zeros((8, 8))))


def test_error_empty_array(tmp_path):
    p = F.write_npy(tmp_path / "empty.npy", np.zeros((0, 4, 8, 8), np.uint16))
    with pytest.raises(DatasetError, match=r"empty\.npy: expected a non-empty scan; found an empty array of shape \(0, 4, 8, 8\)"):
        open_dataset(p)


def test_error_empty_file(tmp_path):
    p = tmp_path / "zero.h5"
    p.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"zero\.h5: expected \.h5 data; found an empty file \(0 bytes\)"):
        open_dataset(p)


def test_error_single_position_scan(tmp_path):
    p = F.write_h5(tmp_path / "one.h5", {"/data": np.ones((1, 1, 8, 8), np.uint16)})
    with pytest.raises(DatasetError, match=r"one\.h5: expected a scan of at least 2 probe positions; found a single position"):
        open_dataset(p)


@pytest.mark.parametrize(
    "array, found",
    [
        (np.full((2, 2, 4, 4), "x"), "text strings"),
        (np.zeros((2, 2, 4, 4), bool), "boolean"),
        (np.zeros((2, 2, 4, 4), "S3"), "byte strings"),
    ],
)
def test_error_non_numeric(tmp_path, array, found):
    p = F.write_npy(tmp_path / "bad.npy", array)
    with pytest.raises(DatasetError, match=rf"bad\.npy: expected numeric detector counts.*found {found}"):
        open_dataset(p)


def test_error_object_array(tmp_path):
    p = tmp_path / "obj.npy"
    np.save(p, np.empty((2, 2, 4, 4), object), allow_pickle=True)
    with pytest.raises(DatasetError, match=r"obj\.npy: expected numeric detector counts; found Python objects"):
        open_dataset(p)


def test_error_complex(tmp_path):
    p = F.write_h5(tmp_path / "cplx.h5", {"/data": np.ones((2, 2, 4, 4), np.complex64)})
    with pytest.raises(DatasetError, match=r"cplx\.h5: expected real-valued counts.*found complex data \(complex64\)"):
        open_dataset(p)


@pytest.mark.parametrize("bad, word", [(np.nan, "1 NaN and 0 Inf"), (np.inf, "0 NaN and 1 Inf")])
def test_error_nan_inf_in_sampled_patterns(tmp_path, bad, word):
    a = F.make_cube((4, 5, 6, 6), np.float32)
    a[3, 4, 2, 2] = bad  # the last pattern is always among the sampled ones
    p = F.write_npy(tmp_path / "nan.npy", a)
    with pytest.raises(DatasetError) as e:
        open_dataset(p)
    msg = str(e.value)
    assert "nan.npy" in msg and "expected finite intensities" in msg and word in msg
    assert "pattern (3, 4)" in msg and "checked 16 evenly spaced patterns of 20" in msg
    with open_dataset(p, check_finite=False) as ds:
        assert ds.metadata["finite_check"].startswith("skipped")


def test_error_truncated_hdf5(tmp_path, cube):
    p = F.truncate(F.write_h5(tmp_path / "cut.h5", {"/data": cube}), 0.5)
    with pytest.raises(DatasetError, match=r"cut\.h5: expected a complete HDF5 file of \d+ bytes.*found \d+ bytes: the file is truncated"):
        open_dataset(p)


def test_error_not_hdf5_content(tmp_path):
    p = tmp_path / "fake.h5"
    p.write_bytes(b"hello, this is text" * 10)
    with pytest.raises(DatasetError, match=r"fake\.h5: expected an HDF5 file.*found b'hello"):
        open_dataset(p)


def test_error_truncated_npy(tmp_path, cube):
    p = F.write_npy(tmp_path / "cut.npy", cube)
    full = p.stat().st_size
    F.truncate(p, full - 100)
    with pytest.raises(DatasetError, match=rf"cut\.npy: expected {full} bytes .*shape \(3, 4, 8, 10\).*found {full - 100} bytes: the file is truncated"):
        open_dataset(p)


def test_error_truncated_mib_against_hdr(tmp_path):
    a = F.make_cube((3, 4, 16, 16), np.uint16)
    p = F.write_mib(tmp_path / "cut.mib", a)
    frame = 384 + 16 * 16 * 2
    F.truncate(p, frame * 7 + 100)
    with pytest.raises(DatasetError) as e:
        open_dataset(p)
    msg = str(e.value)
    assert "cut.mib" in msg and f"expected 12 {frame}-byte frames" in msg and f"= {12 * frame} bytes" in msg
    assert "cut.hdr" in msg and f"found {frame * 7 + 100} bytes, 7 whole frames" in msg and "truncated" in msg


def test_error_truncated_mib_without_hdr(tmp_path):
    p = F.write_mib(tmp_path / "cut.mib", F.make_cube((2, 2, 16, 16), np.uint16), hdr=False)
    F.truncate(p, p.stat().st_size - 10)
    with pytest.raises(DatasetError, match=r"cut\.mib: expected a whole number of 896-byte frames.*3 frames \+ 886 bytes"):
        open_dataset(p)


def test_error_raw_r64_mib(tmp_path):
    p = F.write_mib(tmp_path / "r64.mib", F.make_cube((2, 2, 16, 16), np.uint16))
    p.write_bytes(p.read_bytes().replace(b",U16,", b",R64,"))
    with pytest.raises(DatasetError, match=r"r64\.mib: expected processed Merlin data.*found RAW \(R64\)"):
        open_dataset(p)


def test_error_mib_extension_wrong_content(tmp_path):
    p = tmp_path / "junk.mib"
    p.write_bytes(b"\x00" * 1000)
    with pytest.raises(DatasetError, match=r"junk\.mib: expected a Merlin \.mib file.*found b'\\x00"):
        open_dataset(p)


def test_error_truncated_blockfile(tmp_path):
    p = F.write_blo(tmp_path / "cut.blo", F.make_cube((3, 2, 16, 16), np.uint8))
    F.truncate(p, p.stat().st_size - 300)
    with pytest.raises(DatasetError, match=r"cut\.blo: expected 3 x 2 patterns of 16 x 16 bytes.*found \d+ bytes \(4 whole patterns\): the file is truncated"):
        open_dataset(p)


def test_error_truncated_empad(tmp_path):
    p = F.write_empad_raw(tmp_path / "cut.raw", np.zeros((2, 2, 128, 128), np.float32))
    F.truncate(p, 3 * F.EMPAD_FRAME_BYTES + 5)
    with pytest.raises(DatasetError, match=r"cut\.raw: expected an EMPAD \.raw file.*66560 bytes.*found 199685 bytes = 3 frames \+ 5 bytes"):
        open_dataset(p)


def test_error_truncated_dm4(tmp_path, cube):
    p = F.write_dm4(tmp_path / "cut.dm4", cube)
    full = p.stat().st_size
    F.truncate(p, 0.6)
    with pytest.raises(DatasetError, match=rf"cut\.dm4: expected at least {full - 8} bytes .*tag tree\); found {int(full * 0.6)} bytes: the file is truncated"):
        open_dataset(p)


def test_error_dm_extension_wrong_content(tmp_path):
    p = tmp_path / "junk.dm3"
    p.write_bytes(b"GIF89a" + b"\x00" * 100)
    with pytest.raises(DatasetError, match=r"junk\.dm3: expected a Gatan DigitalMicrograph file \(version 3 or 4.*found b'GIF89a"):
        open_dataset(p)


def test_error_corrupt_zip(tmp_path, cube):
    p = F.truncate(F.write_npz(tmp_path / "cut.npz", {"a": cube}), 0.5)
    with pytest.raises(DatasetError, match=r"cut\.npz: expected a ZIP archive.*found a corrupt or truncated one"):
        open_dataset(p)


def test_error_unknown_extension_lists_supported(tmp_path):
    p = tmp_path / "scan.xyz"
    p.write_bytes(b"not a known format")
    with pytest.raises(DatasetError) as e:
        open_dataset(p)
    msg = str(e.value)
    assert "scan.xyz: unknown format .xyz" in msg
    for fmt in (".h5", ".emd", ".npy", ".npz", ".mib", ".raw", ".blo", ".dm4", ".zip"):
        assert fmt in msg
    assert "starts with b'not a known form'" in msg


def test_unknown_extension_with_known_content_is_sniffed(tmp_path, cube):
    p = tmp_path / "scan.dat"
    p.write_bytes(F.write_npy(tmp_path / "x.npy", cube).read_bytes())
    with open_dataset(p) as ds:
        assert_same(ds, cube)


def test_error_dataset_path_on_single_array_format(tmp_path, cube):
    with pytest.raises(DatasetError, match=r"c\.npy: dataset_path '/data' given, but a npy file holds a single array"):
        open_dataset(F.write_npy(tmp_path / "c.npy", cube), dataset_path="/data")


def test_error_scan_shape_mismatch(tmp_path, cube):
    with pytest.raises(DatasetError, match=r"c\.npy: scan_shape \(5, 5\) needs 25 patterns; found 12 patterns"):
        open_dataset(F.write_npy(tmp_path / "c.npy", cube), scan_shape=(5, 5))


def test_error_zip_member_not_found(tmp_path, cube):
    z = F.write_zip(tmp_path / "z.zip", [F.write_npy(tmp_path / "only.npy", cube)])
    with pytest.raises(DatasetError, match=r"z\.zip: dataset_path 'other' names no data file.*only\.npy"):
        open_dataset(z, dataset_path="other")
    with open_dataset(z) as ds:  # one member: no choice needed
        assert_same(ds, cube)


def test_error_unknown_option(cube):
    with pytest.raises(TypeError, match="unknown options"):
        open_dataset(cube, lazy=False)


# ================================================================ ground truth
def test_ground_truth_npy_with_and_without_sidecar(tmp_path):
    lm = np.array([[0, 1, -1], [2, 2, 0]], np.int16)
    p = F.write_npy(tmp_path / "gt.npy", lm)
    gt = read_ground_truth(p)
    np.testing.assert_array_equal(gt.label_map, lm)
    assert gt.class_names == ["class 0", "class 1", "class 2"] and gt.class_colors is None
    (tmp_path / "gt.json").write_text(json.dumps({"class_names": ["na", "v", "h"], "class_colors": ["#000000", "#ff0000", "#00ff00"]}))
    gt = read_ground_truth(str(p))
    assert gt.class_names == ["na", "v", "h"] and gt.class_colors[1] == "#ff0000"


def test_ground_truth_hdf5_path_spec_and_attrs(tmp_path):
    lm = np.array([[0, 1], [1, 0]], np.int32)
    p = tmp_path / "labels.h5"
    with h5py.File(p, "w") as f:
        d = f.create_dataset("maps/a", data=lm)
        d.attrs["class_names"] = json.dumps(["up", "down"])
        e = f.create_dataset("maps/b", data=lm)
        e.attrs["class_names"] = np.array([b"left", b"right"])
    gt = read_ground_truth(f"{p}:/maps/a")
    np.testing.assert_array_equal(gt.label_map, lm)
    assert gt.class_names == ["up", "down"]
    assert read_ground_truth(p, dataset_path="maps/b").class_names == ["left", "right"]
    with pytest.raises(DatasetError, match=r"labels\.h5: expected one 2-D integer label map; found 2"):
        read_ground_truth(p)
    with pytest.raises(DatasetError, match=r"labels\.h5: label map '/maps/c' does not exist.*/maps/a \(2, 2\)"):
        read_ground_truth(f"{p}:/maps/c")


def test_ground_truth_from_simulated_file(tmp_path, cube):
    lm = (np.arange(12).reshape(3, 4) % 5).astype(np.int16)
    p = F.write_polmap_sim(tmp_path / "sim.h5", cube, label_map=lm)
    gt = read_ground_truth(p)
    np.testing.assert_array_equal(gt.label_map, lm)
    assert gt.class_names[1] == "+x" and gt.wall_mask.shape == (3, 4) and "descan_px" in gt.extra
    gt2 = read_ground_truth(f"{p}:/ground_truth")
    np.testing.assert_array_equal(gt2.label_map, lm)


def test_ground_truth_npz(tmp_path):
    lm = np.array([[0, 1], [1, -1]], np.int64)
    p = F.write_npz(tmp_path / "gt.npz", {"label_map": lm, "class_names": np.array(["a", "b"])})
    gt = read_ground_truth(p)
    assert gt.class_names == ["a", "b"]
    np.testing.assert_array_equal(gt.label_map, lm)


@pytest.mark.parametrize(
    "lm, names, pattern",
    [
        (np.array([[0, 5]]), ["a", "b"], r"class index 5 but only 2 class names"),
        (np.zeros((2, 2, 2), int), None, r"expected a 2-D label map.*found 3-D"),
        (np.array([[0.5, 1.0]]), None, r"expected integer class indices; found non-integer"),
        (np.array([[-3, 1]]), None, r"expected class indices >= -1.*found -3"),
    ],
)
def test_ground_truth_bad_maps(tmp_path, lm, names, pattern):
    p = tmp_path / "bad.h5"
    with h5py.File(p, "w") as f:
        d = f.create_dataset("lm", data=lm)
        if names:
            d.attrs["class_names"] = json.dumps(names)
    with pytest.raises(DatasetError, match=rf"bad\.h5.*{pattern}"):
        read_ground_truth(f"{p}:/lm")


def test_ground_truth_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.npy: expected .*found nothing"):
        read_ground_truth(tmp_path / "nope.npy")


# ================================================================ CLI
def _cli(argv: list[str]) -> argparse.Namespace:
    from polmap.cli import info as cli_info

    parser = argparse.ArgumentParser(prog="polmap")
    cli_info.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_info_prints_summary(tmp_path, cube, capsys):
    p = F.write_emd(tmp_path / "c.emd", cube, r_step=0.5, r_units="nm", q_step=0.25, q_units="mrad")
    args = _cli(["info", str(p)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "scan shape:   3 x 4" in out and "detector:     8 x 10" in out
    assert "dtype:        uint16" in out and "scan step:    0.5 nm" in out and "pixel size:   0.25 mrad" in out
    with open_dataset(p) as ds:
        assert f"fingerprint:  {ds.fingerprint}" in out
    assert "* /cube_root/cube/data  (3, 4, 8, 10)  uint16" in out


def test_cli_info_json_and_choice(tmp_path, cube, capsys):
    p = F.write_h5(tmp_path / "amb.h5", {"/x": cube, "/y": cube[:2]})
    args = _cli(["info", str(p), "--dataset", "/y", "--json"])
    assert args.func(args) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["scan_shape"] == [2, 4] and info["dataset_path"] == "/y" and info["storage"] == "lazy: h5py.Dataset"
    assert [c["path"] for c in info["candidates"]] == ["/x", "/y"]


def test_cli_info_scan_shape_and_error(tmp_path, capsys, monkeypatch):
    from polmap import cli

    p = F.write_npy(tmp_path / "stack.npy", np.ones((6, 4, 4), np.uint8))
    args = _cli(["info", str(p), "--scan-shape", "2,3"])
    assert args.func(args) == 0
    assert "scan shape:   2 x 3" in capsys.readouterr().out
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["polmap.cli.info"])
    assert cli.main(["info", str(p)]) == 2
    err = capsys.readouterr().err
    assert "stack.npy" in err and "found 3-D data" in err and "scan_shape" in err
