"""The dashboard, driven headless with Streamlit's AppTest: every page, the whole loop, the error paths.

Runs on the ``tiny`` simulated preset (24 x 32 scan) so that the whole file
takes well under a minute of CPU; training uses 2 members x 3 epochs.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")

SMALL_TRAINING = {"train_epochs": 3, "train_members": 2, "train_spe": 32}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root with a few files and a workspace folder, both temporary."""
    root = tmp_path / "data"
    root.mkdir()
    rng = np.random.default_rng(1)
    np.save(root / "scan.npy", rng.poisson(5, size=(6, 8, 16, 16)).astype(np.uint16))
    with h5py.File(root / "two.h5", "w") as f:
        f["first/data"] = rng.poisson(5, size=(5, 6, 12, 12)).astype(np.uint16)
        f["second/data"] = rng.poisson(5, size=(4, 7, 12, 12)).astype(np.uint16)
    (root / "broken.h5").write_bytes(b"this is not an HDF5 file at all" * 10)
    (tmp_path / "outside.npy").write_bytes(b"")
    monkeypatch.setenv("POLMAP_DATA_ROOT", str(root))
    monkeypatch.setenv("POLMAP_WORKSPACE_DIR", str(tmp_path / "workspaces"))
    monkeypatch.setenv("POLMAP_DEMO_PRESET", "tiny")
    monkeypatch.setenv("POLMAP_MAX_UPLOAD_MB", "1")
    return tmp_path


def _app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=240)
    at.run()
    _ok(at)
    return at


def _ok(at: AppTest) -> None:
    """No traceback anywhere on the page."""
    assert not at.exception, [e.message for e in at.exception]


def _errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def _goto(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"pages/{page}.py")
    at.run()
    _ok(at)
    return at


def _sess(at: AppTest):
    return at.session_state["polmap"]


def _label_truth(sess, per_class: int = 5, seed: int = 0) -> None:
    """Label a few positions of every class from the simulation's ground truth (an oracle user)."""
    gt = sess.dataset.ground_truth.label_map
    rng = np.random.default_rng(seed)
    for k in range(len(sess.classes)):
        rr, cc = np.nonzero(gt == k)
        idx = rng.choice(len(rr), size=min(per_class, len(rr)), replace=False)
        sess.labels.add_points(np.stack([rr[idx], cc[idx]], 1), k, source="click")


def _train(at: AppTest) -> AppTest:
    _goto(at, "train")
    for key, v in SMALL_TRAINING.items():
        at.number_input(key=key).set_value(v)
    at.button(key="train_go").click().run()
    _ok(at)
    return at


# ----------------------------------------------------------------------------------------
def test_first_visit_loads_demo_and_shows_data_page(env: Path) -> None:
    at = _app()
    sess = _sess(at)
    assert sess.dataset is not None and sess.dataset.scan_shape == (24, 32)
    assert [t.value for t in at.title] == ["Data"]
    assert not _errors(at)
    # sidebar: dataset, labels per class, model status, workspace file
    side = " ".join(m.value for m in at.sidebar.markdown) + " ".join(c.value for c in at.sidebar.caption)
    assert "24 x 32 scan" in side and "Labels (0)" in side and "not trained yet" in side
    assert ".polmap.h5" in side
    # the loop hint until dismissed
    assert any("The loop" in m.value for m in at.markdown)
    at.button(key="hint_ok").click().run()
    assert not any("The loop" in m.value for m in at.markdown)
    # summary table and the before/after preprocessing preview
    [summary] = at.dataframe
    assert summary.value.iloc[0]["scan (rows x cols)"] == "24 x 32" and "fingerprint" in summary.value.columns
    assert sess.workspace.path.exists() and sess.workspace.path.parent == env / "workspaces"


def test_data_page_calibration_and_preprocessing(env: Path) -> None:
    at = _app()
    sess = _sess(at)
    form = at.number_input
    # calibration: change the scan step
    [step] = [n for n in form if n.label == "Scan step"]
    step.set_value(2.5)
    at.button(key="FormSubmitter:calibration-Apply calibration").click().run()
    _ok(at)
    assert sess.dataset.calibration.real_step == 2.5
    assert sess.workspace.dataset.calibration["real_step"] == 2.5
    # the choices are the core's, never a list of the page's own
    from polmap.process import preprocess as pp
    from polmap.labels import CLASS_PRESETS
    from polmap.simulate import PRESETS

    boxes = {b.label: b for b in at.selectbox}
    assert boxes["Simulated scan (with ground truth)"].options == list(PRESETS)
    assert boxes["Switch to a preset (only before labelling)"].options == [CLASS_PRESETS[k] for k in CLASS_PRESETS]
    for label, key, options in (("Centring (descan)", "centring", pp.CENTRINGS), ("Scaling", "scaling", pp.SCALINGS),
                                ("Normalise", "normalise", pp.NORMALISATIONS), ("Boxing mode", "box_mode", pp.BOX_MODES)):
        assert sorted(boxes[label].options) == sorted(options), label
        assert boxes[label].value == sess.preprocess.get(key, getattr(pp.PreprocessConfig(), key)), label
    # preprocessing: output size 32, mean boxing
    [size] = [n for n in at.number_input if n.label == "Output size (px)"]
    size.set_value(32)
    boxes["Boxing mode"].set_value("mean")
    at.button(key="FormSubmitter:preprocess-Apply preprocessing").click().run()
    _ok(at)
    assert sess.preprocess["output_size"] == 32 and sess.preprocess["box_mode"] == "mean"
    assert sess.workspace.preprocess["output_size"] == 32


def test_data_folder_picker_confined_to_root(env: Path) -> None:
    at = _app()
    sess = _sess(at)
    assert {"scan.npy", "two.h5", "broken.h5"} <= set(at.selectbox(key="folder_pick").options)
    for bad in ("../outside.npy", "/etc/passwd", "../../../../etc/hostname"):
        at.text_input(key="folder_typed").set_value(bad)
        at.button(key="open_file").click().run()
        _ok(at)
        assert any("outside the data folder" in e for e in _errors(at)), (bad, _errors(at))
    # a file that is not a dataset: a clear message, the demo stays loaded
    at.text_input(key="folder_typed").set_value("broken.h5")
    at.button(key="open_file").click().run()
    _ok(at)
    assert _errors(at) and "broken.h5" in _errors(at)[0]
    assert sess.dataset.scan_shape == (24, 32)
    # a plain .npy opens
    at.text_input(key="folder_typed").set_value("scan.npy")
    at.button(key="open_file").click().run()
    _ok(at)
    assert sess.dataset.scan_shape == (6, 8) and not _errors(at)


def test_hdf5_with_several_datasets_asks_which(env: Path) -> None:
    at = _app()
    sess = _sess(at)
    at.selectbox(key="folder_pick").set_value("two.h5")
    at.button(key="open_file").click().run()
    _ok(at)
    radio = at.radio(key="cand_choice")
    assert len(radio.options) == 2
    at.radio(key="cand_choice").set_value(at.radio(key="cand_choice").options[1])
    at.button(key="open_cand").click().run()
    _ok(at)
    assert sess.dataset.scan_shape == (4, 7) and sess.dataset.dataset_path.endswith("second/data")


def test_wrong_hdf5_path_is_a_clear_error(env: Path) -> None:
    from polmap.app import datasets

    at = _app()
    with pytest.raises(Exception) as info:
        datasets.open_file(env / "data" / "two.h5", "/no/such/data")
    assert "/no/such/data" in str(info.value)
    # in the page: a typed path that does not exist
    at.text_input(key="folder_typed").set_value("missing.h5")
    at.button(key="open_file").click().run()
    _ok(at)
    assert any("does not exist" in e for e in _errors(at))


def test_label_clicks_undo_and_autosave(env: Path) -> None:
    from polmap.io.project import Workspace

    at = _goto(_app(), "label")
    sess = _sess(at)
    sess.selected = (3, 4)
    at.button(key="clsbtn_label_1").click().run()  # +x at (3, 4)
    _ok(at)
    assert sess.labels.label_at(3, 4)["class"] == "+x"
    at.button(key="mv_r").click().run()  # arrow: move right
    assert sess.selected == (3, 5)
    at.button(key="clsbtn_label_3").click().run()  # +y at (3, 5)
    assert sess.labels.counts()["+y"] == 1
    # autosaved after every change: the file on disk has both labels
    assert len(Workspace.open(sess.workspace.path).labels) == 2
    at.button(key="undo").click().run()
    _ok(at)
    assert len(sess.labels) == 1
    assert len(Workspace.open(sess.workspace.path).labels) == 1
    at.button(key="redo").click().run()
    assert len(sess.labels) == 2
    at.button(key="unlabel").click().run()
    assert sess.labels.label_at(3, 5) is None
    # counts on the class buttons
    assert any(b.label.startswith("+x · 1") for b in at.button)


def test_paint_through_the_label_store(env: Path) -> None:
    from polmap.app import labelling

    at = _goto(_app(), "label")
    sess = _sess(at)
    # the Paint mode renders (canvas or a notice), without a traceback
    at.segmented_control(key="label_mode").set_value("Paint").run()
    _ok(at)
    # what a brush stroke does: canvas pixels -> covered positions -> one region label
    R, C = sess.dataset.scan_shape
    scale = 10
    rgba = np.zeros((R * scale, C * scale, 4), np.uint8)
    rgba[2 * scale : 5 * scale, 3 * scale : 9 * scale, 3] = 255
    mask = labelling.canvas_mask(rgba, (R, C))
    assert mask.sum() == 3 * 6 and mask[2:5, 3:9].all()
    assert labelling.paint(sess, mask, 2) == 18
    at.run()
    _ok(at)
    assert sess.labels.counts()["-x"] == 18
    assert any("-x: **18**" in m.value for m in at.sidebar.markdown)
    # the eraser removes them again, one undoable action
    assert labelling.paint(sess, mask, None, erase=True) == 18
    assert len(sess.labels) == 0 and sess.labels.can_undo


def test_suggest_loop_labels_one_at_a_time(env: Path) -> None:
    at = _goto(_app(), "suggest")
    sess = _sess(at)
    at.selectbox[0].set_value("grid")
    [budget] = [n for n in at.number_input if n.label == "Budget"]
    budget.set_value(4)
    at.button(key="FormSubmitter:suggest_form-Suggest").click().run()
    _ok(at)
    assert sess.suggestions is not None and len(sess.suggestions) == 4
    first = tuple(int(v) for v in sess.suggestions[0])
    at.button(key="clsbtn_suggest_1").click().run()
    _ok(at)
    assert sess.labels.label_at(*first)["source"] == "suggestion"
    at.button(key="suggest_skip").click().run()  # skip #2
    at.button(key="clsbtn_suggest_0").click().run()
    at.button(key="clsbtn_suggest_0").click().run()
    _ok(at)
    assert len(sess.labels) == 3 and len(sess.skipped) == 1
    assert any("All 4 suggestions answered" in s.value for s in at.success)
    # retrain and suggest again: a model, its map, a fresh round of suggestions
    _label_truth(sess, per_class=3)
    sess.train_settings = {"epochs": 2, "n_members": 2, "samples_per_epoch": 32}
    at.button(key="retrain_suggest").click().run()
    _ok(at)
    assert not _errors(at)
    assert sess.model is not None and sess.prediction is not None
    assert sess.suggestions is not None and len(sess.suggestions) == 4 and sess.suggestion_index == 0


def test_training_with_one_class_is_a_clear_error(env: Path) -> None:
    at = _app()
    sess = _sess(at)
    sess.labels.add_points(np.array([[0, 0], [1, 1], [2, 2]]), 1)
    _train(at)
    errs = _errors(at)
    assert errs and "at least two classes" in errs[0]
    assert sess.model is None
    _goto(at, "map")
    assert any("No model yet" in i.value for i in at.info)


def test_training_warnings_are_shown_on_the_train_page(env: Path) -> None:
    # A class with a single label cannot be validated: the report says so, and so must the page.
    at = _app()
    sess = _sess(at)
    _label_truth(sess, per_class=4)
    one = sess.classes.names.index("-y")
    rr, cc = np.nonzero(sess.dataset.ground_truth.label_map == one)
    sess.labels.erase_region(sess.dataset.ground_truth.label_map == one)
    sess.labels.add_points(np.array([[rr[0], cc[0]]]), one, source="click")
    assert sess.labels.counts()["-y"] == 1
    _train(at)
    assert sess.model is not None
    warns = " ".join(w.value for w in at.warning)
    assert "Classes labelled in a single place" in warns and "'-y'" in warns


def test_labels_the_model_cannot_separate_show_a_failure_not_a_success(env: Path) -> None:
    # Labels drawn at random: whatever the training loss, out-of-fold accuracy is near chance.
    at = _app()
    sess = _sess(at)
    R, C = sess.dataset.scan_shape
    rng = np.random.default_rng(3)
    flat = rng.choice(R * C, 40, replace=False)
    for k in range(len(sess.classes)):
        sel = flat[k::len(sess.classes)]
        sess.labels.add_points(np.stack([sel // C, sel % C], 1), k, source="click")
    _train(at)
    assert sess.model is not None
    assert sess.model_info["assessment"]["level"] == "failure"
    text = " ".join(e.value for e in at.error)
    assert "near chance" in text and "do not trust its map" in text
    assert not any("Trained in" in s.value for s in at.success)


def test_an_external_layout_file_shows_its_truth_and_calibration(env: Path) -> None:
    # /data + /ground_truth (2-D) + root attributes, the layout of scans made elsewhere.
    root = env / "data"
    rng = np.random.default_rng(2)
    truth = np.zeros((6, 8), np.int8)
    truth[:, 4:] = 1
    with h5py.File(root / "other_lab.h5", "w") as f:
        f["data"] = rng.poisson(5, size=(6, 8, 16, 16)).astype(np.uint16)
        f["ground_truth"] = truth
        f.attrs["class_names"] = np.array(["P up", "P down"], dtype=object)
        f.attrs["scan_step_nm"] = 2.0
        f.attrs["detector_pixel_size_mrad"] = 1.0
        f.attrs["voltage_kV"] = 200.0
    from polmap.io import open_dataset

    ds = open_dataset(root / "other_lab.h5")
    assert ds.ground_truth.class_names == ["P up", "P down"]
    assert ds.calibration.reciprocal_step == 1.0 and ds.calibration.reciprocal_units == "mrad"
    assert ds.calibration.real_step == 2.0 and ds.calibration.beam_energy_kev == 200.0
    at = _app()
    sess = _sess(at)
    from polmap.app import datasets

    datasets.set_dataset(sess, ds, {"kind": "root", "path": "other_lab.h5"})
    assert sess.classes.names == ["P up", "P down"]
    sess.labels.add_points(np.array([[0, 0], [1, 1], [2, 2], [3, 1], [4, 0], [5, 2]]), 0)
    sess.labels.add_points(np.array([[0, 5], [1, 6], [2, 7], [3, 5], [4, 6], [5, 7]]), 1)
    _train(at)
    _goto(at, "map")
    metrics = {m.label: m.value for m in at.metric}
    assert "Accuracy vs ground truth" in metrics
    # calibrated axes: the map in nm, the diffraction pattern beside it in mrad
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    titles = [(sp["layout"].get("xaxis", {}).get("title", {}) or {}).get("text", "") for sp in specs]
    assert any("nm" in t for t in titles) and any("mrad" in t for t in titles), titles


def test_train_map_export_and_read_back(env: Path) -> None:
    from PIL import Image

    from polmap.app import exports
    from polmap.labels import ClassSet, LabelStore
    from polmap.io.project import Workspace
    from polmap.learn.train import TrainedModel

    at = _app()
    sess = _sess(at)
    _label_truth(sess)
    _train(at)
    assert not _errors(at)
    assert sess.model is not None and sess.prediction is not None
    key = sess.model_key
    assert "CPU" in " ".join(c.value for c in at.caption) or "GPU" in " ".join(c.value for c in at.caption)
    # the same request again: served from the cache, no retraining
    at.button(key="train_go").click().run()
    _ok(at)
    assert sess.model_key == key
    assert any("no retraining" in i.value for i in at.info)
    # the model is in the workspace file
    assert "latest" in Workspace.open(sess.workspace.path).model_names()

    _goto(at, "map")
    assert not _errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert "Accuracy vs ground truth" in metrics
    # overlays on and off, the uncertainty view, a click on the map shows that pattern
    at.pills(key="map_overlays").set_value(["normalised entropy", "walls", "labelled points"]).run()
    _ok(at)
    at.radio(key="map_background").set_value("normalised entropy").run()
    _ok(at)
    at.session_state["map_fig"] = {"selection": {"points": [{"customdata": [5, 7]}], "point_indices": []}}
    sess.selected = (5, 7)
    at.run()
    assert any("(row 5, col 7)" in m.value for m in at.markdown)
    # conventional centre-of-mass / Friedel map beside it
    at.toggle(key="conv_on").set_value(True).run()
    _ok(at)
    assert not _errors(at)
    assert any("Rule:" in m.value for m in at.markdown)

    # exports, read back
    R, C = sess.dataset.scan_shape
    K = len(sess.classes)
    png = Image.open(io.BytesIO(exports.export_png(sess)))
    assert png.size[0] % C == 0 and png.size[1] % R == 0 and png.size[0] // C == png.size[1] // R
    from polmap.cli import main as cli_main
    from polmap.io.prediction_file import DESCRIPTIONS, read_prediction_file

    map_file = env / "map.h5"
    map_file.write_bytes(exports.export_hdf5(sess))
    arrays, attrs = read_prediction_file(map_file)
    assert arrays["probabilities"].shape == (R, C, K)
    np.testing.assert_allclose(arrays["probabilities"].sum(-1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(arrays["label_map"], sess.prediction.label_map)
    np.testing.assert_allclose(arrays["entropy"], sess.prediction.entropy, atol=1e-6)
    assert arrays["labels/row"].shape == (len(sess.labels),)
    assert attrs["class_names"] == sess.classes.names
    assert attrs["provenance"]["dataset"]["fingerprint"] == sess.dataset.fingerprint
    assert any(p["event"] == "trained" for p in attrs["provenance"]["workspace"])
    with h5py.File(map_file, "r") as f:  # every array says what it is
        assert all(f[k].attrs["description"] == DESCRIPTIONS[k] for k in DESCRIPTIONS if k in f)
    # the CLI reads the app's file: one format, one reader
    assert cli_main(["export", "--pred", str(map_file), "--png", str(env / "m.png"), "--quiet"]) == 0
    with Image.open(env / "m.png") as im:
        assert im.size[0] % C == 0 and im.size[0] // C == im.size[1] // R
    store = LabelStore(sess.labels.scan_shape, ClassSet(sess.classes.names, sess.classes.colors))
    store.import_csv(io.StringIO(exports.export_labels_csv(sess).decode()))
    assert store.hash() == sess.labels.hash()
    model = TrainedModel.load(exports.export_checkpoint(sess))
    assert list(model.class_names) == sess.classes.names
    # the download buttons are on the page
    assert len(at.get("download_button")) == 5

    # apply the model to another scan (here: the same preset again, a second "time slice")
    at.radio(key="apply_kind").set_value("demo").run()
    from polmap.simulate import PRESETS

    assert at.selectbox(key="apply_preset").options == list(PRESETS)  # the core's list, not the page's
    at.selectbox(key="apply_preset").set_value("tiny")
    at.button(key="apply_go").click().run()
    _ok(at)
    assert not _errors(at)
    assert sess.applied is not None and sess.applied.prediction.label_map.shape == sess.applied.dataset.scan_shape
    # a scan from another detector: refused with a clear message, the session goes on
    at.radio(key="apply_kind").set_value("data folder").run()
    at.selectbox(key="apply_file").set_value("scan.npy")
    at.button(key="apply_go").click().run()
    _ok(at)
    assert any("detector" in e for e in _errors(at)), _errors(at)
    assert sess.model is not None


def test_a_model_for_other_classes_is_refused(env: Path) -> None:
    from polmap.app import errors, datasets, training, exports

    at = _app()
    sess = _sess(at)
    _label_truth(sess, per_class=3)
    _train(at)
    data = exports.export_checkpoint(sess)
    # another session on a dataset with the paper's classes
    at2 = _app()
    sess2 = _sess(at2)
    datasets.change_classes(sess2, "axis")
    with pytest.raises(errors.UserError, match="trained for the classes"):
        training.upload_model(sess2, data)
    with pytest.raises(ValueError, match="checkpoint"):
        training.upload_model(sess2, b"garbage bytes")
    with pytest.raises(errors.UserError, match="upload limit"):
        datasets.save_upload(b"x" * (2 * 2**20), "big.h5")
    assert sess2.model is None


def test_two_sessions_never_share_labels_models_or_maps(env: Path) -> None:
    a = _app()
    b = _app()
    sa, sb = _sess(a), _sess(b)
    # b opens another dataset from the data folder
    b.text_input(key="folder_typed").set_value("scan.npy")
    b.button(key="open_file").click().run()
    _ok(b)
    assert sa.dataset.fingerprint != sb.dataset.fingerprint
    assert sa.workspace.path != sb.workspace.path
    _label_truth(sa, per_class=3)
    _train(a)
    a.run()
    b.run()
    assert len(sa.labels) > 0 and len(sb.labels) == 0
    assert sa.model is not None and sb.model is None and sb.prediction is None
    side_b = " ".join(m.value for m in b.sidebar.markdown)
    assert "Labels (0)" in side_b and "not trained yet" in " ".join(c.value for c in b.sidebar.caption)


def test_reloading_the_page_keeps_the_work(env: Path) -> None:
    """The session id lives in the URL (?ws=...): a reload reopens the same workspace files."""
    at = _app()
    sess = _sess(at)
    assert at.query_params["ws"] == [sess.id] or at.query_params["ws"] == sess.id
    _label_truth(sess, per_class=2)
    from polmap.app import session

    session.autosave(sess)
    n = len(sess.labels)
    again = AppTest.from_file(APP, default_timeout=240)
    again.query_params["ws"] = sess.id
    again.run()
    _ok(again)
    back = _sess(again)
    assert back.id == sess.id and len(back.labels) == n and back.labels.hash() == sess.labels.hash()
    # a made-up id is not accepted as a path component
    odd = AppTest.from_file(APP, default_timeout=240)
    odd.query_params["ws"] = "../../etc"
    odd.run()
    _ok(odd)
    assert _sess(odd).id != "../../etc" and len(_sess(odd).labels) == 0
