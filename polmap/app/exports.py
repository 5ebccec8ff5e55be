"""Downloads: map PNG, the prediction file, labels CSV, model checkpoint, workspace."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path


from polmap.app.errors import UserError
from polmap.app.session import Session
from polmap.app.datasets import _safe_name
from polmap.app.training import predict
from polmap.app.figures import domain_walls, map_colors, map_rgb

log = logging.getLogger("polmap.app")


def export_hdf5(sess: Session) -> bytes:
    """The map as a polmap prediction file (:mod:`polmap.io.prediction_file`: the file ``polmap predict``
    writes and ``polmap export`` reads), with the walls, the labels and the provenance."""
    from polmap import __version__
    from polmap.labels import SOURCES
    from polmap.io.prediction_file import write_prediction_file

    pred = predict(sess)
    ds = sess.dataset
    arrays = dict(pred.arrays())
    walls = domain_walls(pred)
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


def export_basename(sess: Session) -> str:
    return f"polmap-{_safe_name(sess.dataset.name)}"


def export_png(sess: Session, with_walls: bool = True, scale: int | None = None) -> bytes:
    """The RGB map as a PNG (nearest-neighbour upscaled; walls drawn in black when asked)."""
    from polmap.viz import maps

    pred = predict(sess)
    rgb = map_rgb(sess, pred)
    if with_walls:
        rgb = maps.draw_mask(rgb, domain_walls(pred), "#000000")
    R, C = rgb.shape[:2]
    scale = scale or int(max(1, min(16, 1024 // max(R, C))))
    buf = io.BytesIO()
    maps.export_png(rgb, buf, scale=scale, metadata={
        "Software": "polmap", "Source": sess.dataset.source, "Classes": json.dumps(sess.classes.names),
        "Model": str(sess.model_key), "Fingerprint": sess.dataset.fingerprint,
    })
    return buf.getvalue()
