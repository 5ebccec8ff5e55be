"""Training (cached, through polmap.learn.pipeline), restoring and applying models, predictions and accuracy."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from typing import Any, Callable

import numpy as np
import streamlit as st

from polmap.analysis.uncertainty import DEFINITIONS as UNCERTAINTY_DEFINITIONS
from polmap.analysis.uncertainty import NAMES as UNCERTAINTY_NAMES
from polmap.io.dataset import Dataset4D

from polmap.app.errors import USER_ERRORS, UserError
from polmap.app.options import preprocess_config
from polmap.app.session import Applied, MODEL_NAME, PREDICTION_NAME, Session, _Registry, autosave
from polmap.app.datasets import preprocess_key, preprocessor, virtual

log = logging.getLogger("polmap.app")


@st.cache_resource
def _model_registry() -> _Registry:
    return _Registry(maxsize=24)


@st.cache_resource
def _prediction_registry() -> _Registry:
    return _Registry(maxsize=12)


def model_names() -> dict[str, str]:
    """Networks offered: name -> one-line description."""
    from polmap.learn.model import MODELS

    return {str(k): v.description for k, v in MODELS.items()}


def default_train_settings() -> dict[str, Any]:
    """TrainConfig defaults as a dict (what the Train page starts from)."""
    from polmap.learn.train import TrainConfig

    return TrainConfig().to_dict()


def train_config(settings: dict[str, Any]) -> Any:
    from polmap.learn.train import TrainConfig

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
    from polmap.learn.pipeline import train_on_dataset

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
    from polmap.learn.pipeline import scan_sample

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
    from polmap.learn.train import TrainedModel

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
    from polmap.learn.predict import check_compatible

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
    from polmap.learn.predict import check_compatible, predict_scan

    check_compatible(model, ds, pre, class_names)

    def prog(info: dict[str, Any]) -> None:
        if progress is not None:
            progress(int(info.get("rows_done", 0)), int(info.get("rows_total", 1)))

    return predict_scan(model, ds, pre, progress=prog)


# The Map page's uncertainty, by the name it carries everywhere (polmap.analysis.uncertainty).
UNCERTAINTY_NAME = UNCERTAINTY_NAMES["entropy"]


UNCERTAINTY_HELP = UNCERTAINTY_DEFINITIONS["entropy"]


def uncertainty(pred: Any) -> np.ndarray:
    """The Map page's uncertainty: the prediction's normalised entropy in [0, 1] (:mod:`polmap.analysis.uncertainty`)."""
    return np.asarray(pred.entropy)


def apply_model_elsewhere(sess: Session, ds: Dataset4D, progress: Callable[[int, int], None] | None = None) -> Any:
    """Predict another dataset (or time slice) with the session's model and its preprocessing."""
    if sess.model is None:
        raise UserError("There is no model yet. Train one on the Train page first.")
    pre = preprocessor(ds, model_preprocess_config(sess.model, sess.preprocess))
    pred = _predict_scan(sess.model, ds, pre, progress, sess.classes.names)
    sess.applied = Applied(dataset=ds, prediction=pred)
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


def lattice_guess(ds: Dataset4D) -> tuple[float | None, float]:
    """``(g_px, disk_radius_px)``: first-order disk spacing from the metadata (simulations) or None."""
    from polmap.analysis import baseline

    try:
        (g, _), r = baseline.lattice_from_metadata(ds.metadata)
        return float(g), float(r)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None, float(virtual(ds).bf_radius)


@st.cache_resource(show_spinner=False, max_entries=8)
def _conventional_cached(fingerprint: str, g: float, radius: float, _ds: Dataset4D) -> Any:
    from polmap.analysis.baseline import conventional_maps

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
    from polmap.analysis import baseline
    from polmap.viz import maps

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
