"""Symmetry operations, label permutations and intensity augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polmap.augment import (
    OP_MATRICES,
    SYMMETRY_OPS,
    AugmentConfig,
    Augmenter,
    apply_op,
    class_geometry,
    class_permutation,
    usable_ops,
)



SIGNED = ["none", "+x", "-x", "+y", "-y"]
AXIS = ["na", "vertical", "horizontal"]

# Expected relabelling, written out by hand from the geometry (+x = +col, +y = +row/down).
SIGNED_EXPECTED = {
    "identity": ["none", "+x", "-x", "+y", "-y"],
    "flip_cols": ["none", "-x", "+x", "+y", "-y"],
    "flip_rows": ["none", "+x", "-x", "-y", "+y"],
    "rot180": ["none", "-x", "+x", "-y", "+y"],
    "transpose": ["none", "+y", "-y", "+x", "-x"],
    "anti_transpose": ["none", "-y", "+y", "-x", "+x"],
    "rot90": ["none", "-y", "+y", "+x", "-x"],  # counter-clockwise on screen: right -> up
    "rot270": ["none", "+y", "-y", "-x", "+x"],
}
AXIS_SWAPS = {"transpose", "anti_transpose", "rot90", "rot270"}


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


@pytest.mark.parametrize("op", SYMMETRY_OPS)
def test_signed_permutation_matches_hand_table(op: str) -> None:
    perm = class_permutation(SIGNED, op)
    assert [SIGNED[j] for j in perm] == SIGNED_EXPECTED[op]


@pytest.mark.parametrize("op", SYMMETRY_OPS)
def test_axis_permutation(op: str) -> None:
    perm = class_permutation(AXIS, op)
    expected = [0, 2, 1] if op in AXIS_SWAPS else [0, 1, 2]
    assert perm == expected


@pytest.mark.parametrize("op", SYMMETRY_OPS)
def test_op_moves_asymmetric_feature_where_label_says(op: str) -> None:
    # Physics check: the transformed pattern of class k IS the pattern of class perm[k].
    perm = class_permutation(SIGNED, op)
    for k, name in enumerate(SIGNED):
        moved = apply_op(toy_pattern(VECTORS[name]), op)
        np.testing.assert_allclose(moved, toy_pattern(VECTORS[SIGNED[perm[k]]]), atol=1e-12)
    # Same for the unsigned axis classes (a +x pattern is "horizontal").
    axis_of = {"+x": "horizontal", "-x": "horizontal", "+y": "vertical", "-y": "vertical"}
    aperm = class_permutation(AXIS, op)
    for name in ("+x", "+y"):
        new_signed = SIGNED[perm[SIGNED.index(name)]]
        assert AXIS[aperm[AXIS.index(axis_of[name])]] == axis_of[new_signed]


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


def test_class_name_parsing() -> None:
    assert class_geometry("None") == ("invariant", 0.0)
    assert class_geometry(" N/A ") == ("invariant", 0.0)
    assert class_geometry("\u2212x") == ("vector", 180.0)  # unicode minus
    assert class_geometry("+45") == ("vector", 45.0)
    assert class_geometry("-90") == ("vector", 270.0)
    assert class_geometry("135deg") == ("vector", 135.0)
    assert class_geometry("horizontal") == ("axis", 0.0)
    assert class_geometry("45") is None  # bare numbers are usually indices
    assert class_geometry("domain A") is None


def test_angle_classes_follow_the_same_geometry() -> None:
    names = ["+0deg", "+45", "+90", "+135", "+180", "+225", "+270", "+315"]
    # rot90 turns +x (0) into -y (270): every angle goes down by 90.
    assert [names[j] for j in class_permutation(names, "rot90")] == [
        "+270", "+315", "+0deg", "+45", "+90", "+135", "+180", "+225"
    ]
    # transpose mirrors in the diagonal: 0 <-> 90, 45 fixed.
    perm = class_permutation(names, "transpose")
    assert names[perm[0]] == "+90" and names[perm[1]] == "+45" and names[perm[3]] == "+315"


def test_unknown_or_incomplete_class_sets() -> None:
    assert class_permutation(["grain A", "grain B"], "flip_cols") is None
    assert class_permutation(["grain A", "grain B"], "identity") == [0, 1]
    used, skipped = usable_ops(["grain A", "grain B"])
    assert used == ["identity"]
    assert set(skipped) == set(SYMMETRY_OPS[1:]) and "not understood" in skipped["rot90"]
    # +x without -x: mirrors of columns cannot be used, the transpose can.
    partial = ["none", "+x", "+y"]
    assert class_permutation(partial, "flip_cols") is None
    assert class_permutation(partial, "transpose") == [0, 2, 1]
    used, skipped = usable_ops(partial)
    assert used == ["identity", "transpose"]
    assert "not in the class set" in skipped["flip_cols"]
    with pytest.raises(ValueError, match="unknown symmetry operation"):
        class_permutation(SIGNED, "shear")


def _batch(n: int = 16, size: int = 33) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(n) % 5
    x = torch.stack([torch.from_numpy(toy_pattern(VECTORS[SIGNED[int(k)]], size)).float() for k in y])[:, None]
    return x, y


def test_augmenter_symmetry_only_keeps_pattern_and_label_consistent() -> None:
    cfg = AugmentConfig(symmetry=True, dose=False, shift=False, smooth=False)
    aug = Augmenter(SIGNED, cfg, scaling="none")
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


def test_symmetry_off_and_description() -> None:
    aug = Augmenter(SIGNED, AugmentConfig(symmetry=False))
    assert aug.ops == ["identity"]
    d = aug.describe()
    assert d["symmetry_ops_used"] == ["identity"]
    assert d["symmetry_ops_skipped"]["flip_cols"] == "symmetry augmentation off"


def test_smooth_field_keeps_friedel_pairs_equal() -> None:
    # A centrosymmetric pattern must stay centrosymmetric: the field may not fake a polar signal.
    cfg = AugmentConfig(symmetry=False, dose=False, shift=False, smooth=True, field_strength=0.5, gamma_std=0.3)
    aug = Augmenter(SIGNED, cfg, scaling="none")
    x, y = _batch(8)
    x = x[y == 0]  # class "none": centrosymmetric
    xa, _ = aug(x, y[y == 0], torch.Generator().manual_seed(0))
    assert not torch.allclose(xa, x, atol=1e-3)  # something happened
    torch.testing.assert_close(xa, xa.flip(-1).flip(-2), atol=1e-5, rtol=1e-5)


def test_shift_moves_centre_of_mass_by_at_most_max_shift() -> None:
    cfg = AugmentConfig(symmetry=False, dose=False, shift=True, max_shift=0.7, smooth=False)
    aug = Augmenter(SIGNED, cfg, scaling="none")
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
    aug = Augmenter(SIGNED, cfg, scaling="sqrt")
    lin = torch.full((2000, 1, 4, 4), 0.25)
    lin[:, :, 0, 0] = 1.0  # peak = 1 -> 100 counts; the rest 25 counts
    out, _ = aug(lin.sqrt(), torch.zeros(2000, dtype=torch.long), torch.Generator().manual_seed(0))
    counts = (out**2) * 100  # back to counts
    v = counts[:, 0, 1:, 1:].reshape(-1)
    assert abs(float(v.mean()) - 25) < 0.5
    assert abs(float(v.var()) / 25 - 1) < 0.1  # variance = mean, as for counting noise


def test_wall_mixing_blends_linear_intensity_and_softens_the_target() -> None:
    cfg = AugmentConfig(symmetry=False, dose=False, shift=False, smooth=False, mix=True, mix_p=1.0, mix_range=(0.6, 0.9))
    aug = Augmenter(SIGNED, cfg, scaling="sqrt")
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
        Augmenter(SIGNED, scaling="cube")


def test_augment_config_round_trip() -> None:
    c = AugmentConfig(max_shift=0.3, dose_range=(10.0, 20.0), mix_range=(0.7, 1.0))
    assert AugmentConfig.from_dict(c.to_dict()) == c
