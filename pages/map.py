"""Map: the interactive RGB polarization map, its uncertainty and walls, the conventional map, exports."""

from __future__ import annotations

import time

import numpy as np
import streamlit as st

from polmap.app import errors, options, session, datasets, labelling, training, figures, exports

session.ensure_app_navigation()
sess = session.session()
st.title("Map")
ds = sess.dataset
if ds is None or sess.labels is None:
    st.info("Open a dataset on the Data page first.")
    st.stop()
if sess.model is None:
    st.info("No model yet: label a few patterns of at least two classes, then train one.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    st.stop()

pred = None
with errors.guarded("Predicting the map"):
    if sess.prediction is None:
        bar = st.progress(0.0, text="Predicting every position…")
        pred = training.predict(sess, progress=lambda done, total: bar.progress(min(1.0, done / max(total, 1)),
                                                                           text=f"Predicting: {done}/{total} rows"))
        bar.empty()
    else:
        pred = sess.prediction
if pred is None:
    st.stop()

names, colors = sess.classes.names, figures.map_colors(sess)
if sess.labels is not None and sess.model_info.get("label_hash") not in (None, sess.labels.hash()):
    st.warning("The labels changed since this model was trained; the map shows the older model. Retrain on the Train page.")

# --------------------------------------------------------------------------------------
# controls
# --------------------------------------------------------------------------------------
c1, c2, c3 = st.columns([4, 2, 2])
overlays = c1.pills(
    "Overlays", [training.UNCERTAINTY_NAME, "walls", "labelled points", "suggestions"], selection_mode="multi",
    default=["walls", "labelled points"], key="map_overlays",
)
fade = c2.slider("Fade uncertain positions", 0.0, 1.0, 0.0, 0.1, key="map_fade",
                 help=f"Mix each position towards white by its {training.UNCERTAINTY_NAME}: {training.UNCERTAINTY_HELP}")
background = c3.radio("Show", ["polarization map", training.UNCERTAINTY_NAME, "virtual image"], key="map_background",
                      help=f"{training.UNCERTAINTY_NAME}: {training.UNCERTAINTY_HELP}")


@errors.guarded_fragment("Map", key="map_view")
def map_view() -> None:
    unc = training.uncertainty(pred)
    walls = figures.domain_walls(pred) if "walls" in overlays else None
    sugg = sess.suggestions if "suggestions" in overlays else None
    left, right = st.columns([3, 2])
    shown = labelling.shown_selection(sess, "map", background, tuple(overlays or ()), fade)
    with left:
        t0 = time.perf_counter()
        if background == "polarization map":
            rgb = figures.map_rgb(sess, pred, fade=fade)
            fig = figures.scan_figure(ds, rgb, sess=sess, show_labels="labelled points" in overlays, suggestions=sugg,
                                  selected=shown, prediction=pred, show_uncertainty=training.UNCERTAINTY_NAME in overlays,
                                  show_walls=True, walls=walls, height=560)
        else:
            img = unc if background == training.UNCERTAINTY_NAME else datasets.virtual_image(ds)
            fig = figures.scan_figure(ds, img, sess=sess, show_labels="labelled points" in overlays, suggestions=sugg,
                                  selected=shown, walls=walls, height=560,
                                  value_name=background if background == training.UNCERTAINTY_NAME else "intensity")
        st.plotly_chart(fig, key="map_fig", on_select=_on_map_click, selection_mode="points",
                        config={"displaylogo": False, "toImageButtonOptions": {"filename": "polmap-map"}})
        st.session_state["map_build_s"] = time.perf_counter() - t0
    with right:
        r, c = sess.selected or (ds.scan_shape[0] // 2, ds.scan_shape[1] // 2)
        p = np.asarray(pred.probabilities)[r, c]
        k = int(np.argmax(p))
        st.markdown(f"**(row {r}, col {c})**: {figures.swatch(colors[k])}**{names[k]}** {p[k]:.0%}, "
                    f"{training.UNCERTAINTY_NAME} {float(unc[r, c]):.2f}", unsafe_allow_html=True)
        lab = sess.labels.label_at(r, c)
        if lab:
            st.caption(f"Labelled {lab['class']} ({lab['source']}).")
        logp = st.toggle("log scale", value=True, key="map_log")
        st.plotly_chart(figures.pattern_figure(ds.pattern(r, c), log=logp, height=300, calibration=ds.calibration), key="map_pattern",
                        config={"displaylogo": False})
        st.plotly_chart(figures.probability_bars(names, colors, p), key="map_probs", config={"displayModeBar": False})


def _on_map_click() -> None:
    pos = figures.clicked_position(st.session_state.get("map_fig"))
    if pos is not None:
        sess.selected = pos


map_view()

# --------------------------------------------------------------------------------------
# legend, accuracy
# --------------------------------------------------------------------------------------
lc, ac = st.columns([1, 3])
with lc:
    st.plotly_chart(figures.legend_figure(sess), key="map_legend", config={"displayModeBar": False})
with ac:
    acc = training.accuracy(sess, pred)
    st.markdown(figures.predicted_area_markdown(names, colors, pred), unsafe_allow_html=True)
    if acc is not None:
        m = st.columns(4)
        m[0].metric("Accuracy vs ground truth", f"{acc['accuracy']:.1%}", help=f"{acc['n']} positions with known truth")
        if acc.get("accuracy_unlabelled") is not None:
            m[1].metric("…on unlabelled positions", f"{acc['accuracy_unlabelled']:.1%}")
        if acc.get("accuracy_domains") is not None:
            m[2].metric("…inside domains", f"{acc['accuracy_domains']:.1%}")
        if acc.get("accuracy_walls") is not None:
            m[3].metric("…on walls", f"{acc['accuracy_walls']:.1%}")
    else:
        st.caption("This dataset has no ground truth: accuracy is the validation estimate on the Train page.")
    va = sess.model_info.get("val_accuracy")
    if va is not None:
        st.caption(f"Model validation accuracy (out-of-fold, on your labels): {va:.1%}.")

# --------------------------------------------------------------------------------------
# the conventional map
# --------------------------------------------------------------------------------------
with st.expander("Compare with the conventional centre-of-mass / Friedel map", expanded=False):
    g0, r0 = training.lattice_guess(ds)
    k1, k2, k3 = st.columns(3)
    signal = k1.radio("Signal", ["friedel", "com"], horizontal=True, key="conv_signal",
                      format_func=lambda s: {"friedel": "Friedel asymmetry", "com": "centre of mass"}[s])
    g = k2.number_input("First-order disk spacing (det. px)", 0.0, 4096.0, float(g0 or 3.0 * r0), key="conv_g")
    rad = k3.number_input("Disk radius (det. px)", 0.0, 4096.0, float(r0), key="conv_r")
    if g0 is None:
        st.caption("The spacing is not in this file's metadata: measure it on the mean pattern (Data page).")
    if st.toggle("Compute the conventional map", key="conv_on"):
        with errors.guarded("Conventional map"):
            with st.spinner("Measuring every pattern…"):
                conv = training.conventional(sess, signal, g, rad)
            v1, v2, v3 = st.columns(3)
            v1.plotly_chart(figures.scan_figure(ds, figures.map_rgb(sess, pred), sess=sess, show_labels=False, height=320,
                                            title="model's map"), key="conv_cnn")
            v2.plotly_chart(figures.scan_figure(ds, conv["rgb"], sess=sess, show_labels=False, height=320,
                                            title=f"{signal}: direction (colour wheel)"), key="conv_dir")
            if "class_rgb" in conv:
                v3.plotly_chart(figures.scan_figure(ds, conv["class_rgb"], sess=sess, show_labels=False, height=320,
                                                title="rule classes"), key="conv_cls")
                msg = "Rule: the class whose mean vector (learnt from your labels) is nearest"
                if conv.get("accuracy") is not None:
                    msg += f". Accuracy vs ground truth: **{conv['accuracy']:.1%}**"
                if acc is not None:
                    msg += f" (model: **{acc['accuracy']:.1%}**)"
                st.markdown(msg + ".")
            elif conv.get("note"):
                v3.info(conv["note"])

# --------------------------------------------------------------------------------------
# exports
# --------------------------------------------------------------------------------------
st.subheader("Export")
e1, e2, e3, e4, e5 = st.columns(5)
base = exports.export_basename(sess)
e1.download_button("Map (PNG)", data=lambda: exports.export_png(sess, with_walls="walls" in overlays),
                   file_name=f"{base}-map.png", mime="image/png", icon=":material/image:", key="dl_png")
e2.download_button("Map data (HDF5)", data=lambda: exports.export_hdf5(sess), file_name=f"{base}-map.h5",
                   mime="application/x-hdf5", icon=":material/dataset:", key="dl_h5")
e3.download_button("Labels (CSV)", data=lambda: exports.export_labels_csv(sess), file_name=f"{base}-labels.csv",
                   mime="text/csv", icon=":material/table:", key="dl_csv")
e4.download_button("Model checkpoint", data=lambda: exports.export_checkpoint(sess), file_name=f"{base}-model.pt",
                   mime="application/octet-stream", icon=":material/neurology:", key="dl_ckpt")
e5.download_button("Workspace file", data=lambda: exports.export_workspace(sess), file_name=f"{base}.polmap.h5",
                   mime="application/x-hdf5", icon=":material/save:", key="dl_ws",
                   help="Everything: dataset reference, labels, model, predictions, provenance")
st.caption(f"Everything is also kept in the workspace file `{sess.workspace.path}`.")

# --------------------------------------------------------------------------------------
# apply elsewhere
# --------------------------------------------------------------------------------------
with st.expander("Apply this model to another dataset or time slice"):
    kind = st.radio("Data", ["demo", "data folder", "upload"], horizontal=True, key="apply_kind",
                    format_func=lambda k: {"demo": "a simulated scan", "data folder": "a file in the data folder", "upload": "an upload"}[k])
    other = None
    with errors.guarded("Opening the other dataset"):
        if kind == "demo":
            preset = st.selectbox("Preset", options.demo_presets(), key="apply_preset")
            target = ("demo", preset)
        elif kind == "data folder":
            rel = st.selectbox("File", [""] + options.list_data_files(), key="apply_file", format_func=lambda s: s or "— choose —")
            target = ("file", rel)
        else:
            up = st.file_uploader(f"File (up to {options.max_upload_mb()} MB)", key="apply_upload")
            target = ("upload", up)
        dpath = None
        if target[0] == "file" and target[1]:
            path = options.resolve_in_root(target[1])
            cands = datasets.list_candidates(path)
            if len(cands) > 1:
                dpath = datasets.candidate_path(st.selectbox("Dataset / time slice", cands, format_func=datasets.candidate_label, key="apply_cand"))
        if st.button("Apply the model", key="apply_go", type="primary"):
            if target[0] == "demo":
                other = datasets.open_demo(target[1])
            elif target[0] == "file":
                other = datasets.open_file(options.resolve_in_root(target[1]), dpath)
            else:
                if target[1] is None:
                    raise errors.UserError("Choose a file to upload first.")
                p = datasets.save_upload(target[1].getvalue(), target[1].name)
                cands = datasets.list_candidates(p)
                other = datasets.open_file(p, datasets.candidate_path(cands[0]) if len(cands) == 1 else None) if len(cands) <= 1 else None
                if other is None:
                    raise errors.UserError(f"'{target[1].name}' holds several 4-D datasets; put it in the data folder to choose one.")
            bar = st.progress(0.0, text="Predicting…")
            training.apply_model_elsewhere(sess, other, progress=lambda d, t: bar.progress(min(1.0, d / max(t, 1))))
            bar.empty()
    applied = sess.applied
    if applied is not None:
        ods, opred = applied.dataset, applied.prediction
        st.markdown(f"**{ods.name}** ({ods.scan_shape[0]} x {ods.scan_shape[1]})")
        st.plotly_chart(figures.scan_figure(ods, figures.map_rgb(sess, opred), prediction=opred, sess=sess, show_labels=False,
                                        height=420), key="apply_fig")
        oacc = training.accuracy(sess, opred, ods)
        if oacc is not None:
            st.metric("Accuracy vs its ground truth", f"{oacc['accuracy']:.1%}")
