"""polmap.process.preprocess: analytic checks of every step and of the fitted pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from polmap.io.dataset import Dataset4D, DatasetError
from polmap.process.preprocess import (
    PreprocessConfig,
    Preprocessor,
    bin_patterns,
    find_hot_pixels,
    normalise_patterns,
    repair_hot_pixels,
    resize_patterns,
    scale_patterns,
    shift_patterns,
)
from polmap.process.virtual import disk_centres

RAW = dict(scaling="none", normalise="none", output_size=None, hot_pixel_repair=False)


def disk(shape: tuple[int, int], cy: float, cx: float, r: float, grad: tuple[float, float] = (0.0, 0.0), ss: int = 8) -> np.ndarray:
    """Anti-aliased uniform disk (supersampled ss x ss), optional linear intensity gradient inside."""
    h, w = shape
    o = (np.arange(ss) + 0.5) / ss - 0.5
    yy = (np.arange(h)[:, None] + o[None, :]).ravel()
    xx = (np.arange(w)[:, None] + o[None, :]).ravel()
    y, x = np.meshgrid(yy, xx, indexing="ij")
    val = ((y - cy) ** 2 + (x - cx) ** 2 <= r * r) * (1 + grad[0] * (y - cy) / r + grad[1] * (x - cx) / r)
    return val.reshape(h, ss, w, ss).mean(axis=(1, 3))


def disk_scan(centres: np.ndarray, q: int = 48, r: float = 8.0, level: float = 1000.0,
              grads: np.ndarray | None = None, background: float = 2.0) -> np.ndarray:
    """(R, C, q, q) float32 scan of disks at the given (R, C, 2) centres."""
    rows, cols = centres.shape[:2]
    out = np.empty((rows, cols, q, q), dtype=np.float32)
    for i in range(rows):
        for j in range(cols):
            g = (0.0, 0.0) if grads is None else tuple(grads[i, j])
            out[i, j] = level * disk((q, q), centres[i, j, 0], centres[i, j, 1], r, g) + background
    return out


# ------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------
def test_config_round_trip_key_and_validation() -> None:
    cfg = PreprocessConfig(bin_factor=2, crop_radius=16, centring="plane", boxing=5)
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert PreprocessConfig.from_dict(d) == cfg
    assert cfg.key() == PreprocessConfig.from_dict(d).key()
    assert cfg.key() != PreprocessConfig().key()
    assert PreprocessConfig(bin_factor=np.int64(2)).to_dict()["bin_factor"] == 2
    for bad in (dict(centring="middle"), dict(scaling="cube"), dict(normalise="l2"), dict(boxing=4),
                dict(bin_factor=0), dict(crop_radius=0), dict(output_size=2.5), dict(shift_method="spline")):
        with pytest.raises(ValueError):
            PreprocessConfig(**bad)
    with pytest.raises(ValueError, match="unknown keys"):
        PreprocessConfig.from_dict({**d, "gamma": 2})


# ------------------------------------------------------------------------------------------
# pure steps
# ------------------------------------------------------------------------------------------
def test_binning_conserves_sums(rng: np.random.Generator) -> None:
    p = rng.integers(0, 1000, size=(3, 12, 18), dtype=np.uint16)
    b = bin_patterns(p, 3)
    assert b.shape == (3, 4, 6) and b.dtype == np.float32
    np.testing.assert_array_equal(b.sum(axis=(1, 2)), p.sum(axis=(1, 2), dtype=np.float64))
    assert b[1, 2, 5] == p[1, 6:9, 15:18].sum()
    # A remainder is dropped: 13 -> 4 rows of 3.
    assert bin_patterns(rng.random((2, 13, 13)), 3).shape == (2, 4, 4)


def test_scaling_and_normalisation_values() -> None:
    x = np.array([[[0.0, 1.0], [3.0, 8.0]], [[-4.0, 2.0], [2.0, 4.0]]], dtype=np.float32)
    np.testing.assert_allclose(scale_patterns(x.copy(), "sqrt")[0], [[0, 1], [np.sqrt(3), np.sqrt(8)]], rtol=1e-6)
    np.testing.assert_allclose(scale_patterns(x.copy(), "log")[0], np.log1p([[0, 1], [3, 8]]), rtol=1e-6)
    assert scale_patterns(x.copy(), "sqrt")[1, 0, 0] == 0.0  # negatives clipped before sqrt/log
    np.testing.assert_array_equal(scale_patterns(x.copy(), "none"), x)
    np.testing.assert_allclose(normalise_patterns(x.copy(), "max")[0], [[0, 1 / 8], [3 / 8, 1]])
    np.testing.assert_allclose(normalise_patterns(x.copy(), "minmax")[1], [[0, 6 / 8], [6 / 8, 1]])
    np.testing.assert_allclose(normalise_patterns(x.copy(), "sum")[0], [[0, 1 / 12], [3 / 12, 8 / 12]], rtol=1e-6)
    flat = np.full((1, 2, 2), 5.0, dtype=np.float32)
    assert not normalise_patterns(flat.copy(), "minmax").any()  # no range -> zeros, not NaN
    zero = np.zeros((1, 2, 2), dtype=np.float32)
    assert np.isfinite(normalise_patterns(zero.copy(), "max")).all()
    assert np.isfinite(normalise_patterns(zero.copy(), "sum")).all()


def test_resize_area_and_linear(rng: np.random.Generator) -> None:
    x = rng.random((2, 8, 12)).astype(np.float32)
    y = resize_patterns(x, (4, 4))
    # Integer factors: plain block means.
    np.testing.assert_allclose(y, x.reshape(2, 4, 2, 4, 3).mean(axis=(2, 4)), rtol=1e-6)
    # Non-integer shrink keeps the mean; enlarging a linear ramp stays linear inside.
    np.testing.assert_allclose(resize_patterns(x, 5).mean(axis=(1, 2)), x.mean(axis=(1, 2)), rtol=1e-5)
    ramp = np.tile(np.arange(8, dtype=np.float32), (8, 1))[None]
    up = resize_patterns(ramp, 16)[0]
    np.testing.assert_allclose(np.diff(up[0, 1:-1]), 0.5, atol=1e-6)


def test_fourier_and_bilinear_shift_of_gaussian() -> None:
    yy, xx = np.indices((32, 32))
    g = lambda cy, cx: np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.5**2))  # noqa: E731
    src = np.stack([g(14.3, 17.8), g(16.0, 15.0)]).astype(np.float32)
    out = shift_patterns(src, [[14.3, 17.8], [16.0, 15.0]], method="fourier")
    np.testing.assert_allclose(out[0], g(15.5, 15.5), atol=2e-3)  # band-limited: near exact
    np.testing.assert_allclose(out[1], g(15.5, 15.5), atol=1e-6)  # half-integer shift of a symmetric blob
    bil = shift_patterns(src, [[14.3, 17.8], [16.0, 15.0]], method="bilinear")
    np.testing.assert_allclose(bil[0], g(15.5, 15.5), atol=4e-2)  # interpolation error ~ f(1-f)/(2 sigma^2) per axis
    # Integer shift: an exact copy, edge-replicated.
    ints = shift_patterns(src[:1], [[17.5, 13.5]], (8, 8), method="fourier")
    np.testing.assert_array_equal(ints[0], src[0, 14:22, 10:18])


def test_integer_windows_match_edge_padded_slices(rng: np.random.Generator) -> None:
    x = rng.random((150, 10, 12)).astype(np.float32)
    # Many distinct offsets (the general gather path) and few (the grouped-slice path).
    for centres in (rng.integers(-3, 14, size=(150, 2)), rng.integers(3, 6, size=(150, 2))):
        # An even window's centre is at (2.5, 3.5): half-integer centres are pure integer shifts.
        out = shift_patterns(x, centres + 0.5, (6, 8))
        checked = 0
        for i in range(150):
            if np.any(centres[i] + 0.5 > [9, 11]) or np.any(centres[i] < 0):
                continue  # wild centres are clamped to the detector
            top = centres[i] - np.array([2, 3])
            padded = np.pad(x[i], 30, mode="edge")
            ref = padded[30 + top[0] : 30 + top[0] + 6, 30 + top[1] : 30 + top[1] + 8]
            np.testing.assert_array_equal(out[i], ref)
            checked += 1
        assert checked > 50


# ------------------------------------------------------------------------------------------
# centring
# ------------------------------------------------------------------------------------------
def test_disk_centring_recentres_subpixel_shifts(rng: np.random.Generator) -> None:
    centres = 23.5 + rng.uniform(-2.0, 2.0, size=(3, 4, 2))
    ds = Dataset4D.from_array(disk_scan(centres))
    for method in ("fourier", "bilinear"):
        pp = Preprocessor(PreprocessConfig(centring="disk", shift_method=method, **RAW)).fit(ds)
        out = pp.transform_positions(ds, [(i, j) for i in range(3) for j in range(4)])
        found = disk_centres(out, (23.5, 23.5), 8.0)
        assert np.abs(found - 23.5).max() < 0.05, (method, np.abs(found - 23.5).max())
        # The per-position centres seen by fit are the descan map.
        np.testing.assert_allclose(pp.disk_centre_map, centres, atol=0.02)


def test_crop_and_binning_place_the_disk_at_the_array_centre() -> None:
    centres = np.array([[[20.3, 27.1]]])
    ds = Dataset4D.from_array(disk_scan(centres, q=48, r=8.0))
    cfg = PreprocessConfig(centring="disk", bin_factor=2, crop_radius=8, **RAW)
    out = Preprocessor(cfg).fit(ds).transform_positions(ds, [(0, 0)])
    assert out.shape == (1, 16, 16)
    np.testing.assert_allclose(disk_centres(out, (7.5, 7.5), 4.0), [[7.5, 7.5]], atol=0.05)
    # Counts are conserved by binning and the (exact integer-part) crop around the whole disk.
    assert abs(out.sum() - ds.pattern(0, 0)[8:40, 12:44].sum()) / out.sum() < 0.01


def test_friedel_gradient_moves_com_centring_but_not_disk_centring() -> None:
    centres = np.full((1, 2, 2), 23.5)
    grads = np.array([[[0.0, 0.0], [0.2, -0.2]]])  # second pattern: fake Friedel asymmetry
    ds = Dataset4D.from_array(disk_scan(centres, grads=grads, background=0.0))
    pos = [(0, 0), (0, 1)]
    d_out = Preprocessor(PreprocessConfig(centring="disk", **RAW)).fit(ds).transform_positions(ds, pos)
    c_out = Preprocessor(PreprocessConfig(centring="com", **RAW)).fit(ds).transform_positions(ds, pos)
    d_geo = disk_centres(d_out, (23.5, 23.5), 8.0)
    c_geo = disk_centres(c_out, (23.5, 23.5), 8.0)
    assert np.abs(d_geo - 23.5).max() < 0.02
    # COM moves by g*r/4 = 0.4 px towards the bright side, so the disk lands 0.4 px the other way.
    np.testing.assert_allclose(c_geo[1] - c_geo[0], [-0.4, 0.4], atol=0.03)


def test_plane_fit_recovers_descan_plane(rng: np.random.Generator) -> None:
    rows, cols = 8, 10
    rr, cc = np.indices((rows, cols))
    plane = np.array([[22.0, 0.15, -0.05], [24.5, 0.02, 0.12]])  # (cy, cx) = a + b*row + c*col
    centres = np.stack([plane[k, 0] + plane[k, 1] * rr + plane[k, 2] * cc for k in range(2)], axis=-1)
    local = rng.normal(0, 0.05, size=centres.shape)  # local deflections the plane must keep
    ds = Dataset4D.from_array(disk_scan(centres + local))
    pp = Preprocessor(PreprocessConfig(centring="plane", **RAW)).fit(ds)
    np.testing.assert_allclose(pp.plane[:, 0], plane[:, 0], atol=0.06)
    np.testing.assert_allclose(pp.plane[:, 1:], plane[:, 1:], atol=0.01)
    # After the plane is removed only the local deflections remain.
    out = np.concatenate([o for _, o in pp.iter_transformed(ds)])
    resid = disk_centres(out, (23.5, 23.5), 8.0).reshape(rows, cols, 2) - 23.5
    assert np.corrcoef(resid.ravel(), local.ravel())[0, 1] > 0.9
    with pytest.raises(DatasetError, match="scan shape"):
        pp.transform_positions(Dataset4D.from_array(disk_scan(centres[:4])), [(0, 0)])


# ------------------------------------------------------------------------------------------
# boxing
# ------------------------------------------------------------------------------------------
def brute_box(stage1: np.ndarray, k: int) -> np.ndarray:
    rows, cols = stage1.shape[:2]
    h = k // 2
    out = np.empty_like(stage1)
    for i in range(rows):
        for j in range(cols):
            nb = stage1[max(0, i - h) : i + h + 1, max(0, j - h) : j + h + 1]
            out[i, j] = nb.reshape(-1, *stage1.shape[2:]).max(axis=0)
    return out


@pytest.mark.parametrize("normalise", ["none", "max"])
def test_boxing_equals_brute_force_max(rng: np.random.Generator, normalise: str) -> None:
    data = rng.integers(0, 500, size=(7, 6, 12, 12)).astype(np.uint16)
    data[..., 4:8, 4:8] += 2000  # a beam for fit to find
    ds = Dataset4D.from_array(data)
    base = dict(centring="none", scaling="sqrt", normalise=normalise, output_size=None, hot_pixel_repair=False)
    one = Preprocessor(PreprocessConfig(boxing=1, **base)).fit(ds)
    boxed = Preprocessor(PreprocessConfig(boxing=3, **base)).fit(ds)
    stage1 = np.concatenate([o for _, o in one.iter_transformed(ds)]).reshape(7, 6, 12, 12)
    ref = brute_box(stage1, 3)
    if normalise == "max":
        ref = ref / ref.max(axis=(2, 3), keepdims=True)
    row_bytes = 6 * 12 * 12 * 2
    for max_bytes in (row_bytes, 2 * row_bytes, 100 * row_bytes):  # rolling halo across chunk edges
        pieces = list(boxed.iter_transformed(ds, max_bytes=max_bytes))
        assert [s.start for s, _ in pieces] == sorted(s.start for s, _ in pieces)
        got = np.concatenate([o for _, o in pieces]).reshape(ref.shape)
        np.testing.assert_allclose(got, ref, rtol=1e-6)
    blk = boxed.transform_block(ds.block(slice(2, 5)), slice(2, 5), ds)
    np.testing.assert_allclose(blk.reshape(3, 6, 12, 12), ref[2:5], rtol=1e-6)
    pos = np.array([[0, 0], [6, 5], [3, 2], [0, 5]])
    np.testing.assert_allclose(boxed.transform_positions(ds, pos), ref[pos[:, 0], pos[:, 1]], rtol=1e-6)
    one_at_a_time = boxed.transform_positions(ds, pos, max_bytes=1)  # batches of one position
    np.testing.assert_allclose(one_at_a_time, ref[pos[:, 0], pos[:, 1]], rtol=1e-6)


# ------------------------------------------------------------------------------------------
# hot pixels
# ------------------------------------------------------------------------------------------
def test_hot_and_dead_pixels_inside_the_disk_are_repaired(rng: np.random.Generator) -> None:
    centres = 23.5 + rng.uniform(-1.0, 1.0, size=(4, 5, 2))
    clean = disk_scan(centres, level=200.0, background=3.0)
    clean = rng.poisson(clean).astype(np.float32)  # shot noise: the detector must not flag it
    data = clean.copy()
    data[..., 22, 25] += 3000.0  # hot, inside the bright disk
    data[..., 26, 21] = 0.0  # dead, inside the disk
    data[..., 5, 40] += 500.0  # hot, in the dark field
    ds = Dataset4D.from_array(data)
    cfg = PreprocessConfig(centring="none", scaling="none", normalise="none", output_size=None)
    pp = Preprocessor(cfg).fit(ds)
    assert sorted(map(tuple, pp.hot_pixels.tolist())) == [(5, 40), (22, 25), (26, 21)]
    out = pp.transform_positions(ds, [(1, 2)])[0]
    nb = clean[1, 2, 21:24, 24:27].copy()
    assert abs(out[22, 25] - np.median(np.delete(nb.ravel(), 4))) < 1e-3
    assert 150 < out[26, 21] < 260  # back at disk level (200 + noise)
    assert out[5, 40] < 20
    # Everything else is untouched.
    mask = np.ones((48, 48), bool)
    mask[[22, 26, 5], [25, 21, 40]] = False
    np.testing.assert_array_equal(out[mask], clean[1, 2][mask])


def test_find_hot_pixels_spares_edges_and_lines() -> None:
    img = 100 * disk((40, 40), 19.5, 19.5, 9.0) + 1.0
    img[:, 19] = 1.0 + 0.3 * (img[:, 19] - 1.0)  # a one-pixel dark line across the disk (HOLZ line)
    assert len(find_hot_pixels(img)) == 0
    img[15, 15] = 400.0
    img[15, 16] = 380.0  # an adjacent pair is still caught
    assert sorted(map(tuple, find_hot_pixels(img).tolist())) == [(15, 15), (15, 16)]
    fixed = repair_hot_pixels(img, [(15, 15), (15, 16)])
    assert abs(fixed[15, 15] - 101.0) < 1.0


# ------------------------------------------------------------------------------------------
# the pipeline as a whole
# ------------------------------------------------------------------------------------------
@pytest.fixture
def noisy_scan(rng: np.random.Generator) -> Dataset4D:
    centres = 23.5 + rng.uniform(-1.5, 1.5, size=(5, 6, 2))
    return Dataset4D.from_array(rng.poisson(disk_scan(centres, level=300.0)).astype(np.uint16))


def test_default_output_is_finite_normalised_float32(noisy_scan: Dataset4D) -> None:
    pp = Preprocessor(PreprocessConfig(output_size=32, crop_radius=20)).fit(noisy_scan)
    out = pp.transform_positions(noisy_scan, [(0, 0), (4, 5)])
    assert out.shape == (2, 32, 32) and out.dtype == np.float32
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out.max(axis=(1, 2)), 1.0)
    # NaNs in float data become zeros, not NaN outputs.
    arr = noisy_scan.to_array().astype(np.float32)
    arr[0, 0, 3, 3] = np.nan
    out2 = pp.transform_patterns(arr[0, :1])
    assert np.isfinite(out2).all()


def test_transforms_agree_and_chunking_does_not_matter(noisy_scan: Dataset4D) -> None:
    pp = Preprocessor(PreprocessConfig(centring="disk", output_size=24, crop_radius=16)).fit(noisy_scan)
    full = np.concatenate([o for _, o in pp.iter_transformed(noisy_scan)])
    row_bytes = 6 * 48 * 48 * 2
    small = np.concatenate([o for _, o in pp.iter_transformed(noisy_scan, max_bytes=row_bytes)])
    np.testing.assert_array_equal(small, full)
    pos = np.array([[0, 0], [2, 3], [4, 5]])
    np.testing.assert_array_equal(pp.transform_positions(noisy_scan, pos), full[pos[:, 0] * 6 + pos[:, 1]])
    few_bytes = pp.transform_positions(noisy_scan, pos, max_bytes=48 * 48 * 2)  # one pattern per read
    # A batch of one takes pocketfft's scalar path: equal to float32 rounding, not bit for bit.
    np.testing.assert_allclose(few_bytes, full[pos[:, 0] * 6 + pos[:, 1]], rtol=1e-6, atol=1e-7)
    blk = pp.transform_block(noisy_scan.block(slice(1, 3)), slice(1, 3), noisy_scan)
    np.testing.assert_array_equal(blk, full[6:18])


def test_threaded_sub_batches_equal_one_batch(noisy_scan: Dataset4D, monkeypatch: pytest.MonkeyPatch) -> None:
    import polmap.process.preprocess as pre

    pp = Preprocessor(PreprocessConfig(centring="disk", crop_radius=12, output_size=16)).fit(noisy_scan)
    one = np.concatenate([o for _, o in pp.iter_transformed(noisy_scan)])
    monkeypatch.setattr(pre, "_WORK_BYTES", 4 * 48 * 48 * 4)  # 4 patterns per sub-batch
    monkeypatch.setattr(pre, "_N_THREADS", 2)
    many = np.concatenate([o for _, o in pp.iter_transformed(noisy_scan)])
    np.testing.assert_array_equal(many, one)


@pytest.mark.parametrize("centring", ["none", "disk", "com", "plane"])
def test_state_dict_round_trip_reproduces_output(noisy_scan: Dataset4D, centring: str) -> None:
    data = noisy_scan.to_array()
    data[..., 30, 30] = 60000  # so the state carries a hot pixel
    ds = Dataset4D.from_array(data)
    cfg = PreprocessConfig(centring=centring, bin_factor=2, crop_radius=10, boxing=3, output_size=16)
    pp = Preprocessor(cfg).fit(ds)
    state = json.loads(json.dumps(pp.state_dict()))  # must survive JSON
    assert state["hot_pixels"] == [[30, 30]]
    assert (state["plane"] is not None) == (centring in ("plane", "disk"))
    again = Preprocessor.from_state_dict(state)
    pos = np.array([[0, 0], [3, 4], [4, 5]])
    np.testing.assert_array_equal(again.transform_positions(ds, pos), pp.transform_positions(ds, pos))
    with pytest.raises(ValueError, match="format"):
        Preprocessor.from_state_dict({**state, "format": "other"})


def test_hdf5_backed_scan_gives_the_same_output(noisy_scan: Dataset4D, tmp_path) -> None:
    import h5py

    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=noisy_scan.to_array(), chunks=(1, 6, 48, 48))
    cfg = PreprocessConfig(centring="plane", crop_radius=12, output_size=16, boxing=3)
    ref_pp = Preprocessor(cfg).fit(noisy_scan)
    ref = np.concatenate([o for _, o in ref_pp.iter_transformed(noisy_scan)])
    row_bytes = 6 * 48 * 48 * 2
    seen: list[tuple[int, int]] = []
    with h5py.File(path, "r") as f:
        ds = Dataset4D(f["data"], source=str(path))
        pp = Preprocessor(cfg).fit(ds, max_bytes=2 * row_bytes, progress=lambda d, t: seen.append((d, t)))
        got = np.concatenate([o for _, o in pp.iter_transformed(ds, max_bytes=2 * row_bytes)])
        # Stopping early must not leave the background reader hanging.
        it = pp.iter_transformed(ds, max_bytes=2 * row_bytes)
        next(it)
        it.close()
    assert seen[-1] == (5, 5)
    np.testing.assert_allclose(pp.plane, ref_pp.plane, atol=1e-9)  # chunking does not change the fit
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)


def test_unfitted_and_mismatched_inputs_are_clear_errors(noisy_scan: Dataset4D) -> None:
    pp = Preprocessor()
    with pytest.raises(RuntimeError, match="fit"):
        pp.transform_positions(noisy_scan, [(0, 0)])
    pp.fit(noisy_scan)
    other = Dataset4D.from_array(np.zeros((2, 2, 32, 32), np.uint16))
    with pytest.raises(DatasetError, match="detector shape"):
        pp.transform_positions(other, [(0, 0)])
