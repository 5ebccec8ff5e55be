"""Open 4D-STEM data from any supported file, upload or array as a lazy :class:`Dataset4D`.

Formats and the library that reads each:

==========================  ===================================================================
HDF5 (.h5 .hdf5 .hdf .emd)  h5py; py4DSTEM/EMD 1.0 calibration via emdfile; polmap simulations
.npy / .npz                 numpy (memory-mapped; compressed .npz members are inflated)
Merlin .mib (+ .hdr)        rosettasciio (headers, scan shape) + a structured np.memmap
EMPAD .raw                  np.memmap of 128 x 130 float32 frames without the 2 footer rows
NanoMegas .blo              rosettasciio header layout + np.memmap
Gatan .dm3 / .dm4           py4DSTEM (ncempy) memory map
.zip of any of these        extracted to a temp dir removed on ``close()``
==========================  ===================================================================

Every bad input raises :class:`~polmap.io.dataset.DatasetError`, whose message
names the file, what was expected and what was found.
"""

from __future__ import annotations

import io as _stdio
import os
import re
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from polmap.io.dataset import Dataset4D, DatasetError, GroundTruth
from polmap.io import _formats, _hdf5
from polmap.io._common import (
    EXTENSIONS,
    SUPPORTED_DESCRIPTION,
    Candidate,
    Opened,
    NavReshaped,
    Source,
    check_array,
    make_tempdir,
    remover,
    reshape_scan,
    sample_positions,
    show_bytes,
    sniff,
)

__all__ = [
    "Candidate",
    "SUPPORTED_DESCRIPTION",
    "list_4d_datasets",
    "open_dataset",
    "read_ground_truth",
]

#: ``open_dataset`` options and their defaults.
OPTIONS: dict[str, Any] = {
    # Read a sample of patterns of float data and refuse NaN/Inf.
    "check_finite": True,
    # Flip Merlin pattern rows as rosettasciio/pyxem do (Merlin stores them bottom-up).
    "flip_mib": True,
}

_CONTAINERS = {"hdf5", "npz", "zip"}
_NEEDS_FILE = {"mib", "dm"}  # readers that need a real file (sidecars, py4DSTEM/ncempy paths)
_N_FINITE_SAMPLES = 16


# -- public API ---------------------------------------------------------------------------------------
def open_dataset(
    source: Any,
    *,
    dataset_path: str | None = None,
    filename: str | None = None,
    scan_shape: tuple[int, int] | None = None,
    **options: Any,
) -> Dataset4D:
    """Open a 4D-STEM scan lazily.

    Parameters
    ----------
    source : str, Path, bytes, file-like or ndarray
        A file path; ``"demo"`` for the bundled simulated demo; the raw bytes
        or file object of an upload (``filename`` then names the format); or
        an array-like of shape ``(R, C, Qr, Qc)`` (or ``(N, Qr, Qc)`` with
        ``scan_shape``).
    dataset_path : str, optional
        Which array of a container to use: an HDF5 path (``"/entry/data"``),
        an ``.npz`` key, or a ``.zip`` member name (optionally
        ``"member.h5:/inner/path"``). Needed when there are several.
    filename : str, optional
        Name of an upload (its extension picks the reader); also the name of
        an array source.
    scan_shape : (int, int), optional
        ``(rows, cols)`` of the scan, for 3-D stacks of patterns and for files
        that do not record it (EMPAD without its XML, Merlin without ``.hdr``).
    **options
        ``check_finite`` (default True): sample 16 evenly spaced patterns of
        float data and refuse NaN/Inf. ``flip_mib`` (default True): flip
        Merlin pattern rows as rosettasciio/pyxem do.

    Returns
    -------
    Dataset4D
        Backed by an open ``h5py.Dataset``, an ``np.memmap`` or a zero-copy
        view of the upload; call :meth:`Dataset4D.close` (or use ``with``).

    Raises
    ------
    DatasetError
        For a missing, unreadable, truncated, ambiguous or unusable input.
    """
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise TypeError(f"open_dataset() got unknown options {sorted(unknown)}; known: {sorted(OPTIONS)}")
    opts = {**OPTIONS, **options}
    if isinstance(source, str) and source == "demo":
        from polmap.simulate import demo_path  # imported here: simulate pulls in the physics code

        ds = open_dataset(demo_path(), dataset_path=dataset_path, scan_shape=scan_shape, **options)
        ds.source, ds.name = "demo", "demo"
        ds.metadata["demo"] = True
        return ds
    if isinstance(source, (str, os.PathLike)):
        src = _path_source(source)
        kind = _kind(src, src.path.name)
        opened = _open_kind(src, kind, dataset_path, scan_shape, opts)
        name = src.path.name + (f":{dataset_path}" if dataset_path else "")
        # An absolute source lets a workspace reopen the file from any working directory.
        return _finish(opened, src.label, str(src.path.resolve()), name, scan_shape, opts)
    if isinstance(source, (bytes, bytearray, memoryview)) or hasattr(source, "read"):
        return _open_upload(source, filename, dataset_path, scan_shape, opts)
    if hasattr(source, "shape") and hasattr(source, "dtype"):
        name = filename or "array"
        if dataset_path:
            raise DatasetError(f"array:{name}: dataset_path {dataset_path!r} given, but an array holds a single dataset")
        return _finish(Opened(array=source, metadata={"format": "array"}), f"array:{name}", f"array:{name}", name, scan_shape, opts)
    raise TypeError(
        f"open_dataset() expects a path, 'demo', bytes/file-like upload or an array; got {type(source).__name__}"
    )


def list_4d_datasets(path: str | os.PathLike) -> list[Candidate]:
    """The 4-D arrays a container file offers as ``dataset_path`` choices.

    Parameters
    ----------
    path : str or Path
        An HDF5 file, an ``.npz`` or a ``.zip``.

    Returns
    -------
    list of Candidate
        ``(path, shape, dtype)`` per 4-D dataset; for a ``.zip``, one entry per
        data file it holds (``"member"`` or ``"member:/inner"``). Empty for
        single-array formats (.npy, .mib, .raw, .blo, .dm3/.dm4).
    """
    src = _path_source(path)
    kind = _kind(src, src.path.name)
    if kind == "hdf5":
        with _hdf5.open_h5file(src) as f:
            return _hdf5.hdf5_candidates(f)
    if kind == "npz":
        return _formats.npz_candidates(src)
    if kind == "zip":
        out: list[Candidate] = []
        for member in _formats.zip_member_names(src):
            out.extend(_zip_member_candidates(src, member))
        return out
    return []


def read_ground_truth(path_spec: str | os.PathLike, dataset_path: str | None = None) -> GroundTruth:
    """Read known classes per probe position.

    Parameters
    ----------
    path_spec : str or Path
        ``FILE.npy`` (a 2-D integer map; class names from ``FILE.json`` with
        ``class_names``/``class_colors`` when present), ``FILE.npz[:key]``,
        ``FILE.h5:/path/to/label_map`` (names from the ``class_names`` attr, a
        JSON list or array of strings), ``FILE.h5:/group`` (a group holding
        ``label_map`` and optionally ``wall_mask``) or a polmap simulated file
        (its ``/ground_truth``).
    dataset_path : str, optional
        The path inside the file, instead of the ``:path`` suffix.

    Returns
    -------
    GroundTruth
        ``label_map`` as int64 with -1 for unknown.
    """
    spec = os.fspath(path_spec)
    file, inner = spec, dataset_path
    if inner is None and not Path(spec).exists():
        m = re.match(r"^(.+?\.(?:h5|hdf5|hdf|he5|emd|py4dstem|npz)):(.*)$", spec, re.IGNORECASE)
        if m:
            file, inner = m.group(1), m.group(2) or None
    src = _path_source(file)
    kind = _kind(src, src.path.name)
    if kind == "npy":
        arr = _formats.open_npy(src).array
        names = colors = None
        side = src.path.with_suffix(".json")
        if side.exists():
            import json

            try:
                info = json.loads(side.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise DatasetError(f"{side}: expected JSON with class_names; found invalid JSON ({exc})") from None
            names = _hdf5.parse_name_list(info.get("class_names"))
            colors = _hdf5.parse_name_list(info.get("class_colors"))
        lm, names, colors = _hdf5.check_label_map(np.asarray(arr), names, colors, src.label)
        return GroundTruth(label_map=lm, class_names=names, class_colors=colors)
    if kind == "npz":
        with np.load(src.path, allow_pickle=False) as z:
            keys = list(z.keys())
            if inner is None:
                if "label_map" in keys:
                    inner = "label_map"
                else:
                    maps = [k for k in keys if z[k].ndim == 2 and z[k].dtype.kind in "ui"]
                    if len(maps) != 1:
                        raise DatasetError(
                            f"{src.label}: expected one 2-D integer label map; found {len(maps)} ({maps}). Name it as FILE.npz:key"
                        )
                    inner = maps[0]
            if inner not in keys:
                raise DatasetError(f"{src.label}: expected array {inner!r}; found arrays {keys}")
            names = _hdf5.parse_name_list(z["class_names"]) if "class_names" in keys else None
            colors = _hdf5.parse_name_list(z["class_colors"]) if "class_colors" in keys else None
            lm, names, colors = _hdf5.check_label_map(z[inner], names, colors, f"{src.label}:{inner}")
            wall = z["wall_mask"].astype(bool) if "wall_mask" in keys and z["wall_mask"].shape == lm.shape else None
        return GroundTruth(label_map=lm, class_names=names, class_colors=colors, wall_mask=wall)
    if kind == "hdf5":
        import h5py

        with _hdf5.open_h5file(src) as f:
            if inner:
                key = inner if inner.startswith("/") else "/" + inner
                obj = f.get(key)
                if isinstance(obj, h5py.Group):
                    return _hdf5.ground_truth_from_group(obj, src.label)
                if not isinstance(obj, h5py.Dataset):
                    maps = [
                        f"{ds.name} {ds.shape}"
                        for ds in _iter_datasets(f)
                        if ds.ndim == 2 and ds.dtype.kind in "ui"
                    ]
                    raise DatasetError(
                        f"{src.label}: label map {inner!r} does not exist; 2-D integer datasets in the file: "
                        f"{', '.join(maps) or 'none'}"
                    )
                return _hdf5.ground_truth_from_dataset(obj, src.label)
            return _hdf5.ground_truth_from_dataset(_hdf5.find_label_dataset(f, src.label), src.label)
    raise DatasetError(
        f"{src.label}: expected a label map in .npy, .npz or HDF5 (FILE.h5:/path); found a {kind} file"
    )


# -- internals ------------------------------------------------------------------------------------------
def _iter_datasets(f: Any) -> list[Any]:
    import h5py

    found: list[Any] = []
    f.visititems(lambda _n, o: found.append(o) if isinstance(o, h5py.Dataset) else None)
    return found


def _path_source(path: str | os.PathLike) -> Source:
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"{p}: expected a 4D-STEM data file; found nothing at this path (file not found)")
    if p.is_dir():
        raise DatasetError(f"{p}: expected a file; found a directory")
    if not os.access(p, os.R_OK):
        raise DatasetError(f"{p}: expected a readable file; found one without read permission")
    return Source(label=str(p), path=p)


def _kind(src: Source, filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    kind = EXTENSIONS.get(suffix)
    size = src.size()
    if size == 0:
        what = f"{suffix} data" if kind else "data"
        raise DatasetError(f"{src.label}: expected {what}; found an empty file (0 bytes)")
    head = src.head(16)
    if kind is None:
        kind = sniff(head)
        if kind is None:
            raise DatasetError(
                f"{src.label}: unknown format {suffix or '(no extension)'}; expected one of: "
                f"{SUPPORTED_DESCRIPTION}. The file starts with {show_bytes(head)}"
            )
    if kind == "zip" and suffix != ".zip":
        # An .npz under another name (or none): a zip of .npy members only.
        with _formats.zip_open(src) as z:
            names = [i.filename for i in z.infolist()]
        if names and all(n.endswith(".npy") for n in names):
            kind = "npz"
    return kind


def _open_kind(src: Source, kind: str, dataset_path: str | None, scan_shape: Any, opts: dict[str, Any]) -> Opened:
    if dataset_path and kind not in _CONTAINERS:
        raise DatasetError(
            f"{src.label}: dataset_path {dataset_path!r} given, but a {kind} file holds a single array "
            "(dataset_path chooses inside HDF5, .npz and .zip files)"
        )
    if kind == "hdf5":
        return _hdf5.open_hdf5(src, dataset_path, scan_shape)
    if kind == "npy":
        return _formats.open_npy(src)
    if kind == "npz":
        return _formats.open_npz(src, dataset_path, scan_shape)
    if kind == "empad":
        return _formats.open_empad(src, scan_shape)
    if kind == "blo":
        return _formats.open_blo(src)
    if kind == "zip":

        def open_member(member: Source, inner: str | None) -> Opened:
            return _open_kind(member, _kind(member, member.name), inner, scan_shape, opts)

        return _formats.open_zip(src, dataset_path, open_member)
    if kind in _NEEDS_FILE and src.path is None:
        return _open_via_tempfile(src, kind, scan_shape, opts)
    if kind == "mib":
        return _formats.open_mib(src, scan_shape, flip=bool(opts["flip_mib"]))
    if kind == "dm":
        return _formats.open_dm(src)
    raise DatasetError(f"{src.label}: unsupported format {kind}; expected one of: {SUPPORTED_DESCRIPTION}")


def _open_via_tempfile(src: Source, kind: str, scan_shape: Any, opts: dict[str, Any]) -> Opened:
    tmp = make_tempdir("polmap-upload-")
    try:
        path = tmp / Path(src.name).name
        path.write_bytes(src.buffer)
        opened = _open_kind(Source(label=src.label, path=path), kind, None, scan_shape, opts)
    except BaseException:
        remover(tmp)()
        raise
    opened.closers.insert(0, remover(tmp))
    return opened


def _open_upload(
    source: Any, filename: str | None, dataset_path: str | None, scan_shape: Any, opts: dict[str, Any]
) -> Dataset4D:
    if isinstance(source, (bytes, bytearray, memoryview)):
        buf = memoryview(source)
    elif isinstance(source, _stdio.BytesIO):
        buf = source.getbuffer()  # no copy of what is already in memory
    else:
        data = source.read()
        buf = memoryview(data if isinstance(data, (bytes, bytearray)) else bytes(data))
    buf = buf.cast("B") if buf.format != "B" or buf.ndim != 1 else buf
    filename = filename or Path(str(getattr(source, "name", "") or "upload")).name
    label = f"upload:{filename}"
    src = Source(label=label, buffer=buf)
    kind = _kind(src, filename)
    opened = _open_kind(src, kind, dataset_path, scan_shape, opts)
    return _finish(opened, label, label, filename, scan_shape, opts)


def _zip_member_candidates(src: Source, member: str) -> list[Candidate]:
    # Extract one member at a time so listing a big archive never holds two copies on disk.
    def lister(member_src: Source, inner: str | None) -> Opened:
        kind = _kind(member_src, member_src.name)
        if kind in _CONTAINERS:
            cands = list_4d_datasets(member_src.path)
            return Opened(array=None, metadata={"candidates": cands})
        opened = _open_kind(member_src, kind, None, None, dict(OPTIONS))
        shape = tuple(int(s) for s in opened.array.shape)
        dtype = str(np.dtype(opened.array.dtype))
        opened.close()
        return Opened(array=None, metadata={"candidates": [Candidate("", shape, dtype)]})

    try:
        opened = _formats.open_zip(src, member, lister)
    except DatasetError:
        return []
    try:
        found = opened.metadata["candidates"]
        return [
            Candidate(member + (f":{c.path}" if c.path else ""), c.shape, c.dtype) for c in found if len(c.shape) == 4
        ]
    finally:
        opened.close()


def _finish(
    opened: Opened, label: str, source: str, name: str, scan_shape: Any, opts: dict[str, Any]
) -> Dataset4D:
    """Shape/type checks, wrapping, and a cheap read of sample patterns (truncation, NaN/Inf)."""
    try:
        array = opened.array
        if scan_shape is not None:
            array = reshape_scan(array, scan_shape, label)
        check_array(array, label)
        gt = opened.ground_truth
        if gt is not None and tuple(gt.label_map.shape) != tuple(array.shape[:2]):
            raise DatasetError(
                f"{label}: expected ground truth of the scan shape {tuple(array.shape[:2])}; "
                f"found a label map of shape {gt.label_map.shape}"
            )
        opened.metadata.setdefault("storage", _storage(array))
        opened.metadata.setdefault("dtype_on_disk", str(np.dtype(array.dtype)))
        ds = Dataset4D(
            array,
            source=source,
            name=name,
            calibration=opened.calibration,
            ground_truth=gt,
            metadata=opened.metadata,
            closer=opened.close,
            dataset_path=opened.dataset_path,
        )
    except BaseException:
        opened.close()
        raise
    # Temp dirs and open HDF5 handles also go when a forgotten dataset is garbage-collected.
    weakref.finalize(ds, opened.close)
    try:
        _probe(ds, label, bool(opts["check_finite"]))
    except BaseException:
        ds.close()
        raise
    return ds


def _storage(array: Any) -> str:
    """How the scan is held, for summaries: lazily (file-backed) or in memory."""
    import h5py

    if isinstance(array, NavReshaped):
        return "lazy: " + _storage(array._base).split(": ", 1)[-1] + " (scan axes reshaped)"
    if isinstance(array, h5py.Dataset):
        return "lazy: h5py.Dataset"
    if isinstance(array, np.memmap):
        return "lazy: np.memmap"
    if isinstance(array, np.ndarray):
        base = array
        while isinstance(base, np.ndarray) and base.base is not None:
            base = base.base
        if isinstance(base, np.memmap) or type(base).__name__ == "mmap":
            return "lazy: np.memmap"
        if isinstance(base, (bytes, bytearray, memoryview)):
            return "in memory: view of the upload"
        return "in memory: ndarray"
    return f"lazy: {type(array).__module__}.{type(array).__name__}"


def _probe(ds: Dataset4D, label: str, check_finite: bool) -> None:
    floating = ds.dtype.kind == "f"
    positions = sample_positions(ds.scan_shape, _N_FINITE_SAMPLES if (floating and check_finite) else 2)
    for r, c in positions:
        try:
            pattern = ds.pattern(r, c)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise DatasetError(
                f"{label}: expected readable patterns; reading pattern ({r}, {c}) failed, so the file is truncated "
                f"or corrupt ({type(exc).__name__}: {exc})"
            ) from None
        if floating and check_finite and not np.all(np.isfinite(pattern)):
            n_nan, n_inf = int(np.isnan(pattern).sum()), int(np.isinf(pattern).sum())
            raise DatasetError(
                f"{label}: expected finite intensities; found {n_nan} NaN and {n_inf} Inf values in pattern ({r}, {c}) "
                f"(checked {len(positions)} evenly spaced patterns of {ds.n_patterns}). "
                "Clean the data, or pass check_finite=False to open it anyway"
            )
    if floating and not check_finite:
        ds.metadata["finite_check"] = "skipped (check_finite=False)"
