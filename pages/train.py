"""Train: choose the network and settings, watch the curves, keep the model."""

from __future__ import annotations

import streamlit as st

from polmap.app import errors, options, session, datasets, training, figures

session.ensure_app_navigation()
sess = session.session()
st.title("Train")
ds = sess.dataset
if ds is None or sess.labels is None:
    st.info("Open a dataset on the Data page first.")
    st.stop()

defaults: dict = {}
with errors.guarded("Training settings"):
    defaults = training.default_train_settings()
if not defaults:
    st.stop()
settings = dict(defaults, **{k: v for k, v in sess.train_settings.items() if k in defaults})

counts = sess.labels.counts()
st.markdown(
    f"**{len(sess.labels)} labels**: " + ", ".join(f"{figures.swatch(c)}{n} {counts[n]}" for n, c in zip(sess.classes.names, sess.classes.colors)),
    unsafe_allow_html=True,
)
st.caption(f"Device: **{training.device_name()}**")

models = training.model_names()
model = st.radio("Model", list(models), index=list(models).index(settings.get("model", "auto")) if settings.get("model", "auto") in models else 0,
                 format_func=lambda k: f"{k}: {models[k]}", key="train_model_name", horizontal=False)
own_pre = st.checkbox("Use the preprocessing this network was designed for", value=True, key="train_own_pre",
                      help="Otherwise the Data page's preprocessing is used as it is.")
with st.expander("Class directions (optional: a prior that training checks against your labels)", expanded=False):
    st.caption("polmap finds which detector mirror or rotation maps which class onto which from your labelled "
               "patterns; it never reads a direction from a class name. If you know where each class points on "
               "the detector, declare it here (degrees from the +column towards the +row direction, or "
               "'invariant' for a class no mirror changes, such as out-of-plane). A declaration the data "
               "contradict is shown and not used.")
    dir_text = st.text_input("Directions", value=datasets.directions_text(sess), key="train_directions",
                             placeholder="e.g.  up=270, down=90, c-domain=invariant")
    if st.button("Save directions", key="train_directions_save"):
        with errors.guarded("Saving the class directions"):
            datasets.set_class_directions(sess, dir_text)
            sess.flash("success", "Class directions saved." if dir_text.strip() else "Class directions cleared.")
            st.rerun()
with st.expander("Settings (the defaults are good)", expanded=False):
    s1, s2, s3, s4 = st.columns(4)
    epochs = s1.number_input("Epochs (most, per member)", 1, 2000, int(settings["epochs"]), key="train_epochs")
    n_members = s2.number_input("Ensemble members (= cross-validation folds)", 1, 10, int(settings["n_members"]), key="train_members")
    spe = s3.number_input("Samples per epoch", 8, 100000, int(settings["samples_per_epoch"]), key="train_spe")
    batch = s4.number_input("Batch size", 1, 1024, int(settings["batch_size"]), key="train_batch")
    lr = s1.number_input("Learning rate", 1e-6, 1.0, float(settings["lr"]), format="%.1e", key="train_lr")
    wd = s2.number_input("Weight decay", 0.0, 1.0, float(settings["weight_decay"]), format="%.1e", key="train_wd")
    patience = s3.number_input("Early-stop patience (0 = off)", 0, 1000, int(settings["patience"]), key="train_patience")
    seed = s4.number_input("Seed", 0, 10**6, int(settings["seed"]), key="train_seed")

new_settings = dict(settings, model=model, epochs=int(epochs), n_members=int(n_members), samples_per_epoch=int(spe),
                    batch_size=int(batch), lr=float(lr), weight_decay=float(wd), patience=int(patience), seed=int(seed))

go = st.button("Train", type="primary", key="train_go", icon=":material/play_arrow:")
status = st.empty()
curves = st.empty()

if go:
    with errors.guarded("Training"):
        sess.train_settings = new_settings
        if own_pre:
            datasets.set_preprocess(sess, options.model_preprocess(model))
        training.check_trainable(sess)
        bar = status.progress(0.0, text="Preparing the labelled patterns…")
        rows: list[dict] = []
        state = {"last": 0.0}

        def progress(info: dict) -> None:
            import time

            rows.append(info)
            m, nm = int(info.get("member", 0)), int(info.get("n_members", 1) or 1)
            e, ne = int(info.get("epoch", 0)), int(info.get("epochs", 1) or 1)
            frac = min(1.0, (m + e / ne) / nm)
            va = info.get("val_acc")
            txt = f"member {m + 1}/{nm}, epoch {e}/{ne}: loss {info.get('loss', float('nan')):.3f}"
            if va is not None:
                txt += f", validation accuracy {va:.1%}"
            bar.progress(frac, text=txt)
            now = time.perf_counter()
            if now - state["last"] > 0.4:  # redraw the curves at most ~2.5 times a second
                state["last"] = now
                curves.plotly_chart(figures.curves_figure(training.history_rows_to_curves(rows)), key=f"live_{len(rows)}")

        _, cached = training.train(sess, new_settings, progress=progress)
        bar.progress(1.0, text="Predicting the whole scan…")
        training.predict(sess)
        status.empty()
        verdict = sess.model_info.get("assessment") or {}
        if cached:
            sess.flash("info", "Same dataset, preprocessing, labels and settings as a model already trained: reused it (no retraining).")
        elif verdict.get("level") == "failure":
            sess.flash("error", f"Trained in {sess.model_info.get('seconds', 0):.1f} s, but the model failed: {verdict['headline']}.")
        elif verdict.get("level") == "warning":
            sess.flash("warning", f"Trained in {sess.model_info.get('seconds', 0):.1f} s: {verdict['headline']}.")
        else:
            sess.flash("success", f"Trained in {sess.model_info.get('seconds', 0):.1f} s: {verdict.get('headline', '')}.")
        st.rerun()

if sess.model is not None:
    info = sess.model_info
    st.subheader("Current model")
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Network", info.get("model", sess.model.model_name))
    m2.metric("Labels", info.get("n_labels", "?"))
    acc = info.get("val_accuracy")
    m3.metric("Validation accuracy (out-of-fold)", "n/a" if acc is None else f"{acc:.1%}")
    m4.metric("Training time", f"{info.get('seconds', 0):.1f} s" if info.get("seconds") else "-")
    verdict = info.get("assessment") or {}
    if verdict.get("level") in ("failure", "warning"):
        box = st.error if verdict["level"] == "failure" else st.warning
        causes = "".join(f"\n- {c[:1].upper() + c[1:]}" for c in verdict.get("causes", []))
        title = verdict.get("causes_title", "likely causes").capitalize()
        box(f"**{verdict['headline'][:1].upper() + verdict['headline'][1:]}.**" + (f"\n\n{title}:{causes}" if causes else ""))
    if info.get("validation"):
        st.caption(info["validation"])
    if info.get("family_note"):
        st.caption(info["family_note"][:1].upper() + info["family_note"][1:] + ".")
    sym = info.get("symmetry") or {}
    if sym.get("summary"):
        with st.expander(f"Detector symmetry: {sym['summary']}", expanded=False):
            st.markdown("Which detector operation maps which class onto which, as found in your labelled patterns "
                        "(class names are never read):")
            for line in sym.get("mapping") or []:
                st.markdown(f"- `{line}`")
            reasons: dict = {}
            for op, why in (sym.get("skipped") or {}).items():
                reasons.setdefault(why, []).append(op)
            for why, ops in reasons.items():
                st.markdown(f"- not used ({', '.join(ops)}): {why}")
    for w in info.get("warnings", []):
        st.warning(w[:1].upper() + w[1:] + ".")
    if sess.labels is not None and info.get("label_hash") and info["label_hash"] != sess.labels.hash():
        st.warning("The labels changed since this model was trained: press **Train** to update it.")
    hist = training.model_history(sess.model)
    if sess.model.history and max(len(h) for h in sess.model.history) <= 1:
        st.caption("The members kept are linear discriminants, fitted in closed form: no training curves.")
    elif hist.get("epoch"):
        curves.plotly_chart(figures.curves_figure(hist, final_accuracy=info.get("val_accuracy")), key="final_curves")
        st.caption("Curves: every ensemble member in turn (epochs on the x axis run on from one member to the "
                   "next); per-epoch validation accuracy is that member's held-out fold.")
    st.page_link("pages/map.py", label="See the map", icon=":material/map:")

with st.expander("Load a model checkpoint"):
    up = st.file_uploader("polmap checkpoint (.pt)", key="ckpt_upload")
    if up is not None and st.button("Use this model", key="ckpt_use"):
        with errors.guarded("Loading the checkpoint"):
            training.upload_model(sess, up.getvalue())
            sess.flash("success", f"Loaded model from {up.name}.")
            st.rerun()
