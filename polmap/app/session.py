"""The per-browser-session state, its workspace autosave, flash messages and shared bounded caches."""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from polmap.io.dataset import Dataset4D


log = logging.getLogger("polmap.app")


MODEL_NAME = "latest"
PREDICTION_NAME = "latest"


@dataclass
class ViewState:
    """What the scan figures last drew: the selection they show moves only when the figure changes."""

    figure_signature: tuple[Any, ...] | None = None
    shown_selection: tuple[int, int] | None = None


@dataclass
class Applied:
    """The session's model applied to another dataset (a time slice, another scan)."""

    dataset: Dataset4D
    prediction: Any  # polmap.learn.predict.Prediction


@dataclass
class Session:
    """Everything one browser session owns."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    dataset: Dataset4D | None = None
    dataset_spec: dict[str, Any] = field(default_factory=dict)  # how to reopen it
    workspace: Any = None  # polmap.io.project.Workspace
    preprocess: dict[str, Any] = field(default_factory=dict)
    train_settings: dict[str, Any] = field(default_factory=dict)
    model: Any = None  # polmap.learn.train.TrainedModel
    model_key: str | None = None
    model_info: dict[str, Any] = field(default_factory=dict)
    prediction: Any = None
    prediction_key: str | None = None
    suggestions: np.ndarray | None = None
    suggestion_reasons: tuple[str, ...] = ()
    suggestion_index: int = 0
    suggestion_message: str = ""
    skipped: list[tuple[int, int]] = field(default_factory=list)
    selected: tuple[int, int] | None = None
    active_class: int = 0
    canvas_nonce: int = 0
    hint_dismissed: bool = False
    last_save_s: float | None = None
    messages: list[tuple[str, str]] = field(default_factory=list)  # (kind, text) shown once
    view: ViewState = field(default_factory=lambda: ViewState())
    applied: Applied | None = None  # the model's map of another scan (Map page)
    demo_failed: bool = False  # the embedded demo could not be loaded: not retried on every rerun

    # -- convenience ------------------------------------------------------------------
    @property
    def labels(self):  # -> LabelStore | None
        return None if self.workspace is None else self.workspace.labels

    @property
    def classes(self):  # -> ClassSet | None
        return None if self.workspace is None else self.workspace.classes

    def flash(self, kind: str, text: str) -> None:
        """Queue a message for the next run (``kind``: success / info / warning / error)."""
        self.messages.append((kind, text))

    def reset_model(self) -> None:
        self.model = None
        self.model_key = None
        self.model_info = {}
        self.prediction = None
        self.prediction_key = None
        self.applied = None  # made by the model that is gone


_SESSION_ID = re.compile(r"^[0-9a-f]{12}$")


def session() -> Session:
    """This browser session's :class:`Session` (created on first use).

    The session id names the workspace files and is kept in the URL
    (``?ws=<id>``): reloading the page, or reopening the link after a server
    restart, finds the same workspace files and with them the labels and the
    model. The id is random, so another browser session never lands on it by
    chance.
    """
    ss = st.session_state
    if "polmap" not in ss:
        sess = Session()
        try:
            wanted = st.query_params.get("ws")
        except Exception:  # noqa: BLE001 - no query params outside a browser
            wanted = None
        if isinstance(wanted, str) and _SESSION_ID.match(wanted):
            sess.id = wanted
            sess.hint_dismissed = True  # a returning user
        ss["polmap"] = sess
    sess = ss["polmap"]
    try:
        if st.query_params.get("ws") != sess.id:
            st.query_params["ws"] = sess.id
    except Exception:  # noqa: BLE001
        pass
    return sess


def show_flash(sess: Session) -> None:
    """Draw and clear queued messages: successes as toasts (no layout jump), the rest in the page."""
    for kind, text in sess.messages:
        if kind == "success":
            st.toast(text, icon=":material/check_circle:")
        else:
            getattr(st, kind, st.info)(text)
    sess.messages.clear()


def autosave(sess: Session) -> bool:
    """Save the workspace if anything changed (after every label change)."""
    ws = sess.workspace
    if ws is None:
        return False
    saved = ws.autosave()
    if saved:
        sess.last_save_s = ws.last_save_seconds
    return saved


class _Registry:
    """A small LRU dict with a lock, held by ``st.cache_resource`` (shared by key only)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.data: OrderedDict[str, Any] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self.lock:
            v = self.data.get(key)
            if v is not None:
                self.data.move_to_end(key)
            return v

    def put(self, key: str, value: Any) -> None:
        with self.lock:
            self.data[key] = value
            self.data.move_to_end(key)
            while len(self.data) > self.maxsize:
                self.data.popitem(last=False)


def ensure_app_navigation() -> None:
    """Make sure a page runs inside ``app.py``'s ``st.navigation``.

    With a ``pages/`` folder beside ``app.py``, Streamlit starts in its
    folder-based mode: a first request straight to ``/label`` (a bookmark, a
    reload after a server restart; every ``AppTest`` run of a switched page)
    would run that page alone, without the sidebar or the session set-up.
    Here the page hands over to ``app.py`` within the same run (so button
    presses are not lost); ``app.py`` calls ``st.navigation``, which ends the
    folder mode, and runs the same page (page ids are hashes of the URL
    path). Call it first thing in every page.
    """
    # No public switch exists: Streamlit picks its folder mode whenever a pages/ directory sits beside the
    # entry script (PagesManager.uses_pages_directory), and its advice, renaming the folder (streamlit#8744,
    # the "pages/ directory" warning), is ruled out here: the user fixed the top level as app.py + pages/.
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # pragma: no cover - Streamlit internals moved: folder mode then runs a page alone
        log.error("streamlit.runtime.pages_manager not found: a bookmarked page URL opens without app.py's set-up")
        return
    if PagesManager.uses_pages_directory:
        import runpy

        PagesManager.uses_pages_directory = False
        runpy.run_path(str(Path(__file__).resolve().parents[2] / "app.py"), run_name="__main__")  # polmap/app/ -> the repo
        st.stop()
