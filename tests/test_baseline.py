"""Tests of the conventional baselines (polmap.analysis.baseline)."""

from __future__ import annotations

import numpy as np
import pytest

from polmap.analysis import baseline as B
from polmap import simulate as S


def _disk(shape, centre, radius, value=1.0):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    d = np.hypot(rr - centre[0], cc - centre[1])
    return value * np.clip(radius + 0.5 - d, 0, 1)


class _Chunked:
    """Minimal dataset: only ``shape`` and ``iter_chunks`` (no array protocol)."""

    def __init__(self, a):
        self._a, self.shape = a, a.shape

    def iter_chunks(self, max_bytes=0):
        for r in range(self._a.shape[0]):
            yield slice(r, r + 1), self._a[r : r + 1]


def test_com_map_recovers_shifts_in_chunks():
    rng = np.random.default_rng(1)
    shifts = rng.uniform(-3, 3, (3, 4, 2))
    data = np.zeros((3, 4, 32, 32))
    for i in range(3):
        for j in range(4):
            data[i, j] = _disk((32, 32), (15.5 + shifts[i, j, 0], 15.5 + shifts[i, j, 1]), 5)
    com = B.com_map(_Chunked(data))
    np.testing.assert_allclose(com, shifts, atol=0.05)
    np.testing.assert_allclose(B.com_map(data, max_bytes=32 * 32 * 8), com, atol=1e-6)


def test_bad_pixels_found_inside_the_bright_disk():
    mean = _disk((32, 32), (15.5, 15.5), 6, 100.0) + 1.0
    mean[15, 16] *= 4  # hot, inside the disk
    mean[13, 17] = 0  # dead, inside the disk
    mean[2, 3] = 50  # hot, dark field
    bad = B.find_bad_pixels(mean)
    assert bad[15, 16] and bad[13, 17] and bad[2, 3]
    assert bad.sum() == 3


def test_friedel_asymmetry_of_synthetic_disks():
    g, r = 8.0, 3.0
    R, C = 4, 5
    data = np.zeros((R, C, 48, 48))
    truth = np.zeros((R, C, 2))
    rng = np.random.default_rng(2)
    for i in range(R):
        for j in range(C):
            ctr = np.array([23.5, 23.5]) + 0.3 * np.array([i, j])  # a descan ramp
            a = rng.uniform(0.2, 1.0, 4)  # +col, -col, +row, -row
            p = _disk((48, 48), ctr, r, 10.0)
            p += _disk((48, 48), ctr + [0, g], r, a[0]) + _disk((48, 48), ctr - [0, g], r, a[1])
            p += _disk((48, 48), ctr + [g, 0], r, a[2]) + _disk((48, 48), ctr - [g, 0], r, a[3])
            data[i, j] = p
            truth[i, j] = [(a[2] - a[3]) / (a[2] + a[3]), (a[0] - a[1]) / (a[0] + a[1])]
    maps = B.conventional_maps(data, (g, g), r)
    np.testing.assert_allclose(maps.descan_plane[..., 1] - maps.descan_plane[0, 0, 1], 0.3 * np.arange(C)[None].repeat(R, 0), atol=0.05)
    np.testing.assert_allclose(maps.friedel, truth, atol=0.02)


def test_rule_learns_each_class_mean_vector_whatever_the_names():
    # Classes named after nothing: the rule learns where each one's vectors sit.
    names = ["P1", "P2", "P3", "P4", "P5"]
    centres = np.array([[0.0, 0.0], [0.0, 0.5], [0.0, -0.5], [0.5, 0.0], [-0.5, 0.0]])
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), 30)
    v = centres[y] + rng.normal(0, 0.08, (len(y), 2))
    params, acc = B.calibrate_rule(v[None], y[None], names)
    np.testing.assert_allclose(np.array(params.centroids), centres, atol=0.05)
    assert acc > 0.95
    # A mirrored camera mirrors the vectors: the same labels give mirrored centroids, same accuracy.
    params_m, acc_m = B.calibrate_rule((v * [1, -1])[None], y[None], names)
    assert abs(acc_m - acc) < 1e-12 and params_m.centroids[1][1] < 0
    np.testing.assert_array_equal(B.apply_rule(centres, params, names), np.arange(5))
    # A class without labels is never predicted.
    p3, _ = B.calibrate_rule(v[y != 2][None], y[y != 2][None], names)
    assert p3.centroids[2] is None and 2 not in B.apply_rule(v, p3, names)
    with pytest.raises(ValueError, match="2 class names"):
        B.apply_rule(v, params, ["a", "b"])
    with pytest.raises(ValueError, match="no class with a mean vector"):
        B.apply_rule(v, B.RuleParams((None, None)))


def _rule_scores(scan, n_labels=50, seed=0):
    g, r = B.lattice_from_metadata(scan.metadata)
    maps = B.conventional_maps(scan.data, g, r)
    truth = scan.label_map
    R, C = truth.shape
    idx = np.random.default_rng(seed).choice(R * C, n_labels, replace=False)
    pos = np.stack([idx // C, idx % C], axis=1)
    p_lab, _ = B.calibrate_rule(maps.friedel, truth[pos[:, 0], pos[:, 1]], scan.class_names, positions=pos)
    acc_lab = B.rule_accuracy(B.apply_rule(maps.friedel, p_lab, scan.class_names), truth)
    _, acc_oracle = B.calibrate_rule(maps.friedel, truth, scan.class_names)
    return acc_lab, acc_oracle, pos


@pytest.fixture(scope="module")
def control_scan():
    # zero tilt, constant thickness, no descan, noise-free: the Friedel rule must work here
    return S.simulate_scan(S.get_preset("control", scan_shape=(24, 32), detector_size=32, reciprocal_step_mrad=1.0))


def test_friedel_rule_works_on_the_control(control_scan):
    acc_lab, acc_oracle, _ = _rule_scores(control_scan)
    print(f"control: Friedel rule accuracy labelled-calibrated {acc_lab:.3f}, oracle {acc_oracle:.3f}")
    assert acc_oracle > 0.9 and acc_lab > 0.85


def test_friedel_rule_is_fooled_by_mistilt_and_wedge():
    scan = S.simulate_scan("tiny")  # mistilt +-1.5 mrad, 10-30 nm wedge, noise, descan
    acc_lab, acc_oracle, _ = _rule_scores(scan)
    print(f"tiny: Friedel rule accuracy labelled-calibrated {acc_lab:.3f}, oracle {acc_oracle:.3f}")
    assert acc_oracle < 0.8 and acc_lab < 0.8


def test_pca_knn_learns_the_control(control_scan):
    from polmap.io import open_dataset
    from polmap.process.preprocess import INPUT_PRESETS, PreprocessConfig, Preprocessor

    scan = control_scan
    R, C = scan.label_map.shape
    ds = open_dataset(scan.data)
    pre = Preprocessor(PreprocessConfig(**INPUT_PRESETS["centred48"])).fit(ds)
    X = np.concatenate([x for _, x in pre.iter_transformed(ds)])
    idx = np.random.default_rng(3).choice(R * C, 60, replace=False)
    pos = np.stack([idx // C, idx % C], axis=1)
    pred = B.pca_knn_map(X.reshape(R * C, -1), pos, scan.label_map[pos[:, 0], pos[:, 1]], (R, C))
    acc = B.rule_accuracy(pred, scan.label_map)
    print(f"control: PCA(20)+kNN(5) with 60 labels: {acc:.3f}")
    assert pred.shape == (R, C) and set(np.unique(pred)) <= set(range(len(scan.class_names)))
    assert acc > 0.8
    # one labelled class: that class everywhere; bad shapes named
    assert (B.pca_knn_map(X.reshape(R * C, -1), pos[:3], np.zeros(3, int), (R, C)) == 0).all()
    with pytest.raises(ValueError, match=r"patterns must have shape"):
        B.pca_knn_map(X.reshape(R * C, -1)[:-1], pos, scan.label_map[pos[:, 0], pos[:, 1]], (R, C))


def test_bad_pixels_of_a_simulated_scan_are_all_found():
    scan = S.simulate_scan("tiny")
    D = scan.data.shape[-1]
    truth = np.zeros(D * D, dtype=bool)
    truth[scan.metadata["hot_pixels"] + scan.metadata["dead_pixels"]] = True
    found = B.find_bad_pixels(B.mean_pattern(scan.data)).ravel()
    np.testing.assert_array_equal(found, truth)
