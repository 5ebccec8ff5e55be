"""The lazy 4D-STEM dataset object every part of polmap reads from.

Positions are ``(row, col)`` everywhere: scan arrays are
``(scan_rows, scan_cols, ...)`` and detector arrays ``(det_rows, det_cols)``.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

__all__ = ["Calibration", "Dataset4D", "DatasetError", "GroundTruth"]

DEFAULT_CHUNK_BYTES = 64 * 2**20


class DatasetError(ValueError):
    """Bad input: the message names the file, what was expected and what was found."""


@dataclass
class Calibration:
    """Real- and reciprocal-space calibration of a scan.

    Parameters
    ----------
    real_step : float or None
        Scan step between neighbouring probe positions.
    real_units : str
        Units of ``real_step`` (``"nm"``, ``"A"`` or ``"px"``).
    reciprocal_step : float or None
        Size of one detector pixel.
    reciprocal_units : str
        Units of ``reciprocal_step`` (``"mrad"``, ``"1/A"`` or ``"px"``).
    beam_energy_kev : float or None
        Beam energy.
    convergence_mrad : float or None
        Probe convergence semi-angle.
    """

    real_step: float | None = None
    real_units: str = "px"
    reciprocal_step: float | None = None
    reciprocal_units: str = "px"
    beam_energy_kev: float | None = None
    convergence_mrad: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Calibration":
        """Build from :meth:`to_dict` output, ignoring unknown keys."""
        if not d:
            return cls()
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


@dataclass
class GroundTruth:
    """Known classes of every probe position (simulations, hand-labelled test sets).

    Parameters
    ----------
    label_map : ndarray of int, shape (R, C)
        Class index per position, -1 where unknown.
    class_names : list of str
        Names of the classes indexed by ``label_map``.
    class_colors : list of str or None
        ``"#rrggbb"`` colours, one per class.
    wall_mask : ndarray of bool, shape (R, C), or None
        True at domain-wall positions.
    class_directions : dict or None
        Directions the file declares for its classes (name -> degrees on the
        detector from +column towards +row, or ``"invariant"``); a prior that
        training verifies, never a convention read from the names.
    """

    label_map: np.ndarray
    class_names: list[str]
    class_colors: list[str] | None = None
    wall_mask: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    class_directions: dict[str, Any] | None = None


def _native(dtype: np.dtype) -> np.dtype:
    # .mib and some raw files are big-endian; torch and most kernels want native order.
    return dtype.newbyteorder("=") if dtype.byteorder not in ("=", "|") else dtype


class Dataset4D:
    """A lazily read 4D-STEM scan of shape ``(R, C, Qr, Qc)``.

    Wraps any 4-D array-like that supports numpy basic slicing
    (``h5py.Dataset``, ``np.memmap``, ``ndarray``). Nothing reads the whole
    cube unless :meth:`to_array` is called.

    Parameters
    ----------
    array : array-like, 4-D
        The backing store.
    source : str
        Where the data came from (a path, ``"demo"``, ``"upload:NAME"``).
    name : str
        Short human-readable name.
    calibration : Calibration, optional
    ground_truth : GroundTruth, optional
    metadata : dict, optional
    closer : callable, optional
        Called by :meth:`close` (e.g. to close the HDF5 file).
    dataset_path : str, optional
        Path of the array inside a container file (HDF5).
    """

    def __init__(
        self,
        array: Any,
        *,
        source: str,
        name: str | None = None,
        calibration: Calibration | None = None,
        ground_truth: GroundTruth | None = None,
        metadata: dict[str, Any] | None = None,
        closer: Callable[[], None] | None = None,
        dataset_path: str | None = None,
    ) -> None:
        shape = tuple(int(s) for s in array.shape)
        if len(shape) != 4:
            raise DatasetError(
                f"{source}: expected a 4-D scan (scan_rows, scan_cols, det_rows, det_cols), "
                f"found {len(shape)}-D data of shape {shape}"
            )
        self._array = array
        self.source = str(source)
        self.name = name or self.source
        self.dataset_path = dataset_path
        self.scan_shape: tuple[int, int] = (shape[0], shape[1])
        self.detector_shape: tuple[int, int] = (shape[2], shape[3])
        self.dtype: np.dtype = _native(np.dtype(array.dtype))
        self.calibration = calibration or Calibration()
        self.ground_truth = ground_truth
        self.metadata = dict(metadata or {})
        self._closer = closer
        self._fingerprint: str | None = None

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_array(
        cls,
        array: np.ndarray,
        *,
        name: str = "array",
        calibration: Calibration | None = None,
        ground_truth: GroundTruth | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> "Dataset4D":
        """Wrap an in-memory 4-D array (no copy)."""
        return cls(
            np.asarray(array),
            source=f"array:{name}",
            name=name,
            calibration=calibration,
            ground_truth=ground_truth,
            metadata=metadata,
        )

    # -- properties ---------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``scan_shape + detector_shape``."""
        return self.scan_shape + self.detector_shape

    @property
    def n_patterns(self) -> int:
        """Number of probe positions."""
        return self.scan_shape[0] * self.scan_shape[1]

    @property
    def nbytes(self) -> int:
        """Size of the full cube in bytes."""
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def fingerprint(self) -> str:
        """Content fingerprint for caching and workspace matching.

        Hashes shape, dtype and a fixed sample of patterns (first, last and up to
        14 evenly spaced rows' worth of single patterns), so it is cheap on a
        100 GB file yet changes when the content does.
        """
        if self._fingerprint is None:
            h = hashlib.sha1()
            h.update(repr((self.shape, self.dtype.str)).encode())
            rows, cols = self.scan_shape
            idx = np.linspace(0, self.n_patterns - 1, num=min(16, self.n_patterns)).astype(int)
            for i in np.unique(idx):
                p = self.pattern(int(i // cols), int(i % cols))
                h.update(np.ascontiguousarray(p).tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    # -- access --------------------------------------------------------------------
    def _as_native(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a)
        return a.astype(self.dtype, copy=False) if a.dtype != self.dtype else a

    def _check_position(self, row: int, col: int) -> None:
        if not (0 <= row < self.scan_shape[0] and 0 <= col < self.scan_shape[1]):
            raise IndexError(
                f"{self.name}: position (row={row}, col={col}) is outside the scan of shape {self.scan_shape}"
            )

    def pattern(self, row: int, col: int) -> np.ndarray:
        """One diffraction pattern, shape ``detector_shape``, native byte order."""
        self._check_position(row, col)
        return self._as_native(self._array[row, col])

    def block(self, rows: slice, cols: slice = slice(None)) -> np.ndarray:
        """A rectangular block of patterns, shape ``(r, c, Qr, Qc)``."""
        return self._as_native(self._array[rows, cols])

    def patterns_at(self, positions: np.ndarray) -> np.ndarray:
        """Patterns at arbitrary positions.

        Parameters
        ----------
        positions : array of int, shape (N, 2)
            ``(row, col)`` pairs.

        Returns
        -------
        ndarray, shape (N, Qr, Qc)
        """
        pos = np.asarray(positions, dtype=int).reshape(-1, 2)
        out = np.empty((len(pos),) + self.detector_shape, dtype=self.dtype)
        if isinstance(self._array, np.ndarray):
            for (r, c) in pos:
                self._check_position(int(r), int(c))
            out[:] = self._array[pos[:, 0], pos[:, 1]]
            return out
        # h5py/memmap: read whole rows once (fancy indexing on h5py is slow and order-sensitive).
        for r in np.unique(pos[:, 0]):
            sel = np.nonzero(pos[:, 0] == r)[0]
            cmin, cmax = int(pos[sel, 1].min()), int(pos[sel, 1].max())
            self._check_position(int(r), cmin)
            self._check_position(int(r), cmax)
            strip = self._as_native(self._array[int(r), cmin : cmax + 1])
            out[sel] = strip[pos[sel, 1] - cmin]
        return out

    def chunk_rows(self, max_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
        """Number of scan rows per chunk so that one chunk stays under ``max_bytes``."""
        row_bytes = self.scan_shape[1] * int(np.prod(self.detector_shape)) * self.dtype.itemsize
        return max(1, min(self.scan_shape[0], int(max_bytes // max(row_bytes, 1))))

    def iter_chunks(self, max_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[tuple[slice, np.ndarray]]:
        """Iterate over whole scan rows in chunks.

        Yields
        ------
        rows : slice
            The scan rows of this chunk.
        block : ndarray, shape (r, C, Qr, Qc)
        """
        step = self.chunk_rows(max_bytes)
        for start in range(0, self.scan_shape[0], step):
            rows = slice(start, min(start + step, self.scan_shape[0]))
            yield rows, self.block(rows)

    def to_array(self) -> np.ndarray:
        """Load the whole cube into memory (explicit; can be large)."""
        return self._as_native(self._array[...])

    # -- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        """Release the backing file, if any."""
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __enter__(self) -> "Dataset4D":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def summary(self) -> dict[str, Any]:
        """A JSON-safe description for display and provenance."""
        return {
            "name": self.name,
            "source": self.source,
            "dataset_path": self.dataset_path,
            "scan_shape": list(self.scan_shape),
            "detector_shape": list(self.detector_shape),
            "dtype": self.dtype.name,
            "size_mb": round(self.nbytes / 2**20, 2),
            "calibration": self.calibration.to_dict(),
            "fingerprint": self.fingerprint,
            "has_ground_truth": self.ground_truth is not None,
        }

    def __repr__(self) -> str:
        return (
            f"Dataset4D(name={self.name!r}, scan_shape={self.scan_shape}, "
            f"detector_shape={self.detector_shape}, dtype={self.dtype.name})"
        )
