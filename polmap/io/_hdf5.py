"""HDF5 readers: plain files, py4DSTEM/EMD 1.0 files and polmap's simulated files.

The scan stays an open ``h5py.Dataset`` (closed with the :class:`Dataset4D`),
so nothing is read until patterns are asked for.
"""

from __future__ import annotations

import json
import re
from typing import Any

import h5py
import numpy as np

from polmap.io.dataset import Calibration, DatasetError, GroundTruth
from polmap.io._common import (
    Candidate,
    Opened,
    Source,
    describe_candidates,
    make_calibration,
    show_bytes,
)

SIM_FORMAT = "polmap-sim"


def open_h5file(src: Source) -> h5py.File:
    """Open read-only, turning h5py's low-level errors into a :class:`DatasetError`."""
    try:
        if src.path is not None:
            return h5py.File(str(src.path), "r")
        return h5py.File(src.fileobj(), "r")
    except OSError as exc:
        raise DatasetError(_explain_open_error(src, exc)) from None


def _explain_open_error(src: Source, exc: OSError) -> str:
    text = str(exc)
    m = re.search(r"eof = (\d+).*stored_eof = (\d+)", text)
    if m:
        eof, stored = int(m.group(1)), int(m.group(2))
        return (
            f"{src.label}: expected a complete HDF5 file of {stored} bytes (the size its superblock records); "
            f"found {eof} bytes: the file is truncated (an interrupted copy or download?)"
        )
    if "lock" in text.lower():
        return (
            f"{src.label}: expected an HDF5 file that can be opened for reading; found it locked by another "
            f"program (is it still being written?) (h5py: {text})"
        )
    if "signature" in text.lower():
        return (
            f"{src.label}: expected an HDF5 file (it starts with \\x89HDF); found {show_bytes(src.head(16))}: "
            "not HDF5, or corrupt"
        )
    return f"{src.label}: expected a readable HDF5 file; found a corrupt or unreadable one (h5py: {text})"


def _datasets(f: h5py.File) -> list[h5py.Dataset]:
    found: list[h5py.Dataset] = []
    f.visititems(lambda _name, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return found


def _candidate(ds: h5py.Dataset) -> Candidate:
    return Candidate(ds.name, tuple(int(s) for s in ds.shape), str(ds.dtype))


def hdf5_candidates(f: h5py.File) -> list[Candidate]:
    """Every 4-D dataset in the file (any dtype; bad dtypes are rejected with a clear message later)."""
    return [_candidate(ds) for ds in _datasets(f) if ds.ndim == 4]


def is_sim(f: h5py.File) -> bool:
    """True for polmap's simulated-data layout."""
    fmt = f.attrs.get("polmap_format")
    return (fmt.decode() if isinstance(fmt, bytes) else fmt) == SIM_FORMAT


def _select(f: h5py.File, src: Source, dataset_path: str | None, scan_shape: Any) -> h5py.Dataset:
    cands = hdf5_candidates(f)
    if dataset_path:
        key = dataset_path if dataset_path.startswith("/") else "/" + dataset_path
        obj = f.get(key)
        if isinstance(obj, h5py.Group) and isinstance(obj.get("data"), h5py.Dataset):
            obj = obj["data"]  # an EMD array group: its data lives in "data"
        if not isinstance(obj, h5py.Dataset):
            what = "is a group, not a dataset" if isinstance(obj, h5py.Group) else "does not exist"
            raise DatasetError(
                f"{src.label}: dataset_path {dataset_path!r} {what}; expected one of the 4-D datasets in the file: "
                f"{describe_candidates(cands)}"
            )
        return obj
    if is_sim(f) and isinstance(f.get("data"), h5py.Dataset):
        return f["data"]
    if len(cands) == 1:
        return f[cands[0].path]
    if len(cands) > 1:
        raise DatasetError(
            f"{src.label}: expected one 4-D dataset; found {len(cands)}: {describe_candidates(cands)}. "
            "Choose one with dataset_path (polmap info FILE --dataset PATH)"
        )
    stacks = [ds for ds in _datasets(f) if ds.ndim == 3 and ds.dtype.kind in "uif"]
    if scan_shape is not None and len(stacks) == 1:
        return stacks[0]  # the caller reshapes the single 3-D stack to scan_shape
    others = [_candidate(ds) for ds in _datasets(f)]
    msg = f"{src.label}: expected a 4-D dataset (scan_rows, scan_cols, det_rows, det_cols); found none. Datasets present: {describe_candidates(others)}"
    if stacks:
        msg += ". For a 3-D stack of patterns pass dataset_path and scan_shape=(rows, cols)"
    raise DatasetError(msg)


def _attr(obj: Any, name: str) -> Any:
    v = obj.attrs.get(name)
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.ndarray) and v.size == 1:
        v = v.item()
    return v


def _emd_calibration(f: h5py.File, ds: h5py.Dataset, metadata: dict[str, Any]) -> Calibration | None:
    """Calibration of a py4DSTEM/EMD 1.0 DataCube: its calibration metadata, else its dim vectors."""
    parts = [p for p in ds.name.split("/") if p]
    if parts:
        grp = f.get(f"/{parts[0]}/metadatabundle/calibration")
        if isinstance(grp, h5py.Group):
            try:
                from emdfile import Metadata  # py4DSTEM's own container library

                md = Metadata.from_h5(grp)
                keys = set(md.keys)
                if {"R_pixel_size", "Q_pixel_size"} & keys:
                    metadata["format"] = "py4DSTEM EMD 1.0"
                    return make_calibration(
                        md["R_pixel_size"] if "R_pixel_size" in keys else None,
                        md["R_pixel_units"] if "R_pixel_units" in keys else "",
                        md["Q_pixel_size"] if "Q_pixel_size" in keys else None,
                        md["Q_pixel_units"] if "Q_pixel_units" in keys else "",
                        metadata=metadata,
                    )
            except Exception:  # noqa: BLE001 - fall back to the dim vectors below
                pass
    # EMD dim vectors: dim0..dim3 (emdfile) or dim1..dim4 (EMD 0.2), each [0, step, ...] with "units".
    parent = ds.parent
    for first in (0, 1):
        names = [f"dim{first + i}" for i in range(4)]
        if all(isinstance(parent.get(n), h5py.Dataset) for n in names):
            steps, units = [], []
            for n in names:
                v = np.asarray(parent[n][: min(2, parent[n].shape[0])], dtype=float).ravel()
                steps.append(float(v[1] - v[0]) if v.size >= 2 else None)
                units.append(_attr(parent[n], "units") or "")
            metadata.setdefault("format", "EMD")
            return make_calibration(steps[0], units[0], steps[2], units[2], metadata=metadata)
    return None


#: Calibration attributes of plain HDF5 files, on the dataset or the file root: polmap's own
#: names first, then names seen in other groups' files. (field, units, names)
_CAL_ATTRS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("real", "nm", ("real_step_nm", "scan_step_nm", "step_nm", "scan_step_size_nm")),
    ("real", "A", ("scan_step_A", "scan_step_angstrom")),
    ("reciprocal", "mrad", ("reciprocal_step_mrad", "detector_pixel_size_mrad", "q_pixel_size_mrad")),
    ("reciprocal", "1/A", ("detector_pixel_size_inv_A", "detector_pixel_size_1_per_A", "q_pixel_size_inv_A")),
    ("energy", "keV", ("beam_energy_kev", "voltage_kV", "accelerating_voltage_kV", "high_tension_kV")),
    ("convergence", "mrad", ("convergence_mrad", "convergence_semiangle_mrad", "convergence_semi_angle_mrad")),
)


def _first_attr(objs: tuple[Any, ...], names: tuple[str, ...]) -> Any:
    for obj in objs:
        for n in names:
            if n in obj.attrs:
                v = _attr(obj, n)
                try:
                    f = float(v)
                except (TypeError, ValueError):
                    continue
                if np.isfinite(f) and f > 0:
                    return f
    return None


def _attr_calibration(ds: h5py.Dataset, metadata: dict[str, Any]) -> Calibration | None:
    """Calibration from dataset or root attributes (polmap's names and common others, see ``_CAL_ATTRS``)."""
    objs = (ds, ds.file)
    found: dict[str, tuple[float, str]] = {}
    for fieldname, units, names in _CAL_ATTRS:
        if fieldname in found:
            continue
        v = _first_attr(objs, names)
        if v is not None:
            found[fieldname] = (v, units)
    if not found:
        return None
    real = found.get("real", (None, ""))
    rec = found.get("reciprocal", (None, ""))
    return make_calibration(
        real[0], real[1], rec[0], rec[1],
        found.get("energy", (None, ""))[0], found.get("convergence", (None, ""))[0],
        metadata=metadata,
    )


def open_hdf5(src: Source, dataset_path: str | None, scan_shape: Any) -> Opened:
    """Open the scan of an HDF5 file lazily (see :func:`polmap.io.open_dataset`)."""
    f = open_h5file(src)
    try:
        ds = _select(f, src, dataset_path, scan_shape)
        metadata: dict[str, Any] = {"format": "HDF5", "hdf5_path": ds.name}
        sim = is_sim(f)
        cal = _attr_calibration(ds, metadata) if sim else None
        if cal is None:
            cal = _emd_calibration(f, ds, metadata) or _attr_calibration(ds, metadata) or Calibration()
        gt = None
        if sim:
            metadata["format"] = "polmap simulation"
            raw = _attr(f, "metadata")
            if raw:
                try:
                    metadata["simulation"] = json.loads(raw)
                except (TypeError, ValueError):
                    metadata["simulation"] = raw
        gt_group = f.get("/ground_truth")
        if isinstance(gt_group, h5py.Dataset) and ds.ndim == 4:
            gt = _plain_ground_truth(gt_group, tuple(ds.shape[:2]), src.label, metadata)
        if isinstance(gt_group, h5py.Group) and "label_map" in gt_group and ds.ndim == 4:
            lm_shape = tuple(gt_group["label_map"].shape)
            if lm_shape == tuple(ds.shape[:2]):
                gt = ground_truth_from_group(gt_group, src.label)
            elif sim:
                raise DatasetError(
                    f"{src.label}: expected /ground_truth/label_map of the scan shape {tuple(ds.shape[:2])}; "
                    f"found shape {lm_shape}"
                )
        return Opened(
            array=ds,
            calibration=cal,
            metadata=metadata,
            closers=[f.close],
            dataset_path=ds.name,
            ground_truth=gt,
        )
    except BaseException:
        f.close()
        raise


# -- ground truth ------------------------------------------------------------------------------------
def _directions_attr(objs: tuple[Any, ...], names: list[str]) -> dict[str, Any] | None:
    """Declared class directions (a JSON object in a ``class_directions`` attribute), checked; None if absent.

    A malformed declaration is dropped: it is a prior, and the scan is usable without it.
    """
    from polmap.learn.symmetry import parse_directions

    for obj in objs:
        raw = _attr(obj, "class_directions")
        if raw is None:
            continue
        try:
            return parse_directions(json.loads(raw), names) or None
        except (TypeError, ValueError, AttributeError):
            return None
    return None


def _plain_ground_truth(lm: h5py.Dataset, scan_shape: tuple[int, ...], label: str, metadata: dict[str, Any]) -> GroundTruth | None:
    """A root ``/ground_truth`` 2-D integer dataset; class names in its or the root's ``class_names``
    (a string array, JSON or comma-separated; ``class_names_json`` too), ``/wall_mask`` beside it.

    A map of another shape or dtype is not the truth of this scan: it is noted in
    ``metadata`` and ignored rather than refused (the scan itself is fine).
    """
    if lm.ndim != 2 or tuple(lm.shape) != scan_shape or lm.dtype.kind not in "iu":
        metadata["ground_truth_ignored"] = (
            f"/ground_truth has shape {tuple(lm.shape)} and dtype {lm.dtype}; expected integers of the scan shape "
            f"{scan_shape}"
        )
        return None
    root = lm.file
    names = None
    for obj in (lm, root):
        for key in ("class_names", "class_names_json", "classes"):
            if key in obj.attrs:
                names = parse_name_list(_attr(obj, key))
                break
        if names:
            break
    colors = parse_name_list(_attr(lm, "class_colors") if "class_colors" in lm.attrs else _attr(root, "class_colors"))
    lmap, names, colors = check_label_map(lm[()], names, colors, f"{label}:{lm.name}")
    wall = root.get("/wall_mask")
    wall_arr = None
    if isinstance(wall, h5py.Dataset) and tuple(wall.shape) == scan_shape:
        wall_arr = np.asarray(wall[()]).astype(bool)
    return GroundTruth(label_map=lmap, class_names=names, class_colors=colors, wall_mask=wall_arr,
                       class_directions=_directions_attr((lm, root), names))


def parse_name_list(value: Any) -> list[str] | None:
    """Class names/colours from an attr: a JSON list, a comma-separated string or an array of strings."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        try:
            items = json.loads(value)
        except ValueError:
            items = [s.strip() for s in value.split(",")]
        if isinstance(items, str):
            items = [items]
    else:
        items = list(np.asarray(value).ravel())
    return [x.decode() if isinstance(x, bytes) else str(x) for x in items]


def check_label_map(
    label_map: Any, class_names: list[str] | None, class_colors: list[str] | None, label: str
) -> tuple[np.ndarray, list[str], list[str] | None]:
    """Validate a label map and its class list; returns (int64 map, names, colours)."""
    lm = np.asarray(label_map)
    if lm.ndim != 2:
        raise DatasetError(f"{label}: expected a 2-D label map (scan_rows, scan_cols); found {lm.ndim}-D shape {lm.shape}")
    if lm.size == 0:
        raise DatasetError(f"{label}: expected a non-empty label map; found shape {lm.shape}")
    if lm.dtype.kind == "f":
        if not np.all(np.isfinite(lm)) or not np.all(lm == np.round(lm)):
            raise DatasetError(f"{label}: expected integer class indices; found non-integer values ({lm.dtype})")
    elif lm.dtype.kind not in "ui":
        raise DatasetError(f"{label}: expected integer class indices; found dtype {lm.dtype}")
    lm = lm.astype(np.int64)
    lo, hi = int(lm.min()), int(lm.max())
    if lo < -1:
        raise DatasetError(f"{label}: expected class indices >= -1 (-1 = unknown); found {lo}")
    if class_names is None:
        class_names = [f"class {i}" for i in range(max(hi + 1, 1))]
    if hi >= len(class_names):
        raise DatasetError(
            f"{label}: label map holds class index {hi} but only {len(class_names)} class names are given: {class_names}"
        )
    if class_colors is not None and len(class_colors) != len(class_names):
        raise DatasetError(
            f"{label}: expected one colour per class ({len(class_names)}); found {len(class_colors)} colours"
        )
    return lm, class_names, class_colors


def ground_truth_from_dataset(ds: h5py.Dataset, label: str) -> GroundTruth:
    """A label-map dataset; names/colours from its attrs (or its group's); ``wall_mask``/others beside it."""
    parent = ds.parent
    names = parse_name_list(_attr(ds, "class_names") if "class_names" in ds.attrs else _attr(parent, "class_names"))
    colors = parse_name_list(_attr(ds, "class_colors") if "class_colors" in ds.attrs else _attr(parent, "class_colors"))
    lm, names, colors = check_label_map(ds[()], names, colors, f"{label}:{ds.name}")
    wall = None
    extra: dict[str, np.ndarray] = {}
    if ds.name.rsplit("/", 1)[-1] == "label_map":
        for key, obj in parent.items():
            if obj is ds or not isinstance(obj, h5py.Dataset) or tuple(obj.shape[:2]) != lm.shape:
                continue
            if key == "wall_mask":
                wall = np.asarray(obj[()]).astype(bool)
            else:
                extra[key] = np.asarray(obj[()])
    return GroundTruth(label_map=lm, class_names=names, class_colors=colors, wall_mask=wall, extra=extra,
                       class_directions=_directions_attr((ds, parent), names))


def ground_truth_from_group(group: h5py.Group, label: str) -> GroundTruth:
    """A ground-truth group holding ``label_map`` (and optionally ``wall_mask`` and more)."""
    lm = group.get("label_map")
    if not isinstance(lm, h5py.Dataset):
        raise DatasetError(f"{label}: expected a 'label_map' dataset in group {group.name}; found {list(group.keys())}")
    return ground_truth_from_dataset(lm, label)


def find_label_dataset(f: h5py.File, label: str) -> h5py.Dataset:
    """The label map of a file when no path is given: /ground_truth/label_map, else the only 2-D integer dataset."""
    if isinstance(f.get("/ground_truth/label_map"), h5py.Dataset):
        return f["/ground_truth/label_map"]
    maps = [ds for ds in _datasets(f) if ds.ndim == 2 and ds.dtype.kind in "ui"]
    if len(maps) == 1:
        return maps[0]
    listing = describe_candidates([_candidate(ds) for ds in maps])
    raise DatasetError(
        f"{label}: expected one 2-D integer label map; found {len(maps)} ({listing}). "
        "Name it as FILE.h5:/path/to/label_map"
    )
