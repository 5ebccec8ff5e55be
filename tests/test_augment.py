"""Symmetry operations, label permutations and intensity augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polmap.learn.augment import AugmentConfig, Augmenter
from polmap.process.detector_symmetry import OP_MATRICES, SYMMETRY_OPS, apply_op, compose_ops
from polmap.learn.symmetry import declared_arrows

SIGNED = ["none", "+x", "-x", "+y", "-y"]
# Declared directions of the toy classes (degrees from +col towards +row); names are just labels.
DIRECTIONS = {"none": "invariant", "+x": 0.0, "-x": 180.0, "+y": 90.0, "-y": 270.0}

# Expected relabelling, written out by hand from the geometry (0 deg = +col, 90 deg = +row/down).
SIGNED_EXPECTED = {
    "flip_cols": ["none", "-x", "+x", "+y", "-y"],
    "flip_rows": ["none", "+x", "-x", "-y", "+y"],
    "rot180": ["none", "-x", "+x", "-y", "+y"],
    "transpose": ["none", "+y", "-y", "+x", "-x"],
    "anti_transpose": ["none", "-y", "+y", "-x", "+x"],
    "rot90": ["none", "-y", "+y", "+x", "-x"],  # counter-clockwise on screen: right -> up
    "rot270": ["none", "+y", "-y", "-x", "+x"],
}


def toy_pattern(direction: tuple[float, float], size: int = 33, asym: float = 0.2) -> np.ndarray:
    """Nine disks; the +g disk along ``direction`` (row, col) is brighter, -g dimmer."""
    c = (size - 1) / 2
    rr, cc = np.mgrid[0:size, 0:size] - c
    img = np.zeros((size, size))
    g = size / 4
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            amp = 1.0 + asym * (dr * direction[0] + dc * direction[1])
            img += amp * (((rr - dr * g) ** 2 + (cc - dc * g) ** 2) < 9)
    return img


VECTORS = {"none": (0, 0), "+x": (0, 1), "-x": (0, -1), "+y": (1, 0), "-y": (-1, 0)}
ARROWS = declared_arrows(DIRECTIONS, SIGNED)


@pytest.mark.parametrize("op", SYMMETRY_OPS[1:])
def test_declared_directions_give_the_hand_table(op: str) -> None:
    assert [SIGNED[j] for j in ARROWS[op]] == SIGNED_EXPECTED[op]


@pytest.mark.parametrize("op", SYMMETRY_OPS[1:])
def test_op_moves_asymmetric_feature_where_the_arrow_says(op: str) -> None:
    # Physics check: the transformed pattern of class k IS the pattern of class arrows[op][k].
    for k, name in enumerate(SIGNED):
        moved = apply_op(toy_pattern(VECTORS[name]), op)
        np.testing.assert_allclose(moved, toy_pattern(VECTORS[SIGNED[ARROWS[op][k]]]), atol=1e-12)


def test_compose_ops_matches_applying_twice() -> None:
    a = np.arange(25.0).reshape(5, 5)
    for first in SYMMETRY_OPS:
        for then in SYMMETRY_OPS:
            np.testing.assert_array_equal(apply_op(apply_op(a, first), then), apply_op(a, compose_ops(first, then)))


@pytest.mark.parametrize("op", SYMMETRY_OPS)
def test_apply_op_moves_a_point_by_its_matrix(op: str) -> None:
    n = 9
    c = (n - 1) // 2
    img = np.zeros((n, n))
    d = np.array([-3, 1])  # 3 rows up, 1 col right of the centre
    img[c + d[0], c + d[1]] = 1
    out = apply_op(img, op)
    new = np.argwhere(out == 1)[0] - c
    np.testing.assert_array_equal(new, OP_MATRICES[op] @ d)
    # numpy and torch give the same array
    np.testing.assert_array_equal(apply_op(torch.from_numpy(img)[None, None], op)[0, 0].numpy(), out)


def test_rot90_is_numpy_rot90_and_ops_form_a_group() -> None:
    a = np.arange(16.0).reshape(4, 4)
    np.testing.assert_array_equal(apply_op(a, "rot90"), np.rot90(a))
    np.testing.assert_array_equal(apply_op(a, "rot270"), np.rot90(a, -1))
    for op in SYMMETRY_OPS:
        m = OP_MATRICES[op]
        assert round(abs(np.linalg.det(m))) == 1
        # Composition of any two ops is again one of the 8.
        for op2 in SYMMETRY_OPS:
            prod = OP_MATRICES[op2] @ m
            assert any((prod == OP_MATRICES[o]).all() for o in SYMMETRY_OPS)


def _batch(n: int = 16, size: int = 33) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(n) % 5
    x = torch.stack([torch.from_numpy(toy_pattern(VECTORS[SIGNED[int(k)]], size)).float() for k in y])[:, None]
    return x, y


def test_augmenter_symmetry_only_keeps_pattern_and_label_consistent() -> None:
    cfg = AugmentConfig(symmetry=True, dose=False, shift=False, smooth=False)
    aug = Augmenter(len(SIGNED), cfg, scaling="none", arrows=ARROWS)
    assert aug.ops == list(SYMMETRY_OPS)
    x, y = _batch(40)
    xa, ya = aug(x, y, torch.Generator().manual_seed(1))
    refs = [torch.from_numpy(toy_pattern(VECTORS[name])).float() for name in SIGNED]
    changed = 0
    for i in range(len(x)):
        # The augmented pattern is exactly the clean pattern of its new label.
        assert torch.allclose(xa[i, 0], refs[int(ya[i])], atol=1e-6)
        changed += int(ya[i] != y[i])
    assert changed > 10  # polar labels really were remapped
    # Same generator seed -> same batch.
    xb, yb = aug(x, y, torch.Generator().manual_seed(1))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_symmetry_off_or_without_arrows_uses_no_operation() -> None:
    assert Augmenter(len(SIGNED), AugmentConfig(symmetry=False), arrows=ARROWS).ops == ["identity"]
    aug = Augmenter(len(SIGNED), AugmentConfig(symmetry=True))
    assert aug.ops == ["identity"]
    assert aug.describe()["symmetry_ops_used"] == ["identity"]


def test_an_operation_is_applied_only_to_classes_with_an_arrow() -> None:
    # flip_cols only for class 1 -> 2: patterns of the other classes are never flipped.
    arrows = {"flip_cols": [None, 2, None, None, None]}
    aug = Augmenter(len(SIGNED), AugmentConfig(symmetry=True, dose=False, shift=False, smooth=False),
                    scaling="none", arrows=arrows)
    x, y = _batch(50)
    xa, ya = aug(x, y, torch.Generator().manual_seed(3))
    flipped = ~torch.isclose(xa, x).flatten(1).all(1)
    assert flipped.any()
    assert bool((y[flipped] == 1).all()) and bool((ya[flipped] == 2).all())
    assert torch.equal(ya[~flipped], y[~flipped])
    views, classes = aug.views(x, y)
    assert len(views) == len(x) + int((y == 1).sum()) and bool((classes[len(x):] == 2).all())


def test_augmenter_rejects_malformed_arrows() -> None:
    with pytest.raises(ValueError, match="entries for 5 classes"):
        Augmenter(5, arrows={"rot90": [0, 1]})
    with pytest.raises(ValueError, match="outside"):
        Augmenter(5, arrows={"rot90": [0, 1, 2, 3, 9]})
    with pytest.raises(ValueError, match="unknown symmetry operation"):
        Augmenter(5, arrows={"shear": [0, 1, 2, 3, 4]})


def test_smooth_field_keeps_friedel_pairs_equal() -> None:
    # A centrosymmetric pattern must stay centrosymmetric: the field may not fake a polar signal.
    cfg = AugmentConfig(symmetry=False, dose=False, shift=False, smooth=True, field_strength=0.5, gamma_std=0.3)
    aug = Augmenter(len(SIGNED), cfg, scaling="none")
    x, y = _batch(8)
    x = x[y == 0]  # class "none": centrosymmetric
    xa, _ = aug(x, y[y == 0], torch.Generator().manual_seed(0))
    assert not torch.allclose(xa, x, atol=1e-3)  # something happened
    torch.testing.assert_close(xa, xa.flip(-1).flip(-2), atol=1e-5, rtol=1e-5)


def test_shift_moves_centre_of_mass_by_at_most_max_shift() -> None:
    cfg = AugmentConfig(symmetry=False, dose=False, shift=True, max_shift=0.7, smooth=False)
    aug = Augmenter(len(SIGNED), cfg, scaling="none")
    size = 33
    rr, cc = np.mgrid[0:size, 0:size] - 16.0
    blob = torch.from_numpy(np.exp(-(rr**2 + cc**2) / 8.0)).float()[None, None].repeat(64, 1, 1, 1)
    out, _ = aug(blob, torch.zeros(64, dtype=torch.long), torch.Generator().manual_seed(0))
    w = out[:, 0].double()
    r = torch.from_numpy(rr)
    c = torch.from_numpy(cc)
    com = torch.stack([(w * r).sum((1, 2)) / w.sum((1, 2)), (w * c).sum((1, 2)) / w.sum((1, 2))], 1)
    assert com.abs().max() <= 0.7 + 1e-3
    assert com.abs().max() > 0.3  # shifts are really applied


def test_dose_noise_is_poisson_like_in_linear_intensity() -> None:
    cfg = AugmentConfig(symmetry=False, dose=True, dose_range=(100.0, 100.0), dose_p=1.0, shift=False, smooth=False)
    aug = Augmenter(len(SIGNED), cfg, scaling="sqrt")
    lin = torch.full((2000, 1, 4, 4), 0.25)
    lin[:, :, 0, 0] = 1.0  # peak = 1 -> 100 counts; the rest 25 counts
    out, _ = aug(lin.sqrt(), torch.zeros(2000, dtype=torch.long), torch.Generator().manual_seed(0))
    counts = (out**2) * 100  # back to counts
    v = counts[:, 0, 1:, 1:].reshape(-1)
    assert abs(float(v.mean()) - 25) < 0.5
    assert abs(float(v.var()) / 25 - 1) < 0.1  # variance = mean, as for counting noise


def test_wall_mixing_blends_linear_intensity_and_softens_the_target() -> None:
    cfg = AugmentConfig(symmetry=False, dose=False, shift=False, smooth=False, mix=True, mix_p=1.0, mix_range=(0.6, 0.9))
    aug = Augmenter(len(SIGNED), cfg, scaling="sqrt")
    x, y = _batch(20)
    x = (x / x.amax(dim=(-1, -2), keepdim=True)).sqrt()  # like sqrt-scaled, max-normalised input
    xa, t = aug.augment(x, y, torch.Generator().manual_seed(0), label_smoothing=0.1)
    assert t.shape == (20, 5)
    torch.testing.assert_close(t.sum(1), torch.ones(20))
    mixed = (t.max(1).values < 0.9 - 1e-6) & (t.max(1).values > 0)
    assert mixed.sum() >= 10  # most samples found a partner of another class
    lin = x**2
    for i in np.nonzero(mixed.numpy())[0]:
        w = (t[i, y[i]] - 0.02) / 0.9  # undo smoothing (0.1 / 5 classes)
        assert 0.6 - 1e-5 <= w <= 0.9 + 1e-5
        assert int(t[i].argmax()) == int(y[i])  # the dominant domain keeps the label
        # The pattern is w * own + (1 - w) * partner in linear intensity, for one partner of the batch.
        others = t[i].clone()
        others[y[i]] = -1
        partner = int(others.argmax())
        cands = [j for j in range(20) if int(y[j]) == partner]
        errs = []
        for j in cands:
            m = w * lin[i] + (1 - w) * lin[j]
            errs.append(float(((m / m.max()).sqrt() - xa[i]).abs().max()))
        assert min(errs) < 1e-4
    # Unmixed samples keep their (smoothed) one-hot target and their pattern.
    for i in np.nonzero((~mixed).numpy())[0]:
        assert torch.equal(xa[i], x[i])


def test_augmenter_rejects_unknown_scaling() -> None:
    with pytest.raises(ValueError, match="scaling"):
        Augmenter(len(SIGNED), scaling="cube")


def test_augment_config_round_trip() -> None:
    c = AugmentConfig(max_shift=0.3, dose_range=(10.0, 20.0), mix_range=(0.7, 1.0))
    assert AugmentConfig.from_dict(c.to_dict()) == c
