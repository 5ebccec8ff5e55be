"""Writing simulated scans to HDF5 and the cached demo files."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from polmap import settings

from polmap.simulate.states import FORMAT_NAME, FORMAT_VERSION
from polmap.simulate.library import load_library
from polmap.simulate.presets import get_preset
from polmap.simulate.scan import SimulatedScan, simulate_scan


def write_h5(scan: SimulatedScan, path: str | os.PathLike) -> Path:
    """Write a simulated scan in polmap's HDF5 layout (see ``docs/api.md``).

    The data are uncompressed and chunked one scan row per chunk; the file is written
    to a temporary name in the same folder and renamed, so a reader never sees a
    half-written file.

    Parameters
    ----------
    scan : SimulatedScan
    path : path-like

    Returns
    -------
    Path
        The written file.
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    md = scan.metadata
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            R, C, Qr, Qc = scan.data.shape
            d = f.create_dataset("data", data=scan.data, chunks=(1, C, Qr, Qc))
            d.attrs["real_step_nm"] = float(md["real_step_nm"])
            d.attrs["reciprocal_step_mrad"] = float(md["reciprocal_step_mrad"])
            d.attrs["beam_energy_kev"] = float(md["beam_energy_kev"])
            d.attrs["convergence_mrad"] = float(md["convergence_mrad"])
            g = f.create_group("ground_truth")
            lm = g.create_dataset("label_map", data=scan.label_map.astype(np.int16))
            lm.attrs["class_names"] = json.dumps(list(scan.class_names))
            lm.attrs["class_colors"] = json.dumps(list(scan.class_colors))
            if md.get("class_directions"):
                lm.attrs["class_directions"] = json.dumps(md["class_directions"])
            g.create_dataset("wall_mask", data=scan.wall_mask.astype(bool))
            g.create_dataset("polarization", data=scan.polarization.astype(np.float32))
            g.create_dataset("thickness_nm", data=scan.thickness.astype(np.float32))
            g.create_dataset("tilt_mrad", data=scan.tilt.astype(np.float32))
            g.create_dataset("descan_px", data=scan.descan.astype(np.float32))
            f.attrs["polmap_format"] = FORMAT_NAME
            f.attrs["polmap_version"] = FORMAT_VERSION
            f.attrs["metadata"] = json.dumps(md)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return settings.cache_dir()


def demo_path(cache_dir: str | os.PathLike | None = None, *, preset: str = "demo", seed: int | None = None) -> Path:
    """Path of the demo scan, generating it once into the cache.

    Parameters
    ----------
    cache_dir : path-like, optional
        Defaults to ``$POLMAP_CACHE`` or ``~/.cache/polmap``.
    preset : str
        Preset to generate (``"demo"``).
    seed : int, optional
        Overrides the preset's seed.

    Returns
    -------
    Path
        An HDF5 file; its name is keyed by preset, seed, library hash and format
        version, so a new library or format regenerates it.
    """
    cfg = get_preset(preset) if seed is None else get_preset(preset, seed=seed)
    lib = load_library()
    cfg_hash = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    name = f"sim-{cfg.preset}-seed{cfg.seed}-lib{lib.sha256[:10]}-cfg{cfg_hash}-v{FORMAT_VERSION}.h5"
    path = _cache_dir(cache_dir) / name
    if not path.exists():
        write_h5(simulate_scan(cfg, library=lib), path)
    return path
