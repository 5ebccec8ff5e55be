"""The app's configuration: data folder, uploads, presets and option lists (the core's, never the page's)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any


from polmap import settings
from polmap.labels import CLASS_PRESETS as CLASS_PRESETS  # for the pages

from polmap.app.errors import UserError

log = logging.getLogger("polmap.app")


#: File suffixes the data-root picker offers (lower case; ``.tar.gz`` style not needed).
DATA_SUFFIXES = (
    ".h5", ".hdf5", ".hdf", ".emd", ".h5ad", ".dm4", ".dm3", ".mib", ".raw", ".npy", ".npz", ".blo", ".hspy", ".zip",
)


# The environment is read in polmap.settings (one place for the app, the CLI and the benchmarks).
data_root = settings.data_root


workspace_dir = settings.workspace_dir


demo_preset = settings.demo_preset


max_upload_mb = settings.max_upload_mb


def demo_presets() -> list[str]:
    """The simulation presets the Data page offers, from :data:`polmap.simulate.PRESETS`."""
    from polmap.simulate import PRESETS

    return list(PRESETS)


def preprocess_options(current: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``selectbox`` arguments (options, index of the current value) for each choice of the preprocessing form.

    The options are the core's (:mod:`polmap.process.preprocess`); a current value the
    core does not know is kept as the first option rather than replaced unseen.
    """
    from polmap.process import preprocess as pp

    defaults = pp.PreprocessConfig()
    out: dict[str, dict[str, Any]] = {}
    for key, options in (("centring", pp.CENTRINGS), ("scaling", pp.SCALINGS), ("normalise", pp.NORMALISATIONS),
                         ("box_mode", pp.BOX_MODES)):
        value = current.get(key, getattr(defaults, key))
        opts = list(options) if value in options else [value, *options]
        out[key] = {"options": opts, "index": opts.index(value)}
    return out


def resolve_in_root(relative: str, root: Path | None = None) -> Path:
    """Resolve a user-given path inside the data root; refuse anything outside it.

    Symlinks and ``..`` are resolved first, so neither can escape the root.

    Raises
    ------
    UserError
        If the path leaves the root or does not exist.
    """
    root = (root or data_root()).resolve()
    rel = str(relative).strip()
    if not rel:
        raise UserError("No file chosen.")
    candidate = (root / rel).resolve()
    if candidate != root and root not in candidate.parents:
        raise UserError(f"'{relative}' is outside the data folder {root}; only files under it can be opened.")
    if not candidate.exists():
        raise UserError(f"'{relative}' does not exist under the data folder {root}.")
    return candidate


def list_data_files(root: Path | None = None, limit: int = 2000) -> list[str]:
    """Data files under the data root, as paths relative to it (symlinks out of the root skipped)."""
    root = (root or data_root()).resolve()
    if not root.is_dir():
        return []
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if fn.startswith(".") or not fn.lower().endswith(DATA_SUFFIXES) or fn.endswith(".polmap.h5"):
                continue
            p = Path(dirpath) / fn
            try:
                rp = p.resolve()
            except OSError:
                continue
            if root not in rp.parents:
                continue
            out.append(str(p.relative_to(root)))
            if len(out) >= limit:
                return out
    return out


def preprocess_config(d: dict[str, Any] | None = None) -> Any:
    """A :class:`polmap.process.preprocess.PreprocessConfig` from a dict.

    Keys this polmap does not know (a workspace from another version) are
    left out and logged; the rest must be valid.
    """
    from polmap.process.preprocess import PreprocessConfig

    d = dict(d or {})
    known = PreprocessConfig.__dataclass_fields__
    unknown = sorted(set(d) - set(known))
    if unknown:
        log.warning("preprocessing keys not known to this polmap, left out: %s", unknown)
    return PreprocessConfig.from_dict({k: v for k, v in d.items() if k in known})


def model_preprocess(name: str) -> dict[str, Any]:
    """The preprocessing a network was designed for (full PreprocessConfig dict)."""
    from polmap.learn.model import default_preprocess

    return preprocess_config(default_preprocess(name)).to_dict()
