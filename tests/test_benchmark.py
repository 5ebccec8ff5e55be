"""The label-efficiency benchmark: metrics, the oracle, and a fast end-to-end run on the tiny preset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from polmap.evaluation import benchmark as bm
from polmap.evaluation.benchmark import BenchmarkConfig, Oracle, score_map
from polmap.analysis.walls import domain_walls, near_wall_mask

# Small and quick: a couple of epochs, two members (the numbers are not the point here).
FAST_TRAIN = {"epochs": 2, "n_members": 2, "samples_per_epoch": 32, "batch_size": 16}
FAST_PAPER = {"epochs": 1, "samples_per_epoch": 8, "batch_size": 8}


# ---------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------
def test_wall_mask_marks_both_sides_and_ignores_unknown() -> None:
    t = np.zeros((4, 6), dtype=int)
    t[:, 3:] = 1
    t[0, 0] = -1
    w = domain_walls(t)
    assert w[:, 2].all() and w[:, 3].all()
    assert w.sum() == 8
    # An unknown position next to a known one is not a wall.
    assert not w[0, 1] and not w[1, 0]


def test_near_wall_distance_and_unknown_excluded() -> None:
    t = np.zeros((5, 12), dtype=int)
    t[:, 6:] = 1
    t[2, 8] = -1
    m = near_wall_mask(t, 2.0)
    # walls at cols 5 and 6; within 2 px: cols 3..8
    assert m[:, 3:9].sum() == 5 * 6 - 1
    assert not m[:, :3].any() and not m[:, 9:].any()
    assert not m[2, 8]
    assert not near_wall_mask(np.zeros((3, 3), int)).any()


def test_score_map_values() -> None:
    truth = np.array([[0, 0, 1, 1], [0, 0, 1, -1]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 0, 0]])
    near = near_wall_mask(truth, 1.0)
    lab = np.zeros_like(truth, dtype=bool)
    lab[0, 0] = True
    s = score_map(pred, truth, near_wall=near, labelled=lab)
    assert s["accuracy"] == pytest.approx(5 / 7)
    assert s["accuracy_unlabelled"] == pytest.approx(4 / 6)
    # F1: class 0: tp 3, fp 1, fn 1 -> 0.75; class 1: tp 2, fp 1, fn 1 -> 2/3
    assert s["macro_f1"] == pytest.approx((0.75 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="does not match"):
        score_map(pred[:, :3], truth)


# ---------------------------------------------------------------------------------
# the oracle
# ---------------------------------------------------------------------------------
def test_oracle_answers_only_what_is_asked() -> None:
    truth = np.arange(12).reshape(3, 4) % 3
    truth[1, 1] = -1
    o = Oracle(truth)
    assert not o.asked_mask.any() and o.n_asked == 0
    assert o.ask([[0, 1], [2, 3]]).tolist() == [1, 2]
    assert o.n_asked == 2 and o.asked_mask[0, 1] and o.asked_mask[2, 3]
    with pytest.raises(ValueError, match="unknown"):
        o.ask([[1, 1]])
    with pytest.raises(ValueError, match="outside"):
        o.ask([[3, 0]])
    assert o.n_asked == 2
    # No public attribute holds the truth; `valid` is class-agnostic and read-only.
    public = {k: v for k, v in vars(o).items() if not k.startswith("_")}
    assert set(public) == {"valid", "n_queries"}
    with pytest.raises(ValueError):
        o.valid[0, 0] = False


# ---------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------
def test_config_validation() -> None:
    c = BenchmarkConfig(budgets=[20, 10, 20], strategies=["random"], seeds=[1], paper_budget=None).checked()
    assert list(c.budgets) == [10, 20]
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        BenchmarkConfig(strategies=["nope"]).checked()
    with pytest.raises(ValueError, match="positive"):
        BenchmarkConfig(budgets=[0, 5]).checked()
    with pytest.raises(ValueError, match="paper_budget"):
        BenchmarkConfig(budgets=[10, 20], paper_budget=50).checked()
    with pytest.raises(ValueError, match="unknown model"):
        BenchmarkConfig(model="resnet", paper_budget=None).checked()
    with pytest.raises(ValueError, match="paper_preprocess must be 'paper' or 'compact', found 'log'"):
        BenchmarkConfig(budgets=[50], paper_preprocess="log").checked()


# ---------------------------------------------------------------------------------
# end to end on the tiny preset
# ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    from polmap.io import open_dataset
    from polmap.simulate import demo_path

    path = demo_path(tmp_path_factory.mktemp("bench-cache"), preset="tiny")
    ds = open_dataset(path)
    yield ds
    ds.close()


@pytest.fixture
def small_paper_net(monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper's network on 32 px inputs instead of 256 px: same code path, a fraction of the CPU time."""
    import polmap.learn.model as pm

    real = pm.default_preprocess

    def fake(name: str = "compact"):
        d = real(name)
        if name == "paper":
            d["output_size"] = 32
        return d

    monkeypatch.setattr(pm, "default_preprocess", fake)


def test_paper_network_on_polmap_preprocessing(tiny) -> None:
    # The paper's network on polmap's 48 px patterns: its own row, and no speed ratio
    # (a 48 px network is not the published 256 px one).
    cfg = BenchmarkConfig(budgets=[12], strategies=["random"], seeds=[0], train=FAST_TRAIN, paper_budget=12,
                          paper_strategy="random", paper_train=FAST_PAPER, paper_preprocess="compact", pca_knn=False)
    res = bm.run_benchmark(tiny, tiny.ground_truth.label_map, cfg, class_names=tiny.ground_truth.class_names)
    paper = res["baselines"]["paper"]
    assert paper["preprocess_name"] == "compact" and paper["preprocess"]["output_size"] == 48
    assert 0 <= paper["summary"]["accuracy"]["mean"] <= 1
    assert "inference_speed_ratio_vs_paper" not in res["speed"] and "paper_patterns_per_s" not in res["speed"]
    assert "paper ThreeLayerCnn (random labels, compact preprocessing)" in bm.markdown_table(res)


def test_run_benchmark_tiny(tiny, tmp_path, small_paper_net) -> None:
    truth = tiny.ground_truth.label_map.astype(np.int64).copy()
    truth[:3, :5] = -1  # unknown positions: never asked, never scored
    n_known = int((truth >= 0).sum())
    asked_log: list[tuple[str, int, np.ndarray, np.ndarray]] = []
    suggest_calls: list[tuple[int, int]] = []

    from polmap.learn import sampling

    def spy_suggest(strategy, shape, pos, cls, budget, **kw):
        # Whatever the strategy sees was revealed by the oracle, and unknown truth is excluded.
        pos = np.asarray(pos).reshape(-1, 2)
        assert len(pos) == len(cls)
        if len(pos):
            assert (truth[pos[:, 0], pos[:, 1]] == np.asarray(cls)).all()
        ex = {tuple(p) for p in np.asarray(kw["exclude"]).tolist()}
        assert ex == {tuple(p) for p in np.argwhere(truth < 0).tolist()}
        suggest_calls.append((len(pos), budget))
        return sampling.suggest(strategy, shape, pos, cls, budget, **kw)

    def on_train(strategy, seed, pos, cls, oracle):
        m = np.zeros(truth.shape, bool)
        m[pos[:, 0], pos[:, 1]] = True
        # The trainer gets exactly the positions the oracle revealed, each once, with their true classes.
        assert (oracle.asked_mask == m).all() and len(pos) == m.sum()
        assert (truth[pos[:, 0], pos[:, 1]] == cls).all()
        asked_log.append((strategy, seed, pos, cls))

    cfg = BenchmarkConfig(
        budgets=[6, 12], strategies=["random", "bisection", "adaptive"], seeds=[0], round_size=3,
        train=FAST_TRAIN, paper_budget=12, paper_train=FAST_PAPER,
    )
    lines: list[str] = []
    res = bm.run_benchmark(tiny, truth, cfg, class_names=tiny.ground_truth.class_names, progress=lines.append,
                           command="test", _hooks={"suggest": spy_suggest, "on_train": on_train})

    # structure
    assert res["format"] == "polmap-benchmark"
    assert res["dataset"]["n_known"] == n_known
    assert set(res["strategies"]) == {"random", "bisection", "adaptive"}
    for name, st in res["strategies"].items():
        assert list(st["budgets"]) == ["6", "12"]
        for b, row in st["budgets"].items():
            for k in ("accuracy", "accuracy_wall", "macro_f1", "accuracy_unlabelled", "pca_knn_accuracy"):
                assert 0.0 <= row[k]["mean"] <= 1.0 and row[k]["n"] == 1, (name, b, k)
            assert row["train_s"]["mean"] >= 0
        (run,) = st["runs"]
        for cp in run["checkpoints"]:
            pos = np.asarray(cp["positions"])
            # budgets respected exactly; no repeats; never an unknown position
            assert len(pos) == cp["budget"] == cp["n_labels"]
            assert len({tuple(p) for p in pos.tolist()}) == len(pos)
            assert (truth[pos[:, 0], pos[:, 1]] >= 0).all()
            assert cp["classes"] == truth[pos[:, 0], pos[:, 1]].tolist()
        assert run["oracle_asked"] == 12
    # adaptive retrains after every round (3, 6, 9, 12); the others only at checkpoints
    assert [len(p) for s, _, p, _ in asked_log if s == "adaptive"] == [3, 6, 9, 12]
    assert [len(p) for s, _, p, _ in asked_log if s == "random"] == [6, 12]
    # rounds ask for at most round_size and never past a checkpoint
    assert all(b <= 3 for _, b in suggest_calls)
    # baselines and speed
    conv = res["baselines"]["conventional"]
    assert 0 <= conv["accuracy"] <= 1 and 0 <= conv["accuracy_wall"] <= 1
    paper = res["baselines"]["paper"]
    assert "error" not in paper, paper.get("error")
    assert paper["budget"] == 12 and 0 <= paper["summary"]["accuracy"]["mean"] <= 1
    assert res["speed"]["inference_speed_ratio_vs_paper"] > 0
    assert any("adaptive" in ln for ln in lines)

    # writing: JSON (strict, no NaN), Markdown, PNG
    paths = bm.write_results(res, tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["strategies"]["random"]["budgets"]["12"]["accuracy"]["n"] == 1
    md = (tmp_path / "r.md").read_text()
    assert "| adaptive | 12 |" in md and "conventional" in md and "paper" in md
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(paths) == {"json", "markdown", "png"}


def test_run_benchmark_rejects_bad_truth(tiny) -> None:
    cfg = BenchmarkConfig(budgets=[4], strategies=["random"], seeds=[0], paper_budget=None, train=FAST_TRAIN)
    names = tiny.ground_truth.class_names
    with pytest.raises(ValueError, match="shape"):
        bm.run_benchmark(tiny, np.zeros((3, 3), int), cfg, class_names=names)
    with pytest.raises(ValueError, match="class names"):
        bm.run_benchmark(tiny, tiny.ground_truth.label_map, cfg, class_names=["a", "b"])
    t = np.full(tiny.scan_shape, -1)
    t[0, :3] = 0
    with pytest.raises(ValueError, match="fewer than the largest budget"):
        bm.run_benchmark(tiny, t, cfg, class_names=names)


def test_single_class_round_does_not_crash(tiny) -> None:
    # Every label the same class: no network can be trained; the map is that class everywhere,
    # and so are the baselines' maps: all are scored, so that means over seeds compare the same runs.
    truth = np.zeros(tiny.scan_shape, dtype=np.int64)
    truth[-1, -1] = 1
    cfg = BenchmarkConfig(budgets=[3], strategies=["grid"], seeds=[0], paper_budget=None, train=FAST_TRAIN,
                          pca_knn=True, conventional=False, end_to_end_speed=False)
    res = bm.run_benchmark(tiny, truth, cfg, class_names=["a", "b"])
    cp = res["strategies"]["grid"]["runs"][0]["checkpoints"][0]
    assert cp["single_class"] and cp["classes"] == [0, 0, 0]
    assert cp["accuracy"] == pytest.approx((truth == 0).mean())
    assert cp["linear_accuracy"] == cp["accuracy"] and cp["pca_knn_accuracy"] == cp["accuracy"]
    row = res["strategies"]["grid"]["budgets"]["3"]
    assert row["n_runs"] == 1 and row["n_single_class"] == 1
    assert row["linear_accuracy"]["n"] == row["accuracy"]["n"] == 1
