"""Train on labels the same way everywhere: the dashboard, the command line and the benchmark.

One function per step, each used by all three front ends:

- :func:`scan_sample` preprocesses a random sample of the scan (labelled or
  not): the linear members whiten with it and the symmetry search compares
  with it;
- :func:`find_symmetry` finds which detector operation maps which class onto
  which (:func:`polmap.learn.symmetry.discover_symmetry`), or says it is off;
- :func:`train_on_patterns` runs both and trains (:func:`polmap.learn.train.train_model`);
- :func:`train_on_dataset` first preprocesses the labelled positions.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from polmap.learn.symmetry import SymmetryMap, discover_symmetry

__all__ = ["SCAN_SAMPLE", "find_symmetry", "scan_sample", "train_on_dataset", "train_on_patterns"]

#: Scan patterns sampled for the whitened space and the symmetry search.
SCAN_SAMPLE = 3000


def scan_sample(
    dataset: Any, preprocessor: Any, max_patterns: int = SCAN_SAMPLE, seed: int = 0, *, patterns: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed patterns at random scan positions.

    Parameters
    ----------
    dataset : Dataset4D
    preprocessor : Preprocessor
        Fitted; the model's preprocessing.
    max_patterns : int
        The whole scan when it has fewer positions.
    seed : int
    patterns : ndarray, shape (R * C, H, W), optional
        The whole scan already preprocessed (row-major); sampled instead of read.

    Returns
    -------
    patterns : ndarray, float32, shape (M, H, W)
    positions : ndarray of int, shape (M, 2)
    """
    R, C = dataset.scan_shape
    n = R * C
    rng = np.random.default_rng(seed)
    flat = np.sort(rng.choice(n, min(n, int(max_patterns)), replace=False))
    pos = np.stack(np.divmod(flat, C), axis=1).astype(np.int64)
    if patterns is not None:
        return np.asarray(patterns[flat], dtype=np.float32), pos
    return preprocessor.transform_positions(dataset, pos), pos


def find_symmetry(
    patterns: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    scan: tuple[np.ndarray, np.ndarray],
    *,
    enabled: bool = True,
    directions: Mapping[str, float | str] | None = None,
    seed: int = 0,
) -> SymmetryMap:
    """The symmetry map to train with.

    Parameters
    ----------
    patterns, labels : arrays
        Preprocessed labelled patterns (N, H, W) and their class indices.
    class_names : sequence of str
    scan : (patterns, positions)
        From :func:`scan_sample`.
    enabled : bool
        ``TrainConfig.augment.symmetry``; when False the map is "off".
    directions : dict, optional
        Declared class directions, a prior checked against the data.
    seed : int

    Returns
    -------
    SymmetryMap
    """
    if not enabled:
        return SymmetryMap.off(class_names)
    return discover_symmetry(scan[0], scan[1], patterns, labels, class_names, directions=directions, seed=seed)


def train_on_patterns(
    patterns: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    config: Any,
    scan: tuple[np.ndarray, np.ndarray],
    *,
    directions: Mapping[str, float | str] | None = None,
    **train_kwargs: Any,
) -> Any:
    """Find the symmetry map, then train.

    Parameters
    ----------
    patterns : ndarray, shape (N, H, W)
        Preprocessed labelled patterns.
    labels : ndarray, shape (N,)
        Class indices or names.
    class_names : sequence of str
    config : TrainConfig
    scan : (patterns, positions)
        From :func:`scan_sample`.
    directions : dict, optional
        Declared class directions.
    **train_kwargs
        Passed to :func:`polmap.learn.train.train_model` (``groups``, ``progress``,
        ``cancel``, ``class_colors``, ``preprocess_state``, ``provenance``).

    Returns
    -------
    TrainedModel
    """
    from polmap.learn.train import train_model

    names = list(class_names)
    y = np.asarray(labels)
    if y.dtype.kind in "USO":
        unknown = sorted({str(v) for v in y} - set(names))
        if unknown:
            raise ValueError(f"labels {unknown} are not in class_names {names}")
        y = np.array([names.index(str(v)) for v in y], dtype=np.int64)
    X = np.asarray(patterns, dtype=np.float32)
    X3 = X[:, 0] if X.ndim == 4 else X
    symmetry = find_symmetry(X3, y, names, scan, enabled=bool(config.augment.symmetry), directions=directions,
                             seed=int(config.seed))
    return train_model(X, y, names, config, symmetry=symmetry, scan_patterns=scan[0], **train_kwargs)


def train_on_dataset(
    dataset: Any,
    preprocessor: Any,
    positions: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    config: Any,
    *,
    scan: tuple[np.ndarray, np.ndarray] | None = None,
    directions: Mapping[str, float | str] | None = None,
    **train_kwargs: Any,
) -> Any:
    """Preprocess the labelled positions, then :func:`train_on_patterns`.

    Parameters
    ----------
    dataset : Dataset4D
    preprocessor : Preprocessor
        Fitted; its state is stored with the model.
    positions : ndarray of int, shape (N, 2)
    labels : ndarray, shape (N,)
    class_names : sequence of str
    config : TrainConfig
    scan : (patterns, positions), optional
        From :func:`scan_sample` (made here when not given).
    directions : dict, optional
    **train_kwargs
        As :func:`train_on_patterns`.

    Returns
    -------
    TrainedModel
    """
    X = preprocessor.transform_positions(dataset, np.asarray(positions, dtype=np.int64).reshape(-1, 2))
    if scan is None:
        scan = scan_sample(dataset, preprocessor, seed=int(config.seed))
    train_kwargs.setdefault("preprocess_state", preprocessor.state_dict())
    return train_on_patterns(X, labels, class_names, config, scan, directions=directions, **train_kwargs)
