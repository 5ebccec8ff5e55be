"""Pieces every reader shares: sources, candidates, units, shape checks, lazy reshaping."""

from __future__ import annotations

import io as _stdio
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from polmap.io.dataset import Calibration, DatasetError, GroundTruth

# Extension -> reader kind. ".hdr" is the Merlin sidecar: opening it opens its .mib.
EXTENSIONS: dict[str, str] = {
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".hdf": "hdf5",
    ".he5": "hdf5",
    ".emd": "hdf5",
    ".py4dstem": "hdf5",
    ".npy": "npy",
    ".npz": "npz",
    ".mib": "mib",
    ".hdr": "mib",
    ".raw": "empad",
    ".blo": "blo",
    ".dm3": "dm",
    ".dm4": "dm",
    ".zip": "zip",
}

SUPPORTED_DESCRIPTION = (
    "HDF5 (.h5, .hdf5, .hdf, .emd, .py4dstem: plain, py4DSTEM/EMD 1.0 or polmap simulation), "
    "NumPy (.npy, .npz), Quantum Detectors Merlin (.mib with its .hdr), EMPAD (.raw), "
    "NanoMegas block file (.blo), Gatan DigitalMicrograph (.dm3, .dm4), "
    "and .zip archives holding any of these"
)

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class Candidate:
    """One array inside a container file that could be the 4D-STEM scan.

    Attributes
    ----------
    path : str
        Where it lives inside the container (HDF5 path, .npz key or .zip member).
    shape : tuple of int
    dtype : str
        The dtype as numpy prints it (``"uint16"``, ``">u2"`` for big-endian).
    """

    path: str
    shape: tuple[int, ...]
    dtype: str

    def describe(self) -> str:
        """``"/path (shape) dtype"`` for messages and listings."""
        return f"{self.path} {self.shape} {self.dtype}"


def describe_candidates(cands: list[Candidate], limit: int = 12) -> str:
    """A comma-separated listing, shortened after ``limit`` items."""
    items = [c.describe() for c in cands[:limit]]
    if len(cands) > limit:
        items.append(f"... and {len(cands) - limit} more")
    return ", ".join(items) if items else "none"


@dataclass
class Opened:
    """What a format reader hands back before shape checks and wrapping."""

    array: Any
    calibration: Calibration = field(default_factory=Calibration)
    metadata: dict[str, Any] = field(default_factory=dict)
    closers: list[Callable[[], None]] = field(default_factory=list)
    dataset_path: str | None = None
    ground_truth: GroundTruth | None = None

    def close(self) -> None:
        """Run the closers, newest first (inner readers before temp-dir removal)."""
        while self.closers:
            try:
                self.closers.pop()()
            except Exception:  # noqa: BLE001 - closing must never mask the real error
                pass


@dataclass
class Source:
    """A file on disk or an in-memory upload, readable the same way.

    ``label`` is how every message names it.
    """

    label: str
    path: Path | None = None
    buffer: memoryview | None = None

    @property
    def name(self) -> str:
        """File name (no directory)."""
        return self.path.name if self.path is not None else self.label.split(":", 1)[-1]

    def size(self) -> int:
        """Size in bytes."""
        return self.path.stat().st_size if self.path is not None else len(self.buffer)

    def head(self, n: int, offset: int = 0) -> bytes:
        """Up to ``n`` bytes from ``offset``."""
        if self.path is not None:
            with open(self.path, "rb") as fh:
                fh.seek(offset)
                return fh.read(n)
        return bytes(self.buffer[offset : offset + n])

    def fileobj(self) -> Any:
        """A binary file object (an in-memory view for uploads)."""
        if self.path is not None:
            return open(self.path, "rb")
        return _stdio.BytesIO(self.buffer)

    def map(self, dtype: np.dtype, shape: tuple[int, ...], offset: int) -> np.ndarray:
        """A read-only view of ``shape`` items of ``dtype`` at ``offset``, without reading them.

        A ``np.memmap`` for files, ``np.frombuffer`` (zero-copy) for uploads. The caller
        has already checked that the bytes are there.
        """
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        if count == 0:
            return np.empty(tuple(shape), dtype)  # mmap cannot map zero bytes; the shape check reports it
        if self.path is not None:
            return np.memmap(self.path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape))
        return np.frombuffer(self.buffer, dtype=dtype, count=count, offset=offset).reshape(shape)


def make_tempdir(prefix: str = "polmap-") -> Path:
    """A fresh private temp dir (uploads and extracted archives live there until close)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def remover(path: Path) -> Callable[[], None]:
    """A closer that deletes a temp dir."""
    return lambda: shutil.rmtree(path, ignore_errors=True)


def sniff(head: bytes) -> str | None:
    """Guess the reader kind from a file's first bytes (None when unknown)."""
    if head.startswith(HDF5_SIGNATURE):
        return "hdf5"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"MQ1,"):
        return "mib"
    if head.startswith(b"IMGBLO"):
        return "blo"
    if len(head) >= 4 and head[:4] in (b"\x00\x00\x00\x03", b"\x00\x00\x00\x04"):
        return "dm"
    return None


def show_bytes(head: bytes, n: int = 16) -> str:
    """Printable rendering of the first bytes of a file for error messages."""
    return repr(head[:n]) if head else "an empty file"


# -- units ------------------------------------------------------------------------------------------
_REAL_UNITS = {
    "nm": ("nm", 1.0),
    "a": ("A", 1.0),
    "å": ("A", 1.0),
    "angstrom": ("A", 1.0),
    "um": ("nm", 1e3),
    "µm": ("nm", 1e3),
    "μm": ("nm", 1e3),
    "pm": ("A", 1e-2),
    "m": ("nm", 1e9),
}
_RECIPROCAL_UNITS = {
    "mrad": ("mrad", 1.0),
    "rad": ("mrad", 1e3),
    "urad": ("mrad", 1e-3),
    "µrad": ("mrad", 1e-3),
    "a^-1": ("1/A", 1.0),
    "1/a": ("1/A", 1.0),
    "å^-1": ("1/A", 1.0),
    "1/å": ("1/A", 1.0),
    "nm^-1": ("1/A", 0.1),
    "1/nm": ("1/A", 0.1),
}
_PIXEL_UNITS = {"", "px", "pixel", "pixels", "none", "<undefined>"}


def _norm(step: Any, units: Any, table: dict[str, tuple[str, float]]) -> tuple[float | None, str, str | None]:
    """(step, unit, note): converts known units; unknown ones fall back to pixels with a note."""
    u = (units.decode() if isinstance(units, bytes) else str(units or "")).strip()
    try:
        s = float(step) if step is not None else None
    except (TypeError, ValueError):
        s = None
    if s is not None and (not math.isfinite(s) or s <= 0):
        s = None
    key = u.lower()
    if key in _PIXEL_UNITS or s is None:
        return None, "px", None
    if key in table:
        unit, factor = table[key]
        return s * factor, unit, None
    return None, "px", f"{s} {u}"


def make_calibration(
    r_step: Any = None,
    r_units: Any = "",
    q_step: Any = None,
    q_units: Any = "",
    beam_energy_kev: Any = None,
    convergence_mrad: Any = None,
    metadata: dict[str, Any] | None = None,
) -> Calibration:
    """Build a :class:`Calibration` from whatever units a file uses.

    Converts to polmap's units (nm / A / px; mrad / 1/A / px). Units polmap
    does not know leave the axis in pixels and record the original value in
    ``metadata["uncalibrated"]`` so nothing is silently misread.
    """
    rs, ru, rnote = _norm(r_step, r_units, _REAL_UNITS)
    qs, qu, qnote = _norm(q_step, q_units, _RECIPROCAL_UNITS)
    if metadata is not None:
        notes = {k: v for k, v in (("real", rnote), ("reciprocal", qnote)) if v}
        if notes:
            metadata.setdefault("uncalibrated", {}).update(notes)

    def _pos(x: Any) -> float | None:
        try:
            v = float(x)
        except (TypeError, ValueError):
            return None
        return v if math.isfinite(v) and v > 0 else None

    return Calibration(
        real_step=rs,
        real_units=ru,
        reciprocal_step=qs,
        reciprocal_units=qu,
        beam_energy_kev=_pos(beam_energy_kev),
        convergence_mrad=_pos(convergence_mrad),
    )


# -- shapes -----------------------------------------------------------------------------------------
def factor_pairs(n: int, limit: int = 4) -> list[tuple[int, int]]:
    """Scan shapes (rows, cols) with rows*cols == n, the squarest first."""
    pairs = [(r, n // r) for r in range(1, int(math.isqrt(n)) + 1) if n % r == 0]
    pairs = sorted({p for r, c in pairs for p in ((r, c), (c, r)) if min(p) > 1}, key=lambda p: abs(p[0] - p[1]))
    return pairs[:limit]


def stack_hint(n: int) -> str:
    """Suggestion for a 3-D stack of ``n`` patterns."""
    pairs = factor_pairs(n)
    if not pairs:
        return f"pass scan_shape=(rows, cols) with rows*cols == {n}"
    opts = " or ".join(str(p) for p in pairs)
    return f"pass scan_shape=(rows, cols) with rows*cols == {n}, e.g. {opts}"


class NavReshaped:
    """Read-only view of an array-like with its scan axes reshaped to ``scan_shape``.

    For backing stores that cannot reshape without reading (``h5py.Dataset``):
    a ``(N, Qr, Qc)`` stack (or a differently shaped 4-D cube) is presented as
    ``(R, C, Qr, Qc)``, translating each basic-slicing request into reads of
    the original. Whole scan rows map to one contiguous read.
    """

    def __init__(self, base: Any, scan_shape: tuple[int, int]) -> None:
        self._base = base
        self._nav = tuple(int(s) for s in base.shape[:-2])
        self._det = tuple(int(s) for s in base.shape[-2:])
        self.shape = tuple(scan_shape) + self._det
        self.dtype = base.dtype
        self.ndim = 4

    def _read_flat(self, start: int, stop: int, step: int, det_key: tuple) -> np.ndarray:
        if len(self._nav) == 1:
            return np.asarray(self._base[(slice(start, stop, step),) + det_key])
        idx = range(start, stop, step)
        return np.stack([np.asarray(self._base[np.unravel_index(i, self._nav) + det_key]) for i in idx])

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (4 - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (4 - len(key))
        R, C = self.shape[:2]
        rk, ck, det_key = key[0], key[1], tuple(key[2:])
        rows = range(*rk.indices(R)) if isinstance(rk, slice) else [self._index(rk, R)]
        cols = range(*ck.indices(C)) if isinstance(ck, slice) else [self._index(ck, C)]
        parts = []
        for r in rows:
            if len(cols) == 0:
                continue
            step = cols.step if isinstance(cols, range) else 1
            lo, hi = min(cols[0], cols[-1]), max(cols[0], cols[-1])
            part = self._read_flat(r * C + lo, r * C + hi + 1, abs(step), det_key)
            parts.append(part[::-1] if step < 0 else part)
        sample = np.empty((0,) + self._det, self.dtype)[(slice(None),) + det_key]
        out = np.stack(parts) if parts else np.empty((len(rows), len(cols)) + sample.shape[1:], self.dtype)
        out = out.reshape((len(rows), len(cols)) + out.shape[2:])
        if not isinstance(ck, slice):
            out = out[:, 0]
        if not isinstance(rk, slice):
            out = out[0]
        return out

    @staticmethod
    def _index(i: Any, n: int) -> int:
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} is out of range for a scan axis of length {n}")
        return i


def reshape_scan(array: Any, scan_shape: tuple[int, int], label: str) -> Any:
    """Give ``array`` (``(N, Qr, Qc)`` or ``(R', C', Qr, Qc)``) the scan shape ``scan_shape``.

    Never copies: numpy arrays and memmaps are reshaped as views, anything
    else is wrapped in :class:`NavReshaped`.
    """
    try:
        R, C = (int(s) for s in scan_shape)
    except (TypeError, ValueError):
        raise DatasetError(f"{label}: scan_shape must be two integers (rows, cols); found {scan_shape!r}") from None
    if R < 1 or C < 1:
        raise DatasetError(f"{label}: scan_shape must be positive; found {(R, C)}")
    shape = tuple(int(s) for s in array.shape)
    if len(shape) not in (3, 4):
        raise DatasetError(
            f"{label}: scan_shape applies to a 3-D stack (N, det_rows, det_cols) or a 4-D scan; "
            f"found {len(shape)}-D data of shape {shape}"
        )
    n = int(np.prod(shape[:-2]))
    if R * C != n:
        raise DatasetError(
            f"{label}: scan_shape {(R, C)} needs {R * C} patterns; found {n} patterns (data shape {shape}); "
            + stack_hint(n)
        )
    if shape[:-2] == (R, C):
        return array
    if isinstance(array, np.ndarray):
        view = array.view()
        try:
            view.shape = (R, C) + shape[-2:]  # raises instead of silently copying
            return view
        except AttributeError:
            pass
    return NavReshaped(array, (R, C))


_NUMERIC_KINDS = {"u": "unsigned integer", "i": "integer", "f": "floating point"}


def check_array(array: Any, label: str) -> None:
    """Reject shapes and types no analysis can use, saying what was expected and found."""
    shape = tuple(int(s) for s in array.shape)
    dtype = np.dtype(array.dtype)
    if len(shape) != 4:
        msg = (
            f"{label}: expected a 4-D scan (scan_rows, scan_cols, det_rows, det_cols); "
            f"found {len(shape)}-D data of shape {shape}"
        )
        if len(shape) == 3 and shape[0] > 0:
            msg += f". It looks like a stack of {shape[0]} patterns of {shape[1]} x {shape[2]}: " + stack_hint(shape[0])
        raise DatasetError(msg)
    if dtype.kind == "c":
        raise DatasetError(
            f"{label}: expected real-valued counts or intensities; found complex data ({dtype.name}). "
            "Store abs() or the real part instead"
        )
    if dtype.kind not in _NUMERIC_KINDS:
        what = {"b": "boolean", "O": "Python objects or variable-length strings", "S": "byte strings", "U": "text strings", "V": "structured records",
                "M": "dates", "m": "time deltas"}.get(dtype.kind, dtype.kind)
        raise DatasetError(
            f"{label}: expected numeric detector counts (unsigned/signed integer or float); "
            f"found {what} (dtype {dtype})"
        )
    if 0 in shape:
        raise DatasetError(f"{label}: expected a non-empty scan; found an empty array of shape {shape}")
    if shape[0] * shape[1] < 2:
        raise DatasetError(
            f"{label}: expected a scan of at least 2 probe positions; found a single position (scan shape 1 x 1, "
            f"data shape {shape})"
        )
    if shape[2] < 2 or shape[3] < 2:
        raise DatasetError(
            f"{label}: expected 2-D diffraction patterns of at least 2 x 2 pixels; "
            f"found {shape[2]} x {shape[3]} (data shape {shape})"
        )


def sample_positions(scan_shape: tuple[int, int], n: int = 16) -> list[tuple[int, int]]:
    """Evenly spaced probe positions (first and last included), the same ones the fingerprint reads."""
    rows, cols = scan_shape
    total = rows * cols
    idx = np.unique(np.linspace(0, total - 1, num=min(n, total)).astype(int))
    return [(int(i // cols), int(i % cols)) for i in idx]

