"""Label-next strategies: the shared contract, the paper's bisection done right,
adaptive and cold-start behaviour on synthetic maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polmap.learn.sampling import (
    STRATEGIES,
    Suggestion,
    dataset_features,
    default_step,
    grid_shape,
    pattern_features,
    seed_grid,
    suggest,
    suggest_detailed,
    uncertainty_map,
    wall_likelihood,
)

SHAPE = (24, 18)


def _two_domain_probs(shape=SHAPE, wall_col=9.0, sharpness=4.0) -> np.ndarray:
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    p1 = 0.5 * (1.0 + np.tanh(0.5 * (cc - wall_col) * sharpness))  # logistic, overflow-free
    return np.stack([1 - p1, p1], axis=-1)


def _inputs(strategy: str, shape=SHAPE) -> dict:
    """Whatever each strategy needs to run."""
    rng = np.random.default_rng(1)
    kw: dict = {}
    if strategy == "adaptive":
        kw["probabilities"] = _two_domain_probs(shape, wall_col=shape[1] / 2)
    if strategy == "cold_start":
        truth = (np.mgrid[: shape[0], : shape[1]][1] >= shape[1] // 2).astype(float)
        kw["features"] = np.stack([truth.ravel() * 4, rng.normal(size=truth.size)], axis=1)
    return kw


def _labels(shape=SHAPE):
    pos = np.array([[0, 0], [5, 5], [10, 3], [23, 17], [12, 9], [12, 10]])
    cls = (pos[:, 1] >= shape[1] // 2).astype(int)
    return pos, cls


# ------------------------------------------------------------------ the shared contract
@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("budget", [0, 1, 7, 40])
def test_contract(strategy, budget):
    pos, cls = _labels()
    exclude = np.array([[1, 1], [2, 2], [20, 15]])
    out = suggest(strategy, SHAPE, pos, cls, budget, exclude=exclude, seed=3, **_inputs(strategy))
    assert out.shape == (budget, 2) and np.issubdtype(out.dtype, np.integer)
    assert np.all((out >= 0) & (out < np.array(SHAPE)))
    assert len({tuple(p) for p in out}) == budget  # unique
    forbidden = {tuple(p) for p in pos} | {tuple(p) for p in exclude}
    assert not forbidden & {tuple(p) for p in out}
    again = suggest(strategy, SHAPE, pos, cls, budget, exclude=exclude, seed=3, **_inputs(strategy))
    np.testing.assert_array_equal(out, again)  # deterministic for a seed


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_budget_beyond_available_returns_everything_left(strategy):
    shape = (4, 5)
    all_pos = np.array([(r, c) for r in range(4) for c in range(5)])
    pos, exclude = all_pos[:12], all_pos[12:15]  # 5 positions remain
    cls = (pos[:, 1] >= 2).astype(int)
    out = suggest(strategy, shape, pos, cls, 10, exclude=exclude, **_inputs(strategy, shape))
    assert sorted(map(tuple, out)) == sorted(map(tuple, all_pos[15:]))
    # Nothing left at all: an empty answer, not an error or a hang.
    full = suggest(strategy, shape, all_pos, (all_pos[:, 1] >= 2).astype(int), 5, **_inputs(strategy, shape))
    assert full.shape == (0, 2)


@settings(max_examples=40, deadline=None)
@given(
    strategy=st.sampled_from(list(STRATEGIES)),
    rows=st.integers(1, 12),
    cols=st.integers(1, 12),
    n_labelled=st.integers(0, 30),
    n_excluded=st.integers(0, 10),
    budget=st.integers(0, 40),
    n_classes=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_contract_holds_for_any_scan(strategy, rows, cols, n_labelled, n_excluded, budget, n_classes, seed):
    rng = np.random.default_rng(seed)
    flat = rng.permutation(rows * cols)
    lab = flat[: min(n_labelled, rows * cols)]
    exc = flat[len(lab) : len(lab) + n_excluded]
    pos = np.stack([lab // cols, lab % cols], axis=1)
    exclude = np.stack([exc // cols, exc % cols], axis=1)
    cls = rng.integers(0, n_classes, size=len(pos))
    kw = {}
    if strategy == "adaptive":
        kw["probabilities"] = rng.dirichlet(np.ones(n_classes + 1), size=(rows, cols))
    if strategy == "cold_start":
        kw["features"] = rng.normal(size=(rows * cols, 3))
    out = suggest(strategy, (rows, cols), pos, cls, budget, exclude=exclude, seed=seed, **kw)
    available = rows * cols - len(lab) - len(exc)
    assert out.shape == (min(budget, available), 2)
    got = {tuple(p) for p in out}
    assert len(got) == len(out)
    assert all(0 <= r < rows and 0 <= c < cols for r, c in got)
    assert not got & ({tuple(p) for p in pos} | {tuple(p) for p in exclude})


def test_random_depends_on_seed_only():
    a = suggest("random", SHAPE, None, None, 10, seed=1)
    b = suggest("random", SHAPE, None, None, 10, seed=2)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, suggest("random", SHAPE, None, None, 10, seed=1))


def test_errors_are_clear():
    pos, cls = _labels()
    with pytest.raises(ValueError, match=r"budget must be >= 0"):
        suggest("random", SHAPE, pos, cls, -1)
    with pytest.raises(ValueError, match="non-negative integer"):
        suggest("random", SHAPE, pos, cls, 2.5)
    with pytest.raises(ValueError, match="non-negative integer"):
        suggest("random", SHAPE, pos, cls, True)
    with pytest.raises(ValueError, match=r"unknown strategy 'smart'.*random, grid, bisection, adaptive, cold_start"):
        suggest("smart", SHAPE, pos, cls, 3)
    with pytest.raises(ValueError, match=r"labelled_positions: position \(row=24, col=0\) is outside the scan"):
        suggest("grid", SHAPE, [[24, 0]], [0], 3)
    with pytest.raises(ValueError, match=r"exclude: position \(row=0, col=-1\)"):
        suggest("grid", SHAPE, pos, cls, 3, exclude=[[0, -1]])
    with pytest.raises(ValueError, match="labelled_classes has 2 entries but labelled_positions has 6"):
        suggest("grid", SHAPE, pos, [0, 1], 3)
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        suggest("grid", SHAPE, [1, 2, 3], [0, 1, 1], 3)
    with pytest.raises(ValueError, match="probabilities must have shape"):
        suggest("adaptive", SHAPE, pos, cls, 3, probabilities=np.ones((3, 3, 2)))
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['stepp'\].*'step'"):
        suggest("bisection", SHAPE, pos, cls, 3, stepp=4)
    with pytest.raises(ValueError, match="cold_start needs features"):
        suggest("cold_start", SHAPE, pos, cls, 3)
    with pytest.raises(ValueError, match="step must be a positive integer"):
        suggest("bisection", SHAPE, pos, cls, 3, step=0)
    with pytest.raises(ValueError, match="scan_shape"):
        suggest("grid", (0, 5), None, None, 3)


# ------------------------------------------------------------------------ grid
def test_grid_is_a_true_2d_grid_with_the_scan_aspect():
    out = suggest("grid", (40, 40), None, None, 16)
    assert sorted(set(out[:, 0])) == [5, 15, 25, 35] and sorted(set(out[:, 1])) == [5, 15, 25, 35]
    # A tall scan gets more rows than columns (not swapped): 8 x 2 cells of 25 x 25.
    tall = suggest("grid", (200, 50), None, None, 16)
    assert sorted(set(tall[:, 0])) == list(range(12, 200, 25)) and sorted(set(tall[:, 1])) == [12, 37]
    assert grid_shape((206, 34), 50) == (17, 3)
    assert grid_shape((1, 100), 7) == (1, 7)


def test_grid_moves_taken_nodes_to_the_nearest_free_position():
    s = suggest_detailed("grid", (40, 40), [[5, 5]], [0], 16)
    pts = {tuple(p) for p in s.positions}
    assert (5, 5) not in pts and len(pts) == 16
    moved = [tuple(p) for p, r, sc in zip(s.positions, s.reasons, s.scores) if sc == 0.5]
    assert len(moved) == 1 and math.dist(moved[0], (5, 5)) == 1.0


# ------------------------------------------------------------------- bisection
def test_seed_grid_matches_the_paper_and_is_not_sheared():
    g = seed_grid((206, 34), 30)
    assert len(g) == 14  # the paper's 14 grid points
    assert sorted(set(g[:, 0])) == [12, 42, 72, 102, 132, 162, 192]
    assert sorted(set(g[:, 1])) == [1, 31]
    assert default_step((206, 34)) == 21


def test_bisection_halves_the_gap_towards_the_wall():
    shape = (1, 11)
    s = suggest_detailed("bisection", shape, None, None, 5, step=10, fill="none")
    assert sorted(map(tuple, s.positions)) == [(0, 0), (0, 10)] and s.reasons == ("grid", "grid")
    truth = lambda c: int(c >= 4)  # noqa: E731  (wall between columns 3 and 4)
    pos, cls = [(0, 0), (0, 10)], [0, 1]
    steps = []
    for _ in range(10):
        s = suggest_detailed("bisection", shape, pos, cls, 1, step=10, fill="none")
        if not len(s):
            break
        (r, c), = s.positions
        assert s.reasons == ("wall",)
        steps.append(int(c))
        pos.append((r, c))
        cls.append(truth(c))
    # 0|10 -> 5 ; 0|5 -> 3 ; 3|5 -> 4 ; then 3|4 are neighbours: the bracket is closed.
    assert steps[:3] == [5, 3, 4]
    assert len(steps) < 10  # terminates
    assert {3, 4} <= {c for _, c in pos}


def test_bisection_terminates_when_all_labels_agree():
    g = seed_grid(SHAPE, 6)
    cls = np.zeros(len(g), dtype=int)
    none = suggest_detailed("bisection", SHAPE, g, cls, 5, step=6, fill="none")
    assert len(none) == 0 and "agree" in none.message
    s = suggest_detailed("bisection", SHAPE, g, cls, 5, step=6)
    assert len(s) == 5 and set(s.reasons) == {"explore"} and "agree" in s.message
    assert not {tuple(p) for p in g} & {tuple(p) for p in s.positions}


def _wall_distance(pos: np.ndarray) -> np.ndarray:
    # True wall: col = 20 + 0.4 * row  (label 1 to its right).
    r, c = pos[:, 0].astype(float), pos[:, 1].astype(float)
    return np.abs(c - 20 - 0.4 * r) / math.sqrt(1 + 0.4**2)


def test_bisection_with_an_oracle_converges_to_the_wall_and_never_repeats():
    shape = (60, 60)
    rr, cc = np.mgrid[:60, :60]
    truth = (cc >= 20 + 0.4 * rr).astype(int)
    pos = np.zeros((0, 2), int)
    cls = np.zeros(0, int)
    wall_rounds = []
    for _ in range(200):
        s = suggest_detailed("bisection", shape, pos, cls, 8, step=12, fill="none")
        if len(s) == 0:
            break
        seen = {tuple(p) for p in pos}
        assert not seen & {tuple(p) for p in s.positions}
        walls = s.positions[np.array(s.reasons) == "wall"]
        if len(walls):
            wall_rounds.append(_wall_distance(walls).mean())
        pos = np.vstack([pos, s.positions])
        cls = np.concatenate([cls, truth[s.positions[:, 0], s.positions[:, 1]]])
    else:
        pytest.fail("bisection did not terminate in 200 rounds")
    assert len({tuple(p) for p in pos}) == len(pos)
    # Wall proposals close in on the wall: the first round brackets it at ~step/2,
    # the last rounds sit on it.
    assert wall_rounds[0] > 2.0
    assert np.mean(wall_rounds[-3:]) < 1.0
    assert np.mean(wall_rounds[-3:]) < 0.4 * wall_rounds[0]
    # The labels found cover the wall along its whole length, not one spot.
    near = pos[_wall_distance(pos) < 1.5]
    assert near[:, 0].min() < 10 and near[:, 0].max() > 50


# ---------------------------------------------------------------------- adaptive
def test_uncertainty_and_wall_maps():
    p = np.array([[[1.0, 0, 0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0], [0.7, 0.2, 0.1]]])
    np.testing.assert_allclose(uncertainty_map(p, "entropy")[0, :2], [0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(uncertainty_map(p, "margin")[0], [0.0, 1.0, 1.0, 0.5], atol=1e-12)
    cc = np.mgrid[:5, :8][1]
    hard = np.stack([cc < 4, cc >= 4], axis=-1).astype(float)
    w = wall_likelihood(hard)
    np.testing.assert_allclose(w[:, 3:5], 1.0)
    np.testing.assert_allclose(np.delete(w, [3, 4], axis=1), 0.0)


def test_adaptive_picks_the_wall_and_the_uncertain_blob_with_spacing():
    shape = (40, 40)
    probs = _two_domain_probs(shape, wall_col=29.5, sharpness=50)
    rr, cc = np.mgrid[:40, :40]
    blob = (rr - 10) ** 2 + (cc - 8) ** 2 <= 9
    probs[blob] = 0.5  # the model cannot decide here
    s = suggest_detailed(
        "adaptive", shape, [[20, 5]], [0], 6, probabilities=probs, min_spacing=6, explore=0, max_wall_share=1
    )
    on_wall = np.abs(s.positions[:, 1] - 29.5) <= 1
    in_blob = blob[s.positions[:, 0], s.positions[:, 1]]
    assert np.all(on_wall | in_blob) and on_wall.any() and in_blob.any()
    assert set(s.reasons) <= {"wall", "uncertain", "uncertain region"}
    assert set(np.array(s.reasons)[on_wall]) == {"wall"}
    assert set(np.array(s.reasons)[in_blob]) <= {"uncertain", "uncertain region"}
    d = np.hypot(*(s.positions[:, None, :] - s.positions[None, :, :]).transpose(2, 0, 1))
    assert d[np.triu_indices(6, 1)].min() >= 6  # no clustering
    assert np.all(s.scores > 0.19)  # weighted mean of uncertainty, wall (0.5) and region: a sharp wall alone scores 0.2


def test_adaptive_explores_where_a_confident_model_has_no_labels():
    # A model sure of itself everywhere except one wall; the labels all sit on the right.
    # 40 % of the picks go to the positions farthest from every label (left edge).
    shape = (30, 60)
    probs = _two_domain_probs(shape, wall_col=44.5, sharpness=50)
    labelled = [[5, 50], [15, 40], [25, 55], [10, 35]]
    s = suggest_detailed("adaptive", shape, labelled, [0, 0, 1, 0], 10, probabilities=probs)
    assert s.reasons.count("explore") == 4 and s.params["explore"] == 0.4
    exp = s.positions[np.array(s.reasons) == "explore"]
    assert exp[0, 1] <= 5  # first the unlabelled far left
    lab = np.array(labelled)
    d_lab = np.hypot(*(exp[:, None, :] - lab[None, :, :]).transpose(2, 0, 1)).min(axis=1)
    assert d_lab.min() >= 10  # all of them far from every label
    assert "4 explore" in s.message
    off = suggest_detailed("adaptive", shape, labelled, [0, 0, 1, 0], 10, probabilities=probs, explore=0)
    assert "explore" not in off.reasons
    # A single pick never goes to exploration.
    assert "explore" not in suggest_detailed("adaptive", shape, labelled, [0, 0, 1, 0], 1, probabilities=probs).reasons
    with pytest.raises(ValueError, match="explore must be a share"):
        suggest_detailed("adaptive", shape, labelled, [0, 0, 1, 0], 3, probabilities=probs, explore=1.5)


def test_adaptive_prefers_an_uncertain_region_to_an_equally_uncertain_line():
    # Same peak uncertainty (0.5/0.5 between two classes) on a 1 px line and on a 9 x 9 square:
    # the region term sends the first pick into the square, where a whole domain is in doubt.
    shape = (40, 40)
    probs = np.zeros(shape + (2,))
    probs[..., 0] = 1.0
    probs[:, 30] = 0.5
    probs[5:14, 5:14] = 0.5
    kw = dict(probabilities=probs, min_spacing=3, explore=0, w_wall=0.0)
    s = suggest_detailed("adaptive", shape, [[35, 20]], [0], 1, **kw)
    assert 5 <= s.positions[0, 0] < 14 and 5 <= s.positions[0, 1] < 14
    assert s.reasons[0] == "uncertain region"
    # Without it the two are a tie that the seed decides; the line, being 40 px long, wins some seeds.
    picks = [suggest_detailed("adaptive", shape, [[35, 20]], [0], 1, w_region=0.0, seed=k, **kw).positions[0]
             for k in range(12)]
    assert any(p[1] == 30 for p in picks)


def test_adaptive_relaxes_spacing_instead_of_failing():
    shape = (10, 10)
    probs = _two_domain_probs(shape, wall_col=4.5, sharpness=50)
    s = suggest_detailed(
        "adaptive", shape, None, None, 30, probabilities=probs, min_spacing=8, explore=0, max_wall_share=1
    )
    assert len(s) == 30 and "relaxed" in s.message
    # Spacing first: two wall picks >= 8 px apart (no third fits), then relaxed
    # spacing with spaced-out coverage ("diverse"), and once crowded, the
    # remaining wall pixels.
    first = s.positions[:3]
    assert set(first[:, 1]) <= {4, 5} and s.reasons[:3] == ("wall",) * 3
    assert math.dist(first[0], first[1]) >= 8
    assert "diverse" in s.reasons
    assert set(s.reasons[-5:]) == {"wall"}


def test_adaptive_caps_the_share_of_labels_on_walls():
    # One sharp wall between two confident domains: only the wall is uncertain. Of all
    # labels (4 old + 12 new) at most a quarter may sit on predicted walls (cols 19, 20).
    shape = (40, 40)
    probs = _two_domain_probs(shape, wall_col=19.5, sharpness=50)
    labelled = [[5, 5], [35, 5], [5, 35], [35, 35]]
    kw = dict(probabilities=probs, explore=0, min_spacing=4)
    s = suggest_detailed("adaptive", shape, labelled, [0, 0, 1, 1], 12, **kw)
    on_wall = np.isin(s.positions[:, 1], [19, 20])
    assert on_wall.sum() == 4 and s.params["max_wall_share"] == 0.25
    assert set(np.array(s.reasons)[on_wall]) == {"wall"} and not set(np.array(s.reasons)[~on_wall]) & {"wall"}
    assert "walls hold 25% of all labels" in s.message
    # Labels already on the wall count against the quota.
    s2 = suggest_detailed("adaptive", shape, labelled + [[10, 19], [30, 20]], [0, 0, 1, 1, 0, 1], 12, **kw)
    assert np.isin(s2.positions[:, 1], [19, 20]).sum() == 2
    # Uncapped, the uncertain wall takes every pick that the spacing allows.
    free = suggest_detailed("adaptive", shape, labelled, [0, 0, 1, 1], 12, max_wall_share=1, **kw)
    assert np.isin(free.positions[:, 1], [19, 20]).sum() > 4 and "walls hold" not in free.message
    with pytest.raises(ValueError, match="max_wall_share must be a share"):
        suggest_detailed("adaptive", shape, labelled, [0, 0, 1, 1], 3, probabilities=probs, max_wall_share=-0.1)


def test_adaptive_without_a_model_falls_back():
    feats = _inputs("cold_start")["features"]
    s = suggest_detailed("adaptive", SHAPE, None, None, 6, features=feats)
    assert s.strategy == "cold_start" and "no model" in s.message
    e = suggest_detailed("adaptive", SHAPE, None, None, 6)
    assert len(e) == 6 and set(e.reasons) == {"explore"}


# -------------------------------------------------------------------- cold start
def test_cold_start_covers_every_cluster_then_their_borders():
    shape = (40, 30)
    rr, cc = np.mgrid[:40, :30]
    regions = (rr >= 20).astype(int) * 2 + (cc >= 12).astype(int)  # 4 quadrant-like regions
    rng = np.random.default_rng(0)
    means = rng.normal(scale=5, size=(4, 6))
    feats = means[regions.ravel()] + rng.normal(scale=0.3, size=(regions.size, 6))
    s = suggest_detailed("cold_start", shape, None, None, 12, features=feats, n_clusters=4)
    assert isinstance(s, Suggestion) and s.params["n_clusters_found"] == 4
    reps = s.positions[:4]
    assert all(r.startswith("cluster") for r in s.reasons[:4])
    assert sorted(regions[reps[:, 0], reps[:, 1]]) == [0, 1, 2, 3]  # one per true region
    borders = s.positions[[r.startswith("between") for r in s.reasons]]
    assert len(borders) >= 4
    on_boundary = (np.abs(borders[:, 0] - 19.5) <= 1) | (np.abs(borders[:, 1] - 11.5) <= 1)
    assert on_boundary.all()


def test_cold_start_puts_unlabelled_clusters_first():
    shape = (20, 20)
    cc = np.mgrid[:20, :20][1]
    regions = (cc >= 10).astype(int)
    feats = np.stack([regions.ravel() * 10.0, np.zeros(regions.size)], axis=1)
    s = suggest_detailed("cold_start", shape, [[5, 2]], [0], 1, features=feats, n_clusters=2)
    assert regions[tuple(s.positions[0])] == 1  # the cluster nobody labelled yet


def test_cold_start_finds_a_small_domain_with_one_cluster_per_pick():
    # Four large regions and one small one (3 % of the scan), each with its own pattern
    # statistics. With the default (one cluster per pick) the small one gets a representative.
    shape = (40, 50)
    rr, cc = np.mgrid[:40, :50]
    regions = (rr >= 20).astype(int) * 2 + (cc >= 25).astype(int)
    regions[(rr - 10) ** 2 + (cc - 10) ** 2 <= 16] = 4  # the small domain: 49 of 2,000 positions
    rng = np.random.default_rng(1)
    means = rng.normal(scale=3, size=(5, 8))
    hits = 0
    for seed in range(5):
        feats = means[regions.ravel()] + rng.normal(scale=1.0, size=(regions.size, 8))
        s = suggest_detailed("cold_start", shape, None, None, 8, features=feats, seed=seed)
        assert s.params["n_clusters"] == 8
        hits += int(4 in set(regions[s.positions[:, 0], s.positions[:, 1]]))
    assert hits == 5


def test_cold_start_accepts_a_virtual_image():
    img = np.zeros(SHAPE)
    img[:, 9:] = 1.0
    s = suggest_detailed("cold_start", SHAPE, None, None, 4, virtual_image=img, n_clusters=2)
    assert len(s) == 4
    assert {int(img[tuple(p)]) for p in s.positions[:2]} == {0, 1}


# ------------------------------------------------------------------- features
def test_pattern_features_are_the_pooled_pattern_and_its_antisymmetric_parts():
    x = np.zeros((2, 8, 8), np.float32)
    x[0, :, :4] = 1.0  # left half bright: antisymmetric under a left-right mirror
    x[1] = 1.0  # symmetric: no antisymmetric part at all
    f = pattern_features(x, pool=4)
    assert f.shape == (2, 3 * 2 * 2)
    np.testing.assert_allclose(f[0, :4], [1, 0, 1, 0])  # pooled pattern
    np.testing.assert_allclose(f[0, 4:8], [1, -1, 1, -1])  # x - mirror_lr(x)
    np.testing.assert_allclose(f[0, 8:], 0)  # x - mirror_ud(x)
    np.testing.assert_allclose(f[1, 4:], 0)
    with pytest.raises(ValueError, match="smaller than the pooling factor"):
        pattern_features(np.zeros((1, 2, 2)), pool=4)


def test_dataset_features_chunked_equal_the_whole_scan_at_once():
    from polmap.learn.model import default_preprocess
    from polmap.process.preprocess import PreprocessConfig, Preprocessor
    from polmap.simulate import simulate_scan

    from polmap.io.dataset import Dataset4D

    ds = Dataset4D.from_array(simulate_scan("tiny").data)
    R, C = ds.scan_shape
    seen = []
    row_bytes = C * int(np.prod(ds.detector_shape)) * ds.dtype.itemsize
    f = dataset_features(ds, progress=lambda done, total: seen.append((done, total)), max_bytes=3 * row_bytes)
    assert len(seen) > 1 and seen[-1] == (R, R)  # several chunks, all rows
    pre = Preprocessor(PreprocessConfig(**default_preprocess("compact"))).fit(ds)
    rr, cc = np.mgrid[:R, :C]
    X = pre.transform_positions(ds, np.stack([rr.ravel(), cc.ravel()], 1))
    assert f.shape[0] == R * C
    np.testing.assert_allclose(f, pattern_features(X), rtol=1e-5, atol=1e-6)


def test_a_strategy_that_breaks_the_budget_contract_raises_even_under_python_O(monkeypatch) -> None:
    import polmap.learn.sampling as sampling

    def short(ctx):  # one position fewer than asked for
        return Suggestion(np.array([[0, 0]]), np.array([0.0]), ("random",), "random", "", {})

    monkeypatch.setitem(sampling._IMPL, "random", short)
    with pytest.raises(RuntimeError, match="returned 1 positions for a budget of 3"):
        suggest_detailed("random", SHAPE, None, None, 3)
