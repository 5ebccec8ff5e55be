"""The one prediction file of polmap: written by ``polmap predict`` and the app's "Map data (HDF5)",
read by ``polmap export`` and anyone with h5py.

Layout (HDF5, ``polmap_format = "polmap-prediction"``, version 2)::

    /probabilities   float32 (R, C, K)   ensemble-mean class probabilities
    /label_map       int16   (R, C)      most probable class, -1 where not predicted
    /entropy         float32 (R, C)      normalised entropy: Shannon entropy / log K, 0 certain .. 1 uniform
    /margin          float32 (R, C)      p_first - p_second, 1 certain .. 0 a tie
    /disagreement    float32 (R, C)      (entropy of the mean - mean member entropy) / log K
    /domain_walls    bool    (R, C)      optional: positions whose predicted class differs from a 4-neighbour
    /labels/...                          optional: the labels the model was trained on (row, col, class, ...)
    attrs: class_names, class_colors, provenance (JSON), polmap_format, polmap_version

Every array carries a ``description`` attribute with its definition. Files of
the app's former ``polmap-map`` layout (arrays under ``/prediction``) are read too.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import IO, Any, Mapping, Sequence

import numpy as np

from polmap.serial import json_safe
from polmap.analysis.uncertainty import DEFINITIONS, NAMES

__all__ = ["FORMAT", "VERSION", "DESCRIPTIONS", "write_prediction_file", "read_prediction_file"]

FORMAT = "polmap-prediction"
VERSION = 2
_OLD_APP_FORMAT = "polmap-map"  # the app's export before version 2: arrays under /prediction

#: What each array means, stored beside it and shown by the readers.
DESCRIPTIONS: dict[str, str] = {
    "probabilities": "ensemble-mean class probabilities, one per class (last axis)",
    "label_map": "index of the most probable class; -1 where not predicted",
    **{k: f"{NAMES[k]}: {DEFINITIONS[k]}" for k in ("entropy", "margin", "disagreement")},
    "domain_walls": "positions whose predicted class differs from one of their 4 neighbours",
}
_DTYPES = {"probabilities": np.float32, "label_map": np.int16, "entropy": np.float32, "margin": np.float32,
           "disagreement": np.float32, "domain_walls": bool}


def write_prediction_file(
    target: str | os.PathLike[str] | IO[bytes],
    arrays: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    class_colors: Sequence[str] | None,
    provenance: Mapping[str, Any],
    *,
    labels: Mapping[str, np.ndarray] | None = None,
    label_attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write a prediction file; a path is written atomically (a temporary file, then renamed).

    Parameters
    ----------
    target : path or binary file object
    arrays : mapping of str to ndarray
        ``probabilities`` (R, C, K) and ``label_map`` (R, C) are required;
        ``entropy``, ``margin``, ``disagreement`` and ``domain_walls`` are
        written when given. Other names are refused (one file, one meaning).
    class_names : sequence of str
        K names, in the order of the last axis of ``probabilities``.
    class_colors : sequence of str, optional
    provenance : mapping
        Where the prediction came from (dataset, model, preprocessing); stored as JSON.
    labels : mapping of str to ndarray, optional
        The training labels, stored under ``/labels``.
    label_attrs : mapping, optional
        Attributes of the ``/labels`` group (values JSON-encoded).
    """
    import h5py

    missing = [k for k in ("probabilities", "label_map") if k not in arrays]
    if missing:
        raise ValueError(f"a prediction file needs {missing}; found {sorted(arrays)}")
    unknown = sorted(set(arrays) - set(DESCRIPTIONS))
    if unknown:
        raise ValueError(f"unknown prediction arrays {unknown}; known: {list(DESCRIPTIONS)}")
    probs = np.asarray(arrays["probabilities"])
    if probs.ndim != 3 or probs.shape[-1] != len(class_names):
        raise ValueError(f"probabilities must have shape (R, C, {len(class_names)}) for the classes "
                         f"{list(class_names)}, found {probs.shape}")
    for k, v in arrays.items():
        if k != "probabilities" and np.shape(v) != probs.shape[:2]:
            raise ValueError(f"{k} must have the scan shape {probs.shape[:2]}, found {np.shape(v)}")

    def fill(f: Any) -> None:
        for k, v in arrays.items():
            d = f.create_dataset(k, data=np.asarray(v).astype(_DTYPES[k]), compression="gzip", compression_opts=4)
            d.attrs["description"] = DESCRIPTIONS[k]
        f.attrs["polmap_format"] = FORMAT
        f.attrs["polmap_version"] = VERSION
        f.attrs["class_names"] = json.dumps(list(class_names))
        f.attrs["class_colors"] = json.dumps(list(class_colors) if class_colors else None)
        f.attrs["provenance"] = json.dumps(json_safe(dict(provenance)), default=str)
        if labels is not None:
            g = f.create_group("labels")
            for k, v in labels.items():
                g.create_dataset(k, data=np.asarray(v))
            for k, v in (label_attrs or {}).items():
                g.attrs[k] = json.dumps(json_safe(v), default=str)

    if isinstance(target, (str, os.PathLike)):
        p = Path(target)
        if not p.parent.exists():
            raise FileNotFoundError(f"output folder {p.parent} does not exist")
        tmp = p.with_name(p.name + ".tmp")
        try:
            with h5py.File(tmp, "w") as f:
                fill(f)
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        with h5py.File(target, "w") as f:
            fill(f)


def read_prediction_file(source: str | os.PathLike[str] | IO[bytes]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a prediction file (also the app's former ``polmap-map`` export).

    Parameters
    ----------
    source : path or binary file object

    Returns
    -------
    arrays : dict of str to ndarray
        The arrays of :data:`DESCRIPTIONS` present in the file, plus
        ``labels/<name>`` entries for stored labels.
    attrs : dict
        ``class_names``, ``class_colors``, ``provenance`` (parsed JSON),
        ``format_version``.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not HDF5, or not a polmap prediction: the message names the file and
        what was found.
    """
    import h5py

    name = str(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "the uploaded file")
    if isinstance(source, (str, os.PathLike)) and not Path(source).exists():
        raise FileNotFoundError(f"prediction file {name} does not exist")
    try:
        f = h5py.File(source if not isinstance(source, bytes) else io.BytesIO(source), "r")
    except OSError:
        raise ValueError(f"{name} is not a polmap prediction (not an HDF5 file); make one with polmap predict "
                         "or the app's 'Map data (HDF5)'") from None
    with f:
        fmt = f.attrs.get("polmap_format")
        fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
        if fmt == FORMAT:
            root = f
        elif fmt == _OLD_APP_FORMAT and "prediction" in f:
            root = f["prediction"]
        else:
            raise ValueError(f"{name} is not a polmap prediction: its polmap_format is {fmt!r}, expected "
                             f"'{FORMAT}'; make one with polmap predict or the app's 'Map data (HDF5)'")
        arrays = {k: root[k][()] for k in DESCRIPTIONS if k in root and isinstance(root[k], h5py.Dataset)}
        for k in ("probabilities", "label_map"):
            if k not in arrays:
                raise ValueError(f"{name}: a polmap prediction without /{k}; the file is incomplete")
        if "labels" in f and isinstance(f["labels"], h5py.Group):
            for k, v in f["labels"].items():
                if isinstance(v, h5py.Dataset):
                    arrays[f"labels/{k}"] = v[()]
        prov = f.attrs.get("provenance")
        if prov is None and fmt == _OLD_APP_FORMAT:
            prov = json.dumps({k: f.attrs[k] for k in ("dataset_name", "dataset_fingerprint", "model_key")
                               if k in f.attrs}, default=str)
        colors = json.loads(f.attrs.get("class_colors", "null"))
        attrs = {
            "class_names": json.loads(f.attrs["class_names"]),
            "class_colors": colors,
            "provenance": json.loads(prov) if prov else {},
            "format_version": int(f.attrs.get("polmap_version", 1)),
        }
    return arrays, attrs
