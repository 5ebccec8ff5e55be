"""Physics-grounded synthetic 4D-STEM scans of ferroelectric domains, with ground truth.

Patterns come from a multislice CBED library of tetragonal PbTiO3 at 200 kV
(``polmap/data/pattern_library.npz``, built offline by
``tools/make_pattern_library.py`` with abTEM; provenance in the ``.json`` beside it).
In the non-overlapping-disk picture the detector pixel at offset ``k`` (mrad) inside
disk ``g`` has intensity ``I_g(thickness, k + mistilt)``, so a pattern is rendered by
interpolating the library linearly in thickness and bilinearly in beam tilt.

The library holds two crystal orientations: an ``a_domain`` with the polar axis in
the image plane along ``+x`` (detector columns) and a ``c_domain`` with the polar
axis along the beam (class ``none``). The other in-plane directions are derived
exactly by the detector symmetry operation applied to both the pattern and the
tilt: a column mirror gives ``-x``, a transpose ``+y``, a transpose followed by a
row mirror ``-y``.

A scan combines a domain geometry (90 degree stripes, 180 degree domains with
curved walls, bubbles/needles, flux-closure quadrants, a mixed demo), incoherent
wall mixing over the probe footprint, a thickness wedge, a smooth mistilt field,
a descan plane with jitter, diffuse background, Poisson noise at a chosen dose,
and hot and dead detector pixels. Only numpy and scipy are used.

Conventions: positions and vectors are ``(row, col)``; ``+x`` is towards
increasing column, ``+y`` towards increasing row.

Modules: ``states``, ``library``, ``render``, ``geometries``, ``presets``, ``scan``, ``files``."""

from polmap.simulate.states import CLASS_SETS, FORMAT_NAME, FORMAT_VERSION, PHYSICAL_CLASSES, POLARIZATION, class_colors, class_directions, mounting_matrix
from polmap.simulate.library import LIBRARIES, OrientationTable, PatternLibrary, load_library
from polmap.simulate.render import render_pattern, render_patterns
from polmap.simulate.geometries import GEOMETRIES
from polmap.simulate.presets import PRESETS, SimConfig, get_preset
from polmap.simulate.scan import SimulatedScan, simulate_scan
from polmap.simulate.files import demo_path, write_h5

__all__ = [
    "CLASS_SETS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "GEOMETRIES",
    "LIBRARIES",
    "OrientationTable",
    "PHYSICAL_CLASSES",
    "POLARIZATION",
    "PRESETS",
    "PatternLibrary",
    "SimConfig",
    "SimulatedScan",
    "class_colors",
    "class_directions",
    "demo_path",
    "get_preset",
    "load_library",
    "mounting_matrix",
    "render_pattern",
    "render_patterns",
    "simulate_scan",
    "write_h5",
]
