"""Tests for polmap.labels: class sets, the label store, undo/redo, hashing, CSV."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from polmap.labels import SOURCES, ClassSet, LabelStore, hue_color


# -- ClassSet -----------------------------------------------------------------------
def test_signed_preset_is_a_colour_wheel():
    cs = ClassSet.signed()
    assert cs.names == ["none", "+x", "-x", "+y", "-y"]
    # hue = direction angle: +x 0 deg red, +y 90 deg, -x 180 deg cyan, -y 270 deg
    assert cs.colors == ["#808080", "#ff0000", "#00ffff", "#80ff00", "#8000ff"]
    assert hue_color(360 + 90) == hue_color(90)
    assert cs.rgb().tolist()[1] == [255, 0, 0]


def test_axis_preset_is_the_papers_rgb():
    cs = ClassSet.axis()
    assert cs.names == ["na", "vertical", "horizontal"]
    assert cs.colors == ["#ff0000", "#00ff00", "#0000ff"]
    assert ClassSet.preset("axis") == cs
    with pytest.raises(ValueError, match="unknown class preset"):
        ClassSet.preset("nope")


@pytest.mark.parametrize(
    "names, colors, message",
    [
        ([], [], "at least one class"),
        (["a", "a"], ["#000000", "#111111"], "unique"),
        (["a", " "], ["#000000", "#111111"], "non-empty"),
        (["a"], ["red"], "#rrggbb"),
        (["a"], ["#12345g"], "#rrggbb"),
        (["a", "b"], ["#000000"], "one colour per class"),
    ],
)
def test_classset_validation(names, colors, message):
    with pytest.raises(ValueError, match=message):
        ClassSet(names, colors)


def test_classset_editing_returns_new_sets():
    cs = ClassSet.axis()
    r = cs.renamed("na", "none")
    assert r.names == ["none", "vertical", "horizontal"] and cs.names[0] == "na"
    assert r.colors == cs.colors
    assert cs.with_color(1, "#ABCDEF").colors[1] == "#abcdef"
    added = cs.with_class("wall")
    assert added.names[-1] == "wall" and len(added) == 4
    assert added.colors[-1] not in cs.colors
    assert cs.without("vertical").names == ["na", "horizontal"]
    with pytest.raises(ValueError, match="unique"):
        cs.renamed("na", "vertical")
    with pytest.raises(ValueError, match="unknown class 'x'"):
        cs.index("x")
    with pytest.raises(ValueError, match="out of range"):
        cs.index(3)
    assert ClassSet.from_dict(json.loads(json.dumps(cs.to_dict()))) == cs


# -- LabelStore basics --------------------------------------------------------------
@pytest.fixture
def store() -> LabelStore:
    return LabelStore((6, 8), ClassSet.signed())


def test_points_regions_counts(store):
    store.add_point(0, 0, "+x")
    store.add_point(5, 7, 3)  # by index: "+y"
    mask = np.zeros((6, 8), bool)
    mask[2:4, 1:6] = True  # 10 positions
    assert store.add_region(mask, "-x") == 10
    assert len(store) == 12
    assert store.counts() == {"none": 0, "+x": 1, "-x": 10, "+y": 1, "-y": 0}
    assert store.source_counts() == {"click": 2, "paint": 10, "suggestion": 0, "import": 0}
    lm = store.label_map()
    assert lm.dtype == np.int16 and lm.shape == (6, 8)
    assert lm[0, 0] == 1 and lm[5, 7] == 3 and (lm[2:4, 1:6] == 2).all()
    assert (lm == -1).sum() == 48 - 12
    pos, cls = store.positions_and_classes()
    assert pos.shape == (12, 2) and cls.shape == (12,)
    assert pos[0].tolist() == [0, 0] and cls[0] == 1
    assert pos[-1].tolist() == [5, 7] and cls[-1] == 3
    # region positions share a group, clicked points have their own
    g = store.groups()
    region_groups = {int(x) for x, c in zip(g, cls) if c == 2}
    assert len(region_groups) == 1 and len(set(g.tolist())) == 3


def test_last_write_wins(store):
    mask = np.ones((6, 8), bool)
    store.add_region(mask, "+x")
    store.add_point(3, 3, "-y")
    assert store.counts()["+x"] == 47 and store.counts()["-y"] == 1
    assert store.label_at(3, 3)["class"] == "-y"
    assert store.label_at(3, 3)["source"] == "click"
    # repainting over it relabels it; unchanged positions are not counted
    assert store.add_region(mask, "+x") == 1
    assert store.counts()["+x"] == 48
    assert store.add_region(mask, "+x") == 0


def test_erase_and_remove(store):
    mask = np.zeros((6, 8), bool)
    mask[:, :4] = True
    store.add_region(mask, "none")
    store.add_point(0, 7, "+x")
    erase = np.zeros((6, 8), bool)
    erase[:2, :] = True  # 8 painted + 1 clicked
    assert store.erase_region(erase) == 9
    assert len(store) == 16
    assert store.erase_region(erase) == 0
    assert store.remove_point(5, 0) is True
    assert store.remove_point(5, 0) is False
    assert store.label_at(5, 0) is None
    assert len(store) == 15
    assert store.clear() == 15 and len(store) == 0


def test_bad_inputs_have_clear_messages(store):
    with pytest.raises(ValueError, match=r"outside the scan of shape \(6, 8\)"):
        store.add_point(6, 0, "+x")
    with pytest.raises(ValueError, match="outside the scan"):
        store.add_point(0, -1, "+x")
    with pytest.raises(ValueError, match="must be an integer"):
        store.add_point(1.5, 0, "+x")
    with pytest.raises(ValueError, match="unknown class 'up'"):
        store.add_point(0, 0, "up")
    with pytest.raises(ValueError, match=r"mask shape \(8, 6\) does not match the scan shape \(6, 8\)"):
        store.add_region(np.ones((8, 6), bool), "+x")
    with pytest.raises(ValueError, match="boolean"):
        store.add_region(np.full((6, 8), 0.5), "+x")
    with pytest.raises(ValueError, match="unknown label source"):
        store.add_point(0, 0, "+x", source="magic")
    with pytest.raises(ValueError, match="scan_shape"):
        LabelStore((0, 4), ClassSet.axis())
    assert len(store) == 0 and not store.can_undo


def test_integer_mask_is_accepted(store):
    m = np.zeros((6, 8), np.uint8)
    m[0, :3] = 1
    assert store.add_region(m, "+y") == 3


def test_add_points_batch(store):
    pos = np.array([[0, 0], [1, 1], [0, 0], [2, 2]])
    n = store.add_points(pos, ["+x", "-x", "+y", "-y"], source="suggestion")
    assert n == 3  # (0,0) repeated: last write wins
    assert store.label_at(0, 0)["class"] == "+y"
    assert store.source_counts()["suggestion"] == 3
    assert store.undo() and len(store) == 0
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        store.add_points(np.zeros((3, 3), int), "+x")
    with pytest.raises(ValueError, match=r"position \(row=9, col=0\) is outside"):
        store.add_points(np.array([[0, 0], [9, 0]]), "+x")
    with pytest.raises(ValueError, match="integers"):
        store.add_points(np.array([[0.5, 0]]), "+x")
    assert len(store) == 0


# -- undo / redo ----------------------------------------------------------------------
def test_undo_redo_sequence(store):
    assert store.undo() is False and store.redo() is False
    store.add_point(0, 0, "+x")
    mask = np.zeros((6, 8), bool)
    mask[0, :5] = True
    store.add_region(mask, "-x")  # overwrites (0,0): one action
    store.erase_region(np.eye(6, 8, dtype=bool))  # removes (0,0)
    assert len(store) == 4
    assert store.undo() and len(store) == 5 and store.label_at(0, 0)["class"] == "-x"
    assert store.undo() and len(store) == 1 and store.label_at(0, 0)["class"] == "+x"
    assert store.undo() and len(store) == 0
    assert store.undo() is False
    assert store.redo() and store.label_at(0, 0)["class"] == "+x"
    assert store.redo() and store.counts()["-x"] == 5
    # a new action clears the redo stack
    store.add_point(5, 5, "+y")
    assert store.redo() is False
    assert store.counts() == {"none": 0, "+x": 0, "-x": 5, "+y": 1, "-y": 0}
    # undo restores time and source exactly
    t = store.label_at(0, 0)["time"]
    store.add_point(0, 0, "none")
    store.undo()
    assert store.label_at(0, 0) == {"class": "-x", "source": "paint", "time": t, "group": store.label_at(0, 1)["group"]}


def test_history_is_capped():
    s = LabelStore((3, 3), ClassSet.axis(), max_history=2)
    for c in range(3):
        s.add_point(0, c, "na")
    assert s.undo() and s.undo() and not s.undo()
    assert len(s) == 1


def test_revision_counts_changes(store):
    r0 = store.revision
    store.add_point(1, 1, "+x")
    store.add_point(1, 1, "+x")  # identical: no change
    assert store.revision == r0 + 1
    store.undo()
    assert store.revision == r0 + 2


# -- hash -----------------------------------------------------------------------------
def test_hash_depends_on_labels_not_on_history():
    a = LabelStore((5, 5), ClassSet.axis())
    b = LabelStore((5, 5), ClassSet.axis())
    empty = a.hash()
    assert len(empty) == 16 and empty == b.hash()
    m = np.zeros((5, 5), bool)
    m[1:3, 1:3] = True
    a.add_point(0, 0, "na")
    a.add_region(m, "vertical")
    a.add_point(4, 4, "horizontal")
    # same final labels reached differently (clicks, other order, undo/erase detours)
    for r, c in [(2, 2), (1, 1), (1, 2), (2, 1)]:
        b.add_point(r, c, "vertical")
    b.add_point(4, 4, "na")
    b.add_point(4, 4, "horizontal")
    b.add_point(3, 3, "na")
    b.undo()
    b.add_points(np.array([[0, 0]]), "na")
    assert a.hash() == b.hash()
    assert a.hash() != empty
    b.add_point(0, 0, "vertical")
    assert a.hash() != b.hash()
    b.undo()
    assert a.hash() == b.hash()
    # renaming a class changes what a model learns -> new hash; a colour does not
    h = a.hash()
    a.set_class_color("na", "#123456")
    assert a.hash() == h
    a.rename_class("na", "none")
    assert a.hash() != h


# -- class editing keeps labels consistent ------------------------------------------
def test_class_editing_on_store(store):
    store.add_point(0, 0, "+x")
    store.add_point(0, 1, "-y")
    store.rename_class("+x", "right")
    assert store.counts()["right"] == 1 and store.label_at(0, 0)["class"] == "right"
    store.set_class_color("right", "#010203")
    assert store.classes.color_of("right") == "#010203"
    k = store.add_class("wall", "#ffffff")
    assert k == 5 and store.counts()["wall"] == 0
    store.add_point(2, 2, "wall")
    with pytest.raises(ValueError, match=r"class 'right' still has 1 label\(s\).*drop_labels=True"):
        store.remove_class("right")
    assert store.classes.names[1] == "right" and len(store) == 3
    assert store.remove_class("none") == 0  # empty class: removed, later indices shift
    assert store.classes.names == ["right", "-x", "+y", "-y", "wall"]
    assert store.label_map()[0, 0] == 0 and store.label_at(0, 1)["class"] == "-y"
    assert store.label_at(2, 2)["class"] == "wall"
    assert store.remove_class("right", drop_labels=True) == 1
    assert store.counts() == {"-x": 0, "+y": 0, "-y": 1, "wall": 1}
    assert not store.can_undo  # history referred to old indices


# -- serialisation ----------------------------------------------------------------------
def _filled_store() -> LabelStore:
    s = LabelStore((10, 12), ClassSet.signed())
    m = np.zeros((10, 12), bool)
    m[2:5, 3:9] = True
    s.add_region(m, "+y")
    s.add_point(0, 0, "-x")
    s.add_points(np.array([[9, 11], [8, 0]]), ["none", "+x"], source="suggestion")
    s.add_point(3, 4, "-y")
    s.erase_region(np.eye(10, 12, dtype=bool))
    return s


def test_dict_round_trip_is_exact():
    s = _filled_store()
    d = json.loads(json.dumps(s.to_dict()))  # must be JSON-safe
    t = LabelStore.from_dict(d)
    assert t.scan_shape == s.scan_shape and t.classes == s.classes
    assert t.hash() == s.hash()
    es, et = s.entries(), t.entries()
    for k in es:
        np.testing.assert_array_equal(es[k], et[k])
    assert t.next_group == s.next_group
    assert d["entries"]["source"].count("suggestion") == 2
    assert len(d["entries"]["row"]) == len(s) == 18 + 1 + 2 - 3  # the diagonal erases (0,0), (3,3), (4,4)


def test_from_dict_rejects_bad_input():
    d = _filled_store().to_dict()
    with pytest.raises(ValueError, match="not a polmap label set"):
        LabelStore.from_dict({"x": 1})
    bad = json.loads(json.dumps(d))
    bad["entries"]["row"][0] = 99
    with pytest.raises(ValueError, match=r"outside the scan of shape \(10, 12\)"):
        LabelStore.from_dict(bad)
    bad = json.loads(json.dumps(d))
    bad["entries"]["source"][0] = "telepathy"
    with pytest.raises(ValueError, match="unknown label source 'telepathy'"):
        LabelStore.from_dict(bad)
    bad = json.loads(json.dumps(d))
    bad["version"] = 7
    with pytest.raises(ValueError, match="newer"):
        LabelStore.from_dict(bad)


def test_csv_round_trip(tmp_path):
    s = _filled_store()
    path = tmp_path / "labels.csv"
    text = s.to_csv(path)
    lines = text.splitlines()
    assert lines[0] == "row,col,class,source,time,group"
    assert len(lines) == len(s) + 1
    assert path.read_text() == text
    t = LabelStore((10, 12), ClassSet.signed())
    assert t.import_csv(path) == len(s)
    assert t.hash() == s.hash()
    es, et = s.entries(), t.entries()
    np.testing.assert_array_equal(es["source"], et["source"])
    np.testing.assert_allclose(es["time"], et["time"], atol=1e-5)
    # the painted region is still one group after the trip
    region = et["class"] == 3
    assert len(np.unique(et["group"][region])) == 1
    assert len(np.unique(et["group"])) == len(np.unique(es["group"]))
    # import is one undoable action
    assert t.undo() and len(t) == 0


def test_csv_import_minimal_columns_and_uploads():
    s = LabelStore((4, 4), ClassSet.axis())
    data = b"\xef\xbb\xbfrow,col,class\n0,0,na\n1,2,vertical\n\n1,2,horizontal\n"
    assert s.import_csv(io.BytesIO(data)) == 2  # BOM stripped, blank line skipped, last row wins
    assert s.label_at(1, 2)["class"] == "horizontal"
    assert s.label_at(0, 0)["source"] == "import"
    s.import_csv(io.StringIO("row,col,class,source\n3,3,na,click\n"), as_source="import")
    assert s.label_at(3, 3)["source"] == "import"
    s.import_csv(io.StringIO("col,row,class,time\n1,0,na,2024-01-02T03:04:05Z\n"))
    assert s.label_at(0, 1)["time"] == 1704164645.0


@pytest.mark.parametrize(
    "body, message",
    [
        ("row,col,class\n0,0,na\n0,9,na\n", "line 3: position .* outside the scan"),
        ("row,col,class\n0,0,na\n0,1,up\n", "line 3: unknown class 'up'"),
        ("row,col,class\nx,0,na\n", "line 2: row and col must be integers"),
        ("row,col,class\n0,0\n", "line 2: 2 fields, expected 3"),
        ("row,col,class,source\n0,0,na,guess\n", "line 2: unknown label source 'guess'"),
        ("row,col,class,time\n0,0,na,yesterday\n", "line 2: time must be ISO 8601"),
        ("row,col,class,group\n0,0,na,g1\n", "line 2: group must be an integer"),
        ("r,c,class\n0,0,na\n", "line 1: header .* lacks column\\(s\\) \\['row', 'col'\\]"),
        ("", "empty file"),
    ],
)
def test_csv_bad_rows_name_the_line(body, message):
    s = LabelStore((4, 4), ClassSet.axis())
    with pytest.raises(ValueError, match=message):
        s.import_csv(io.StringIO(body))
    assert len(s) == 0  # nothing half-imported


def test_sources_constant():
    assert SOURCES == ("click", "paint", "suggestion", "import")


def test_one_colour_rule_for_a_list_of_names() -> None:
    from polmap.labels import CLASS_PRESETS

    # given colours win, even over a preset's
    cs = ClassSet.for_names(["na", "vertical", "horizontal"], ["#111111", "#222222", "#333333"])
    assert cs.colors == ["#111111", "#222222", "#333333"]
    # a preset's names get the preset's colours
    for k in CLASS_PRESETS:
        assert ClassSet.for_names(ClassSet.preset(k).names).colors == ClassSet.preset(k).colors
    # colours that do not fit (count or syntax) are not used
    assert ClassSet.for_names(["a", "b"], ["#111111"]).colors == ClassSet.for_names(["a", "b"]).colors
    assert ClassSet.for_names(["a", "b"], ["red", "blue"]).colors == ClassSet.for_names(["a", "b"]).colors
    # other names: distinct palette colours in order
    cs = ClassSet.for_names(["P1", "P2", "P3", "P4"], directions={"P1": 0, "P2": 180})
    assert len(set(cs.colors)) == 4 and cs.directions == {"P1": 0.0, "P2": 180.0}
    with pytest.raises(ValueError, match="at least one class"):
        ClassSet.for_names([])


def test_the_simulator_uses_the_labels_palette() -> None:
    from polmap.simulate import class_colors

    assert class_colors("signed") == ClassSet.signed().colors
    assert class_colors("axis") == ClassSet.axis().colors


def test_direction_colors_only_for_trusted_directions() -> None:
    from polmap.labels import direction_colors

    out = direction_colors(["up", "down", "flat", "odd"], ["#111111"] * 4, {"up": 90, "down": 270.0, "flat": "invariant"})
    assert out == [hue_color(90), hue_color(270), "#808080", "#111111"]
