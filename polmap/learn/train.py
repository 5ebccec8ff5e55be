"""Training: a cross-validation ensemble with honest accuracy, and safe checkpoints.

:func:`train_model` trains ``n_members`` networks on the labelled patterns.
Member ``k`` never sees the labels of fold ``k`` (folds are stratified by
class), so its predictions on fold ``k`` are out-of-fold: together they give an
honest accuracy for every label (the paper's code validated on training data).
Validation labels do not even choose a member's stopping epoch: early stopping
watches the training loss. The mean of the members' probabilities is the
predictor, and their spread is an uncertainty.

With too few labels for that (fewer than ``min_labels_for_validation``, or
fewer than two classes with two labels) every member trains on all labels with
its own seed, and the report says that no validation was possible and why. The
label of a class that has a single label trains every member and is not
validated (the report warns).

Each member is trained on augmented batches (see :mod:`polmap.learn.augment`) with
soft targets (wall mixing), AdamW and a one-cycle schedule; its batch-norm
statistics are then re-estimated on its clean training patterns.

Checkpoints hold only tensors and JSON text and are read with
``torch.load(weights_only=True)``: a file that carries code is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import pickle
import platform
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from polmap.learn.augment import AugmentConfig, Augmenter
from polmap.process.detector_symmetry import SYMMETRY_OPS
from polmap.learn.model import (
    MODELS,
    SeededDropout,
    build_model,
    count_parameters,
    member_variants,
    optimize_for_inference,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "TRACE_MIN_PATTERNS",
    "CheckpointError",
    "TrainConfig",
    "TrainedModel",
    "TrainingCancelled",
    "assess",
    "gate_members",
    "is_cancelled",
    "make_folds",
    "resolve_device",
    "train_model",
]

CHECKPOINT_FORMAT = "polmap-model"
CHECKPOINT_VERSION = 1
_MAX_BATCH_PIXELS = 2**22  # per network call: 1024 patterns of 48 px, 64 of 256 px
TRACE_MIN_PATTERNS = 4096  # trace the members (TorchScript) for calls at least this large

CancelLike = Union[Callable[[], bool], threading.Event, None]


class CheckpointError(ValueError):
    """A checkpoint that is unsafe, corrupt or inconsistent."""


class TrainingCancelled(RuntimeError):
    """Training was stopped by ``cancel``.

    Attributes
    ----------
    partial : TrainedModel or None
        The members finished before the cancel (None if none finished).
    """

    def __init__(self, message: str, partial: "TrainedModel | None" = None) -> None:
        super().__init__(message)
        self.partial = partial


@dataclass
class TrainConfig:
    """Settings of :func:`train_model`.

    Parameters
    ----------
    model : str
        Architecture, a key of :data:`polmap.learn.model.MODELS`. The default,
        ``"auto"``, trains compact networks and linear discriminants on the
        same folds and keeps the kind with the better out-of-fold accuracy
        (both, averaged, when they are within 2 points): on the external
        multislice scans the linear members reached 98 % out-of-fold where
        the networks reached 60 % (bubbles, 50 labels); on polmap's demo the
        networks win.
    input_size : int or None
        Expected pattern side; None takes it from the data (an explicit value
        that the data do not match is an error).
    model_options : dict
        Architecture options for :func:`polmap.learn.model.build_model`, shared by all members.
    member_variants : list of dict or None
        Options cycled over the members on top of ``model_options`` (member
        ``m`` gets ``member_variants[m % len]``); None: the model's default
        (:func:`polmap.learn.model.member_variants`), ``[{}]``: all members alike.
    epochs : int
        Most epochs per member.
    samples_per_epoch : int
        Patterns drawn per epoch (class-balanced, with replacement, augmented);
        at least the number of training labels.
    batch_size : int
    lr : float
        Peak learning rate of the one-cycle schedule (AdamW). Defaults chosen
        by measurement on simulated scans (several presets and label sets):
        lr 1e-2 and 1 px shifts beat 3e-3 and 0.5 px (98.6 vs 97.3 % with 50
        labels on ``demo``); 30 epochs beat 20, and 60 beat 30 once label
        sets hold wall pixels, whose mixed patterns take longer to fit
        (adaptive, 50 labels, whole scan: bubbles 96.4 -> 98.7 %, hard
        98.2 -> 98.9 %, demo 99.6 -> 99.6 %; training 4 -> 7.5 s on 2 cores).
    weight_decay : float
    augment : AugmentConfig
    seed : int
        Same seed, same data -> identical weights on CPU.
    n_members : int
        Ensemble size; also the number of cross-validation folds.
    patience : int
        Stop a member after this many epochs without a 2 % drop of its
        smoothed training loss (0: never stop early); never while that loss is
        above 0.75 log(classes), i.e. before the member has learnt anything.
    min_labels_for_validation : int
        Below this many labels no fold is held out.
    class_balance : bool
        Draw classes equally often (otherwise in proportion to their labels).
    label_smoothing : float
    device : str
        ``"auto"`` (cuda > mps > cpu), ``"cpu"``, ``"cuda"``, ``"mps"``.
    workers : int or None
        Members trained side by side (threads); None: as many as torch's
        intra-op threads (``torch.get_num_threads()``) on the CPU, 1 on a GPU.
    member_gate : float or None
        Leave out of the ensemble a member whose accuracy on its own training
        labels (clean patterns, after training) is more than this below the
        best member's; None keeps every member. A member that could not fit
        the labels it was trained on has failed, and its vote only blurs the
        others (measured on wall-heavy demo label sets: single members at
        44-67 % of the scan beside members at 97-99 %).
    """

    model: str = "auto"
    input_size: int | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    member_variants: list[dict[str, Any]] | None = None
    epochs: int = 60
    samples_per_epoch: int = 128
    batch_size: int = 32
    lr: float = 1e-2
    weight_decay: float = 1e-3
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    n_members: int = 4
    patience: int = 8
    min_labels_for_validation: int = 10
    class_balance: bool = True
    label_smoothing: float = 0.05
    device: str = "auto"
    workers: int | None = None
    member_gate: float | None = 0.15

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        d = asdict(self)
        d["augment"] = self.augment.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        d = {k: v for k, v in dict(d).items() if k in cls.__dataclass_fields__}
        if "augment" in d and not isinstance(d["augment"], AugmentConfig):
            d["augment"] = AugmentConfig.from_dict(d["augment"])
        return cls(**d)


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def resolve_device(device: str = "auto") -> torch.device:
    """Pick the training device.

    Parameters
    ----------
    device : str
        ``"auto"`` prefers cuda, then Apple mps, then cpu.

    Returns
    -------
    torch.device
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'mps'")
    return torch.device(device)


def is_cancelled(cancel: CancelLike) -> bool:
    """Whether a cancel signal is set.

    Parameters
    ----------
    cancel : threading.Event, object with ``is_set()``, callable returning bool, or None

    Returns
    -------
    bool
    """
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event) or hasattr(cancel, "is_set"):
        return bool(cancel.is_set())  # type: ignore[union-attr]
    return bool(cancel())


def make_folds(y: np.ndarray, n_folds: int, seed: int = 0, groups: np.ndarray | None = None) -> np.ndarray:
    """Stratified fold assignment that never splits a group.

    Parameters
    ----------
    y : ndarray of int, shape (N,)
    n_folds : int
    seed : int
    groups : ndarray of int, shape (N,), optional
        Labels sharing a group id (one painted region) go to the same fold:
        neighbouring positions of one region are near-duplicates, and one of
        them in the validation fold while its neighbours train would make the
        validation accuracy optimistic. Default: every label its own group.

    Returns
    -------
    ndarray of int, shape (N,)
        Fold of every label. Within each class the groups are shuffled, then
        dealt largest first, each to the fold holding the fewest labels of that
        class (ties: fewest labels overall, then round-robin), so single-label
        groups are dealt round-robin and each class is spread over the folds.
    """
    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    g = np.arange(len(y)) if groups is None else np.asarray(groups)
    if g.shape != y.shape:
        raise ValueError(f"groups must have the shape of y {y.shape}, found {g.shape}")
    folds = np.empty(len(y), dtype=np.int64)
    total = np.zeros(n_folds, dtype=np.int64)
    turn = 0
    for cls in np.unique(y):
        members = np.nonzero(y == cls)[0]
        ids, inverse = np.unique(g[members], return_inverse=True)
        order = rng.permutation(len(ids))
        sizes = np.bincount(inverse, minlength=len(ids))
        order = order[np.argsort(-sizes[order], kind="stable")]
        per_class = np.zeros(n_folds, dtype=np.int64)
        for gi in order:
            rr = (np.arange(n_folds) - turn) % n_folds  # round-robin rank from the current turn
            f = int(np.lexsort((rr, total, per_class))[0])
            idx = members[inverse == gi]
            folds[idx] = f
            per_class[f] += len(idx)
            total[f] += len(idx)
            turn = (f + 1) % n_folds
    return folds


_THREADS_LOCK = threading.Lock()
_THREADS_USERS = 0
_THREADS_SAVED = 1


class _single_intraop_thread:
    """Context: torch intra-op threads = 1 while parallel workers run (re-entrant, thread-safe).

    The setting is process-wide; concurrent users (a training and a prediction)
    share it and the first one's value is restored when the last one leaves.
    """

    def __enter__(self) -> None:
        global _THREADS_USERS, _THREADS_SAVED
        with _THREADS_LOCK:
            if _THREADS_USERS == 0:
                _THREADS_SAVED = torch.get_num_threads()
                torch.set_num_threads(1)
            _THREADS_USERS += 1

    def __exit__(self, *exc: object) -> None:
        global _THREADS_USERS
        with _THREADS_LOCK:
            _THREADS_USERS -= 1
            if _THREADS_USERS == 0:
                torch.set_num_threads(_THREADS_SAVED)


def _versions() -> dict[str, str]:
    import polmap

    return {
        "polmap": getattr(polmap, "__version__", "?"),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _require_json(obj: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-serialisable (plain dicts, lists, numbers, strings): {exc}") from exc


def _as_patterns(X: Any, what: str = "X") -> np.ndarray:
    """(N, H, W) or (N, 1, H, W) -> float32 (N, 1, H, W)."""
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = np.asarray(X)
    if X.ndim == 3:
        X = X[:, None]
    if X.ndim != 4 or X.shape[1] != 1:
        raise ValueError(f"{what} must have shape (N, H, W) or (N, 1, H, W); found {X.shape}")
    if X.shape[2] != X.shape[3]:
        raise ValueError(f"{what}: patterns must be square (set PreprocessConfig.output_size); found {X.shape[2:]}")
    return np.ascontiguousarray(X, dtype=np.float32)


def _sha1(*parts: bytes) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------
# the trained model
# --------------------------------------------------------------------------------------
class TrainedModel:
    """An ensemble of trained networks with everything needed to use and audit it.

    Parameters
    ----------
    nets : list of nn.Module
        The ensemble members (same architecture).
    class_names : list of str
    class_colors : list of str or None
    model_config : dict
        ``{"name", "n_classes", "input_size", "options"}`` for :func:`build_model`.
    preprocess_state : dict or None
        :meth:`polmap.process.preprocess.Preprocessor.state_dict` of the inputs.
    history : list of list of dict
        Per member, per epoch: loss, val_loss, val_acc, lr, time.
    report : dict
        Validation mode, per-member and out-of-fold accuracy, augmentation ops
        used, timing, device, parameter count.
    provenance : dict
        Dataset fingerprint, label hash, seed, software versions, time.
    train_config : dict
        :meth:`TrainConfig.to_dict` of the run.
    """

    def __init__(
        self,
        nets: Sequence[nn.Module],
        class_names: Sequence[str],
        class_colors: Sequence[str] | None,
        model_config: dict[str, Any],
        preprocess_state: dict[str, Any] | None = None,
        history: list[list[dict[str, Any]]] | None = None,
        report: dict[str, Any] | None = None,
        provenance: dict[str, Any] | None = None,
        train_config: dict[str, Any] | None = None,
    ) -> None:
        if not nets:
            raise ValueError("a TrainedModel needs at least one network")
        self.nets = [n.eval() for n in nets]
        self.class_names = list(class_names)
        self.class_colors = list(class_colors) if class_colors is not None else None
        self.model_config = dict(model_config)
        self.preprocess_state = preprocess_state
        self.history = history or []
        self.report = report or {}
        self.provenance = provenance or {}
        self.train_config = train_config or {}
        self._fast: dict[str, list[nn.Module]] = {}
        self._device = torch.device("cpu")

    # -- properties ------------------------------------------------------------------
    @property
    def n_members(self) -> int:
        """Number of ensemble members."""
        return len(self.nets)

    @property
    def input_size(self) -> int:
        """Side of the square input pattern."""
        return int(self.model_config["input_size"])

    @property
    def model_name(self) -> str:
        """Architecture name."""
        return str(self.model_config["name"])

    @property
    def n_parameters(self) -> int:
        """Parameters of the largest member."""
        return max(count_parameters(n) for n in self.nets)

    def to(self, device: str | torch.device) -> "TrainedModel":
        """Move the members to a device (``"auto"`` allowed); returns self."""
        dev = resolve_device(device) if isinstance(device, str) else device
        self.nets = [n.to(dev).eval() for n in self.nets]
        self._device = dev
        self._fast = {}
        return self

    def __repr__(self) -> str:
        return (
            f"TrainedModel({self.model_name}, classes={self.class_names}, members={self.n_members}, "
            f"input={self.input_size}px, oof_accuracy={self.report.get('oof_accuracy')})"
        )

    # -- inference ---------------------------------------------------------------------
    def _fast_nets(self, traced: bool) -> list[nn.Module]:
        key = "traced" if traced else "eager"
        if key not in self._fast:
            # Folded batch norm + channels-last (~2x on CPU); tracing adds ~1.5x but
            # costs 0.1-3 s once, so it is used only for jobs large enough to repay it.
            example = None
            if traced:
                g = torch.Generator().manual_seed(0)
                example = torch.rand((8, 1, self.input_size, self.input_size), generator=g).to(self._device)
            self._fast[key] = [optimize_for_inference(n, example) for n in self.nets]
        return self._fast[key]

    def member_probabilities(self, X: Any, batch_size: int = 1024, traced: bool | None = None) -> np.ndarray:
        """Softmax probabilities of every member.

        Parameters
        ----------
        X : array, shape (N, H, W) or (N, 1, H, W)
        batch_size : int
        traced : bool, optional
            Use TorchScript-traced members (faster, traced once per model).
            Default: when ``X`` holds at least 4,096 patterns; a caller that
            feeds a large job in chunks (``predict_scan``) decides for all of them.

        Returns
        -------
        ndarray, float32, shape (M, N, K)
        """
        x = _as_patterns(X)
        if x.shape[2] != self.input_size:
            raise ValueError(
                f"this model takes {self.input_size} x {self.input_size} patterns, found {x.shape[2]} x {x.shape[3]}; "
                "preprocess with the model's preprocessing (TrainedModel.preprocess_state)"
            )
        nets = self._fast_nets(traced=len(x) >= TRACE_MIN_PATTERNS if traced is None else bool(traced))
        out = np.empty((len(nets), len(x), len(self.class_names)), dtype=np.float32)
        # Bound activation memory: 1024 patterns of 48 px, but 64 of the paper's 256 px.
        batch_size = max(1, min(int(batch_size), _MAX_BATCH_PIXELS // (x.shape[2] * x.shape[3])))
        tasks = [(m, s) for m in range(len(nets)) for s in range(0, len(x), batch_size)]

        def run(task: tuple[int, int]) -> None:
            m, s = task
            with torch.inference_mode():
                xb = torch.from_numpy(x[s : s + batch_size]).to(self._device)
                xb = xb.contiguous(memory_format=torch.channels_last)
                out[m, s : s + len(xb)] = torch.softmax(nets[m](xb).float(), dim=1).cpu().numpy()

        workers = min(torch.get_num_threads(), len(tasks)) if self._device.type == "cpu" else 1
        if workers <= 1:
            for t in tasks:
                run(t)
            return out
        # Members x batches side by side, one intra-op thread each: measured 1.5-2.5x
        # faster than torch's intra-op threads on these small networks (2 shared cores).
        with _single_intraop_thread():
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="polmap-infer") as pool:
                list(pool.map(run, tasks))
        return out

    def predict_proba(self, X: Any, batch_size: int = 1024, return_std: bool = False) -> Any:
        """Ensemble class probabilities.

        Parameters
        ----------
        X : array, shape (N, H, W) or (N, 1, H, W)
            Preprocessed patterns.
        batch_size : int
        return_std : bool
            Also return the members' standard deviation per class.

        Returns
        -------
        proba : ndarray, float32, shape (N, K)
            Mean of the members' softmax outputs.
        std : ndarray, float32, shape (N, K)
            Only with ``return_std``; zeros for a single member.
        """
        members = self.member_probabilities(X, batch_size)
        mean = members.mean(axis=0)
        if return_std:
            return mean, members.std(axis=0)
        return mean

    def predict(self, X: Any, batch_size: int = 1024) -> np.ndarray:
        """Most probable class index per pattern, shape (N,)."""
        return self.predict_proba(X, batch_size).argmax(axis=1)

    # -- persistence ---------------------------------------------------------------------
    def _metadata(self) -> dict[str, Any]:
        return {
            "class_names": self.class_names,
            "class_colors": self.class_colors,
            "model_config": self.model_config,
            "preprocess_state": self.preprocess_state,
            "history": self.history,
            "report": self.report,
            "provenance": self.provenance,
            "train_config": self.train_config,
        }

    def save(self, path_or_buffer: str | os.PathLike | IO[bytes]) -> None:
        """Write a checkpoint: tensors + JSON metadata, nothing executable.

        Parameters
        ----------
        path_or_buffer : path or binary file-like
        """
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "metadata": json.dumps(_require_json(self._metadata(), "model metadata")),
            "members": [{k: v.detach().cpu().clone() for k, v in n.state_dict().items()} for n in self.nets],
        }
        if isinstance(path_or_buffer, (str, os.PathLike)):
            path = Path(path_or_buffer)
            tmp = path.with_name(path.name + ".tmp")
            torch.save(payload, tmp)
            os.replace(tmp, path)  # atomic: a crash never leaves half a checkpoint
        else:
            torch.save(payload, path_or_buffer)

    def to_bytes(self) -> bytes:
        """The checkpoint as bytes (for workspace files and downloads)."""
        buf = io.BytesIO()
        self.save(buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "TrainedModel":
        """Inverse of :meth:`to_bytes`."""
        return cls.load(data)

    @classmethod
    def load(cls, path_or_bytes: str | os.PathLike | bytes | IO[bytes]) -> "TrainedModel":
        """Read a checkpoint written by :meth:`save`.

        Only ``torch.load(..., weights_only=True)`` is used, so a file holding
        pickled objects (code) is refused without running anything.

        Parameters
        ----------
        path_or_bytes : path, bytes or binary file-like

        Returns
        -------
        TrainedModel
            On the CPU, in eval mode.

        Raises
        ------
        CheckpointError
            Unsafe content, not a polmap checkpoint, or architecture/classes
            that do not match the stored weights.
        """
        src: Any = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else path_or_bytes
        where = str(path_or_bytes) if isinstance(path_or_bytes, (str, os.PathLike)) else "checkpoint"
        try:
            payload = torch.load(src, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"{where}: refused: it contains pickled objects other than tensors and plain data "
                f"(possibly code); polmap checkpoints never do. Detail: {str(exc).splitlines()[0]}"
            ) from None
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - truncated zip, not a torch file, ...: all one user error
            raise CheckpointError(f"{where}: not a readable polmap checkpoint ({type(exc).__name__}: {exc})") from None
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{where}: not a polmap model checkpoint (format={getattr(payload, 'get', lambda k: None)('format')!r})")
        if int(payload.get("version", 0)) > CHECKPOINT_VERSION:
            raise CheckpointError(f"{where}: checkpoint version {payload.get('version')} is newer than this polmap supports")
        try:
            meta = json.loads(payload["metadata"])
            members = payload["members"]
            mc = meta["model_config"]
            names = list(meta["class_names"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: metadata missing or malformed ({exc})") from None
        if not isinstance(members, list) or not members:
            raise CheckpointError(f"{where}: no network weights in the checkpoint")
        if int(mc.get("n_classes", -1)) != len(names):
            raise CheckpointError(
                f"{where}: inconsistent: the network has {mc.get('n_classes')} outputs but {len(names)} class names {names}"
            )
        colors = meta.get("class_colors")
        if colors is not None and len(colors) != len(names):
            raise CheckpointError(f"{where}: {len(colors)} class colours for {len(names)} classes")
        member_options = mc.get("member_options") or [{}] * len(members)
        if len(member_options) != len(members):
            raise CheckpointError(f"{where}: {len(member_options)} member architectures for {len(members)} members")
        nets = []
        for i, sd in enumerate(members):
            try:
                own = dict(member_options[i])
                # members of a composite model carry their family and full options
                opts = _arch_options(own) if "model" in own else {**mc.get("options", {}), **own}
                net = build_model(own.get("model", mc["name"]), int(mc["n_classes"]), int(mc["input_size"]), **opts)
                if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
                    raise ValueError("weights are not a dict of tensors")
                net.load_state_dict(sd, strict=True)
            except (ValueError, RuntimeError, KeyError, TypeError) as exc:
                raise CheckpointError(
                    f"{where}: member {i} does not match architecture {mc.get('name')!r} "
                    f"(classes={len(names)}, input={mc.get('input_size')}): {str(exc).splitlines()[0]}"
                ) from None
            nets.append(net.eval())
        return cls(
            nets,
            names,
            colors,
            mc,
            preprocess_state=meta.get("preprocess_state"),
            history=meta.get("history"),
            report=meta.get("report"),
            provenance=meta.get("provenance"),
            train_config=meta.get("train_config"),
        )


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------
def _check_inputs(
    X: Any, y: Any, class_names: Sequence[str], config: TrainConfig
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    names = [str(n) for n in class_names]
    if len(names) < 2:
        raise ValueError(f"need at least 2 class names, got {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique, got {names}")
    y_arr = np.asarray(y)
    if y_arr.ndim != 1:
        raise ValueError(f"y must be 1-D (one class per pattern), found shape {y_arr.shape}")
    if len(y_arr) == 0:
        raise ValueError("no labels: label some positions before training")
    if y_arr.dtype.kind in "USO":  # class names
        unknown = sorted({str(v) for v in y_arr} - set(names))
        if unknown:
            raise ValueError(f"labels {unknown} are not in class_names {names}")
        y_idx = np.array([names.index(str(v)) for v in y_arr], dtype=np.int64)
    elif y_arr.dtype.kind in "iu":
        bad = sorted({int(v) for v in y_arr if v < 0 or v >= len(names)})
        if bad:
            raise ValueError(f"label indices {bad} are not in class_names (valid: 0..{len(names) - 1} for {names})")
        y_idx = y_arr.astype(np.int64)
    else:
        raise ValueError(f"y must hold class indices (int) or class names (str), found dtype {y_arr.dtype}")
    x = _as_patterns(X)
    if len(x) != len(y_idx):
        raise ValueError(f"X has {len(x)} patterns but y has {len(y_idx)} labels")
    if not np.isfinite(x).all():
        raise ValueError("X contains NaN or infinite values")
    present = np.unique(y_idx)
    if len(present) < 2:
        raise ValueError(
            f"all {len(y_idx)} labels are class {names[int(present[0])]!r}; label at least two classes to train a classifier"
        )
    if config.model not in MODELS:
        raise ValueError(f"unknown model {config.model!r}; choose one of {sorted(MODELS)}")
    gate = config.member_gate
    if gate is not None and (isinstance(gate, bool) or not isinstance(gate, (int, float)) or not 0 <= gate <= 1):
        raise ValueError(f"member_gate must be None or an accuracy gap between 0 and 1, found {gate!r}")
    if config.input_size is not None and int(config.input_size) != x.shape[2]:
        raise ValueError(
            f"TrainConfig.input_size={config.input_size} but the patterns are {x.shape[2]} x {x.shape[3]}; "
            "preprocess to the model's input size"
        )
    return x, y_idx, names


def _epoch_indices(y: np.ndarray, n: int, balance: bool, g: torch.Generator) -> torch.Tensor:
    counts = np.bincount(y)
    w = 1.0 / counts[y] if balance else np.ones(len(y))
    return torch.multinomial(torch.as_tensor(w, dtype=torch.float64), n, replacement=True, generator=g)


def _evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple[float, float, np.ndarray]:
    net.eval()
    bs = max(1, min(512, _MAX_BATCH_PIXELS // (x.shape[2] * x.shape[3])))
    with torch.inference_mode():
        logits = torch.cat([net(x[s : s + bs].to(device)).float().cpu() for s in range(0, len(x), bs)])
    loss = float(F.cross_entropy(logits, y))
    proba = torch.softmax(logits, 1).numpy()
    acc = float((proba.argmax(1) == y.numpy()).mean())
    return loss, acc, proba


def _recalibrate_batchnorm(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, augmenter: Augmenter, device: torch.device
) -> None:
    """Re-estimate batch-norm statistics on the clean training patterns.

    The running averages kept during a short training (a few dozen steps) still
    remember their initial values and the noisier augmented batches; the
    antisymmetric input channels are ~100x weaker than the pattern, so a stale
    variance mis-scales exactly the polar signal at inference. One forward pass
    over the training patterns under every symmetry operation usable for
    their class gives exact averages. Validation patterns are not seen.
    """
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    net.train()
    with torch.no_grad():
        views, _ = augmenter.views(x, y)
        for s in range(0, len(views), 256):
            b = views[s : s + 256]
            if len(b) > 1:
                net(b.to(device))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    net.eval()


#: Early stopping needs the smoothed training loss below this fraction of log(classes).
_LEARNED_LOSS_FRACTION = 0.75


@dataclass
class _MemberJob:
    member: int
    seed: int
    net: nn.Module
    train_idx: np.ndarray
    val_idx: np.ndarray | None


def _train_member(
    job: _MemberJob,
    x_all: torch.Tensor,
    y_all: np.ndarray,
    config: TrainConfig,
    augmenter: Augmenter,
    device: torch.device,
    n_members: int,
    report: Callable[[dict[str, Any]], None],
    stop: threading.Event,
    t0: float,
) -> list[dict[str, Any]]:
    """Train one member in place; safe to run in a worker thread (own random streams)."""
    net = job.net.to(device)
    x, y = x_all[job.train_idx], y_all[job.train_idx]
    x_val = x_all[job.val_idx] if job.val_idx is not None else None
    y_val_t = torch.as_tensor(y_all[job.val_idx]) if job.val_idx is not None else None
    g = torch.Generator().manual_seed(job.seed)  # batches, augmentation, dropout masks
    dropouts = [m for m in net.modules() if isinstance(m, SeededDropout)]
    for m in dropouts:
        m.generator = g
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n_per_epoch = max(int(config.samples_per_epoch), len(y))
    steps = math.ceil(n_per_epoch / config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * steps, pct_start=0.15)
    y_t = torch.as_tensor(y)
    n_present = max(2, len(np.unique(y)))
    history: list[dict[str, Any]] = []
    smooth = None
    best = math.inf
    wait = 0
    try:
        for epoch in range(config.epochs):
            net.train()
            idx = _epoch_indices(y, n_per_epoch, config.class_balance, g)
            total, seen = 0.0, 0
            for s in range(0, n_per_epoch, config.batch_size):
                if stop.is_set():
                    raise TrainingCancelled(
                        f"training cancelled during member {job.member + 1}/{n_members}, epoch {epoch + 1}"
                    )
                b = idx[s : s + config.batch_size]
                if len(b) < 2:  # batch norm needs two samples
                    continue
                xb, tb = augmenter.augment(x[b], y_t[b], g, config.label_smoothing)
                loss = F.cross_entropy(net(xb.to(device)), tb.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(b)
                seen += len(b)
            train_loss = total / max(seen, 1)
            rec: dict[str, Any] = {
                "member": job.member,
                "n_members": n_members,
                "epoch": epoch + 1,
                "epochs": config.epochs,
                "loss": train_loss,
                "lr": float(sched.get_last_lr()[0]),
                "val_loss": None,
                "val_acc": None,
                "elapsed_s": time.perf_counter() - t0,
            }
            if x_val is not None and y_val_t is not None:
                rec["val_loss"], rec["val_acc"], _ = _evaluate(net, x_val, y_val_t, device)
            history.append(rec)
            report(dict(rec))
            # Early stopping on the (smoothed) training loss only: validation labels
            # must not pick the member they validate. A member still near the loss of
            # guessing (log K) has not learned yet: it is never stopped, so the decaying
            # learning rate gets its chance (on the demo, members stuck at log K after the
            # warm-up were stopped at epoch 9 and predicted one class everywhere).
            smooth = train_loss if smooth is None else 0.6 * smooth + 0.4 * train_loss
            if smooth < best * 0.98:
                best, wait = smooth, 0
            else:
                wait += 1
            learned = smooth < _LEARNED_LOSS_FRACTION * math.log(n_present)
            if config.patience and wait >= config.patience and learned:
                history[-1]["stopped_early"] = True
                break
        _recalibrate_batchnorm(net, x, y_t, augmenter, device)
    finally:
        for m in dropouts:
            m.generator = None  # generators are not part of the model (nor picklable)
    net.eval()
    return history


def _arch_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Architecture options of a member (its ``model`` key names the family)."""
    return {k: v for k, v in opts.items() if k != "model"}


def _accuracy(oof: np.ndarray, y: np.ndarray) -> float | None:
    done = ~np.isnan(oof[:, 0])
    return float((oof[done].argmax(1) == y[done]).mean()) if done.any() else None


#: Out-of-fold accuracies closer than this keep both families of a composite model.
FAMILY_TIE = 0.02


def _choose_families(
    families: list[str], acc: dict[str, float | None], cv: bool, n_validated: int = 0
) -> tuple[list[str], str]:
    """Which families of a composite model to keep, and why (one sentence).

    One kind is kept alone only when it is ahead by more than the noise of
    the out-of-fold accuracy (1.5 standard errors on ``n_validated`` labels, at
    least :data:`FAMILY_TIE`): with 20 labels a one-label difference is no
    evidence (measured on the external bubbles scan: the network kept alone at
    100 vs 95 % out-of-fold mapped 92.6 % of the scan, the linear members 96.9 %).
    """
    if len(families) == 1:
        return families, ""
    known = {f: a for f, a in acc.items() if a is not None}
    if not cv or len(known) < len(families):
        return families, "no out-of-fold accuracy to choose by: all kinds of member are kept and averaged"
    ranked = sorted(known, key=lambda f: -known[f])
    best, second = ranked[0], ranked[1]
    p = known[best]
    tie = max(FAMILY_TIE, 1.5 * math.sqrt(max(p * (1 - p), 0.05 * 0.95) / max(n_validated, 1)))
    text = ", ".join(f"{f} {100 * known[f]:.1f} %" for f in ranked)
    if known[best] - known[second] > tie:
        return [best], f"kept the {best} members: out-of-fold accuracy {text}"
    return families, (f"kept both kinds of member, averaged: out-of-fold accuracy {text} (within {100 * tie:.0f} "
                      f"points, the noise on {n_validated} held-out labels)")


def _fit_linear_member(
    job: _MemberJob,
    x_all: torch.Tensor,
    y_all: np.ndarray,
    augmenter: Augmenter,
    space: Any,
    n_members: int,
    report: Callable[[dict[str, Any]], None],
    t0: float,
) -> list[dict[str, Any]]:
    """Fit a linear-discriminant member in closed form on its training labels and their symmetry views."""
    from polmap.learn.linear import fit_discriminant

    x = x_all[job.train_idx]
    y = torch.as_tensor(y_all[job.train_idx])
    views, classes = augmenter.views(x, y)
    Z = space(views[:, 0].numpy())
    K = int(job.net.bias.shape[0])
    weight, bias = fit_discriminant(Z, classes.numpy(), K)
    job.net.set_parameters(space.mean, space.basis, weight, bias)
    job.net.eval()
    rec: dict[str, Any] = {
        "member": job.member, "n_members": n_members, "epoch": 1, "epochs": 1, "lr": 0.0,
        "val_loss": None, "val_acc": None, "elapsed_s": time.perf_counter() - t0,
    }
    with torch.inference_mode():
        rec["loss"] = float(F.cross_entropy(job.net(x), y))
    if job.val_idx is not None:
        rec["val_loss"], rec["val_acc"], _ = _evaluate(
            job.net, x_all[job.val_idx], torch.as_tensor(y_all[job.val_idx]), torch.device("cpu"))
    report(dict(rec))
    return [rec]


def _n_workers(config: TrainConfig, device: torch.device, n_members: int) -> int:
    if config.workers is not None:
        return max(1, min(int(config.workers), n_members))
    if device.type != "cpu":
        return 1
    # Members are independent: run them side by side, one core (torch thread) each.
    return max(1, min(torch.get_num_threads(), n_members))


def train_model(
    X: Any,
    y: Any,
    class_names: Sequence[str],
    config: TrainConfig | None = None,
    class_colors: Sequence[str] | None = None,
    preprocess_state: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    cancel: CancelLike = None,
    groups: Any = None,
    symmetry: Any = None,
    scan_patterns: Any = None,
) -> TrainedModel:
    """Train a cross-validation ensemble on labelled, preprocessed patterns.

    Parameters
    ----------
    X : array, shape (N, H, W) or (N, 1, H, W)
        Preprocessed patterns (e.g. ``Preprocessor.transform_positions``).
    y : array, shape (N,)
        Class indices into ``class_names`` or class names.
    class_names : sequence of str
    config : TrainConfig, optional
    class_colors : sequence of str, optional
        ``"#rrggbb"`` per class, stored with the model.
    preprocess_state : dict, optional
        ``Preprocessor.state_dict()`` of ``X``; stored so predictions can check
        compatibility, and its ``scaling`` tells the dose augmentation how to
        add counting noise.
    provenance : dict, optional
        JSON-safe facts to keep (e.g. ``dataset_fingerprint``, ``label_hash``).
    progress : callable, optional
        Called from the calling thread after every epoch of every member with
        a dict: ``member``, ``n_members``, ``epoch``, ``epochs``, ``loss``,
        ``val_loss``, ``val_acc``, ``lr``, ``elapsed_s``.
    cancel : callable or threading.Event, optional
        Polled while training; when it returns/is True, training stops and
        :class:`TrainingCancelled` is raised (``.partial`` holds finished members).
    groups : array of int, shape (N,), optional
        Group id of every label (``LabelStore.groups()``): a painted region is
        held out whole, never split between training and validation.
    symmetry : polmap.learn.symmetry.SymmetryMap, optional
        Which detector operation maps which class onto which (found in the
        data by :func:`polmap.learn.symmetry.discover_symmetry`). Without it no
        symmetry augmentation is done, whatever ``config.augment.symmetry``
        says; the report says which operations were used and why others not.
    scan_patterns : array, shape (M, H, W), optional
        Preprocessed patterns from the whole scan (a sample), labelled or not:
        the linear members whiten with their covariance (see
        :mod:`polmap.learn.linear`). Without them the labelled patterns are used,
        which whiten thickness and tilt far less well.

    Returns
    -------
    TrainedModel

    Raises
    ------
    ValueError
        No labels, a single class, labels not in ``class_names``, ``X``/``y``
        length mismatch, non-square or wrong-size patterns, NaN in ``X``.
    TrainingCancelled

    Notes
    -----
    On the CPU the members train in parallel threads (``TrainConfig.workers``),
    each with one intra-op thread: the networks are too small for torch's
    intra-op parallelism, whose spinning threads also collapse when the cores
    are shared. The same seed gives the same weights however many workers run.
    """
    config = config or TrainConfig()
    x_np, y_idx, names = _check_inputs(X, y, class_names, config)
    if class_colors is not None and len(class_colors) != len(names):
        raise ValueError(f"{len(class_colors)} class colours for {len(names)} classes")
    n_members = max(1, int(config.n_members))
    device = resolve_device(config.device)
    t0 = time.perf_counter()
    scaling = "sqrt"
    if preprocess_state and isinstance(preprocess_state.get("config"), dict):
        scaling = str(preprocess_state["config"].get("scaling", "sqrt"))
    from polmap.learn.symmetry import SymmetryMap

    if symmetry is None:
        symmetry = SymmetryMap(names, skipped={op: "no symmetry map was given" for op in SYMMETRY_OPS[1:]})
    elif list(symmetry.class_names) != names:
        raise ValueError(f"the symmetry map is for classes {symmetry.class_names}, not {names}")
    if not config.augment.symmetry:
        symmetry = SymmetryMap.off(names)
    augmenter = Augmenter(len(names), config.augment, scaling=scaling, arrows=symmetry.arrows)
    K = len(names)
    counts = np.bincount(y_idx, minlength=K)
    n = len(y_idx)

    # Is honest validation possible? Labels of classes with a single label (or a
    # single painted region) are never held out (a member without them could not
    # predict the class at all); they train every member and are not validated.
    if groups is None:
        g_idx = np.arange(len(y_idx))
    else:
        g_idx = np.asarray(groups).reshape(-1)
        if len(g_idx) != len(y_idx):
            raise ValueError(f"{len(g_idx)} group ids for {len(y_idx)} labels")
    # A class all in one group (one painted region) cannot be held out honestly either.
    n_groups = np.array([len(np.unique(g_idx[y_idx == k])) for k in range(K)])
    singles = [k for k in range(K) if counts[k] >= 1 and n_groups[k] == 1]
    can_hold_out = np.isin(y_idx, [k for k in range(K) if n_groups[k] >= 2])
    reasons = []
    if n < config.min_labels_for_validation:
        reasons.append(f"only {n} labels (< {config.min_labels_for_validation})")
    if len(np.unique(y_idx[can_hold_out])) < 2:
        reasons.append("fewer than two classes have labels in 2 or more places (points or regions)")
    if n_members < 2:
        reasons.append("n_members=1: no fold can be held out")
    cv = not reasons
    folds = np.full(n, -1, dtype=np.int64)
    if cv:
        folds[can_hold_out] = make_folds(y_idx[can_hold_out], n_members, config.seed, groups=g_idx[can_hold_out])

    families = list(MODELS[config.model].families) or [config.model]
    # Member i belongs to family i // n_members and holds out fold i % n_members.
    member_family = [f for f in families for _ in range(n_members)]
    member_opts: list[dict[str, Any]] = []
    for f in families:
        if f == config.model or not MODELS[config.model].families or f != "linear":
            variants = config.member_variants if config.member_variants is not None else member_variants(
                config.model if not MODELS[config.model].families else f)
            base = config.model_options
        else:
            variants, base = [{}], {}
        variants = [dict(v) for v in variants] or [{}]
        member_opts += [{"model": f, **base, **variants[m % len(variants)]} for m in range(n_members)]
    try:
        n_params = max(
            count_parameters(build_model(o["model"], K, x_np.shape[2], **_arch_options(o))) for o in member_opts
        )
    except ValueError as exc:
        raise ValueError(f"patterns of {x_np.shape[2]} px do not suit model {config.model!r}: {exc}") from None
    model_config = {
        "name": config.model,
        "n_classes": K,
        "input_size": int(x_np.shape[2]),
        "options": _require_json(config.model_options, "model_options"),
        "member_options": _require_json(member_opts, "member_variants"),
    }
    space = None
    if "linear" in families:
        from polmap.learn.linear import WhitenedSpace

        ref = x_np[:, 0] if scan_patterns is None else np.asarray(scan_patterns, dtype=np.float32).reshape(
            -1, x_np.shape[2], x_np.shape[3])
        space = WhitenedSpace(ref, n_components=40, seed=int(config.seed))
    x_all = torch.from_numpy(x_np)
    jobs = []
    for i, opts in enumerate(member_opts):
        m = i % n_members
        seed = int(config.seed) * 1000 + i
        torch.manual_seed(seed)  # initial weights, built here so threads never share the global stream
        net = build_model(opts["model"], K, x_np.shape[2], **_arch_options(opts))
        if cv:
            jobs.append(_MemberJob(i, seed, net, np.nonzero(folds != m)[0], np.nonzero(folds == m)[0]))
        else:
            jobs.append(_MemberJob(i, seed, net, np.arange(n), None))
    n_total = len(jobs)

    oof = {f: np.full((n, K), np.nan, dtype=np.float32) for f in families}
    member_acc: list[float | None] = [None] * n_total
    fit_acc: list[float] = [math.nan] * n_total  # accuracy on the member's own training labels
    histories: dict[int, list[dict[str, Any]]] = {}
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    workers = _n_workers(config, device, n_total)

    def report_epoch(rec: dict[str, Any]) -> None:
        # Called by a worker after each epoch: hand the record to the calling thread
        # and wait until it has been shown, so a cancel set from the progress
        # callback stops this member before its next epoch (no race).
        delivered = threading.Event()
        events.put(("epoch", rec, delivered))
        while not delivered.wait(0.1):
            if stop.is_set():
                return

    def run(job: _MemberJob) -> int:
        family = member_family[job.member]
        if family == "linear":
            histories[job.member] = _fit_linear_member(job, x_all, y_idx, augmenter, space, n_total, report_epoch, t0)
            job.net.to(device)
        else:
            histories[job.member] = _train_member(
                job, x_all, y_idx, config, augmenter, device, n_total, report_epoch, stop, t0
            )
        _, fit_acc[job.member], _ = _evaluate(
            job.net, x_all[job.train_idx], torch.as_tensor(y_idx[job.train_idx]), device
        )
        if job.val_idx is not None:
            _, acc, proba = _evaluate(job.net, x_all[job.val_idx], torch.as_tensor(y_idx[job.val_idx]), device)
            oof[family][job.val_idx] = proba
            member_acc[job.member] = acc
        return job.member

    def finish(done: list[int], cancelled: bool) -> TrainedModel:
        done = sorted(done)
        dropped: set[int] = set()
        for f in families:  # a network member is compared with the networks, not with closed-form fits
            dropped |= gate_members({m: fit_acc[m] for m in done if member_family[m] == f}, config.member_gate)
        best_fit = {f: max((fit_acc[m] for m in done if member_family[m] == f), default=math.nan) for f in families}
        done = [m for m in done if m not in dropped]
        oof_kept = {f: a.copy() for f, a in oof.items()}
        for m in dropped:
            if jobs[m].val_idx is not None:
                oof_kept[member_family[m]][jobs[m].val_idx] = np.nan  # no kept member vouches for this fold
        family_acc = {f: _accuracy(oof_kept[f], y_idx) for f in families}
        n_val = int((~np.isnan(np.stack([oof_kept[f][:, 0] for f in families]))).all(0).sum())
        keep, family_note = _choose_families(families, family_acc, cv, n_val)
        done = [m for m in done if member_family[m] in keep]
        stack = np.stack([oof_kept[f] for f in keep])
        seen = ~np.isnan(stack)
        # mean over the kept kinds that validated each label (NaN where none did)
        oof_final = np.where(seen.any(0), np.where(seen, stack, 0).sum(0) / np.maximum(seen.sum(0), 1), np.nan)
        report = _report(
            names, counts, cv, reasons, singles, y_idx, oof_final, [member_acc[m] for m in done], augmenter, device,
            time.perf_counter() - t0, n_params, len(done), n_total, cancelled, workers,
            [member_opts[m] for m in done], n_folds=n_members,
        )
        if len(families) > 1:
            report["family_oof_accuracy"] = {f: (None if a is None else round(a, 4)) for f, a in family_acc.items()}
            report["families_kept"] = keep
            report["family_note"] = family_note
        report["symmetry"] = symmetry.to_dict()
        report["warnings"] += [f"symmetry: {m}" for m in symmetry.messages]
        report["member_fit_accuracy"] = [round(float(fit_acc[m]), 4) for m in done]
        report["assessment"] = assess(report)
        dropped = {m for m in dropped if member_family[m] in keep}  # the other kind is gone anyway
        report["dropped_members"] = [
            {"member": m, "options": member_opts[m], "fit_accuracy": round(float(fit_acc[m]), 4),
             "best_fit_accuracy": round(float(best_fit[member_family[m]]), 4),
             "fold_labels": 0 if jobs[m].val_idx is None else int(len(jobs[m].val_idx))}
            for m in sorted(dropped)
        ]
        if dropped:
            report["warnings"].append(
                f"{len(dropped)} ensemble members could not fit their own training "
                f"labels (accuracy more than {config.member_gate:.2f} below the best member of their kind) and were "
                "left out" + ("; their validation folds are not counted in the out-of-fold accuracy" if cv else "")
            )
        prov = {
            "labels_sha1": _sha1(y_idx.astype(np.int64).tobytes(), json.dumps(names).encode()),
            "inputs_sha1": _sha1(x_np.tobytes()),
            "n_labels": int(n),
            "seed": int(config.seed),
            "versions": _versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        prov.update(_require_json(provenance or {}, "provenance"))
        return TrainedModel(
            [jobs[m].net.cpu().eval() for m in done],
            names,
            list(class_colors) if class_colors is not None else None,
            {**model_config, "member_options": [member_opts[m] for m in done]},
            preprocess_state=_require_json(preprocess_state, "preprocess_state") if preprocess_state else None,
            history=[histories[m] for m in done],
            report=report,
            provenance=prov,
            train_config=config.to_dict(),
        )

    done: list[int] = []
    failure: BaseException | None = None
    with _single_intraop_thread() if device.type == "cpu" else contextlib.nullcontext():
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="polmap-train") as pool:
            futures = [pool.submit(run, job) for job in jobs]
            for f in futures:
                f.add_done_callback(lambda fut: events.put(("done", fut, None)))
            remaining = len(futures)
            while remaining:
                try:
                    kind, item, delivered = events.get(timeout=0.05)
                except queue.Empty:
                    kind = None
                if kind == "epoch":
                    try:
                        # Once stopped, epochs that other threads finished meanwhile are not shown.
                        if progress is not None and not stop.is_set():
                            progress(item)
                    except BaseException as exc:  # noqa: BLE001 - a failing callback stops training, re-raised after
                        failure = failure or exc
                    finally:
                        delivered.set()
                elif kind == "done":
                    remaining -= 1
                    if not item.cancelled():
                        exc = item.exception()
                        if exc is None:
                            done.append(item.result())
                        elif not isinstance(exc, TrainingCancelled) and failure is None:
                            failure = exc
                if failure is not None or is_cancelled(cancel):
                    stop.set()  # workers stop at their next batch; queued members never start
                    for f in futures:
                        f.cancel()
    if failure is not None:
        raise failure
    if stop.is_set():
        where = max((h[-1]["member"], h[-1]["epoch"]) for h in histories.values()) if histories else None
        raise TrainingCancelled(
            f"training cancelled after {len(done)} of {n_members} members"
            + (f" (last completed epoch: member {where[0] + 1}, epoch {where[1]})" if where else ""),
            finish(done, cancelled=True) if done else None,
        )
    return finish(done, cancelled=False)


def assess(report: dict[str, Any]) -> dict[str, Any]:
    """Is this model worth a map? A verdict on a training report, for the UI and the CLI.

    Parameters
    ----------
    report : dict
        :attr:`TrainedModel.report`.

    Returns
    -------
    dict
        ``level`` (``"ok"``, ``"warning"`` or ``"failure"``), ``headline`` (one
        sentence), ``causes`` (each a sentence) and ``causes_title``: "likely
        causes" of a failure or of a low accuracy, "caveats" beside a good
        accuracy (e.g. a class with too few labels to trust it). A model
        whose out-of-fold accuracy is not clearly above chance is a failure,
        whatever its training loss says.
    """
    causes: list[str] = []
    counts = {k: v for k, v in (report.get("label_counts") or {}).items() if v > 0}
    few = [k for k, v in counts.items() if v < 3]
    if few:
        causes.append(f"too few labels for {few} (fewer than 3 each): label more of them")
    sym = report.get("symmetry") or {}
    if any(m.startswith("the declared directions contradict") for m in sym.get("messages", [])):
        causes.append("the declared class directions contradict the data: check the detector orientation")
    fit = report.get("member_fit_accuracy") or []
    if fit and float(np.mean(fit)) < 0.8:
        causes.append(
            f"the members fit only {100 * float(np.mean(fit)):.0f} % of their own training labels: labels that "
            "contradict each other (wall positions, a wrong class) or classes the model cannot separate"
        )
    oof = report.get("oof_accuracy")
    n_val = int(report.get("n_validated") or 0)
    cm = report.get("oof_confusion")
    if oof is None:
        return {"level": "warning", "headline": "accuracy unknown: " + str(report.get("validation_note", "no validation")),
                "causes": causes, "causes_title": "caveats"}
    names = list((report.get("label_counts") or {}).keys())
    chance, confused = 0.0, []
    if cm:
        cm_a = np.asarray(cm, dtype=float)
        rows = cm_a.sum(1)
        present = rows > 0
        chance = max(float(rows.max() / rows.sum()), 1.0 / max(int(present.sum()), 1))
        for a in range(len(cm_a)):
            for b in range(a + 1, len(cm_a)):
                if rows[a] and rows[b] and cm_a[a, b] / rows[a] + cm_a[b, a] / rows[b] >= 0.6:
                    confused.append(f"{names[a]} / {names[b]}" if a < len(names) and b < len(names) else f"{a}/{b}")
    if confused:
        causes.insert(0, f"classes the model cannot tell apart: {', '.join(confused)}")
    # clearly above chance: more than 10 points and two standard errors of a guess
    margin = max(0.10, 2.0 * math.sqrt(chance * (1 - chance) / max(n_val, 1)))
    if oof <= chance + margin:
        return {
            "level": "failure",
            "headline": f"out-of-fold accuracy {100 * oof:.0f} % is near chance ({100 * chance:.0f} %) on "
                        f"{n_val} held-out labels: this model has not learnt the classes; do not trust its map",
            "causes": causes or ["the classes may not differ in these patterns, or the labels are too few"],
            "causes_title": "likely causes",
        }
    headline = f"out-of-fold accuracy {100 * oof:.0f} % on {n_val} held-out labels"
    if oof < 0.8:
        return {"level": "warning", "headline": headline, "causes": causes, "causes_title": "likely causes"}
    if causes:
        return {"level": "warning", "headline": headline + ", with a caveat", "causes": causes, "causes_title": "caveats"}
    return {"level": "ok", "headline": headline, "causes": causes, "causes_title": "caveats"}


def gate_members(fit_accuracy: dict[int, float], gap: float | None) -> set[int]:
    """Members to leave out of an ensemble: those that failed to fit their training labels.

    Parameters
    ----------
    fit_accuracy : dict of int to float
        Each member's accuracy on the labels it was trained on.
    gap : float or None
        A member more than ``gap`` below the best is dropped; None drops none.

    Returns
    -------
    set of int
        Never all members: the best one always stays.
    """
    if gap is None or len(fit_accuracy) < 2:
        return set()
    best = max(fit_accuracy.values())
    return {m for m, a in fit_accuracy.items() if a < best - gap - 1e-9}


def _report(
    names: list[str],
    counts: np.ndarray,
    cv: bool,
    reasons: list[str],
    singles: list[int],
    y: np.ndarray,
    oof: np.ndarray,
    member_acc: list[float | None],
    augmenter: Augmenter,
    device: torch.device,
    seconds: float,
    n_params: int,
    n_done: int,
    n_members: int,
    cancelled: bool,
    workers: int,
    member_opts: list[dict[str, Any]],
    n_folds: int | None = None,
) -> dict[str, Any]:
    K = len(names)
    n_folds = n_folds or n_members
    rep: dict[str, Any] = {
        "n_labels": int(len(y)),
        "label_counts": {names[k]: int(counts[k]) for k in range(K)},
        "classes_without_labels": [names[k] for k in range(K) if counts[k] == 0],
        "members_trained": n_done,
        "n_members": n_members,
        "cancelled": cancelled,
        "device": str(device),
        "parallel_members": workers,
        "train_seconds": round(seconds, 3),
        "n_parameters_per_member": n_params,
        "member_options": member_opts,
        "augmentation": augmenter.describe(),
    }
    warnings = []
    if rep["classes_without_labels"]:
        warnings.append(f"classes without labels can never be predicted: {rep['classes_without_labels']}")
    if cv:
        done = ~np.isnan(oof[:, 0])
        rep["validation"] = "cross-validation"
        rep["validation_note"] = (
            f"{n_folds}-fold stratified cross-validation: member k never trained on fold k, so the "
            "out-of-fold predictions give an honest accuracy for every validated label; a painted region is "
            "held out whole "
            "(validation did not choose the stopping epoch either)"
        )
        if singles:
            single_names = [names[k] for k in singles]
            warnings.append(
                f"classes labelled in a single place (one point or one region) {single_names}: those labels train "
                "every member and are not validated"
            )
        rep["member_val_accuracy"] = [None if a is None else round(float(a), 4) for a in member_acc]
        rep["n_validated"] = int(done.sum())
        if done.any():
            pred = oof[done].argmax(1)
            yt = y[done]
            rep["oof_accuracy"] = round(float((pred == yt).mean()), 4)
            cm = np.zeros((K, K), dtype=int)
            np.add.at(cm, (yt, pred), 1)
            rep["oof_confusion"] = cm.tolist()  # rows: true class, cols: predicted
            rep["oof_recall"] = {
                names[k]: (round(float(cm[k, k] / cm[k].sum()), 4) if cm[k].sum() else None) for k in range(K)
            }
            rep["oof_predictions"] = pred.astype(int).tolist()
            rep["oof_label_indices"] = np.nonzero(done)[0].astype(int).tolist()
        else:
            rep["oof_accuracy"] = None
    else:
        rep["validation"] = "none"
        rep["validation_note"] = (
            "no validation possible: " + "; ".join(reasons)
            + f". All {n_members} member(s) trained on all labels with different seeds; "
            "accuracy is unknown: label more positions (at least 2 per class and 10 in all) for an honest estimate"
        )
        rep["member_val_accuracy"] = [None] * n_done
        rep["n_validated"] = 0
        rep["oof_accuracy"] = None
    rep["warnings"] = warnings
    return rep
