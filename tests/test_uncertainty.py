"""The uncertainty measures, against analytic cases; one definition used by predict, maps and sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from polmap.analysis import uncertainty as U


def test_analytic_values() -> None:
    p = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0], [0.7, 0.2, 0.1]])
    h = U.normalised_entropy(p)
    want = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)) / math.log(3)
    np.testing.assert_allclose(h, [0.0, 1.0, math.log(2) / math.log(3), want], atol=1e-12)
    np.testing.assert_allclose(U.margin(p), [1.0, 0.0, 0.0, 0.5], atol=1e-12)


def test_unusable_positions_are_fully_uncertain() -> None:
    p = np.array([[np.nan, np.nan], [0.0, 0.0], [2.0, 2.0], [-1.0, 3.0]])
    np.testing.assert_allclose(U.normalised_entropy(p), [1, 1, 1, 0], atol=1e-12)
    np.testing.assert_allclose(U.margin(p), [0, 0, 0, 1], atol=1e-12)


def test_disagreement_is_zero_when_members_agree_and_large_when_they_contradict() -> None:
    agree = np.array([[[0.9, 0.1]], [[0.9, 0.1]]])
    contradict = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert U.disagreement(agree)[0] == pytest.approx(0.0, abs=1e-12)
    assert U.disagreement(contradict)[0] == pytest.approx(1.0)  # log 2 / log 2
    assert U.disagreement(agree[:1])[0] == 0.0


def test_one_definition_everywhere() -> None:
    from polmap.viz.maps import rgb_map
    from polmap.learn.predict import uncertainty_maps
    from polmap.learn.sampling import uncertainty_map

    rng = np.random.default_rng(0)
    members = rng.dirichlet(np.ones(4), size=(3, 6 * 5)).astype(np.float32)
    proba, ent, mar, dis = uncertainty_maps(members)
    np.testing.assert_allclose(ent, U.normalised_entropy(proba), atol=1e-6)
    np.testing.assert_allclose(mar, U.margin(proba), atol=1e-6)
    np.testing.assert_allclose(dis, U.disagreement(members), atol=1e-6)
    p3 = proba.reshape(6, 5, 4)
    np.testing.assert_allclose(uncertainty_map(p3, "entropy"), ent.reshape(6, 5), atol=1e-6)
    np.testing.assert_allclose(uncertainty_map(p3, "margin"), 1 - mar.reshape(6, 5), atol=1e-6)
    # the map's fade uses the same entropy: fading by it explicitly changes nothing
    colors = ["#ff0000", "#00ff00", "#0000ff", "#ffff00"]
    np.testing.assert_array_equal(rgb_map(p3, colors, fade=0.7),
                                  rgb_map(p3, colors, fade=0.7, uncertainty=U.normalised_entropy(p3)))
