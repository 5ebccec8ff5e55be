"""polmap dashboard: label diffraction patterns, train, and read the polarization map.

Run with ``streamlit run app.py`` (or ``make run``). Pages live in ``pages/``;
all computation goes through :mod:`polmap.app`.
"""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="polmap", page_icon=":material/explore:", layout="wide")

from polmap.app import errors, session, datasets, labelling, figures  # noqa: E402  (after set_page_config)

PAGES = [
    st.Page("pages/data.py", title="Data", icon=":material/database:", url_path="data", default=True),
    st.Page("pages/label.py", title="Label", icon=":material/draw:", url_path="label"),
    st.Page("pages/suggest.py", title="Suggest", icon=":material/my_location:", url_path="suggest"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:", url_path="train"),
    st.Page("pages/map.py", title="Map", icon=":material/map:", url_path="map"),
]


def sidebar_labels() -> None:
    """Labels per class and the workspace file (a fragment: see :func:`sidebar`)."""
    sess = session.session()
    if sess.labels is None:
        return
    st.markdown(f"#### Labels ({len(sess.labels)})")
    rows = [f"{figures.swatch(r['color'])}{r['class']}: **{r['count']}**" for r in labelling.label_table(sess)]
    st.markdown("<br>".join(rows), unsafe_allow_html=True)
    if sess.model is not None and sess.model_info.get("label_hash") not in (None, sess.labels.hash()):
        st.caption(":orange[labels changed since the model was trained]")
    if sess.workspace is not None:
        st.caption(f"Workspace `{sess.workspace.path.name}`  \nin {sess.workspace.path.parent}"
                   + (f"  \nautosaved ({sess.last_save_s * 1000:.0f} ms)" if sess.last_save_s is not None else ""))


def sidebar(sess: session.Session, live: bool = False) -> None:
    """Dataset, labels per class, model status and workspace file: always visible.

    On the pages where labels change inside fragments (Label, Suggest) the
    label counts are a fragment that refreshes itself every second, so a
    label click reruns only its own fragment (fast) and the sidebar follows.
    """
    with st.sidebar:
        ds = sess.dataset
        st.markdown("#### Dataset")
        if ds is None:
            st.caption("none loaded")
        else:
            st.markdown(f"**{datasets.display_name(sess)}**  \n{ds.scan_shape[0]} x {ds.scan_shape[1]} scan, "
                        f"{ds.detector_shape[0]} x {ds.detector_shape[1]} detector")
        st.markdown("#### Model")
        if sess.model is None:
            st.caption("not trained yet")
        else:
            info = sess.model_info
            acc = info.get("val_accuracy")
            txt = f"{info.get('model', 'model')} trained on {info.get('n_labels', '?')} labels"
            if acc is not None:
                txt += f", validation accuracy {acc:.1%}"
            st.markdown(txt)
        st.fragment(sidebar_labels, run_every=1.0 if live else None)()


def first_visit_hint(sess: session.Session) -> None:
    if sess.hint_dismissed:
        return
    with st.container(border=True, key="hint"):
        c1, c2 = st.columns([12, 1])
        c1.markdown(
            "**The loop:** the demo is loaded → **Label** a few patterns by clicking, paint a region to label "
            "many at once → **Suggest** where to label next and answer one by one → **Train** → read the "
            "**Map** (uncertainty, walls) and export it."
        )
        if c2.button("Got it", key="hint_ok"):
            sess.hint_dismissed = True
            st.rerun()


sess = session.session()
nav = st.navigation(PAGES)
with errors.guarded("Loading the demo"):
    datasets.ensure_dataset(sess)
sidebar(sess, live=nav.url_path in ("label", "suggest"))
first_visit_hint(sess)
session.show_flash(sess)
with errors.guarded(nav.title):  # whatever a page raises: a message, never a traceback
    nav.run()
