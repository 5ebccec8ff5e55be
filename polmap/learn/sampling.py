"""Label-next strategies: which scan positions should the user label next?

Every strategy answers through one function, :func:`suggest` (positions only)
or :func:`suggest_detailed` (positions with a score and a reason each), and
obeys one contract:

* exactly ``min(budget, available)`` positions, where *available* means inside
  the scan, not labelled and not in ``exclude`` (the one documented exception:
  ``bisection`` with ``fill="none"`` may return fewer, down to zero);
* positions are unique ``(row, col)`` pairs, in the order they should be
  labelled;
* the same inputs and ``seed`` give the same answer;
* every call terminates: no strategy loops waiting for labels to change.

The strategies are stateless: call again with the new labels to get the next
round. Positions that were suggested but skipped go into ``exclude`` so they
are not suggested again.

Strategies (see :data:`STRATEGIES`): ``random``, ``grid``, ``bisection`` (the
paper's binary-search labeller without its defects), ``adaptive`` (model
uncertainty + wall likelihood + spatial diversity) and ``cold_start``
(clustering of pattern features before any model exists).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from polmap.analysis import uncertainty as unc
from polmap.analysis.walls import domain_walls
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = [
    "STRATEGIES",
    "Suggestion",
    "dataset_features",
    "default_step",
    "grid_shape",
    "pattern_features",
    "seed_grid",
    "suggest",
    "suggest_detailed",
    "uncertainty_map",
    "wall_likelihood",
]

#: Strategy name -> one-line description (for menus and ``--help``).
STRATEGIES: dict[str, str] = {
    "random": "uniformly random unlabelled positions",
    "grid": "a regular 2-D grid of about `budget` points with the scan's aspect ratio",
    "bisection": "the paper's binary search: seed grid, then midpoints between differently labelled neighbours",
    "adaptive": "model uncertainty + wall likelihood + uncertain regions, kept apart by a minimum spacing, 40 % "
                "for exploration far from every label (cold_start without a model)",
    "cold_start": "k-means clusters of pattern features: one representative per cluster, then cluster borders",
}


@dataclass(frozen=True)
class Suggestion:
    """Positions to label next, with why each was chosen.

    Attributes
    ----------
    positions : ndarray of int, shape (n, 2)
        ``(row, col)`` in the order they should be labelled.
    scores : ndarray of float, shape (n,)
        The strategy's own measure of usefulness (higher is better); see
        :func:`suggest_detailed` for its meaning per reason.
    reasons : tuple of str
        One per position: ``"random"``, ``"grid"``, ``"wall"`` (bisects a
        labelled wall or sits on a model wall), ``"uncertain"``, ``"diverse"``,
        ``"cluster k"``, ``"between clusters a|b"`` or ``"explore"``.
    strategy : str
        The strategy that actually ran (``adaptive`` reports ``cold_start``
        when it had no model).
    message : str
        One human-readable sentence about the round (e.g. that all labels agree).
    params : dict
        The parameters used, defaults filled in (JSON-safe).
    """

    positions: np.ndarray
    scores: np.ndarray
    reasons: tuple[str, ...]
    strategy: str
    message: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.positions)


# --------------------------------------------------------------------------------------
# Argument checking
# --------------------------------------------------------------------------------------
@dataclass
class _Context:
    scan_shape: tuple[int, int]
    labelled: np.ndarray  # (N, 2) int
    classes: np.ndarray  # (N,) int
    exclude: np.ndarray  # (M, 2) int
    budget: int
    n: int  # min(budget, available)
    taken: np.ndarray  # (R*C,) bool: labelled or excluded
    probabilities: np.ndarray | None
    features: np.ndarray | None
    virtual_image: np.ndarray | None
    seed: int
    rng: np.random.Generator

    @property
    def size(self) -> int:
        return self.scan_shape[0] * self.scan_shape[1]


def _check_scan_shape(scan_shape: Any) -> tuple[int, int]:
    try:
        shape = tuple(int(s) for s in scan_shape)
    except (TypeError, ValueError):
        raise ValueError(f"scan_shape must be (rows, cols), found {scan_shape!r}") from None
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"scan_shape must be two positive integers (rows, cols), found {scan_shape!r}")
    return shape  # type: ignore[return-value]


def _check_positions(a: Any, scan_shape: tuple[int, int], what: str) -> np.ndarray:
    if a is None:
        return np.zeros((0, 2), dtype=np.int64)
    arr = np.asarray(a)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{what} must have shape (N, 2) of (row, col), found shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{what} must be integer (row, col) positions, found dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    R, C = scan_shape
    bad = (arr[:, 0] < 0) | (arr[:, 0] >= R) | (arr[:, 1] < 0) | (arr[:, 1] >= C)
    if bad.any():
        r, c = arr[np.argmax(bad)]
        raise ValueError(
            f"{what}: position (row={r}, col={c}) is outside the scan of shape {scan_shape} "
            f"({int(bad.sum())} position(s) out of range)"
        )
    return arr


def _check_budget(budget: Any) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise ValueError(f"budget must be a non-negative integer, found {budget!r}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, found {budget}")
    return int(budget)


def _context(
    scan_shape: Any,
    labelled_positions: Any,
    labelled_classes: Any,
    budget: Any,
    probabilities: Any,
    features: Any,
    virtual_image: Any,
    exclude: Any,
    seed: int,
) -> _Context:
    shape = _check_scan_shape(scan_shape)
    R, C = shape
    budget = _check_budget(budget)
    pos = _check_positions(labelled_positions, shape, "labelled_positions")
    try:
        cls = np.asarray(labelled_classes if labelled_classes is not None else [], dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError("labelled_classes must be integer class indices (N,)") from None
    if len(cls) != len(pos):
        raise ValueError(f"labelled_classes has {len(cls)} entries but labelled_positions has {len(pos)}")
    if len(cls) and (np.any(cls != np.round(cls)) or np.any(cls < 0)):
        raise ValueError("labelled_classes must be non-negative integer class indices")
    cls = cls.astype(np.int64)
    exc = _check_positions(exclude, shape, "exclude")

    prob = None
    if probabilities is not None:
        prob = np.asarray(probabilities, dtype=np.float64)
        if prob.ndim != 3 or prob.shape[:2] != shape or prob.shape[2] < 1:
            raise ValueError(f"probabilities must have shape (rows, cols, K) = {shape} + (K,), found {prob.shape}")
    feat = None
    if features is not None:
        feat = np.asarray(features, dtype=np.float64)
        if feat.ndim == 3 and feat.shape[:2] == shape:
            feat = feat.reshape(R * C, -1)
        elif feat.ndim == 1 and feat.shape[0] == R * C:
            feat = feat[:, None]
        if feat.ndim != 2 or feat.shape[0] != R * C:
            raise ValueError(
                f"features must have shape (rows*cols, F) = ({R * C}, F) or {shape} + (F,), found {np.shape(features)}"
            )
    vimg = None
    if virtual_image is not None:
        vimg = np.asarray(virtual_image, dtype=np.float64)
        if vimg.shape != shape:
            raise ValueError(f"virtual_image must have the scan's shape {shape}, found {vimg.shape}")

    taken = np.zeros(R * C, dtype=bool)
    taken[pos[:, 0] * C + pos[:, 1]] = True
    taken[exc[:, 0] * C + exc[:, 1]] = True
    n = min(budget, int((~taken).sum()))
    return _Context(shape, pos, cls, exc, budget, n, taken, prob, feat, vimg, int(seed), np.random.default_rng(seed))


# --------------------------------------------------------------------------------------
# Shared building blocks
# --------------------------------------------------------------------------------------
def default_step(scan_shape: tuple[int, int]) -> int:
    """Seed-grid spacing used by ``bisection`` when none is given.

    About 16 grid points over the scan, at least 2 px apart. For the paper's
    206 x 34 scan this gives 21 (the paper used 15 or 30).

    Parameters
    ----------
    scan_shape : (int, int)

    Returns
    -------
    int
    """
    R, C = _check_scan_shape(scan_shape)
    return max(2, int(round(math.sqrt(R * C / 16.0))))


def seed_grid(scan_shape: tuple[int, int], step: int) -> np.ndarray:
    """The regular seed grid of the paper's bisection, centred in the scan.

    Rows run along ``scan_shape[0]`` and columns along ``scan_shape[1]`` (the
    paper's code swapped them and sheared its grid).

    Parameters
    ----------
    scan_shape : (int, int)
    step : int
        Spacing in scan pixels, >= 1.

    Returns
    -------
    ndarray of int, shape (n_rows * n_cols, 2)
        Row-major ``(row, col)`` positions.
    """
    R, C = _check_scan_shape(scan_shape)
    if isinstance(step, bool) or int(step) != step or step < 1:
        raise ValueError(f"step must be a positive integer, found {step!r}")
    step = int(step)

    def axis(n: int) -> np.ndarray:
        count = (n - 1) // step + 1
        offset = ((n - 1) - (count - 1) * step) // 2  # centre the grid; margins differ by at most 1
        return offset + step * np.arange(count)

    rr, cc = np.meshgrid(axis(R), axis(C), indexing="ij")
    return np.stack([rr.ravel(), cc.ravel()], axis=1).astype(np.int64)


def grid_shape(scan_shape: tuple[int, int], n: int) -> tuple[int, int]:
    """Rows and columns of a grid of at least ``n`` nodes with the scan's aspect ratio.

    Parameters
    ----------
    scan_shape : (int, int)
    n : int
        Wanted number of nodes, ``1 <= n <= rows * cols``.

    Returns
    -------
    (int, int)
        ``(n_rows, n_cols)`` with ``n_rows <= rows``, ``n_cols <= cols`` and
        ``n_rows * n_cols >= n``; ``n_rows / n_cols`` close to ``rows / cols``.
    """
    R, C = _check_scan_shape(scan_shape)
    n = int(n)
    if not 1 <= n <= R * C:
        raise ValueError(f"n must be between 1 and {R * C}, found {n}")
    n_r = int(np.clip(round(math.sqrt(n * R / C)), 1, R))
    n_c = int(np.clip(math.ceil(n / n_r), 1, C))
    while n_r * n_c < n:
        # Grow the axis whose spacing is currently the larger (keeps cells square).
        if n_r < R and (n_c >= C or R / n_r >= C / n_c):
            n_r += 1
        else:
            n_c += 1
    return n_r, n_c


def uncertainty_map(probabilities: np.ndarray, kind: str = "entropy") -> np.ndarray:
    """Per-position uncertainty in [0, 1] from class probabilities.

    Parameters
    ----------
    probabilities : ndarray, shape (R, C, K)
        Non-negative; each pixel is renormalised to sum 1. Pixels with NaN or
        zero total are treated as fully uncertain.
    kind : {"entropy", "margin"}
        ``entropy``: Shannon entropy divided by ``log K``. ``margin``:
        ``1 - (p_first - p_second)``.

    Returns
    -------
    ndarray of float, shape (R, C)
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"probabilities must have shape (R, C, K), found {p.shape}")
    if kind == "entropy":
        return unc.normalised_entropy(p)
    if kind == "margin":
        return 1.0 - unc.margin(p)
    raise ValueError(f"unknown uncertainty kind {kind!r}; choose 'entropy' or 'margin'")


def wall_likelihood(probabilities: np.ndarray) -> np.ndarray:
    """How strongly the predicted class changes at each position, in [0, 1].

    The largest total-variation distance ``0.5 * sum_k |p_k(x) - p_k(y)|``
    between a position and its four neighbours: 1 on both sides of a sharp
    wall between confident domains, small inside a domain, intermediate across
    a soft (spread) wall.

    Parameters
    ----------
    probabilities : ndarray, shape (R, C, K)

    Returns
    -------
    ndarray of float, shape (R, C)
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"probabilities must have shape (R, C, K), found {p.shape}")
    p = np.nan_to_num(p, nan=0.0)
    w = np.zeros(p.shape[:2])
    if p.shape[0] > 1:
        d = 0.5 * np.abs(np.diff(p, axis=0)).sum(axis=2)
        w[1:] = np.maximum(w[1:], d)
        w[:-1] = np.maximum(w[:-1], d)
    if p.shape[1] > 1:
        d = 0.5 * np.abs(np.diff(p, axis=1)).sum(axis=2)
        w[:, 1:] = np.maximum(w[:, 1:], d)
        w[:, :-1] = np.maximum(w[:, :-1], d)
    return np.clip(w, 0.0, 1.0)


def _coords(scan_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    R, C = scan_shape
    flat = np.arange(R * C)
    return (flat // C).astype(np.float64), (flat % C).astype(np.float64)


def _sq_dist_to(anchors_flat: np.ndarray, scan_shape: tuple[int, int]) -> np.ndarray:
    """Squared distance of every scan position to its nearest anchor (inf if none)."""
    R, C = scan_shape
    if len(anchors_flat) == 0:
        return np.full(R * C, np.inf)
    mask = np.ones((R, C), dtype=bool)
    mask.flat[np.asarray(anchors_flat, dtype=np.int64)] = False
    # Round: squared lattice distances are integers, and spacing tests compare them exactly.
    return np.round(ndimage.distance_transform_edt(mask).ravel() ** 2)


class _Picker:
    """Picked positions plus each position's squared distance to the nearest labelled/picked one."""

    def __init__(self, ctx: _Context, n: int | None = None) -> None:
        self.ctx = ctx
        self.n = ctx.n if n is None else n
        R, C = ctx.scan_shape
        self.rows, self.cols = _coords(ctx.scan_shape)
        self.d2 = _sq_dist_to(ctx.labelled[:, 0] * C + ctx.labelled[:, 1], ctx.scan_shape)
        self.free = ~ctx.taken.copy()
        self.flat: list[int] = []
        self.scores: list[float] = []
        self.reasons: list[str] = []
        # Ties in integer squared distances differ by >= 1; jitter < 0.5 breaks them by seed.
        self.jitter = 0.49 * ctx.rng.random(R * C)

    @property
    def left(self) -> int:
        return self.n - len(self.flat)

    def add(self, idx: int, score: float, reason: str) -> None:
        idx = int(idx)
        if not self.free[idx]:
            raise RuntimeError(f"position {idx} picked twice (a polmap bug)")
        self.free[idx] = False
        self.flat.append(idx)
        self.scores.append(float(score))
        self.reasons.append(reason)
        d2 = (self.rows - self.rows[idx]) ** 2 + (self.cols - self.cols[idx]) ** 2
        np.minimum(self.d2, d2, out=self.d2)

    def farthest(self, n: int, candidates: np.ndarray | None = None, reason: str = "explore") -> int:
        """Greedy farthest-point picks among ``candidates`` (flat bool mask); returns how many."""
        got = 0
        R, C = self.ctx.scan_shape
        # Before any anchor exists, start near the scan centre rather than at a corner.
        centre = -((self.rows - (R - 1) / 2) ** 2 + (self.cols - (C - 1) / 2) ** 2)
        for _ in range(min(n, self.left)):
            ok = self.free if candidates is None else (self.free & candidates)
            if not ok.any():
                break
            if np.isinf(self.d2[ok]).all():
                key = centre + self.jitter
            else:
                key = np.where(np.isinf(self.d2), 1e18, self.d2) + self.jitter
            idx = int(np.argmax(np.where(ok, key, -np.inf)))
            self.add(idx, math.sqrt(self.d2[idx]) if np.isfinite(self.d2[idx]) else 0.0, reason)
            got += 1
        return got

    def result(self, strategy: str, message: str, params: dict[str, Any]) -> Suggestion:
        C = self.ctx.scan_shape[1]
        flat = np.asarray(self.flat, dtype=np.int64)
        pos = np.stack([flat // C, flat % C], axis=1) if len(flat) else np.zeros((0, 2), np.int64)
        return Suggestion(pos, np.asarray(self.scores, dtype=np.float64), tuple(self.reasons), strategy, message, params)


def _default_spacing(ctx: _Context) -> float:
    # Half the spacing of a uniform layout of all labels (old + new): picks spread,
    # yet a wall still gets several samples along its length.
    return 0.5 * math.sqrt(ctx.size / max(1, len(ctx.labelled) + ctx.n))


# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------
def _random(ctx: _Context) -> Suggestion:
    pk = _Picker(ctx)
    avail = np.flatnonzero(pk.free)
    for idx in ctx.rng.choice(avail, size=ctx.n, replace=False) if ctx.n else []:
        pk.free[idx] = False
        pk.flat.append(int(idx))
        pk.scores.append(0.0)
        pk.reasons.append("random")
    return pk.result("random", f"{ctx.n} random positions", {})


def _grid(ctx: _Context) -> Suggestion:
    pk = _Picker(ctx)
    if ctx.n == 0:
        return pk.result("grid", "nothing left to label", {})
    R, C = ctx.scan_shape
    n_r, n_c = grid_shape(ctx.scan_shape, ctx.n)
    rows = np.floor((np.arange(n_r) + 0.5) * R / n_r).astype(np.int64)
    cols = np.floor((np.arange(n_c) + 0.5) * C / n_c).astype(np.int64)
    nodes = (rows[:, None] * C + cols[None, :]).ravel()
    node_mask = np.zeros(R * C, dtype=bool)
    node_mask[nodes] = True
    # Farthest-point order over the nodes: when the grid has a few nodes more than
    # the budget, the dropped ones are those closest to labels and other nodes.
    order_picker = _Picker(ctx, n=len(nodes))
    order_picker.free = node_mask.copy()  # taken nodes too: they are snapped below
    order_picker.farthest(len(nodes), node_mask)
    order = order_picker.flat
    free_pos = np.flatnonzero(pk.free)
    tree = cKDTree(np.stack([free_pos // C, free_pos % C], axis=1)) if len(free_pos) else None
    for node in order:
        if pk.left == 0:
            break
        if pk.free[node]:
            pk.add(node, 1.0, "grid")
            continue
        # Node already labelled/excluded/picked: take the nearest free position instead.
        k = min(len(free_pos), 16)
        while True:
            _, j = tree.query([node // C, node % C], k=k)
            j = np.atleast_1d(j)
            hit = [int(free_pos[i]) for i in j if pk.free[free_pos[i]]]
            if hit or k >= len(free_pos):
                break
            k = min(len(free_pos), 4 * k)
        if hit:
            pk.add(hit[0], 0.5, "grid")
    pk.farthest(pk.left)  # only when snapping ran out (tiny scans)
    return pk.result("grid", f"{n_r} x {n_c} grid", {"grid_shape": [n_r, n_c]})


def _bisection(
    ctx: _Context,
    step: int | None = None,
    radius_factor: float = math.sqrt(2.0),
    fill: str = "explore",
    max_neighbours: int = 8,
) -> Suggestion:
    """Seed grid, then midpoints of differently labelled bracketing pairs, widest first."""
    if fill not in ("explore", "none"):
        raise ValueError(f"fill must be 'explore' or 'none', found {fill!r}")
    step = default_step(ctx.scan_shape) if step is None else step
    if isinstance(step, bool) or int(step) != step or step < 1:
        raise ValueError(f"step must be a positive integer, found {step!r}")
    step = int(step)
    if not radius_factor > 0:
        raise ValueError(f"radius_factor must be > 0, found {radius_factor!r}")
    params = {"step": step, "radius_factor": float(radius_factor), "fill": fill}
    R, C = ctx.scan_shape
    pk = _Picker(ctx)

    # 1. The seed grid (paper step 1), spread out if the budget cuts it short.
    grid = seed_grid(ctx.scan_shape, step)
    grid_flat = grid[:, 0] * C + grid[:, 1]
    grid_mask = np.zeros(R * C, dtype=bool)
    grid_mask[grid_flat] = True
    n_grid = pk.farthest(pk.left, grid_mask, reason="grid")
    for i in range(len(pk.flat) - n_grid, len(pk.flat)):
        pk.scores[i] = float(step)

    # 2. Midpoints: for each labelled point, its nearest differently labelled point
    #    within radius whose midpoint is still unlabelled. Widest gaps first: they
    #    bracket a wall most loosely.
    n_mid = 0
    pos, cls = ctx.labelled, ctx.classes
    present = np.unique(cls)
    if pk.left and len(present) > 1:
        radius = radius_factor * step * (1 + 1e-9)
        tree_all = cKDTree(pos)
        best: dict[int, float] = {}
        for c in present:
            mine = np.flatnonzero(cls == c)
            others = np.flatnonzero(cls != c)
            k = min(max_neighbours, len(others))
            dist, j = cKDTree(pos[others]).query(pos[mine], k=k, distance_upper_bound=radius)
            dist = dist.reshape(len(mine), k)
            j = j.reshape(len(mine), k)
            for a, drow, jrow in zip(mine, dist, j):
                for d, jj in zip(drow, jrow):
                    if not np.isfinite(d):
                        break
                    q = pos[others[jj]]
                    # Only a pair with no label strictly inside the circle on it as
                    # diameter (a Gabriel edge) still brackets the wall: otherwise
                    # a tighter bracket exists in between (the paper bisected
                    # stale pairs and sampled domain interiors).
                    if tree_all.query_ball_point((pos[a] + q) / 2.0, r=d / 2.0 - 1e-6, return_length=True) > 0:
                        continue
                    mid = (pos[a] + q + 1) // 2  # round half up, in integers
                    m = int(mid[0] * C + mid[1])
                    if pk.free[m]:
                        best[m] = max(best.get(m, 0.0), float(d))
                        break
        for m, d in sorted(best.items(), key=lambda kv: (-kv[1], kv[0])):
            if pk.left == 0:
                break
            if pk.free[m]:
                pk.add(m, d, "wall")
                n_mid += 1

    # 3. Nothing left to bisect: say so, and explore (or stop, with fill="none").
    if len(present) <= 1:
        why = (
            "no labels yet" if len(present) == 0 else f"all {len(cls)} labels agree (class {int(present[0])})"
        )
    else:
        why = "no unlabelled midpoints left between differently labelled neighbours"
    msg = f"{n_grid} seed-grid and {n_mid} wall-bisection positions"
    if pk.left and fill == "explore":
        n_exp = pk.farthest(pk.left)
        if n_exp:
            msg += f"; {why}, so {n_exp} exploration positions farthest from every label"
    elif pk.left:
        msg += f"; {why}: stopping (fill='none')"
    return pk.result("bisection", msg, params)


def _adaptive(
    ctx: _Context,
    uncertainty: str = "entropy",
    w_uncertainty: float = 1.0,
    w_wall: float = 0.5,
    w_diversity: float = 0.25,
    min_spacing: float | None = None,
    w_region: float = 1.0,
    explore: float = 0.4,
    max_wall_share: float = 0.25,
) -> Suggestion:
    """Greedy: best (uncertainty + wall + uncertain-region) score among positions at least ``min_spacing`` from every label and pick.

    The region term is the uncertainty averaged over a Gaussian of the spacing's
    width: a whole domain the model gets unsure about (a class it has hardly
    seen) outranks a thin wall line, which uncertainty alone would not.

    A share ``explore`` of the picks (rounded; none for a single pick) goes
    to the positions farthest from every label: a model can be confidently
    wrong over a whole region it has never seen a label in (on the demo, a
    thickness where the polar signal fades looked like ``none`` to a model
    with no label there), and no score computed from its own probabilities
    points there.

    At most a share ``max_wall_share`` of all labels (old and new) lies on
    predicted walls (a 4-neighbour of another predicted class); past it, wall positions are not
    proposed. A wall pixel's pattern mixes both domains, so its label is
    ambiguous by nature: once the walls are placed, more of them teach the
    network noise (demo, 50 labels: half the adaptive labels sat on walls,
    members could no longer fit their own training labels, and accuracy
    fell from 99.6 % at 30 labels to 99.4 %).

    The defaults (``w_wall=0.5``, ``explore=0.4``) were chosen on the demo and
    hard presets (5 seeds, 20 and 50 labels): with ``w_wall=1``, ``explore=0.2``
    the accuracy fell again after 30 labels as the picks piled up on wall
    pixels, whose mixed patterns make noisy labels (hard preset, 50 labels:
    97.1 % against 98.3 %).
    """
    if ctx.probabilities is None:
        if ctx.features is not None or ctx.virtual_image is not None:
            s = _cold_start(ctx)
            return Suggestion(
                s.positions, s.scores, s.reasons, "cold_start",
                "no model yet: cold start from pattern clusters. " + s.message, s.params,
            )
        pk = _Picker(ctx)
        pk.farthest(ctx.n)
        return pk.result("adaptive", "no model and no features yet: positions farthest from every label", {})
    for name, w in (("w_uncertainty", w_uncertainty), ("w_wall", w_wall), ("w_diversity", w_diversity),
                    ("w_region", w_region)):
        if not (np.isfinite(w) and w >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, found {w!r}")
    if w_uncertainty + w_wall + w_region <= 0:
        raise ValueError("w_uncertainty + w_wall + w_region must be > 0")
    if not (np.isfinite(explore) and 0 <= explore <= 1):
        raise ValueError(f"explore must be a share between 0 and 1, found {explore!r}")
    if not (np.isfinite(max_wall_share) and 0 <= max_wall_share <= 1):
        raise ValueError(f"max_wall_share must be a share between 0 and 1, found {max_wall_share!r}")
    n_explore = int(math.floor(explore * ctx.n + 0.5))
    spacing = _default_spacing(ctx) if min_spacing is None else float(min_spacing)
    if not (np.isfinite(spacing) and spacing >= 0):
        raise ValueError(f"min_spacing must be a finite number >= 0, found {min_spacing!r}")
    params = {
        "uncertainty": uncertainty, "w_uncertainty": float(w_uncertainty), "w_wall": float(w_wall),
        "w_diversity": float(w_diversity), "w_region": float(w_region), "explore": float(explore),
        "min_spacing": round(spacing, 3), "max_wall_share": float(max_wall_share),
    }
    u_map = uncertainty_map(ctx.probabilities, uncertainty)
    u = u_map.ravel() * w_uncertainty
    w = wall_likelihood(ctx.probabilities).ravel() * w_wall

    on_wall = domain_walls(ctx.probabilities).ravel()
    C = ctx.scan_shape[1]
    n_wall_labels = int(on_wall[ctx.labelled[:, 0] * C + ctx.labelled[:, 1]].sum())
    wall_quota = int(math.floor(max_wall_share * (len(ctx.labelled) + ctx.n) + 1e-9)) - n_wall_labels
    region = ndimage.gaussian_filter(u_map, sigma=max(spacing, 1.0), mode="nearest").ravel()
    g = region * w_region
    score = (u + w + g) / (w_uncertainty + w_wall + w_region)
    pk = _Picker(ctx)
    tie = pk.jitter * 1e-9  # deterministic per seed, never outweighs a real score difference
    s = spacing
    relaxed = False
    n_wall_picks = 0
    capped = False
    while pk.left > n_explore:
        allowed = pk.free
        if n_wall_picks >= wall_quota and (pk.free & on_wall).any():
            allowed, capped = pk.free & ~on_wall, True
        if not allowed.any():
            break  # only walls left, and their quota is spent: explore instead
        far = pk.d2 >= s * s
        ok = allowed & far
        if not ok.any():
            if s < 1.0:
                ok = allowed
            else:
                s /= 2.0  # everything free is crowded: relax the spacing and go on
                relaxed = True
                continue
        scale = 4.0 * max(s, 1.0) ** 2
        div = np.minimum(np.where(np.isinf(pk.d2), 1.0, pk.d2 / scale), 1.0)
        key = score + w_diversity * div + tie
        idx = int(np.argmax(np.where(ok, key, -np.inf)))
        if score[idx] < 0.05:
            reason = "diverse"  # nothing uncertain left near here: picked for coverage
        elif w[idx] >= max(u[idx], g[idx]):
            reason = "wall"
        elif w_region > 0 and region[idx] >= 0.5:
            reason = "uncertain region"  # the neighbourhood, not only this pixel, is in doubt
        else:
            reason = "uncertain"
        pk.add(idx, score[idx], reason)
        n_wall_picks += int(on_wall[idx])
    pk.farthest(pk.left, reason="explore")
    counts = {r: pk.reasons.count(r) for r in ("uncertain", "uncertain region", "wall", "diverse", "explore")}
    msg = ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "nothing left to label"
    if capped:
        msg += f"; no more wall positions: walls hold {max_wall_share:.0%} of all labels"
    msg += f"; minimum spacing {spacing:.1f} px" + (f" (relaxed to {s:.1f} px where crowded)" if relaxed else "")
    return pk.result("adaptive", msg, params)


def pattern_features(X: np.ndarray, pool: int = 4) -> np.ndarray:
    """Clustering features of preprocessed patterns: each pattern and its Friedel-antisymmetric parts, pooled.

    Parameters
    ----------
    X : ndarray, shape (N, H, W)
        Preprocessed (centred, scaled) patterns.
    pool : int
        Average-pooling factor.

    Returns
    -------
    ndarray of float32, shape (N, 3 * (H // pool) * (W // pool))
        The pooled pattern, ``x - mirror_lr(x)`` and ``x - mirror_ud(x)``: the
        antisymmetric parts carry the polarization (broken Friedel symmetry),
        which the pattern itself drowns in thickness contrast.
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 3:
        raise ValueError(f"patterns must have shape (N, H, W), found {X.shape}")
    n, H, W = X.shape
    h, w = H // pool * pool, W // pool * pool
    if h == 0 or w == 0:
        raise ValueError(f"patterns of {H} x {W} px are smaller than the pooling factor {pool}")
    x = X[:, :h, :w]
    parts = (x, x - x[:, :, ::-1], x - x[:, ::-1, :])
    return np.concatenate(
        [a.reshape(n, h // pool, pool, w // pool, pool).mean(axis=(2, 4)).reshape(n, -1) for a in parts], axis=1
    )


def dataset_features(dataset: Any, preprocess: dict[str, Any] | None = None, pool: int = 4,
                     progress: Callable[[int, int], None] | None = None, max_bytes: int | None = None) -> np.ndarray:
    """:func:`pattern_features` of every pattern of a dataset, computed chunk by chunk.

    Parameters
    ----------
    dataset : Dataset4D
    preprocess : dict, optional
        :class:`polmap.process.preprocess.PreprocessConfig` fields; default
        ``INPUT_PRESETS["centred48"]`` (the compact network's).
    pool : int
    progress : callable, optional
        ``progress(rows_done, rows_total)`` after every chunk.
    max_bytes : int, optional
        Memory for one chunk (default: the preprocessor's).

    Returns
    -------
    ndarray of float32, shape (rows * cols, F)
        Row-major over the scan, ready for ``suggest(..., features=...)``.
    """
    from polmap.process.preprocess import INPUT_PRESETS, PreprocessConfig, Preprocessor

    cfg = dict(INPUT_PRESETS["centred48"]) if preprocess is None else dict(preprocess)
    pre = Preprocessor(PreprocessConfig(**cfg)).fit(dataset)
    R, C = dataset.scan_shape
    out: np.ndarray | None = None
    chunks = pre.iter_transformed(dataset) if max_bytes is None else pre.iter_transformed(dataset, max_bytes)
    for rows, x in chunks:
        f = pattern_features(np.asarray(x).reshape(-1, *x.shape[-2:]), pool)
        if out is None:
            out = np.empty((R * C, f.shape[1]), dtype=np.float32)
        out[rows.start * C : rows.stop * C] = f
        if progress is not None:
            progress(rows.stop, R)
    if out is None:
        raise ValueError(f"{getattr(dataset, 'name', 'the dataset')}: no patterns to compute features from")
    return out


def _cluster_features(ctx: _Context, n_clusters: int, n_components: int, max_fit: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    X = ctx.features if ctx.features is not None else ctx.virtual_image.reshape(-1, 1)  # type: ignore[union-attr]
    X = np.array(X, dtype=np.float64)
    col_mean = np.nanmean(np.where(np.isfinite(X), X, np.nan), axis=0)
    col_mean = np.nan_to_num(col_mean)
    bad = ~np.isfinite(X)
    if bad.any():
        X[bad] = np.take(col_mean, np.nonzero(bad)[1])
    X -= X.mean(axis=0)
    sd = X.std(axis=0)
    X /= np.where(sd > 0, sd, 1.0)
    fit_rows = ctx.rng.choice(len(X), size=min(max_fit, len(X)), replace=False)
    fit_rows.sort()
    n_comp = min(n_components, X.shape[1], len(fit_rows))
    # One thread: k-means' OpenMP workers spin for seconds when cores are shared,
    # while a single thread clusters 20k rows in a fraction of a second.
    with threadpool_limits(1):
        if X.shape[1] > n_comp:
            solver = "randomized" if X.shape[1] > 200 else "full"
            pca = PCA(n_components=n_comp, random_state=ctx.seed, svd_solver=solver).fit(X[fit_rows])
            Z = pca.transform(X)
        else:
            Z = X
        n_unique = len(np.unique(np.round(Z[fit_rows], 9), axis=0))
        k = max(1, min(n_clusters, n_unique))
        km = KMeans(n_clusters=k, n_init=4, random_state=ctx.seed).fit(Z[fit_rows])
        labels = km.predict(Z)
    return labels, np.sum((Z - km.cluster_centers_[labels]) ** 2, axis=1)


def _majority_filter(labels: np.ndarray, k: int) -> np.ndarray:
    # One-hot + 3x3 box filter + argmax: removes salt-and-pepper pixels so that
    # cluster borders follow real regions rather than noise.
    votes = np.stack([ndimage.uniform_filter((labels == i).astype(np.float32), 3, mode="nearest") for i in range(k)])
    return np.argmax(votes, axis=0)


def _cold_start(
    ctx: _Context,
    n_clusters: int | None = None,
    n_components: int = 10,
    min_spacing: float | None = None,
    max_fit: int = 20000,
) -> Suggestion:
    """One representative per feature cluster, then spread points on cluster borders, then exploration."""
    if ctx.features is None and ctx.virtual_image is None:
        raise ValueError("cold_start needs features (rows*cols, F) or a virtual_image (rows, cols)")
    if n_clusters is None:
        # One cluster per pick (as TypiClust, Hacohen et al. 2022): with fewer, large
        # clusters swallow a small domain. On the demo scan (none = 4 % of it) the
        # 10 first picks held all five classes in 8 of 10 seeds, against 3 of 10
        # with budget // 3 clusters; 20 picks in 10 of 10.
        n_clusters = max(2, min(ctx.budget, 50))
    for name, v in (("n_clusters", n_clusters), ("n_components", n_components), ("max_fit", max_fit)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, found {v!r}")
    spacing = _default_spacing(ctx) if min_spacing is None else float(min_spacing)
    params = {"n_clusters": int(n_clusters), "n_components": int(n_components), "min_spacing": round(spacing, 3)}
    pk = _Picker(ctx)
    if ctx.n == 0:
        return pk.result("cold_start", "nothing left to label", params)
    R, C = ctx.scan_shape
    labels, d2c = _cluster_features(ctx, int(n_clusters), int(n_components), int(max_fit))
    k = int(labels.max()) + 1
    params["n_clusters_found"] = k
    sizes = np.bincount(labels, minlength=k)
    lab_flat = ctx.labelled[:, 0] * C + ctx.labelled[:, 1]
    covered = np.zeros(k, dtype=bool)
    covered[labels[lab_flat]] = True
    # Clusters nobody has labelled come first, large before small.
    order = sorted(range(k), key=lambda i: (covered[i], -sizes[i], i))
    for i in order:
        if pk.left == 0:
            break
        cand = pk.free & (labels == i)
        if cand.any():
            idx = int(np.argmin(np.where(cand, d2c, np.inf)))
            pk.add(idx, sizes[i] / ctx.size, f"cluster {i}")
    # Borders between (smoothed) clusters: likely domain walls. Spread along them.
    smooth = _majority_filter(labels.reshape(R, C), k) if k > 1 else labels.reshape(R, C)
    other = np.full((R, C), -1)
    border = np.zeros((R, C), dtype=bool)
    for axis in (0, 1):
        a = smooth
        diff = np.diff(a, axis=axis) != 0
        sl_lo = (slice(None, -1), slice(None)) if axis == 0 else (slice(None), slice(None, -1))
        sl_hi = (slice(1, None), slice(None)) if axis == 0 else (slice(None), slice(1, None))
        border[sl_lo] |= diff
        border[sl_hi] |= diff
        other[sl_lo] = np.where(diff, a[sl_hi], other[sl_lo])
        other[sl_hi] = np.where(diff, a[sl_lo], other[sl_hi])
    border = border.ravel()
    smooth_f, other_f = smooth.ravel(), other.ravel()
    n_border = 0
    while pk.left:
        ok = pk.free & border & (pk.d2 >= spacing * spacing)
        if not ok.any():
            break
        key = np.where(np.isinf(pk.d2), 1e18, pk.d2) + pk.jitter
        idx = int(np.argmax(np.where(ok, key, -np.inf)))
        a, b = sorted((int(smooth_f[idx]), int(other_f[idx])))
        pk.add(idx, 1.0, f"between clusters {a}|{b}")
        n_border += 1
    n_exp = pk.farthest(pk.left)
    msg = f"{k} feature clusters: {sum(r.startswith('cluster') for r in pk.reasons)} representatives, " \
          f"{n_border} on cluster borders, {n_exp} exploration"
    return pk.result("cold_start", msg, params)


_IMPL: dict[str, Callable[..., Suggestion]] = {
    "random": _random,
    "grid": _grid,
    "bisection": _bisection,
    "adaptive": _adaptive,
    "cold_start": _cold_start,
}


def _params_of(fn: Callable[..., Suggestion]) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "ctx"]


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------
def suggest_detailed(
    strategy: str,
    scan_shape: tuple[int, int],
    labelled_positions: np.ndarray | None,
    labelled_classes: np.ndarray | None,
    budget: int,
    *,
    probabilities: np.ndarray | None = None,
    features: np.ndarray | None = None,
    virtual_image: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    seed: int = 0,
    **params: Any,
) -> Suggestion:
    """Positions to label next, with a score and a reason for each.

    Same arguments as :func:`suggest`.

    Returns
    -------
    Suggestion
        ``scores`` mean: ``grid`` 1 (0.5 where a node was moved off a taken
        position); ``bisection`` the seed step for grid points and the
        bracketing pair's distance in pixels for wall points; ``adaptive`` the
        combined uncertainty/wall score in [0, 1]; ``cold_start`` the cluster's
        share of the scan for representatives and 1 on borders; ``explore``
        the distance in pixels to the nearest label or earlier pick;
        ``random`` 0.
    """
    if strategy not in _IMPL:
        raise ValueError(f"unknown strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}")
    fn = _IMPL[strategy]
    allowed = _params_of(fn)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"strategy {strategy!r} got unknown parameter(s) {unknown}; it accepts {allowed or 'no parameters'}"
        )
    ctx = _context(scan_shape, labelled_positions, labelled_classes, budget, probabilities, features, virtual_image,
                   exclude, seed)
    if strategy == "cold_start" and ctx.features is None and ctx.virtual_image is None:
        raise ValueError("cold_start needs features (rows*cols, F) or a virtual_image (rows, cols)")
    out = fn(ctx, **params)
    # The contract, checked once here rather than trusted in five places.
    n = len(out.positions)
    if not (n == ctx.n or (strategy == "bisection" and params.get("fill") == "none" and n <= ctx.n)):
        raise RuntimeError(f"strategy {strategy!r} returned {n} positions for a budget of {ctx.n} (a polmap bug)")
    return out


def suggest(
    strategy: str,
    scan_shape: tuple[int, int],
    labelled_positions: np.ndarray | None,
    labelled_classes: np.ndarray | None,
    budget: int,
    *,
    probabilities: np.ndarray | None = None,
    features: np.ndarray | None = None,
    virtual_image: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    seed: int = 0,
    **params: Any,
) -> np.ndarray:
    """Positions to label next.

    Parameters
    ----------
    strategy : str
        One of :data:`STRATEGIES`.
    scan_shape : (int, int)
        ``(rows, cols)`` of the scan.
    labelled_positions : array of int, shape (N, 2), or None
        ``(row, col)`` of every labelled position.
    labelled_classes : array of int, shape (N,), or None
        Their class indices (>= 0).
    budget : int
        How many positions to return (>= 0).
    probabilities : ndarray, shape (rows, cols, K), optional
        Current model's class probabilities (``adaptive``).
    features : ndarray, shape (rows*cols, F) or (rows, cols, F), optional
        Per-pattern features for ``cold_start`` (e.g. binned, normalised
        patterns, a few hundred values each; PCA is applied here).
    virtual_image : ndarray, shape (rows, cols), optional
        Used as a one-feature fallback by ``cold_start``.
    exclude : array of int, shape (M, 2), optional
        Positions never to propose (e.g. suggested earlier and skipped).
    seed : int
        Seed for random choices and tie breaking.
    **params
        Strategy parameters:

        - ``bisection``: ``step`` (seed-grid spacing, default
          :func:`default_step`), ``radius_factor`` (``sqrt(2)``: pairs closer
          than ``radius_factor * step`` are bisected), ``fill``
          (``"explore"``: when nothing is left to bisect, e.g. all labels
          agree, fill the budget with the positions farthest from every label;
          ``"none"``: return fewer points, possibly zero), ``max_neighbours`` (8).
          The paper's loop is ``fill="none"`` with a small budget per round:
          label what it returns, call again, stop when it returns nothing.
        - ``adaptive``: ``uncertainty`` (``"entropy"`` or ``"margin"``),
          ``w_uncertainty`` (1), ``w_wall`` (1), ``w_diversity`` (0.25),
          ``min_spacing`` (px; default half the spacing of a uniform layout of
          all old and new labels, halved where nothing free is that far).
          Without ``probabilities`` it runs ``cold_start`` (if ``features`` or
          ``virtual_image`` is given) or farthest-point exploration.
        - ``cold_start``: ``n_clusters`` (``clip(budget // 3, 2, 8)``),
          ``n_components`` (10 PCA components), ``min_spacing`` (as above, for
          border points), ``max_fit`` (20000 rows used to fit PCA/k-means).

    Returns
    -------
    ndarray of int, shape (n, 2)
        ``n = min(budget, available)`` unique ``(row, col)`` positions inside
        the scan, none labelled or excluded, in labelling order (``bisection``
        with ``fill="none"`` may return fewer).

    Raises
    ------
    ValueError
        Unknown strategy (the message lists the valid ones) or parameter,
        negative or non-integer budget, positions outside the scan, shapes
        that do not match ``scan_shape``, ``cold_start`` without features.

    Examples
    --------
    >>> suggest("grid", (20, 40), None, None, 8).tolist()
    [[5, 15], [15, 35], [15, 5], [15, 25], [5, 5], [15, 15], [5, 25], [5, 35]]
    """
    return suggest_detailed(
        strategy, scan_shape, labelled_positions, labelled_classes, budget,
        probabilities=probabilities, features=features, virtual_image=virtual_image,
        exclude=exclude, seed=seed, **params,
    ).positions
