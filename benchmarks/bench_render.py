"""Speed of the simulator's renderer and of the map figures (targets; exits 1 on a miss).

* ``render``: :func:`polmap.simulate.render_patterns` for 2,000 64 x 64 patterns
  (target: under 6 s);
* ``tiny scan``: :func:`polmap.simulate.simulate_scan` of the ``tiny`` preset,
  which the tests and the app's test suite simulate again and again (target: under 1 s);
* ``map figure``: ``rgb_map`` + ``domain_walls`` + ``map_figure`` with every
  overlay for a 256 x 256 scan, and ``image_figure`` of the same size (target:
  under 1 s each: the Map page's budget).

Each is timed ``--repeats`` times and the best run is reported. Figures depend
on the machine's load: the script prints the load average.

Usage::

    .venv/bin/python benchmarks/bench_render.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

import numpy as np

TARGETS_S = {"render 2,000 patterns": 6.0, "simulate tiny": 1.0, "map figure 256 x 256": 1.0,
             "image figure 256 x 256": 1.0}


def _best(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` seconds for each timed step."""
    from polmap import simulate as S
    from polmap.io.dataset import Calibration
    from polmap.viz.maps import image_figure, map_figure, rgb_map
    from polmap.analysis.walls import domain_walls

    lib = S.load_library()
    n = 2000
    rng = np.random.default_rng(0)
    args = (rng.choice(S.PHYSICAL_CLASSES, n), rng.uniform(10, 30, n), rng.uniform(-1.5, 1.5, (n, 2)),
            rng.uniform(-2, 2, (n, 2)))
    out = {"render 2,000 patterns": _best(lambda: S.render_patterns(*args, library=lib), repeats),
           "simulate tiny": _best(lambda: S.simulate_scan("tiny"), repeats)}

    R = C = 256
    rr, cc = np.mgrid[:R, :C]
    lab = (cc >= 100 + 0.5 * rr).astype(int)
    probs = np.stack([lab == 0, lab == 1, np.zeros_like(lab)], axis=-1) * 0.9 + 0.1 / 3
    cal = Calibration(real_step=1.0, real_units="nm")
    colors = ["#ff0000", "#00ff00", "#0000ff"]
    map_figure(np.zeros((4, 4, 3), np.uint8))  # plotly's one-off validator set-up

    def the_map() -> None:
        rgb = rgb_map(probs, colors, fade=0.5)
        map_figure(rgb, calibration=cal, probabilities=probs, class_names=["na", "v", "h"],
                   uncertainty=probs.max(axis=2), walls=domain_walls(probs), suggestions=np.array([[1, 1]]))

    walls = domain_walls(probs)
    out["map figure 256 x 256"] = _best(the_map, repeats)
    out["image figure 256 x 256"] = _best(lambda: image_figure(rr.astype(float), walls=walls), repeats)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    res = measure(args.repeats)
    missed = []
    print(f"load average before: {load}")
    print("| step | best s | target s | met |\n|---|---:|---:|---|")
    for k, v in res.items():
        ok = v <= TARGETS_S[k]
        missed += [] if ok else [k]
        print(f"| {k} | {v:.3f} | {TARGETS_S[k]:.1f} | {'yes' if ok else 'NO'} |")
    if missed:
        print(f"missed: {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
