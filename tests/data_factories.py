"""Writers for small 4D-STEM files in every format polmap reads.

Every test that needs a file on disk builds it here, inside ``tmp_path``, so
the tests carry no binary fixtures. Where a maintained library can write the
format it does (h5py, numpy, py4DSTEM for EMD, rosettasciio for ``.blo``);
Merlin ``.mib``, EMPAD ``.raw`` and Gatan ``.dm4`` have no writer in any
installed library, so they are written here byte by byte from the published
layouts (and the tests cross-check them with independent readers).
"""

from __future__ import annotations

import datetime as _dt
import json
import struct
import zipfile
from pathlib import Path
from typing import Any, Iterable

import h5py
import numpy as np

__all__ = [
    "make_cube",
    "write_h5",
    "write_emd",
    "write_polmap_sim",
    "write_npy",
    "write_npz",
    "write_empad_raw",
    "write_empad_xml",
    "write_mib",
    "write_blo",
    "write_dm4",
    "write_zip",
    "truncate",
    "EMPAD_FRAME_BYTES",
]

EMPAD_FRAME_BYTES = 128 * 130 * 4


def make_cube(
    shape: tuple[int, ...] = (3, 4, 8, 10), dtype: Any = np.uint16, seed: int = 0
) -> np.ndarray:
    """A deterministic cube whose every pattern differs from every other.

    Parameters
    ----------
    shape : tuple of int
        Any shape; the last two axes are the detector.
    dtype : dtype-like
        Output type (values stay within 0..250 so they fit ``uint8``).
    seed : int
        Seed of the random part.

    Returns
    -------
    ndarray
    """
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 200, size=shape)
    # A per-pattern offset makes (r, c) mix-ups show up as wrong values.
    n_nav = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    offset = (np.arange(n_nav) % 50).reshape(shape[:-2] + (1, 1)) if len(shape) > 2 else 0
    return (base + offset).astype(dtype)


# -- HDF5 ------------------------------------------------------------------------------------------
def write_h5(
    path: Path,
    datasets: dict[str, np.ndarray],
    *,
    attrs: dict[str, dict[str, Any]] | None = None,
    chunks: bool = False,
) -> Path:
    """Write plain HDF5 datasets (``{"/group/name": array}``) with optional attrs per dataset."""
    with h5py.File(path, "w") as f:
        for name, arr in datasets.items():
            kw: dict[str, Any] = {}
            if chunks and np.ndim(arr) == 4:
                kw = dict(chunks=(1, 1) + tuple(np.shape(arr)[2:]), compression="gzip")
            ds = f.create_dataset(name, data=arr, **kw)
            for k, v in (attrs or {}).get(name, {}).items():
                ds.attrs[k] = v
    return Path(path)


def write_emd(
    path: Path,
    array: np.ndarray,
    *,
    r_step: float = 0.5,
    r_units: str = "nm",
    q_step: float = 0.25,
    q_units: str = "mrad",
    name: str = "cube",
) -> Path:
    """Write a py4DSTEM EMD 1.0 file with py4DSTEM's own writer (calibrated DataCube)."""
    import py4DSTEM

    dc = py4DSTEM.DataCube(data=np.asarray(array), name=name)
    dc.calibration.set_R_pixel_size(r_step)
    dc.calibration.set_R_pixel_units(r_units)
    dc.calibration.set_Q_pixel_size(q_step)
    dc.calibration.set_Q_pixel_units(q_units)
    py4DSTEM.save(str(path), dc, mode="o")  # py4DSTEM wants str paths
    return Path(path)


def write_polmap_sim(
    path: Path,
    array: np.ndarray,
    *,
    label_map: np.ndarray | None = None,
    class_names: list[str] | None = None,
    class_colors: list[str] | None = None,
    real_step_nm: float = 0.4,
    reciprocal_step_mrad: float = 0.5,
    beam_energy_kev: float = 300.0,
    convergence_mrad: float = 2.1,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write the simulated-data layout of docs/api.md (what ``polmap.simulate`` writes)."""
    R, C = array.shape[:2]
    if label_map is None:
        label_map = (np.arange(R * C).reshape(R, C) % 5).astype(np.int16)
    class_names = class_names or ["none", "+x", "-x", "+y", "-y"]
    class_colors = class_colors or ["#808080", "#ff0000", "#00ffff", "#80ff00", "#8000ff"]
    with h5py.File(path, "w") as f:
        f.attrs["polmap_format"] = "polmap-sim"
        f.attrs["polmap_version"] = 1
        f.attrs["metadata"] = json.dumps(metadata or {"seed": 1, "preset": "test"})
        d = f.create_dataset("data", data=array)
        d.attrs["real_step_nm"] = real_step_nm
        d.attrs["reciprocal_step_mrad"] = reciprocal_step_mrad
        d.attrs["beam_energy_kev"] = beam_energy_kev
        d.attrs["convergence_mrad"] = convergence_mrad
        g = f.create_group("ground_truth")
        lm = g.create_dataset("label_map", data=np.asarray(label_map, dtype=np.int16))
        lm.attrs["class_names"] = json.dumps(class_names)
        lm.attrs["class_colors"] = json.dumps(class_colors)
        g.create_dataset("wall_mask", data=np.zeros((R, C), bool) | (np.arange(C) == C // 2)[None, :])
        g.create_dataset("polarization", data=np.ones((R, C, 2), np.float32))
        g.create_dataset("thickness_nm", data=np.full((R, C), 20.0, np.float32))
        g.create_dataset("tilt_mrad", data=np.zeros((R, C, 2), np.float32))
        g.create_dataset("descan_px", data=np.zeros((R, C, 2), np.float32))
    return Path(path)


# -- numpy -----------------------------------------------------------------------------------------
def write_npy(path: Path, array: np.ndarray) -> Path:
    """``np.save`` (the path keeps its suffix)."""
    with open(path, "wb") as fh:
        np.save(fh, array)
    return Path(path)


def write_npz(path: Path, arrays: dict[str, np.ndarray], *, compressed: bool = False) -> Path:
    """``np.savez`` / ``np.savez_compressed``."""
    with open(path, "wb") as fh:
        (np.savez_compressed if compressed else np.savez)(fh, **arrays)
    return Path(path)


# -- EMPAD -----------------------------------------------------------------------------------------
def write_empad_raw(path: Path, array: np.ndarray, *, footer_value: float = -7.0) -> Path:
    """EMPAD ``.raw``: per frame 128 x 128 little-endian float32 then 2 footer rows.

    ``array`` has shape ``(..., 128, 128)``; the footer rows are filled with
    ``footer_value`` so a reader that forgets to drop them gets caught.
    """
    a = np.asarray(array, dtype="<f4")
    assert a.shape[-2:] == (128, 128), a.shape
    frames = a.reshape(-1, 128, 128)
    out = np.full((frames.shape[0], 130, 128), footer_value, dtype="<f4")
    out[:, :128] = frames
    out.tofile(path)
    return Path(path)


def write_empad_xml(path: Path, raw_name: str, scan_shape: tuple[int, int]) -> Path:
    """The EMPAD acquisition XML naming its ``.raw`` and scan size (compact, as the EMPAD software writes it)."""
    rows, cols = scan_shape
    Path(path).write_text(
        f'<?xml version="1.0"?><root><raw_file filename="{raw_name}"/>'
        f"<pix_x>{cols}</pix_x><pix_y>{rows}</pix_y></root>",
        encoding="utf-8",
    )
    return Path(path)


# -- Merlin / Medipix ------------------------------------------------------------------------------
_MIB_DTYPES = {"U08": ">u1", "U16": ">u2", "U32": ">u4"}


def _mib_frame_header(
    index: int, rows: int, cols: int, kind: str, timestamp: _dt.datetime, head_size: int, depth: int
) -> bytes:
    # Field order of a processed single-chip Merlin frame header (Merlin software 0.76),
    # as in the real acquisitions rosettasciio ships.
    ts_local = timestamp.strftime("%Y-%m-%d %H:%M:%S.%f")
    ts_iso = timestamp.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"
    fields = [
        "MQ1", f"{index:06d}", f"{head_size:05d}", "01", f"{cols:04d}", f"{rows:04d}", kind,
        "   1x1", "01", ts_local, "0.001000", "0", "0", "0",
        "4.000000E+1", "5.110000E+2", *["0.000000E+0"] * 6, "3RX",
        *["000"] * 27, "MQ1A", ts_iso, "1000000ns", str(depth),
    ]
    text = ",".join(fields) + ","
    raw = text.encode("ascii")
    assert len(raw) <= head_size
    return raw + b"\x00" * (head_size - len(raw))


def write_mib(
    path: Path,
    array: np.ndarray,
    *,
    kind: str = "U16",
    hdr: bool = True,
    frames_per_trigger: int | None = None,
    frames_in_acquisition: int | None = None,
    flyback_s: float = 0.05,
) -> Path:
    """Write a Merlin ``.mib`` (and ``.hdr``) holding ``array``.

    The rows of each pattern are stored bottom-up as the Merlin detector does,
    so a reader that flips the detector rows (rosettasciio, pyxem, polmap)
    returns exactly ``array``.

    Parameters
    ----------
    array : ndarray, shape (R, C, H, W) or (N, H, W)
    kind : {"U08", "U16", "U32"}
        Pixel type stored in the file (always big-endian).
    hdr : bool
        Also write the ``.hdr`` acquisition header next to the ``.mib``.
    frames_per_trigger : int, optional
        Written to the ``.hdr`` (defaults to C, so the scan shape comes from it).
    frames_in_acquisition : int, optional
        Written to the ``.hdr`` (defaults to the number of frames written).
    flyback_s : float
        Extra time between the last frame of a scan row and the first of the next,
        which is how readers recover the scan shape from the frame time stamps.
    """
    a = np.asarray(array)
    rows, cols = a.shape[-2:]
    nav = a.shape[:-2]
    n_cols = nav[-1]
    frames = a.reshape(-1, rows, cols)
    head_size = 384
    depth = {"U08": 6, "U16": 12, "U32": 24}[kind]
    t0 = _dt.datetime(2024, 1, 2, 3, 4, 5)
    with open(path, "wb") as fh:
        for i, frame in enumerate(frames):
            t = t0 + _dt.timedelta(seconds=0.001 * i + flyback_s * (i // n_cols))
            fh.write(_mib_frame_header(i + 1, rows, cols, kind, t, head_size, depth))
            fh.write(np.ascontiguousarray(frame[::-1]).astype(_MIB_DTYPES[kind]).tobytes())
    if hdr:
        fpt = frames_per_trigger if frames_per_trigger is not None else n_cols
        n = frames_in_acquisition if frames_in_acquisition is not None else len(frames)
        lines = [
            "HDR,\t",
            "Time and Date Stamp (day, mnth, yr, hr, min, s):\t02/01/2024 03:04:05",
            "Chip ID:\tW000_A00, - , - , - ",
            "Assembly Size (NX1, 2X2):\t   1x1",
            "Chip Mode  (SPM, CSM, CM, CSCM):\tSPM",
            f"Counter Depth (number):\t{depth}",
            f"Frames in Acquisition (Number):\t{n}",
            f"Frames per Trigger (Number):\t{fpt}",
            "Readout System:\tMerlin Quad",
            "End\t",
        ]
        Path(path).with_suffix(".hdr").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


# -- NanoMegas block file ---------------------------------------------------------------------------
def write_blo(path: Path, array: np.ndarray, *, scan_step_nm: float = 1.5) -> Path:
    """Write a ``.blo`` with rosettasciio's blockfile writer (uint8, square patterns)."""
    from rsciio.blockfile import file_writer

    a = np.asarray(array, dtype=np.uint8)
    R, C, Q, _ = a.shape
    axes = [
        {"size": R, "index_in_array": 0, "name": "y", "scale": scan_step_nm, "offset": 0.0, "units": "nm", "navigate": True},
        {"size": C, "index_in_array": 1, "name": "x", "scale": scan_step_nm, "offset": 0.0, "units": "nm", "navigate": True},
        {"size": Q, "index_in_array": 2, "name": "dy", "scale": 0.01, "offset": 0.0, "units": "cm", "navigate": False},
        {"size": Q, "index_in_array": 3, "name": "dx", "scale": 0.01, "offset": 0.0, "units": "cm", "navigate": False},
    ]
    signal = {"data": a, "axes": axes, "metadata": {}, "original_metadata": {}, "attributes": {"_lazy": False}}
    file_writer(str(path), signal, navigator=None, show_progressbar=False)
    return Path(path)


# -- Gatan DigitalMicrograph 4 ----------------------------------------------------------------------
# DM4 layout (Gatan's tag tree, as documented by C. Boothroyd and read by ncempy/rosettasciio):
# header >u4 version=4, >u8 root length, >u4 byte order (1 = little-endian data);
# a tag group is u1 sorted, u1 open, >u8 n_tags; each tag is u1 kind (20 group, 21 data),
# >u2 label length, label, >u8 length of the rest; data tags then hold b"%%%%",
# >u8 n_info, >u8 info[n_info] and the little-endian payload.
_DM_SIMPLE = {"i2": 2, "i4": 3, "u2": 4, "u4": 5, "f4": 6, "f8": 7, "b1": 8, "i1": 9, "u1": 10}
_DM_IMAGE_TYPE = {"i2": 1, "f4": 2, "u1": 6, "i4": 7, "i1": 9, "u2": 10, "u4": 11, "f8": 12}


def _dm_data(label: str, info: list[int], payload: bytes) -> bytes:
    body = b"%%%%" + struct.pack(">Q", len(info)) + b"".join(struct.pack(">Q", i) for i in info) + payload
    lab = label.encode("latin1")
    return struct.pack(">BH", 21, len(lab)) + lab + struct.pack(">Q", len(body)) + body


def _dm_scalar(label: str, value: Any, code: str) -> bytes:
    return _dm_data(label, [_DM_SIMPLE[code]], np.array([value], dtype="<" + code).tobytes())


def _dm_string(label: str, text: str) -> bytes:
    chars = np.frombuffer(text.encode("utf-16-le"), dtype="<u2")
    return _dm_data(label, [20, _DM_SIMPLE["u2"], len(chars)], chars.tobytes())


def _dm_group(label: str, entries: Iterable[bytes]) -> bytes:
    entries = list(entries)
    body = struct.pack(">BBQ", 0, 0, len(entries)) + b"".join(entries)
    lab = label.encode("latin1")
    return struct.pack(">BH", 20, len(lab)) + lab + struct.pack(">Q", len(body)) + body


def write_dm4(
    path: Path,
    array: np.ndarray,
    *,
    r_step: float = 2.0,
    r_units: str = "nm",
    q_step: float = 0.5,
    q_units: str = "1/nm",
) -> Path:
    """Write a 4-D Gatan ``.dm4`` holding ``array`` of shape (R, C, Qr, Qc).

    DM orders dimensions fastest first, so Dimensions = (Qc, Qr, C, R) and the
    C-ordered array bytes go in as they are.
    """
    a = np.ascontiguousarray(array)
    code = a.dtype.str[1:]
    R, C, Qr, Qc = a.shape
    dims = [Qc, Qr, C, R]
    steps = [(q_step, q_units), (q_step, q_units), (r_step, r_units), (r_step, r_units)]
    calib = _dm_group(
        "Calibrations",
        [
            _dm_group(
                "Dimension",
                [
                    _dm_group("", [_dm_scalar("Origin", 0.0, "f4"), _dm_scalar("Scale", s, "f4"), _dm_string("Units", u)])
                    for s, u in steps
                ],
            )
        ],
    )
    data = _dm_data("Data", [20, _DM_SIMPLE[code], a.size], a.astype("<" + code).tobytes())
    image_data = _dm_group(
        "ImageData",
        [
            calib,
            data,
            _dm_scalar("DataType", _DM_IMAGE_TYPE[code], "i4"),
            _dm_group("Dimensions", [_dm_scalar("", d, "u4") for d in dims]),
            _dm_scalar("PixelDepth", a.dtype.itemsize, "i4"),
        ],
    )
    tags = _dm_group("ImageTags", [_dm_group("Microscope Info", [_dm_scalar("Voltage", 300000.0, "f8")])])
    image = _dm_group("", [image_data, tags, _dm_string("Name", Path(path).stem)])
    root = struct.pack(">BBQ", 1, 0, 1) + _dm_group("ImageList", [image])
    with open(path, "wb") as fh:
        fh.write(struct.pack(">IQI", 4, len(root), 1) + root + b"\x00" * 8)
    return Path(path)


# -- containers and damage --------------------------------------------------------------------------
def write_zip(path: Path, members: Iterable[Path], *, compress: bool = True) -> Path:
    """Zip files under their base names."""
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=mode) as z:
        for m in members:
            z.write(m, arcname=Path(m).name)
    return Path(path)


def truncate(path: Path, keep: float | int = 0.5) -> Path:
    """Cut a file to a fraction (float) or a byte count (int) of its size, in place."""
    data = Path(path).read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else int(keep)
    Path(path).write_bytes(data[:n])
    return Path(path)
