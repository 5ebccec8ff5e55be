"""Readers for the single-array formats (.npy, .npz, Merlin .mib, EMPAD .raw, .blo, .dm3/.dm4) and .zip.

Each returns an :class:`~polmap.io._common.Opened` whose array is a view into
the file (``np.memmap``) or the upload (``np.frombuffer``), never a loaded copy,
except for compressed ``.npz`` members, which must be inflated.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from polmap.io.dataset import DatasetError
from polmap.io._common import (
    EXTENSIONS,
    Candidate,
    Opened,
    Source,
    describe_candidates,
    make_calibration,
    make_tempdir,
    remover,
    show_bytes,
)


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    # rosettasciio logs warnings (e.g. "hdr file couldn't be found") that polmap reports its own way.
    log = logging.getLogger(logger)
    old = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(old)


def _mapped(src: Source, dtype: np.dtype, shape: tuple[int, ...], offset: int, fortran: bool) -> np.ndarray:
    if fortran:
        return src.map(dtype, tuple(shape[::-1]), offset).T
    return src.map(dtype, tuple(shape), offset)


# -- .npy ---------------------------------------------------------------------------------------------
def _npy_header(fh: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fh)
    return np.lib.format._read_array_header(fh, version)  # format 3.0 has no public reader


def open_npy(src: Source) -> Opened:
    """A ``.npy`` file, memory-mapped (``np.load(mmap_mode="r")``) or viewed in the upload buffer."""
    try:
        with src.fileobj() as fh:
            shape, fortran, dtype = _npy_header(fh)
            offset = fh.tell()
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(
            f"{src.label}: expected a NumPy .npy file (it starts with \\x93NUMPY); "
            f"found {show_bytes(src.head(16))} ({exc})"
        ) from None
    if dtype.hasobject:
        raise DatasetError(
            f"{src.label}: expected numeric detector counts; found Python objects (dtype {dtype}), "
            "which cannot be memory-mapped or analysed"
        )
    need = offset + int(np.prod(shape)) * dtype.itemsize
    size = src.size()
    if size < need:
        raise DatasetError(
            f"{src.label}: expected {need} bytes (its header declares shape {tuple(shape)} of {dtype}); "
            f"found {size} bytes: the file is truncated"
        )
    meta = {"format": "NumPy .npy"}
    if src.path is not None and int(np.prod(shape)) > 0:
        arr = np.load(src.path, mmap_mode="r", allow_pickle=False)
    else:
        arr = _mapped(src, dtype, shape, offset, fortran)
    return Opened(array=arr, metadata=meta)


# -- .npz ---------------------------------------------------------------------------------------------
def zip_open(src: Source) -> zipfile.ZipFile:
    """Open a zip archive (``.zip``/``.npz``), explaining corrupt or truncated ones."""
    try:
        return zipfile.ZipFile(src.fileobj() if src.path is None else src.path, "r")
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DatasetError(
            f"{src.label}: expected a ZIP archive (.zip/.npz); found a corrupt or truncated one "
            f"({exc}; the file starts with {show_bytes(src.head(8))})"
        ) from None


def _npz_members(src: Source, z: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, Candidate, bool, np.dtype]]:
    out = []
    for info in z.infolist():
        if not info.filename.endswith(".npy"):
            continue
        try:
            with z.open(info) as fh:
                shape, fortran, dtype = _npy_header(fh)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise DatasetError(f"{src.label}: member {info.filename} is not a readable .npy array ({exc})") from None
        out.append((info, Candidate(info.filename[:-4], tuple(int(s) for s in shape), str(dtype)), fortran, dtype))
    return out


def npz_candidates(src: Source) -> list[Candidate]:
    """The 4-D arrays in an ``.npz``."""
    with zip_open(src) as z:
        return [c for _, c, _, _ in _npz_members(src, z) if len(c.shape) == 4]


def open_npz(src: Source, dataset_path: str | None, scan_shape: Any) -> Opened:
    """One array of an ``.npz``: memory-mapped when stored uncompressed, else inflated into memory."""
    z = zip_open(src)
    with z:
        members = _npz_members(src, z)
        all_c = [c for _, c, _, _ in members]
        four = [m for m in members if len(m[1].shape) == 4]
        if dataset_path:
            key = dataset_path[:-4] if dataset_path.endswith(".npy") else dataset_path
            chosen = [m for m in members if m[1].path == key]
            if not chosen:
                raise DatasetError(
                    f"{src.label}: dataset_path {dataset_path!r} is not an array in this .npz; "
                    f"expected one of: {describe_candidates(all_c)}"
                )
        elif len(four) == 1:
            chosen = four
        elif len(four) > 1:
            raise DatasetError(
                f"{src.label}: expected one 4-D array; found {len(four)}: "
                f"{describe_candidates([m[1] for m in four])}. Choose one with dataset_path"
            )
        else:
            stacks = [m for m in members if len(m[1].shape) == 3]
            if scan_shape is not None and len(stacks) == 1:
                chosen = stacks
            else:
                raise DatasetError(
                    f"{src.label}: expected a 4-D array (scan_rows, scan_cols, det_rows, det_cols); found none. "
                    f"Arrays present: {describe_candidates(all_c)}"
                    + (". For a 3-D stack pass dataset_path and scan_shape=(rows, cols)" if stacks else "")
                )
        info, cand, fortran, dtype = chosen[0]
        meta: dict[str, Any] = {"format": "NumPy .npz", "npz_key": cand.path}
        if dtype.hasobject:
            raise DatasetError(f"{src.label}:{cand.path}: expected numeric detector counts; found Python objects")
        if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
            # Stored members are plain .npy bytes inside the zip: map them in place.
            local = src.head(30, info.header_offset)
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            with z.open(info) as fh:
                _npy_header(fh)
                npy_offset = fh.tell()
            need = start + npy_offset + int(np.prod(cand.shape)) * dtype.itemsize
            if src.size() < need:
                raise DatasetError(f"{src.label}: expected {need} bytes for array {cand.path}; found {src.size()}: truncated")
            arr = _mapped(src, dtype, cand.shape, start + npy_offset, fortran)
        else:
            try:
                with z.open(info) as fh:
                    arr = np.lib.format.read_array(fh, allow_pickle=False)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                raise DatasetError(f"{src.label}: array {cand.path} is corrupt or truncated ({exc})") from None
            meta["loaded_into_memory"] = "compressed .npz members cannot be memory-mapped"
    return Opened(array=arr, metadata=meta, dataset_path=cand.path)


# -- Merlin .mib ---------------------------------------------------------------------------------------
def _sibling(path: Path, suffix: str) -> Path | None:
    for cand in (path.with_suffix(suffix), path.with_suffix(suffix.upper())):
        if cand.exists():
            return cand
    return None


def open_mib(src: Source, scan_shape: Any, flip: bool = True) -> Opened:
    """A Quantum Detectors Merlin ``.mib`` (with its ``.hdr`` when present), memory-mapped.

    Headers are parsed with rosettasciio (``rsciio.quantumdetector``), which
    also works out the scan shape from the ``.hdr`` or from the frame time
    stamps (the fly-back pause at the end of each scan row). Each frame is a
    big-endian pattern behind a fixed-size ASCII header, so the data are one
    structured ``np.memmap``. Pattern rows are flipped (``flip``) as
    rosettasciio and pyxem do, so patterns appear as Merlin's own software
    shows them.
    """
    from rsciio.quantumdetector._api import MIBProperties, file_reader, parse_hdr_file

    path = src.path
    assert path is not None, "uploads are written to a temp file before reading .mib"
    if path.suffix.lower() == ".hdr":
        mib = _sibling(path, ".mib")
        if mib is None:
            raise DatasetError(f"{src.label}: expected the .mib data file next to this .hdr header; found none")
        path, src = mib, Source(label=str(mib), path=mib)
    head = src.head(768)
    if not head.startswith(b"MQ1,"):
        raise DatasetError(
            f"{src.label}: expected a Merlin .mib file (frames start with 'MQ1,'); found {show_bytes(head)}"
        )
    fields = head.decode("ascii", "replace").split(",")
    prop = MIBProperties()
    try:
        prop.parse_file(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure means an unusable header
        raise DatasetError(f"{src.label}: expected a valid Merlin frame header; found one rosettasciio cannot parse ({exc})") from None
    if prop.raw:
        raise DatasetError(
            f"{src.label}: expected processed Merlin data (U08/U16/U32 pixels); found RAW (R64) counter data, "
            "which no installed reader unpacks. Re-save it as processed frames in the Merlin software"
        )
    if prop.dtype is None or prop.head_size is None:
        raise DatasetError(
            f"{src.label}: expected a Merlin header with a 384- or 768-byte size and U08/U16/U32 pixels; "
            f"found size field {fields[2] if len(fields) > 2 else '?'} and pixel type {fields[6] if len(fields) > 6 else '?'}"
        )
    frame = np.dtype([("header", f"S{prop.head_size}"), ("data", np.dtype(prop.dtype).newbyteorder(">"), prop.merlin_size)])
    size = prop.file_size
    n_full, rem = divmod(size, frame.itemsize)
    hdr_path = _sibling(path, ".hdr")
    hdr: dict[str, str] | None = None
    if hdr_path is not None:
        try:
            hdr = parse_hdr_file(str(hdr_path))
        except (OSError, ValueError, UnicodeDecodeError):
            hdr = None
    try:
        expected = int(hdr.get("Frames in Acquisition (Number)", "0")) if hdr else 0
    except ValueError:
        expected = 0
    rows_px, cols_px = prop.merlin_size
    frame_desc = f"{frame.itemsize}-byte frames ({prop.head_size}-byte header + {rows_px} x {cols_px} {np.dtype(prop.dtype).name})"
    if expected and n_full < expected:
        raise DatasetError(
            f"{src.label}: expected {expected} {frame_desc} = {expected * frame.itemsize} bytes, as {hdr_path.name} "
            f"records; found {size} bytes, {n_full} whole frames{' and part of another' if rem else ''}: the file is truncated"
        )
    if rem and not expected:
        raise DatasetError(
            f"{src.label}: expected a whole number of {frame_desc}; found {size} bytes = {n_full} frames "
            f"+ {rem} bytes: the last frame is truncated"
        )
    n = expected or n_full
    metadata: dict[str, Any] = {
        "format": "Merlin MIB",
        "exposure_ms": prop.exposure,
        "timestamp": prop.timestamp,
        "assembly": prop.assembly_size,
        "detector_rows_flipped": bool(flip),
        "hdr_file": hdr_path.name if hdr_path else None,
    }
    if hdr:
        metadata["hdr"] = dict(hdr)
    nav: tuple[int, ...] = (n,)
    if scan_shape is None and n > 0:
        try:
            with _quiet("rsciio"):
                lazy = file_reader(str(path), lazy=True)[0]["data"]
            if lazy.ndim == 4 and int(np.prod(lazy.shape[:2])) == n:
                nav = tuple(int(s) for s in lazy.shape[:2])
        except Exception:  # noqa: BLE001 - no scan shape found: the stack is reported with a hint
            nav = (n,)
    data = src.map(frame, nav, 0)["data"]
    if flip:
        data = data[..., ::-1, :]
    return Opened(array=data, metadata=metadata)


# -- EMPAD .raw ---------------------------------------------------------------------------------------
EMPAD_FRAME = np.dtype([("data", "<f4", (128, 128)), ("footer", "<f4", (2, 128))])


def _empad_scan_shape(src: Source, n: int) -> tuple[tuple[int, ...], str]:
    if src.path is not None:
        from rsciio.empad._api import _parse_xml  # rosettasciio's reader for the EMPAD .xml sidecar

        for xml in sorted(src.path.parent.glob("*.xml")):
            try:
                with _quiet("rsciio"):
                    _, info = _parse_xml(str(xml))
            except Exception:  # noqa: BLE001 - other XML files can sit beside the data
                continue
            if info.get("raw_filename") == src.path.name and "scan_x" in info:
                return (int(info["scan_y"]), int(info["scan_x"])), f"scan shape from {xml.name}"
    m = re.search(r"scan_x(\d+)_y(\d+)", src.name)
    if m:
        return (int(m.group(2)), int(m.group(1))), "scan shape from the file name (scan_xX_yY)"
    side = int(round(n**0.5))
    if side * side == n and n > 1:
        return (side, side), "square scan assumed from the file size"
    return (n,), "scan shape unknown"


def open_empad(src: Source, scan_shape: Any) -> Opened:
    """An EMPAD ``.raw``: frames of 128 x 128 float32 plus 2 footer rows, memory-mapped without the footers."""
    size = src.size()
    n, rem = divmod(size, EMPAD_FRAME.itemsize)
    if rem:
        raise DatasetError(
            f"{src.label}: expected an EMPAD .raw file made of whole frames of 128 x 130 float32 "
            f"({EMPAD_FRAME.itemsize} bytes: a 128 x 128 pattern + 2 footer rows); found {size} bytes = "
            f"{n} frames + {rem} bytes (truncated, or not EMPAD data)"
        )
    if scan_shape is not None:
        nav, how = (n,), "scan_shape given"
    else:
        nav, how = _empad_scan_shape(src, n)
        if int(np.prod(nav)) != n:
            nav, how = (n,), f"{how} does not match the {n} frames in the file"
    data = src.map(EMPAD_FRAME, nav, 0)["data"]
    return Opened(array=data, metadata={"format": "EMPAD raw", "scan_shape_source": how})


# -- NanoMegas .blo -----------------------------------------------------------------------------------
def open_blo(src: Source) -> Opened:
    """A NanoMegas ASTAR block file, header parsed with rosettasciio's layout, patterns memory-mapped."""
    from rsciio.blockfile._api import get_header_dtype_list, magics

    hdt = np.dtype(get_header_dtype_list("<"))
    head = src.head(hdt.itemsize)
    if len(head) < hdt.itemsize or not head.startswith(b"IMGBLO"):
        raise DatasetError(
            f"{src.label}: expected a NanoMegas block file (a {hdt.itemsize}-byte header starting with IMGBLO); "
            f"found {show_bytes(head)} ({len(head)} bytes)"
        )
    h = np.frombuffer(head, dtype=hdt)[0]
    ny, nx, dp = int(h["NY"]), int(h["NX"]), int(h["DP_SZ"])
    offset = int(h["Data_offset_2"])
    # Each pattern is preceded by 6 bytes: magic 0x55AA and a uint32 frame index.
    frame = np.dtype([("header", "u1", 6), ("data", "u1", (dp, dp))])
    need = offset + ny * nx * frame.itemsize
    size = src.size()
    if size < need:
        whole = max(0, (size - offset) // frame.itemsize)
        raise DatasetError(
            f"{src.label}: expected {ny} x {nx} patterns of {dp} x {dp} bytes ending at byte {need}, as its header "
            f"records; found {size} bytes ({whole} whole patterns): the file is truncated"
        )
    header = {name: (h[name].decode("latin1") if isinstance(h[name], bytes) else h[name].item()) for name in hdt.names}
    metadata: dict[str, Any] = {"format": "NanoMegas blockfile", "blockfile_header": header}
    if int(h["MAGIC"]) not in magics:
        metadata["warning"] = f"unrecognised header magic {int(h['MAGIC']):#x}"
    if float(h["SX"]) != float(h["SY"]):
        metadata["scan_step_y_nm"] = float(h["SY"])
    cal = make_calibration(
        float(h["SX"]), "nm", None, "", beam_energy_kev=float(h["Beam_energy"]) / 1000.0, metadata=metadata
    )
    data = src.map(frame, (ny, nx), offset)["data"]
    return Opened(array=data, calibration=cal, metadata=metadata)


# -- Gatan .dm3/.dm4 ----------------------------------------------------------------------------------
def open_dm(src: Source) -> Opened:
    """A Gatan DigitalMicrograph file through py4DSTEM (ncempy underneath), memory-mapped."""
    import py4DSTEM

    assert src.path is not None, "uploads are written to a temp file before reading .dm3/.dm4"
    head = src.head(16)
    version = int.from_bytes(head[:4], "big") if len(head) >= 4 else None
    if version not in (3, 4) or len(head) < 16:
        raise DatasetError(
            f"{src.label}: expected a Gatan DigitalMicrograph file (version 3 or 4 in its first 4 bytes); "
            f"found {show_bytes(head)}"
        )
    try:
        with contextlib.redirect_stdout(None):  # py4DSTEM prints progress/calibration notes
            obj = py4DSTEM.import_file(str(src.path), mem="MEMMAP")  # wants a str path
    except Exception as exc:  # noqa: BLE001 - ncempy raises many kinds on bad files
        # The header records the length of the tag tree after it (file size - 24 for DM4,
        # - 16 for DM3); only consulted on failure, as some writers fill it in loosely.
        if version == 4:
            header_len, root_len = 16, struct.unpack(">Q", head[4:12])[0]
        else:
            header_len, root_len = 12, struct.unpack(">I", head[4:8])[0]
        size = src.size()
        if size < header_len + root_len:
            raise DatasetError(
                f"{src.label}: expected at least {header_len + root_len} bytes (its header records a "
                f"{root_len}-byte tag tree); found {size} bytes: the file is truncated"
            ) from None
        text = str(exc)
        found = "a truncated file" if "mmap length" in text or "greater than file size" in text else "a file ncempy cannot read"
        raise DatasetError(
            f"{src.label}: expected a Gatan DigitalMicrograph .dm3/.dm4 file; found {found} ({type(exc).__name__}: {text})"
        ) from None
    data = obj.data
    metadata: dict[str, Any] = {"format": "Gatan DigitalMicrograph"}
    cal = None
    calib = getattr(obj, "calibration", None)
    if data.ndim == 4 and calib is not None:
        try:
            cal = make_calibration(
                calib.get_R_pixel_size(),
                calib.get_R_pixel_units(),
                calib.get_Q_pixel_size(),
                calib.get_Q_pixel_units(),
                metadata=metadata,
            )
        except Exception:  # noqa: BLE001 - uncalibrated files simply stay in pixels
            cal = None
    opened = Opened(array=data, metadata=metadata)
    if cal is not None:
        opened.calibration = cal
    return opened


# -- .zip of any of the above -------------------------------------------------------------------------
def _zip_data_members(z: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    out = []
    for info in z.infolist():
        name = Path(info.filename).name
        if info.is_dir() or info.filename.startswith("__MACOSX/") or name.startswith("._"):
            continue
        suffix = Path(name).suffix.lower()
        if suffix in EXTENSIONS and EXTENSIONS[suffix] != "zip" and suffix != ".hdr":
            out.append(info)
    return out


def _match_member(members: list[zipfile.ZipInfo], wanted: str) -> zipfile.ZipInfo | None:
    for test in (
        lambda i: i.filename == wanted,
        lambda i: Path(i.filename).name == wanted,
        lambda i: Path(i.filename).stem == wanted,
    ):
        hits = [i for i in members if test(i)]
        if len(hits) == 1:
            return hits[0]
    return None


def zip_member_names(src: Source) -> list[str]:
    """Names of the data files inside a .zip."""
    with zip_open(src) as z:
        return [i.filename for i in _zip_data_members(z)]


def open_zip(
    src: Source,
    dataset_path: str | None,
    open_file: Callable[[Source, str | None], Opened],
) -> Opened:
    """One data file inside a .zip, extracted (with its sidecars) to a temp dir removed on close.

    ``dataset_path`` chooses the member (full name, base name or stem), optionally
    followed by ``":inner/path"`` for a container member (an HDF5 file in the zip).
    """
    with zip_open(src) as z:
        members = _zip_data_members(z)
        listing = ", ".join(f"{i.filename} ({i.file_size} bytes)" for i in members) or "none"
        inner: str | None = None
        if dataset_path:
            info = _match_member(members, dataset_path)
            if info is None and ":" in dataset_path:
                head, inner = dataset_path.split(":", 1)
                info = _match_member(members, head)
            if info is None:
                raise DatasetError(
                    f"{src.label}: dataset_path {dataset_path!r} names no data file in the archive; "
                    f"expected one of: {listing}"
                )
        elif len(members) == 1:
            info = members[0]
        elif not members:
            others = ", ".join(i.filename for i in z.infolist()[:12]) or "nothing"
            raise DatasetError(f"{src.label}: expected a 4D-STEM data file inside the archive; found {others}")
        else:
            raise DatasetError(
                f"{src.label}: expected one data file in the archive; found {len(members)}: {listing}. "
                "Choose one with dataset_path (the member name)"
            )
        tmp = make_tempdir("polmap-zip-")
        try:
            stem = Path(info.filename).with_suffix("").as_posix()
            wanted = [info] + [
                i
                for i in z.infolist()
                if i is not info and Path(i.filename).with_suffix("").as_posix() == stem
                and Path(i.filename).suffix.lower() in (".hdr", ".xml", ".json")
            ]
            for member in wanted:
                # Flatten names so a crafted "../x" member cannot write outside the temp dir.
                target = tmp / Path(member.filename).name
                with z.open(member) as fin, open(target, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 2**22)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DatasetError(f"{src.label}: member {info.filename} is corrupt or truncated ({exc})") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    target = tmp / Path(info.filename).name
    try:
        opened = open_file(Source(label=f"{src.label}:{info.filename}", path=target), inner)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    opened.closers.insert(0, remover(tmp))  # closers run newest first: the dir goes last
    opened.metadata["archive_member"] = info.filename
    opened.dataset_path = info.filename + (f":{opened.dataset_path}" if opened.dataset_path else "")
    return opened
