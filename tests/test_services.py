"""Service-layer behaviour that needs no running page: how errors reach the user and the log."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("streamlit")
from polmap import services as svc  # noqa: E402


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    out: list[str] = []
    monkeypatch.setattr(svc.st, "error", out.append)
    return out


@pytest.mark.parametrize("exc", [ValueError("expected 4-D data, found 2-D"), FileNotFoundError("no such file: a.h5"),
                                 svc.UserError("label at least two classes")])
def test_input_errors_show_their_message_and_are_not_logged(exc: Exception, shown: list[str],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR), svc.guarded("Loading"):
        raise exc
    assert shown == [f"Loading: {exc}"]
    assert not caplog.records


@pytest.mark.parametrize("exc", [TypeError("unsupported operand"), KeyError("probabilities"), IndexError("out of range"),
                                 ZeroDivisionError("division by zero")])
def test_programming_errors_are_logged_with_traceback_and_not_dressed_as_user_errors(
        exc: Exception, shown: list[str], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR), svc.guarded("Training"):
        raise exc
    assert len(shown) == 1 and "an unexpected error occurred" in shown[0] and type(exc).__name__ in shown[0]
    assert "Your labels are saved" in shown[0]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Traceback (most recent call last)" in logged and type(exc).__name__ in logged
