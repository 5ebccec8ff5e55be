"""polmap's settings from the environment, read in one place for the app, the CLI and the benchmarks.

=========================  ==================================================  ==========================
variable                   meaning                                             default
=========================  ==================================================  ==========================
``POLMAP_THREADS``         worker threads for preprocessing and simulation     usable cores, at most 8
``POLMAP_CACHE``           cache of simulated demo scans                       ``~/.cache/polmap``
``POLMAP_DATA_ROOT``       folder the app's file picker may read               ``./data``
``POLMAP_WORKSPACE_DIR``   per-session workspaces and uploads                  ``$XDG_DATA_HOME/polmap/workspaces``
``POLMAP_DEMO_PRESET``     simulation preset of the app's demo                 ``demo``
``POLMAP_MAX_UPLOAD_MB``   largest upload the app accepts                      500
=========================  ==================================================  ==========================

A value that cannot be used raises :class:`ValueError` naming the variable, what
was expected and what was found: a typo must not silently become a default.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_THREADS = 8


def _positive_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"environment variable {name} must be a positive integer, found {raw!r}")
    return value


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_threads() -> int:
    """Worker threads: ``POLMAP_THREADS`` if set, else the usable cores, at most :data:`MAX_THREADS`."""
    n = _positive_int("POLMAP_THREADS")
    return n if n is not None else max(1, min(MAX_THREADS, usable_cores()))


def cache_dir() -> Path:
    """Cache of simulated demo scans (``POLMAP_CACHE``, default ``~/.cache/polmap``)."""
    env = os.environ.get("POLMAP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "polmap"


def data_root() -> Path:
    """Folder the app's file picker may read (``POLMAP_DATA_ROOT``, default ``./data``)."""
    return Path(os.environ.get("POLMAP_DATA_ROOT", "data")).expanduser().resolve()


def workspace_dir() -> Path:
    """Folder of the per-session workspace files and uploads, created if missing.

    ``POLMAP_WORKSPACE_DIR``; default ``$XDG_DATA_HOME/polmap/workspaces``
    (``~/.local/share/polmap/workspaces``), outside the source tree.
    """
    default = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "polmap" / "workspaces"
    d = Path(os.environ.get("POLMAP_WORKSPACE_DIR") or default).expanduser().resolve()
    d.mkdir(parents=True, exist_ok=True)
    return d


def demo_preset() -> str:
    """Simulation preset of the app's demo (``POLMAP_DEMO_PRESET``, default ``demo``)."""
    return os.environ.get("POLMAP_DEMO_PRESET", "").strip() or "demo"


def max_upload_mb() -> int:
    """Largest upload the app accepts, in MB (``POLMAP_MAX_UPLOAD_MB``, default 500)."""
    n = _positive_int("POLMAP_MAX_UPLOAD_MB")
    return 500 if n is None else n
