"""The workspace file: one HDF5 file holding everything a labelling session made.

A workspace (suggested suffix ``.polmap.h5``) refers to its dataset by path and
content fingerprint and holds the preprocessing settings, the classes, the
labels, model checkpoints (raw bytes), predictions (named arrays) and a
provenance log. Saving is atomic: the file is written beside the old one under
a temporary name, flushed to disk and renamed over it, so a crash mid-save
leaves the previous version intact.

Layout (format version 1)::

    /                     attrs: polmap_format="polmap-workspace", polmap_version=1,
                                 created, modified (ISO 8601 UTC)
    /dataset              attrs: source, dataset_path, name, fingerprint,
                                 scan_shape, detector_shape; calibration (JSON dataset)
    /preprocess           JSON string dataset
    /classes              JSON string dataset {"names": [...], "colors": [...]}
    /labels/{row,col,class,source,time,group}   1-D arrays; attrs: sources, next_group
    /models/<name>/data   uint8 bytes;  /models/<name>/meta  JSON;  attr created
    /predictions/<name>/arrays/<key>  arrays;  /predictions/<name>/meta  JSON;  attr created
    /provenance           1-D strings, one JSON event per entry
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from polmap.io.dataset import DatasetError
from polmap.labels import SOURCES, ClassSet, LabelStore

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SUFFIX",
    "DatasetRef",
    "Workspace",
    "WorkspaceError",
    "WorkspaceMismatch",
]

FORMAT = "polmap-workspace"
FORMAT_VERSION = 1
SUFFIX = ".polmap.h5"

_STR = h5py.string_dtype("utf-8")


class WorkspaceError(DatasetError):
    """A file that is not a readable polmap workspace (wrong kind, corrupt, truncated, too new)."""


class WorkspaceMismatch(WorkspaceError):
    """The dataset given does not match the one the workspace was made for."""


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays and paths turn up in details and metadata all the time
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"cannot store a {type(obj).__name__} in a workspace (not JSON-serialisable): {obj!r}")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default)


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not name.strip() or "/" in name or name in (".", ".."):
        raise ValueError(f"{kind} name must be a non-empty string without '/', found {name!r}")
    return name


@dataclass(frozen=True)
class DatasetRef:
    """Where a workspace's dataset lives and what it contained.

    Parameters
    ----------
    source : str
        Path (or ``"demo"``, ``"array:NAME"``, ``"upload:NAME"``) the dataset came from.
    dataset_path : str or None
        Path of the 4-D array inside an HDF5 container, if any.
    name : str
        Human-readable name.
    fingerprint : str
        :attr:`polmap.io.dataset.Dataset4D.fingerprint` of the content.
    scan_shape, detector_shape : tuple of int
        ``(R, C)`` and ``(Qr, Qc)``.
    calibration : dict
        :meth:`polmap.io.dataset.Calibration.to_dict` output (may be empty).
    """

    source: str
    dataset_path: str | None
    name: str
    fingerprint: str
    scan_shape: tuple[int, int]
    detector_shape: tuple[int, int]
    calibration: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dataset(cls, dataset: Any) -> "DatasetRef":
        """Describe a :class:`~polmap.io.dataset.Dataset4D` (or anything with the same attributes)."""
        cal = getattr(dataset, "calibration", None)
        return cls(
            source=str(dataset.source),
            dataset_path=getattr(dataset, "dataset_path", None),
            name=str(dataset.name),
            fingerprint=str(dataset.fingerprint),
            scan_shape=tuple(int(s) for s in dataset.scan_shape),  # type: ignore[arg-type]
            detector_shape=tuple(int(s) for s in getattr(dataset, "detector_shape", (0, 0))),  # type: ignore[arg-type]
            calibration=dict(cal.to_dict()) if hasattr(cal, "to_dict") else dict(cal or {}),
        )


class Workspace:
    """A labelling session on one dataset, saved as one HDF5 file.

    Build with :meth:`create` or :meth:`open`, never directly. Changes live in
    memory until :meth:`save` (or :meth:`autosave`) writes them.

    Attributes
    ----------
    path : Path
        The workspace file.
    dataset : DatasetRef
        The dataset the workspace belongs to.
    preprocess : dict
        Preprocessing configuration (``PreprocessConfig.to_dict()``).
    labels : LabelStore
        The labels (its ``classes`` are the workspace's classes).
    created, modified : str
        ISO 8601 UTC times of creation and of the last save.
    """

    def __init__(
        self,
        path: Path,
        dataset: DatasetRef,
        labels: LabelStore,
        preprocess: dict[str, Any],
        *,
        created: str,
        modified: str,
    ) -> None:
        self.path = Path(path)
        self.dataset = dataset
        self.preprocess = dict(preprocess)
        self._labels = labels
        self.created = created
        self.modified = modified
        self._models: dict[str, tuple[bytes, dict[str, Any], str]] = {}
        self._predictions: dict[str, tuple[dict[str, np.ndarray], dict[str, Any], str]] = {}
        self._provenance: list[dict[str, Any]] = []
        self._dirty = True
        self._saved_revision = -1
        self._last_save = 0.0
        self.last_save_seconds: float | None = None

    # -- construction ---------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        dataset: Any,
        classes: ClassSet,
        preprocess: Any = None,
        *,
        overwrite: bool = False,
    ) -> "Workspace":
        """Start a workspace for a dataset and write it to ``path``.

        Parameters
        ----------
        path : path-like
            Workspace file to write (suffix ``.polmap.h5`` suggested).
        dataset : Dataset4D
            The dataset; only its reference and fingerprint are stored.
        classes : ClassSet
            Classes to label with.
        preprocess : PreprocessConfig or dict, optional
            Preprocessing settings (anything with ``to_dict()``, or a dict).
        overwrite : bool
            Replace an existing file at ``path``; refused by default so no
            earlier work is lost.

        Returns
        -------
        Workspace

        Raises
        ------
        FileExistsError
            If ``path`` exists and ``overwrite`` is False.
        """
        p = Path(path)
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} already exists; open it with Workspace.open or pass overwrite=True")
        ref = DatasetRef.from_dataset(dataset)
        now = _now_iso()
        ws = cls(p, ref, LabelStore(ref.scan_shape, classes), _preprocess_dict(preprocess), created=now, modified=now)
        ws.log("created", dataset=ref.name, source=ref.source, fingerprint=ref.fingerprint)
        ws.save()
        return ws

    @classmethod
    def open(cls, path: str | os.PathLike[str], dataset: Any = None) -> "Workspace":
        """Read a workspace file.

        Parameters
        ----------
        path : path-like
            The workspace file.
        dataset : Dataset4D, optional
            If given, its fingerprint must match the workspace's. When it
            matches but the dataset now lives elsewhere, the stored source is
            updated (and logged).

        Returns
        -------
        Workspace

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        WorkspaceError
            If the file is not a polmap workspace, is corrupt or truncated, or
            was written by a newer format version.
        WorkspaceMismatch
            If ``dataset`` is not the workspace's dataset.
        """
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"workspace file {p} does not exist")
        try:
            f = h5py.File(p, "r")
        except OSError as exc:
            raise WorkspaceError(
                f"{p} is not a readable polmap workspace: HDF5 could not open it ({exc}). "
                f"The file may be truncated or corrupt, or not an HDF5 file at all."
            ) from None
        with f:
            fmt = f.attrs.get("polmap_format")
            fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
            if fmt != FORMAT:
                what = f"a '{fmt}' file" if fmt else "an HDF5 file without a polmap_format attribute"
                hint = " (a dataset: open it as data, not as a workspace)" if fmt == "polmap-sim" else ""
                raise WorkspaceError(f"{p} is not a polmap workspace: found {what}{hint}, expected '{FORMAT}'")
            version = int(f.attrs.get("polmap_version", -1))
            if version > FORMAT_VERSION:
                raise WorkspaceError(
                    f"{p} was written in workspace format version {version}, newer than this polmap "
                    f"reads (version {FORMAT_VERSION}); upgrade polmap to open it"
                )
            if version < 1:
                raise WorkspaceError(f"{p} has an invalid workspace format version {version}")
            try:
                ws = cls._read(p, f)
            except WorkspaceError:
                raise
            except (KeyError, OSError, ValueError, TypeError) as exc:
                raise WorkspaceError(f"{p} is a damaged polmap workspace: {type(exc).__name__}: {exc}") from exc
        if dataset is not None:
            ws.check_dataset(dataset)
            if str(dataset.source) != ws.dataset.source:
                old = ws.dataset.source
                ws.dataset = replace(ws.dataset, source=str(dataset.source))
                ws.log("dataset_relocated", old_source=old, new_source=ws.dataset.source)
        return ws

    @classmethod
    def _read(cls, p: Path, f: h5py.File) -> "Workspace":
        d = f["dataset"]
        dp = _str(d.attrs["dataset_path"])
        ref = DatasetRef(
            source=_str(d.attrs["source"]),
            dataset_path=dp or None,
            name=_str(d.attrs["name"]),
            fingerprint=_str(d.attrs["fingerprint"]),
            scan_shape=tuple(int(s) for s in d.attrs["scan_shape"]),  # type: ignore[arg-type]
            detector_shape=tuple(int(s) for s in d.attrs["detector_shape"]),  # type: ignore[arg-type]
            calibration=_read_json(d["calibration"]),
        )
        classes = ClassSet.from_dict(_read_json(f["classes"]))
        lg = f["labels"]
        stored_sources = json.loads(_str(lg.attrs["sources"]))
        entries = {k: lg[k][()] for k in ("row", "col", "class", "source", "time", "group")}
        # source codes are stored with their names so a reordered SOURCES can't mislabel them
        code = np.array([SOURCES.index(s) if s in SOURCES else -1 for s in stored_sources], dtype=np.int64)
        entries["source"] = code[entries["source"].astype(np.int64)] if entries["source"].size else entries["source"]
        labels = LabelStore.from_entries(ref.scan_shape, classes, entries, next_group=int(lg.attrs["next_group"]))
        ws = cls(
            p,
            ref,
            labels,
            _read_json(f["preprocess"]),
            created=_str(f.attrs["created"]),
            modified=_str(f.attrs["modified"]),
        )
        for name, g in f["models"].items():
            ws._models[name] = (g["data"][()].tobytes(), _read_json(g["meta"]), _str(g.attrs["created"]))
        for name, g in f["predictions"].items():
            arrays = {k: v[()] for k, v in g["arrays"].items()}
            ws._predictions[name] = (arrays, _read_json(g["meta"]), _str(g.attrs["created"]))
        ws._provenance = [json.loads(_str(s)) for s in f["provenance"][()]]
        ws._mark_saved()
        return ws

    # -- dataset --------------------------------------------------------------------
    def check_dataset(self, dataset: Any) -> None:
        """Raise :class:`WorkspaceMismatch` unless ``dataset`` has this workspace's fingerprint."""
        fp = str(dataset.fingerprint)
        if fp != self.dataset.fingerprint:
            raise WorkspaceMismatch(
                f"workspace {self.path} was made for dataset '{self.dataset.name}' from {self.dataset.source} "
                f"(fingerprint {self.dataset.fingerprint}, scan {self.dataset.scan_shape}), but the dataset given "
                f"is '{dataset.name}' from {dataset.source} (fingerprint {fp}, scan {tuple(dataset.scan_shape)}); "
                f"open the matching data file or start a new workspace"
            )

    # -- labels and classes ---------------------------------------------------------
    @property
    def labels(self) -> LabelStore:
        """The label store (edit it in place; :meth:`autosave` notices the changes)."""
        return self._labels

    @property
    def classes(self) -> ClassSet:
        """The classes (those of :attr:`labels`)."""
        return self._labels.classes

    def set_labels(self, labels: LabelStore) -> None:
        """Replace the label store (its scan shape must match the dataset's)."""
        if not isinstance(labels, LabelStore):
            raise ValueError(f"labels must be a LabelStore, found {type(labels).__name__}")
        if labels.scan_shape != self.dataset.scan_shape:
            raise ValueError(
                f"labels are for a scan of shape {labels.scan_shape}, but the workspace's dataset "
                f"has scan shape {self.dataset.scan_shape}"
            )
        self._labels = labels
        self._dirty = True

    def set_preprocess(self, preprocess: Any) -> None:
        """Replace the preprocessing configuration (``PreprocessConfig`` or dict)."""
        self.preprocess = _preprocess_dict(preprocess)
        self._dirty = True

    # -- models ---------------------------------------------------------------------
    def add_model(self, name: str, data: bytes, meta: Mapping[str, Any] | None = None) -> None:
        """Store a model checkpoint (replacing one of the same name).

        Parameters
        ----------
        name : str
            Checkpoint name (no ``/``).
        data : bytes
            The serialised checkpoint (e.g. ``TrainedModel.save`` to a buffer).
        meta : mapping, optional
            JSON-serialisable description (architecture, metrics, label hash...).
        """
        _check_name("model", name)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"model data must be bytes, found {type(data).__name__}")
        meta_d = json.loads(_dumps(dict(meta or {})))  # validate + snapshot now, not at save time
        self._models[name] = (bytes(data), meta_d, _now_iso())
        self._dirty = True

    def get_model(self, name: str) -> tuple[bytes, dict[str, Any]]:
        """Return ``(data, meta)`` of a stored checkpoint.

        Raises
        ------
        KeyError
            Naming the available checkpoints.
        """
        if name not in self._models:
            raise KeyError(f"no model {name!r} in workspace {self.path}; available: {list(self._models)}")
        data, meta, _ = self._models[name]
        return data, dict(meta)

    def remove_model(self, name: str) -> None:
        """Delete a stored checkpoint."""
        self.get_model(name)
        del self._models[name]
        self._dirty = True

    def model_names(self) -> list[str]:
        """Names of the stored checkpoints, oldest first."""
        return list(self._models)

    # -- predictions ----------------------------------------------------------------
    def add_prediction(
        self, name: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None
    ) -> None:
        """Store a named set of arrays (replacing one of the same name).

        Parameters
        ----------
        name : str
            Prediction name (no ``/``).
        arrays : mapping of str to ndarray
            E.g. ``{"probabilities": (R, C, K) float32, "entropy": (R, C)}``.
            Numeric or boolean arrays only; copied now.
        meta : mapping, optional
            JSON-serialisable description (model name, label hash...).
        """
        _check_name("prediction", name)
        if not isinstance(arrays, Mapping) or not arrays:
            raise ValueError("arrays must be a non-empty mapping of name -> ndarray")
        stored: dict[str, np.ndarray] = {}
        for k, v in arrays.items():
            _check_name("prediction array", k)
            a = np.array(v, copy=True)
            if a.dtype.kind not in "biuf":
                raise ValueError(
                    f"prediction array {k!r} has dtype {a.dtype}; only numeric or boolean arrays are stored"
                )
            stored[k] = a
        meta_d = json.loads(_dumps(dict(meta or {})))
        self._predictions[name] = (stored, meta_d, _now_iso())
        self._dirty = True

    def get_prediction(self, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Return ``(arrays, meta)`` of a stored prediction.

        Raises
        ------
        KeyError
            Naming the available predictions.
        """
        if name not in self._predictions:
            raise KeyError(f"no prediction {name!r} in workspace {self.path}; available: {list(self._predictions)}")
        arrays, meta, _ = self._predictions[name]
        return dict(arrays), dict(meta)

    def remove_prediction(self, name: str) -> None:
        """Delete a stored prediction."""
        self.get_prediction(name)
        del self._predictions[name]
        self._dirty = True

    def prediction_names(self) -> list[str]:
        """Names of the stored predictions, oldest first."""
        return list(self._predictions)

    # -- provenance -----------------------------------------------------------------
    def log(self, event: str, **details: Any) -> dict[str, Any]:
        """Append an event to the provenance log.

        Parameters
        ----------
        event : str
            What happened (``"trained"``, ``"predicted"``, ``"imported_labels"``...).
        **details
            JSON-serialisable particulars (numpy scalars and arrays are converted).

        Returns
        -------
        dict
            The stored event ``{"time", "event", "details"}``.
        """
        if not isinstance(event, str) or not event:
            raise ValueError(f"event must be a non-empty string, found {event!r}")
        entry = {"time": _now_iso(), "event": event, "details": json.loads(_dumps(details))}
        self._provenance.append(entry)
        self._dirty = True
        return dict(entry)

    @property
    def provenance(self) -> list[dict[str, Any]]:
        """The provenance log, oldest first (a copy)."""
        return [dict(e) for e in self._provenance]

    # -- saving ---------------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        """Whether anything changed since the last save or open."""
        return self._dirty or self._labels.revision != self._saved_revision

    def _mark_saved(self) -> None:
        self._dirty = False
        self._saved_revision = self._labels.revision
        self._last_save = time.monotonic()

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the workspace atomically.

        The file is written under a temporary name in the same directory,
        fsync'ed and renamed over the target with :func:`os.replace`; if
        anything fails the previous file is untouched and the temporary file
        removed.

        Parameters
        ----------
        path : path-like, optional
            Save here instead (the workspace then lives at this path).

        Returns
        -------
        Path
            The file written.
        """
        target = Path(path) if path is not None else self.path
        t0 = time.perf_counter()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
        modified = _now_iso()
        try:
            # O_EXCL: never clobber; mode 0o666 lets the umask decide, as for any new file
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            os.close(fd)
            if target.exists():
                os.chmod(tmp, target.stat().st_mode & 0o7777)
            with h5py.File(tmp, "w", track_order=True) as f:
                self._write(f, modified)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(target.parent)
        self.path = target
        self.modified = modified
        self._mark_saved()
        self.last_save_seconds = time.perf_counter() - t0
        return target

    def autosave(self, min_interval_s: float = 0.0) -> bool:
        """Save if anything changed and at least ``min_interval_s`` passed since the last save.

        Cheap to call after every label change: it does nothing when nothing
        changed. See :attr:`last_save_seconds` for the cost of the last save.

        Returns
        -------
        bool
            Whether a save happened.
        """
        if not self.dirty:
            return False
        if min_interval_s > 0 and time.monotonic() - self._last_save < min_interval_s:
            return False
        self.save()
        return True

    def _write(self, f: h5py.File, modified: str) -> None:
        f.attrs["polmap_format"] = FORMAT
        f.attrs["polmap_version"] = FORMAT_VERSION
        f.attrs["created"] = self.created
        f.attrs["modified"] = modified
        ref = self.dataset
        d = f.create_group("dataset")
        d.attrs["source"] = ref.source
        d.attrs["dataset_path"] = ref.dataset_path or ""
        d.attrs["name"] = ref.name
        d.attrs["fingerprint"] = ref.fingerprint
        d.attrs["scan_shape"] = np.array(ref.scan_shape, dtype=np.int64)
        d.attrs["detector_shape"] = np.array(ref.detector_shape, dtype=np.int64)
        _write_json(d, "calibration", ref.calibration)
        _write_json(f, "preprocess", self.preprocess)
        _write_json(f, "classes", self._labels.classes.to_dict())
        lg = f.create_group("labels")
        for k, v in self._labels.entries().items():
            lg.create_dataset(k, data=v)
        lg.attrs["sources"] = json.dumps(list(SOURCES))
        lg.attrs["next_group"] = int(self._labels.next_group)
        mg = f.create_group("models", track_order=True)
        for name, (data, meta, created) in self._models.items():
            g = mg.create_group(name)
            g.create_dataset("data", data=np.frombuffer(data, dtype=np.uint8))
            _write_json(g, "meta", meta)
            g.attrs["created"] = created
        pg = f.create_group("predictions", track_order=True)
        for name, (arrays, meta, created) in self._predictions.items():
            g = pg.create_group(name)
            ag = g.create_group("arrays", track_order=True)
            for k, a in arrays.items():
                ag.create_dataset(k, data=a)
            _write_json(g, "meta", meta)
            g.attrs["created"] = created
        f.create_dataset("provenance", data=[_dumps(e) for e in self._provenance], dtype=_STR)

    def summary(self) -> dict[str, Any]:
        """A JSON-safe overview for display."""
        return {
            "path": str(self.path),
            "dataset": self.dataset.name,
            "source": self.dataset.source,
            "fingerprint": self.dataset.fingerprint,
            "scan_shape": list(self.dataset.scan_shape),
            "classes": self.classes.names,
            "labels": len(self._labels),
            "label_counts": self._labels.counts(),
            "models": self.model_names(),
            "predictions": self.prediction_names(),
            "events": len(self._provenance),
            "created": self.created,
            "modified": self.modified,
        }

    def __repr__(self) -> str:
        return f"Workspace({str(self.path)!r}, dataset={self.dataset.name!r}, labels={len(self._labels)})"


def _preprocess_dict(preprocess: Any) -> dict[str, Any]:
    if preprocess is None:
        return {}
    if hasattr(preprocess, "to_dict"):
        preprocess = preprocess.to_dict()
    if not isinstance(preprocess, Mapping):
        raise ValueError(f"preprocess must be a PreprocessConfig or a dict, found {type(preprocess).__name__}")
    return json.loads(_dumps(dict(preprocess)))


def _str(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _write_json(group: h5py.Group, name: str, obj: Any) -> None:
    # a string dataset, not an attribute: attributes are capped at 64 KiB
    group.create_dataset(name, data=_dumps(obj), dtype=_STR)


def _read_json(ds: h5py.Dataset) -> Any:
    return json.loads(_str(ds[()]))


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); harmless no-op where unsupported."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
