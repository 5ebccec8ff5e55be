"""The one prediction file: written by polmap predict and the app, read by polmap export."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from polmap.io.prediction_file import DESCRIPTIONS, FORMAT, read_prediction_file, write_prediction_file


def _arrays(R: int = 3, C: int = 4, K: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(K), size=(R, C)).astype(np.float32)
    return {"probabilities": p, "label_map": p.argmax(-1).astype(np.int16),
            "entropy": rng.uniform(0, 1, (R, C)).astype(np.float32), "domain_walls": np.eye(R, C, dtype=bool)}


def test_round_trip_with_labels(tmp_path: Path) -> None:
    a = _arrays()
    f = tmp_path / "p.h5"
    write_prediction_file(f, a, ["up", "down"], ["#ff0000", "#0000ff"], {"model": {"n": np.int64(3), "x": float("nan")}},
                          labels={"row": np.array([0, 2]), "col": np.array([1, 3]), "class": np.array([0, 1])},
                          label_attrs={"sources": ["click", "paint"]})
    arrays, attrs = read_prediction_file(f)
    for k in a:
        np.testing.assert_array_equal(arrays[k], a[k])
    np.testing.assert_array_equal(arrays["labels/col"], [1, 3])
    assert attrs == {"class_names": ["up", "down"], "class_colors": ["#ff0000", "#0000ff"],
                     "provenance": {"model": {"n": 3, "x": None}}, "format_version": 2}
    with h5py.File(f, "r") as h:
        assert h.attrs["polmap_format"] == FORMAT
        assert h["entropy"].attrs["description"] == DESCRIPTIONS["entropy"] and "divided by log K" in DESCRIPTIONS["entropy"]
        assert json.loads(h["labels"].attrs["sources"]) == ["click", "paint"]
    assert not list(tmp_path.glob("*.tmp"))


def test_the_apps_former_layout_is_still_read(tmp_path: Path) -> None:
    a = _arrays()
    f = tmp_path / "old.h5"
    with h5py.File(f, "w") as h:
        h.attrs["polmap_format"] = "polmap-map"
        h.attrs["class_names"] = json.dumps(["up", "down"])
        h.attrs["class_colors"] = json.dumps(["#ff0000", "#0000ff"])
        h.attrs["dataset_fingerprint"] = "abc"
        for k, v in a.items():
            h[f"prediction/{k}"] = v
        h["prediction/uncertainty_normalised"] = a["entropy"]
    arrays, attrs = read_prediction_file(f)
    assert set(arrays) == set(a)
    assert attrs["provenance"] == {"dataset_fingerprint": "abc"} and attrs["format_version"] == 1


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.h5 does not exist"):
        read_prediction_file(tmp_path / "nope.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match=r"text.h5 is not a polmap prediction \(not an HDF5 file\)"):
        read_prediction_file(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as h:
        h["data"] = np.zeros((2, 2, 4, 4))
    with pytest.raises(ValueError, match="other.h5 is not a polmap prediction: its polmap_format is None"):
        read_prediction_file(tmp_path / "other.h5")
    a = _arrays()
    with pytest.raises(ValueError, match=r"probabilities must have shape \(R, C, 3\)"):
        write_prediction_file(tmp_path / "x.h5", a, ["a", "b", "c"], None, {})
    with pytest.raises(ValueError, match="label_map must have the scan shape"):
        write_prediction_file(tmp_path / "x.h5", {**a, "label_map": a["label_map"][:2]}, ["a", "b"], None, {})
    with pytest.raises(ValueError, match="unknown prediction arrays \\['uncertainty'\\]"):
        write_prediction_file(tmp_path / "x.h5", {**a, "uncertainty": a["entropy"]}, ["a", "b"], None, {})
    with pytest.raises(FileNotFoundError, match="output folder"):
        write_prediction_file(tmp_path / "no" / "x.h5", a, ["a", "b"], None, {})
