"""A whole simulated scan: geometry, wall mixing, thickness, mistilt, descan, dose and detector defects."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage


from polmap.simulate.states import FORMAT_NAME, FORMAT_VERSION, PHYSICAL_CLASSES, POLARIZATION, _ORIENTATION, _class_set, class_directions, mounting_matrix
from polmap.simulate.library import PatternLibrary, load_library
from polmap.simulate.render import _Detector, _check_detector, _render_states, _run_chunks
from polmap.simulate.geometries import GEOMETRIES, _smooth_field
from polmap.simulate.presets import SimConfig, get_preset


@dataclass
class SimulatedScan:
    """A synthetic 4D-STEM scan with its ground truth.

    Attributes
    ----------
    data : ndarray, (R, C, D, D) uint16
        Detector counts (with ``dose=None``: noise-free expected counts for 1e4
        electrons, rounded).
    label_map : ndarray, (R, C) int16
        Dominant class per position in ``class_names``.
    wall_mask : ndarray, (R, C) bool
        True where the dominant domain weight is below ``wall_threshold``.
    polarization : ndarray, (R, C, 2) float32
        Weighted in-plane polarization (p_row, p_col); 0 for c-domains.
    thickness : ndarray, (R, C) float32
        Thickness in nm.
    tilt : ndarray, (R, C, 2) float32
        Mistilt (row, col) in mrad.
    descan : ndarray, (R, C, 2) float32
        Pattern shift (row, col) on the detector in pixels.
    state_weights : ndarray, (5, R, C) float32
        Weights of the physical states :data:`PHYSICAL_CLASSES` at each position.
    class_names, class_colors : list of str
    metadata : dict
        Every physics parameter, the seed, preset, library hash, timing.
    """

    data: np.ndarray
    label_map: np.ndarray
    wall_mask: np.ndarray
    polarization: np.ndarray
    thickness: np.ndarray
    tilt: np.ndarray
    descan: np.ndarray
    state_weights: np.ndarray
    class_names: list[str]
    class_colors: list[str]
    metadata: dict[str, Any]

    @property
    def scan_shape(self) -> tuple[int, int]:
        """(rows, cols) of the scan."""
        return (int(self.data.shape[0]), int(self.data.shape[1]))

    def to_dataset(self):
        """Wrap as a :class:`polmap.io.dataset.Dataset4D` with calibration and ground truth."""
        from polmap.io.dataset import Calibration, Dataset4D, GroundTruth

        md = self.metadata
        cal = Calibration(
            real_step=md["real_step_nm"], real_units="nm", reciprocal_step=md["reciprocal_step_mrad"],
            reciprocal_units="mrad", beam_energy_kev=md["beam_energy_kev"], convergence_mrad=md["convergence_mrad"],
        )
        gt = GroundTruth(self.label_map, list(self.class_names), list(self.class_colors), self.wall_mask,
                         class_directions=dict(md.get("class_directions") or {}) or None)
        return Dataset4D.from_array(self.data, name=f"sim-{md.get('preset', 'custom')}", calibration=cal, ground_truth=gt, metadata=md)


def _state_weights(cfg: SimConfig, rng: np.random.Generator, supersample: int = 4) -> np.ndarray:
    """(5, R, C) area fractions of each state, blurred by the probe footprint."""
    if cfg.geometry not in GEOMETRIES:
        raise ValueError(f"unknown geometry {cfg.geometry!r}; valid: {sorted(GEOMETRIES)}")
    R, C = cfg.scan_shape
    ss = supersample
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    rr = (np.arange(R)[:, None] + sub[None, :]).ravel()
    cc = (np.arange(C)[:, None] + sub[None, :]).ravel()
    RR, CC = np.meshgrid(rr, cc, indexing="ij")
    states = np.asarray(GEOMETRIES[cfg.geometry](RR, CC, (R, C), rng, **cfg.geometry_params))
    onehot = (states[None] == np.arange(5)[:, None, None]).astype(np.float32)
    w = onehot.reshape(5, R, ss, C, ss).mean(axis=(2, 4))
    if cfg.probe_footprint_px > 0:
        w = np.stack([ndimage.gaussian_filter(x, cfg.probe_footprint_px, mode="nearest") for x in w])
    w[w < 0.02] = 0.0  # negligible contributions would only cost render time
    return (w / w.sum(axis=0, keepdims=True)).astype(np.float32)


def _thickness_map(cfg: SimConfig, rng: np.random.Generator, lib: PatternLibrary) -> np.ndarray:
    R, C = cfg.scan_shape
    rr, cc = np.meshgrid(np.arange(R), np.arange(C), indexing="ij")
    ang = np.radians(cfg.wedge_angle_deg)
    s = rr * np.sin(ang) + cc * np.cos(ang)
    s = (s - s.min()) / max(s.max() - s.min(), 1e-12)
    t = cfg.thickness_nm[0] + (cfg.thickness_nm[1] - cfg.thickness_nm[0]) * s
    if cfg.thickness_roughness_nm > 0:
        t = t + cfg.thickness_roughness_nm * _smooth_field((R, C), rng, (max(R, C) * 0.1,) * 2)
    lo = max(tb.thickness_nm[0] for tb in lib.tables.values())
    hi = min(tb.thickness_nm[-1] for tb in lib.tables.values())
    return np.clip(t, lo, hi)


def _tilt_field(cfg: SimConfig, rng: np.random.Generator) -> np.ndarray:
    R, C = cfg.scan_shape
    if cfg.mistilt_mrad <= 0:
        return np.zeros((R, C, 2))
    sig = max(cfg.mistilt_corr * max(R, C), 1.0)
    rr, cc = np.meshgrid(np.linspace(-1, 1, R), np.linspace(-1, 1, C), indexing="ij")
    comps = []
    for _ in range(2):
        # smooth random bending plus a gentle linear gradient
        f = _smooth_field((R, C), rng, (sig, sig)) + rng.uniform(-1, 1) * rr + rng.uniform(-1, 1) * cc
        f = f - f.mean()
        comps.append(cfg.mistilt_mrad * f / (np.abs(f).max() + 1e-12))
    return np.stack(comps, axis=-1)


def _descan_field(cfg: SimConfig, rng: np.random.Generator) -> np.ndarray:
    R, C = cfg.scan_shape
    rr, cc = np.meshgrid(np.linspace(-1, 1, R), np.linspace(-1, 1, C), indexing="ij")
    out = np.zeros((R, C, 2))
    if cfg.descan_px > 0:
        for i in range(2):
            a, b = rng.uniform(-1, 1, 2)
            plane = a * rr + b * cc
            out[..., i] = cfg.descan_px * plane / max(np.abs(plane).max(), 1e-12)
    if cfg.descan_jitter_px > 0:
        out += rng.normal(0, cfg.descan_jitter_px, size=out.shape)
    return out


def _diffuse_profile(det: _Detector, width: float) -> np.ndarray:
    """Fraction of an isotropic diffuse flux per pixel, (D, D); integrates to 1 over the plane."""
    q = det.q
    q2 = (q**2).sum(axis=1) / width**2
    return (det.step**2 / (np.pi * width**2) / (1 + q2) ** 2).reshape(det.size, det.size).astype(np.float32)


def _defects(cfg: SimConfig, rng: np.random.Generator, det: _Detector, descan: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of hot and dead pixels, none adjacent to another; a third of each
    sits inside the bright-field disk (around its mean position)."""
    D = det.size
    centre = (D - 1) / 2 + descan.reshape(-1, 2).mean(axis=0)
    rr, cc = np.meshgrid(np.arange(D), np.arange(D), indexing="ij")
    r_in = max(det.alpha / det.step - 1.0, 1.0)
    inside_mask = (((rr - centre[0]) ** 2 + (cc - centre[1]) ** 2) <= r_in**2).ravel()
    blocked = np.zeros(D * D, dtype=bool)
    picks = []
    for n in (cfg.n_hot_pixels, cfg.n_dead_pixels):
        n_in = int(np.ceil(n / 3)) if n else 0
        sel: list[int] = []
        for want_inside, count in ((True, n_in), (False, n - n_in)):
            for _ in range(count):
                cand = np.nonzero((inside_mask == want_inside) & ~blocked)[0]
                if cand.size == 0:
                    cand = np.nonzero(~blocked)[0]
                if cand.size == 0:
                    break
                i = int(rng.choice(cand))
                sel.append(i)
                r, c = divmod(i, D)
                blocked[(np.clip(r + np.array([-1, 0, 1])[:, None], 0, D - 1) * D + np.clip(c + np.array([-1, 0, 1])[None, :], 0, D - 1)).ravel()] = True
        picks.append(np.sort(np.array(sel, dtype=np.int64)))
    return picks[0], picks[1]


def simulate_scan(config: SimConfig | str, *, library: PatternLibrary | None = None) -> SimulatedScan:
    """Synthesise a 4D-STEM scan of ferroelectric domains with ground truth.

    Parameters
    ----------
    config : SimConfig or str
        The parameters, or the name of a preset in :data:`PRESETS`.
    library : PatternLibrary, optional
        Defaults to the shipped PbTiO3 library.

    Returns
    -------
    SimulatedScan
    """
    cfg = get_preset(config) if isinstance(config, str) else config
    t_start = time.perf_counter()
    lib = library or load_library(material=cfg.library)
    cs = _class_set(cfg.class_set)
    mount = mounting_matrix(cfg.detector_rotation_deg, cfg.detector_mirror)
    R, C = (int(x) for x in cfg.scan_shape)
    if R < 1 or C < 1:
        raise ValueError(f"scan_shape must be positive, got {cfg.scan_shape}")
    if cfg.dose is not None and cfg.dose <= 0:
        raise ValueError(f"dose must be > 0 or None, got {cfg.dose}")
    det = _Detector(int(cfg.detector_size), float(cfg.reciprocal_step_mrad), float(cfg.convergence_mrad))
    _check_detector(lib, det, cfg.mistilt_mrad)
    rng = np.random.default_rng(cfg.seed)
    # Independent streams so that changing one ingredient leaves the others alone.
    r_geom, r_thick, r_tilt, r_desc, r_noise, r_def = (np.random.default_rng(s) for s in rng.spawn(6))

    weights = _state_weights(cfg, r_geom)
    thickness = _thickness_map(cfg, r_thick, lib)
    tilt = _tilt_field(cfg, r_tilt)
    descan = _descan_field(cfg, r_desc)

    N, P = R * C, det.size * det.size
    wflat = weights.reshape(5, N)
    pos_idx, state_idx = np.nonzero(wflat.T > 0)  # position-major, so pos_idx is sorted
    states = np.asarray(PHYSICAL_CLASSES)[state_idx]
    # Diffuse background: TDS flux lost from the Bragg beams plus an extra fraction.
    tds = np.zeros(N)
    for s_i, name in enumerate(PHYSICAL_CLASSES):
        tb = lib.tables[_ORIENTATION[name]]
        tds += wflat[s_i] * (1.0 - np.interp(thickness.reshape(N), tb.thickness_nm, tb.bragg_fraction))
    diffuse_amount = (tds + cfg.diffuse_fraction).astype(np.float32)
    profile = _diffuse_profile(det, cfg.diffuse_width_mrad).reshape(1, -1)
    dose = float(cfg.dose) if cfg.dose is not None else 1e4
    hot, dead = _defects(cfg, r_def, det, descan)
    # hot pixels: a few times the counts of a vacuum bright-field pixel
    vacuum_bf = dose * det.step**2 / (np.pi * det.alpha**2)
    hot_mean = cfg.hot_level * vacuum_bf * r_def.uniform(0.7, 1.3, size=hot.size)
    chunk = 256  # fixed, so the noise does not depend on the number of threads
    gens = r_noise.spawn((N + chunk - 1) // chunk)
    data = np.empty((N, P), dtype=np.uint16)
    u16_max = np.iinfo(np.uint16).max
    blur_sigma = (0, cfg.detector_blur_px, cfg.detector_blur_px)
    block = 8 * chunk  # positions rendered at a time: bounds the float32 working memory

    for b0 in range(0, N, block):
        b1 = min(N, b0 + block)
        lo, hi = np.searchsorted(pos_idx, [b0, b1])
        expected = np.zeros((b1 - b0, P), dtype=np.float32)
        sel = slice(lo, hi)
        _render_states(
            lib, det, states[sel], wflat[state_idx[sel], pos_idx[sel]], pos_idx[sel] - b0,
            thickness.reshape(N)[pos_idx[sel]], tilt.reshape(N, 2)[pos_idx[sel]], descan.reshape(N, 2)[pos_idx[sel]],
            expected, mount,
        )

        def detect(sl: slice, b0: int = b0, expected: np.ndarray = expected) -> None:
            g = gens[(b0 + sl.start) // chunk]
            lam = expected[sl] + diffuse_amount[b0 + sl.start : b0 + sl.stop, None] * profile
            if cfg.detector_blur_px > 0:
                lam = ndimage.gaussian_filter(lam.reshape(-1, det.size, det.size), blur_sigma, mode="constant")
            lam = lam.reshape(-1, P) * np.float32(dose)
            counts = g.poisson(lam) if cfg.dose is not None else np.rint(lam)
            if hot.size:
                counts[:, hot] = g.poisson(np.broadcast_to(hot_mean, (len(lam), hot.size)))
            if dead.size:
                counts[:, dead] = 0
            data[b0 + sl.start : b0 + sl.stop] = np.clip(counts, 0, u16_max)

        _run_chunks(detect, b1 - b0, chunk)
    data = data.reshape(R, C, det.size, det.size)

    dominant_state = np.argmax(weights, axis=0)
    to_class = np.array([cs["from_physical"][n] for n in PHYSICAL_CLASSES])
    # Dominant class: sum state weights per class (e.g. +x and -x are both 'horizontal').
    cls_w = np.zeros((len(cs["names"]), R, C), dtype=np.float32)
    for s_i in range(5):
        cls_w[to_class[s_i]] += weights[s_i]
    label_map = np.argmax(cls_w, axis=0).astype(np.int16)
    wall_mask = weights.max(axis=0) < cfg.wall_threshold
    pol_vec = np.array([POLARIZATION[n] for n in PHYSICAL_CLASSES], dtype=np.float32)
    polarization = np.einsum("src,sk->rck", weights, pol_vec)

    lib_prov = lib.provenance
    metadata = {
        **cfg.to_dict(),
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "beam_energy_kev": lib.beam_energy_kev,
        "wavelength_A": lib.wavelength_A,
        "material": lib_prov.get("material", "PbTiO3, tetragonal P4mm"),
        "library_sha256": lib.sha256,
        "library_configs": lib_prov.get("frozen_phonons", {}).get("configs"),
        "reciprocal_spacing_mrad": {o: list(lib.spacing(o)) for o in lib.tables},
        "physical_classes": PHYSICAL_CLASSES,
        "class_names": list(cs["names"]),
        "class_colors": list(cs["colors"]),
        "class_directions": class_directions(cfg.class_set, mount),
        "detector_mounting": mount.round(9).tolist(),
        "counts_per_electron": 1.0,
        "noise": "poisson" if cfg.dose is not None else "none (expected counts for 1e4 electrons)",
        "hot_pixels": hot.tolist(),
        "dead_pixels": dead.tolist(),
        "optic_axis_px": [(det.size - 1) / 2.0] * 2,
        "n_wall_positions": int(wall_mask.sum()),
        "dominant_state_counts": {n: int((dominant_state == i).sum()) for i, n in enumerate(PHYSICAL_CLASSES)},
        "generation_time_s": round(time.perf_counter() - t_start, 3),
    }
    return SimulatedScan(
        data=data,
        label_map=label_map,
        wall_mask=wall_mask,
        polarization=polarization.astype(np.float32),
        thickness=thickness.astype(np.float32),
        tilt=tilt.astype(np.float32),
        descan=descan.astype(np.float32),
        state_weights=weights,
        class_names=list(cs["names"]),
        class_colors=list(cs["colors"]),
        metadata=metadata,
    )
