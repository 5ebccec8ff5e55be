"""Data: open the demo, an upload or a file under the data root; calibration, preprocessing, overview."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from polmap.app import errors, options, session, datasets, figures

session.ensure_app_navigation()
sess = session.session()
st.title("Data")


# --------------------------------------------------------------------------------------
# open
# --------------------------------------------------------------------------------------
def _open_and_set(path: Path, kind: str, label: str) -> None:
    """Open a file (asking which dataset when an HDF5 file holds several) and make it current."""
    cands = datasets.list_candidates(path)
    dpath = None
    if len(cands) > 1:
        st.session_state["pending_file"] = {"path": str(path), "kind": kind, "label": label}
        return
    if len(cands) == 1:
        dpath = datasets.candidate_path(cands[0])
    with st.spinner(f"Opening {label}…"):
        ds = datasets.open_file(path, dpath)
        datasets.set_dataset(sess, ds, {"kind": kind, "path": str(path), "dataset_path": dpath})
    st.session_state.pop("pending_file", None)
    sess.flash("success", f"Opened {label}: {ds.scan_shape[0]} x {ds.scan_shape[1]} scan.")
    st.rerun()


src_demo, src_upload, src_folder = st.tabs(["Demo", "Upload", "Data folder"])

with src_demo:
    presets = options.demo_presets()
    default = options.demo_preset()
    if default not in presets:
        presets.insert(0, default)
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    preset = c1.selectbox("Simulated scan (with ground truth)", presets, index=presets.index(default), key="demo_preset")
    if c2.button("Load demo", key="load_demo", type="primary"):
        with errors.guarded("Loading the demo"):
            with st.spinner("Loading the demo…"):
                ds = datasets.open_demo(preset)
                datasets.set_dataset(sess, ds, {"kind": "demo", "preset": preset})
            sess.flash("success", f"Loaded the '{preset}' demo.")
            st.rerun()

with src_upload:
    limit = options.max_upload_mb()
    up = st.file_uploader(
        f"A 4D-STEM file (HDF5/EMD, .dm4/.dm3, .mib, .raw, .npy/.npz, .blo, .zip; up to {limit} MB)",
        key="upload",
    )
    if up is not None and up.size > limit * 2**20:
        # checked here, with words, rather than by the widget (which only marks the file red)
        st.error(
            f"'{up.name}' is {up.size / 2**20:.1f} MB, more than the {limit} MB upload limit. Put it in the "
            f"data folder ({options.data_root()}) and open it from the 'Data folder' tab instead."
        )
    elif up is not None and st.button("Open upload", key="open_upload", type="primary"):
        with errors.guarded(f"Opening '{up.name}'"):
            path = datasets.save_upload(up.getvalue(), up.name)
            _open_and_set(path, "upload", up.name)

with src_folder:
    root = options.data_root()
    files = options.list_data_files(root)
    st.caption(f"Files under the data folder `{root}` (set `POLMAP_DATA_ROOT` to change it).")
    if not root.is_dir():
        st.info(f"The data folder {root} does not exist yet: create it and put scans there.")
    pick = st.selectbox("File", [""] + files, key="folder_pick", format_func=lambda s: s or "— choose —")
    typed = st.text_input("…or a path relative to the data folder", key="folder_typed")
    if st.button("Open file", key="open_file", type="primary"):
        with errors.guarded("Opening the file"):
            rel = typed.strip() or pick
            path = options.resolve_in_root(rel, root)
            if path.is_dir():
                raise errors.UserError(f"'{rel}' is a folder; choose a file.")
            _open_and_set(path, "file", rel)

pending = st.session_state.get("pending_file")
if pending:
    with st.container(border=True):
        st.markdown(f"**{pending['label']}** holds several 4-D datasets: which one is the scan?")
        with errors.guarded("Reading the file"):
            cands = datasets.list_candidates(pending["path"])
            choice = st.radio("Dataset", cands, format_func=datasets.candidate_label, key="cand_choice")
            if st.button("Open this dataset", key="open_cand", type="primary"):
                with st.spinner("Opening…"):
                    dpath = datasets.candidate_path(choice)
                    ds = datasets.open_file(pending["path"], dpath)
                    datasets.set_dataset(sess, ds, {"kind": pending["kind"], "path": pending["path"], "dataset_path": dpath})
                st.session_state.pop("pending_file", None)
                sess.flash("success", f"Opened {dpath} from {pending['label']}.")
                st.rerun()

ds = sess.dataset
if ds is None:
    st.info("Open a dataset above to begin.")
    st.stop()

# --------------------------------------------------------------------------------------
# overview
# --------------------------------------------------------------------------------------
st.subheader(datasets.display_name(sess))
with errors.guarded("Computing the virtual images"):
    if datasets.virtual_ready(ds):
        v = datasets.virtual(ds)
    else:
        bar = st.progress(0.0, text="Virtual images and mean pattern: one pass over the scan…")
        v = datasets.virtual(ds, progress=lambda done, total: bar.progress(
            min(1.0, done / max(total, 1)), text=f"Virtual images: {done}/{total} scan rows"))
        bar.empty()
    col_img, col_pat = st.columns([3, 2])
    with col_img:
        kind = st.segmented_control(
            "Virtual image", ["bright_field", "annular_dark_field", "com_magnitude"], default="bright_field",
            format_func=lambda k: {"bright_field": "BF", "annular_dark_field": "ADF", "com_magnitude": "|COM|"}[k],
            key="vimg_kind",
        ) or "bright_field"
        st.session_state["virtual_kind"] = kind
        fig = figures.scan_figure(ds, datasets.virtual_image(ds, kind), sess=sess, show_labels=False, selected=sess.selected, height=420)
        st.plotly_chart(fig, key="data_vimg", config={"displaylogo": False})
    with col_pat:
        logp = st.toggle("log scale", value=True, key="mean_log")
        cy, cx = v.centre
        st.plotly_chart(
            figures.pattern_figure(v.mean_pattern, log=logp, title="Mean pattern with the detectors", detectors=v, height=380,
                              calibration=ds.calibration),
            key="data_mean", config={"displaylogo": False},
        )
        st.caption(f"BF disk r = {v.bf_radius:.1f} px; ADF {v.adf_inner:.1f}–{v.adf_outer:.1f} px; "
                   f"beam centre ({cy:.1f}, {cx:.1f}).")
    summ = datasets.dataset_summary(ds)
    st.dataframe([{k: str(v) for k, v in summ.items()}], hide_index=True, width="stretch")

# --------------------------------------------------------------------------------------
# classes
# --------------------------------------------------------------------------------------
with st.expander("Classes", expanded=False):
    cls = sess.classes
    st.markdown(" ".join(f"{figures.swatch(c)}{n}" for n, c in zip(cls.names, cls.colors)), unsafe_allow_html=True)
    c1, c2 = st.columns([2, 1], vertical_alignment="bottom")
    preset = c1.selectbox(
        "Switch to a preset (only before labelling)", list(options.CLASS_PRESETS),
        format_func=options.CLASS_PRESETS.get,
        key="class_preset",
    )
    if c2.button("Use these classes", key="apply_classes"):
        with errors.guarded("Changing the classes"):
            datasets.change_classes(sess, preset)
            st.rerun()

# --------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------
with st.expander("Calibration", expanded=False):
    cal = ds.calibration
    with st.form("calibration"):
        c1, c2, c3 = st.columns(3)
        real_step = c1.number_input("Scan step", min_value=0.0, value=float(cal.real_step or 0.0), format="%.4g")
        real_opts, rec_opts = ["px", "nm", "A"], ["px", "mrad", "1/A"]
        real_units = c1.selectbox("Scan units", real_opts, index=real_opts.index(cal.real_units) if cal.real_units in real_opts else 0)
        rec_step = c2.number_input("Detector pixel", min_value=0.0, value=float(cal.reciprocal_step or 0.0), format="%.4g")
        rec_units = c2.selectbox("Detector units", rec_opts,
                                 index=rec_opts.index(cal.reciprocal_units) if cal.reciprocal_units in rec_opts else 0)
        kev = c3.number_input("Beam energy (keV)", min_value=0.0, value=float(cal.beam_energy_kev or 0.0))
        conv = c3.number_input("Convergence (mrad)", min_value=0.0, value=float(cal.convergence_mrad or 0.0))
        if st.form_submit_button("Apply calibration"):
            with errors.guarded("Calibration"):
                datasets.set_calibration(
                    sess, real_step=real_step or None, real_units=real_units if real_step else "px",
                    reciprocal_step=rec_step or None, reciprocal_units=rec_units if rec_step else "px",
                    beam_energy_kev=kev or None, convergence_mrad=conv or None,
                )
                st.rerun()

# --------------------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------------------
with st.expander("Preprocessing (what the network sees)", expanded=True):
    p = dict(sess.preprocess)
    cform, cprev = st.columns([2, 3])
    with cform, st.form("preprocess"):
        a1, a2 = st.columns(2)
        bin_factor = a1.number_input("Bin factor", 1, 16, int(p.get("bin_factor", 1)))
        crop = a2.number_input("Crop radius (px after binning, 0 = none)", 0, 4096, int(p.get("crop_radius") or 0))
        opts = options.preprocess_options(p)
        centring = a1.selectbox("Centring (descan)", **opts["centring"])
        scaling = a2.selectbox("Scaling", **opts["scaling"])
        normalise = a1.selectbox("Normalise", **opts["normalise"])
        boxing = a2.number_input("Boxing k (odd; paper: 5)", 1, 15, int(p.get("boxing", 1)), step=2)
        box_mode = a1.selectbox("Boxing mode", **opts["box_mode"], help="max: the paper's max-pooling; mean: an average")
        out_size = a1.number_input("Output size (px)", 8, 512, int(p.get("output_size") or 64))
        submitted = st.form_submit_button("Apply preprocessing")
    if submitted:
        with errors.guarded("Preprocessing"):
            new = dict(p, bin_factor=int(bin_factor), crop_radius=int(crop) or None, centring=centring, scaling=scaling,
                       normalise=normalise, boxing=int(boxing), box_mode=box_mode, output_size=int(out_size))
            datasets.set_preprocess(sess, new)
            st.rerun()
    with cprev:
        R, C = ds.scan_shape
        r0, c0 = sess.selected or (R // 2, C // 2)
        s1, s2 = st.columns(2)
        prow = s1.number_input("Preview row", 0, R - 1, int(r0), key="prev_row")
        pcol = s2.number_input("Preview col", 0, C - 1, int(c0), key="prev_col")
        with errors.guarded("Preview"):
            raw, pre = datasets.preview_patterns(ds, sess.preprocess, int(prow), int(pcol))
            b1, b2 = st.columns(2)
            b1.plotly_chart(figures.pattern_figure(raw, log=True, title="before (raw, log)", height=260, calibration=ds.calibration), key="prev_raw")
            b2.plotly_chart(figures.pattern_figure(pre, log=False, title=f"after ({pre.shape[0]} x {pre.shape[1]})", height=260), key="prev_pre")

st.page_link("pages/label.py", label="Next: label patterns", icon=":material/arrow_forward:")
