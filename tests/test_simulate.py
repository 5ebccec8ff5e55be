"""Tests of the multislice pattern library and the scan synthesiser (polmap.simulate)."""

from __future__ import annotations

import argparse
import json

import h5py
import numpy as np
import pytest

from polmap import simulate as S
from polmap.cli.simulate import register


@pytest.fixture(scope="module")
def lib() -> S.PatternLibrary:
    return S.load_library()


def _disk_mean(lib: S.PatternLibrary, orient: str, radius: float = 2.5) -> np.ndarray:
    """(T, G) disk-averaged intensities at zero mistilt."""
    u = lib.tilt_axis_mrad
    rr, cc = np.meshgrid(u, u, indexing="ij")
    inside = np.hypot(rr, cc) <= radius
    return lib.tables[orient].intensity[:, :, inside].mean(axis=2)


def _g(lib: S.PatternLibrary, kr: int, kc: int) -> int:
    return int(np.nonzero((lib.reflections[:, 0] == kr) & (lib.reflections[:, 1] == kc))[0][0])


# ---------------------------------------------------------------------------- library
def test_library_layout_and_physics(lib):
    a, c = lib.tables["a_domain"], lib.tables["c_domain"]
    # one unit cell per thickness step (3.90 A along a, 4.15 A along c)
    assert np.allclose(np.diff(a.thickness_nm), 0.390, atol=1e-4)
    assert np.allclose(np.diff(c.thickness_nm), 0.415, atol=1e-4)
    assert a.thickness_nm[0] <= 4.2 and a.thickness_nm[-1] >= 40.0
    # reciprocal spacings lambda/d at 200 kV: c* along x in the a-domain, a* elsewhere
    assert lib.spacing("a_domain") == pytest.approx((6.431, 6.043), abs=2e-3)
    assert lib.spacing("c_domain") == pytest.approx((6.431, 6.431), abs=2e-3)
    # tilt grid symmetric about 0 and covers probe cone + mistilt
    assert np.allclose(lib.tilt_axis_mrad, -lib.tilt_axis_mrad[::-1])
    assert lib.tilt_axis_mrad[-1] >= 4.5
    # flux: stored beams carry less than everything; thermal diffuse scattering
    # removes more flux from the Bragg beams as the crystal gets thicker
    tot = a.intensity.sum(axis=1)
    assert tot.max() <= 1.0 + 1e-3
    assert np.all(np.diff(a.bragg_fraction) < 1e-3)
    assert a.bragg_fraction[0] > a.bragg_fraction[-1] + 0.05


def test_library_symmetries_exact(lib):
    a = _disk_mean(lib, "a_domain")
    c = _disk_mean(lib, "c_domain")
    # a-domain: mirror y -> -y (rows) is exact; c-domain: 4mm
    assert np.allclose(a[:, _g(lib, 1, 0)], a[:, _g(lib, -1, 0)], rtol=1e-6)
    assert np.allclose(c[:, _g(lib, 0, 1)], c[:, _g(lib, 0, -1)], rtol=1e-6)
    assert np.allclose(c[:, _g(lib, 1, 0)], c[:, _g(lib, 0, 1)], rtol=1e-6)


def test_friedel_asymmetry_changes_sign_with_thickness(lib):
    """The polar a-domain breaks Friedel's law along x, and the sign of the
    asymmetry of some first/second-order pairs flips within 4-40 nm."""
    a = _disk_mean(lib, "a_domain")
    t = lib.tables["a_domain"].thickness_nm
    flips = {}
    for k in (1, 2, 3):
        p, m = a[:, _g(lib, 0, k)], a[:, _g(lib, 0, -k)]
        asym = (p - m) / (p + m)
        assert np.abs(asym).max() > 0.05  # polar signal is there
        sign_change = np.nonzero(np.diff(np.sign(asym)) != 0)[0]
        if sign_change.size:
            flips[k] = float(t[sign_change[0]])
    print("first sign change of the (0,+-k) Friedel asymmetry [nm]:", flips)
    assert flips, "no Friedel-pair asymmetry changed sign with thickness"


def _first_order_friedel(p: np.ndarray, g_col_mrad: float, step: float = 0.55) -> float:
    """(I(+g) - I(-g)) / (I(+g) + I(-g)) of the first-order disks along the columns."""
    rr, cc = np.mgrid[: p.shape[0], : p.shape[1]]
    c0 = (p.shape[0] - 1) / 2
    sums = [p[np.hypot(rr - c0, cc - (c0 + s * g_col_mrad / step)) < 3.5].sum() for s in (1, -1)]
    return float((sums[0] - sums[1]) / (sums[0] + sums[1]))


def test_polar_signal_versus_mistilt_and_thickness(lib):
    """+P and -P differ clearly (PbTiO3 is strongly polar), yet a 1 mrad mistilt of
    the non-polar c-domain fakes a Friedel asymmetry of the same order, and 2 nm of
    thickness changes a pattern as much as reversing P does."""
    t = np.array([10.0, 20.0, 30.0])
    plus = S.render_patterns("+x", t, library=lib)
    minus = S.render_patterns("-x", t, library=lib)
    l1 = np.abs(plus - minus).sum(axis=(1, 2)) / plus.sum(axis=(1, 2))
    thicker = S.render_patterns("+x", t + 2.0, library=lib)
    l1_t = np.abs(plus - thicker).sum(axis=(1, 2)) / plus.sum(axis=(1, 2))
    polar = np.array([_first_order_friedel(p, lib.spacing("a_domain")[1]) for p in plus])
    tilted_c = S.render_patterns("none", t, (0.0, 1.0), library=lib)
    fake = np.array([_first_order_friedel(p, lib.spacing("c_domain")[1]) for p in tilted_c])
    on_zone_c = S.render_patterns("none", t, library=lib)
    print("L1(+P,-P):", np.round(l1, 3), " L1(+2 nm):", np.round(l1_t, 3))
    print("Friedel (0,+-1): polar a-domain", np.round(polar, 3), " c-domain at 1 mrad", np.round(fake, 3))
    assert np.all((l1 > 0.1) & (l1 < 0.6))
    assert np.all(l1_t > 0.3 * l1)
    assert np.all(np.abs(polar) > 0.2)
    assert np.all(np.abs(fake) > 0.3 * np.abs(polar))
    assert max(abs(_first_order_friedel(p, lib.spacing("c_domain")[1])) for p in on_zone_c) < 1e-5


# ---------------------------------------------------------------------------- rendering
def test_minus_x_is_exact_mirror_of_plus_x(lib):
    tilt, descan = np.array([0.4, 0.9]), np.array([0.3, 0.7])
    plus = S.render_pattern("+x", 17.3, tilt, descan, library=lib)
    minus = S.render_pattern("-x", 17.3, tilt * [1, -1], descan * [1, -1], library=lib)
    np.testing.assert_allclose(minus[:, ::-1], plus, rtol=1e-6, atol=1e-9)
    # ...and is not trivially the same pattern
    assert np.abs(minus - plus).sum() > 0.01 * plus.sum()


def test_y_states_are_transposes(lib):
    tilt, descan = np.array([0.4, 0.9]), np.array([0.3, 0.7])
    plus_x = S.render_pattern("+x", 22.0, tilt, descan, library=lib)
    plus_y = S.render_pattern("+y", 22.0, tilt[::-1], descan[::-1], library=lib)
    minus_y = S.render_pattern("-y", 22.0, [-tilt[1], tilt[0]], [-descan[1], descan[0]], library=lib)
    np.testing.assert_allclose(plus_y.T, plus_x, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(minus_y[::-1].T, plus_x, rtol=1e-6, atol=1e-9)


def test_render_geometry_and_flux(lib):
    p = S.render_pattern("none", 20.0, detector_size=64, reciprocal_step_mrad=0.55, library=lib)
    # bright-field disk centred on the optic axis at (D-1)/2 with radius alpha/step
    rr, cc = np.mgrid[:64, :64]
    d = np.hypot(rr - 31.5, cc - 31.5)
    inside = d < 2.5 / 0.55 - 1
    gap = (d > 2.5 / 0.55 + 1) & (d < (6.43 - 2.5) / 0.55 - 1)  # between the BF and first-order disks
    assert gap.sum() > 20
    assert p[inside].min() > 0 and p[gap].max() == 0
    # the flux on the detector is at most what is left in the Bragg beams
    table = lib.tables["c_domain"]
    i = np.argmin(np.abs(table.thickness_nm - 20.0))
    assert 0.3 < p.sum() <= table.bragg_fraction[i] + 0.01
    # descan moves the pattern rigidly
    q = S.render_pattern("none", 20.0, descan_px=(2.0, -3.0), library=lib)
    np.testing.assert_allclose(q[12:52, 12:52], np.roll(p, (2, -3), axis=(0, 1))[12:52, 12:52], rtol=1e-4, atol=1e-7)


def test_render_rejects_bad_setups(lib):
    with pytest.raises(ValueError, match="convergence semi-angle must be > 0"):
        S.render_pattern("+x", 20.0, convergence_mrad=0.0, library=lib)
    with pytest.raises(ValueError, match="thickness"):
        S.render_pattern("+x", 80.0, library=lib)
    with pytest.raises(ValueError, match="tilt grid"):
        S.render_pattern("+x", 20.0, tilt_mrad=(4.0, 0.0), library=lib)
    with pytest.raises(ValueError, match="unknown polarization"):
        S.render_pattern("+z", 20.0, library=lib)


@pytest.fixture(scope="module")
def batio3() -> S.PatternLibrary:
    return S.load_library(material="BaTiO3")


def test_overlapping_disks_add_up(batio3):
    # Position-averaged CBED with overlapping disks: where two disks cover a pixel it shows
    # the sum of both (the interference averages out over the unit cell), so every
    # disk's flux lands on the detector and the overlaps are brighter than either disk.
    kw = dict(detector_size=64, reciprocal_step_mrad=0.75, library=batio3)
    thin = S.render_pattern("none", 18.0, convergence_mrad=2.5, **kw)
    wide = S.render_pattern("none", 18.0, convergence_mrad=9.0, **kw)
    table = batio3.tables["c_domain"]
    i = np.argmin(np.abs(table.thickness_nm - 18.0))
    # the same Bragg flux, spread over disks 13 x larger: nothing lost where disks overlap
    assert wide.sum() == pytest.approx(thin.sum(), rel=0.08)
    assert wide.sum() <= table.bragg_fraction[i] + 0.01
    # (had an overlap kept only one disk, the wide pattern would carry about half the flux)
    with pytest.raises(ValueError, match="tilt grid"):
        S.render_pattern("none", 18.0, convergence_mrad=14.5, **kw)


def test_a_rotated_or_mirrored_camera_renders_the_rotated_pattern(batio3):
    kw = dict(detector_size=33, reciprocal_step_mrad=1.0, convergence_mrad=8.0)
    cfg = S.get_preset("weak", scan_shape=(6, 8), dose=None, mistilt_mrad=0.0, descan_px=0.0, descan_jitter_px=0.0,
                       n_hot_pixels=0, n_dead_pixels=0, detector_blur_px=0.0, thickness_roughness_nm=0.0,
                       geometry="single", geometry_params={"state": "+x"}, **kw)
    plain = S.simulate_scan(cfg).data[2, 3].astype(float)
    rot90 = S.simulate_scan(cfg.replace(detector_rotation_deg=90.0)).data[2, 3].astype(float)
    mirror = S.simulate_scan(cfg.replace(detector_mirror=True)).data[2, 3].astype(float)
    # +x along +col; a camera turned by +90 degrees (from +col towards +row) sees it along +row
    np.testing.assert_allclose(rot90, np.rot90(plain, -1), atol=1.0)
    np.testing.assert_allclose(mirror, plain[:, ::-1], atol=1.0)
    assert not np.allclose(plain, plain[:, ::-1], atol=1.0)  # the pattern is polar: the test can fail
    # the file declares where the classes point on this camera
    assert S.class_directions("signed", S.mounting_matrix(90.0)) == {
        "none": "invariant", "+x": 90.0, "-x": 270.0, "+y": 180.0, "-y": 0.0}
    assert S.class_directions("signed", S.mounting_matrix(0.0, mirror=True))["+x"] == 180.0
    assert S.class_directions("axis") == {}


def _class_mean_contrast(scan: S.SimulatedScan, a: str, b: str) -> float:
    """Relative L1 difference of two classes' mean patterns after the default preprocessing."""
    from polmap.learn.model import default_preprocess
    from polmap.process.preprocess import PreprocessConfig, Preprocessor

    ds = scan.to_dataset()
    pre = Preprocessor(PreprocessConfig(**default_preprocess("auto"))).fit(ds)
    X = np.concatenate([x for _, x in pre.iter_transformed(ds)])
    lm = scan.label_map.ravel()
    ma, mb = X[lm == scan.class_names.index(a)].mean(0), X[lm == scan.class_names.index(b)].mean(0)
    return float(np.abs(ma - mb).sum() / ma.sum())


def test_weak_preset_has_the_polar_contrast_of_real_scans():
    # +P and -P class means differ by 1.5-4 % after preprocessing (the external multislice
    # scans: 2.0-2.7 %); on the PbTiO3 demo they differ by 15-30 %.
    weak = S.simulate_scan("weak")
    for a, b in (("+x", "-x"), ("+y", "-y")):
        assert 0.015 <= _class_mean_contrast(weak, a, b) <= 0.04
    demo = S.simulate_scan(S.get_preset("demo", scan_shape=(48, 64)))
    assert _class_mean_contrast(demo, "+x", "-x") > 0.1
    assert weak.metadata["material"].startswith("BaTiO3")
    assert weak.metadata["convergence_mrad"] > max(weak.metadata["reciprocal_spacing_mrad"]["a_domain"]) / 2


def test_anonymous_class_names_carry_no_direction():
    sc = S.simulate_scan(S.get_preset("weak_anonymous", scan_shape=(16, 20), dose=None))
    assert sc.class_names == ["domain A", "domain B", "domain C", "domain D", "domain E"]
    dirs = sc.metadata["class_directions"]
    assert dirs["domain B"] == "invariant" and dirs["domain C"] == 0.0 and dirs["domain E"] == 180.0


def test_render_many_patterns_at_once(lib):
    # speed: benchmarks/bench_render.py
    n = 300
    rng = np.random.default_rng(0)
    out = S.render_patterns(
        rng.choice(S.PHYSICAL_CLASSES, n), rng.uniform(10, 30, n), rng.uniform(-1.5, 1.5, (n, 2)),
        rng.uniform(-2, 2, (n, 2)), library=lib,
    )
    assert out.shape == (n, 64, 64) and np.isfinite(out).all() and (out >= 0).all()
    assert np.ptp(out.reshape(n, -1).sum(1)) > 0  # not one pattern repeated


# ---------------------------------------------------------------------------- scans
def test_same_seed_same_data_and_seed_matters():
    a = S.simulate_scan("tiny")
    b = S.simulate_scan("tiny")
    c = S.simulate_scan(S.get_preset("tiny", seed=99))
    assert a.data.dtype == np.uint16 and a.data.shape == (24, 32, 32, 32)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.label_map, b.label_map)
    assert not np.array_equal(a.data, c.data)
    assert a.metadata["seed"] == 3 and c.metadata["seed"] == 99


def test_labels_and_walls_follow_geometry():
    cfg = S.SimConfig(
        scan_shape=(12, 20), detector_size=32, reciprocal_step_mrad=1.0, geometry="halves",
        geometry_params={"left": "+x", "right": "-y"}, probe_footprint_px=0.7, dose=None, seed=0,
    )
    scan = S.simulate_scan(cfg)
    names = scan.class_names
    assert names == ["none", "+x", "-x", "+y", "-y"]
    assert np.all(scan.label_map[:, :9] == names.index("+x"))
    assert np.all(scan.label_map[:, 11:] == names.index("-y"))
    # walls only next to the straight wall between columns 9 and 10
    assert scan.wall_mask[:, 9:11].all() and not scan.wall_mask[:, :8].any() and not scan.wall_mask[:, 12:].any()
    assert np.all(scan.state_weights.max(axis=0)[scan.wall_mask] < cfg.wall_threshold)
    np.testing.assert_allclose(scan.polarization[0, 0], [0, 1], atol=1e-6)
    np.testing.assert_allclose(scan.polarization[0, -1], [-1, 0], atol=1e-6)
    # at the wall the pattern is the weighted incoherent sum of both domains
    w = scan.state_weights[:, 0, 9]
    assert 0.1 < w[1] < 0.9 and w[1] + w[4] == pytest.approx(1.0, abs=1e-6)


def test_flux_closure_quadrants_and_axis_classes():
    cfg = S.get_preset("flux_closure", scan_shape=(21, 21), detector_size=32, reciprocal_step_mrad=1.0, dose=None)
    scan = S.simulate_scan(cfg)
    n = scan.class_names
    assert scan.label_map[1, 10] == n.index("+x") and scan.label_map[19, 10] == n.index("-x")
    assert scan.label_map[10, 19] == n.index("+y") and scan.label_map[10, 1] == n.index("-y")
    assert scan.label_map[10, 10] == n.index("none")  # c-domain vortex core
    assert scan.wall_mask[3, 3] and scan.wall_mask[17, 17]  # diagonal 90 degree walls
    ax = S.simulate_scan(cfg.replace(class_set="axis"))
    assert ax.class_names == ["na", "vertical", "horizontal"]
    assert ax.class_colors == ["#ff0000", "#00ff00", "#0000ff"]
    assert ax.label_map[1, 10] == 2 and ax.label_map[10, 1] == 1 and ax.label_map[10, 10] == 0
    # signed colours: hue follows the direction, none is grey
    assert scan.class_colors[0] == "#808080" and len(set(scan.class_colors)) == 5


def test_poisson_noise_mean_and_variance():
    base = S.SimConfig(
        scan_shape=(16, 16), detector_size=32, reciprocal_step_mrad=1.0, geometry="single",
        n_hot_pixels=0, n_dead_pixels=0, seed=5,
    )
    dose = 1e4
    expected = S.simulate_scan(base.replace(dose=None)).data.astype(float)  # noise-free, scaled to 1e4 e-
    noisy = S.simulate_scan(base.replace(dose=dose)).data.astype(float)
    # the same seed gives the same physics; only the noise differs
    tot_e, tot_n = expected.sum(axis=(2, 3)), noisy.sum(axis=(2, 3))
    frac = tot_e.mean() / dose  # part of the dose that lands on the detector
    assert 0.5 < frac < 1.0
    assert tot_n.mean() == pytest.approx(tot_e.mean(), rel=0.005)
    bright = expected.mean(axis=(0, 1)) > 50
    resid = noisy - expected
    var_ratio = resid[..., bright].var() / expected[..., bright].mean()
    assert var_ratio == pytest.approx(1.0, abs=0.1)


def test_hot_and_dead_pixels_inside_the_disk():
    scan = S.simulate_scan("tiny")
    hot, dead = scan.metadata["hot_pixels"], scan.metadata["dead_pixels"]
    assert len(hot) == 6 and len(dead) == 6
    D = scan.data.shape[-1]
    flat = scan.data.reshape(-1, D * D).astype(float)
    med = np.median(flat, axis=0)
    assert np.all(flat[:, dead] == 0)
    others = np.setdiff1d(np.arange(D * D), hot + dead)
    assert med[hot].min() > 1.5 * med[others].max()
    rr, cc = np.divmod(np.asarray(hot + dead), D)
    r_disk = 2.5 / 1.0
    inside = np.hypot(rr - (D - 1) / 2, cc - (D - 1) / 2) < r_disk + scan.metadata["descan_px"]
    assert inside[: len(hot)].sum() >= 1 and inside[len(hot) :].sum() >= 1


def test_write_h5_layout_round_trip(tmp_path):
    scan = S.simulate_scan("tiny")
    path = S.write_h5(scan, tmp_path / "sub" / "tiny.h5")
    assert [p.name for p in path.parent.iterdir()] == ["tiny.h5"]  # no temp file left
    with h5py.File(path, "r") as f:
        assert f.attrs["polmap_format"] == "polmap-sim" and int(f.attrs["polmap_version"]) == 1
        md = json.loads(f.attrs["metadata"])
        assert md["seed"] == 3 and md["preset"] == "tiny" and md["dose"] == 2e4
        d = f["data"]
        assert d.shape == (24, 32, 32, 32) and d.dtype == np.uint16
        assert d.chunks == (1, 32, 32, 32) and d.compression is None
        np.testing.assert_array_equal(d[()], scan.data)
        assert d.attrs["reciprocal_step_mrad"] == 1.0 and d.attrs["convergence_mrad"] == 2.5
        assert d.attrs["beam_energy_kev"] == 200.0 and d.attrs["real_step_nm"] == 1.0
        g = f["ground_truth"]
        assert g["label_map"].dtype == np.int16
        np.testing.assert_array_equal(g["label_map"][()], scan.label_map)
        assert json.loads(g["label_map"].attrs["class_names"]) == scan.class_names
        assert json.loads(g["label_map"].attrs["class_colors"]) == scan.class_colors
        assert g["wall_mask"].dtype == bool
        for key, shape in (("polarization", (24, 32, 2)), ("thickness_nm", (24, 32)), ("tilt_mrad", (24, 32, 2)), ("descan_px", (24, 32, 2))):
            assert g[key].shape == shape and g[key].dtype == np.float32
        np.testing.assert_allclose(g["thickness_nm"][()], scan.thickness)


def test_presets_cover_the_geometries_and_wedge_tilt_ranges():
    assert {"demo", "tiny", "small", "stripes_90", "domains_180", "bubbles", "flux_closure", "paper_axis"} <= set(S.PRESETS)
    assert S.PRESETS["paper_axis"].class_set == "axis" and S.PRESETS["paper_axis"].scan_shape == (206, 34)
    scan = S.simulate_scan(S.get_preset("domains_180", scan_shape=(20, 30), detector_size=32, reciprocal_step_mrad=1.0))
    assert scan.thickness.min() == pytest.approx(10.0, abs=1.0) and scan.thickness.max() == pytest.approx(30.0, abs=1.0)
    assert np.abs(scan.tilt).max() == pytest.approx(1.5, abs=0.01)
    assert 1.0 < np.abs(scan.descan).max() < 3.5
    with pytest.raises(ValueError, match="valid presets"):
        S.get_preset("nope")


def test_demo_path_generates_once(tmp_path):
    p1 = S.demo_path(tmp_path, preset="tiny")
    mtime = p1.stat().st_mtime_ns
    p2 = S.demo_path(tmp_path, preset="tiny")
    assert p1 == p2 and p2.stat().st_mtime_ns == mtime
    assert S.load_library().sha256[:10] in p1.name
    assert S.demo_path(tmp_path, preset="tiny", seed=4) != p1


def test_cli_simulate(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="polmap")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["simulate", "--list"])
    assert args.func(args) == 0
    assert "demo" in capsys.readouterr().out
    out = tmp_path / "t.h5"
    args = parser.parse_args(["simulate", "--preset", "tiny", "--seed", "11", "--out", str(out)])
    assert args.func(args) == 0
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["metadata"])["seed"] == 11
    args = parser.parse_args(["simulate", "--preset", "bogus", "--out", str(out)])
    with pytest.raises(ValueError, match="valid presets: .*demo"):
        args.func(args)
