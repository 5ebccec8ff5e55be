"""Which detector symmetry maps which class onto which: found in the data, never read from names.

The 8 operations of a square detector (:data:`polmap.process.detector_symmetry.SYMMETRY_OPS`)
can map the pattern of one domain variant onto that of another: on a [001]
perovskite a column mirror turns a domain polarised along the detector rows
into one polarised the other way. Which class goes where depends on how the
camera is mounted, on the scan rotation and on what the user called the
classes, so :func:`discover_symmetry` measures it:

1. *Does the operation stay on the data?* Each pattern of a sample of the scan
   is transformed and its nearest neighbour is looked up among the scan's own
   patterns (in a whitened principal-component space of the scan; the probe
   positions next to the pattern are left out). For a symmetry of the domain
   set the transformed pattern finds a neighbour about as close as the
   original does; for a detector rotated by an arbitrary angle, where mirrors
   make crystal orientations that are not in the scan, it does not. The
   distance ratio is compared with that of a 45 degree rotation, which is
   never a symmetry of a square lattice (when even that lands as close, noise
   dominates and this test is skipped).
2. *Onto which class?* A shrinkage linear discriminant fitted on the labelled
   patterns (with the scan's covariance, so thickness and tilt are whitened
   away) gives every scan pattern class probabilities. The class of the
   neighbours of ``op(x)`` is tallied against the class of ``x``: an arrow
   ``a -> b`` is kept when ``b`` collects most of what an exact copy would
   (60 % of the agreement of the untransformed patterns) and at least twice
   the runner-up.
3. *Consistent?* Arrows that contradict each other under composition, or two
   classes sent to one, are dropped (the weaker first).
4. *Not harmful?* A linear classifier cross-validated on the labels with the
   arrows' augmentation must not be worse than without.

An arrow ``a -> a`` (a class that an operation leaves unchanged) is only kept
when every class of the class set has labels: otherwise it cannot be told from
an arrow onto a class that nobody labelled yet (a column mirror of ``+y`` looks
like ``+y`` to a classifier that has never seen ``-y``).

A user may declare class directions (angles on the detector, or
"invariant"); they are a prior that the data must not contradict: each arrow
they imply is checked as above, and a contradiction is reported and not used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from polmap.process.detector_symmetry import OP_MATRICES, SYMMETRY_OPS, compose_ops
from polmap.learn.linear import WhitenedSpace, fit_discriminant, log_proba, loglik_floor

__all__ = [
    "MIN_LABELS",
    "SymmetryMap",
    "declared_arrows",
    "discover_symmetry",
    "parse_directions",
    "verified_directions",
]

#: Labels a class needs before its arrows are tested.
MIN_LABELS = 2
#: An arrow's agreement must reach this fraction of the untransformed agreement ...
_AGREEMENT = 0.6
#: ... and this multiple of the runner-up class's.
_MARGIN = 2.0
#: An operation is on the data if its distance ratio is below this point between 1 and the 45-degree
#: reference. Measured (ratio - 1) / (reference - 1): true symmetries 0.14-0.21 (polmap's demo and hard
#: presets, the external bubbles scan, a 30-degree camera's rotations), mirrors of a 30-degree camera 0.40,
#: every operation of a 27-degree camera on the external scan 1.04.
_ON_DATA = 0.3
#: An operation is used only if most of the classes it was tested on map clearly.
_SUPPORT = 0.5
#: Cross-validated log-likelihood per label the arrows may cost before they are dropped.
_HARM = 0.15
#: Below this 45-degree reference ratio the neighbour test has no power (noise dominates the distances).
_MIN_REFERENCE = 1.1
_INVARIANT = "invariant"


@dataclass
class SymmetryMap:
    """The detector operations a model may use, each with its relabelling.

    Attributes
    ----------
    class_names : list of str
    arrows : dict
        Operation -> image class index of every class, ``None`` where the
        operation is not used for that class. Only operations with at least
        one arrow are present; ``"identity"`` never is.
    status : str
        ``"found"`` (arrows from the data), ``"declared"`` (the user's
        directions, checked), ``"none"`` (no arrow could be verified) or
        ``"off"`` (symmetry augmentation switched off).
    evidence : dict
        Per operation: ``distance_ratio``, ``on_data`` and, per labelled class,
        the best image, its agreement and the runner-up's (JSON-safe).
    skipped : dict
        Operation -> why it is not used.
    messages : list of str
        Warnings for the user (contradicted declarations, dropped arrows).
    """

    class_names: list[str]
    arrows: dict[str, list[int | None]] = field(default_factory=dict)
    status: str = "none"
    evidence: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    @classmethod
    def off(cls, class_names: Sequence[str], reason: str = "symmetry augmentation switched off") -> "SymmetryMap":
        """A map that uses no operation."""
        return cls(list(class_names), {}, "off", {}, {op: reason for op in SYMMETRY_OPS[1:]}, [])

    @property
    def ops(self) -> list[str]:
        """Operations with at least one arrow, in :data:`SYMMETRY_OPS` order."""
        return [op for op in SYMMETRY_OPS if op in self.arrows]

    def mapping_lines(self) -> list[str]:
        """One line per used operation, e.g. ``"flip_cols: P1 -> P2, P2 -> P1"``."""
        names = self.class_names
        out = []
        for op in self.ops:
            pairs = [f"{names[a]} -> {names[b]}" for a, b in enumerate(self.arrows[op]) if b is not None]
            out.append(f"{op}: " + ", ".join(pairs))
        return out

    def summary(self) -> str:
        """One sentence for reports and the UI."""
        if self.status == "off":
            return "symmetry augmentation off"
        if not self.arrows:
            why = "; ".join(sorted(set(self.skipped.values()))) or "no operation verified"
            return f"no detector symmetry used ({why})"
        n = sum(b is not None for v in self.arrows.values() for b in v)
        src = "declared and verified" if self.status == "declared" else "found in the labelled data"
        return f"{len(self.arrows)} of 7 detector operations used ({n} class arrows, {src})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (stored in checkpoints and training reports)."""
        return {
            "class_names": list(self.class_names),
            "arrows": {op: list(v) for op, v in self.arrows.items()},
            "status": self.status,
            "summary": self.summary(),
            "mapping": self.mapping_lines(),
            "evidence": self.evidence,
            "skipped": dict(self.skipped),
            "messages": list(self.messages),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SymmetryMap":
        """Inverse of :meth:`to_dict`."""
        names = [str(n) for n in d["class_names"]]
        arrows = {
            str(op): [None if b is None else int(b) for b in v] for op, v in dict(d.get("arrows") or {}).items()
        }
        for op, v in arrows.items():
            if op not in OP_MATRICES or op == "identity" or len(v) != len(names):
                raise ValueError(f"symmetry map: bad arrows for operation {op!r}: {v}")
        return cls(names, arrows, str(d.get("status", "found")), dict(d.get("evidence") or {}),
                   dict(d.get("skipped") or {}), list(d.get("messages") or []))


# ---------------------------------------------------------------------------------
# declared directions (a prior, never a name)
# ---------------------------------------------------------------------------------
def parse_directions(spec: str | Mapping[str, Any] | None, class_names: Sequence[str]) -> dict[str, float | str]:
    """Declared class directions from ``"A=0,B=180,C=invariant"`` or a dict.

    Parameters
    ----------
    spec : str, dict or None
        Class name -> angle in degrees on the detector (from increasing
        column towards increasing row) or ``"invariant"`` (a class that every
        operation leaves unchanged, e.g. out-of-plane or non-polar).
    class_names : sequence of str

    Returns
    -------
    dict
        Only the classes given; angles in [0, 360).

    Raises
    ------
    ValueError
        An unknown class, or a value that is neither a number nor ``invariant``.
    """
    if spec is None or spec == "":
        return {}
    if isinstance(spec, str):
        items = []
        for part in spec.split(","):
            if "=" not in part:
                raise ValueError(f"class directions: expected NAME=ANGLE or NAME=invariant, found {part.strip()!r}")
            k, v = part.split("=", 1)
            items.append((k.strip(), v.strip()))
    else:
        items = [(str(k), v) for k, v in spec.items()]
    out: dict[str, float | str] = {}
    for name, value in items:
        if name not in class_names:
            raise ValueError(f"class directions: {name!r} is not one of the classes {list(class_names)}")
        if value is None:
            continue
        if isinstance(value, str) and value.strip().lower() == _INVARIANT:
            out[name] = _INVARIANT
            continue
        try:
            out[name] = float(value) % 360.0
        except (TypeError, ValueError):
            raise ValueError(
                f"class directions: {name}={value!r}: expected an angle in degrees or 'invariant'"
            ) from None
    return out


def declared_arrows(directions: Mapping[str, float | str], class_names: Sequence[str]) -> dict[str, list[int | None]]:
    """The arrows that declared directions imply.

    Parameters
    ----------
    directions : dict
        From :func:`parse_directions`.
    class_names : sequence of str

    Returns
    -------
    dict
        Operation -> image of every class (``None`` where the class has no
        declared direction or its image direction belongs to no class).
    """
    names = list(class_names)
    vec: dict[int, np.ndarray | None] = {}
    for k, n in enumerate(names):
        d = directions.get(n)
        if d is None:
            vec[k] = None
        elif d == _INVARIANT:
            vec[k] = np.zeros(2)
        else:
            t = math.radians(float(d))
            vec[k] = np.array([math.sin(t), math.cos(t)])  # (row, col)
    out: dict[str, list[int | None]] = {}
    for op in SYMMETRY_OPS[1:]:
        images: list[int | None] = []
        for k in range(len(names)):
            v = vec[k]
            if v is None:
                images.append(None)
                continue
            w = OP_MATRICES[op] @ v
            hit = [j for j, u in vec.items() if u is not None and np.allclose(u, w, atol=1e-6)]
            images.append(hit[0] if hit else None)
        if any(b is not None for b in images):
            out[op] = images
    return out


def verified_directions(symmetry: SymmetryMap, directions: Mapping[str, float | str]) -> dict[str, float | str]:
    """Declared directions that the data did not contradict (for the map's colour wheel).

    Parameters
    ----------
    symmetry : SymmetryMap
        The result of :func:`discover_symmetry` run with ``directions``.
    directions : dict
        Declared class directions.

    Returns
    -------
    dict
        The declared directions, or an empty dict when the data contradicted
        any of them (then no direction is trusted).
    """
    if symmetry.status != "declared" or any(m.startswith("the declared directions contradict") for m in symmetry.messages):
        return {}
    return dict(directions)


# ---------------------------------------------------------------------------------
# the discovery
# ---------------------------------------------------------------------------------
def _rotate(X: np.ndarray, angle: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.rotate(X, angle, axes=(1, 2), reshape=False, order=1, mode="nearest")


def _neighbours(tree: Any, Q: np.ndarray, pos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest reference patterns of each query, leaving out the query's own 3 x 3 probe neighbourhood.

    The reference set is the scan sample itself (``pos`` are the positions of both).
    """
    d, j = tree.query(Q, k=min(k + 9, len(pos)))
    ref_pos = pos
    near = (np.abs(ref_pos[j, 0] - pos[:, None, 0]) <= 1) & (np.abs(ref_pos[j, 1] - pos[:, None, 1]) <= 1)
    d = np.where(near, np.inf, d)
    order = np.argsort(d, axis=1)[:, :k]
    return np.take_along_axis(d, order, 1), np.take_along_axis(j, order, 1)


def _cv_scores(
    Zs: dict[str, np.ndarray], y: np.ndarray, n: int, arrows: dict[str, list[int | None]], seed: int
) -> tuple[float, float]:
    """Mean held-out log-likelihood and accuracy of the labels, augmented by ``arrows`` in training."""
    counts = np.bincount(y, minlength=n)
    n_folds = int(max(2, min(5, counts.min())))
    total, count, right = 0.0, 0, 0
    for rep in range(2):
        rng = np.random.default_rng(seed + rep)
        folds = np.empty(len(y), dtype=int)
        for k in range(n):
            idx = rng.permutation(np.flatnonzero(y == k))
            folds[idx] = (np.arange(len(idx)) + rng.integers(n_folds)) % n_folds
        for f in range(n_folds):
            tr, te = folds != f, folds == f
            Zt, yt = [Zs["identity"][tr]], [y[tr]]
            for op, images in arrows.items():
                img = np.array([-1 if b is None else b for b in images])[y[tr]]
                keep = img >= 0
                Zt.append(Zs[op][tr][keep])
                yt.append(img[keep])
            W, b = fit_discriminant(np.concatenate(Zt), np.concatenate(yt), n)
            lp = log_proba(W, b, Zs["identity"][te])
            total += float(np.maximum(lp[np.arange(te.sum()), y[te]], loglik_floor()).sum())
            right += int((lp.argmax(1) == y[te]).sum())
            count += int(te.sum())
    return total / max(count, 1), right / max(count, 1)


def _drop_inconsistent(arrows: dict[str, list[int | None]], score: dict[tuple[str, int], float]) -> list[str]:
    """Remove arrows until no two classes share an image and compositions agree; returns what was dropped."""
    dropped: list[str] = []

    def weakest(cands: list[tuple[str, int]]) -> tuple[str, int]:
        return min(cands, key=lambda c: score.get(c, 0.0))

    changed = True
    while changed:
        changed = False
        for op, images in arrows.items():
            for b in {x for x in images if x is not None}:
                srcs = [(op, a) for a, x in enumerate(images) if x == b]
                if len(srcs) > 1:
                    w = weakest(srcs)
                    arrows[w[0]][w[1]] = None
                    dropped.append(f"{w[0]} on class {w[1]}: shares its image with another class")
                    changed = True
        for g1, g2 in [(a, b) for a in list(arrows) for b in list(arrows)]:
            g3 = compose_ops(g1, g2)
            for a, b in enumerate(arrows[g1]):
                if b is None or arrows[g2][b] is None:
                    continue
                c = arrows[g2][b]
                if g3 == "identity":
                    bad = c != a
                else:
                    bad = g3 in arrows and arrows[g3][a] is not None and arrows[g3][a] != c
                if bad:
                    cands = [(g1, a), (g2, b)] + ([(g3, a)] if g3 != "identity" else [])
                    w = weakest(cands)
                    arrows[w[0]][w[1]] = None
                    dropped.append(f"{w[0]} on class {w[1]}: contradicts {g1} followed by {g2}")
                    changed = True
                    break
            if changed:
                break
    for op in [op for op, v in arrows.items() if all(b is None for b in v)]:
        del arrows[op]
    return dropped


def _inverse(op: str) -> str:
    return next(o for o in SYMMETRY_OPS if compose_ops(op, o) == "identity")


def _complete(arrows: dict[str, list[int | None]], K: int) -> int:
    """Add the arrows that verified ones imply (inverses and compositions); returns how many were added."""
    added = 0
    changed = True
    while changed:
        changed = False
        for g in list(arrows):
            inv = _inverse(g)
            for a, b in enumerate(arrows[g]):
                if b is None:
                    continue
                if inv != "identity" and arrows.setdefault(inv, [None] * K)[b] is None:
                    arrows[inv][b] = a
                    added += 1
                    changed = True
        for g1 in list(arrows):
            for g2 in list(arrows):
                g3 = compose_ops(g1, g2)
                if g3 == "identity":
                    continue
                for a, b in enumerate(arrows[g1]):
                    if b is None or arrows[g2][b] is None:
                        continue
                    if arrows.setdefault(g3, [None] * K)[a] is None:
                        arrows[g3][a] = arrows[g2][b]
                        added += 1
                        changed = True
    for op in [op for op, v in arrows.items() if all(b is None for b in v)]:
        del arrows[op]
    return added


def _declared_unchecked(result: SymmetryMap, declared: Mapping[str, float | str], why: str) -> SymmetryMap:
    """No test is possible (``why``): use the declared directions, saying they are unchecked, or nothing."""
    result.skipped = {op: why for op in SYMMETRY_OPS[1:]}
    if not declared:
        return result
    result.arrows = declared_arrows(declared, result.class_names)
    result.status = "declared"
    result.messages.append(f"the declared class directions are used unchecked: {why}")
    for op in result.arrows:
        result.skipped.pop(op, None)
    return result


def discover_symmetry(
    scan_patterns: np.ndarray,
    scan_positions: np.ndarray,
    patterns: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    directions: Mapping[str, float | str] | None = None,
    n_components: int = 20,
    seed: int = 0,
) -> SymmetryMap:
    """Find which detector operation maps which class onto which, from the data.

    Parameters
    ----------
    scan_patterns : ndarray, shape (M, H, W)
        Preprocessed patterns of a sample of the scan (a few thousand are
        plenty), square and centred on the optic axis.
    scan_positions : ndarray of int, shape (M, 2)
        Their (row, col) probe positions.
    patterns : ndarray, shape (N, H, W)
        The labelled patterns, preprocessed alike.
    labels : ndarray of int, shape (N,)
        Their class indices into ``class_names``.
    class_names : sequence of str
        Free text: nothing is read from them.
    directions : dict, optional
        Declared class directions (:func:`parse_directions`), a prior to verify.
    n_components : int
        Principal components of the whitened space. 20 rather than the
        linear members' 40: the neighbour distances must not be dominated by
        whitened noise components (measured on the external bubbles scan, 20-label
        random and adaptive sets: 40 components found the full mapping in 14 of
        24 seed/label-set pairs, 20 components in 24 of 24, none wrong).
    seed : int
        Seeds the cross-validation folds; the whitened space is always fitted
        with seed 0 so that the result does not flip with the training seed.

    Returns
    -------
    SymmetryMap

    Raises
    ------
    ValueError
        Shapes that do not match, or patterns that are not square.
    """
    from scipy.spatial import cKDTree

    names = list(class_names)
    K = len(names)
    Xs = np.asarray(scan_patterns, dtype=np.float32)
    X = np.asarray(patterns, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    pos = np.asarray(scan_positions, dtype=np.int64).reshape(-1, 2)
    if Xs.ndim != 3 or Xs.shape[1] != Xs.shape[2]:
        raise ValueError(f"scan_patterns must be (M, H, H) square patterns, found shape {Xs.shape}")
    if X.ndim != 3 or X.shape[1:] != Xs.shape[1:]:
        raise ValueError(f"patterns must be (N, {Xs.shape[1]}, {Xs.shape[2]}) like scan_patterns, found {X.shape}")
    if len(y) != len(X) or len(pos) != len(Xs):
        raise ValueError(f"{len(X)} patterns for {len(y)} labels, {len(Xs)} scan patterns for {len(pos)} positions")
    if len(y) and (y.min() < 0 or y.max() >= K):
        raise ValueError(f"labels must be class indices 0..{K - 1}")
    declared = dict(directions or {})
    counts = np.bincount(y, minlength=K)
    lab = np.flatnonzero(counts >= MIN_LABELS)
    result = SymmetryMap(names)
    if len(lab) < 2 or len(Xs) < 20:
        why = (f"fewer than two classes have {MIN_LABELS} labels" if len(lab) < 2
               else "too few scan patterns to compare with")
        return _declared_unchecked(result, declared, why)
    self_ok = bool((counts >= MIN_LABELS).all())
    n = len(lab)
    keep = np.isin(y, lab)
    yl = np.searchsorted(lab, y[keep])
    space = WhitenedSpace(Xs, n_components, 0)
    Z_scan = {op: space(Xs, op) for op in SYMMETRY_OPS}
    Z_lab = {op: space(X[keep], op) for op in SYMMETRY_OPS}

    # Pseudo-labels carry information only if the labels are separable at all.
    ll_without, acc_without = _cv_scores(Z_lab, yl, n, {}, seed)
    chance = max(float(np.bincount(yl).max() / len(yl)), 1.0 / n)
    margin = max(0.15, 2.0 * math.sqrt(chance * (1 - chance) / len(yl)))
    if acc_without < chance + margin:
        why = (f"a linear classifier tells the labelled classes apart only {100 * acc_without:.0f} % of the time "
               f"(chance {100 * chance:.0f} %): nothing to compare transformed patterns with yet")
        result.evidence = {"cv_accuracy_without": round(acc_without, 4)}
        return _declared_unchecked(result, declared, why)
    W, b = fit_discriminant(Z_lab["identity"], yl, n)
    P = np.exp(log_proba(W, b, Z_scan["identity"]))  # (M, n) class probabilities of the scan sample
    tree = cKDTree(Z_scan["identity"])
    d_id, j_id = _neighbours(tree, Z_scan["identity"], pos, 3)
    base = np.maximum(d_id[:, 0], 1e-12)
    d_ref, _ = _neighbours(tree, space(_rotate(Xs, 45.0)), pos, 1)
    ratio_ref = float(np.median(d_ref[:, 0] / base))
    # When even a 45-degree rotation lands as close as the original, noise dominates the
    # distances and the test says nothing: every operation is left to the class test.
    limit = 1.0 + _ON_DATA * (ratio_ref - 1.0) if ratio_ref >= _MIN_REFERENCE else math.inf
    weight = P.sum(0)

    def transitions(j: np.ndarray) -> np.ndarray:
        return (P.T @ P[j].mean(1)) / np.maximum(weight, 1e-12)[:, None]  # V[a, b]

    V_id = transitions(j_id)
    arrows: dict[str, list[int | None]] = {}
    strength: dict[tuple[str, int], float] = {}
    evidence: dict[str, Any] = {"reference_ratio_rot45": round(ratio_ref, 3),
                                "on_data_limit": round(limit, 3) if math.isfinite(limit) else None}
    V_all: dict[str, np.ndarray] = {}
    on_data: dict[str, bool] = {}
    for op in SYMMETRY_OPS[1:]:
        d_g, j_g = _neighbours(tree, Z_scan[op], pos, 3)
        r = float(np.median(d_g[:, 0] / base))
        on_data[op] = r <= limit
        V = V_all[op] = transitions(j_g)
        ev: dict[str, Any] = {"distance_ratio": round(r, 3), "on_data": on_data[op], "classes": {}}
        images: list[int | None] = [None] * K
        for ai in range(n):
            order = np.argsort(-V[ai])
            bi = int(order[0])
            second = float(V[ai, order[1]]) if n > 1 else 0.0
            agree = float(V[ai, bi])
            reason = "kept"
            if not on_data[op]:
                reason = "the operation leads off the scan's patterns"
            elif agree < _AGREEMENT * V_id[ai, ai]:
                reason = "no class collects enough of its transformed patterns"
            elif agree < _MARGIN * second:
                reason = "no clear margin over the runner-up"
            elif bi == ai and not self_ok:
                reason = "maps the class onto itself, which cannot be told from a class without labels"
            ev["classes"][names[lab[ai]]] = {
                "image": names[lab[bi]], "agreement": round(agree, 3),
                "runner_up": names[lab[int(order[1])]] if n > 1 else None, "runner_up_agreement": round(second, 3),
                "self_agreement": round(float(V_id[ai, ai]), 3), "decision": reason,
            }
            if reason == "kept":
                images[lab[ai]] = int(lab[bi])
                strength[(op, int(lab[ai]))] = agree / max(second, 1e-6)
        tested = [c for c in ev["classes"].values() if "without labels" not in c["decision"]]
        kept = sum(c["decision"] == "kept" for c in tested)
        ev["support"] = f"{kept} of {len(tested)} classes"
        if on_data[op] and tested and kept < _SUPPORT * len(tested):
            # One class that happens to land on another is no evidence for the operation.
            for c in ev["classes"].values():
                if c["decision"] == "kept":
                    c["decision"] = f"too few classes map clearly under this operation ({kept} of {len(tested)})"
            images = [None] * K
        evidence[op] = ev
        if any(x is not None for x in images):
            arrows[op] = images
    result.messages += [f"dropped {m}" for m in _drop_inconsistent(arrows, strength)]
    # Verified arrows imply their inverses and compositions (a group action); an arrow
    # that conflicts with them was wrong, and is dropped with the weakest evidence.
    for _ in range(4):
        if not _complete(arrows, K):
            break
        dropped = _drop_inconsistent(arrows, strength)
        result.messages += [f"dropped {m}" for m in dropped if f"dropped {m}" not in result.messages]
        if not dropped:
            break
    else:  # completing and dropping keep undoing each other: the arrows do not form a group action
        result.messages.append("the arrows found do not form a consistent set of symmetries and are not used")
        arrows = {}

    if declared:
        implied = declared_arrows(declared, names)
        unchecked = 0
        for op, images in implied.items():
            for a, bd in enumerate(images):
                if bd is None:
                    continue
                if not on_data[op]:
                    result.messages.append(
                        f"the declared directions contradict the data: {op} leads off the scan's patterns, so it "
                        f"cannot map {names[a]} onto {names[bd]}"
                    )
                    continue
                if counts[a] < MIN_LABELS or counts[bd] < MIN_LABELS:
                    # nothing to check it with yet: the prior is used, and said to be unchecked
                    if arrows.get(op, [None] * K)[a] is None:
                        arrows.setdefault(op, [None] * K)[a] = bd
                        strength[(op, a)] = 0.5
                        unchecked += 1
                    continue
                found = arrows.get(op, [None] * K)[a]
                if found is not None and found != bd:
                    result.messages.append(
                        f"the declared directions contradict the data: {op} maps {names[a]} onto {names[found]}, "
                        f"not {names[bd]}"
                    )
                    continue
                if found is None:
                    ai, bi = int(np.searchsorted(lab, a)), int(np.searchsorted(lab, bd))
                    V = V_all[op]
                    if V[ai, bi] >= 0.5 * V[ai].max():
                        arrows.setdefault(op, [None] * K)[a] = bd
                        strength[(op, a)] = 1.0
                    else:
                        best = int(lab[int(V[ai].argmax())])
                        result.messages.append(
                            f"the declared directions contradict the data: {op} maps {names[a]} onto "
                            f"{names[best]}, not {names[bd]}"
                        )
        if unchecked:
            result.messages.append(
                f"{unchecked} arrows of the declared directions are used unchecked: their classes have fewer than "
                f"{MIN_LABELS} labels"
            )
        result.messages += [f"dropped {m}" for m in _drop_inconsistent(arrows, strength)]

    if arrows:
        sub = {op: [None if x is None else int(np.searchsorted(lab, x)) if x in lab else None
                    for x in (v[k] for k in lab)] for op, v in arrows.items()}
        ll_with, _ = _cv_scores(Z_lab, yl, n, sub, seed)
        evidence["cv_loglik_with"] = round(ll_with, 4)
        evidence["cv_loglik_without"] = round(ll_without, 4)
        if ll_with < ll_without - _HARM:
            result.messages.append(
                f"the operations found made held-out labels less likely ({ll_with:.3f} vs {ll_without:.3f} per "
                "label with a linear classifier) and are not used"
            )
            arrows = {}
    result.arrows = arrows
    result.evidence = evidence
    result.status = ("declared" if declared else "found") if arrows else "none"
    for op in SYMMETRY_OPS[1:]:
        if op in arrows:
            continue
        ev = evidence.get(op, {})
        if not ev.get("on_data", True):
            result.skipped[op] = "leads off the scan's patterns (not a symmetry of this data)"
        else:
            reasons = sorted({c["decision"] for c in ev.get("classes", {}).values() if c["decision"] != "kept"})
            result.skipped[op] = "; ".join(reasons) or "dropped as inconsistent"
    return result
