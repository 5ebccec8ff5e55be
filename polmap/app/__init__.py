"""The dashboard's application layer: the only part of polmap that imports Streamlit.

Pages (``pages/*.py``) read widgets, call these modules and draw what comes
back; everything numeric lives in the core. The modules build on each other in
this order and never import a later one at module level:

``errors`` -> ``options`` -> ``session`` -> ``datasets`` -> ``labelling`` ->
``training`` -> ``figures`` -> ``exports``.

Caching
-------
* datasets: ``st.cache_resource`` keyed by the resolved file, its size and
  modification time and the HDF5 path (read-only, so sessions may share them);
* virtual images, fitted preprocessors: keyed by dataset fingerprint (+ the
  preprocessing key);
* trained models and predictions: a bounded registry held by
  ``st.cache_resource`` and keyed by dataset fingerprint + preprocessing key +
  label hash + training settings, so an unchanged request never trains twice
  (an explicit registry rather than a decorated function so that progress
  callbacks can draw, and a failed run is never cached).

Everything a user makes (labels, models, predictions, suggestions) lives in
:class:`polmap.app.session.Session`, one per browser session in
``st.session_state``, and in that session's own workspace file under
:func:`polmap.settings.workspace_dir`; two sessions never share them.
"""
