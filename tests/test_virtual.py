"""polmap.process.virtual: virtual detectors, beam finding, COM maps against brute force."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from polmap.io.dataset import Dataset4D
from polmap.process.virtual import VirtualResult, compute_virtual, detector_masks, disk_centres, find_beam


def disk(shape: tuple[int, int], cy: float, cx: float, r: float, grad: tuple[float, float] = (0.0, 0.0), ss: int = 8) -> np.ndarray:
    """Anti-aliased uniform disk (supersampled ss x ss), optional linear intensity gradient inside."""
    h, w = shape
    o = (np.arange(ss) + 0.5) / ss - 0.5
    yy = (np.arange(h)[:, None] + o[None, :]).ravel()
    xx = (np.arange(w)[:, None] + o[None, :]).ravel()
    y, x = np.meshgrid(yy, xx, indexing="ij")
    val = ((y - cy) ** 2 + (x - cx) ** 2 <= r * r) * (1 + grad[0] * (y - cy) / r + grad[1] * (x - cx) / r)
    return val.reshape(h, ss, w, ss).mean(axis=(1, 3))


def brute_force(data: np.ndarray, centre, r_bf, r_in, r_out, extra=None):
    qr, qc = data.shape[2:]
    yy, xx = np.indices((qr, qc))
    d = np.hypot(yy - centre[0], xx - centre[1])
    f = data.astype(np.float64)
    tot = f.sum(axis=(2, 3))
    out = {
        "bright_field": (f * (d <= r_bf)).sum(axis=(2, 3)),
        "annular_dark_field": (f * ((d >= r_in) & (d < r_out))).sum(axis=(2, 3)),
        "total": tot,
        "com_row": (f * yy).sum(axis=(2, 3)) / tot - centre[0],
        "com_col": (f * xx).sum(axis=(2, 3)) / tot - centre[1],
        "mean": f.mean(axis=(0, 1)),
        "max": data.max(axis=(0, 1)),
    }
    for k, m in (extra or {}).items():
        out[k] = (f * m).sum(axis=(2, 3))
    return out


@pytest.fixture
def cube(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 4000, size=(7, 9, 16, 20), dtype=np.uint16)


def test_compute_virtual_matches_brute_force(cube: np.ndarray, rng: np.random.Generator) -> None:
    ds = Dataset4D.from_array(cube)
    custom = {"quadrant": np.zeros((16, 20), bool), "weights": rng.random((16, 20))}
    custom["quadrant"][:8, :10] = True
    centre, r_bf, r_in, r_out = (7.3, 9.6), 3.5, 5.0, 9.0
    res = compute_virtual(ds, centre=centre, bf_radius=r_bf, adf_inner=r_in, adf_outer=r_out, masks=custom)
    ref = brute_force(cube, centre, r_bf, r_in, r_out, custom)
    assert isinstance(res, VirtualResult) and not res.auto
    for name in ("bright_field", "annular_dark_field", "total", "com_row", "com_col"):
        np.testing.assert_allclose(getattr(res, name), ref[name], rtol=1e-5, atol=1e-5, err_msg=name)
    for name in custom:
        np.testing.assert_allclose(res.images[name], ref[name], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(res.mean_pattern, ref["mean"], rtol=1e-6)
    np.testing.assert_array_equal(res.max_pattern, ref["max"])
    assert res.max_pattern.dtype == np.uint16
    assert res.centre == centre and (res.bf_radius, res.adf_inner, res.adf_outer) == (r_bf, r_in, r_out)
    assert res.bright_field.shape == (7, 9)
    assert set(res.masks) == {"bright_field", "annular_dark_field", "quadrant", "weights"}


def test_chunk_size_does_not_change_results(cube: np.ndarray) -> None:
    ds = Dataset4D.from_array(cube)
    kw = dict(centre=(8.0, 9.0), bf_radius=4.0, adf_inner=5.0, adf_outer=8.0)
    big = compute_virtual(ds, **kw)
    row_bytes = 9 * 16 * 20 * 2
    small = compute_virtual(ds, max_bytes=row_bytes, **kw)  # one scan row per chunk
    odd = compute_virtual(ds, max_bytes=3 * row_bytes, **kw)  # 3,3,1 rows
    for other in (small, odd):
        for name in ("bright_field", "annular_dark_field", "com_row", "com_col", "total"):
            np.testing.assert_allclose(getattr(other, name), getattr(big, name), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(other.mean_pattern, big.mean_pattern, rtol=1e-12)
        np.testing.assert_array_equal(other.max_pattern, big.max_pattern)


def test_progress_reports_rows(cube: np.ndarray) -> None:
    seen: list[tuple[int, int]] = []
    compute_virtual(Dataset4D.from_array(cube), centre=(8, 10), bf_radius=3, max_bytes=2 * 9 * 16 * 20 * 2,
                    progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 7), (4, 7), (6, 7), (7, 7)]


def test_detector_masks_geometry() -> None:
    m = detector_masks((64, 64), (31.5, 31.5), 10.0, 15.0, 30.0)
    assert m["bright_field"].dtype == bool
    # Pixel counts approach the analytic areas.
    assert abs(m["bright_field"].sum() - np.pi * 100) / (np.pi * 100) < 0.03
    assert abs(m["annular_dark_field"].sum() - np.pi * (900 - 225)) / (np.pi * 675) < 0.02
    assert not (m["bright_field"] & m["annular_dark_field"]).any()
    with pytest.raises(ValueError):
        detector_masks((8, 8), (4, 4), 2, 5, 3)


@pytest.mark.parametrize("cy, cx, r", [(31.5, 31.5, 10.0), (28.3, 35.72, 7.5), (20.1, 40.9, 12.0)])
def test_find_beam_recovers_disk(cy: float, cx: float, r: float) -> None:
    pattern = 500 * disk((64, 64), cy, cx, r) + 3.0
    pattern[5, 5] = 1e5  # a hot pixel far from the disk must not attract it
    fy, fx, fr = find_beam(pattern)
    assert abs(fy - cy) < 0.02 and abs(fx - cx) < 0.02
    assert abs(fr - r) < 0.1


def test_disk_centre_ignores_intensity_gradient_but_com_does_not() -> None:
    cy, cx, r = 30.3, 33.6, 10.0
    flat = disk((64, 64), cy, cx, r)
    tilted = disk((64, 64), cy, cx, r, grad=(0.2, -0.2))  # fake Friedel asymmetry
    yy, xx = np.indices((64, 64))

    def com(p: np.ndarray) -> np.ndarray:
        return np.array([(p * yy).sum(), (p * xx).sum()]) / p.sum()

    c_flat = disk_centres(flat, (32, 32), r)
    c_tilt = disk_centres(tilted, (32, 32), r)
    assert np.all(np.abs(c_flat - [cy, cx]) < 0.02)
    assert np.all(np.abs(c_tilt - c_flat) < 0.01)
    # Analytic COM shift of a linear gradient g across a disk: g * r / 4 = 0.5 px.
    np.testing.assert_allclose(com(tilted) - com(flat), [0.5, -0.5], atol=0.01)


def test_disk_centre_ignores_unequal_neighbouring_disks() -> None:
    # CBED: +-g disks 1 px beyond the bright-field edge with unequal intensities
    # (dynamical Friedel asymmetry) must not pull the geometric centre.
    r, gap = 8.0, 1.0
    d = 2 * r + gap
    for cy, cx in [(40.0, 40.0), (39.3, 41.65)]:
        p = disk((80, 80), cy, cx, r)
        for (dy, dx), level in {(0, d): 0.5, (0, -d): 0.2, (d, 0): 0.35, (-d, 0): 0.6}.items():
            p += level * disk((80, 80), cy + dy, cx + dx, r)
        found = disk_centres(p, (40, 40), r, margin=3)
        assert np.all(np.abs(found - [cy, cx]) < 0.05), found - [cy, cx]


def test_auto_geometry_and_com_of_shifted_disks() -> None:
    shifts = np.array([[[0.0, 0.0], [0.7, -0.4]], [[-1.2, 0.3], [0.25, 1.5]]])
    data = np.zeros((2, 2, 48, 48), dtype=np.float32)
    for i in range(2):
        for j in range(2):
            data[i, j] = 1000 * disk((48, 48), 23.5 + shifts[i, j, 0], 23.5 + shifts[i, j, 1], 8.0)
    res = compute_virtual(Dataset4D.from_array(data), centre=(23.5, 23.5), bf_radius=8.0)
    # A uniform disk's intensity centre of mass is its geometric centre.
    np.testing.assert_allclose(res.com_row, shifts[..., 0], atol=5e-3)  # 8x8 supersampling error
    np.testing.assert_allclose(res.com_col, shifts[..., 1], atol=5e-3)
    auto = compute_virtual(Dataset4D.from_array(data))
    assert auto.auto
    # Found on the mean pattern (one chunk = the whole cube here): near the mean shift.
    assert abs(auto.centre[0] - 23.5 - shifts[..., 0].mean()) < 0.3
    assert abs(auto.centre[1] - 23.5 - shifts[..., 1].mean()) < 0.3
    assert 7.0 < auto.bf_radius < 9.0
    assert auto.adf_inner == pytest.approx(1.5 * auto.bf_radius)
    assert auto.adf_outer > auto.adf_inner


def test_bad_mask_shape_is_a_clear_error(cube: np.ndarray) -> None:
    with pytest.raises(ValueError, match="detector shape"):
        compute_virtual(Dataset4D.from_array(cube), centre=(8, 8), bf_radius=3, masks={"m": np.ones((4, 4))})
    with pytest.raises(ValueError, match="reserved"):
        compute_virtual(Dataset4D.from_array(cube), centre=(8, 8), bf_radius=3,
                        masks={"bright_field": np.ones((16, 20))})


def test_h5py_backed_equals_in_memory(cube: np.ndarray, tmp_path) -> None:
    path = tmp_path / "cube.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=cube, chunks=(1, 9, 16, 20))
    kw = dict(centre=(7.0, 10.0), bf_radius=3.0, adf_inner=4.0, adf_outer=8.0, max_bytes=2 * 9 * 16 * 20 * 2)
    with h5py.File(path, "r") as f:
        res = compute_virtual(Dataset4D(f["data"], source=str(path)), **kw)
    ref = compute_virtual(Dataset4D.from_array(cube), **kw)
    np.testing.assert_array_equal(res.bright_field, ref.bright_field)
    np.testing.assert_array_equal(res.max_pattern, ref.max_pattern)
