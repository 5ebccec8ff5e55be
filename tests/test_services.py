"""Service-layer behaviour that needs no running page: how errors reach the user and the log."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("streamlit")
from polmap.app import errors, session, datasets, figures  # noqa: E402


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    out: list[str] = []
    monkeypatch.setattr(errors.st, "error", out.append)
    return out


@pytest.mark.parametrize("exc", [ValueError("expected 4-D data, found 2-D"), FileNotFoundError("no such file: a.h5"),
                                 errors.UserError("label at least two classes")])
def test_input_errors_show_their_message_and_are_not_logged(exc: Exception, shown: list[str],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR), errors.guarded("Loading"):
        raise exc
    assert shown == [f"Loading: {exc}"]
    assert not caplog.records


@pytest.mark.parametrize("exc", [TypeError("unsupported operand"), KeyError("probabilities"), IndexError("out of range"),
                                 ZeroDivisionError("division by zero")])
def test_programming_errors_are_logged_with_traceback_and_not_dressed_as_user_errors(
        exc: Exception, shown: list[str], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR), errors.guarded("Training"):
        raise exc
    assert len(shown) == 1 and "an unexpected error occurred" in shown[0] and type(exc).__name__ in shown[0]
    assert "Your labels are saved" in shown[0]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Traceback (most recent call last)" in logged and type(exc).__name__ in logged


def test_a_stored_model_that_cannot_be_restored_is_reported_and_the_labels_kept(
        tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import numpy as np

    from polmap.io import open_dataset

    monkeypatch.setenv("POLMAP_WORKSPACE_DIR", str(tmp_path / "ws"))
    np.save(tmp_path / "scan.npy", np.random.default_rng(0).poisson(5, size=(6, 8, 16, 16)).astype(np.uint16))
    sess = session.Session()
    datasets.set_dataset(sess, open_dataset(str(tmp_path / "scan.npy")), {"kind": "file"})
    sess.workspace.labels.add_point(2, 3, 0)
    sess.workspace.add_model(session.MODEL_NAME, b"not a checkpoint", {"key": "k"})
    sess.workspace.save()

    again = session.Session(id=sess.id)  # the same browser session after a restart
    with caplog.at_level(logging.ERROR):
        datasets.set_dataset(again, open_dataset(str(tmp_path / "scan.npy")), {"kind": "file"})
    assert again.model is None
    warnings = [t for k, t in again.messages if k == "warning"]
    assert len(warnings) == 1 and "was not restored" in warnings[0] and "checkpoint" in warnings[0]
    assert "labels are kept" in warnings[0]
    assert again.workspace.labels.label_at(2, 3) is not None


def test_predicted_area_leaves_out_positions_not_yet_predicted() -> None:
    import numpy as np

    from polmap.learn.predict import Prediction

    lm = np.array([[0, 0, 1], [1, 1, -1]], dtype=np.int16)
    nan = np.full(lm.shape, np.nan, dtype=np.float32)
    pred = Prediction(probabilities=np.full(lm.shape + (2,), 0.5, np.float32), label_map=lm, entropy=nan, margin=nan,
                      disagreement=nan, class_names=["P1", "P2"])
    text = figures.predicted_area_markdown(["P1", "P2"], ["#ff0000", "#0000ff"], pred)
    assert "P1 40%" in text and "P2 60%" in text
    assert "(1 of 6 positions not predicted)" in text
