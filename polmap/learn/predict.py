"""Whole-scan inference: probabilities and uncertainty for every probe position.

:func:`predict_scan` is a per-chunk kernel in the LiberTEM sense: it walks the
scan with ``Preprocessor.iter_transformed`` (one chunk of whole scan rows at a
time, so memory stays bounded on a lazily read 100 GB file), runs the
ensemble on each chunk and writes into preallocated ``(R, C, ...)`` maps. It
knows nothing of files or the GUI.

Uncertainty maps
----------------
``entropy``
    Entropy of the ensemble probabilities divided by ``log K`` (0 = certain,
    1 = uniform).
``margin``
    Top-1 minus top-2 probability (small = ambiguous, e.g. at domain walls).
``disagreement``
    Mutual information between prediction and ensemble member
    (entropy of the mean minus mean entropy of the members, divided by
    ``log K``): the part of the uncertainty that comes from too few labels
    rather than from an ambiguous pattern. Zero for a single member.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from polmap.io.dataset import DEFAULT_CHUNK_BYTES, Dataset4D
from polmap.learn.train import TRACE_MIN_PATTERNS, CancelLike, TrainedModel, is_cancelled
from polmap.analysis.uncertainty import disagreement, margin, normalised_entropy

__all__ = [
    "IncompatibleModelError",
    "Prediction",
    "PredictionCancelled",
    "check_compatible",
    "predict_arrays",
    "predict_scan",
    "uncertainty_maps",
]


class IncompatibleModelError(ValueError):
    """The model was trained for another detector, preprocessing or class set."""


class PredictionCancelled(RuntimeError):
    """Prediction was stopped by ``cancel``.

    Attributes
    ----------
    partial : Prediction
        Maps filled for the rows done (``rows_done``); the rest is NaN / -1.
    """

    def __init__(self, message: str, partial: "Prediction") -> None:
        super().__init__(message)
        self.partial = partial


@dataclass
class Prediction:
    """Per-position predictions of a scan.

    Attributes
    ----------
    probabilities : ndarray, float32, shape (R, C, K)
        Ensemble-mean class probabilities.
    label_map : ndarray, int16, shape (R, C)
        Most probable class (-1 where not predicted).
    entropy : ndarray, float32, shape (R, C)
        Normalised entropy in [0, 1].
    margin : ndarray, float32, shape (R, C)
        Top-1 minus top-2 probability.
    disagreement : ndarray, float32, shape (R, C)
        Normalised ensemble mutual information (0 for one member).
    class_names : list of str
    class_colors : list of str or None
    timing : dict
        ``seconds``, ``preprocess_seconds``, ``inference_seconds``,
        ``patterns_per_second``, ``n_patterns``, ``n_members``.
    rows_done : int
        Scan rows predicted (all of them unless cancelled).
    """

    probabilities: np.ndarray
    label_map: np.ndarray
    entropy: np.ndarray
    margin: np.ndarray
    disagreement: np.ndarray
    class_names: list[str]
    class_colors: list[str] | None = None
    timing: dict[str, Any] = field(default_factory=dict)
    rows_done: int = 0

    @property
    def scan_shape(self) -> tuple[int, int]:
        """``(R, C)``."""
        return tuple(self.label_map.shape)  # type: ignore[return-value]

    @property
    def uncertainty(self) -> np.ndarray:
        """``1 - margin``: one map to paint where labels would help most."""
        return (1.0 - self.margin).astype(np.float32)

    def class_fractions(self) -> dict[str, float]:
        """Fraction of predicted positions in each class."""
        lm = self.label_map[self.label_map >= 0]
        n = max(len(lm), 1)
        return {name: float((lm == k).sum() / n) for k, name in enumerate(self.class_names)}

    def arrays(self) -> dict[str, np.ndarray]:
        """The maps by name (for saving in a workspace)."""
        return {
            "probabilities": self.probabilities,
            "label_map": self.label_map,
            "entropy": self.entropy,
            "margin": self.margin,
            "disagreement": self.disagreement,
        }


def uncertainty_maps(members: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ensemble mean and uncertainty measures from member probabilities.

    Parameters
    ----------
    members : ndarray, shape (M, N, K)

    Returns
    -------
    proba : (N, K) float32
        Mean over members.
    entropy : (N,) float32
        Entropy of ``proba`` / log K.
    margin : (N,) float32
        Top-1 minus top-2 of ``proba``.
    disagreement : (N,) float32
        (entropy of the mean - mean member entropy) / log K, >= 0.
    """
    members = np.asarray(members, dtype=np.float32)
    proba = members.mean(axis=0)
    f = np.float32
    return (proba.astype(f), normalised_entropy(proba).astype(f), margin(proba).astype(f),
            disagreement(members).astype(f))


def check_compatible(
    model: TrainedModel,
    dataset: Dataset4D | None = None,
    preprocessor: Any = None,
    class_names: Sequence[str] | None = None,
) -> None:
    """Refuse to apply a model where it does not belong.

    Parameters
    ----------
    model : TrainedModel
    dataset : Dataset4D, optional
        Its detector shape must be the one the model's preprocessing was
        fitted on (a new scan of the same detector is fine: that is how a model
        is applied to the next time slice).
    preprocessor : Preprocessor, optional
        Its configuration must equal the model's, and its output size the
        model's input size.
    class_names : sequence of str, optional
        The class set the caller works with; must equal the model's.

    Raises
    ------
    IncompatibleModelError
        With a message that says what differs and what to do.
    """
    state = model.preprocess_state or {}
    if class_names is not None and list(class_names) != list(model.class_names):
        raise IncompatibleModelError(
            f"the model predicts classes {model.class_names} but the current class set is {list(class_names)}; "
            "retrain the model with the current classes"
        )
    if dataset is not None and state.get("detector_shape") is not None:
        if tuple(state["detector_shape"]) != tuple(dataset.detector_shape):
            raise IncompatibleModelError(
                f"the model was trained on a {tuple(state['detector_shape'])} detector; "
                f"{dataset.name} has {tuple(dataset.detector_shape)}. Bin/crop the data the same way or retrain"
            )
    if preprocessor is not None:
        if hasattr(preprocessor, "state_dict") and getattr(preprocessor, "is_fitted", True):
            p_cfg = preprocessor.state_dict().get("config", {})
        else:
            p_cfg = preprocessor.config.to_dict()
        m_cfg = state.get("config")
        if m_cfg is not None:
            diff = sorted(k for k in set(m_cfg) | set(p_cfg) if m_cfg.get(k) != p_cfg.get(k))
            if diff:
                detail = ", ".join(f"{k}: model {m_cfg.get(k)!r} vs now {p_cfg.get(k)!r}" for k in diff)
                raise IncompatibleModelError(
                    f"the model was trained with other preprocessing ({detail}); "
                    "use the model's preprocessing (Preprocessor.from_state_dict(model.preprocess_state)) or retrain"
                )
        out = p_cfg.get("output_size")
        if out is not None and int(out) != model.input_size:
            raise IncompatibleModelError(
                f"the preprocessing makes {out} px patterns but the model takes {model.input_size} px"
            )


def predict_arrays(model: TrainedModel, X: Any, batch_size: int = 1024, traced: bool | None = None) -> dict[str, np.ndarray]:
    """Predict preprocessed patterns held in memory.

    Parameters
    ----------
    model : TrainedModel
    X : array, shape (N, H, W) or (N, 1, H, W)
    batch_size : int
    traced : bool, optional
        See :meth:`TrainedModel.member_probabilities`.

    Returns
    -------
    dict
        ``probabilities`` (N, K), ``labels`` (N,) int16, ``entropy``,
        ``margin``, ``disagreement`` (N,) float32.
    """
    members = model.member_probabilities(X, batch_size, traced=traced)
    proba, ent, margin, dis = uncertainty_maps(members)
    return {
        "probabilities": proba,
        "labels": proba.argmax(1).astype(np.int16),
        "entropy": ent,
        "margin": margin,
        "disagreement": dis,
    }


class _Prefetch:
    """Iterate ``it`` in a worker thread, at most ``slots`` items alive (being made, queued or in use).

    While the network classifies one chunk, the next is read and preprocessed:
    both mostly run outside the GIL (file reads, numpy/scipy, torch), so the
    two stages overlap instead of taking turns.
    """

    def __init__(self, it: Iterator[Any], slots: int = 2) -> None:
        self._q: queue.Queue = queue.Queue()
        self._slots = threading.Semaphore(slots)
        self._stop = threading.Event()
        self._holding = False
        self._t = threading.Thread(target=self._run, args=(it,), daemon=True, name="polmap-prefetch")
        self._t.start()

    def _run(self, it: Iterator[Any]) -> None:
        try:
            while True:
                while not self._slots.acquire(timeout=0.05):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    return
                try:
                    item = next(it)
                except StopIteration:
                    self._q.put(("end", None))
                    return
                self._q.put(("item", item))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread, raised there
            self._q.put(("error", exc))

    def __iter__(self) -> "_Prefetch":
        return self

    def __next__(self) -> Any:
        if self._holding:  # the caller is done with the previous item
            self._slots.release()
            self._holding = False
        kind, value = self._q.get()
        if kind == "error":
            raise value
        if kind == "end":
            raise StopIteration
        self._holding = True
        return value

    def close(self) -> None:
        self._stop.set()
        self._t.join(timeout=30)


def predict_scan(
    model: TrainedModel,
    dataset: Dataset4D,
    preprocessor: Any,
    *,
    max_bytes: int = DEFAULT_CHUNK_BYTES,
    batch_size: int = 1024,
    progress: Callable[[dict[str, Any]], None] | None = None,
    cancel: CancelLike = None,
) -> Prediction:
    """Classify every probe position of a scan, chunk by chunk.

    Parameters
    ----------
    model : TrainedModel
    dataset : Dataset4D
        May be lazy (HDF5, memmap): only one chunk is in memory at a time.
    preprocessor : Preprocessor
        Fitted, with the model's preprocessing configuration.
    max_bytes : int
        Raw bytes per chunk read from the dataset; at most two chunks are in
        memory (the next one is prepared while this one is classified).
    batch_size : int
        Patterns per network call.
    progress : callable, optional
        ``progress(dict(rows_done, rows_total, patterns_done, elapsed_s))`` after
        every chunk.
    cancel : callable or threading.Event, optional
        Checked between chunks; raises :class:`PredictionCancelled` holding the
        partial maps.

    Returns
    -------
    Prediction

    Raises
    ------
    IncompatibleModelError
        See :func:`check_compatible`.
    PredictionCancelled
    """
    check_compatible(model, dataset, preprocessor)
    R, C = dataset.scan_shape
    K = len(model.class_names)
    pred = Prediction(
        probabilities=np.full((R, C, K), np.nan, dtype=np.float32),
        label_map=np.full((R, C), -1, dtype=np.int16),
        entropy=np.full((R, C), np.nan, dtype=np.float32),
        margin=np.full((R, C), np.nan, dtype=np.float32),
        disagreement=np.full((R, C), np.nan, dtype=np.float32),
        class_names=list(model.class_names),
        class_colors=None if model.class_colors is None else list(model.class_colors),
    )
    t0 = time.perf_counter()
    it = _Prefetch(preprocessor.iter_transformed(dataset, max_bytes))
    try:
        _classify_chunks(it, model, pred, batch_size, progress, cancel, t0)
    finally:
        it.close()
    return pred


def _classify_chunks(
    it: _Prefetch,
    model: TrainedModel,
    pred: Prediction,
    batch_size: int,
    progress: Callable[[dict[str, Any]], None] | None,
    cancel: CancelLike,
    t0: float,
) -> None:
    R, C, K = pred.probabilities.shape
    # Trace for the whole job, not per chunk: chunks are smaller than the threshold.
    traced = R * C >= TRACE_MIN_PATTERNS
    t_net = 0.0
    done = 0
    while True:
        if is_cancelled(cancel):
            pred.rows_done = done
            pred.timing = _timing(t0, t_net, done * C, model)
            raise PredictionCancelled(f"prediction cancelled after {done} of {R} scan rows", pred)
        try:
            rows, X = next(it)
        except StopIteration:
            break
        t1 = time.perf_counter()
        out = predict_arrays(model, X, batch_size, traced=traced)
        t_net += time.perf_counter() - t1
        r = rows.stop - rows.start
        pred.probabilities[rows] = out["probabilities"].reshape(r, C, K)
        pred.label_map[rows] = out["labels"].reshape(r, C)
        pred.entropy[rows] = out["entropy"].reshape(r, C)
        pred.margin[rows] = out["margin"].reshape(r, C)
        pred.disagreement[rows] = out["disagreement"].reshape(r, C)
        done = rows.stop
        if progress is not None:
            progress(
                {"rows_done": done, "rows_total": R, "patterns_done": done * C, "elapsed_s": time.perf_counter() - t0}
            )
    pred.rows_done = done
    pred.timing = _timing(t0, t_net, done * C, model)


def _timing(t0: float, t_net: float, n: int, model: TrainedModel) -> dict[str, Any]:
    total = time.perf_counter() - t0
    return {
        "seconds": round(total, 4),
        "inference_seconds": round(t_net, 4),
        "preprocess_seconds": round(total - t_net, 4),
        "patterns_per_second": round(n / total, 1) if total > 0 else None,
        "n_patterns": int(n),
        "n_members": model.n_members,
    }
