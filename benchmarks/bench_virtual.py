"""Benchmark: one chunked pass of ``polmap.process.virtual.compute_virtual`` over a 2 GiB HDF5 scan.

Writes (once) a 256 x 256 scan of 128 x 128 uint16 patterns to HDF5, chunked by
scan rows and generated chunk by chunk (never the whole cube in memory). Then,
each in a fresh subprocess so that the resident-memory high-water mark belongs
to that run alone, it measures:

* ``cold``: after asking the kernel to drop this file from the page cache
  (``posix_fadvise(DONTNEED)`` on our own file; a global ``drop_caches`` needs
  root and is not attempted). ``fincore`` reports how much of the file was
  still cached; if eviction failed the run is labelled as not cold.
* ``warm``: the file in the page cache (the usual case right after opening a
  file in the app, and what repeated runs see).
* ``read_buffered``: the same reads without computation, through the
  reused-buffer reader ``compute_virtual`` uses (the I/O floor), and
  ``read_iter_chunks``: plain ``Dataset4D.iter_chunks`` (a fresh array per
  chunk, so a page fault per 4 KiB), for comparison.
* ``tracemalloc``: a warm run with ``tracemalloc`` on, giving the peak of
  numpy allocations (numpy reports its buffers to tracemalloc).

Throughput is raw bytes of the cube / wall time, in GB/s (1e9 bytes). CPU
seconds (user + system, all threads) are reported too: on a machine shared
with other work they say more than the wall time. The cold figure is only as
cold as the host allows: a virtual disk may itself be cached by the host.

Optionally (``--preprocess``) it also times ``Preprocessor`` on an in-memory
scan of 64 x 64 patterns (the network-input path), in patterns/s.

Usage::

    python benchmarks/bench_virtual.py                      # temp file, deleted after
    python benchmarks/bench_virtual.py --path /data/bench.h5 --keep --preprocess
    python benchmarks/bench_virtual.py --preprocess-only    # just the Preprocessor timing
    python benchmarks/bench_virtual.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCAN = (256, 256)
DET = (128, 128)


# ----------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------
def _disk(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.indices(shape)
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).astype(np.float32)


def write_scan(path: Path, scan: tuple[int, int] = SCAN, det: tuple[int, int] = DET, seed: int = 0) -> None:
    """Write a synthetic uint16 scan chunk by chunk (one scan row per HDF5 chunk)."""
    import h5py

    rng = np.random.default_rng(seed)
    rows, cols = scan
    # A handful of disk positions (descan drifting across the scan) and a bank of
    # Poisson noise frames reused in random order: cheap, yet not compressible-looking.
    shifts = [(dy, dx) for dy in (-2, 0, 2) for dx in (-2, 0, 2)]
    bases = np.stack([_disk(det, det[0] / 2 + dy, det[1] / 2 + dx, det[0] / 8) * 800 for dy, dx in shifts])
    bases = bases.astype(np.uint16)
    bank = rng.poisson(2.0, size=(256,) + det).astype(np.uint16)
    tmp = path.with_suffix(".partial")
    with h5py.File(tmp, "w") as f:
        d = f.create_dataset("data", shape=scan + det, dtype=np.uint16, chunks=(1, cols) + det)
        for r in range(rows):
            which = (r * len(bases)) // rows
            block = bank[rng.integers(0, len(bank), cols)]
            block += bases[(which + np.arange(cols) * len(bases) // cols) % len(bases)]
            d[r] = block
        f.attrs["polmap_benchmark"] = "bench_virtual synthetic scan"
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    tmp.rename(path)


def scan_ok(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f["data"].shape == SCAN + DET and f["data"].dtype == np.uint16
    except OSError:
        return False


def evict(path: Path) -> str:
    """Ask the kernel to drop this file's pages; return what fincore says is still cached."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return cached(path)


def cached(path: Path) -> str:
    if shutil.which("fincore") is None:
        return "unknown (no fincore)"
    out = subprocess.run(["fincore", "-b", "-n", "-o", "RES,SIZE", str(path)], capture_output=True, text=True)
    try:
        res, size = (int(v) for v in out.stdout.split()[:2])
        return f"{res / size:.1%}"
    except ValueError:
        return "unknown"


# ----------------------------------------------------------------------------------------
# one measured run (in a subprocess)
# ----------------------------------------------------------------------------------------
def measure(path: Path, mode: str, max_bytes: int) -> dict:
    import h5py

    from polmap.io.dataset import Dataset4D
    from polmap.process.virtual import compute_virtual

    if mode == "tracemalloc":
        import tracemalloc

        tracemalloc.start()
    from polmap.process.virtual import iter_row_blocks

    def cpu_s() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
        return r.ru_utime + r.ru_stime

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    load = os.getloadavg()[0]
    with h5py.File(path, "r") as f:
        ds = Dataset4D(f["data"], source=str(path))
        c0 = cpu_s()
        t0 = time.perf_counter()
        result = None
        if mode == "read_iter_chunks":  # Dataset4D.iter_chunks: a fresh array per chunk
            for _, block in ds.iter_chunks(max_bytes):
                pass
        elif mode == "read_buffered":  # the reused-buffer reader compute_virtual uses
            for _, block in iter_row_blocks(ds, max_bytes):
                pass
        else:
            result = compute_virtual(ds, max_bytes=max_bytes)
        dt = time.perf_counter() - t0
        cpu = cpu_s() - c0
        nbytes = ds.nbytes
    out = {
        "mode": mode,
        "load_average_1min_before": load,
        "cpu_seconds": cpu,
        "seconds": dt,
        "bytes": nbytes,
        "gb_per_s": nbytes / dt / 1e9,
        "patterns_per_s": SCAN[0] * SCAN[1] / dt,
        "rss_before_mb": rss0 / 2**20,
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**20,
    }
    if mode == "tracemalloc":
        import tracemalloc

        out["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    if result is not None:
        out["beam"] = {"centre": list(result.centre), "bf_radius": result.bf_radius}
        out["bright_field_mean"] = float(result.bright_field.mean())
    return out


def run_child(path: Path, mode: str, max_bytes: int) -> dict:
    cmd = [sys.executable, __file__, "--_measure", mode, "--path", str(path), "--max-bytes", str(max_bytes)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {mode} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------
# preprocessing throughput (network inputs)
# ----------------------------------------------------------------------------------------
def bench_preprocess(scan: tuple[int, int] = (96, 96), det: int = 64, seed: int = 0) -> dict:
    from polmap.io.dataset import Dataset4D
    from polmap.process.preprocess import PreprocessConfig, Preprocessor

    rng = np.random.default_rng(seed)
    rows, cols = scan
    bases = []
    for dy, dx in rng.uniform(-2, 2, size=(32, 2)):
        ss = 4  # anti-aliased disks at subpixel positions
        o = (np.arange(ss) + 0.5) / ss - 0.5
        acc = sum(_disk((det, det), det / 2 - 0.5 + dy + a, det / 2 - 0.5 + dx + b, 10) for a in o for b in o)
        bases.append(acc / ss**2 * 200)
    bases = np.stack(bases)
    data = (bases[rng.integers(0, len(bases), scan)] + rng.poisson(2.0, size=scan + (det, det))).astype(np.uint16)
    ds = Dataset4D.from_array(data)
    out = {"scan": list(scan), "detector": [det, det], "output_size": 64, "cpu_count": os.cpu_count(), "runs": {}}
    def cpu_s() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    from polmap.process import preprocess as pre_mod

    out["threads"] = pre_mod._N_THREADS
    out["load_average_1min_before"] = os.getloadavg()[0]
    for centring in ("disk", "plane", "com", "none"):
        pp = Preprocessor(PreprocessConfig(centring=centring, output_size=64))
        t0 = time.perf_counter()
        pp.fit(ds)
        fit_s = time.perf_counter() - t0
        best, best_cpu = np.inf, np.inf
        for _ in range(2):
            c0, t0 = cpu_s(), time.perf_counter()
            n = sum(len(o) for _, o in pp.iter_transformed(ds))
            best = min(best, time.perf_counter() - t0)
            best_cpu = min(best_cpu, cpu_s() - c0)
        out["runs"][centring] = {
            "fit_s": fit_s,
            "patterns_per_s": n / best,
            "patterns_per_cpu_s": n / best_cpu,
        }
    return out


# ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--path", type=Path, help="HDF5 file to use (written if missing)")
    ap.add_argument("--keep", action="store_true", help="keep the generated file")
    ap.add_argument("--max-bytes", type=int, default=64 * 2**20, help="raw bytes per chunk (default 64 MiB)")
    ap.add_argument("--warm-repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, default=REPO / "artifacts" / "bench_virtual.json",
                    help="where to write the figures (default: artifacts/bench_virtual.json, git-ignored)")
    ap.add_argument("--preprocess", action="store_true", help="also time the Preprocessor (64x64 patterns)")
    ap.add_argument("--preprocess-only", action="store_true", help="only time the Preprocessor")
    ap.add_argument("--_measure", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._measure:
        print(json.dumps(measure(args.path, args._measure, args.max_bytes)))
        return 0
    args.json.parent.mkdir(parents=True, exist_ok=True)

    if args.preprocess_only:
        res = bench_preprocess()
        for name, r in res["runs"].items():
            print(
                f"preprocess centring={name:<6} {r['patterns_per_s']:8.0f} patterns/s wall, "
                f"{r['patterns_per_cpu_s']:8.0f} per cpu-second  (fit {r['fit_s']:.2f} s)"
            )
        args.json.write_text(json.dumps({"preprocess": res}, indent=2))
        return 0

    tmpdir = None
    path = args.path
    if path is None:
        tmpdir = Path(tempfile.mkdtemp(prefix="polmap-bench-"))
        path = tmpdir / "bench_scan.h5"
    report: dict = {
        "benchmark": "compute_virtual over an HDF5 scan",
        "scan_shape": list(SCAN),
        "detector_shape": list(DET),
        "dtype": "uint16",
        "max_bytes": args.max_bytes,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "runs": [],
    }
    try:
        if not path.exists() or not scan_ok(path):
            t0 = time.perf_counter()
            write_scan(path)
            report["write_seconds"] = time.perf_counter() - t0
            print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in {report['write_seconds']:.1f} s")
        report["file_bytes"] = path.stat().st_size

        still = evict(path)
        cold = run_child(path, "cold", args.max_bytes)
        cold["cached_before"] = still
        cold["truly_cold"] = still.endswith("%") and float(still[:-1]) < 5.0
        report["runs"].append(cold)
        for _ in range(args.warm_repeats):
            warm = run_child(path, "warm", args.max_bytes)
            warm["cached_before"] = cached(path)
            report["runs"].append(warm)
        report["runs"].append(run_child(path, "read_buffered", args.max_bytes))
        report["runs"].append(run_child(path, "read_iter_chunks", args.max_bytes))
        report["runs"].append(run_child(path, "tracemalloc", args.max_bytes))
        if args.preprocess:
            report["preprocess"] = bench_preprocess()
    finally:
        if tmpdir is not None and not args.keep:
            shutil.rmtree(tmpdir, ignore_errors=True)
        elif tmpdir is not None:
            print(f"kept {path}")

    print(f"{'run':<18}{'cached':>8}{'load':>6}{'wall s':>8}{'cpu s':>7}{'GB/s':>7}{'patt/s':>9}{'RSS MB':>8}{'numpy MB':>9}")
    for r in report["runs"]:
        print(
            f"{r['mode']:<18}{r.get('cached_before', ''):>8}{r['load_average_1min_before']:>6.1f}"
            f"{r['seconds']:>8.2f}{r['cpu_seconds']:>7.2f}{r['gb_per_s']:>7.2f}"
            f"{r['patterns_per_s']:>9.0f}{r['rss_peak_mb']:>8.0f}{r.get('tracemalloc_peak_mb', float('nan')):>9.0f}"
        )
    print("GB/s = raw bytes / wall time; cpu s = user+sys of all threads (less sensitive to other load).")
    if "preprocess" in report:
        for name, r in report["preprocess"]["runs"].items():
            print(
                f"preprocess centring={name:<6} {r['patterns_per_s']:8.0f} patterns/s wall, "
                f"{r['patterns_per_cpu_s']:8.0f} per cpu-second  (fit {r['fit_s']:.2f} s)"
            )
    args.json.write_text(json.dumps(report, indent=2))
    print(f"figures written to {args.json}")
    # The aim of a chunked pass: never hold the scan. Peak resident memory of every
    # compute run stays under a quarter of the file (512 MiB for the 2 GiB scan).
    limit_mb = report["file_bytes"] / 2**20 / 4
    missed = [f"{r['mode']}: peak RSS {r['rss_peak_mb']:.0f} MB > {limit_mb:.0f} MB" for r in report["runs"]
              if r["mode"] in ("cold", "warm", "tracemalloc") and r["rss_peak_mb"] > limit_mb]
    for m in missed:
        print(f"MISSED {m}", file=sys.stderr)
    if not missed:
        print(f"target met: peak RSS of every compute run <= {limit_mb:.0f} MB (a quarter of the file)")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
