"""Opening datasets (files, uploads, the demo), calibration, classes, virtual images and preprocessing."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import streamlit as st

from polmap.io.dataset import Dataset4D

from polmap.app.errors import USER_ERRORS, UserError, format_error
from polmap.app.options import data_root, demo_preset, max_upload_mb, model_preprocess, preprocess_config, workspace_dir
from polmap.app.session import Session, _Registry, autosave

log = logging.getLogger("polmap.app")


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
    from polmap.io.project import Workspace

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
    from polmap.app.training import restore_model  # training builds on datasets: imported when needed

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
    if sess.dataset is None and not sess.demo_failed:
        try:
            set_dataset(sess, open_demo(), {"kind": "demo", "preset": demo_preset()})
        except Exception as exc:  # noqa: BLE001
            sess.demo_failed = True
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
    from polmap.learn.symmetry import parse_directions

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


@st.cache_resource
def _virtual_registry() -> "_Registry":
    return _Registry(maxsize=16)


def virtual(ds: Dataset4D, progress: Callable[[int, int], None] | None = None) -> Any:
    """:class:`polmap.process.virtual.VirtualResult` of a dataset (one chunked pass, cached by fingerprint).

    ``progress(rows_done, rows_total)`` is called after every chunk of the
    first (uncached) computation.
    """
    from polmap.process.virtual import compute_virtual

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
    """:func:`polmap.learn.sampling.dataset_features` of a dataset (cold-start clustering), cached by fingerprint."""
    from polmap.learn.sampling import dataset_features

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


def preprocess_key(cfg: Any) -> str:
    return str(cfg.key())


@st.cache_resource(show_spinner="Fitting the preprocessing (beam centre, descan)…", max_entries=32)
def _preprocessor_cached(fingerprint: str, key: str, cfg_json: str, _ds: Dataset4D) -> Any:
    from polmap.process.preprocess import Preprocessor

    cfg = preprocess_config(json.loads(cfg_json))
    return Preprocessor(cfg).fit(_ds)


def preprocessor(ds: Dataset4D, cfg_dict: dict[str, Any] | None) -> Any:
    """A fitted :class:`polmap.process.preprocess.Preprocessor` (cached by fingerprint + config)."""
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
