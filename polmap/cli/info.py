"""``polmap info FILE [--dataset PATH] [--scan-shape R,C] [--json]``: describe a 4D-STEM file."""

from __future__ import annotations

import argparse
import json
from typing import Any

from polmap.io.dataset import DatasetError
from polmap.io import list_4d_datasets, open_dataset


def _scan_shape(text: str) -> tuple[int, int]:
    parts = text.replace("x", ",").replace("X", ",").split(",")
    try:
        rows, cols = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROWS,COLS (e.g. 64,64); got {text!r}") from None
    return rows, cols


def register(subparsers: Any) -> None:
    """Add the ``info`` sub-command to a :mod:`argparse` sub-parser set."""
    p = subparsers.add_parser(
        "info",
        help="show shape, type, size, calibration and fingerprint of a 4D-STEM file",
        description="Open a 4D-STEM file lazily and describe it, or say clearly why it cannot be used.",
    )
    p.add_argument("file", help="data file (HDF5/EMD, .npy, .npz, .mib, .raw, .blo, .dm3/.dm4, .zip) or 'demo'")
    p.add_argument("--dataset", dest="dataset_path", default=None, help="array inside a container (HDF5 path, .npz key, .zip member)")
    p.add_argument("--scan-shape", type=_scan_shape, default=None, metavar="ROWS,COLS", help="scan shape for 3-D stacks or files that do not record it")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def describe(file: str, dataset_path: str | None = None, scan_shape: tuple[int, int] | None = None) -> dict[str, Any]:
    """The summary ``polmap info`` prints: :meth:`Dataset4D.summary` plus metadata and container choices.

    Raises
    ------
    DatasetError
        When the file cannot be opened as a 4D-STEM scan.
    """
    with open_dataset(file, dataset_path=dataset_path, scan_shape=scan_shape) as ds:
        info = ds.summary()
        info["format"] = ds.metadata.get("format")
        info["dtype_on_disk"] = ds.metadata.get("dtype_on_disk", info["dtype"])
        info["storage"] = ds.metadata.get("storage", "")
        if ds.ground_truth is not None:
            info["ground_truth_classes"] = list(ds.ground_truth.class_names)
    try:
        cands = list_4d_datasets(file) if file != "demo" else []
    except DatasetError:
        cands = []
    info["candidates"] = [{"path": c.path, "shape": list(c.shape), "dtype": c.dtype} for c in cands]
    return info


def _fmt_step(step: float | None, units: str) -> str:
    return f"{step:g} {units}" if step is not None else "uncalibrated (px)"


def run(args: argparse.Namespace) -> int:
    """Print the description of ``args.file``; errors propagate as :class:`DatasetError`."""
    info = describe(args.file, args.dataset_path, args.scan_shape)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    cal = info["calibration"]
    lines = [
        f"file:         {info['source']}",
        f"format:       {info['format']}",
        f"dataset:      {info['dataset_path'] or '-'}",
        f"scan shape:   {info['scan_shape'][0]} x {info['scan_shape'][1]} probe positions",
        f"detector:     {info['detector_shape'][0]} x {info['detector_shape'][1]} pixels",
        f"dtype:        {info['dtype']} (on disk {info['dtype_on_disk']})",
        f"size:         {info['size_mb']} MiB ({info['storage']})",
        f"scan step:    {_fmt_step(cal['real_step'], cal['real_units'])}",
        f"pixel size:   {_fmt_step(cal['reciprocal_step'], cal['reciprocal_units'])}",
    ]
    if cal.get("beam_energy_kev"):
        lines.append(f"beam energy:  {cal['beam_energy_kev']:g} keV")
    if cal.get("convergence_mrad"):
        lines.append(f"convergence:  {cal['convergence_mrad']:g} mrad")
    lines.append(f"fingerprint:  {info['fingerprint']}")
    if info.get("ground_truth_classes"):
        lines.append(f"ground truth: {', '.join(info['ground_truth_classes'])}")
    if info["candidates"]:
        lines.append("4-D datasets (choose with --dataset):")
        chosen = info["dataset_path"] or ""
        for c in info["candidates"]:
            mark = "*" if c["path"] == chosen else " "
            lines.append(f"  {mark} {c['path']}  {tuple(c['shape'])}  {c['dtype']}")
    print("\n".join(lines))
    return 0
