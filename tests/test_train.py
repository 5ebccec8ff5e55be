"""Training: input checks, honest validation, determinism, callbacks, safe checkpoints."""

from __future__ import annotations

import io
import json
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from polmap.learn.augment import AugmentConfig
from polmap.process.detector_symmetry import SYMMETRY_OPS
from polmap.learn.symmetry import SymmetryMap, declared_arrows
from polmap.learn.train import (
    CheckpointError,
    TrainConfig,
    TrainedModel,
    TrainingCancelled,
    gate_members,
    make_folds,
    assess,
    resolve_device,
    train_model,
)



SIGNED = ["none", "+x", "-x", "+y", "-y"]
_VEC = {"none": (0, 0), "+x": (0, 1), "-x": (0, -1), "+y": (1, 0), "-y": (-1, 0)}
# The toy classes' geometry, declared (as a user or a file would); names are just labels.
SYMMETRY = SymmetryMap(
    SIGNED, declared_arrows({"none": "invariant", "+x": 0, "-x": 180, "+y": 90, "-y": 270}, SIGNED), "declared"
)


def toy_patterns(
    labels: np.ndarray, size: int = 32, asym: float = 0.3, dose: float = 3000.0, seed: int = 0
) -> np.ndarray:
    """Centred 3 x 3 disk lattices, sqrt-scaled and max-normalised like the compact preprocessing.

    A polar class brightens the first-order disk along its direction (Friedel
    asymmetry) and dims the opposite one; thickness scales all diffracted disks
    and a random mistilt adds a small asymmetry of its own, as in real data.
    """
    rng = np.random.default_rng(seed)
    c = (size - 1) / 2
    rr, cc = np.mgrid[0:size, 0:size] - c
    g = size / 4
    disks = {
        (dr, dc): (((rr - dr * g) ** 2 + (cc - dc * g) ** 2) < (size / 12) ** 2).astype(float)
        for dr in (-1, 0, 1)
        for dc in (-1, 0, 1)
    }
    out = np.empty((len(labels), size, size), np.float32)
    for i, lab in enumerate(labels):
        pr, pc = _VEC[SIGNED[int(lab)]]
        thick = rng.uniform(0.6, 1.4)
        tr, tc = rng.normal(0, asym / 8, 2)
        img = np.full((size, size), 0.01)
        for (dr, dc), disk in disks.items():
            amp = 1.0 if dr == dc == 0 else 0.4 * thick * (1 + asym * (dr * pr + dc * pc) + tr * dr + tc * dc)
            img += amp * disk
        img = rng.poisson(img * dose) / dose
        out[i] = np.sqrt(img / img.max())
    return out


def _fit(X, y, names, cfg, **kw) -> TrainedModel:
    """train_model with the toy classes' declared symmetry (as the pipeline would pass a found one)."""
    if list(names) == SIGNED:
        kw.setdefault("symmetry", SYMMETRY)
    return train_model(X, y, names, cfg, **kw)


def fast_config(**kw) -> TrainConfig:
    base = dict(model="compact", epochs=8, samples_per_epoch=64, batch_size=32, n_members=3, patience=0, lr=5e-3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def toy() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), 8)
    rng.shuffle(y)
    y_test = rng.integers(0, 5, 300)
    return {"X": toy_patterns(y, seed=1), "y": y, "X_test": toy_patterns(y_test, seed=2), "y_test": y_test}


@pytest.fixture(scope="module")
def trained(toy: dict[str, np.ndarray]) -> TrainedModel:
    # member_gate=None: 16 steps are too few for the member without antisymmetric channels
    # (it fits 37 % of its labels and the gate would drop it); these tests need all three.
    return _fit(
        toy["X"], toy["y"], SIGNED, fast_config(member_gate=None), class_colors=["#888888", "#ff0000", "#00ffff", "#80ff00", "#8000ff"],
        preprocess_state={"format": "polmap-preprocess", "config": {"scaling": "sqrt", "output_size": 32}},
        provenance={"dataset_fingerprint": "abc123"}, symmetry=SYMMETRY,
    )


# -- input checks ------------------------------------------------------------------------
def test_clear_errors_for_bad_inputs(toy: dict[str, np.ndarray]) -> None:
    X, y = toy["X"], toy["y"]
    cfg = fast_config()
    with pytest.raises(ValueError, match="no labels"):
        train_model(X[:0], y[:0], SIGNED, cfg)
    with pytest.raises(ValueError, match="all 6 labels are class '\\+x'"):
        train_model(X[:6], np.ones(6, int), SIGNED, cfg)
    with pytest.raises(ValueError, match=r"label indices \[7\] are not in class_names"):
        train_model(X[:3], np.array([0, 1, 7]), SIGNED, cfg)
    with pytest.raises(ValueError, match=r"labels \['\+z'\] are not in class_names"):
        train_model(X[:3], np.array(["none", "+x", "+z"]), SIGNED, cfg)
    with pytest.raises(ValueError, match="X has 40 patterns but y has 39 labels"):
        train_model(X, y[:-1], SIGNED, cfg)
    with pytest.raises(ValueError, match="input_size=48 but the patterns are 32 x 32"):
        train_model(X, y, SIGNED, fast_config(input_size=48))
    with pytest.raises(ValueError, match="square"):
        train_model(X[:, :, :30], y, SIGNED, cfg)
    with pytest.raises(ValueError, match="do not suit model 'compact'"):
        train_model(X[:, :8, :8], y, SIGNED, cfg)
    with pytest.raises(ValueError, match="NaN"):
        bad = X.copy()
        bad[0, 0, 0] = np.nan
        train_model(bad, y, SIGNED, cfg)
    with pytest.raises(ValueError, match="unique"):
        train_model(X, y, ["a", "a", "b", "c", "d"], cfg)
    with pytest.raises(ValueError, match="unknown model"):
        train_model(X, y, SIGNED, fast_config(model="vgg"))


def test_folds_are_stratified_and_balanced() -> None:
    y = np.array([0] * 10 + [1] * 7 + [2] * 3)
    f = make_folds(y, 5, seed=0)
    assert np.bincount(f).max() - np.bincount(f).min() <= 1
    for k in range(3):
        counts = np.bincount(f[y == k], minlength=5)
        assert counts.max() - counts.min() <= 1  # each class spread evenly
    assert np.array_equal(f, make_folds(y, 5, seed=0))


def test_folds_never_split_a_painted_region() -> None:
    # Two regions of 6 and 4 labels plus single points: each region lands whole in one fold.
    y = np.array([0] * 6 + [0] * 3 + [1] * 4 + [1] * 4)
    groups = np.array([7] * 6 + [1, 2, 3] + [9] * 4 + [4, 5, 6, 8])
    f = make_folds(y, 3, seed=1, groups=groups)
    for g in np.unique(groups):
        assert len(np.unique(f[groups == g])) == 1
    # Without groups, the same region is spread over the folds (what made validation optimistic).
    assert len(np.unique(make_folds(y, 3, seed=1)[groups == 7])) == 3
    # Single-point groups reproduce the plain stratified dealing.
    y2 = np.array([0] * 10 + [1] * 7 + [2] * 3)
    assert np.array_equal(make_folds(y2, 5, seed=0, groups=np.arange(20)), make_folds(y2, 5, seed=0))
    with pytest.raises(ValueError, match="groups must have the shape"):
        make_folds(y2, 5, groups=np.arange(3))


def test_a_class_painted_once_is_not_validated(toy: dict[str, np.ndarray]) -> None:
    X, y = toy["X"], toy["y"]
    groups = np.arange(len(y))
    groups[y == 0] = 1000  # every "none" label from one painted region
    m = _fit(X, y, SIGNED, fast_config(epochs=1, n_members=2, member_gate=None), groups=groups)
    rep = m.report
    assert rep["validation"] == "cross-validation"
    assert not set(np.nonzero(y == 0)[0]) & set(rep["oof_label_indices"])
    assert rep["n_validated"] == int((y != 0).sum())
    assert any("single place (one point or one region) ['none']" in w for w in rep["warnings"])
    with pytest.raises(ValueError, match="group ids for"):
        _fit(X, y, SIGNED, fast_config(epochs=1, n_members=2), groups=groups[:-1])


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")


# -- training ------------------------------------------------------------------------------
def test_learns_the_toy_problem_with_honest_report(trained: TrainedModel, toy: dict[str, np.ndarray]) -> None:
    acc = float((trained.predict(toy["X_test"]) == toy["y_test"]).mean())
    assert acc >= 0.85  # chance is 0.2; 3 members x 16 steps of training
    rep = trained.report
    assert rep["validation"] == "cross-validation" and rep["n_members"] == 3 == trained.n_members
    assert 0.6 <= rep["oof_accuracy"] <= 1.0
    # Out-of-fold predictions exist for every label and agree with the confusion matrix.
    assert sorted(rep["oof_label_indices"]) == list(range(40))
    cm = np.array(rep["oof_confusion"])
    assert cm.sum() == 40 and np.trace(cm) / 40 == pytest.approx(rep["oof_accuracy"], abs=1e-4)
    assert len(rep["member_val_accuracy"]) == 3
    assert rep["augmentation"]["symmetry_ops_used"] == list(SYMMETRY_OPS)
    assert rep["symmetry"]["status"] == "declared" and len(rep["symmetry"]["mapping"]) == 7
    assert rep["assessment"]["level"] in ("ok", "warning") and "out-of-fold accuracy" in rep["assessment"]["headline"]
    assert rep["device"] == "cpu" and rep["train_seconds"] > 0
    assert rep["n_parameters_per_member"] == trained.n_parameters
    assert trained.provenance["dataset_fingerprint"] == "abc123"
    assert trained.provenance["n_labels"] == 40 and len(trained.provenance["labels_sha1"]) == 16
    assert trained.provenance["versions"]["torch"] == torch.__version__
    assert len(trained.history) == 3 and len(trained.history[0]) == 8
    assert trained.history[0][-1]["val_acc"] is not None


def test_validation_folds_never_train_their_member(toy: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    # Spy on every pattern that reaches a member's optimiser (via the augmenter) or its
    # batch-norm recalibration, and check none of them is in the member's validation fold.
    import polmap.learn.train as train_mod
    from polmap.learn.augment import Augmenter

    X, y = toy["X"], toy["y"]
    rows = {X[i].tobytes(): i for i in range(len(X))}
    current: dict = {}
    fed: dict[int, set] = {}
    held: dict[int, set] = {}
    real_member, real_aug, real_bn = train_mod._train_member, Augmenter.augment, train_mod._recalibrate_batchnorm

    def spy_member(job, *args, **kwargs):
        current["m"] = job.member
        held[job.member] = set(job.val_idx.tolist())
        fed[job.member] = set()
        return real_member(job, *args, **kwargs)

    def spy_aug(self, x, yb, g, *args):
        fed[current["m"]].update(rows[p[0].numpy().tobytes()] for p in x)
        return real_aug(self, x, yb, g, *args)

    def spy_bn(net, x, *args):
        fed[current["m"]].update(rows[p[0].numpy().tobytes()] for p in x)
        return real_bn(net, x, *args)

    monkeypatch.setattr(train_mod, "_train_member", spy_member)
    monkeypatch.setattr(Augmenter, "augment", spy_aug)
    monkeypatch.setattr(train_mod, "_recalibrate_batchnorm", spy_bn)
    m = _fit(X, y, SIGNED, fast_config(epochs=2, workers=1, member_gate=None))
    assert sorted(held) == [0, 1, 2]
    for k in held:
        assert held[k] and not fed[k] & held[k]  # no validation pattern ever trained member k
        assert fed[k] | held[k] == set(range(len(X)))
    # Every label is held out exactly once; that is where its out-of-fold prediction comes from.
    assert sorted(i for k in held for i in held[k]) == list(range(len(X)))
    assert sorted(m.report["oof_label_indices"]) == list(range(len(X)))


def test_random_labels_give_chance_out_of_fold_accuracy(toy: dict[str, np.ndarray]) -> None:
    # Labels unrelated to the patterns: an honest estimate is near chance (0.2), a leaky one is not.
    y_random = np.random.default_rng(7).permutation(toy["y"])
    m = _fit(toy["X"], y_random, SIGNED, fast_config(epochs=8, augment=AugmentConfig(symmetry=False)))
    assert m.report["oof_accuracy"] <= 0.45


def test_few_labels_say_no_validation(toy: dict[str, np.ndarray]) -> None:
    X, y = toy["X"], toy["y"]
    pick = np.array([np.nonzero(y == k)[0][0] for k in range(5)] + [np.nonzero(y == 1)[0][1]])
    m = _fit(X[pick], y[pick], SIGNED, fast_config(epochs=2, n_members=2, member_gate=None))
    assert m.report["validation"] == "none"
    assert "only 6 labels" in m.report["validation_note"]
    assert "fewer than two classes have labels in 2 or more places" in m.report["validation_note"]
    assert m.report["oof_accuracy"] is None and m.n_members == 2
    # A missing class is reported, not hidden.
    no_none = y != 0
    m2 = _fit(X[no_none], y[no_none], SIGNED, fast_config(epochs=1, n_members=2))
    assert m2.report["classes_without_labels"] == ["none"]
    assert any("never be predicted" in w for w in m2.report["warnings"])
    assert m2.report["validation"] == "cross-validation"


def test_single_label_class_trains_every_member_and_is_not_validated(toy: dict[str, np.ndarray]) -> None:
    X, y = toy["X"], toy["y"]
    keep = (y != 0) | (np.arange(len(y)) == np.nonzero(y == 0)[0][0])  # one "none" label only
    m = _fit(X[keep], y[keep], SIGNED, fast_config(epochs=1, n_members=2))
    rep = m.report
    assert rep["validation"] == "cross-validation"
    single = int(np.nonzero(y[keep] == 0)[0][0])
    assert single not in rep["oof_label_indices"] and rep["n_validated"] == keep.sum() - 1
    assert any("single place (one point or one region) ['none']" in w for w in rep["warnings"])


def test_class_names_as_labels(toy: dict[str, np.ndarray]) -> None:
    names = np.array(SIGNED)[toy["y"]]
    m = _fit(toy["X"][:, None], names, SIGNED, fast_config(epochs=1, n_members=2))
    assert m.report["label_counts"] == {n: 8 for n in SIGNED}


def test_same_seed_same_weights(toy: dict[str, np.ndarray]) -> None:
    X, y = toy["X"][:20], toy["y"][:20]
    cfg = fast_config(epochs=2, n_members=2, workers=2)  # members in parallel threads
    a = _fit(X, y, SIGNED, cfg)
    b = _fit(X, y, SIGNED, fast_config(epochs=2, n_members=2, workers=1))  # sequential: same weights
    c = _fit(X, y, SIGNED, fast_config(epochs=2, n_members=2, seed=1))
    for na, nb in zip(a.nets, b.nets):
        for (k, va), vb in zip(na.state_dict().items(), nb.state_dict().values()):
            assert torch.equal(va, vb), k
    assert not torch.equal(a.nets[0].head[-1].weight, c.nets[0].head[-1].weight)
    assert a.report["parallel_members"] == 2 and b.report["parallel_members"] == 1
    assert torch.get_num_threads() == 1  # the caller's setting (fixture) is restored


def test_progress_and_cancel(toy: dict[str, np.ndarray]) -> None:
    X, y = toy["X"], toy["y"]
    seen: list[dict] = []
    stop = threading.Event()

    def progress(d: dict) -> None:
        seen.append(d)
        if d["member"] == 1 and d["epoch"] == 1:
            stop.set()

    with pytest.raises(TrainingCancelled, match="after 1 of 3 members") as info:
        _fit(X, y, SIGNED, fast_config(epochs=3, workers=1), progress=progress, cancel=stop)
    assert {"member", "n_members", "epoch", "epochs", "loss", "val_loss", "val_acc", "lr", "elapsed_s"} <= set(seen[0])
    assert [(d["member"], d["epoch"]) for d in seen] == [(0, 1), (0, 2), (0, 3), (1, 1)]
    partial = info.value.partial
    assert partial is not None and partial.n_members == 1 and partial.report["cancelled"]
    # A callable works as well; cancelling before anything finished leaves no partial model.
    with pytest.raises(TrainingCancelled) as info2:
        _fit(X, y, SIGNED, fast_config(), cancel=lambda: True)
    assert info2.value.partial is None


def test_failing_progress_callback_stops_training(toy: dict[str, np.ndarray]) -> None:
    def progress(d: dict) -> None:
        raise KeyError("display went away")

    with pytest.raises(KeyError, match="display went away"):
        _fit(toy["X"], toy["y"], SIGNED, fast_config(epochs=3, workers=2), progress=progress)
    assert torch.get_num_threads() == 1  # thread setting restored after the failure


def test_early_stopping_uses_training_loss(toy: dict[str, np.ndarray]) -> None:
    m = _fit(toy["X"], toy["y"], SIGNED, fast_config(epochs=60, patience=2, n_members=2))
    # The toy problem is learnt within a few epochs; then the loss stops improving by 2 %.
    for h in m.history:
        assert len(h) < 60 and h[-1].get("stopped_early")
        assert h[-1]["loss"] < 0.75 * np.log(5)


def test_a_member_that_has_not_learned_is_never_stopped_early(toy: dict[str, np.ndarray]) -> None:
    # With a learning rate this small the loss stays at about log K and cannot improve by 2 %:
    # stopping would freeze a member that predicts one class everywhere, so it runs every epoch.
    m = _fit(toy["X"], toy["y"], SIGNED, fast_config(epochs=12, patience=1, n_members=2, lr=1e-6))
    for h in m.history:
        assert len(h) == 12 and not h[-1].get("stopped_early")
        assert h[-1]["loss"] > 0.75 * np.log(5)


def test_gate_members_drops_only_members_far_below_the_best() -> None:
    assert gate_members({0: 0.9, 1: 0.7, 2: 0.8}, 0.15) == {1}
    assert gate_members({0: 0.9, 1: 0.76}, 0.15) == set()  # 0.14 below: kept
    assert gate_members({0: 0.9, 1: 0.1}, None) == set()
    assert gate_members({3: 0.2}, 0.0) == set()  # a lone member always stays
    assert gate_members({0: 0.5, 1: 0.5}, 0.0) == set()


def test_a_member_that_cannot_fit_its_labels_is_left_out(toy: dict[str, np.ndarray]) -> None:
    # Member 1 has no capacity (2 channels, a 1-unit hidden layer under 90 % dropout):
    # it fits far fewer of its own training labels than member 0 and must not vote.
    crippled = {"hidden": 1, "dropout": 0.9, "channels": (2,)}
    cfg = fast_config(member_variants=[{}, crippled])
    m = _fit(toy["X"], toy["y"], SIGNED, cfg)
    rep = m.report
    assert m.n_members == 2 and [n.antisymmetric for n in m.nets] == [True, True]
    (d,) = rep["dropped_members"]
    assert d["member"] == 1 and d["options"] == {"model": "compact", **crippled}
    assert d["fit_accuracy"] < d["best_fit_accuracy"] - 0.15
    assert max(rep["member_fit_accuracy"]) == d["best_fit_accuracy"]
    # Its fold is no longer validated: no kept member vouches for those labels.
    assert rep["n_validated"] == 40 - d["fold_labels"] and d["fold_labels"] > 0
    assert len(rep["member_val_accuracy"]) == 2
    assert any("could not fit their own training labels" in w for w in rep["warnings"])
    # Survives a checkpoint round trip as the 2-member ensemble it is.
    assert TrainedModel.from_bytes(m.to_bytes()).n_members == 2
    kept = _fit(toy["X"], toy["y"], SIGNED, fast_config(member_variants=[{}, crippled], member_gate=None))
    assert kept.n_members == 3 and kept.report["dropped_members"] == [] and kept.report["n_validated"] == 40
    with pytest.raises(ValueError, match="member_gate must be None or an accuracy gap"):
        _fit(toy["X"], toy["y"], SIGNED, fast_config(member_gate=1.5))


def test_no_augmentation_is_reported(toy: dict[str, np.ndarray]) -> None:
    aug = AugmentConfig(symmetry=False, dose=False, shift=False, smooth=False)
    m = _fit(toy["X"][:20], toy["y"][:20], SIGNED, fast_config(epochs=1, n_members=2, augment=aug))
    assert m.report["augmentation"]["symmetry_ops_used"] == ["identity"]


def test_without_a_symmetry_map_no_operation_is_used_and_the_report_says_why(toy: dict[str, np.ndarray]) -> None:
    # Class names that look like directions are not read: without a map, no symmetry.
    m = train_model(toy["X"][:20], toy["y"][:20], SIGNED, fast_config(epochs=1, n_members=2))
    assert m.report["augmentation"]["symmetry_ops_used"] == ["identity"]
    assert m.report["symmetry"]["skipped"]["transpose"] == "no symmetry map was given"
    with pytest.raises(ValueError, match="symmetry map is for classes"):
        train_model(toy["X"][:20], toy["y"][:20], SIGNED, fast_config(epochs=1, n_members=2),
                    symmetry=SymmetryMap(["a", "b"]))


def test_auto_trains_networks_and_linear_members_and_keeps_the_better(toy: dict[str, np.ndarray]) -> None:
    cfg = fast_config(model="auto", epochs=2, n_members=2)
    m = _fit(toy["X"], toy["y"], SIGNED, cfg, symmetry=SYMMETRY, scan_patterns=toy["X_test"])
    rep = m.report
    assert set(rep["family_oof_accuracy"]) == {"compact", "linear"}
    acc = rep["family_oof_accuracy"]
    kept = rep["families_kept"]
    if len(kept) == 2:
        assert "kept both kinds" in rep["family_note"] and m.n_members == 4
    else:  # one kind alone only when it is clearly ahead
        assert kept == [max(acc, key=acc.get)] and m.n_members == 2
        assert acc[kept[0]] - min(acc.values()) > 0.02
    assert "out-of-fold accuracy" in rep["family_note"]
    assert {o["model"] for o in rep["member_options"]} == set(kept)
    again = TrainedModel.from_bytes(m.to_bytes())
    np.testing.assert_allclose(again.predict_proba(toy["X_test"]), m.predict_proba(toy["X_test"]), atol=1e-5)
    # A linear model alone: closed form, every member fitted, far above chance on this toy.
    lin = _fit(toy["X"], toy["y"], SIGNED, fast_config(model="linear"), symmetry=SYMMETRY,
                      scan_patterns=toy["X_test"])
    assert float((lin.predict(toy["X_test"]) == toy["y_test"]).mean()) > 0.8
    assert lin.history[0][0]["epochs"] == 1 and lin.n_parameters > 0


def test_assessment_calls_chance_level_a_failure(toy: dict[str, np.ndarray]) -> None:
    y_random = np.random.default_rng(5).permutation(toy["y"])
    m = _fit(toy["X"], y_random, SIGNED, fast_config(model="linear"), scan_patterns=toy["X_test"])
    verdict = m.report["assessment"]
    assert verdict["level"] == "failure" and "near chance" in verdict["headline"]
    assert verdict["causes"] and verdict["causes_title"] == "likely causes"
    assert assess({"validation_note": "no validation possible: only 3 labels"})["level"] == "warning"
    # a good accuracy with a class of 2 labels: a warning whose reasons are caveats, not causes of a failure
    cm = [[10, 0, 0], [0, 10, 0], [0, 0, 2]]
    good = assess({"oof_accuracy": 1.0, "n_validated": 22, "oof_confusion": cm,
                   "label_counts": {"a": 10, "b": 10, "c": 2}})
    assert good["level"] == "warning" and good["causes_title"] == "caveats"
    assert good["headline"] == "out-of-fold accuracy 100 % on 22 held-out labels, with a caveat"
    assert good["causes"] == ["too few labels for ['c'] (fewer than 3 each): label more of them"]
    weak = assess({"oof_accuracy": 0.7, "n_validated": 30, "oof_confusion": [[10, 5], [4, 11]],
                   "label_counts": {"a": 15, "b": 15}})
    assert weak["level"] == "warning" and weak["causes_title"] == "likely causes"
    ok = assess({"oof_accuracy": 0.95, "n_validated": 40, "oof_confusion": [[19, 1], [1, 19]],
                 "label_counts": {"a": 20, "b": 20}})
    assert ok["level"] == "ok" and not ok["causes"]


def test_members_alternate_architectures_and_survive_a_round_trip(trained: TrainedModel) -> None:
    # compact's default ensemble: members with and without the antisymmetric input channels.
    assert trained.report["member_options"] == [
        {"model": "compact", "antisymmetric": True}, {"model": "compact", "antisymmetric": False},
        {"model": "compact", "antisymmetric": True},
    ]
    assert [n.antisymmetric for n in trained.nets] == [True, False, True]
    loaded = TrainedModel.from_bytes(trained.to_bytes())
    assert [n.antisymmetric for n in loaded.nets] == [True, False, True]
    payload = torch.load(io.BytesIO(trained.to_bytes()), weights_only=True)
    meta = json.loads(payload["metadata"])
    meta["model_config"]["member_options"] = meta["model_config"]["member_options"][:2]
    buf = io.BytesIO()
    torch.save({**payload, "metadata": json.dumps(meta)}, buf)
    with pytest.raises(CheckpointError, match="2 member architectures for 3 members"):
        TrainedModel.load(buf.getvalue())
    meta["model_config"]["member_options"] = [{"model": "compact", "antisymmetric": False}] * 3  # member 0 has 3 inputs
    buf = io.BytesIO()
    torch.save({**payload, "metadata": json.dumps(meta)}, buf)
    with pytest.raises(CheckpointError, match="member 0 does not match"):
        TrainedModel.load(buf.getvalue())


def test_homogeneous_members_on_request(toy: dict[str, np.ndarray]) -> None:
    m = _fit(toy["X"][:20], toy["y"][:20], SIGNED, fast_config(epochs=1, n_members=2, member_variants=[{}]))
    assert all(n.antisymmetric for n in m.nets)
    with pytest.raises(ValueError, match="bad option"):
        _fit(toy["X"][:20], toy["y"][:20], SIGNED, fast_config(epochs=1, member_variants=[{"wings": 2}]))


def test_config_round_trip() -> None:
    cfg = TrainConfig(epochs=3, model_options={"channels": [8, 16, 32]}, augment=AugmentConfig(max_shift=0.2))
    d = json.loads(json.dumps(cfg.to_dict()))
    assert TrainConfig.from_dict(d) == cfg


# -- the model object and checkpoints --------------------------------------------------------
def test_predict_proba_and_std(trained: TrainedModel, toy: dict[str, np.ndarray]) -> None:
    p, s = trained.predict_proba(toy["X_test"][:10], return_std=True)
    assert p.shape == (10, 5) and s.shape == (10, 5)
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    assert (s >= 0).all() and s.max() > 0
    members = trained.member_probabilities(toy["X_test"][:10])
    np.testing.assert_allclose(members.mean(0), p, atol=1e-6)
    with pytest.raises(ValueError, match="takes 32 x 32"):
        trained.predict_proba(np.zeros((2, 48, 48), np.float32))


def test_save_load_round_trip(trained: TrainedModel, toy: dict[str, np.ndarray], tmp_path: Path) -> None:
    X = toy["X_test"][:20]
    ref = trained.predict_proba(X)
    path = tmp_path / "model.pt"
    trained.save(path)
    for loaded in (TrainedModel.load(path), TrainedModel.from_bytes(trained.to_bytes()), TrainedModel.load(str(path))):
        np.testing.assert_allclose(loaded.predict_proba(X), ref, atol=1e-6)
        assert loaded.class_names == SIGNED and loaded.class_colors == trained.class_colors
        assert loaded.report == json.loads(json.dumps(trained.report))
        assert loaded.provenance["dataset_fingerprint"] == "abc123"
        assert loaded.preprocess_state == trained.preprocess_state
        assert loaded.history[0][0]["epoch"] == 1
    buf = io.BytesIO()
    trained.save(buf)
    buf.seek(0)
    assert TrainedModel.load(buf).n_members == 3


class _Payload:
    """Pickles as a call to open(marker, "w"): loading it would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_with_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"
    # A torch.save zip whose pickle calls a function on load.
    evil = tmp_path / "evil.pt"
    torch.save({"format": "polmap-model", "members": [_Payload(str(marker))]}, evil)
    with pytest.raises(CheckpointError, match="refused.*possibly code"):
        TrainedModel.load(evil)
    # A bare pickle stream, as bytes.
    with pytest.raises(CheckpointError, match="refused|not a readable"):
        TrainedModel.load(pickle.dumps(_Payload(str(marker))))
    assert not marker.exists()


def test_inconsistent_checkpoints_are_refused(trained: TrainedModel, tmp_path: Path) -> None:
    payload = torch.load(io.BytesIO(trained.to_bytes()), weights_only=True)

    def save(p: dict) -> bytes:
        buf = io.BytesIO()
        torch.save(p, buf)
        return buf.getvalue()

    meta = json.loads(payload["metadata"])
    meta["class_names"] = SIGNED + ["+z"]
    with pytest.raises(CheckpointError, match="5 outputs but 6 class names"):
        TrainedModel.load(save({**payload, "metadata": json.dumps(meta)}))
    meta = json.loads(payload["metadata"])
    meta["model_config"]["n_classes"] = 3
    meta["class_names"] = ["na", "vertical", "horizontal"]
    meta["class_colors"] = None
    with pytest.raises(CheckpointError, match="member 0 does not match architecture 'compact'"):
        TrainedModel.load(save({**payload, "metadata": json.dumps(meta)}))
    with pytest.raises(CheckpointError, match="not a polmap model checkpoint"):
        TrainedModel.load(save({"weights": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match="no network weights"):
        TrainedModel.load(save({**payload, "members": []}))
    with pytest.raises(CheckpointError, match="not a readable"):
        TrainedModel.load(trained.to_bytes()[:1000])
    bad = tmp_path / "missing.pt"
    with pytest.raises(FileNotFoundError):
        TrainedModel.load(bad)
