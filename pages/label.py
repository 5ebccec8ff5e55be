"""Label: click a scan position to see its pattern and set its class; paint regions to label many."""

from __future__ import annotations

import numpy as np
import streamlit as st

from polmap.app import errors, session, datasets, labelling, figures

session.ensure_app_navigation()
sess = session.session()
st.title("Label")
ds = sess.dataset
if ds is None or sess.labels is None:
    st.info("Open a dataset on the Data page first.")
    st.stop()

st.markdown(figures.class_button_css(sess.classes, ("clsbtn_label", "clsbtn_paint")), unsafe_allow_html=True)
mode = st.segmented_control(
    "Mode", ["Click", "Paint"], default="Click", key="label_mode", label_visibility="collapsed",
    format_func=lambda m: {"Click": "Click positions", "Paint": "Paint regions"}[m],
) or "Click"


def _background() -> tuple[np.ndarray, str]:
    """The virtual image, or the current map once a model has predicted."""
    choice = st.session_state.get("label_bg", "virtual image")
    if choice == "current map" and sess.prediction is not None:
        return figures.map_rgb(sess), "current map"
    return datasets.virtual_image(ds, st.session_state.get("virtual_kind", "bright_field")), "virtual image"


# --------------------------------------------------------------------------------------
# click mode
# --------------------------------------------------------------------------------------
def _on_click() -> None:
    pos = figures.clicked_position(st.session_state.get("label_img"))
    if pos is None:
        return
    sess.selected = pos
    if st.session_state.get("label_on_click") and sess.labels is not None:
        with errors.guarded("Labelling"):
            labelling.label_point(sess, pos[0], pos[1], sess.active_class)


# Callbacks rerun only their own fragment; the sidebar counts refresh by themselves (run_every):
# a rerun scoped to the sidebar too measured 3-4x slower (0.4-0.9 s against 0.1-0.15 s on the demo).
def _on_class(i: int) -> None:
    sess.active_class = i
    if sess.selected is not None:
        labelling.label_point(sess, sess.selected[0], sess.selected[1], i)


def _on_undo(fragment: str = "label_click") -> None:
    if not labelling.undo(sess):
        sess.flash("info", "Nothing to undo.")
    sess.canvas_nonce += 1


def _on_redo() -> None:
    if not labelling.redo(sess):
        sess.flash("info", "Nothing to redo.")


def _on_move(drow: int, dcol: int) -> None:
    labelling.move_selection(sess, drow, dcol)
    sess.view.shown_selection = sess.selected


def _on_remove() -> None:
    if sess.selected is not None:
        labelling.unlabel_point(sess, *sess.selected)


@errors.guarded_fragment("Labelling", key="label_click")
def click_ui() -> None:
    lab = sess.labels
    names, colors = sess.classes.names, sess.classes.colors
    counts = lab.counts()
    # class buttons: label the selected position (keys 1..9)
    cols = st.columns(len(names))
    for i, (n, c) in enumerate(zip(names, colors)):
        cols[i].button(
            f"{n} · {counts.get(n, 0)}", key=f"clsbtn_label_{i}", on_click=_on_class, args=(i,),
            shortcut=str(i + 1) if i < 9 else None, help=f"Label the selected position '{n}' (key {i + 1})",
            width="stretch",
        )
    left, right = st.columns([3, 2])
    with left:
        bg, bg_name = _background()
        fig = figures.scan_figure(ds, bg, sess=sess, selected=labelling.shown_selection(sess, "label", bg_name), height=520)
        st.plotly_chart(
            fig, key="label_img", on_select=_on_click, selection_mode="points",
            config={"displaylogo": False, "modeBarButtonsToRemove": ["select2d", "lasso2d"]},
        )
        st.caption(f"Click a position on the {bg_name} to see its pattern; arrow keys move the selection; "
                   f"keys 1–{min(len(names), 9)} label it.")
    with right:
        r, c = sess.selected or (ds.scan_shape[0] // 2, ds.scan_shape[1] // 2)
        cur = lab.label_at(r, c)
        head = f"**Position (row {r}, col {c})**"
        if cur:
            head += f" — labelled {figures.swatch(sess.classes.color_of(cur['class']))}**{cur['class']}** ({cur['source']})"
        else:
            head += " — not labelled"
        st.markdown(head, unsafe_allow_html=True)
        logp = st.toggle("log scale", value=st.session_state.get("pattern_log", True), key="pattern_log")
        st.plotly_chart(figures.pattern_figure(ds.pattern(r, c), log=logp, height=380, calibration=ds.calibration), key="label_pattern",
                        config={"displaylogo": False})
        if sess.prediction is not None:
            p = np.asarray(sess.prediction.probabilities)[r, c]
            st.caption("Model: " + ", ".join(f"{n} {q:.0%}" for n, q in zip(names, p)))
        a1, a2, a3, a4 = st.columns(4)
        a1.button("left", key="mv_l", on_click=_on_move, args=(0, -1), shortcut="Left", width="stretch")
        a2.button("up", key="mv_u", on_click=_on_move, args=(-1, 0), shortcut="Up", width="stretch")
        a3.button("down", key="mv_d", on_click=_on_move, args=(1, 0), shortcut="Down", width="stretch")
        a4.button("right", key="mv_r", on_click=_on_move, args=(0, 1), shortcut="Right", width="stretch")
        u1, u2, u3 = st.columns([1, 1, 1.3])
        u1.button("Undo", key="undo", on_click=_on_undo, shortcut="Ctrl+Z",
                  disabled=not lab.can_undo, width="stretch")
        u2.button("Redo", key="redo", on_click=_on_redo, shortcut="Ctrl+Y",
                  disabled=not lab.can_redo, width="stretch")
        u3.button("Remove", key="unlabel", on_click=_on_remove, shortcut="Delete",
                  width="stretch", help="Remove the label of the selected position (Delete)")
        st.toggle(
            f"Label on click with the last class used ({names[sess.active_class]})", key="label_on_click",
            help="Each click on the image labels that position at once: the fastest way through many points.",
        )
        st.caption(f"{len(lab)} labelled · autosaved to `{sess.workspace.path.name}`")
    session.show_flash(sess)


# --------------------------------------------------------------------------------------
# paint mode
# --------------------------------------------------------------------------------------
def _on_active(i: int) -> None:
    sess.active_class = i
    st.session_state["paint_erase"] = False


@errors.guarded_fragment("Painting", key="label_paint")
def paint_ui() -> None:
    try:
        from streamlit_drawable_canvas import st_canvas
    except Exception as exc:  # noqa: BLE001 - the component needs the Streamlit server
        st.warning(f"The painting canvas is not available here ({type(exc).__name__}). Use click mode.")
        return
    lab = sess.labels
    names, colors = sess.classes.names, sess.classes.colors
    counts = lab.counts()
    st.markdown(
        f"<style>.st-key-clsbtn_paint_{sess.active_class} button {{outline: 3px solid #1f6feb; outline-offset: 2px;}}</style>",
        unsafe_allow_html=True,
    )
    cols = st.columns(len(names) + 1)
    for i, (n, c) in enumerate(zip(names, colors)):
        cols[i].button(f"{n} · {counts.get(n, 0)}", key=f"clsbtn_paint_{i}", on_click=_on_active, args=(i,),
                       shortcut=str(i + 1) if i < 9 else None, width="stretch",
                       help=f"Paint with '{n}' (key {i + 1})")
    cols[-1].button("Undo", key="undo_paint", on_click=_on_undo, args=("label_paint",), icon=":material/undo:",
                    shortcut="Ctrl+Z", disabled=not lab.can_undo, width="stretch")
    t1, t2, t3 = st.columns([3, 2, 2], vertical_alignment="bottom")
    tool = t1.segmented_control("Tool", ["freedraw", "rect", "polygon"], default="freedraw", key="paint_tool",
                                format_func=lambda t: {"freedraw": "Brush", "rect": "Rectangle", "polygon": "Polygon"}[t]) or "freedraw"
    erase = t2.toggle("Eraser", key="paint_erase", help="Shapes remove labels instead of adding them")
    R, C = ds.scan_shape
    brush = t3.slider("Brush (positions)", 1, max(2, min(R, C) // 4), 2, key="paint_brush")

    scale = int(max(2, min(24, 760 // C, 560 // R)))
    bg = datasets.virtual_image(ds, st.session_state.get("virtual_kind", "bright_field"))
    if st.session_state.get("label_bg") == "current map" and sess.prediction is not None:
        from PIL import Image

        bgimg = Image.fromarray(figures.map_rgb(sess)).resize((C * scale, R * scale), Image.NEAREST)
    else:
        bgimg = labelling.canvas_background(sess, bg, scale)
    color = "#ffffff" if erase else colors[sess.active_class]
    rgb = tuple(int(color[j : j + 2], 16) for j in (1, 3, 5))
    res = st_canvas(
        fill_color=f"rgba({rgb[0]},{rgb[1]},{rgb[2]},0.6)", stroke_width=int(brush * scale),
        stroke_color=color, background_image=bgimg, update_streamlit=True,
        height=R * scale, width=C * scale, drawing_mode=tool, return_image_data=True,
        key=f"canvas_{sess.canvas_nonce}", background_image_fit="stretch",
    )
    what = "Erasing" if erase else f"Painting **{names[sess.active_class]}**"
    st.caption(f"{what}: every position a stroke covers is labelled as soon as you release the mouse "
               f"(polygon: click the first point again to close it). Labelled positions are tinted in their class colour.")
    data = res.image_data if res is not None else None
    if data is not None:
        mask = labelling.canvas_mask(data, ds.scan_shape)
        if mask.any():
            with errors.guarded("Painting"):
                n = labelling.paint(sess, mask, sess.active_class, erase=erase)
                sess.flash("success", f"{'Erased' if erase else 'Labelled'} {n} position(s).")
            sess.canvas_nonce += 1
            st.rerun()  # full run: the sidebar counts follow
    session.show_flash(sess)


if sess.prediction is not None:
    st.radio("Background", ["virtual image", "current map"], horizontal=True, key="label_bg",
             label_visibility="collapsed")

if mode == "Paint":
    paint_ui()
else:
    click_ui()

with st.expander("Import / clear labels"):
    up = st.file_uploader("Import labels from CSV (row, col, class)", type=["csv"], key="label_csv")
    if up is not None and st.button("Import", key="import_csv"):
        with errors.guarded("Importing labels"):
            n = labelling.import_labels_csv(sess, up.getvalue())
            st.success(f"Imported {n} labels.")
    if st.button("Clear all labels", key="clear_labels", help="One undoable action"):
        sess.labels.clear()
        session.autosave(sess)
        st.rerun()
