"""Symmetry from the data: mirrored, rotated and renamed scans give the arrows of their own geometry."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from polmap.process.detector_symmetry import SYMMETRY_OPS
from polmap.learn.model import default_preprocess
from polmap.process.preprocess import PreprocessConfig, Preprocessor
from polmap.simulate import get_preset, simulate_scan
from polmap.learn.symmetry import (
    SymmetryMap,
    declared_arrows,
    discover_symmetry,
    parse_directions,
    verified_directions,
)


@functools.lru_cache(maxsize=None)
def _scan(**changes):
    """A small PbTiO3 scan with all five states, preprocessed like the default model's input."""
    cfg = get_preset("small", scan_shape=(32, 40), **changes)
    sc = simulate_scan(cfg)
    ds = sc.to_dataset()
    pre = Preprocessor(PreprocessConfig(**default_preprocess("auto"))).fit(ds)
    X = np.concatenate([x for _, x in pre.iter_transformed(ds)])
    R, C = ds.scan_shape
    pos = np.stack(np.divmod(np.arange(R * C), C), axis=1)
    return X, pos, sc


def _labels(sc, per_class: int = 8, seed: int = 0) -> np.ndarray:
    """``per_class`` random off-wall positions of every class (flat indices)."""
    rng = np.random.default_rng(seed)
    lm = sc.label_map.ravel()
    off_wall = ~sc.wall_mask.ravel()
    picks = [rng.choice(np.flatnonzero((lm == k) & off_wall), per_class, replace=False) for k in np.unique(lm)]
    return np.concatenate(picks)


def _truth(sc) -> dict[str, list[int | None]]:
    """The arrows the file's own declared geometry implies (what the data must show)."""
    return declared_arrows(sc.metadata["class_directions"], sc.class_names)


def _found(changes: dict, per_class: int = 8) -> tuple[SymmetryMap, dict, object]:
    X, pos, sc = _scan(**changes)
    idx = _labels(sc, per_class)
    sm = discover_symmetry(X, pos, X[idx], sc.label_map.ravel()[idx], sc.class_names)
    return sm, _truth(sc), sc


def _check_against_truth(sm: SymmetryMap, truth: dict) -> int:
    """Every arrow found is the true one; returns how many were found."""
    n = 0
    for op, images in sm.arrows.items():
        for a, b in enumerate(images):
            if b is None:
                continue
            assert op in truth and truth[op][a] == b, f"{op}: {sm.class_names[a]} -> {sm.class_names[b]} is wrong"
            n += 1
    return n


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"detector_mirror": True},
        {"detector_rotation_deg": 90.0},
        {"class_set": "anonymous"},
        {"class_set": "anonymous", "detector_mirror": True, "detector_rotation_deg": 270.0},
    ],
    ids=["as-simulated", "mirrored", "rot90", "names-mean-nothing", "anonymous-mirrored-rot270"],
)
def test_discovery_finds_the_files_own_arrows(changes: dict) -> None:
    sm, truth, sc = _found(changes)
    n = _check_against_truth(sm, truth)
    # All 5 classes labelled: the full group action (7 operations x 5 classes) is found.
    assert n == 35, sm.to_dict()
    assert sm.status == "found" and set(sm.ops) == set(SYMMETRY_OPS[1:])


def test_mirrored_camera_swaps_the_arrows_of_the_same_names() -> None:
    # The same class names mean other detector directions on a mirrored camera: flip_cols
    # maps +x to -x as simulated, and leaves +x alone when the camera is mirrored.
    plain, _, sc = _found({})
    mirrored, _, _ = _found({"detector_mirror": True, "detector_rotation_deg": 90.0})
    names = sc.class_names
    assert plain.arrows["flip_cols"][names.index("+x")] == names.index("-x")
    assert mirrored.arrows["flip_cols"][names.index("+x")] == names.index("+x")


def test_arbitrary_rotation_keeps_only_what_the_data_support() -> None:
    sm, truth, _ = _found({"detector_rotation_deg": 30.0})
    _check_against_truth(sm, truth)
    # At 30 degrees no mirror of the detector is a symmetry of the crystal.
    for op in ("flip_cols", "flip_rows", "transpose", "anti_transpose"):
        assert op not in sm.arrows
        assert sm.skipped[op]


def test_declared_directions_that_the_data_contradict_are_reported_not_used() -> None:
    X, pos, sc = _scan(detector_mirror=True)
    plain = _scan()[2]
    idx = _labels(sc)
    wrong = plain.metadata["class_directions"]  # the unmirrored camera's directions
    sm = discover_symmetry(X, pos, X[idx], sc.label_map.ravel()[idx], sc.class_names, directions=wrong)
    assert any(m.startswith("the declared directions contradict the data") for m in sm.messages)
    _check_against_truth(sm, _truth(sc))  # what is used is still the data's mapping
    assert verified_directions(sm, wrong) == {}
    right = sc.metadata["class_directions"]
    sm2 = discover_symmetry(X, pos, X[idx], sc.label_map.ravel()[idx], sc.class_names, directions=right)
    assert sm2.status == "declared" and not any("contradict" in m for m in sm2.messages)
    assert verified_directions(sm2, right) == right


def test_labels_that_do_not_separate_the_classes_give_no_symmetry() -> None:
    X, pos, sc = _scan()
    rng = np.random.default_rng(1)
    idx = rng.choice(len(X), 40, replace=False)
    sm = discover_symmetry(X, pos, X[idx], rng.integers(0, 5, 40), sc.class_names)
    assert sm.arrows == {} and sm.status == "none"
    assert "tells the labelled classes apart only" in sm.skipped["rot90"]


def test_a_class_without_labels_blocks_self_maps() -> None:
    # Without labels of -x, "flip_cols leaves +x alone" could not be told from "+x -> -x".
    X, pos, sc = _scan(detector_mirror=True)
    idx = _labels(sc)
    keep = sc.label_map.ravel()[idx] != sc.class_names.index("-x")
    sm = discover_symmetry(X, pos, X[idx][keep], sc.label_map.ravel()[idx][keep], sc.class_names)
    _check_against_truth(sm, _truth(sc))
    reasons = [c["decision"] for op in SYMMETRY_OPS[1:] for c in sm.evidence[op]["classes"].values()]
    assert any("cannot be told from a class without labels" in r for r in reasons)


def test_symmetry_map_round_trip_and_parse_directions() -> None:
    sm, _, _ = _found({})
    again = SymmetryMap.from_dict(sm.to_dict())
    assert again.arrows == sm.arrows and again.status == sm.status
    assert "7 of 7 detector operations used" in sm.summary()
    assert parse_directions("A=0, B=180,C=invariant", ["A", "B", "C"]) == {"A": 0.0, "B": 180.0, "C": "invariant"}
    with pytest.raises(ValueError, match="not one of the classes"):
        parse_directions("Z=0", ["A"])
    with pytest.raises(ValueError, match="angle in degrees"):
        parse_directions("A=up", ["A"])
    with pytest.raises(ValueError, match="bad arrows"):
        SymmetryMap.from_dict({"class_names": ["a", "b"], "arrows": {"rot90": [0]}})
