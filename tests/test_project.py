"""Tests for polmap.io.project: the workspace file."""

from __future__ import annotations

import json
import os
import re
import time

import h5py
import numpy as np
import pytest

from polmap.io.dataset import Calibration, Dataset4D, DatasetError
from polmap.labels import ClassSet, LabelStore
from polmap.io.project import FORMAT_VERSION, Workspace, WorkspaceError, WorkspaceMismatch


def _dataset(seed: int = 0, name: str = "scan", shape=(12, 16, 4, 4)) -> Dataset4D:
    data = np.random.default_rng(seed).integers(0, 100, size=shape).astype(np.uint16)
    return Dataset4D.from_array(data, name=name, calibration=Calibration(real_step=0.4, real_units="nm"))


@pytest.fixture
def ds() -> Dataset4D:
    return _dataset()


def _populate(ws: Workspace) -> None:
    m = np.zeros(ws.dataset.scan_shape, bool)
    m[2:6, 3:9] = True
    ws.labels.add_region(m, "+y")
    ws.labels.add_point(0, 0, "-x")
    ws.labels.add_point(11, 15, "none", source="suggestion")
    ws.labels.add_class("wall", "#abcdef")
    ws.add_model("cnn-1", bytes(range(256)) * 4, {"arch": "compact", "val_acc": np.float32(0.875)})
    ws.add_model("empty", b"", None)
    probs = np.random.default_rng(1).random((12, 16, 6)).astype(np.float32)
    ws.add_prediction(
        "latest",
        {"probabilities": probs, "label_map": probs.argmax(-1).astype(np.int16), "walls": probs[..., 0] > 0.5},
        {"model": "cnn-1", "label_hash": ws.labels.hash()},
    )
    ws.log("trained", epochs=np.int64(12), loss=[0.5, 0.25], path=ws.path)


def _assert_same(a: Workspace, b: Workspace) -> None:
    assert a.dataset == b.dataset
    assert a.preprocess == b.preprocess
    assert a.classes == b.classes
    assert a.labels.hash() == b.labels.hash()
    ea, eb = a.labels.entries(), b.labels.entries()
    for k in ea:
        np.testing.assert_array_equal(ea[k], eb[k])
        assert ea[k].dtype == eb[k].dtype
    assert a.labels.next_group == b.labels.next_group
    assert a.model_names() == b.model_names()
    for n in a.model_names():
        assert a.get_model(n) == b.get_model(n)
    assert a.prediction_names() == b.prediction_names()
    for n in a.prediction_names():
        (pa, ma), (pb, mb) = a.get_prediction(n), b.get_prediction(n)
        assert ma == mb and list(pa) == list(pb)
        for k in pa:
            np.testing.assert_array_equal(pa[k], pb[k])
            assert pa[k].dtype == pb[k].dtype and pa[k].shape == pb[k].shape
    assert a.provenance == b.provenance
    assert a.created == b.created and a.modified == b.modified


def test_create_and_reopen_restores_everything(tmp_path, ds):
    path = tmp_path / "session.polmap.h5"
    ws = Workspace.create(path, ds, ClassSet.signed(), {"bin_factor": 2, "scaling": "sqrt"})
    assert path.exists() and not ws.dirty
    assert ws.dataset.fingerprint == ds.fingerprint and ws.dataset.scan_shape == (12, 16)
    assert ws.dataset.detector_shape == (4, 4)
    assert ws.dataset.calibration["real_step"] == 0.4
    assert [e["event"] for e in ws.provenance] == ["created"]
    _populate(ws)
    assert ws.dirty
    ws.save()
    back = Workspace.open(path, ds)
    _assert_same(ws, back)
    assert back.labels.counts() == {"none": 1, "+x": 0, "-x": 1, "+y": 24, "-y": 0, "wall": 0}
    data, meta = back.get_model("cnn-1")
    assert len(data) == 1024 and data[:3] == b"\x00\x01\x02" and meta == {"arch": "compact", "val_acc": 0.875}
    assert back.get_model("empty") == (b"", {})
    assert back.provenance[-1]["details"] == {"epochs": 12, "loss": [0.5, 0.25], "path": str(path)}
    assert not back.dirty
    # a second save/open cycle is stable too
    back.labels.undo()  # no history after open: nothing to undo
    back.save()
    _assert_same(back, Workspace.open(path))


def test_workspace_equals_after_edits_and_removals(tmp_path, ds):
    ws = Workspace.create(tmp_path / "w.polmap.h5", ds, ClassSet.axis())
    assert ws.labels.add_points(np.array([[1, 1], [2, 2]]), ["na", "horizontal"]) == 2
    ws.add_model("a", b"123")
    ws.add_model("a", b"4567", {"v": 2})  # replaces
    ws.add_prediction("p", {"x": np.arange(6.0).reshape(2, 3)})
    ws.remove_prediction("p")
    ws.set_preprocess({"bin_factor": 4})
    ws.save()
    back = Workspace.open(ws.path)
    _assert_same(ws, back)
    assert back.get_model("a") == (b"4567", {"v": 2})
    assert back.prediction_names() == [] and back.preprocess == {"bin_factor": 4}


def test_create_refuses_to_overwrite(tmp_path, ds):
    path = tmp_path / "w.polmap.h5"
    Workspace.create(path, ds, ClassSet.axis())
    with pytest.raises(FileExistsError, match="already exists"):
        Workspace.create(path, ds, ClassSet.axis())
    ws = Workspace.create(path, ds, ClassSet.signed(), overwrite=True)
    assert Workspace.open(path).classes == ClassSet.signed() == ws.classes


def test_mismatch_names_both_fingerprints_and_files(tmp_path, ds):
    path = tmp_path / "w.polmap.h5"
    Workspace.create(path, ds, ClassSet.axis())
    other = _dataset(seed=5, name="other")
    assert other.fingerprint != ds.fingerprint
    with pytest.raises(WorkspaceMismatch) as info:
        Workspace.open(path, other)
    msg = str(info.value)
    for part in (str(path), ds.fingerprint, other.fingerprint, "array:scan", "array:other"):
        assert part in msg
    assert isinstance(info.value, DatasetError) and isinstance(info.value, ValueError)


def test_same_content_elsewhere_is_relocated(tmp_path, ds):
    path = tmp_path / "w.polmap.h5"
    Workspace.create(path, ds, ClassSet.axis())
    moved = _dataset(seed=0, name="moved")  # same bytes, new source
    assert moved.fingerprint == ds.fingerprint
    ws = Workspace.open(path, moved)
    assert ws.dataset.source == "array:moved" and ws.dirty
    assert ws.provenance[-1]["event"] == "dataset_relocated"
    assert ws.provenance[-1]["details"]["old_source"] == "array:scan"


def test_not_a_workspace_and_corrupt_files(tmp_path, ds):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Workspace.open(tmp_path / "missing.polmap.h5")
    junk = tmp_path / "junk.polmap.h5"
    junk.write_bytes(b"this is not HDF5 at all" * 100)
    with pytest.raises(WorkspaceError, match="not a readable polmap workspace.*truncated or corrupt"):
        Workspace.open(junk)
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(WorkspaceError, match="without a polmap_format attribute"):
        Workspace.open(plain)
    sim = tmp_path / "sim.h5"
    with h5py.File(sim, "w") as f:
        f.attrs["polmap_format"] = "polmap-sim"
    with pytest.raises(WorkspaceError, match="'polmap-sim' file .*open it as data"):
        Workspace.open(sim)
    # a truncated copy of a real workspace
    good = tmp_path / "good.polmap.h5"
    ws = Workspace.create(good, ds, ClassSet.axis())
    ws.add_model("m", os.urandom(200_000))
    ws.save()
    cut = tmp_path / "cut.polmap.h5"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WorkspaceError, match=re.escape(str(cut))):
        Workspace.open(cut)
    # a workspace with a part missing
    with h5py.File(good, "a") as f:
        del f["labels"]
    with pytest.raises(WorkspaceError, match="damaged polmap workspace.*labels"):
        Workspace.open(good)


def test_future_format_is_refused(tmp_path, ds):
    path = tmp_path / "w.polmap.h5"
    Workspace.create(path, ds, ClassSet.axis())
    with h5py.File(path, "a") as f:
        f.attrs["polmap_version"] = FORMAT_VERSION + 1
    with pytest.raises(WorkspaceError, match=f"version {FORMAT_VERSION + 1}, newer .*upgrade polmap"):
        Workspace.open(path)


def test_crash_during_save_keeps_previous_file(tmp_path, ds, monkeypatch):
    path = tmp_path / "w.polmap.h5"
    ws = Workspace.create(path, ds, ClassSet.axis())
    ws.labels.add_point(1, 1, "vertical")
    ws.save()
    before = path.read_bytes()
    ws.labels.add_point(2, 2, "horizontal")
    ws.add_model("big", b"x" * 1000)

    real = h5py.Group.create_dataset
    calls = {"n": 0}

    def dying(self, *args, **kwargs):  # write a few datasets, then "crash"
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError("disk full (simulated)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", dying)
    with pytest.raises(OSError, match="simulated"):
        ws.save()
    monkeypatch.undo()
    assert calls["n"] == 6
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.polmap.h5"]  # temp file cleaned up
    old = Workspace.open(path, ds)
    assert len(old.labels) == 1 and old.model_names() == []
    assert ws.dirty  # the in-memory changes are still unsaved, and a retry works
    ws.save()
    assert len(Workspace.open(path).labels) == 2


def test_crash_at_rename_keeps_previous_file(tmp_path, ds, monkeypatch):
    path = tmp_path / "w.polmap.h5"
    ws = Workspace.create(path, ds, ClassSet.axis())
    before = path.read_bytes()
    ws.labels.add_point(0, 0, "na")

    def no_replace(src, dst):
        raise OSError("power cut (simulated)")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(OSError, match="power cut"):
        ws.save()
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def test_save_keeps_file_mode_and_save_as(tmp_path, ds):
    path = tmp_path / "w.polmap.h5"
    ws = Workspace.create(path, ds, ClassSet.axis())
    os.chmod(path, 0o640)
    ws.labels.add_point(0, 0, "na")
    ws.save()
    assert path.stat().st_mode & 0o777 == 0o640
    copy = ws.save(tmp_path / "sub" / "copy.polmap.h5")
    assert ws.path == copy and Workspace.open(copy).labels.hash() == ws.labels.hash()


def test_autosave_only_when_changed(tmp_path, ds):
    ws = Workspace.create(tmp_path / "w.polmap.h5", ds, ClassSet.signed())
    assert ws.autosave() is False
    ws.labels.add_point(3, 3, "+x")
    assert ws.dirty and ws.autosave() is True
    assert ws.autosave() is False and ws.last_save_seconds > 0
    ws.labels.undo()
    assert ws.autosave(min_interval_s=3600) is False  # too soon after the last save
    assert ws.autosave() is True
    assert len(Workspace.open(ws.path).labels) == 0
    ws.log("looked")
    assert ws.autosave() is True
    ws.set_labels(LabelStore((12, 16), ClassSet.axis()))
    assert ws.autosave() is True and Workspace.open(ws.path).classes == ClassSet.axis()


def test_save_time_with_realistic_content(tmp_path):
    """5,000 labels + a 1 MB model + a (128, 128, 5) float32 prediction."""
    ds = _dataset(shape=(128, 128, 2, 2))
    ws = Workspace.create(tmp_path / "w.polmap.h5", ds, ClassSet.signed())
    rng = np.random.default_rng(0)
    flat = rng.choice(128 * 128, size=5000, replace=False)
    ws.labels.add_points(np.stack([flat // 128, flat % 128], 1), rng.integers(0, 5, 5000), source="click")
    assert len(ws.labels) == 5000
    ws.add_model("cnn", rng.bytes(2**20))
    ws.add_prediction("latest", {"probabilities": rng.random((128, 128, 5), dtype=np.float32)})
    ws.save()  # warm-up
    times = []
    for i in range(5):
        ws.labels.add_point(i, 0, (int(ws.labels.label_map()[i, 0]) + 1) % 5)  # always a change
        t0 = time.perf_counter()
        assert ws.autosave()
        times.append(time.perf_counter() - t0)
    best = min(times)
    print(f"\nworkspace save: best {best * 1e3:.1f} ms, median {np.median(times) * 1e3:.1f} ms, "
          f"file {ws.path.stat().st_size / 2**20:.2f} MiB")
    assert best < 0.5  # cheap enough to run after every label change
    back = Workspace.open(ws.path)
    assert len(back.labels) == len(ws.labels) >= 5000
    assert back.labels.hash() == ws.labels.hash()


def test_models_predictions_and_log_validation(tmp_path, ds):
    ws = Workspace.create(tmp_path / "w.polmap.h5", ds, ClassSet.axis())
    with pytest.raises(ValueError, match="without '/'"):
        ws.add_model("a/b", b"")
    with pytest.raises(ValueError, match="must be bytes"):
        ws.add_model("a", "text")
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        ws.add_model("a", b"", {"bad": object()})
    with pytest.raises(KeyError, match=r"no model 'x'.*available: \[\]"):
        ws.get_model("x")
    with pytest.raises(ValueError, match="only numeric or boolean"):
        ws.add_prediction("p", {"s": np.array(["a", "b"])})
    with pytest.raises(ValueError, match="non-empty mapping"):
        ws.add_prediction("p", {})
    with pytest.raises(KeyError, match="no prediction 'p'"):
        ws.get_prediction("p")
    with pytest.raises(ValueError, match="non-empty string"):
        ws.log("")
    with pytest.raises(ValueError, match=r"scan of shape \(3, 3\).*\(12, 16\)"):
        ws.set_labels(LabelStore((3, 3), ClassSet.axis()))
    # stored arrays are copies: later edits by the caller don't leak in
    a = np.zeros((2, 2))
    ws.add_prediction("p", {"a": a})
    a[0, 0] = 9
    assert ws.get_prediction("p")[0]["a"][0, 0] == 0
    ev = ws.log("predicted", n=np.int32(3), arr=np.arange(3))
    assert ev["event"] == "predicted" and ev["details"] == {"n": 3, "arr": [0, 1, 2]}
    assert json.dumps(ws.summary())
    assert ws.summary()["models"] == [] and ws.summary()["predictions"] == ["p"]
