#!/usr/bin/env python
"""Copies of the external scans with another camera or other class names (for the generality check).

For each file in ``../shared/data/external`` this writes four copies to ``--out``:
``_mirror`` (detector columns reversed), ``_rot90`` (detector turned by 90 degrees),
``_rot27`` (turned by 27 degrees, bilinear interpolation) and ``_renamed`` (classes
called P1..P5). polmap must score the same on the first three as on the original
(within a point) and on ``_rot27`` no worse than without symmetry augmentation.
The copies are made here, not committed (the originals are not polmap's to copy)::

    .venv/bin/python tools/make_external_copies.py --out /tmp/polmap-copies
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage


def _write(path: Path, data: np.ndarray, truth: np.ndarray, names: list[str], attrs: dict) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data, chunks=(1,) + data.shape[1:], compression="gzip")
        f.create_dataset("ground_truth", data=truth)
        for k, v in attrs.items():
            if k not in ("class_names", "class_names_json"):
                f.attrs[k] = v
        f.attrs["class_names"] = np.array(names, dtype=object)
        f.attrs["class_names_json"] = json.dumps(names)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "external"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--angle", type=float, default=27.0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted(Path(args.src).glob("*.h5")):
        with h5py.File(src) as f:
            data, truth, attrs = f["data"][()], f["ground_truth"][()], dict(f.attrs)
            names = list(json.loads(f.attrs["class_names_json"]))
        stem = src.stem
        _write(out / f"{stem}_mirror.h5", data[..., ::-1].copy(), truth, names, attrs)
        _write(out / f"{stem}_rot90.h5", np.rot90(data, 1, axes=(2, 3)).copy(), truth, names, attrs)
        _write(out / f"{stem}_renamed.h5", data, truth, [f"P{i + 1}" for i in range(len(names))], attrs)
        rot = np.empty_like(data)
        for i in range(data.shape[0]):
            r = ndimage.rotate(data[i].astype(np.float32), args.angle, axes=(1, 2), reshape=False, order=1)
            rot[i] = np.clip(np.rint(r), 0, np.iinfo(data.dtype).max).astype(data.dtype)
        _write(out / f"{stem}_rot{int(args.angle)}.h5", rot, truth, names, attrs)
        print(f"{stem}: 4 copies in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
