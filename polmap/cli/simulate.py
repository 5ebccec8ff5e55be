"""``polmap simulate``: write a synthetic 4D-STEM scan with ground truth to HDF5."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

__all__ = ["register", "run"]


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Add the ``simulate`` sub-command to a CLI's sub-parsers.

    Parameters
    ----------
    subparsers
        The object returned by ``ArgumentParser.add_subparsers()``.

    Returns
    -------
    argparse.ArgumentParser
        The new sub-parser (its ``func`` default is :func:`run`).
    """
    p = subparsers.add_parser(
        "simulate",
        help="write a simulated ferroelectric 4D-STEM scan (HDF5, with ground truth)",
        description=(
            "Synthesise a 4D-STEM scan of PbTiO3 domains from the multislice CBED library "
            "and write it in polmap's HDF5 layout. Use --list to see the presets."
        ),
    )
    p.add_argument("--preset", default="demo", help="preset name (default: demo; see --list)")
    p.add_argument("--out", type=Path, help="output .h5 file")
    p.add_argument("--seed", type=int, default=None, help="override the preset's random seed")
    p.add_argument("--list", action="store_true", help="list the presets and exit")
    p.set_defaults(func=run)
    return p


def _preset_table() -> str:
    from polmap.simulate import PRESETS

    lines = [f"{'preset':<14}{'scan':>10}{'detector':>10}  {'geometry':<13}{'classes':<8}  dose"]
    for name, c in PRESETS.items():
        scan = f"{c.scan_shape[0]}x{c.scan_shape[1]}"
        det = f"{c.detector_size}x{c.detector_size}"
        dose = "noise-free" if c.dose is None else f"{c.dose:g} e-"
        lines.append(f"{name:<14}{scan:>10}{det:>10}  {c.geometry:<13}{c.class_set:<8}  {dose}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Execute ``polmap simulate``; returns the exit code.

    Raises
    ------
    ValueError
        For an unknown preset (the message lists the valid ones) or a missing ``--out``.
    """
    from polmap.simulate import get_preset, simulate_scan, write_h5

    if args.list:
        print(_preset_table())
        return 0
    cfg = get_preset(args.preset) if args.seed is None else get_preset(args.preset, seed=args.seed)
    if args.out is None:
        raise ValueError("--out FILE is required (or use --list)")
    t0 = time.perf_counter()
    scan = simulate_scan(cfg)
    path = write_h5(scan, args.out)
    R, C, Qr, Qc = scan.data.shape
    counts = {n: int((scan.label_map == i).sum()) for i, n in enumerate(scan.class_names)}
    print(
        f"wrote {path}: {R}x{C} scan, {Qr}x{Qc} detector, preset {cfg.preset}, seed {cfg.seed}, "
        f"{time.perf_counter() - t0:.1f} s; classes {counts}, walls {int(scan.wall_mask.sum())}"
    )
    return 0
