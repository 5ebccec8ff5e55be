"""Scan configurations (``SimConfig``) and the named presets."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any




@dataclass
class SimConfig:
    """All parameters of a simulated scan (every field goes into the metadata).

    Parameters
    ----------
    preset : str
        Name recorded in the metadata (``"custom"`` when built by hand).
    scan_shape : (int, int)
        Probe positions (rows, cols).
    detector_size : int
        D for a D x D detector.
    reciprocal_step_mrad : float
        Detector pixel size.
    convergence_mrad : float
        Probe convergence semi-angle. Above half the reflection spacing the disks
        overlap and each pixel sums the disks that cover it (position-averaged
        CBED); the library's tilt range must cover it plus the mistilt.
    real_step_nm : float
        Scan step.
    geometry : str
        Key of :data:`GEOMETRIES`.
    geometry_params : dict
        Extra keyword arguments of the geometry function.
    class_set : str
        ``"signed"``, ``"axis"`` or ``"anonymous"`` (names that say nothing of a
        direction, in an order unrelated to one): the classes of ``label_map``.
    library : str
        Material of the pattern library (:data:`LIBRARIES`): ``"PbTiO3"`` or
        ``"BaTiO3"`` (a weaker polarity; its library reaches 15 mrad of tilt,
        enough for overlapping disks).
    detector_rotation_deg : float
        The camera's rotation against the crystal frame (degrees, from +column
        towards +row): patterns are rendered rotated, any angle.
    detector_mirror : bool
        The camera is mounted mirrored (columns reversed, before the rotation).
    probe_footprint_px : float
        Gaussian sigma (scan pixels) of the probe footprint that mixes neighbouring
        domains' patterns incoherently at walls.
    wall_threshold : float
        A position is a wall when its dominant domain weight is below this.
    thickness_nm : (float, float)
        Thickness at the start and end of the wedge.
    wedge_angle_deg : float
        Direction of increasing thickness (0: along +col, 90: along +row).
    thickness_roughness_nm : float
        Std of a smooth random thickness modulation on top of the wedge.
    mistilt_mrad : float
        Largest |component| of the smooth mistilt field (0 = perfectly on zone).
    mistilt_corr : float
        Correlation length of the mistilt field as a fraction of the scan size.
    descan_px : float
        Descan shift range across the scan (pixels, largest |component| at a corner).
    descan_jitter_px : float
        Std of the per-position random shift on top of the descan plane.
    dose : float or None
        Incident electrons per pattern; ``None`` gives noise-free expected counts.
    diffuse_fraction : float
        Extra diffuse background (inelastic, amorphous surface layers) as a fraction
        of the dose, added to the thermal diffuse flux lost from the Bragg beams.
    diffuse_width_mrad : float
        Width of the (Lorentzian-squared) diffuse profile.
    detector_blur_px : float
        Gaussian sigma of the detector point-spread function.
    n_hot_pixels, n_dead_pixels : int
        Detector defects; at least a third of each sit inside the bright-field disk.
    hot_level : float
        Mean hot-pixel counts as a multiple of a vacuum bright-field pixel's counts.
    seed : int
        Seed of every random choice; the same seed gives identical data.
    """

    preset: str = "custom"
    scan_shape: tuple[int, int] = (48, 64)
    detector_size: int = 64
    reciprocal_step_mrad: float = 0.55
    convergence_mrad: float = 2.5
    real_step_nm: float = 1.0
    geometry: str = "mixed"
    geometry_params: dict[str, Any] = field(default_factory=dict)
    class_set: str = "signed"
    library: str = "PbTiO3"
    detector_rotation_deg: float = 0.0
    detector_mirror: bool = False
    probe_footprint_px: float = 0.7
    wall_threshold: float = 0.9
    thickness_nm: tuple[float, float] = (10.0, 30.0)
    wedge_angle_deg: float = 0.0
    thickness_roughness_nm: float = 0.3
    mistilt_mrad: float = 1.5
    mistilt_corr: float = 0.35
    descan_px: float = 2.5
    descan_jitter_px: float = 0.1
    dose: float | None = 5e4
    diffuse_fraction: float = 0.05
    diffuse_width_mrad: float = 12.0
    detector_blur_px: float = 0.5
    n_hot_pixels: int = 6
    n_dead_pixels: int = 6
    hot_level: float = 4.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of every parameter."""
        d = dataclasses.asdict(self)
        d["scan_shape"] = list(self.scan_shape)
        d["thickness_nm"] = list(self.thickness_nm)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SimConfig":
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "scan_shape" in known:
            known["scan_shape"] = tuple(known["scan_shape"])
        if "thickness_nm" in known:
            known["thickness_nm"] = tuple(known["thickness_nm"])
        return cls(**known)

    def replace(self, **changes: Any) -> "SimConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(copy.deepcopy(self), **changes)


PRESETS: dict[str, SimConfig] = {
    # The app's demo: all five states, walls, wedge, mistilt, descan, noise, defects.
    "demo": SimConfig(preset="demo", scan_shape=(96, 128), geometry="mixed", seed=1),
    # Small and fast for unit tests.
    "tiny": SimConfig(
        preset="tiny", scan_shape=(24, 32), detector_size=32, reciprocal_step_mrad=1.0,
        geometry="mixed", dose=2e4, seed=3,
    ),
    "small": SimConfig(preset="small", scan_shape=(48, 64), geometry="mixed", seed=2),
    "stripes_90": SimConfig(preset="stripes_90", scan_shape=(64, 96), geometry="stripes_90", geometry_params={"period": 28.0}, seed=4),
    "domains_180": SimConfig(preset="domains_180", scan_shape=(64, 96), geometry="domains_180", seed=5),
    "bubbles": SimConfig(preset="bubbles", scan_shape=(64, 96), geometry="bubbles", seed=6),
    "flux_closure": SimConfig(preset="flux_closure", scan_shape=(80, 80), geometry="flux_closure", seed=7),
    # Like the paper's headline scan: 206 x 34 positions, classes na/vertical/horizontal.
    "paper_axis": SimConfig(
        preset="paper_axis", scan_shape=(206, 34), geometry="bands", geometry_params={"period": 36.0},
        class_set="axis", wedge_angle_deg=90.0, thickness_nm=(12.0, 28.0), seed=8,
    ),
    # Harder than the demo: wider wedge (crosses a Friedel sign change near 37 nm),
    # larger and faster-varying mistilt, 10x lower dose.
    "hard": SimConfig(
        preset="hard", scan_shape=(96, 128), geometry="mixed", thickness_nm=(6.0, 38.0), mistilt_mrad=1.9,
        mistilt_corr=0.2, descan_px=3.0, dose=5e3, seed=11,
    ),
    # Like multislice scans made elsewhere: BaTiO3 (a weaker polarity), 11 mrad so that
    # the disks overlap (twice the reflection spacing), position-averaged patterns,
    # a thickness wedge and mistilt, 3e4 electrons: +P and -P class means differ by a
    # few percent after preprocessing (tests/test_simulate.py measures it).
    "weak": SimConfig(
        preset="weak", scan_shape=(48, 64), library="BaTiO3", detector_size=48, reciprocal_step_mrad=1.0,
        convergence_mrad=11.0, geometry="mixed", thickness_nm=(16.0, 20.0), mistilt_mrad=0.5, mistilt_corr=0.3,
        descan_px=3.0, dose=3e4, seed=12,
    ),
    # Baseline control: on zone, constant thickness, no descan, no noise or defects.
    "control": SimConfig(
        preset="control", scan_shape=(48, 64), geometry="mixed", thickness_nm=(20.0, 20.0),
        thickness_roughness_nm=0.0, mistilt_mrad=0.0, descan_px=0.0, descan_jitter_px=0.0,
        dose=None, diffuse_fraction=0.0, detector_blur_px=0.0, n_hot_pixels=0, n_dead_pixels=0, seed=9,
    ),
}


# The weak preset seen through other cameras and with other names: polmap must do as well
# on each (nothing in it may depend on a detector orientation or a class name).
PRESETS["weak_mirrored"] = PRESETS["weak"].replace(preset="weak_mirrored", detector_mirror=True)


PRESETS["weak_rot90"] = PRESETS["weak"].replace(preset="weak_rot90", detector_rotation_deg=90.0)


PRESETS["weak_rot30"] = PRESETS["weak"].replace(preset="weak_rot30", detector_rotation_deg=30.0)


PRESETS["weak_anonymous"] = PRESETS["weak"].replace(preset="weak_anonymous", class_set="anonymous")


def get_preset(name: str, **overrides: Any) -> SimConfig:
    """A copy of a preset, optionally with fields overridden.

    Raises
    ------
    ValueError
        For an unknown preset name (the message lists the valid ones).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name].replace(**overrides)
