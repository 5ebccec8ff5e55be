"""Cached glue between the Streamlit pages and the pure-Python core.

The only polmap module that imports streamlit. Pages read parameters, call
one function here, and draw what comes back; everything numeric lives in the
core (:mod:`polmap.io`, :mod:`polmap.preprocess`, :mod:`polmap.train`, ...).

Caching
-------
* datasets: ``st.cache_resource`` keyed by the resolved file, its size and
  modification time and the HDF5 path (read-only, so sessions may share them);
* virtual images, fitted preprocessors: keyed by dataset fingerprint (+ the
  preprocessing key);
* trained models and predictions: a bounded registry held by
  ``st.cache_resource`` and keyed by dataset fingerprint + preprocessing key +
  label hash + training settings, so an unchanged request never trains twice
  (an explicit registry rather than a decorated function so that progress
  callbacks can draw, and a failed run is never cached).

Everything a user makes (labels, models, predictions, suggestions) lives in
:class:`Session`, one per browser session in ``st.session_state``, and in that
session's own workspace file under :func:`workspace_dir`; two sessions never
share them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import streamlit as st

from polmap import settings
from polmap.labels import CLASS_PRESETS as CLASS_PRESETS  # for the pages
from polmap.uncertainty import DEFINITIONS as UNCERTAINTY_DEFINITIONS
from polmap.uncertainty import NAMES as UNCERTAINTY_NAMES
from polmap.dataset import Dataset4D, DatasetError

log = logging.getLogger("polmap.app")

#: File suffixes the data-root picker offers (lower case; ``.tar.gz`` style not needed).
DATA_SUFFIXES = (
    ".h5", ".hdf5", ".hdf", ".emd", ".h5ad", ".dm4", ".dm3", ".mib", ".raw", ".npy", ".npz", ".blo", ".hspy", ".zip",
)
MODEL_NAME = "latest"
PREDICTION_NAME = "latest"


class UserError(Exception):
    """Something the user can fix; its message is shown as it is."""


# Errors caused by input: their message is shown, the session lives on. TypeError,
# KeyError and IndexError are programming errors here: logged with their traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, DatasetError, ValueError, FileNotFoundError, OSError)


# ======================================================================================
# configuration
# ======================================================================================
# The environment is read in polmap.settings (one place for the app, the CLI and the benchmarks).
data_root = settings.data_root
workspace_dir = settings.workspace_dir
demo_preset = settings.demo_preset
max_upload_mb = settings.max_upload_mb


def demo_presets() -> list[str]:
    """The simulation presets the Data page offers, from :data:`polmap.simulate.PRESETS`."""
    from polmap.simulate import PRESETS

    return list(PRESETS)


def preprocess_options(current: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``selectbox`` arguments (options, index of the current value) for each choice of the preprocessing form.

    The options are the core's (:mod:`polmap.preprocess`); a current value the
    core does not know is kept as the first option rather than replaced unseen.
    """
    from polmap import preprocess as pp

    defaults = pp.PreprocessConfig()
    out: dict[str, dict[str, Any]] = {}
    for key, options in (("centring", pp.CENTRINGS), ("scaling", pp.SCALINGS), ("normalise", pp.NORMALISATIONS),
                         ("box_mode", pp.BOX_MODES)):
        value = current.get(key, getattr(defaults, key))
        opts = list(options) if value in options else [value, *options]
        out[key] = {"options": opts, "index": opts.index(value)}
    return out


def resolve_in_root(relative: str, root: Path | None = None) -> Path:
    """Resolve a user-given path inside the data root; refuse anything outside it.

    Symlinks and ``..`` are resolved first, so neither can escape the root.

    Raises
    ------
    UserError
        If the path leaves the root or does not exist.
    """
    root = (root or data_root()).resolve()
    rel = str(relative).strip()
    if not rel:
        raise UserError("No file chosen.")
    candidate = (root / rel).resolve()
    if candidate != root and root not in candidate.parents:
        raise UserError(f"'{relative}' is outside the data folder {root}; only files under it can be opened.")
    if not candidate.exists():
        raise UserError(f"'{relative}' does not exist under the data folder {root}.")
    return candidate


def list_data_files(root: Path | None = None, limit: int = 2000) -> list[str]:
    """Data files under the data root, as paths relative to it (symlinks out of the root skipped)."""
    root = (root or data_root()).resolve()
    if not root.is_dir():
        return []
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if fn.startswith(".") or not fn.lower().endswith(DATA_SUFFIXES) or fn.endswith(".polmap.h5"):
                continue
            p = Path(dirpath) / fn
            try:
                rp = p.resolve()
            except OSError:
                continue
            if root not in rp.parents:
                continue
            out.append(str(p.relative_to(root)))
            if len(out) >= limit:
                return out
    return out


# ======================================================================================
# errors
# ======================================================================================
def format_error(exc: BaseException, what: str = "", unexpected: bool = False) -> str:
    """One readable paragraph for an exception."""
    msg = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and msg.startswith(("'", '"')):
        msg = msg[1:-1]
    prefix = f"{what}: " if what else ""
    if unexpected:
        return f"{prefix}an unexpected error occurred ({type(exc).__name__}: {msg}). Your labels are saved; try again or reload the page."
    return f"{prefix}{msg}"


def _rerun_exceptions() -> tuple[type[BaseException], ...]:
    try:
        from streamlit.runtime.scriptrunner_utils.exceptions import RerunException, StopException

        return (RerunException, StopException)
    except ImportError:  # pragma: no cover - streamlit internals moved: logged, reruns then look like errors
        log.error("Streamlit's rerun/stop exceptions not found: polmap needs updating for this Streamlit")
        return ()


_FLOW = _rerun_exceptions()


@contextlib.contextmanager
def guarded(what: str = "") -> Iterator[None]:
    """Show any error inside the block as ``st.error`` (never a traceback); the page goes on.

    Input errors (:data:`USER_ERRORS`) show their message; anything unexpected
    shows its type and message and is logged with its traceback on the
    server. Streamlit's own rerun/stop signals pass through.
    """
    try:
        yield
    except _FLOW:
        raise
    except USER_ERRORS as exc:
        st.error(format_error(exc, what))
    except Exception as exc:  # noqa: BLE001
        log.error("unexpected error %s\n%s", what, traceback.format_exc())
        st.error(format_error(exc, what, unexpected=True))


# ======================================================================================
# the per-session state
# ======================================================================================
@dataclass
class Session:
    """Everything one browser session owns."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    dataset: Dataset4D | None = None
    dataset_spec: dict[str, Any] = field(default_factory=dict)  # how to reopen it
    workspace: Any = None  # polmap.project.Workspace
    preprocess: dict[str, Any] = field(default_factory=dict)
    train_settings: dict[str, Any] = field(default_factory=dict)
    model: Any = None  # polmap.train.TrainedModel
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
    other: dict[str, Any] = field(default_factory=dict)  # applied-elsewhere results etc.

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


# ======================================================================================
# datasets
# ======================================================================================
def _file_key(path: Path) -> tuple[str, int, float]:
    stt = path.stat()
    return (str(path), int(stt.st_size), float(stt.st_mtime))


@st.cache_resource(show_spinner=False, max_entries=16)
def _open_cached(path: str, size: int, mtime: float, dataset_path: str | None) -> Dataset4D:
    from polmap.io import open_dataset

    return open_dataset(path, dataset_path=dataset_path) if dataset_path else open_dataset(path)


@st.cache_resource(show_spinner="Simulating the demo scan (first time only)…")
def _demo_file(preset: str) -> str:
    from polmap import simulate

    return str(simulate.demo_path(preset=preset))


def open_file(path: str | Path, dataset_path: str | None = None) -> Dataset4D:
    """Open a data file (cached; shared read-only between sessions)."""
    p = Path(path).resolve()
    if not p.exists():
        raise UserError(f"{p} does not exist")
    return _open_cached(*_file_key(p), dataset_path or None)


def open_demo(preset: str | None = None) -> Dataset4D:
    """The embedded demo (simulated once per preset, then cached on disk and in memory)."""
    preset = preset or demo_preset()
    ds = open_file(_demo_file(preset))
    return ds


def list_candidates(path: str | Path) -> list[Any]:
    """4-D datasets inside a container (HDF5, .npz, .zip: ``polmap.io.list_4d_datasets``); [] for other formats."""
    p = Path(path)
    if p.suffix.lower() not in (".h5", ".hdf5", ".hdf", ".emd", ".h5ad", ".he5", ".py4dstem", ".npz", ".zip"):
        return []
    from polmap.io import list_4d_datasets

    return list(list_4d_datasets(p))


def candidate_path(c: Any) -> str:
    """The HDF5 path of a candidate (object with ``.path``/``.dataset_path`` or a string)."""
    for attr in ("path", "dataset_path", "name"):
        v = getattr(c, attr, None)
        if isinstance(v, str):
            return v
    return str(c)


def candidate_label(c: Any) -> str:
    p = candidate_path(c)
    shape = getattr(c, "shape", None)
    dt = getattr(c, "dtype", None)
    extra = []
    if shape is not None:
        extra.append(" x ".join(str(int(s)) for s in shape))
    if dt is not None:
        extra.append(str(dt))
    return f"{p}  ({', '.join(extra)})" if extra else p


def save_upload(data: bytes, filename: str) -> Path:
    """Write an upload into the workspace folder (content-addressed) and return its path.

    Raises
    ------
    UserError
        Beyond :func:`max_upload_mb`, or for an empty file.
    """
    limit = max_upload_mb()
    if len(data) > limit * 2**20:
        raise UserError(
            f"'{filename}' is {len(data) / 2**20:.0f} MB, more than the {limit} MB upload limit. "
            f"Put large scans in the data folder ({data_root()}) and open them with the file picker instead."
        )
    if not data:
        raise UserError(f"'{filename}' is empty.")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(filename).name)[-80:] or "upload"
    digest = hashlib.sha1(data).hexdigest()[:12]
    d = workspace_dir() / "uploads"
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{digest}-{name}"
    if not p.exists():
        tmp = p.with_name(p.name + f".{uuid.uuid4().hex[:6]}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, p)
    return p


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", s).strip("-")[:40] or "dataset"


def default_classes(ds: Dataset4D, preset: str | None = None):
    """Classes for a new workspace: the ground truth's when the dataset has one, else a preset."""
    from polmap.labels import ClassSet

    if preset:
        return ClassSet.preset(preset)
    gt = ds.ground_truth
    if gt is not None and gt.class_names:
        try:
            return ClassSet.for_names(gt.class_names, gt.class_colors, gt.class_directions)
        except ValueError as exc:  # directions that do not parse: the classes without them, and say why
            log.warning("%s: class directions not used: %s", ds.name, exc)
            return ClassSet.for_names(gt.class_names, gt.class_colors)
    return ClassSet.axis()


def workspace_path(sess: Session, ds: Dataset4D) -> Path:
    """This session's workspace file for a dataset."""
    return workspace_dir() / f"{sess.id}-{_safe_name(ds.name)}-{ds.fingerprint[:8]}.polmap.h5"


def set_dataset(sess: Session, ds: Dataset4D, spec: dict[str, Any], class_preset: str | None = None) -> None:
    """Make ``ds`` the session's dataset; open (or create) its workspace and reset model state."""
    from polmap.project import Workspace

    if sess.dataset is not None and sess.dataset.fingerprint == ds.fingerprint and sess.workspace is not None:
        sess.dataset_spec = dict(spec)
        sess.dataset = ds
        return
    if not sess.preprocess:
        try:
            sess.preprocess = model_preprocess("auto")
        except Exception:  # noqa: BLE001 - model registry not importable: core defaults, logged
            log.error("the default model's preprocessing is unavailable; core defaults used\n%s", traceback.format_exc())
            sess.preprocess = preprocess_config({}).to_dict()
    path = workspace_path(sess, ds)
    if path.exists():
        ws = Workspace.open(path, ds)
    else:
        ws = Workspace.create(path, ds, default_classes(ds, class_preset), preprocess=sess.preprocess or None)
    sess.dataset = ds
    sess.dataset_spec = dict(spec)
    sess.workspace = ws
    if ws.preprocess:
        sess.preprocess = dict(ws.preprocess)
    sess.reset_model()
    sess.suggestions = None
    sess.suggestion_index = 0
    sess.skipped = []
    sess.selected = (ds.scan_shape[0] // 2, ds.scan_shape[1] // 2)
    sess.active_class = min(1, len(ws.classes) - 1)
    sess.canvas_nonce += 1
    # A model already stored in this workspace comes back too; if it cannot, say so (the labels are kept).
    try:
        restore_model(sess)
    except USER_ERRORS as exc:
        sess.flash("warning", f"The model stored in {ws.path.name} was not restored: {format_error(exc)} "
                              "Your labels are kept; train again on the Train page.")
    except Exception as exc:  # noqa: BLE001 - any failure of a stored file must not lose the dataset
        log.error("restoring the stored model of %s failed\n%s", ws.path, traceback.format_exc())
        sess.flash("warning", f"The model stored in {ws.path.name} could not be restored "
                              f"({type(exc).__name__}: {exc}). Your labels are kept; train again on the Train page.")


def ensure_dataset(sess: Session) -> None:
    """Load the demo on the first visit (the app opens on data, not on an empty page)."""
    if sess.dataset is None and not sess.other.get("demo_failed"):
        try:
            set_dataset(sess, open_demo(), {"kind": "demo", "preset": demo_preset()})
        except Exception as exc:  # noqa: BLE001
            sess.other["demo_failed"] = True
            log.error("demo failed\n%s", traceback.format_exc())
            sess.flash("error", f"The demo dataset could not be loaded: {format_error(exc)}")


def change_classes(sess: Session, preset: str) -> None:
    """Switch the class set (only while nothing is labelled)."""
    from polmap.labels import ClassSet, LabelStore

    ws = sess.workspace
    if ws is None:
        return
    if len(ws.labels):
        raise UserError("Classes can only be switched before anything is labelled (undo or erase the labels first).")
    ws.set_labels(LabelStore(ws.dataset.scan_shape, ClassSet.preset(preset)))
    sess.active_class = min(1, len(ws.classes) - 1)
    sess.reset_model()
    autosave(sess)


def directions_text(sess: Session) -> str:
    """The declared class directions as the Train page shows them (``A=0, B=180, C=invariant``)."""
    d = sess.classes.directions if sess.classes is not None else {}
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())


def set_class_directions(sess: Session, text: str) -> None:
    """Declare (or clear, with empty text) the class directions, a prior that training checks."""
    from polmap.symmetry import parse_directions

    if sess.labels is None:
        return
    try:
        directions = parse_directions(text.strip() or None, sess.classes.names)
    except ValueError as exc:
        raise UserError(f"Class directions: {exc}.") from None
    sess.labels.set_class_directions(directions)
    sess.reset_model()
    autosave(sess)


def dataset_summary(ds: Dataset4D) -> dict[str, Any]:
    """Shape, dtype, size and calibration in words for the summary table."""
    cal = ds.calibration
    src = Path(ds.source)
    uploaded = ds.source.startswith(str(workspace_dir()))
    s = {
        "file": re.sub(r"^[0-9a-f]{12}-", "", src.name) if uploaded else src.name,
        "folder": "(uploaded)" if uploaded else str(src.parent),
        "scan (rows x cols)": f"{ds.scan_shape[0]} x {ds.scan_shape[1]}",
        "detector (rows x cols)": f"{ds.detector_shape[0]} x {ds.detector_shape[1]}",
        "dtype": str(ds.dtype),
        "size": _human_bytes(ds.nbytes),
        "scan step": f"{cal.real_step:g} {cal.real_units}" if cal.real_step else "uncalibrated (px)",
        "detector pixel": f"{cal.reciprocal_step:g} {cal.reciprocal_units}" if cal.reciprocal_step else "uncalibrated (px)",
        "beam energy": f"{cal.beam_energy_kev:g} keV" if cal.beam_energy_kev else "-",
        "convergence": f"{cal.convergence_mrad:g} mrad" if cal.convergence_mrad else "-",
        "ground truth": "yes" if ds.ground_truth is not None else "no",
        "fingerprint": ds.fingerprint,
    }
    if ds.dataset_path:
        s["HDF5 path"] = ds.dataset_path
    return s


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def set_calibration(sess: Session, **cal: Any) -> None:
    """Change the calibration of the session's dataset view (stored in the workspace)."""
    from dataclasses import replace

    ds = sess.dataset
    if ds is None:
        return
    clean = {k: v for k, v in cal.items() if k in ds.calibration.__dataclass_fields__}
    new = replace(ds.calibration, **clean)
    if new == ds.calibration:
        return
    # The cached Dataset4D is shared: give this session its own shallow copy.
    import copy

    mine = copy.copy(ds)
    mine.calibration = new
    sess.dataset = mine
    ws = sess.workspace
    if ws is not None:
        ws.dataset = replace(ws.dataset, calibration=new.to_dict())
        ws.log("calibration", **new.to_dict())
        autosave(sess)


# ======================================================================================
# virtual images, preprocessing
# ======================================================================================
@st.cache_resource
def _virtual_registry() -> "_Registry":
    return _Registry(maxsize=16)


def virtual(ds: Dataset4D, progress: Callable[[int, int], None] | None = None) -> Any:
    """:class:`polmap.virtual.VirtualResult` of a dataset (one chunked pass, cached by fingerprint).

    ``progress(rows_done, rows_total)`` is called after every chunk of the
    first (uncached) computation.
    """
    from polmap.virtual import compute_virtual

    reg = _virtual_registry()
    hit = reg.get(ds.fingerprint)
    if hit is None:
        hit = compute_virtual(ds, progress=progress)
        reg.put(ds.fingerprint, hit)
    return hit


@st.cache_resource
def _features_registry() -> "_Registry":
    return _Registry(maxsize=8)


def cold_start_features(ds: Dataset4D) -> np.ndarray:
    """:func:`polmap.sampling.dataset_features` of a dataset (cold-start clustering), cached by fingerprint."""
    from polmap.sampling import dataset_features

    reg = _features_registry()
    hit = reg.get(ds.fingerprint)
    if hit is None:
        hit = dataset_features(ds)
        reg.put(ds.fingerprint, hit)
    return hit


def virtual_ready(ds: Dataset4D) -> bool:
    """Whether :func:`virtual` is already cached for this dataset."""
    return _virtual_registry().get(ds.fingerprint) is not None


def virtual_image(ds: Dataset4D, kind: str = "bright_field") -> np.ndarray:
    v = virtual(ds)
    if kind == "annular_dark_field":
        return v.annular_dark_field
    if kind == "com_magnitude":
        return np.hypot(v.com_row, v.com_col)
    return v.bright_field


def preprocess_config(d: dict[str, Any] | None = None) -> Any:
    """A :class:`polmap.preprocess.PreprocessConfig` from a dict.

    Keys this polmap does not know (a workspace from another version) are
    left out and logged; the rest must be valid.
    """
    from polmap.preprocess import PreprocessConfig

    d = dict(d or {})
    known = PreprocessConfig.__dataclass_fields__
    unknown = sorted(set(d) - set(known))
    if unknown:
        log.warning("preprocessing keys not known to this polmap, left out: %s", unknown)
    return PreprocessConfig.from_dict({k: v for k, v in d.items() if k in known})


def preprocess_key(cfg: Any) -> str:
    return str(cfg.key())


@st.cache_resource(show_spinner="Fitting the preprocessing (beam centre, descan)…", max_entries=32)
def _preprocessor_cached(fingerprint: str, key: str, cfg_json: str, _ds: Dataset4D) -> Any:
    from polmap.preprocess import Preprocessor

    cfg = preprocess_config(json.loads(cfg_json))
    return Preprocessor(cfg).fit(_ds)


def preprocessor(ds: Dataset4D, cfg_dict: dict[str, Any] | None) -> Any:
    """A fitted :class:`polmap.preprocess.Preprocessor` (cached by fingerprint + config)."""
    cfg = preprocess_config(cfg_dict)
    return _preprocessor_cached(ds.fingerprint, preprocess_key(cfg), json.dumps(cfg.to_dict(), sort_keys=True, default=str), ds)


def set_preprocess(sess: Session, cfg_dict: dict[str, Any]) -> None:
    """Store new preprocessing settings (validated) in the session and workspace."""
    cfg = preprocess_config(cfg_dict)
    d = cfg.to_dict()
    if d == sess.preprocess:
        return
    sess.preprocess = d
    if sess.workspace is not None:
        sess.workspace.set_preprocess(d)
        autosave(sess)


def preview_patterns(ds: Dataset4D, cfg_dict: dict[str, Any], row: int, col: int) -> tuple[np.ndarray, np.ndarray]:
    """``(raw, preprocessed)`` pattern at one position for the before/after preview."""
    raw = np.asarray(ds.pattern(int(row), int(col)), dtype=np.float32)
    pre = preprocessor(ds, cfg_dict)
    out = pre.transform_positions(ds, np.array([[int(row), int(col)]]))
    return raw, np.asarray(out[0], dtype=np.float32)


# ======================================================================================
# labels
# ======================================================================================
def autosave(sess: Session) -> bool:
    """Save the workspace if anything changed (after every label change)."""
    ws = sess.workspace
    if ws is None:
        return False
    saved = ws.autosave()
    if saved:
        sess.last_save_s = ws.last_save_seconds
    return saved


def label_point(sess: Session, row: int, col: int, cls: int | str, source: str = "click") -> None:
    sess.labels.add_point(int(row), int(col), cls, source=source)
    autosave(sess)


def unlabel_point(sess: Session, row: int, col: int) -> bool:
    done = sess.labels.remove_point(int(row), int(col))
    autosave(sess)
    return done


def paint(sess: Session, mask: np.ndarray, cls: int | str | None, erase: bool = False) -> int:
    """Label (or, with ``erase``, unlabel) every position of a boolean scan mask; returns how many changed."""
    lab = sess.labels
    if erase:
        n = lab.erase_region(mask)
    else:
        n = lab.add_region(mask, cls, source="paint")
    autosave(sess)
    return int(n)


def undo(sess: Session) -> bool:
    done = sess.labels.undo()
    autosave(sess)
    return done


def redo(sess: Session) -> bool:
    done = sess.labels.redo()
    autosave(sess)
    return done


def canvas_mask(rgba: np.ndarray | None, scan_shape: tuple[int, int], coverage: float = 0.35) -> np.ndarray:
    """Scan positions covered by strokes on the canvas.

    Parameters
    ----------
    rgba : ndarray (H, W, 4) or None
        The canvas's drawing layer (background not included).
    scan_shape : (R, C)
    coverage : float
        Fraction of a position's cell that must be painted.
    """
    R, C = scan_shape
    if rgba is None:
        return np.zeros((R, C), bool)
    a = np.asarray(rgba)
    if a.ndim != 3 or a.shape[2] < 4:
        return np.zeros((R, C), bool)
    alpha = a[..., 3].astype(np.float32) / 255.0
    H, W = alpha.shape
    # average alpha per scan cell (cells may be fractional: integrate with cumulative sums)
    ys = np.linspace(0, H, R + 1).round().astype(int)
    xs = np.linspace(0, W, C + 1).round().astype(int)
    cs = np.zeros((H + 1, W + 1), np.float64)
    cs[1:, 1:] = alpha.cumsum(0).cumsum(1)
    tot = cs[ys[1:, None], xs[None, 1:]] - cs[ys[:-1, None], xs[None, 1:]] - cs[ys[1:, None], xs[None, :-1]] + cs[ys[:-1, None], xs[None, :-1]]
    area = np.maximum((ys[1:] - ys[:-1])[:, None] * (xs[1:] - xs[:-1])[None, :], 1)
    return (tot / area) >= coverage


def labels_overlay_rgba(sess: Session) -> np.ndarray:
    """``(R, C, 4)`` uint8: class colours where labelled, transparent elsewhere."""
    lm = sess.labels.label_map()
    rgb = sess.classes.rgb()
    out = np.zeros(lm.shape + (4,), np.uint8)
    m = lm >= 0
    out[m, :3] = rgb[lm[m]]
    out[m, 3] = 255
    return out


def canvas_background(sess: Session, image: np.ndarray, scale: int, label_alpha: float = 0.75) -> "Any":
    """PIL image of the virtual image with labelled positions tinted, upscaled ``scale`` times (nearest)."""
    from PIL import Image

    g = _to_uint8(image)
    rgb = np.repeat(g[..., None], 3, axis=2).astype(np.float32)
    ov = labels_overlay_rgba(sess)
    m = ov[..., 3] > 0
    rgb[m] = (1 - label_alpha) * rgb[m] + label_alpha * ov[m, :3]
    if sess.suggestions is not None and len(sess.suggestions):
        pass
    img = Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")
    R, C = image.shape
    return img.resize((C * scale, R * scale), Image.NEAREST)


def _to_uint8(a: np.ndarray, lo_pct: float = 0.5, hi_pct: float = 99.5) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    lo, hi = np.percentile(a[finite], [lo_pct, hi_pct])
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((np.nan_to_num(a, nan=lo) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def label_table(sess: Session) -> list[dict[str, Any]]:
    """Rows ``{class, colour, labels}`` for the sidebar/legend."""
    lab = sess.labels
    if lab is None:
        return []
    counts = lab.counts()
    return [{"class": n, "color": c, "count": counts.get(n, 0)} for n, c in zip(sess.classes.names, sess.classes.colors)]


def import_labels_csv(sess: Session, data: bytes) -> int:
    n = sess.labels.import_csv(io.StringIO(data.decode("utf-8", errors="replace")))
    autosave(sess)
    return int(n)


# ======================================================================================
# suggestions
# ======================================================================================
def strategies() -> dict[str, str]:
    from polmap.sampling import STRATEGIES

    return dict(STRATEGIES)


def suggest(sess: Session, strategy: str, budget: int, seed: int = 0) -> None:
    """Compute the next positions to label and put them in the session's queue."""
    from polmap import sampling

    ds = sess.dataset
    pos, cls = sess.labels.positions_and_classes()
    probs = None
    if sess.prediction is not None:
        probs = np.asarray(sess.prediction.probabilities)
    exclude = np.array(sess.skipped, dtype=np.int64).reshape(-1, 2) if sess.skipped else None
    kwargs: dict[str, Any] = dict(exclude=exclude, seed=int(seed))
    if strategy == "adaptive":
        kwargs["probabilities"] = probs
    if strategy == "cold_start" or (strategy == "adaptive" and probs is None):
        kwargs["features"] = cold_start_features(ds)
    res = sampling.suggest_detailed(strategy, ds.scan_shape, pos, cls, int(budget), **kwargs)
    sess.suggestions = np.asarray(res.positions, dtype=np.int64).reshape(-1, 2)
    sess.suggestion_reasons = tuple(res.reasons)
    sess.suggestion_message = res.message
    sess.suggestion_index = 0
    if sess.workspace is not None:
        sess.workspace.log("suggested", strategy=strategy, budget=int(budget), n=int(len(sess.suggestions)))
        autosave(sess)


def current_suggestion(sess: Session) -> tuple[int, int] | None:
    """The next suggested position not yet labelled (advancing past labelled ones)."""
    if sess.suggestions is None:
        return None
    lm = sess.labels.label_map()
    skipped = set(map(tuple, sess.skipped))
    while sess.suggestion_index < len(sess.suggestions):
        r, c = (int(x) for x in sess.suggestions[sess.suggestion_index])
        if lm[r, c] < 0 and (r, c) not in skipped:
            return r, c
        sess.suggestion_index += 1
    return None


def answer_suggestion(sess: Session, cls: int | None) -> None:
    """Label the current suggestion with ``cls`` (None: skip it) and move on."""
    cur = current_suggestion(sess)
    if cur is None:
        return
    if cls is None:
        sess.skipped.append(cur)
    else:
        sess.labels.add_point(cur[0], cur[1], int(cls), source="suggestion")
        autosave(sess)
    sess.suggestion_index += 1
    sess.selected = cur


# ======================================================================================
# training and prediction
# ======================================================================================
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


@st.cache_resource
def _model_registry() -> _Registry:
    return _Registry(maxsize=24)


@st.cache_resource
def _prediction_registry() -> _Registry:
    return _Registry(maxsize=12)


def model_names() -> dict[str, str]:
    """Networks offered: name -> one-line description."""
    from polmap.model import MODELS

    return {str(k): v.description for k, v in MODELS.items()}


def model_preprocess(name: str) -> dict[str, Any]:
    """The preprocessing a network was designed for (full PreprocessConfig dict)."""
    from polmap.model import default_preprocess

    return preprocess_config(default_preprocess(name)).to_dict()


def default_train_settings() -> dict[str, Any]:
    """TrainConfig defaults as a dict (what the Train page starts from)."""
    from polmap.train import TrainConfig

    return TrainConfig().to_dict()


def train_config(settings: dict[str, Any]) -> Any:
    from polmap.train import TrainConfig

    return TrainConfig.from_dict(settings)  # keys it does not know are left out


def device_name() -> str:
    """Where training runs, in words."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"GPU: {torch.cuda.get_device_name(0)}"
        return f"CPU ({torch.get_num_threads()} threads)"
    except Exception:  # noqa: BLE001
        return "CPU"


def training_key(sess: Session, settings: dict[str, Any]) -> str:
    """Fingerprint + preprocessing + label hash + settings: the model cache key."""
    cfg = preprocess_config(sess.preprocess)
    blob = json.dumps(
        [sess.dataset.fingerprint, preprocess_key(cfg), sess.labels.hash(), sess.classes.names,
         sess.classes.directions, settings],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def check_trainable(sess: Session) -> None:
    """Raise :class:`UserError` with advice when the labels cannot train a classifier."""
    lab = sess.labels
    counts = {k: v for k, v in lab.counts().items() if v > 0}
    if not counts:
        raise UserError("There are no labels yet. Label some patterns on the Label or Suggest page first.")
    if len(counts) < 2:
        only = next(iter(counts))
        raise UserError(
            f"Training needs labels of at least two classes, but every label is '{only}' ({counts[only]} labels). "
            f"Label some patterns of another class first."
        )


def train(
    sess: Session,
    settings: dict[str, Any],
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Any, bool]:
    """Train (or fetch from the cache) a model on the session's labels.

    Returns
    -------
    model, cached : TrainedModel, bool
        ``cached`` is True when an identical request had been trained before.
    """
    check_trainable(sess)
    key = training_key(sess, settings)
    reg = _model_registry()
    hit = reg.get(key)
    if hit is not None:
        model, info = hit
        _adopt_model(sess, model, key, info, trained=False)
        return model, True
    from polmap.pipeline import train_on_dataset

    ds = sess.dataset
    pre = preprocessor(ds, sess.preprocess)
    pos, cls = sess.labels.positions_and_classes()
    cfg = train_config(settings)
    t0 = time.perf_counter()
    model = train_on_dataset(
        ds, pre, pos, cls, sess.classes.names, cfg, scan=_scan_sample(ds, pre, int(cfg.seed)),
        directions=sess.classes.directions, class_colors=sess.classes.colors,
        provenance={"dataset_fingerprint": ds.fingerprint, "label_hash": sess.labels.hash(), "cache_key": key},
        progress=progress, groups=sess.labels.groups(),
    )
    rep = model.report
    info = {
        "key": key,
        "model": cfg.model,
        "seconds": time.perf_counter() - t0,
        "n_labels": int(len(pos)),
        "label_hash": sess.labels.hash(),
        "settings": dict(settings),
        "device": rep.get("device", device_name()),
        "val_accuracy": rep.get("oof_accuracy"),
        "validation": rep.get("validation_note", ""),
        "warnings": [str(w) for w in rep.get("warnings", [])],
        "assessment": rep.get("assessment") or {},
        "family_note": rep.get("family_note", ""),
        "symmetry": {k: (rep.get("symmetry") or {}).get(k) for k in ("summary", "mapping", "skipped", "status")},
        "preprocess": dict(sess.preprocess),
        "fingerprint": ds.fingerprint,
        "classes": sess.classes.names,
    }
    reg.put(key, (model, info))
    _adopt_model(sess, model, key, info, trained=True)
    return model, False


@st.cache_resource(show_spinner=False, max_entries=4)
def _scan_sample_cached(fingerprint: str, preprocess_key_: str, seed: int, _ds: Dataset4D, _pre: Any) -> Any:
    from polmap.pipeline import scan_sample

    return scan_sample(_ds, _pre, seed=seed)


def _scan_sample(ds: Dataset4D, pre: Any, seed: int) -> Any:
    """Preprocessed patterns of a sample of the scan (cached per dataset and preprocessing)."""
    return _scan_sample_cached(ds.fingerprint, pre.config.key(), seed, ds, pre)


def _adopt_model(sess: Session, model: Any, key: str, info: dict[str, Any], trained: bool) -> None:
    sess.model = model
    sess.model_key = key
    sess.model_info = dict(info)
    sess.prediction = None
    sess.prediction_key = None
    ws = sess.workspace
    if ws is not None:
        buf = io.BytesIO()
        model.save(buf)
        meta = {k: v for k, v in info.items()}
        meta["history"] = model_history(model)
        ws.add_model(MODEL_NAME, buf.getvalue(), meta)
        if trained:
            ws.log("trained", key=key, n_labels=info.get("n_labels"), seconds=info.get("seconds"), settings=info.get("settings"))
        autosave(sess)


def restore_model(sess: Session) -> bool:
    """Load the model stored in the session's workspace (if it fits the current classes)."""
    ws = sess.workspace
    if ws is None or MODEL_NAME not in ws.model_names():
        return False
    data, meta = ws.get_model(MODEL_NAME)
    model = load_model_bytes(data)
    check_model_fits(sess, model, meta)
    sess.model = model
    sess.model_key = meta.get("key")
    sess.model_info = dict(meta)
    return True


def load_model_bytes(data: bytes) -> Any:
    from polmap.train import TrainedModel

    try:
        return TrainedModel.load(io.BytesIO(data))
    except USER_ERRORS:
        raise
    except Exception as exc:  # noqa: BLE001 - pickles, zip errors...
        raise UserError(f"This file is not a polmap model checkpoint ({type(exc).__name__}: {exc}).") from None


def model_class_names(model: Any) -> list[str]:
    return list(model.class_names)


def check_model_fits(sess: Session, model: Any, meta: dict[str, Any] | None = None) -> None:
    """Refuse a model made for other classes or another detector (a clear message, no traceback)."""
    from polmap.predict import check_compatible

    names = model_class_names(model)
    if names and sess.classes is not None and list(names) != sess.classes.names:
        raise UserError(
            f"This model was trained for the classes {names}, but this dataset's workspace uses "
            f"{sess.classes.names}. Use a model trained with the same classes, or switch the classes on the Data page."
        )
    if sess.dataset is not None:
        check_compatible(model, sess.dataset)
    meta = meta or {}
    fp = meta.get("fingerprint") or model.provenance.get("dataset_fingerprint")
    if fp and sess.dataset is not None and fp != sess.dataset.fingerprint:
        sess.flash("info", f"This model was trained on another dataset (fingerprint {fp}); it is applied as it is.")


def upload_model(sess: Session, data: bytes) -> None:
    """Adopt an uploaded checkpoint as the session's model."""
    model = load_model_bytes(data)
    check_model_fits(sess, model)
    key = "upload-" + hashlib.sha1(data).hexdigest()[:16]
    info = {"key": key, "uploaded": True, "classes": model_class_names(model), "device": device_name()}
    _model_registry().put(key, (model, info))
    _adopt_model(sess, model, key, info, trained=False)


def model_history(model: Any) -> dict[str, list[float]]:
    """Training curves as ``{"epoch", "loss", "val_loss", "val_acc"}`` lists, ensemble members one after another."""
    h = model.history
    rows: list[dict[str, Any]] = []
    if isinstance(h, dict):
        return {k: list(v) for k, v in h.items()}
    for member in h:
        if isinstance(member, dict):
            rows.append(member)
        else:
            rows.extend(member)
    return history_rows_to_curves(rows)


def history_rows_to_curves(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per-epoch progress dicts -> curves (x: epochs of all members in sequence)."""
    out: dict[str, list[float]] = {"epoch": []}
    keys = ("loss", "val_loss", "val_acc")
    for k in keys:
        out[k] = []
    for i, r in enumerate(rows, 1):
        out["epoch"].append(i)
        for k in keys:
            v = r.get(k)
            out[k].append(float("nan") if v is None else float(v))
    return {k: v for k, v in out.items() if k == "epoch" or any(np.isfinite(v))}


def model_preprocess_config(model: Any, fallback: dict[str, Any] | None = None) -> dict[str, Any]:
    """The preprocessing a trained model expects (stored with it), else ``fallback``."""
    state = model.preprocess_state or {}
    cfg = state.get("config") if isinstance(state, dict) else None
    return dict(cfg) if cfg else dict(fallback or {})


def predict(sess: Session, progress: Callable[[int, int], None] | None = None) -> Any:
    """Whole-scan prediction with the session's model (cached by model key + dataset).

    The model's own preprocessing is used (changing the Data page's settings
    after training does not silently feed it other inputs).
    """
    if sess.model is None:
        raise UserError("There is no model yet. Train one on the Train page first.")
    ds = sess.dataset
    cfg = model_preprocess_config(sess.model, sess.preprocess)
    key = f"{sess.model_key}:{ds.fingerprint}:{preprocess_key(preprocess_config(cfg))}"
    if sess.prediction is not None and sess.prediction_key == key:
        return sess.prediction
    reg = _prediction_registry()
    pred = reg.get(key)
    if pred is None:
        pred = _predict_scan(sess.model, ds, preprocessor(ds, cfg), progress, sess.classes.names)
        reg.put(key, pred)
        if sess.workspace is not None:
            sess.workspace.add_prediction(PREDICTION_NAME, pred.arrays(),
                                          {"model_key": sess.model_key, "fingerprint": ds.fingerprint,
                                           "timing": pred.timing})
            sess.workspace.log("predicted", model_key=sess.model_key)
            autosave(sess)
    sess.prediction = pred
    sess.prediction_key = key
    return pred


def _predict_scan(model: Any, ds: Dataset4D, pre: Any, progress: Callable[[int, int], None] | None,
                  class_names: list[str] | None = None) -> Any:
    from polmap.predict import check_compatible, predict_scan

    check_compatible(model, ds, pre, class_names)

    def prog(info: dict[str, Any]) -> None:
        if progress is not None:
            progress(int(info.get("rows_done", 0)), int(info.get("rows_total", 1)))

    return predict_scan(model, ds, pre, progress=prog)


# The Map page's uncertainty, by the name it carries everywhere (polmap.uncertainty).
UNCERTAINTY_NAME = UNCERTAINTY_NAMES["entropy"]
UNCERTAINTY_HELP = UNCERTAINTY_DEFINITIONS["entropy"]


def uncertainty(pred: Any) -> np.ndarray:
    """The Map page's uncertainty: the prediction's normalised entropy in [0, 1] (:mod:`polmap.uncertainty`)."""
    return np.asarray(pred.entropy)


def apply_model_elsewhere(sess: Session, ds: Dataset4D, progress: Callable[[int, int], None] | None = None) -> Any:
    """Predict another dataset (or time slice) with the session's model and its preprocessing."""
    if sess.model is None:
        raise UserError("There is no model yet. Train one on the Train page first.")
    pre = preprocessor(ds, model_preprocess_config(sess.model, sess.preprocess))
    pred = _predict_scan(sess.model, ds, pre, progress, sess.classes.names)
    sess.other["applied"] = {"dataset": ds, "prediction": pred}
    if sess.workspace is not None:
        sess.workspace.log("applied_model", dataset=ds.name, source=ds.source, fingerprint=ds.fingerprint, model_key=sess.model_key)
        autosave(sess)
    return pred


def accuracy(sess: Session, pred: Any, ds: Dataset4D | None = None) -> dict[str, Any] | None:
    """Accuracy against the dataset's ground truth (when it has one and its classes match)."""
    ds = ds or sess.dataset
    gt = ds.ground_truth if ds is not None else None
    if gt is None:
        return None
    names = sess.classes.names
    if list(gt.class_names) != names:
        # map by name where possible
        idx = {n: i for i, n in enumerate(names)}
        lut = np.array([idx.get(n, -2) for n in gt.class_names] + [-1])
        truth = lut[np.where(gt.label_map >= 0, gt.label_map, len(gt.class_names))]
    else:
        truth = np.asarray(gt.label_map)
    pm = np.asarray(pred.label_map)
    valid = truth >= 0
    if not valid.any():
        return None
    if ds is sess.dataset and sess.labels is not None and sess.labels.scan_shape == truth.shape:
        unl = valid & (sess.labels.label_map() < 0)
    else:
        unl = np.zeros_like(valid)
    out = {
        "accuracy": float((pm[valid] == truth[valid]).mean()),
        "n": int(valid.sum()),
        "accuracy_unlabelled": float((pm[unl] == truth[unl]).mean()) if unl.any() else None,
    }
    if gt.wall_mask is not None:
        w = valid & np.asarray(gt.wall_mask, bool)
        out["accuracy_walls"] = float((pm[w] == truth[w]).mean()) if w.any() else None
        out["accuracy_domains"] = float((pm[valid & ~w] == truth[valid & ~w]).mean()) if (valid & ~w).any() else None
    return out


# ======================================================================================
# exports
# ======================================================================================
def scan_axes(ds: Dataset4D) -> tuple[float, str]:
    """Scan step and units of the figures' axes (as :mod:`polmap.maps` draws them)."""
    cal = ds.calibration
    if cal.real_step:
        return float(cal.real_step), cal.real_units
    return 1.0, "px"


def export_hdf5(sess: Session) -> bytes:
    """The map as a polmap prediction file (:mod:`polmap.prediction_file`: the file ``polmap predict``
    writes and ``polmap export`` reads), with the walls, the labels and the provenance."""
    from polmap import __version__
    from polmap.labels import SOURCES
    from polmap.prediction_file import write_prediction_file

    pred = predict(sess)
    ds = sess.dataset
    arrays = dict(pred.arrays())
    walls = domain_walls(sess, pred)
    if walls is not None:
        arrays["domain_walls"] = walls
    labels = dict(sess.labels.entries())
    labels["label_map"] = sess.labels.label_map()
    provenance = {
        "created_by": "polmap app",
        "polmap_version": __version__,
        "dataset": {"name": ds.name, "source": ds.source, "fingerprint": ds.fingerprint,
                    "scan_shape": list(ds.scan_shape), "detector_shape": list(ds.detector_shape),
                    "calibration": ds.calibration.to_dict()},
        "preprocess": sess.preprocess,
        "model": {"key": sess.model_key, "info": sess.model_info},
        "workspace": sess.workspace.provenance if sess.workspace is not None else [],
    }
    buf = io.BytesIO()
    write_prediction_file(buf, arrays, sess.classes.names, map_colors(sess), provenance,
                          labels=labels, label_attrs={"sources": list(SOURCES)})
    return buf.getvalue()


def export_checkpoint(sess: Session) -> bytes:
    if sess.model is None:
        raise UserError("There is no model to export yet.")
    buf = io.BytesIO()
    sess.model.save(buf)
    return buf.getvalue()


def export_workspace(sess: Session) -> bytes:
    """The session's workspace file (saved first), to keep or to move to another machine."""
    if sess.workspace is None:
        raise UserError("There is no workspace yet.")
    sess.workspace.save()
    return Path(sess.workspace.path).read_bytes()


def export_labels_csv(sess: Session) -> bytes:
    return sess.labels.to_csv().encode("utf-8")


def domain_walls(sess: Session, pred: Any) -> np.ndarray:
    """Positions where the predicted class changes (``polmap.walls.domain_walls``, one-pixel lines)."""
    from polmap.walls import domain_walls as dw

    return dw(np.asarray(pred.label_map), thin=True)


# ======================================================================================
# figures (thin wrappers over polmap.maps)
# ======================================================================================
def scan_figure(
    ds: Dataset4D,
    background: np.ndarray,
    *,
    sess: Session | None = None,
    show_labels: bool = True,
    suggestions: np.ndarray | None = None,
    selected: tuple[int, int] | None = None,
    prediction: Any = None,
    show_uncertainty: bool = False,
    show_walls: bool = False,
    walls: np.ndarray | None = None,
    value_name: str = "intensity",
    height: int = 460,
    title: str | None = None,
) -> Any:
    """A scan-space figure (``polmap.maps``) a click can pick positions on.

    Parameters
    ----------
    background : (R, C) grey image or (R, C, 3) uint8 RGB map
    sess : the session, for its labels (clicked points as markers, painted
        regions as a translucent tint in their class colours)
    prediction : optional; with an RGB background its probabilities and
        uncertainty go into the hover and the uncertainty layer
    """
    import plotly.graph_objects as go
    from polmap import maps

    bg = np.asarray(background)
    labelled = None
    tint = None
    class_names = None
    if show_labels and sess is not None and sess.labels is not None and len(sess.labels):
        class_names = sess.classes.names
        e = sess.labels.entries()
        pts = e["source"] != 1  # painted regions are drawn as a tint, not thousands of markers
        if pts.any():
            labelled = (np.stack([e["row"][pts], e["col"][pts]], axis=1), e["class"][pts], sess.classes.colors)
        if (~pts).any():
            tint = np.full(ds.scan_shape, np.nan, np.float32)
            tint[e["row"][~pts], e["col"][~pts]] = e["class"][~pts]
    sugg = None if suggestions is None or not len(suggestions) else np.asarray(suggestions).reshape(-1, 2)
    if bg.ndim == 3:
        probs = unc = None
        if prediction is not None:
            probs = np.asarray(prediction.probabilities)
            unc = uncertainty(prediction)
            class_names = sess.classes.names if sess is not None else None
        fig = maps.map_figure(
            bg.astype(np.uint8), calibration=ds.calibration, probabilities=probs, class_names=class_names,
            uncertainty=unc, walls=walls, labelled=labelled, suggestions=sugg,
            show_uncertainty=show_uncertainty, show_walls=show_walls,
        )
    else:
        # uint8 display values and a compact click layer: a quarter of the bytes of the float32
        # versions, which matters on every label click (the figure is re-sent each time)
        z8 = _to_uint8(bg)
        fig = maps.image_figure(
            z8, calibration=ds.calibration, walls=walls, labelled=labelled, suggestions=sugg,
            class_names=class_names, value_name=value_name, pick_overlay=False,
        )
        fig.data[0].update(z=z8, zmin=0, zmax=255)
        _add_compact_pick_layer(fig, ds)
    step, _ = scan_axes(ds)
    if tint is not None:
        # a heatmap, not an image: Plotly draws images below heatmaps whatever the trace order
        K = len(sess.classes)
        scale = []
        for k, col in enumerate(sess.classes.colors):
            scale += [[k / K, col], [(k + 1) / K, col]]
        fig.add_trace(go.Heatmap(z=tint, x0=0, dx=step, y0=0, dy=step, zmin=-0.5, zmax=K - 0.5, colorscale=scale,
                                 showscale=False, opacity=0.55, hoverinfo="skip", name="painted labels"))
    # The selected position is the click layer's own Plotly selection (a cyan dot), not an extra
    # trace: a click then leaves the figure unchanged and the browser does not redraw it (the
    # redraw was most of the click latency); pages pass ``selected`` only when they redraw anyway.
    R, C = ds.scan_shape
    dot = max(7.0, min(16.0, 900.0 / max(R, C)))
    for tr in fig.data:
        if tr.name and tr.name.startswith("labelled"):
            # a dark ring: a correct label sits on its own class colour and would vanish
            tr.update(marker=dict(line=dict(color="#111111", width=1.5)))
        if tr.name == "positions":
            tr.update(selected=dict(marker=dict(opacity=1, color="#00e5ff", size=dot)),
                      unselected=dict(marker=dict(opacity=0)))
            if selected is not None:
                tr.update(selectedpoints=[int(selected[0]) * C + int(selected[1])])
    fig.update_layout(height=height, uirevision=ds.fingerprint, title=title,
                      margin=dict(l=50, r=10, t=40 if title else 10, b=40),
                      showlegend=False)  # class colours are on the buttons, layers on the page's toggles;
    # a legend appearing with the first label would also move the plot under the user's mouse
    return fig


def _customdata_pair(cd: Any) -> tuple[int, int] | None:
    """``(row, col)`` from a point's customdata (a list, or a dict keyed "0", "1"... from typed arrays)."""
    if cd is None:
        return None
    if isinstance(cd, dict):
        try:
            return int(round(float(cd["0"] if "0" in cd else cd[0]))), int(round(float(cd["1"] if "1" in cd else cd[1])))
        except (KeyError, TypeError, ValueError):
            return None
    try:
        if len(cd) >= 2:
            return int(round(float(cd[0]))), int(round(float(cd[1])))
    except (TypeError, ValueError):
        return None
    return None


def _add_compact_pick_layer(fig: Any, ds: Dataset4D) -> None:
    """An invisible marker on every position carrying ``customdata = (row, col)`` (uint16) for clicks."""
    import plotly.graph_objects as go

    R, C = ds.scan_shape
    step, units = scan_axes(ds)
    rr, cc = np.divmod(np.arange(R * C, dtype=np.int64), C)
    small = max(R, C) < 2**16
    ints = small and float(step).is_integer()
    xy_type = np.uint16 if ints else np.float32
    fig.add_trace(
        go.Scattergl(
            x=(cc * step).astype(xy_type), y=(rr * step).astype(xy_type), mode="markers",
            marker=dict(size=max(2.0, min(12.0, 600.0 / max(R, C))), color="rgba(0,0,0,0)", opacity=0),
            selected=dict(marker=dict(opacity=1, color="white")), unselected=dict(marker=dict(opacity=0)),
            customdata=np.stack([rr, cc], axis=1).astype(np.uint16 if small else np.int32),
            hovertemplate=f"row %{{customdata[0]}}, col %{{customdata[1]}}<br>x = %{{x:.4g}} {units}, "
                          f"y = %{{y:.4g}} {units}<extra></extra>",
            name="positions", showlegend=False,
        )
    )


def clicked_position(event: Any) -> tuple[int, int] | None:
    """The scan position a plotly_chart selection event picked (None if none)."""
    if event is None:
        return None
    try:
        sel = event["selection"] if isinstance(event, dict) or hasattr(event, "__getitem__") else event.selection
        points = sel["points"] if isinstance(sel, dict) or hasattr(sel, "__getitem__") else sel.points
    except (KeyError, AttributeError, TypeError):
        return None
    for p in reversed(list(points or [])):
        rc = _customdata_pair(p.get("customdata") if hasattr(p, "get") else None)
        if rc is not None:
            return rc
    return None


def pattern_figure(pattern: np.ndarray, *, log: bool = False, title: str | None = None, height: int = 320,
                   detectors: Any = None, calibration: Any = None) -> Any:
    """A diffraction pattern (``polmap.maps.pattern_figure``), optionally log, with detector outlines.

    ``detectors``: a :class:`polmap.virtual.VirtualResult` whose BF disk and ADF annulus are drawn.
    """
    from polmap import maps

    overlays = None
    if detectors is not None:
        c = tuple(float(x) for x in detectors.centre)
        overlays = [
            {"name": "BF", "center": c, "radius": float(detectors.bf_radius), "color": "#00e5ff"},
            {"name": "ADF", "center": c, "inner": float(detectors.adf_inner), "outer": float(detectors.adf_outer),
             "color": "#ffea00"},
        ]
    fig = maps.pattern_figure(np.asarray(pattern), log=log, detector_overlays=overlays, calibration=calibration, title=title)
    fig.update_layout(height=height, margin=dict(l=40, r=10, t=40 if title else 10, b=30))
    return fig


def curves_figure(history: Any, height: int = 300, final_accuracy: float | None = None) -> Any:
    """Loss and validation-accuracy curves (``polmap.maps.curves_figure``), ensemble members one after another.

    ``final_accuracy`` (the out-of-fold accuracy of the finished ensemble) is
    drawn as a dotted line on the accuracy panel.
    """
    from polmap import maps

    fig = maps.curves_figure(history)
    if final_accuracy is not None:
        fig.add_hline(y=float(final_accuracy), line_dash="dot", line_color="#444", row=1, col=2,
                      annotation_text=f"final out-of-fold {final_accuracy:.0%}", annotation_position="bottom right")
    fig.update_layout(height=height)
    return fig


def class_button_css(classes: Any, prefixes: tuple[str, ...] = ("clsbtn_label", "clsbtn_suggest")) -> str:
    """CSS giving each class button its class colour (buttons carry ``st-key-<key>`` classes)."""
    rules = []
    for i, c in enumerate(classes.colors):
        r, g, b = (int(c[j : j + 2], 16) for j in (1, 3, 5))
        fg = "#000000" if (0.299 * r + 0.587 * g + 0.114 * b) > 150 else "#ffffff"
        sel = ", ".join(f".st-key-{p}_{i} button" for p in prefixes)
        rules.append(f"{sel} {{background-color: {c} !important; color: {fg} !important; border: 2px solid {c} !important;}}")
        sel_act = ", ".join(f".st-key-{p}_{i}.active button, .st-key-{p}_{i}_active button" for p in prefixes)
        rules.append(f"{sel_act} {{box-shadow: 0 0 0 3px #1f6feb; }}")
    return "<style>" + "\n".join(rules) + "</style>"


def swatch(color: str, size: int = 12) -> str:
    return (f'<span style="display:inline-block;width:{size}px;height:{size}px;background:{color};'
            f'border:1px solid #555;border-radius:2px;vertical-align:middle;margin-right:4px"></span>')


def predicted_area_markdown(names: list[str], colors: list[str], pred: Any) -> str:
    """One line of class swatches with the share of the predicted positions in each class.

    Positions not (yet) predicted (label -1) are left out of the shares and counted apart.
    """
    fractions = pred.class_fractions()
    lm = np.asarray(pred.label_map)
    text = "**Predicted area**: " + ", ".join(f"{swatch(c)}{n} {fractions.get(n, 0.0):.0%}" for n, c in zip(names, colors))
    missing = int((lm < 0).sum())
    if missing:
        text += f" ({missing} of {lm.size} positions not predicted)"
    return text


def map_rgb(sess: Session, pred: Any = None, fade: float = 0.0) -> np.ndarray | None:
    """``(R, C, 3)`` uint8 RGB polarization map of a prediction (class colours weighted by probability)."""
    from polmap.maps import rgb_map

    pred = pred if pred is not None else sess.prediction
    if pred is None:
        return None
    return rgb_map(np.asarray(pred.probabilities), map_colors(sess), fade=float(fade))



def move_selection(sess: Session, drow: int, dcol: int) -> None:
    """Move the selected position by one step (arrow keys), clamped to the scan."""
    R, C = sess.dataset.scan_shape
    r, c = sess.selected or (R // 2, C // 2)
    sess.selected = (int(min(max(r + drow, 0), R - 1)), int(min(max(c + dcol, 0), C - 1)))


def shown_selection(sess: Session, *context: Any) -> tuple[int, int] | None:
    """The selection to draw into a scan figure.

    A click selects in the browser by itself; redrawing the figure just to
    move the marker cost most of the click latency. So the figure carries the
    selection only when it is redrawn anyway (labels or ``context`` changed)
    or when the selection moved without a click (arrow keys set
    ``sess.other["shown_sel"]``).
    """
    sig = (sess.labels.revision if sess.labels is not None else None, id(sess.dataset), *context)
    if sess.other.get("fig_sig") != sig:
        sess.other["fig_sig"] = sig
        sess.other["shown_sel"] = sess.selected
    return sess.other.get("shown_sel")


def lattice_guess(ds: Dataset4D) -> tuple[float | None, float]:
    """``(g_px, disk_radius_px)``: first-order disk spacing from the metadata (simulations) or None."""
    from polmap import baseline

    try:
        (g, _), r = baseline.lattice_from_metadata(ds.metadata)
        return float(g), float(r)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None, float(virtual(ds).bf_radius)


@st.cache_resource(show_spinner=False, max_entries=8)
def _conventional_cached(fingerprint: str, g: float, radius: float, _ds: Dataset4D) -> Any:
    from polmap.baseline import conventional_maps

    return conventional_maps(_ds, (g, g), radius)


def conventional(sess: Session, signal: str, g_px: float, radius_px: float) -> dict[str, Any]:
    """The conventional map: ``signal`` ("friedel" or "com") as a colour-wheel image and as classes.

    The vector-to-class rule (the class with the nearest mean vector) is
    learnt from the session's labels; any class set works, no name is read.

    Returns
    -------
    dict
        ``rgb`` (direction colours), ``vectors``, and when classifiable
        ``label_map``, ``class_rgb``, ``label_accuracy`` (on the labels) and
        ``accuracy`` (against the ground truth, when known).
    """
    from polmap import baseline, maps

    ds = sess.dataset
    if g_px <= 0 or radius_px <= 0:
        raise UserError("The first-order disk spacing and the disk radius must be positive (detector pixels).")
    cm = _conventional_cached(ds.fingerprint, float(g_px), float(radius_px), ds)
    vec = np.asarray(cm.friedel if signal == "friedel" else cm.com, dtype=np.float64)
    out: dict[str, Any] = {"vectors": vec, "rgb": maps.direction_rgb(vec)}
    names = sess.classes.names
    pos, cls = sess.labels.positions_and_classes()
    if not len(pos):
        out["note"] = "No class map yet: the rule learns each class's mean vector from your labels; label a few positions."
        return out
    params, lab_acc = baseline.calibrate_rule(vec, cls, names, positions=pos)
    out["label_accuracy"] = lab_acc
    lm = baseline.apply_rule(vec, params, names)
    out["label_map"] = lm
    out["class_rgb"] = maps.label_rgb(lm, sess.classes.colors)
    gt = ds.ground_truth
    if gt is not None and list(gt.class_names) == names:
        out["accuracy"] = baseline.rule_accuracy(lm, np.asarray(gt.label_map))
    return out


def probability_bars(names: list[str], colors: list[str], p: np.ndarray, height: int = 160) -> Any:
    """Horizontal bars of one position's class probabilities."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=np.asarray(p, float), y=names, orientation="h", marker_color=colors,
                           text=[f"{v:.0%}" for v in p], textposition="auto", hoverinfo="skip"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=5, b=5), xaxis=dict(range=[0, 1], tickformat=".0%"),
                      yaxis=dict(autorange="reversed"))
    return fig


def trusted_directions(sess: Session) -> dict[str, Any]:
    """Class directions that were declared and that the current model's training did not see contradicted."""
    from polmap.symmetry import SymmetryMap, verified_directions

    declared = sess.classes.directions if sess.classes is not None else {}
    rep = sess.model.report if sess.model is not None else {}
    if not declared or not rep.get("symmetry"):
        return {}
    try:
        return verified_directions(SymmetryMap.from_dict(rep["symmetry"]), declared)
    except (KeyError, ValueError):
        return {}


def map_colors(sess: Session) -> list[str]:
    """Class colours of the map: the colour wheel's hue for a class whose direction is trusted, grey when
    invariant, the class's own colour otherwise."""
    from polmap.labels import direction_colors

    return direction_colors(sess.classes.names, sess.classes.colors, trusted_directions(sess))


def legend_figure(sess: Session) -> Any:
    """Class colours, with the colour wheel when some classes have trusted directions."""
    from polmap.maps import legend_figure as lf

    return lf(sess.classes.names, map_colors(sess), trusted_directions(sess))


def export_basename(sess: Session) -> str:
    return f"polmap-{_safe_name(sess.dataset.name)}"


def export_png(sess: Session, with_walls: bool = True, scale: int | None = None) -> bytes:
    """The RGB map as a PNG (nearest-neighbour upscaled; walls drawn in black when asked)."""
    from polmap import maps

    pred = predict(sess)
    rgb = map_rgb(sess, pred)
    if with_walls:
        rgb = maps.draw_mask(rgb, domain_walls(sess, pred), "#000000")
    R, C = rgb.shape[:2]
    scale = scale or int(max(1, min(16, 1024 // max(R, C))))
    buf = io.BytesIO()
    maps.export_png(rgb, buf, scale=scale, metadata={
        "Software": "polmap", "Source": sess.dataset.source, "Classes": json.dumps(sess.classes.names),
        "Model": str(sess.model_key), "Fingerprint": sess.dataset.fingerprint,
    })
    return buf.getvalue()


def display_name(sess: Session) -> str:
    """A short name for the session's dataset (the demo by its preset, files by name and HDF5 path)."""
    ds = sess.dataset
    if ds is None:
        return "no dataset"
    spec = sess.dataset_spec or {}
    if spec.get("kind") == "demo":
        return f"Demo scan ('{spec.get('preset', 'demo')}' simulation)"
    name = Path(ds.source).name if spec.get("kind") != "upload" else spec.get("label", ds.name)
    if spec.get("kind") == "upload":
        name = re.sub(r"^[0-9a-f]{12}-", "", Path(ds.source).name)
    return name + (f" : {ds.dataset_path}" if ds.dataset_path and ds.dataset_path not in ("/data", "data") else "")


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
        runpy.run_path(str(Path(__file__).resolve().parents[1] / "app.py"), run_name="__main__")
        st.stop()


def guarded_fragment(what: str, **fragment_options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``st.fragment`` whose errors are shown as messages (a fragment rerun bypasses the page's guard)."""
    import functools

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def body(*args: Any, **kwargs: Any) -> Any:
            with guarded(what):
                return fn(*args, **kwargs)

        return st.fragment(body, **fragment_options)

    return deco
