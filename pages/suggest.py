"""Suggest: where to label next, then a fast one-at-a-time labelling loop."""

from __future__ import annotations

import numpy as np
import streamlit as st

from polmap.app import errors, session, datasets, labelling, training, figures

session.ensure_app_navigation()
sess = session.session()
st.title("Suggest")
ds = sess.dataset
if ds is None or sess.labels is None:
    st.info("Open a dataset on the Data page first.")
    st.stop()

st.markdown(figures.class_button_css(sess.classes), unsafe_allow_html=True)

strategies: dict[str, str] = {}
with errors.guarded("Strategies"):
    strategies = labelling.strategies()
if not strategies:
    st.stop()
names = list(strategies)
default = "adaptive" if "adaptive" in names else names[0]
with st.form("suggest_form", border=False):
    c1, c2, c3, c4 = st.columns([3, 1, 1, 1], vertical_alignment="bottom")
    strategy = c1.selectbox(
        "Strategy", names, index=names.index(st.session_state.get("suggest_strategy_last", default)),
        format_func=lambda k: f"{k} — {strategies.get(k, '')}",
    )
    budget = c2.number_input("Budget", 1, 1000, int(st.session_state.get("suggest_budget_last", 10)))
    seed = c3.number_input("Seed", 0, 10**6, 0)
    go = c4.form_submit_button("Suggest", type="primary", width="stretch")
if go:
    st.session_state["suggest_strategy_last"] = strategy
    st.session_state["suggest_budget_last"] = int(budget)
    with errors.guarded("Suggesting"):
        with st.spinner("Choosing positions…"):
            labelling.suggest(sess, strategy, int(budget), int(seed))
if sess.model is None and strategy == "adaptive":
    st.caption("No model yet: 'adaptive' starts from pattern clusters (cold start); after training it follows "
               "the model's uncertainty and the domain walls.")


def _answer(i: int | None) -> None:
    labelling.answer_suggestion(sess, i)


def _retrain_and_suggest() -> None:
    settings = sess.train_settings or training.default_train_settings()
    bar = st.progress(0.0, text="Training…")

    def prog(info: dict) -> None:
        e, n = info.get("epoch", 0), info.get("epochs", 1) or 1
        bar.progress(min(1.0, e / n), text=f"Training: epoch {e}/{n}")

    training.train(sess, settings, progress=prog)
    bar.progress(1.0, text="Predicting the whole scan…")
    training.predict(sess)
    labelling.suggest(sess, st.session_state.get("suggest_strategy_last", "adaptive"),
                int(st.session_state.get("suggest_budget_last", 10)))
    bar.empty()


@errors.guarded_fragment("Suggestions", key="suggest_loop")
def suggest_loop() -> None:
    cur = labelling.current_suggestion(sess)
    left, right = st.columns([3, 2])
    with left:
        bg = figures.map_rgb(sess) if sess.prediction is not None else datasets.virtual_image(ds, st.session_state.get("virtual_kind", "bright_field"))
        fig = figures.scan_figure(ds, bg, sess=sess, suggestions=sess.suggestions, selected=cur, height=520)
        st.plotly_chart(fig, key="suggest_img", config={"displaylogo": False})
        if sess.suggestion_message:
            st.caption(sess.suggestion_message)
    with right:
        if sess.suggestions is None:
            st.info("Choose a strategy and a budget, then press **Suggest**.")
            return
        n = len(sess.suggestions)
        if cur is None:
            st.success(f"All {n} suggestions answered ({len(sess.skipped)} skipped in total).")
            if st.button("Retrain and suggest again", key="retrain_suggest", type="primary", icon=":material/autorenew:"):
                with errors.guarded("Retrain and suggest"):
                    _retrain_and_suggest()
                    st.rerun()
            return
        i = sess.suggestion_index
        st.progress(i / max(n, 1), text=f"Suggestion {i + 1} of {n}")
        reason = sess.suggestion_reasons[i] if i < len(sess.suggestion_reasons) else ""
        st.markdown(f"**#{i + 1} at (row {cur[0]}, col {cur[1]})**" + (f" — {reason}" if reason else ""))
        logp = st.toggle("log scale", value=True, key="suggest_log")
        st.plotly_chart(figures.pattern_figure(ds.pattern(*cur), log=logp, height=330, calibration=ds.calibration), key="suggest_pattern",
                        config={"displaylogo": False})
        if sess.prediction is not None:
            p = np.asarray(sess.prediction.probabilities)[cur[0], cur[1]]
            st.caption("Model: " + ", ".join(f"{nm} {q:.0%}" for nm, q in zip(sess.classes.names, p)))
    # the answer buttons under both, full width (keys 1..K, S to skip)
    cols = st.columns(len(sess.classes.names) + 1)
    for k, nm in enumerate(sess.classes.names):
        cols[k].button(nm, key=f"clsbtn_suggest_{k}", on_click=_answer, args=(k,), width="stretch",
                       shortcut=str(k + 1) if k < 9 else None, help=f"Label it '{nm}' (key {k + 1})")
    cols[-1].button("Skip", key="suggest_skip", on_click=_answer, args=(None,), width="stretch",
                    shortcut="S", help="Not sure: skip it (key S); it will not be suggested again")


suggest_loop()
