"""RGB composition, domain walls and their statistics, colour wheel, Plotly figures, PNG export."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image

from polmap.io.dataset import Calibration
from polmap.analysis.walls import domain_walls, wall_statistics
from polmap.viz.maps import (
    MAX_PICK_POINTS,
    PAPER_REFERENCE,
    accuracy_vs_labels_figure,
    colour_wheel,
    curves_figure,
    direction_color,
    direction_rgb,
    draw_mask,
    export_png,
    image_figure,
    label_rgb,
    legend_figure,
    map_figure,
    parse_color,
    pattern_figure,
    rgb_map,
    selected_positions,
)

RGB3 = ["#ff0000", "#00ff00", "#0000ff"]
NM = Calibration(real_step=0.5, real_units="nm")


def _decode_image_source(src: str) -> np.ndarray:
    assert src.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))


# ----------------------------------------------------------------------------- colours
def test_parse_color_forms_and_errors():
    assert parse_color("#FF8000") == (255, 128, 0)
    assert parse_color("#f80") == (255, 136, 0)
    assert parse_color("rgb(1, 2, 3)") == (1, 2, 3)
    assert parse_color((10, 20.4, 30)) == (10, 20, 30)
    with pytest.raises(ValueError, match="cannot read colour"):
        parse_color("red-ish")
    with pytest.raises(ValueError, match="three values"):
        parse_color((1, 2, 300))


def test_direction_colours_follow_the_wheel():
    assert direction_color(0) == "#ff0000"  # +x
    assert direction_color(90) == "#80ff00"  # +y (down)
    assert direction_color(180) == "#00ffff"  # -x
    assert direction_color(270) == "#8000ff"  # -y
    v = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, -0.5], [np.nan, np.nan]])
    out = direction_rgb(v, max_magnitude=1.0)
    np.testing.assert_array_equal(out, [[255, 0, 0], [128, 255, 0], [0, 128, 128], [0, 0, 0]])
    wheel = colour_wheel(65)
    assert tuple(wheel[32, 64]) == (255, 0, 0)  # right rim: +x
    assert tuple(wheel[64, 32]) == (128, 255, 0)  # bottom rim: +y, rows grow down
    assert tuple(wheel[0, 0]) == (255, 255, 255) and tuple(wheel[32, 32]) == (0, 0, 0)


def test_blend_is_exact_for_one_hot_and_half_half():
    p = np.array([[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.5, 0, 0.5]]])
    out = rgb_map(p, ["#123456", "#abcdef", "#ff0000"])
    np.testing.assert_array_equal(out[0, :3], [[0x12, 0x34, 0x56], [0xAB, 0xCD, 0xEF], [255, 0, 0]])
    np.testing.assert_array_equal(rgb_map(p, RGB3)[0, 3], [128, 0, 128])  # 127.5 rounds up
    # Unnormalised scores are renormalised: (2, 0, 2) is the same 50/50 blend.
    np.testing.assert_array_equal(rgb_map(p * 4, RGB3)[0, 3], [128, 0, 128])
    assert out.dtype == np.uint8 and out.shape == (1, 4, 3)


def test_missing_positions_and_colour_table_errors():
    p = np.array([[[np.nan, 0.5], [0.0, 0.0]]])
    np.testing.assert_array_equal(rgb_map(p, ["#ff0000", "#0000ff"], missing_color="#010203"), [[[1, 2, 3]] * 2])
    with pytest.raises(ValueError, match="3 classes but only 2 class colours"):
        rgb_map(np.ones((2, 2, 3)), ["#ff0000", "#0000ff"])
    with pytest.raises(ValueError, match="unknown mode"):
        rgb_map(np.ones((2, 2, 3)), RGB3, mode="fancy")


def test_paper_mode_writes_softmax_into_rgb():
    p = np.array([[[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]])
    np.testing.assert_array_equal(rgb_map(p, mode="paper"), [[[51, 77, 128], [255, 0, 0]]])
    with pytest.raises(ValueError, match="needs K = 3"):
        rgb_map(np.full((2, 2, 5), 0.2), mode="paper")


def test_fading_by_uncertainty():
    p = np.array([[[1.0, 0.0], [0.5, 0.5]]])
    # Default uncertainty = normalised entropy: certain stays, 50/50 goes fully white.
    np.testing.assert_array_equal(rgb_map(p, ["#ff0000", "#0000ff"], fade=1.0), [[[255, 0, 0], [255, 255, 255]]])
    half = rgb_map(p[:, :1], ["#ff0000", "#0000ff"], uncertainty=np.array([[0.5]]), fade=1.0)
    np.testing.assert_array_equal(half, [[[255, 128, 128]]])
    grey = rgb_map(p[:, 1:], ["#ff0000", "#0000ff"], fade=0.5, fade_to="#808080")
    np.testing.assert_array_equal(grey, [[[128, 64, 128]]])  # (127.5,0,127.5) halfway to (128,128,128)
    with pytest.raises(ValueError, match="fade must be in"):
        rgb_map(p, ["#ff0000", "#0000ff"], fade=2)


def test_label_rgb_and_draw_mask():
    lab = np.array([[0, 1], [-1, 2]])
    out = label_rgb(lab, RGB3, missing_color="#ffffff")
    np.testing.assert_array_equal(out, [[[255, 0, 0], [0, 255, 0]], [[255, 255, 255], [0, 0, 255]]])
    painted = draw_mask(out, lab == 1, "#000000", alpha=0.5)
    np.testing.assert_array_equal(painted[0, 1], [0, 128, 0])
    np.testing.assert_array_equal(painted[1], out[1])


# ----------------------------------------------------------------------------- walls
def test_walls_of_a_two_domain_map():
    lab = np.zeros((5, 8), int)
    lab[:, 4:] = 1
    thick = domain_walls(lab)
    assert np.array_equal(np.nonzero(thick.any(axis=0))[0], [3, 4]) and thick[:, 3:5].all() and thick.sum() == 10
    thin = domain_walls(lab, thin=True)
    assert thin[:, 4].all() and thin.sum() == 5  # the higher class's side
    assert domain_walls(1 - lab, thin=True)[:, 3].all()
    # Probabilities give the same walls as their argmax.
    probs = np.stack([lab == 0, lab == 1], axis=-1).astype(float)
    np.testing.assert_array_equal(domain_walls(probs), thick)
    # Unknown positions never make walls: a column of unknowns separates the domains.
    unknown = lab.copy()
    unknown[:, 4] = -1
    assert not domain_walls(unknown).any()
    unknown[0, 4] = 1
    np.testing.assert_array_equal(np.argwhere(domain_walls(unknown)), [[0, 3], [0, 4]])


def test_eight_connectivity_sees_diagonal_contacts():
    lab = np.array([[0, 1], [1, 0]])
    np.testing.assert_array_equal(domain_walls(lab, connectivity=4), np.ones((2, 2), bool))
    lab = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]])
    assert domain_walls(lab, connectivity=4).sum() == 5
    assert domain_walls(lab, connectivity=8).sum() == 9
    with pytest.raises(ValueError, match="connectivity must be 4 or 8"):
        domain_walls(lab, connectivity=6)


def test_wall_length_of_a_straight_wall_is_calibrated():
    lab = np.zeros((20, 30), int)
    lab[:, 12:] = 1
    st = wall_statistics(domain_walls(lab), lab, NM, class_names=["vertical", "horizontal"])
    assert st["wall_length_px"] == pytest.approx(20.0) and st["wall_length"] == pytest.approx(10.0)
    assert st["length_units"] == "nm" and st["area_units"] == "nm^2"
    assert st["pair_edges"] == {"vertical|horizontal": 20}
    assert st["pair_lengths"] == {"vertical|horizontal": pytest.approx(10.0)}
    assert st["wall_pixels"] == 40 and st["wall_area"] == pytest.approx(10.0)
    assert st["n_domains"] == 2 and st["domain_sizes"] == {"vertical": [240], "horizontal": [360]}
    assert st["domain_areas"]["vertical"] == [pytest.approx(60.0)]
    # The drawn thickness does not change the length.
    assert wall_statistics(domain_walls(lab, thin=True), lab)["wall_length_px"] == pytest.approx(20.0)


@pytest.mark.parametrize("slope", [1.0, 0.5, 0.25])
def test_wall_length_of_inclined_walls(slope):
    R = 80
    rr, cc = np.mgrid[:R, : int(10 + slope * R) + 5]
    lab = (cc >= 10 + slope * rr).astype(int)
    true = R * math.sqrt(1 + slope**2)  # the wall crosses every row once
    assert wall_statistics(None, lab)["wall_length_px"] == pytest.approx(true, rel=0.03)


def test_domain_count_and_sizes():
    lab = np.zeros((20, 20), int)
    lab[2:6, 2:6] = 1  # 16
    lab[10:13, 10:13] = 1  # 9
    lab[18, 18] = 1  # 1: a speck
    st = wall_statistics(None, lab)
    assert st["domains_per_class"] == {"0": 1, "1": 3} and st["domain_sizes"]["1"] == [16, 9, 1]
    st = wall_statistics(None, lab, min_domain_size=2)
    assert st["n_domains"] == 3 and st["small_regions"] == 1
    assert st["mean_domain_area"] == pytest.approx((400 - 26 + 16 + 9) / 3)
    # Two classes, each of several pairs.
    three = np.zeros((4, 6), int)
    three[:, 2:4], three[:, 4:] = 1, 2
    assert wall_statistics(None, three)["pair_edges"] == {"0|1": 4, "1|2": 4}


# ----------------------------------------------------------------------------- figures
def _scene(R=64, C=48):
    rr, cc = np.mgrid[:R, :C]
    lab = (cc >= 20 + 0.3 * rr).astype(int)
    probs = np.stack([lab == 0, lab == 1], axis=-1) * 0.8 + 0.1
    rgb = rgb_map(probs, ["#00ff00", "#0000ff"])
    unc = np.full((R, C), 0.25)
    return lab, probs, rgb, unc


def test_map_figure_traces_axes_and_customdata():
    lab, probs, rgb, unc = _scene()
    labelled = (np.array([[10, 5], [10, 40], [11, 41]]), np.array([0, 1, 1]), ["#00ff00", "#0000ff"])
    fig = map_figure(rgb, calibration=NM, probabilities=probs, class_names=["vertical", "horizontal"],
                     uncertainty=unc, walls=domain_walls(lab), labelled=labelled,
                     suggestions=np.array([[30, 30], [40, 20]]), title="map")
    assert isinstance(fig, go.Figure)
    assert [(t.type, t.name) for t in fig.data] == [
        ("image", "map"), ("heatmap", "normalised entropy"), ("heatmap", "walls"), ("scattergl", "positions"),
        ("scatter", "labelled: vertical"), ("scatter", "labelled: horizontal"), ("scatter", "suggested"),
    ]
    img = fig.data[0]
    np.testing.assert_array_equal(_decode_image_source(img.source), rgb)  # lossless PNG
    assert (img.x0, img.dx, img.y0, img.dy) == (0, 0.5, 0, 0.5)
    lay = fig.layout
    assert lay.yaxis.scaleanchor == "x" and lay.yaxis.scaleratio == 1
    assert tuple(lay.yaxis.range) == (31.75, -0.25) and tuple(lay.xaxis.range) == (-0.25, 23.75)  # rows grow down
    assert lay.xaxis.title.text == "x (nm)" and lay.yaxis.title.text == "y (nm)"
    assert fig.data[1].visible == "legendonly" and fig.data[2].visible is True
    pick = fig.data[3]
    cd = np.asarray(pick.customdata)
    assert cd.shape == (64 * 48, 5)  # row, col, p(vertical) %, p(horizontal) %, uncertainty %
    i = 30 * 48 + 10
    np.testing.assert_array_equal(cd[i], [30, 10, 90, 10, 25])
    assert pick.x[i] == pytest.approx(5.0) and pick.y[i] == pytest.approx(15.0)
    assert "p(vertical)" in pick.hovertemplate and "normalised entropy" in pick.hovertemplate and "nm" in pick.hovertemplate
    assert fig.data[5].marker.color == "#0000ff" and np.asarray(fig.data[5].customdata).tolist() == [[10, 40], [11, 41]]
    sug = fig.data[6]
    assert list(sug.text) == ["1", "2"] and list(sug.x) == [15.0, 10.0] and list(sug.y) == [15.0, 20.0]


def test_map_figure_without_calibration_and_large_scans():
    rgb = np.zeros((3, 4, 3), np.uint8)
    fig = map_figure(rgb)
    assert fig.layout.xaxis.title.text == "x (px)" and [t.name for t in fig.data] == ["map", "positions"]
    assert np.asarray(fig.data[1].customdata).shape == (12, 2)
    big = map_figure(np.zeros((300, 300, 3), np.uint8))
    assert 300 * 300 > MAX_PICK_POINTS and [t.type for t in big.data] == ["image"]
    with pytest.raises(ValueError, match="uint8"):
        map_figure(np.zeros((3, 4, 3)))
    with pytest.raises(ValueError, match="walls must have shape"):
        map_figure(rgb, walls=np.zeros((4, 3), bool))


def test_figures_for_a_256x256_scan():
    # speed: benchmarks/bench_render.py
    R = C = 256
    rr, cc = np.mgrid[:R, :C]
    lab = (cc >= 100 + 0.5 * rr).astype(int)
    probs = np.stack([lab == 0, lab == 1, np.zeros_like(lab)], axis=-1) * 0.9 + 0.1 / 3
    rgb = rgb_map(probs, RGB3, fade=0.5)
    walls = domain_walls(probs)
    fig = map_figure(rgb, calibration=NM, probabilities=probs, class_names=["na", "v", "h"],
                     uncertainty=probs.max(axis=2), walls=walls, suggestions=np.array([[1, 1]]))
    assert len(fig.data[3].x) == R * C
    # the wall follows the boundary col = 100 + rr / 2: one wall pixel or two per row
    assert walls.shape == (R, C) and all(1 <= walls[r].sum() <= 2 for r in range(R))
    img = image_figure(rr.astype(float), walls=walls)
    assert img.data[0].z.shape == (R, C)


def test_image_figure_overlays_and_hover_value():
    img = np.arange(12, dtype=float).reshape(3, 4)
    img[0, 0] = 1e6  # a hot pixel must not set the display range
    fig = image_figure(img, calibration=NM, walls=np.eye(3, 4, dtype=bool), suggestions=[[2, 3]],
                       labelled=([[0, 1]], [1], RGB3), class_names=["na", "v", "h"], value_name="BF")
    assert [(t.type, t.name) for t in fig.data] == [
        ("heatmap", "image"), ("heatmap", "walls"), ("scattergl", "positions"), ("scatter", "labelled: v"),
        ("scatter", "suggested"),
    ]
    assert fig.data[0].zmax < 1e6 and fig.data[0].dx == 0.5
    cd = np.asarray(fig.data[2].customdata)
    np.testing.assert_allclose(cd[1 * 4 + 2], [1, 2, 6.0])
    assert "BF" in fig.data[2].hovertemplate
    assert fig.layout.yaxis.scaleanchor == "x"


def test_pattern_figure_detectors_and_calibration():
    pat = np.full((32, 32), 10.0)
    pat[16, 16] = 1000
    fig = pattern_figure(pat, detector_overlays=[
        {"name": "BF", "center": (16, 16), "radius": 4},
        {"name": "ADF", "center": (16, 16), "inner": 8, "outer": 14, "color": "#ff00ff"},
    ], calibration=Calibration(reciprocal_step=0.25, reciprocal_units="mrad"))
    hm = fig.data[0]
    assert hm.type == "heatmap" and hm.x0 == pytest.approx(-15.5 * 0.25) and hm.dx == 0.25
    np.testing.assert_allclose(np.asarray(hm.z)[16, 16], np.log1p(990), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(hm.customdata)[16, 16], 1000)
    assert len(fig.layout.shapes) == 3 and fig.layout.shapes[2].line.color == "#ff00ff"
    bf = fig.layout.shapes[0]
    assert (bf.x1 - bf.x0) == pytest.approx(2 * 4 * 0.25)
    assert fig.layout.xaxis.title.text == "q_x (mrad)"
    assert {a.text for a in fig.layout.annotations} == {"BF", "ADF"}
    lin = pattern_figure(pat, log=False)
    assert np.asarray(lin.data[0].z).max() == 1000 and lin.layout.xaxis.title.text == "q_x (px)"
    with pytest.raises(ValueError, match="needs 'radius'"):
        pattern_figure(pat, detector_overlays=[{"center": (1, 1)}])


def test_legend_figures():
    # Names mean nothing: the wheel places classes by their (declared, verified) directions only.
    names = ["c-domain", "A", "B", "C", "D"]
    directions = {"c-domain": "invariant", "A": 0.0, "B": 180.0, "C": 90.0, "D": 270.0}
    colors = ["#808080"] + [direction_color(a) for a in (0, 180, 90, 270)]
    fig = legend_figure(names, colors, directions)
    assert fig.data[0].type == "image"
    assert {a.text for a in fig.layout.annotations} == {f"<b>{n}</b>" for n in names[1:]}
    a_pos = next(a for a in fig.layout.annotations if a.text == "<b>A</b>")
    c_pos = next(a for a in fig.layout.annotations if a.text == "<b>C</b>")
    assert a_pos.x > 0 and abs(a_pos.y) < 1e-6 and c_pos.y > 0 and abs(c_pos.x) < 1e-6
    assert [t.text[0] for t in fig.data[1:]] == ["c-domain"]  # a swatch for the undirected class
    # Names that look like directions draw no wheel without declared directions.
    plain = legend_figure(["+x", "-x", "+y"], RGB3)
    assert len(plain.data) == 1 and list(plain.data[0].marker.color) == RGB3


def test_curves_and_accuracy_figures():
    hist = {"epoch": [1, 2, 3], "train_loss": [1.0, 0.5, 0.3], "val_loss": [1.1, 0.7, 0.5],
            "train_acc": [0.5, 0.7, 0.9], "val_acc": [0.4, 0.6, 0.8], "lr": [1e-3] * 3}
    fig = curves_figure(hist)
    assert [(t.name, t.xaxis) for t in fig.data] == [
        ("train_loss", "x"), ("val_loss", "x"), ("train_acc", "x2"), ("val_acc", "x2"),
    ]
    assert fig.data[1].line.dash == "dash"
    rows = [dict(zip(hist, v)) for v in zip(*hist.values())]
    assert [list(t.y) for t in curves_figure(rows).data] == [list(t.y) for t in fig.data]

    res = [{"strategy": "random", "n_labels": 50, "accuracy": a, "seed": s} for s, a in enumerate([0.8, 0.9])]
    res += [{"strategy": "adaptive", "n_labels": n, "accuracy": a} for n, a in [(10, 0.7), (50, 0.97)]]
    acc = accuracy_vs_labels_figure(res, reference=PAPER_REFERENCE)
    assert [t.name for t in acc.data] == ["random", "adaptive", PAPER_REFERENCE["name"]]
    assert list(acc.data[0].y) == [pytest.approx(0.85)] and list(acc.data[0].error_y.array) == [pytest.approx(0.05)]
    assert list(acc.data[1].x) == [10, 50] and acc.data[1].error_y.visible is False
    same = accuracy_vs_labels_figure({"adaptive": [(10, 0.7), (50, 0.97)]})
    assert list(same.data[0].y) == [0.7, 0.97]
    with pytest.raises(ValueError, match="lacks 'accuracy'"):
        accuracy_vs_labels_figure([{"strategy": "x", "n_labels": 3}])


def test_selected_positions_from_a_selection_event():
    event = {"selection": {"points": [
        {"customdata": [3, 4, 90, 10], "x": 2.0, "y": 1.5},
        {"x": 1.0, "y": 2.0},  # no customdata: located from x/y
        {"customdata": [3.0, 4.0]},  # a repeat
    ]}}
    np.testing.assert_array_equal(selected_positions(event, NM), [[3, 4], [4, 2]])
    assert selected_positions({"selection": {"points": []}}).shape == (0, 2)


# ----------------------------------------------------------------------------- export
def test_export_png_nearest_neighbour(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], np.uint8)
    path = export_png(rgb, tmp_path / "map.png", scale=3, metadata={"polmap": "test"})
    im = Image.open(path)
    assert im.size == (6, 6) and im.info["polmap"] == "test"
    arr = np.asarray(im)
    np.testing.assert_array_equal(arr[::3, ::3], rgb)
    np.testing.assert_array_equal(arr[3:6, 3:6], np.broadcast_to(rgb[1, 1], (3, 3, 3)))
    buf = export_png(np.eye(2, dtype=bool), io.BytesIO(), scale=1)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(buf.getvalue()))), [[255, 0], [0, 255]])
    with pytest.raises(ValueError, match="scale must be"):
        export_png(rgb, io.BytesIO(), scale=0)
    with pytest.raises(ValueError, match=r"float image must hold finite values in \[0, 1\]"):
        export_png(rgb * 2.0, io.BytesIO())
